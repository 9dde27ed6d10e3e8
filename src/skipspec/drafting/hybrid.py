"""Hybrid drafting: which of several drafters' nodes are worth verifying in this step.

Every source (n-gram lookup, token recycling, layer skipping) proposes its best nodes first. A
node's worth is the chance it is accepted, learnt per source and per place in that source's
order (a recycling template's node 7 is the same guess every step; an n-gram tree's node 0 is
its best continuation's first token), from decayed counts with an optimistic prior so that a
source that is never given nodes is still tried. A step verifies the nodes that maximise the
expected tokens per second,

    (1 + sum of the chosen nodes' worth) / (measured seconds of a verify of that many nodes),

taking each source's nodes in its own order (so every node's parent is in). On a GPU a verify of
64 nodes costs little more than one of 1, so trees grow wide; on a CPU every node costs nearly a
token's compute, so trees stay narrow; when nothing is worth its cost the step is plain.

That choice prices the verify alone. What a drafting step really costs also holds the host's
work (proposing, merging, staging the tree, learning from the result), which on a fast GPU is
a fifth to a half of a small model's step, and which a run of plain steps does not pay: those
are launched back to back, the host's work hidden behind the GPU's. So `RateWatch` compares
tokens per second of whole drafting steps, as they ran, with plain runs' own, and where
drafting is the slower it pauses it for a run of plain steps, longer each time it is found
slower again.

Layer skipping drafts on the host, one draft forward per depth, while n-gram and recycling trees
can be drafted on the device inside the verify step (`runtime.device_drafting`), with the next
step launched before the host reads the last. So when a skip set is chosen the question is not
whether its drafts beat plain decoding (its search answers that) but whether host steps with its
drafts merged in beat those drafting steps: a second `RateWatch` asks it, with drafting steps as
the yardstick, and pauses layer skipping while it loses. Before that, the search only takes up
a set whose estimate beats the drafting steps' own rate over plain decoding's
(`NodeAllocator.drafting_rate`, the search's baseline).

A drafting step's tree has a fixed layout: hybrid's holds the lookup chains and the recycling
template, in a larger bucket than the template alone. Where the text offers lookup little, the
larger verify costs more than the chains bring. `LayoutChoice` picks, step by step, between the
two layouts (where `RuntimeConfig.device_template_alone` allows the smaller one); it needs no
trial of the smaller one, since every step of the larger also says what the template alone
would have accepted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..search.online import RealizedRate
from .base import DraftTree


@dataclass(frozen=True)
class HybridConfig:
    """How node worth is learnt.

    prior:    assumed acceptance of a source's first node before any evidence, `prior * fade**i`
              for its i-th node: optimistic, so that every source is tried
    fade:     see `prior`
    weight:   pseudo-steps the prior counts for (a source earns or loses its place within a few
              steps)
    decay:    all evidence fades by this factor every step, used or not (drafts' quality drifts
              with the text, and a source left out long enough is tried again)
    max_nodes: nodes tracked per source (the largest tree a source may propose)
    offer_window, min_offer: a source is asked for twice the most nodes a step kept of it over
              the last `offer_window` drafting steps, at least `min_offer` (and never more than
              its share of the budget). A step keeps a small part of a wide proposal (a
              recycling template of 80 nodes, of which ~16 are worth verifying): proposing,
              capping and choosing among the rest is host time on the critical path. A source
              whose offer was all kept is offered twice as many at the next step. 0: always
              ask for the whole share.
    """

    prior: float = 0.9
    fade: float = 0.85
    weight: float = 2.0
    decay: float = 0.99
    max_nodes: int = 256
    offer_window: int = 32
    min_offer: int = 16

    def __post_init__(self) -> None:
        for name, low, high in (("prior", 0.0, 1.0), ("fade", 0.0, 1.0), ("decay", 0.0, 1.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and low < value <= high):
                raise ConfigError(f"{name} must be in ({low}, {high}], got {value!r}")
        if not (isinstance(self.weight, (int, float)) and self.weight > 0):
            raise ConfigError(f"weight must be > 0, got {self.weight!r}")
        for name, low in (("max_nodes", 1), ("offer_window", 0), ("min_offer", 1)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


class NodeWorth:
    """One source's chance of acceptance per node index, from decayed counts and a prior.

    >>> w = NodeWorth(HybridConfig(prior=0.5, fade=1.0, weight=2.0, decay=1.0, max_nodes=4))
    >>> w.values(2).tolist()
    [0.5, 0.5]
    >>> w.record(proposed=2, accepted=[0]); w.values(2).round(3).tolist()
    [0.667, 0.333]
    """

    def __init__(self, config: HybridConfig) -> None:
        n = config.max_nodes
        self.config = config
        self.prior = config.prior * config.fade ** np.arange(n)
        self.proposed = np.zeros(n)
        self.accepted = np.zeros(n)

    def values(self, n: int) -> np.ndarray:
        w = self.config.weight
        n = min(n, self.config.max_nodes)
        return (self.accepted[:n] + w * self.prior[:n]) / (self.proposed[:n] + w)

    def record(self, proposed: int, accepted: Sequence[int]) -> None:
        """A step verified this source's first `proposed` nodes (0: none) and accepted those in `accepted`."""
        decay = self.config.decay
        self.proposed *= decay
        self.accepted *= decay
        proposed = min(proposed, self.config.max_nodes)
        self.proposed[:proposed] += 1.0
        for i in accepted:
            if i < proposed:
                self.accepted[i] += 1.0


