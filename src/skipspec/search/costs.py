"""Measured costs of the engine's forwards on the actual device and dtype, as a small fitted model.

`measure_costs` times one-token forwards with nothing skipped, with every inner attention sublayer
of one layer type skipped, with every inner MLP skipped and with every inner sublayer skipped, at
two context lengths, plus verify forwards over 2 to 64 tree nodes (what the search prices its
trees by, and what hybrid drafting sizes its trees by). Layers of one model share their
shapes, so a sublayer's cost is a per-kind (and per attention layer type: sliding windows read
fewer keys) share of the difference; timing each of the 2(L-2) sublayers alone would need 2(L-2)
differences of two noisy numbers for no extra information. Costs grow with the context linearly
(attention reads every cached key), so each is a line `a + b * context` through the two lengths.

Each configuration is timed relative to the plain forward of the same repetition (a burst of load
from another process hits both sides of the ratio). The measurement is bounded by a time budget
(two seconds by default, at least one repetition) and is kept per decoder and in the layer-set
store, so it runs once per model, dtype and machine.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..model.adapter import Frame, ModelAdapter
from ..model.skipset import SkipSet


@dataclass(frozen=True)
class Line:
    """seconds = a + b * context.

    >>> Line.through((100, 1.0), (300, 2.0))(200)
    1.5
    """

    a: float
    b: float

    def __call__(self, context: float) -> float:
        return self.a + self.b * context

    @classmethod
    def through(cls, p: tuple[float, float], q: tuple[float, float]) -> Line:
        slope = (q[1] - p[1]) / (q[0] - p[0]) if q[0] != p[0] else 0.0
        return cls(p[1] - slope * p[0], slope)

    def clamped(self) -> Line:
        """Never negative over any context: noise must not make a sublayer free to skip *and* paid for."""
        return Line(max(self.a, 0.0), max(self.b, 0.0))


@dataclass(frozen=True)
class CostModel:
    """Seconds of the forwards that make up a step, as functions of the context length.

    plain:  one-token forward, nothing skipped (a plain decoding step)
    floor:  one-token forward with every inner sublayer skipped (no draft is cheaper)
    attn:   per inner layer 1..L-2, its attention sublayer
    mlp:    per inner layer 1..L-2, its MLP sublayer
    extra:  (nodes, seconds) a verify forward over that many tree nodes costs on top of `plain`
    """

    num_layers: int
    plain: Line
    floor: Line
    attn: tuple[Line, ...]
    mlp: tuple[Line, ...]
    extra: tuple[tuple[int, float], ...]

    def slot_costs(self, context: float) -> np.ndarray:
        """Seconds saved by skipping each slot, in `SkipSet.from_slots` order (attention, then MLP)."""
        return np.array([c(context) for c in self.attn + self.mlp])

    def draft_cost(self, skip: SkipSet, context: float) -> float:
        saved = sum(self.attn[i - 1](context) for i in skip.attn) + sum(self.mlp[i - 1](context) for i in skip.mlp)
        return max(self.plain(context) - saved, self.floor(context))

    def verify_cost(self, nodes: float, context: float) -> float:
        """A forward over `nodes` tree nodes: piecewise linear in the nodes, extrapolated by the last slope.

        >>> m = CostModel(3, Line(1.0, 0.0), Line(0.1, 0.0), (Line(0, 0),), (Line(0, 0),), ((1, 0.0), (5, 0.4)))
        >>> m.verify_cost(3, 0), m.verify_cost(9, 0)
        (1.2, 1.8)
        """
        xs, ys = self._extra_points
        if nodes <= xs[-1] or len(xs) < 2:
            over = float(np.interp(nodes, xs, ys))
        else:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            over = ys[-1] + slope * (nodes - xs[-1])
        return self.plain(context) + max(over, 0.0)

    @functools.cached_property
    def _extra_points(self) -> tuple[list[int], list[float]]:
        """`extra` as (nodes, seconds) lists: `verify_cost` runs per step and in every search bound."""
        return [n for n, _ in self.extra], [s for _, s in self.extra]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CostModel:
        """Inverse of `to_dict`; raises (KeyError, TypeError, ValueError) on a malformed record."""
        line = lambda v: Line(float(v["a"]), float(v["b"]))  # noqa: E731
        model = cls(
            int(d["num_layers"]),
            line(d["plain"]),
            line(d["floor"]),
            tuple(line(v) for v in d["attn"]),
            tuple(line(v) for v in d["mlp"]),
            tuple((int(n), float(s)) for n, s in d["extra"]),
        )
        if len(model.attn) != model.num_layers - 2 or len(model.mlp) != model.num_layers - 2 or not model.extra:
            raise ValueError("cost record does not match its layer count")
        return model


Timer = Callable[[int, int, SkipSet], float]


def increasing(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators).

    >>> increasing([0.0, 2.0, 1.0, 3.0, 10.0, 4.0])
    [0.0, 1.5, 1.5, 3.0, 7.0, 7.0]
    """
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            prev = blocks[-1]
            prev[0] = (prev[0] * prev[1] + mean * count) / (prev[1] + count)
            prev[1] += count
    return [mean for mean, count in blocks for _ in range(int(count))]


