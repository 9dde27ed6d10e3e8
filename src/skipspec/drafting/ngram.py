"""Prompt lookup: draft what followed earlier occurrences of the context's last few tokens.

A *match* is an earlier place where the context's suffix of n tokens (min_ngram <= n <= max_ngram)
occurred too; the tokens that followed it there are a guess for what follows now. Summaries,
retrieval answers and code edits copy long stretches of their prompt, so these guesses are often
right, and they cost no forward.

The matcher keeps an index from every n-gram of the context to the positions where it ended,
updated with only the tokens that arrived since the last step, so a step's lookup costs the same
at 100 tokens of context as at 4,000 (`scan_matches` is the same definition as a full scan, for
tests and reading).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .base import DraftContext, DraftTree, StepResult


@dataclass(frozen=True)
class NgramConfig:
    """Settings of `NgramDrafter`.

    min_ngram:   the shortest suffix that may match. The default 2 leaves one-token guesses to
                 token recycling, whose successor table is the model's own guess.
    max_ngram:   the longest suffix compared; longer matches are preferred
    max_depth:   tokens drafted along one continuation (a branch of the tree)
    max_matches: earlier occurrences whose continuations become branches
    """

    min_ngram: int = 2
    max_ngram: int = 4
    max_depth: int = 20
    max_matches: int = 8

    def __post_init__(self) -> None:
        for field in ("min_ngram", "max_ngram", "max_depth", "max_matches"):
            value = getattr(self, field)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"NgramConfig.{field} must be an integer >= 1, got {value!r}")
        if self.max_ngram < self.min_ngram:
            raise ConfigError(f"NgramConfig.max_ngram ({self.max_ngram}) is below min_ngram ({self.min_ngram})")


Match = tuple[int, int]  # (n, end): tokens[end - n + 1 : end + 1] equals the context's last n tokens


def scan_matches(tokens: Sequence[int], min_ngram: int, max_ngram: int, max_matches: int) -> list[Match]:
    """Earlier occurrences of the context's suffix, by a full scan: the definition `NgramIndex` keeps.

    Each earlier end position counts once, with its longest match (capped at max_ngram). Longest
    matches come first, then the most recent; at most `max_matches` are returned.

    >>> scan_matches([1, 2, 3, 9, 2, 3, 7, 1, 2, 3], 1, 3, 8)
    [(3, 2), (2, 5)]
    >>> scan_matches([1, 2, 3], 2, 3, 8)
    []
    """
    last = len(tokens) - 1
    longest: dict[int, int] = {}
    for end in range(last):
        n = 0
        while n < max_ngram and n <= end and tokens[end - n] == tokens[last - n]:
            n += 1
        if n >= min_ngram:
            longest[end] = n
    return sorted(((n, end) for end, n in longest.items()), key=lambda m: (-m[0], -m[1]))[:max_matches]


# Polynomial hash of an n-gram, mod 2**64: sum over j of (tokens[end - j] + 1) * _BASE**j. Hashes
# are plain ints, which the garbage collector does not track (tuple keys and per-gram lists made
# it scan the index over and over: a 16k-token prompt took 0.3 s to index). A collision only
# costs a comparison: every candidate is checked against the tokens.
_MASK = (1 << 64) - 1
_BASE = 0x9E3779B97F4A7C15  # odd, with well-mixed bits (2**64 / golden ratio)
_BULK = 32  # chunks at least this long (a prompt) are hashed with numpy, shorter ones in Python


class NgramIndex:
    """Every n-gram of one request's context (min_ngram <= n <= max_ngram) -> the positions where it ended.

    Per n, a hash chain (as in LZ77 compressors): the latest end of each n-gram's hash, and for
    every position the previous end with the same hash. A lookup walks the chain from the newest
    occurrence, so it reads only the occurrences it returns, however long the context.

    >>> index = NgramIndex(1, 3)
    >>> index.extend([1, 2, 3, 9, 2, 3, 7])
    >>> index.extend([1, 2, 3])
    >>> index.matches(8) == scan_matches(index.tokens, 1, 3, 8)
    True
    """

    def __init__(self, min_ngram: int, max_ngram: int):
        self.min_ngram = min_ngram
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self._powers = [pow(_BASE, j, 1 << 64) for j in range(max_ngram)]
        sizes = range(max_ngram - min_ngram + 1)  # slot k holds n = min_ngram + k
        self._latest: list[dict[int, int]] = [{} for _ in sizes]  # hash -> latest end position
        self._previous: list[list[int]] = [[] for _ in sizes]  # end position -> previous end, or -1

    def extend(self, new: Sequence[int]) -> None:
        """Index the n-grams that end in `new`: O(len(new) * max_ngram)."""
        start = len(self.tokens)
        self.tokens.extend(new.tolist() if isinstance(new, torch.Tensor) else new)
        if len(self.tokens) - start >= _BULK:
            self._extend_bulk(start)
        else:
            self._extend_each(start)

    def _extend_each(self, start: int) -> None:
        toks, powers, lo = self.tokens, self._powers, self.min_ngram
        for end in range(start, len(toks)):
            h = 0
            for n in range(1, self.max_ngram + 1):
                if n <= end + 1:
                    h = (h + (toks[end - n + 1] + 1) * powers[n - 1]) & _MASK
                if n < lo:
                    continue
                previous = self._previous[n - lo]
                if n > end + 1:  # no n-gram ends this early
                    previous.append(-1)
                    continue
                latest = self._latest[n - lo]
                previous.append(latest.get(h, -1))
                latest[h] = end

    def _extend_bulk(self, start: int) -> None:
        toks = self.tokens
        first = max(0, start - self.max_ngram + 1)  # n-grams may begin before `start`
        values = np.asarray(toks[first:], dtype=np.uint64) + np.uint64(1)
        ends = np.arange(start, len(toks))
        h = np.zeros(len(ends), dtype=np.uint64)
        for n in range(1, self.max_ngram + 1):
            at = ends - (n - 1) - first
            h = h + values[np.maximum(at, 0)] * np.uint64(self._powers[n - 1])  # wraps mod 2**64
            if n < self.min_ngram:
                continue
            real = at >= 0
            keys, real_ends = h[real], ends[real]
            # The previous end with the same hash: the one before it in a stable sort by hash,
            # or, for a hash's first end in this chunk, the latest one indexed before.
            order = np.argsort(keys, kind="stable")
            same = keys[order[1:]] == keys[order[:-1]]
            previous = np.full(len(keys), -1, dtype=np.int64)
            previous[order[1:][same]] = real_ends[order[:-1][same]]
            latest = self._latest[n - self.min_ngram]
            key_list = keys.tolist()
            if latest:
                for i in np.flatnonzero(previous < 0).tolist():
                    previous[i] = latest.get(key_list[i], -1)
            chain = np.full(len(ends), -1, dtype=np.int64)
            chain[real] = previous
            self._previous[n - self.min_ngram].extend(chain.tolist())
            latest.update(zip(key_list, real_ends.tolist()))  # later ends overwrite: the latest wins

    def matches(self, max_matches: int) -> list[Match]:
        """`scan_matches(self.tokens, ...)`, from the index: O(max_ngram + max_matches) chain links
        (plus any hash collisions, which are checked and skipped)."""
        toks = self.tokens
        last = len(toks) - 1
        out: list[Match] = []
        taken: set[int] = set()
        for n in range(min(self.max_ngram, last + 1), self.min_ngram - 1, -1):
            previous = self._previous[n - self.min_ngram]
            gram = toks[last - n + 1 :]
            # The chain starts at the suffix itself (it is indexed); positions of longer matches
            # were taken at a longer n (all of them, or we would have returned), so what is left
            # here matches exactly n tokens.
            end = previous[last]
            while end >= 0:
                if end not in taken and toks[end - n + 1 : end + 1] == gram:
                    out.append((n, end))
                    taken.add(end)
                    if len(out) == max_matches:
                        return out
                end = previous[end]
        return out


def continuation_tree(tokens: Sequence[int], ends: Sequence[int], max_nodes: int, max_depth: int) -> DraftTree | None:
    """A trie of the continuations after `ends` (best match first), best nodes first, or None.

    Continuation j (the tokens after ends[j], at most max_depth) weighs 1 / (j + 1); a node's score
    is the sum of the weights of the continuations through it, so the best match's branch comes
    first and a prefix several matches agree on outranks a single match's. The best `max_nodes`
    nodes are taken, best first (parents come first); ties go to the node created first.

    >>> t = continuation_tree([4, 5, 6, 4, 5, 7, 4], [3, 0], 3, 2)
    >>> t.tokens, t.parents
    ([5, 7, 6], [-1, 0, 0])
    >>> continuation_tree([4, 5], [], 4, 4) is None
    True
    """
    node_tokens: list[int] = []
    node_parents: list[int] = []
    scores: list[float] = []
    trie: dict[int, int] = {}  # (parent + 1) * 2**32 + token -> node: int keys hash fast
    for j, end in enumerate(ends):
        weight = 1.0 / (j + 1)
        node = -1
        for token in tokens[end + 1 : end + 1 + max_depth]:
            key = ((node + 1) << 32) + token
            child = trie.get(key)
            if child is None:
                child = trie[key] = len(node_tokens)
                node_tokens.append(token)
                node_parents.append(node)
                scores.append(weight)
            else:
                scores[child] += weight
            node = child

    # A child never scores above its parent and is created after it, so ordered by score (a
    # stable sort: ties by creation) every parent comes before its children, and every prefix of
    # the order is a tree: its first max_nodes nodes are the best ones.
    chosen = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:max_nodes]
    where = [-1] * len(scores)
    for i, node in enumerate(chosen):
        where[node] = i
    out_tokens = [node_tokens[node] for node in chosen]
    out_parents = [-1 if node_parents[node] < 0 else where[node_parents[node]] for node in chosen]
    return DraftTree(out_tokens, out_parents) if out_tokens else None


@dataclass(frozen=True)
class RequestMark:
    """A few probes of a request's tokens, to tell in O(1) whether a context continues it.

    Comparing whole prompts each step would cost a scan of the context, which the index exists
    to avoid. A new request whose prompt has the same length and the same tokens at every probe
    is taken for the old one: its drafts then come from the old request's index, which costs
    acceptance, never correctness (every draft is verified).

    >>> mark = RequestMark.of([1, 2, 3, 4], prompt_len=3)
    >>> mark.continued_by([1, 2, 3, 4, 5], 3), mark.continued_by([1, 2, 3], 3), mark.continued_by([7, 2, 3, 4, 5], 3)
    (True, False, False)
    >>> mark.advanced([1, 2, 3, 4, 5]).continued_by([1, 2, 3, 4, 6], 3)
    False
    """

    prompt_len: int
    length: int
    last: int  # tokens[length - 1]
    probes: tuple[tuple[int, int], ...]  # (position, token), spread over the prompt

    @classmethod
    def of(cls, tokens: Sequence[int], prompt_len: int, spread: int = 8) -> RequestMark:
        span = min(prompt_len, len(tokens))
        positions = sorted({span * i // spread for i in range(spread)} | {span - 1})
        probes = tuple((p, int(tokens[p])) for p in positions if p >= 0)
        return cls(prompt_len, len(tokens), int(tokens[-1]) if len(tokens) else -1, probes)

    def advanced(self, tokens: Sequence[int]) -> RequestMark:
        """The mark of this request grown to `tokens` (the prompt's probes are kept)."""
        return RequestMark(self.prompt_len, len(tokens), int(tokens[-1]) if len(tokens) else -1, self.probes)

    def continued_by(self, tokens: Sequence[int], prompt_len: int) -> bool:
        """Whether `tokens` is (by the probes) this request's context, possibly grown."""
        if prompt_len != self.prompt_len or len(tokens) < self.length:
            return False
        if self.length and int(tokens[self.length - 1]) != self.last:
            return False
        return all(int(tokens[p]) == t for p, t in self.probes)


class NgramDrafter:
    """Prompt lookup / suffix matching over the request's prompt and output (no model calls).

    The index belongs to the request being decoded; a context that does not continue the last
    one (see `RequestMark`) starts a new index.

    >>> from skipspec.config import SamplingParams
    >>> ctx = DraftContext([7, 1, 2, 3, 4, 9, 1, 2], 6, max_nodes=8, max_depth=3, vocab_size=10,
    ...                    sampling=SamplingParams())
    >>> tree = NgramDrafter().propose(ctx)
    >>> tree.tokens, tree.parents
    ([3, 4, 9], [-1, 0, 1])
    """

    def __init__(self, config: NgramConfig | None = None, name: str = "ngram"):
        self.name = name
        self.config = config if config is not None else NgramConfig()
        self._index: NgramIndex | None = None
        self._mark: RequestMark | None = None

    def propose(self, ctx: DraftContext) -> DraftTree | None:
        index = self._index_for(ctx)
        depth = min(self.config.max_depth, ctx.max_depth)
        if ctx.max_nodes <= 0 or depth <= 0:
            return None
        ends = [end for _, end in index.matches(self.config.max_matches)]
        return continuation_tree(index.tokens, ends, ctx.max_nodes, depth)

    def observe(self, ctx: DraftContext, result: StepResult) -> None:
        """Nothing to learn: the committed tokens reach the index through the next context."""

    def _index_for(self, ctx: DraftContext) -> NgramIndex:
        tokens = ctx.tokens
        if self._index is None or self._mark is None or not self._mark.continued_by(tokens, ctx.prompt_len):
            self._index = NgramIndex(self.config.min_ngram, self.config.max_ngram)
            self._mark = RequestMark.of(tokens, ctx.prompt_len)
        self._index.extend(tokens[len(self._index.tokens) :])
        self._mark = self._mark.advanced(tokens)
        return self._index