def parent_capped(values: np.ndarray, parents: Sequence[int]) -> list[float]:
    """Each node's worth capped by its ancestors': a node is accepted only after its parent.

    One pass in node order (every parent comes before its children). Over Python floats: for
    the tens of nodes a drafter proposes that is several times faster than any formulation in
    array operations (a pointer-doubling one cost 21 us a tree, this 3 us), and it runs on the
    host before every step.

    >>> parent_capped(np.array([0.5, 0.7, 0.2, 0.9]), [-1, 0, 1, 2])
    [0.5, 0.5, 0.2, 0.2]
    """
    out = values.tolist()[: len(parents)]
    for i, p in enumerate(parents[: len(out)]):
        if p >= 0 and out[p] < out[i]:
            out[i] = out[p]
    return out


def choose_nodes(worths: Sequence[Sequence[float]], costs: np.ndarray) -> list[int]:
    """How many of each source's first nodes to verify: the prefix lengths maximising
    (1 + total worth) / costs[total nodes], nodes taken best next node first.

    costs[n]: seconds of a verify step of n drafted nodes (costs[0]: a plain step); no more than
    `len(costs) - 1` nodes are taken.

    Nodes are ranked by their source's running minimum of worth, which never rises along a
    source: a stable sort then keeps each source's own order, so every prefix of the ranking
    is a prefix of each source (each node's parent comes before it). Vectorised: this runs on
    the host before every step.

    >>> flat = np.ones(8)                        # a GPU: wide trees are free
    >>> choose_nodes([[0.9, 0.5], [0.2]], flat)
    [2, 1]
    >>> linear = 1.0 + 0.5 * np.arange(8)        # a CPU: each node costs half a token
    >>> choose_nodes([[0.9, 0.5], [0.2]], linear)
    [1, 0]
    >>> choose_nodes([[0.1]], linear)            # nothing pays: a plain step
    [0]
    >>> choose_nodes([[0.2, 0.9], [0.5]], flat)  # a source's node 1 comes after its node 0
    [2, 1]
    """
    sizes = [len(w) for w in worths]
    taken = [0] * len(worths)
    if not any(sizes) or len(costs) < 2:
        return taken
    values = np.concatenate([np.asarray(w, dtype=float) for w in worths if len(w)])
    keys = np.concatenate([np.minimum.accumulate(np.asarray(w, dtype=float)) for w in worths if len(w)])
    sources = np.repeat(np.arange(len(worths)), sizes)
    order = np.argsort(-keys, kind="stable")[: len(costs) - 1]
    rates = (1.0 + np.cumsum(values[order])) / costs[1 : len(order) + 1]
    best = int(np.argmax(rates))
    if rates[best] <= 1.0 / costs[0]:
        return taken
    return np.bincount(sources[order[: best + 1]], minlength=len(worths)).tolist()