def forward_timer(adapter: ModelAdapter, capacity: int) -> Timer:
    """Seconds of one `adapter.forward` of n tokens after `context` cached slots (a private cache)."""
    cache = adapter.new_cache(capacity)
    device = adapter.device

    def run(n: int, context: int, skip: SkipSet) -> float:
        frame = Frame(
            input_ids=torch.randint(0, adapter.vocab_size, (1, n), device=device),
            positions=torch.arange(context, context + n, device=device),
            write_start=context,
            allowed=torch.ones(n, context + n, dtype=torch.bool, device=device),
            key_positions=torch.arange(context + n, device=device),
        )
        start = time.perf_counter()
        adapter.forward(frame, cache, skip)[-1, 0].item()  # the host read waits for the device
        return time.perf_counter() - start

    return run


def measure_costs(
    adapter: ModelAdapter,
    *,
    contexts: Sequence[int] = (64, 512),
    sizes: Sequence[int] = (2, 4, 8, 16, 32, 64),
    budget_s: float = 2.0,
    max_reps: int = 5,
    timer: Timer | None = None,
) -> CostModel:
    """Time the forwards a step is made of (see the module docstring).

    Each repetition times every configuration once, plain first. A configuration's cost is the
    plain step's (the fastest repetition) times the median over repetitions of its ratio to the
    plain step of the same repetition: a burst of load from another process inflates both sides of
    a ratio taken a moment apart, and the median drops the odd one out. As many repetitions as fit
    in `budget_s` (at least one, at most `max_reps`): one repetition is about 12 plain steps.
    """
    n = adapter.num_layers
    inner = range(1, n - 1)
    # Tree sizes that fit beside the longer context in the model's positions (tiny test models have 64).
    positions = adapter.max_positions or 1 << 30
    sizes = [q for q in sizes if q <= positions // 4] or [min(sizes)]
    limit = positions - max(sizes) - 1
    lo, hi = (min(c, limit) for c in contexts)
    lo = min(lo, hi // 2)
    time_it = timer or forward_timer(adapter, hi + max(sizes))
    types = sorted({adapter.layer_types[i] for i in inner})
    configs: dict[str, SkipSet] = {"plain": SkipSet.empty(), "mlp": SkipSet.of((), inner), "floor": SkipSet.of(inner, inner)}
    for t in types:
        configs[f"attn:{t}"] = SkipSet.of([i for i in inner if adapter.layer_types[i] == t], ())
    # An MLP's cost does not depend on the context: the MLP-skipped forward is timed at `lo` only.
    jobs = [("plain", 1, lo), ("plain", 1, hi), ("mlp", 1, lo), ("floor", 1, lo), ("floor", 1, hi)]
    jobs += [(f"attn:{t}", 1, c) for t in types for c in (lo, hi)] + [("plain", q, lo) for q in sizes]
    time_it(1, lo, configs["plain"])  # warm-up: allocator, kernels, lazy init
    ratios: dict[tuple[str, int, int], list[float]] = {job: [] for job in jobs}
    base: list[float] = []
    start = time.perf_counter()
    while True:
        times = [time_it(q, c, configs[name]) for name, q, c in jobs]
        base.append(times[0])
        for job, t in zip(jobs, times):
            ratios[job].append(t / times[0])
        reps = len(base)
        if reps >= max_reps or (time.perf_counter() - start) * (reps + 1) / reps > budget_s:
            break

    unit = min(base)

    def cost(name: str, q: int, c: int) -> float:
        return unit * float(np.median(ratios[name, q, c]))

    def line(name: str) -> Line:
        return Line.through((lo, cost(name, 1, lo)), (hi, cost(name, 1, hi)))

    plain = line("plain")
    per_layer = lambda total, count: Line(total.a / count, total.b / count).clamped()  # noqa: E731
    attn_of_type = {}
    for t in types:
        count = sum(adapter.layer_types[i] == t for i in inner)
        skipped = line(f"attn:{t}")
        attn_of_type[t] = per_layer(Line(plain.a - skipped.a, plain.b - skipped.b), count)
    mlp = per_layer(Line(plain(lo) - cost("mlp", 1, lo), 0.0), n - 2)
    extra = [(1, 0.0)] + [(q, cost("plain", q, lo) - cost("plain", 1, lo)) for q in sorted(sizes)]
    # A verify of more nodes never costs less than one of fewer: a dip or a spike is noise (a burst
    # of load on one repetition), and a curve with dips would make trees of the dip's size look free.
    extra = list(zip([q for q, _ in extra], increasing([max(e, 0.0) for _, e in extra])))
    return CostModel(
        n,
        plain,
        line("floor").clamped(),
        tuple(attn_of_type[adapter.layer_types[i]] for i in inner),
        (mlp,) * (n - 2),
        tuple((q, max(e, 0.0)) for q, e in extra),
    )
