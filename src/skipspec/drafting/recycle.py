"""Token recycling: draft from the full model's own top-k guesses, remembered per token.

Every verify step computes the full model's logits at every tree node; their top-k tokens are what
the model thought could follow that node's token. `RecycleDrafter` keeps them in a (vocab x k)
successor table, and drafts by expanding the last committed token through the table along a fixed
tree template (`skipspec.tree.template`): a template node (parent, rank r) holds the r-th
remembered successor of its parent's token. No extra forward, no training.

The table belongs to the decoder, not the request: what a token tends to be followed by carries
over from one prompt to the next (the measured gain of keeping it: 2.16-2.24 -> 2.25-2.33 tokens
per step on SmolLM2).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..tree.template import DEFAULT_RANK_PROBS, TreeTemplate, build_template, check_rank_probs
from .base import DraftContext, DraftTree, StepResult
from .ngram import RequestMark

UNKNOWN = -1  # a table entry no step has filled yet
#: Changes of the table remembered by the rows they wrote (`RecycleDrafter.rows_since`): a copy that
#: many changes behind is copied whole again.
CHANGE_LOG = 1024


@dataclass(frozen=True)
class RecycleConfig:
    """Settings of `RecycleDrafter`.

    k:             successors remembered per token (and the template's children per node)
    template_size: nodes of the largest template. Smaller budgets take its best prefix, which is
                   itself optimal (see `build_template`): ~40-80 suits a GPU verify, 4-8 a CPU one.
    rank_probs:    assumed acceptance of each rank, which shapes the template
    max_depth:     deepest template node
    seed_from_prompt: at a new request, give each prompt token that has no remembered successors
                   the token that followed it in the prompt (see `seed_table`)
    """

    k: int = 8
    template_size: int = 80
    rank_probs: tuple[float, ...] = DEFAULT_RANK_PROBS
    max_depth: int = 12
    seed_from_prompt: bool = True

    def __post_init__(self) -> None:
        for field in ("k", "template_size", "max_depth"):
            value = getattr(self, field)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"RecycleConfig.{field} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "rank_probs", check_rank_probs(self.rank_probs))
        if not isinstance(self.seed_from_prompt, bool):
            raise ConfigError(f"RecycleConfig.seed_from_prompt must be a bool, got {self.seed_from_prompt!r}")


def new_table(vocab_size: int, k: int) -> np.ndarray:
    """(vocab_size, k) int32, every entry UNKNOWN."""
    return np.full((vocab_size, k), UNKNOWN, dtype=np.int32)


def record_topk(table: np.ndarray, verified: np.ndarray, topk: np.ndarray) -> np.ndarray:
    """Row verified[i] := topk[i] (host arrays): the model's latest guesses after each verified token.
    Returns the rows written.

    A token verified at several nodes keeps the guesses of its first node (root first): shallow
    nodes are the likeliest to have been the real context. Entries outside the vocabulary
    (padded logits, padded tree rows of -1) are left out.

    >>> table = new_table(6, 2)
    >>> record_topk(table, np.array([3, 1, 3]), np.array([[1, 2], [4, 9], [5, 0]])).tolist()
    [1, 3]
    >>> table[3].tolist(), table[1].tolist()
    ([1, 2], [4, -1])
    """
    vocab, width = table.shape
    rows = np.asarray(verified, dtype=np.int64)
    # Numpy leaves the winner of repeated indices in one assignment unspecified: pick them here.
    rows, first = np.unique(rows, return_index=True)
    inside = (rows >= 0) & (rows < vocab)
    rows, first = rows[inside], first[inside]
    succ = np.asarray(topk, dtype=np.int64)[first, :width]
    succ = np.where(succ < vocab, succ, UNKNOWN)  # top-k ids are never negative
    table[rows, : succ.shape[1]] = succ
    if succ.shape[1] < width:
        table[rows, succ.shape[1] :] = UNKNOWN
    return rows


def seed_table(table: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Give each token with no remembered successors the token that last followed it in `tokens`;
    returns the rows written.

    A weak guess, used only until the model's own top-k replaces it: requests that copy their
    prompt (summaries, retrieval, code edits) follow the prompt's bigrams, and on a cold table they
    are the only guesses there are. Rows the model filled are never overwritten.

    >>> table = new_table(6, 2)
    >>> table[2] = [4, 5]
    >>> seed_table(table, np.array([1, 3, 2, 0, 1, 4])).tolist()
    [0, 1, 3]
    >>> table[:4].tolist()
    [[1, -1], [4, -1], [4, 5], [2, -1]]
    """
    vocab = table.shape[0]
    tokens = np.asarray(tokens, dtype=np.int64)
    ok = (tokens >= 0) & (tokens < vocab)
    heads, tails = tokens[:-1], tokens[1:]
    pair = ok[:-1] & ok[1:]
    heads, tails = heads[pair], tails[pair]
    # The last occurrence of each head: unique over the reversed pairs finds it first.
    _, last = np.unique(heads[::-1], return_index=True)
    heads, tails = heads[::-1][last], tails[::-1][last]
    cold = table[heads, 0] == UNKNOWN
    table[heads[cold], 0] = tails[cold]
    return heads[cold]


def expand(table: np.ndarray, root: int, template: TreeTemplate, max_nodes: int) -> DraftTree:
    """The tree `template` grows from `root` through `table`, at most `max_nodes` nodes.

    A template node whose successor is UNKNOWN is dropped with its subtree; the template's later
    nodes fill the room it leaves. Template order is kept, so parents come first.

    >>> table = new_table(10, 2)
    >>> table[1] = [2, 3]; table[2] = [4, UNKNOWN]
    >>> t = build_template(5, (0.6, 0.3))   # parents (-1, 0, -1, 1, 0), ranks (0, 0, 1, 0, 1)
    >>> tree = expand(table, 1, t, 8)
    >>> tree.tokens, tree.parents
    ([2, 4, 3], [-1, 0, -1])
    """
    if not 0 <= root < table.shape[0]:
        return DraftTree([], [])
    rows: dict[int, list[int]] = {}  # token -> its successors, read once per step
    placed: list[int] = []  # template node -> tree index, -1 when dropped
    tokens: list[int] = []
    parents: list[int] = []
    for parent, rank in zip(template.parents, template.ranks):
        if len(tokens) >= max_nodes:
            break
        at = -1 if parent < 0 else placed[parent]
        if parent >= 0 and at < 0:
            placed.append(-1)
            continue
        head = root if parent < 0 else tokens[at]
        row = rows.get(head)
        if row is None:
            row = rows[head] = table[head].tolist()
        token = row[rank] if rank < len(row) else UNKNOWN
        if token == UNKNOWN:
            placed.append(-1)
            continue
        placed.append(len(tokens))
        tokens.append(token)
        parents.append(at)
    return DraftTree(tokens, parents)


class RecycleDrafter:
    """Token recycling over a successor table kept across requests (one drafter per decoder).

    >>> from skipspec.config import SamplingParams
    >>> drafter = RecycleDrafter(RecycleConfig(k=2, template_size=5, rank_probs=(0.6, 0.3)))
    >>> ctx = DraftContext([1, 2, 1], 2, max_nodes=4, max_depth=3, vocab_size=10, sampling=SamplingParams())
    >>> drafter.propose(ctx).tokens   # a cold table, seeded by the prompt's bigram 1 -> 2
    [2]
    >>> topk = torch.tensor([[5, 7], [6, 8]])   # the model's guesses after 1 and after 5
    >>> drafter.observe(ctx, StepResult([5, 6], None, topk, torch.tensor([1, 5])))
    >>> tree = drafter.propose(ctx)
    >>> tree.tokens, tree.parents
    ([5, 6, 7, 8], [-1, 0, -1, 0])
    """

    def __init__(self, config: RecycleConfig | None = None, name: str = "recycle"):
        self.name = name
        self.config = config if config is not None else RecycleConfig()
        self.table: np.ndarray | None = None
        self.version = 0  # bumped by every change to the table (see `tag`)
        self._changes: deque[tuple[int, np.ndarray]] = deque(maxlen=CHANGE_LOG)  # (version, rows written)
        self._templates: dict[int, TreeTemplate] = {}  # by max depth
        self._mark: RequestMark | None = None

    @property
    def tag(self) -> tuple[int, int]:
        """Names the table's current contents: a copy made under this tag (a device copy for
        drafting steps, `runtime.device_drafting`) is current while the tag is unchanged."""
        return id(self.table), self.version

    def propose(self, ctx: DraftContext) -> DraftTree | None:
        table = self.table_for(ctx)
        depth = min(self.config.max_depth, ctx.max_depth)
        if ctx.max_nodes <= 0 or depth <= 0:
            return None
        tree = expand(table, int(ctx.tokens[-1]), self.template(depth=depth), ctx.max_nodes)
        return tree if len(tree) else None

    def observe(self, ctx: DraftContext, result: StepResult) -> None:
        self.table_for(ctx)
        if result.host is not None:  # read back with the step: no sync here
            self.learn(*result.host)
            return
        if result.topk is None or result.verified is None:
            return
        topk = result.topk[:, : self.config.k]
        # One device-to-host copy: the verified tokens ride along as the first column.
        rows = torch.cat([result.verified.reshape(-1, 1).to(topk.dtype), topk], dim=1).cpu().numpy()
        self.learn(rows[:, 0], rows[:, 1:])

    def learn(self, verified: np.ndarray, topk: np.ndarray) -> None:
        """Record a step's top-k (host arrays, `record_topk`) in the current table."""
        self._changed(record_topk(self.table, verified, topk[:, : self.config.k]))

    def rows_since(self, tag) -> np.ndarray | None:
        """The rows the table changed since it had `tag` (sorted, unique): what a copy made under
        that tag must update to be current. None when the table is another one, or when more
        changes than the log keeps came since (copy it whole)."""
        if tag is None or tag[0] != id(self.table) or tag[1] > self.version:
            return None
        since = tag[1]
        if since < self.version and (not self._changes or self._changes[0][0] > since + 1):
            return None
        rows = [r for version, r in self._changes if version > since]
        return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)

    def _changed(self, rows: np.ndarray) -> None:
        self.version += 1
        self._changes.append((self.version, rows))

    def template(self, size: int | None = None, depth: int | None = None) -> TreeTemplate:
        """The drafter's template: its first `size` nodes (all: None), no deeper than `depth`."""
        depth = self.config.max_depth if depth is None else min(depth, self.config.max_depth)
        template = self._templates.get(depth)
        if template is None:
            cfg = self.config
            template = build_template(cfg.template_size, cfg.rank_probs, max_depth=depth, max_children=cfg.k)
            self._templates[depth] = template
        return template if size is None or size >= len(template) else template.prefix(size)

    def table_for(self, ctx: DraftContext) -> np.ndarray:
        """The table, (re)made for this vocabulary, seeded once at each new request."""
        if self.table is None or self.table.shape[0] != ctx.vocab_size:
            self.table = new_table(ctx.vocab_size, self.config.k)
            self._changes.clear()
            self._mark = None
        if self._mark is None or not self._mark.continued_by(ctx.tokens, ctx.prompt_len):
            self._mark = RequestMark.of(ctx.tokens, ctx.prompt_len)
            rows = np.zeros(0, dtype=np.int64)
            if self.config.seed_from_prompt:
                prompt = ctx.tokens[: ctx.prompt_len]
                prompt = prompt.cpu().numpy() if isinstance(prompt, torch.Tensor) else np.asarray(prompt)
                rows = seed_table(self.table, prompt)
            self._changed(rows)
        self._mark = self._mark.advanced(ctx.tokens)
        return self.table