class StepSeconds:
    """Seconds of verify steps by forward size, as this decoder's steps really took them.

    A cost model measured once (`search.costs`) gives the prior; each step's own wall time then
    replaces it for its size (a moving average), since a machine's load, or a model of costs
    measured under another load, can make the prior wrong by a factor, and a wrong ratio of a
    wide verify to a plain step is what makes speculation slower than plain decoding.

    The first step of a size is left out: it pays that shape's one-time costs (kernel plans,
    allocations), often many times a step's.

    >>> s = StepSeconds(decay=0.5)
    >>> s.record(4, 30.0); s.cost(4, prior=2.0), s.record(4, 3.0), s.cost(4, prior=2.0)
    (2.0, None, 3.0)
    """

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self.seconds: dict[int, float] = {}
        self._seen: set[int] = set()

    def record(self, size: int, seconds: float) -> None:
        key = _bucket(size)
        if key not in self._seen:
            self._seen.add(key)
            return
        old = self.seconds.get(key)
        self.seconds[key] = seconds if old is None else self.decay * old + (1 - self.decay) * seconds

    def cost(self, size: int, prior: float) -> float:
        """Steps are kept per power-of-two size (eager steps come in every size; a bucket's
        neighbours cost about the same)."""
        return self.seconds.get(_bucket(size), prior)

    def costs(self, sizes: Sequence[int], priors: Sequence[float]) -> list[float]:
        """`cost` of each size, with its prior."""
        get = self.seconds.get
        return [get(_bucket(n), p) for n, p in zip(sizes, priors)]


def _bucket(size: int) -> int:
    return 1 << max(size - 1, 0).bit_length()


class RateWatch:
    """Whether drafting steps, as they really ran, give more tokens per second than plain runs.

    Drafting steps are judged over a sliding window of `window` steps (tokens committed over
    their wall seconds, host work included); the yardstick is the seconds per token of plain-run
    steps (moving averages of the steps seen, `plain`; before any, the caller's estimate). When
    the window's rate is under the yardstick's, drafting pauses for `pause` plain steps, doubled
    each time the first full window after a pause is found slower again (up to `max_pause`: text
    changes, and a long-paused source may pay again), and back to `pause` once one pays.

    The same rule judges any kind of step against another: `NodeAllocator.skip_watch` times host
    steps with layer-skip drafts in (`drafted`) against drafting steps (`plain`, with their tokens).

    >>> w = RateWatch(window=2, pause=4)
    >>> w.drafted(2, 2.0, plain_estimate=1.0); w.drafted(1, 2.0, plain_estimate=1.0); w.plain_steps()
    4
    >>> for _ in range(4): w.plain(1.0)
    >>> w.plain_steps(), w.pauses
    (0, 1)
    """

    def __init__(self, window: int = 32, pause: int = 16, max_pause: int = 128, decay: float = 0.9) -> None:
        if not (window >= 1 and 1 <= pause <= max_pause and 0.0 <= decay < 1.0):
            raise ConfigError(
                f"bad RateWatch settings: window={window}, pause={pause}, max_pause={max_pause}, decay={decay}"
            )
        self.pause, self.max_pause, self.decay = pause, max_pause, decay
        self.rate = RealizedRate(window)
        self._yardstick: tuple[float, float] | None = None  # (seconds, tokens) of a step, moving averages
        self.pauses = 0  # pauses started, for the statistics
        self._left = 0  # plain steps still to run in the current pause
        self._next = pause  # the next pause's length
        self._fresh = True  # no verdict since the last pause (or the start)

    def drafted(self, tokens: int, seconds: float, plain_estimate: float) -> None:
        """One drafting step committed `tokens` in `seconds` (a plain-run step costs about
        `plain_estimate` seconds while no plain run has been timed)."""
        self.rate.add(tokens, seconds)
        speedup = self.rate.speedup(self.plain_or(plain_estimate))
        if speedup is None:  # the window is not full yet
            return
        if speedup >= 1.0:
            if self._fresh:
                self._next, self._fresh = self.pause, False
            return
        self._left = self._next
        self._next = min(2 * self._next, self.max_pause)
        self._fresh = True
        self.pauses += 1
        self.rate.reset()

    def plain(self, seconds: float, tokens: int = 1) -> None:
        """One step of a plain run took `seconds` (the host's work between steps included) and
        committed `tokens`."""
        d, old = self.decay, self._yardstick
        if old is not None:
            seconds, tokens = d * old[0] + (1 - d) * seconds, d * old[1] + (1 - d) * tokens
        self._yardstick = (seconds, tokens)
        self._left = max(self._left - 1, 0)

    @property
    def plain_seconds(self) -> float | None:
        """Seconds per token of the plain steps seen (None before any)."""
        return None if self._yardstick is None else self._yardstick[0] / self._yardstick[1]

    def plain_or(self, estimate: float) -> float:
        """`plain_seconds`, or `estimate` before any plain step was seen."""
        seconds = self.plain_seconds
        return estimate if seconds is None else seconds

    def plain_steps(self) -> int:
        """Plain steps the current pause still wants (0: draft)."""
        return self._left


