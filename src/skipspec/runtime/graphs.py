"""Capture and replay of fixed-shape step programs, and a bounded cache of captured graphs.

We drive `torch.cuda.CUDAGraph` directly rather than `torch.compile(mode="reduce-overhead")`:
the step programs call the model's own Hugging Face modules and our KV cache object, and capture
needs them to run once, not to be traced; one memory pool is shared by every graph of a request's
cache; and graphs are keyed by our own values (skip set, tree bucket) with an explicit LRU bound,
so nothing recompiles when the search tries a new skip set and nothing compiles at import.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


class StepGraph(Generic[T]):
    """A step program over persistent tensors, replayed from one CUDA graph (or run directly).

    `program()` must read its inputs only from tensors that outlive it and return its outputs;
    with `capture=True` the outputs are the graph's static tensors, rewritten by every replay,
    so callers clone (or copy out) what they keep before the next call.

    Capture runs the program once eagerly first (lazy initialisation such as cuBLAS workspaces
    must not happen inside a capture). That warm-up has the program's side effects, so programs
    must be idempotent up to `mutable`: tensors the program advances itself (a draft step's
    position, say) are saved before the warm-up and restored after it. KV writes are idempotent
    because each program rewrites every cache slot it reads beyond the committed prefix.

    Programs run under `torch.inference_mode()`: the runtime's buffers are inference tensors.
    """

    def __init__(
        self,
        program: Callable[[], T],
        *,
        capture: bool,
        pool=None,
        mutable: Sequence[torch.Tensor] = (),
    ) -> None:
        self._program = program
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: T | None = None
        if capture:
            self.graph, self.outputs = _capture(program, pool, mutable)
        else:
            # Uncaptured (static mode) still rehearses the warm-up, so the CPU tests see any
            # first-use side effect a capture would have (say, inputs staged too late).
            _warm_up(program, mutable, side_stream=False)

    def __call__(self) -> T:
        if self.graph is None:
            with torch.inference_mode():
                return self._program()
        self.graph.replay()
        return self.outputs  # type: ignore[return-value]


@torch.inference_mode()
def _warm_up(program: Callable[[], T], mutable: Sequence[torch.Tensor], side_stream: bool) -> None:
    """Run `program` once (on a side stream before a capture, as PyTorch advises), then restore `mutable`."""
    saved = [t.clone() for t in mutable]
    if side_stream:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            program()
        torch.cuda.current_stream().wait_stream(side)
    else:
        program()
    for tensor, value in zip(mutable, saved):
        tensor.copy_(value)


@torch.inference_mode()
def _capture(program: Callable[[], T], pool, mutable: Sequence[torch.Tensor]):
    _warm_up(program, mutable, side_stream=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = program()
    return graph, outputs


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class GraphCache(Generic[K, V]):
    """At most `capacity` entries, least recently used evicted first.

    Evicting drops the last reference to a captured graph, which frees it; its memory goes back
    to the shared pool for the next capture.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.captures = 0
        self.evictions = 0

    def get(self, key: K, build: Callable[[], V]) -> V:
        """The entry for `key`, built (and counted as a capture) on first use."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = build()
        self.captures += 1
        self._entries[key] = value
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evictions += 1
        return value

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
