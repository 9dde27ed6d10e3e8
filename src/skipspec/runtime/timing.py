"""Step costs as the fast path runs them, for the search's cost model (`search.costs.measure_costs`).

The search scores a skip set by expected tokens per second, from measured costs of a plain step,
of each sublayer and of a verify step per tree size. Measured with eager forwards, those costs
describe the eager path: on a GPU an eager step is bound by Python, every sublayer costs the same
launch time and a 32-token forward costs about what a 1-token one does, while a captured step is
bound by the device and a wide verify costs visibly more. A search that used eager costs to
choose sets for the graph path would expect speedups the graph path cannot deliver (and its
realized-rate watch, which prices steps with the same costs, would not notice). So a decoder with
a fast runtime measures through `StepTimer`: the same `forward_static` program the steps run,
captured as a graph (and with the same compiled sublayers) when the runtime captures, on a
private cache and private inputs so that nothing a request holds is touched.

Captured steps attend over the whole cache capacity, so their cost follows the capacity rather
than the context: the timer sizes its cache from the context it is asked about (rounded up as a
request's would be), which keeps the cost model's context axis meaningful for both paths.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch

from ..model.adapter import ModelAdapter, Sublayers
from ..model.cache import KVCache
from ..model.skipset import SkipSet
from .buckets import round_up
from .graphs import StepGraph

_REPLAYS = 3


def probe_step(
    adapter: ModelAdapter,
    cache: KVCache,
    cols: torch.Tensor,
    ids: torch.Tensor,
    start: int,
    skip: SkipSet,
    sublayers: Sublayers | None = None,
) -> torch.Tensor:
    """A fixed-shape causal forward of `ids` (1, n) at slots [start, start + n) with `skip`; logits (n, vocab)."""
    positions = start + cols[: ids.shape[1]]
    cache.prepare_slots(positions, cache.capacity)
    allowed = cols[None, :] <= positions[:, None]
    return adapter.forward_static(ids, positions, allowed, cols, cache, skip, sublayers=sublayers)


class StepTimer:
    """`search.costs.Timer` over fixed-shape steps: seconds of one forward of n tokens after `context` slots.

    A (capacity, n, skip) shape is captured (or, uncaptured, rehearsed) on first use, untimed;
    each call then times `_REPLAYS` replays and returns their mean. Its caches and graphs live as
    long as the timer.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        *,
        capture: bool,
        capacity_step: int,
        bind: Callable[[KVCache, int], Sublayers | None] = lambda cache, queries: None,
    ) -> None:
        """bind: the sublayers the runtime's steps of so many queries use, bound to a cache."""
        self.adapter = adapter
        self.capture = capture
        self.capacity_step = capacity_step
        self.bind = bind
        self._caches: dict[int, tuple[KVCache, torch.Tensor]] = {}
        self._graphs: dict[tuple[int, int, int, SkipSet], StepGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None

    @torch.inference_mode()
    def __call__(self, n: int, context: int, skip: SkipSet) -> float:
        capacity = round_up(context + n, self.capacity_step)
        step = self._graph(capacity, n, context, skip)
        self._sync()
        start = time.perf_counter()
        for _ in range(_REPLAYS):
            out = step()
        out[-1, 0].item()  # the host read waits for the device
        return (time.perf_counter() - start) / _REPLAYS

    def _graph(self, capacity: int, n: int, context: int, skip: SkipSet) -> StepGraph:
        key = (capacity, n, context, skip)
        if key not in self._graphs:
            if capacity not in self._caches:
                cache = self.adapter.new_cache(capacity)
                cols = torch.arange(capacity, device=self.adapter.device)
                self._caches[capacity] = (cache, cols)
            cache, cols = self._caches[capacity]
            sublayers = self.bind(cache, n)
            ids = torch.randint(0, self.adapter.vocab_size, (1, n), device=self.adapter.device)
            program = functools.partial(probe_step, self.adapter, cache, cols, ids, context, skip, sublayers=sublayers)
            self._graphs[key] = StepGraph(program, capture=self.capture, pool=self._pool)
        return self._graphs[key]

    def _sync(self) -> None:
        if self.adapter.device.type == "cuda":
            torch.cuda.synchronize(self.adapter.device)
