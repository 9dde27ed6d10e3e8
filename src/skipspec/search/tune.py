"""`skipspec tune`: run the search on given prompts, without a time cap, and save what it chose."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..config import SearchConfig, SwiftConfig
from ..errors import ConfigError, InputError
from .online import SearchPolicy


def read_prompts(path: Path) -> list[str]:
    """One prompt per line: plain text, or a JSON object with "prompt" or Spec-Bench's "turns" (the first).

    Blank lines are skipped.
    """
    prompts = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                prompts.append(str(obj["prompt"] if "prompt" in obj else obj["turns"][0]))
            except (ValueError, KeyError, IndexError, TypeError):
                raise InputError(f'{path}:{n}: a JSON line needs a "prompt" or a "turns" list') from None
        else:
            prompts.append(line)
    if not prompts:
        raise InputError(f"{path} holds no prompts")
    return prompts


def tuning_config(config: SwiftConfig, objective: str, task: str) -> SwiftConfig:
    """The search as `tune` runs it: no time cap, several scoring forwards per step, results saved."""
    search = SearchConfig(objective=objective, task=task, step_budget=math.inf, proposals_per_step=8, persist=True)
    return replace(config, optimize=True, search=search)


def tune(decoder, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 128, passes: int = 3) -> dict:
    """Generate on the prompts (up to `passes` times over) until the decoder's search settles; save it.

    Returns the policy's stats plus the chosen set.
    """
    policy = decoder.policy
    if not isinstance(policy, SearchPolicy):
        raise ConfigError("tune needs a decoder built with optimize=True")
    requests = 0
    for _ in range(passes):
        for ids in prompts:
            decoder.generate(ids, max_new_tokens)
            requests += 1
            if not policy.search.active:
                break
        if not policy.search.active:
            break
    policy.save()
    chosen = policy.skip_set()
    return policy.stats() | {
        "requests": requests,
        "skip_attn": sorted(chosen.attn) if chosen else [],
        "skip_mlp": sorted(chosen.mlp) if chosen else [],
        "store": str(policy.store_path) if policy.store_path else None,
    }