class LayoutChoice:
    """Which of two drafting-step layouts to launch next: the wide one (lookup chains and the
    recycling template) or the narrow one (the template alone, a smaller bucket).

    Every wide step reports the tokens it committed and those the template alone would have
    (`runtime.device_drafting.template_accepted`): exact, as targets depend only on the prefix.
    So wide steps alone give both layouts' tokens per step, as moving averages; seconds per step
    are moving averages of each layout's steps as they ran. After `min_wide` wide steps one narrow
    step runs to time it (a verify cost model prices the bare forwards, not whole steps), then
    narrow steps run while their rate is the higher, with every `probe`-th step wide so the
    evidence follows the text.

    >>> c = LayoutChoice(probe=3, min_wide=1)
    >>> c.wide(tokens=3, narrow_tokens=3, seconds=1.0); c.pick(), c.pick()   # one narrow step to time it
    (1, 0)
    >>> c.narrow(seconds=0.8); [c.pick() for _ in range(6)]
    [1, 1, 0, 1, 1, 0]
    >>> c.wide(tokens=6, narrow_tokens=1, seconds=1.0); c.pick()   # the chains paid
    0
    """

    WIDE, NARROW = 0, 1

    def __init__(self, probe: int = 8, min_wide: int = 4, decay: float = 0.8) -> None:
        if not (probe >= 2 and min_wide >= 1 and 0.0 <= decay < 1.0):
            raise ConfigError(f"bad LayoutChoice settings: probe={probe}, min_wide={min_wide}, decay={decay}")
        self.probe, self.min_wide, self.decay = probe, min_wide, decay
        self._tokens: list[float | None] = [None, None]  # tokens per step: wide, narrow (both from wide steps)
        self._seconds: list[float | None] = [None, None]  # seconds per step of each layout's own steps
        self._wide_steps = 0
        self._narrow_run = 0  # narrow picks since the last wide one

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else self.decay * old + (1 - self.decay) * new

    def wide(self, tokens: int, narrow_tokens: int, seconds: float) -> None:
        """A wide step committed `tokens` in `seconds`; the template alone would have committed `narrow_tokens`."""
        self._tokens = [self._average(old, new) for old, new in zip(self._tokens, (tokens, narrow_tokens))]
        self._seconds[self.WIDE] = self._average(self._seconds[self.WIDE], seconds)
        self._wide_steps += 1

    def narrow(self, seconds: float) -> None:
        """A narrow step took `seconds`."""
        self._seconds[self.NARROW] = self._average(self._seconds[self.NARROW], seconds)

    def pick(self) -> int:
        """The layout of the step about to be launched: `WIDE` or `NARROW`."""
        wide_s, narrow_s = self._seconds
        if self._wide_steps < self.min_wide or wide_s is None or self._narrow_run >= self.probe - 1:
            self._narrow_run = 0
            return self.WIDE
        if narrow_s is None:  # never timed: one step to time it (its read-back is a step behind)
            self._narrow_run = self.probe - 1
            return self.NARROW
        if self._tokens[self.NARROW] / narrow_s > self._tokens[self.WIDE] / wide_s:
            self._narrow_run += 1
            return self.NARROW
        self._narrow_run = 0
        return self.WIDE


class NodeAllocator:
    """Per-step choice of the nodes a hybrid step verifies, and whether to draft at all (see
    the module docstring).

    Every `PLAIN_EVERY`-th step is plain whatever the worth, so the plain step's own cost, the
    yardstick of every choice, stays measured.
    """

    PLAIN_EVERY = 32

    def __init__(self, names: Sequence[str], config: HybridConfig | None = None) -> None:
        self.config = config or HybridConfig()
        self.names = tuple(names)
        self.worth = [NodeWorth(self.config) for _ in self.names]
        self.step_seconds = StepSeconds()
        self.watch = RateWatch()
        # Host steps with layer-skip drafts in, against drafting steps (see the module docstring):
        # a shorter window, as such steps run alone, and longer pauses, as a loss costs a lot.
        self.skip_watch = RateWatch(window=16, pause=32, max_pause=512)
        # Drafting steps' rate over many steps, the bar a skip set's estimate must clear (a
        # short average dips with the text, and each dip would have the search take up a set).
        self.drafting_rate = RealizedRate(64)
        self._steps = 0
        window = self.config.offer_window
        self._kept = [deque(maxlen=window) for _ in self.names] if window else None

    def offer(self, source: int, share: int) -> int:
        """Nodes to ask source `source` for, at most its `share` of the budget (see
        `HybridConfig.offer_window`); the whole share until a window of steps has been seen.

        >>> alloc = NodeAllocator(["a"], HybridConfig(offer_window=2, min_offer=4))
        >>> alloc.offer(0, 80)
        80
        >>> alloc.observe([3], [()]); alloc.observe([1], [()]); alloc.offer(0, 80)
        6
        >>> alloc.observe([6], [()]); alloc.offer(0, 80)   # all 6 kept: twice as many
        12
        """
        kept = self._kept[source] if self._kept is not None else None
        if kept is None or len(kept) < kept.maxlen:
            return share
        return min(share, max(self.config.min_offer, 2 * max(kept)))

    def plan(self, trees: Sequence[DraftTree | None], parents: Sequence[Sequence[int]], costs: np.ndarray) -> list[int]:
        """Nodes to keep of each source's tree (a prefix of it); parents: each tree's host parents;
        costs[n]: seconds of a verify of n drafted nodes."""
        self._steps += 1
        if self._steps % self.PLAIN_EVERY == 0:
            return [0] * len(trees)
        worths = [
            parent_capped(w.values(len(t)), p) if t is not None and len(t) else []
            for w, t, p in zip(self.worth, trees, parents)
        ]
        return choose_nodes(worths, costs)

    def observe(self, kept: Sequence[int], paths: Sequence[Sequence[int]]) -> None:
        """The step verified `kept[s]` nodes of source s and accepted `paths[s]` of them."""
        for w, n, path in zip(self.worth, kept, paths):
            w.record(n, path)
        if self._kept is not None:
            for window, n in zip(self._kept, kept):
                window.append(n)
