"""Executors: how the steps of one request run. The decode loop never asks which one it has.

An executor holds a request's KV state (the cache, how many slots are committed, the root token)
and runs its steps:
- `prefill(prompt)`: the prompt into the cache; the first token (the root). It also stages the
  request's seed and sampling values (`verify.SamplingInputs`) on the device, which every later
  step reads; the `SamplingParams` the steps are passed choose only their program.
- `verify(tree)`: one full-model forward over root + tree, the targets, the acceptance of the
  longest correct path (`verify.verify_tree`, the same code for every executor) and the commit
  of that path in the cache; `None` is a plain step.
- `plain_steps(n)`: n plain steps, as fast as the executor can run them back to back.
- `draft_forward(skip)`: one skip-mode forward of the draft chain's next token (layer skipping).
- the search's scoring forwards (`score`, `sublayer_sizes`) and step timers (`cost_timer`).

Two implementations: `EagerExecutor` (the model's forwards as they are, shapes as they come)
and `runtime.static.StaticExecutor` (fixed-shape steps over a persistent cache, replayed from
CUDA graphs on a GPU).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..config import SamplingParams
from ..model.adapter import Frame, ModelAdapter
from ..model.cache import KVCache
from ..model.skipset import NO_SKIP, SkipSet
from ..tree import doublings, tree_frame
from ..verify import SamplingInputs, SamplingProgram, sampling_program, target_tokens, verify_tree
from .config import RuntimeConfig
from .cpu_linear import packed_sublayers
from .device_drafting import DeviceTreeShape
from .steps import draft_tail

#: Token ids, or parent indices, of some tree nodes: host ints or a 1-D device tensor.
Part = Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class TreeInput:
    """The tree a verify step runs: drafted nodes under the root, possibly from several drafters.

    tokens, parents: parts that concatenate to the nodes' tokens and parents (-1: the root, else
    an earlier node of the whole tree). Host parts travel in the step's one upload, device parts
    are copied on the device: nothing is read back before the step.
    size: drafted nodes (root excluded)
    """

    tokens: tuple[Part, ...]
    parents: tuple[Part, ...]
    size: int


@dataclass(frozen=True)
class Verified:
    """What a step committed, read back in the step's one host sync.

    tokens:   accepted drafted tokens, then the bonus token (host ints)
    path:     the accepted drafted nodes, as indices into the `TreeInput` (root excluded)
    topk:     (size + 1, k) the full model's top-k token ids at every node, root first (device;
              valid until the next step)
    verified: (size + 1,) the verified tokens, root first (device)
    fault:    None, or (node, kind) for the first malformed node of the tree, kind 1 a parent
              that is not an earlier node, 2 a token outside the vocabulary; nothing was committed
    depth:    the tree's depth: the most drafted tokens the step could have accepted
    host:     (verified, topk) as numpy arrays, read back with the step at no extra sync (None
              where the executor did not); valid until the next step
    layout:   a drafting step's tree layout (`DeviceTreeShape`); None for other steps
    """

    tokens: list[int]
    path: tuple[int, ...]
    topk: torch.Tensor
    verified: torch.Tensor
    fault: tuple[int, int] | None = None
    depth: int = 0
    host: tuple[np.ndarray, np.ndarray] | None = None
    layout: DeviceTreeShape | None = None


@dataclass(frozen=True)
class Reading:
    """`Verdict.packed` as host ints (path nodes count the root as 0)."""

    length: int  # path length, root included
    bonus: int
    path: list[int]
    path_tokens: list[int]
    fault: tuple[int, int] | None  # (drafted node, kind)
    depth: int

    @classmethod
    def of(cls, packed: list[int], bucket: int) -> Reading:
        """
        >>> Reading.of([2, 9, 0, 2, 3, 3, 7, 5, 5, 5, -1, 2, 1], 4)
        Reading(length=2, bonus=9, path=[0, 2], path_tokens=[7, 5], fault=None, depth=1)
        """
        length = packed[0]
        node, kind = packed[2 + 2 * bucket], packed[3 + 2 * bucket]
        return cls(
            length,
            packed[1],
            packed[2 : 2 + length],
            packed[2 + bucket : 2 + bucket + length],
            (node - 1, kind) if node >= 0 else None,
            packed[4 + 2 * bucket],
        )

    def verified(
        self, topk: torch.Tensor, tokens: torch.Tensor, host: tuple[np.ndarray, np.ndarray] | None = None,
        layout: DeviceTreeShape | None = None,
    ) -> Verified:  # fmt: skip
        if self.fault is not None:
            return Verified([], (), topk, tokens, self.fault, layout=layout)
        path = tuple(i - 1 for i in self.path[1:])  # drafted nodes count from 0
        return Verified(self.path_tokens[1:] + [self.bonus], path, topk, tokens, None, self.depth, host, layout)


def new_seed() -> int:
    """A fresh 63-bit seed for a request that gave none (the global RNGs stay untouched)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


class Executor(Protocol):
    """How steps run; see the module docstring. One request at a time."""

    adapter: ModelAdapter
    cache: KVCache | None
    committed: int  # cache slots holding the full model's KV of the sequence's first tokens
    tag: str  # how steps run ("eager", "graphs+fused+..."): step costs, and saved sets, depend on it
    capture_time: float  # seconds of one-off set-up (graph captures, compiles) so far
    draft_calls: int  # draft forwards run so far
    # While `plain_steps` or `drafting_steps` hands out a step: the next one is already in flight,
    # writing the cache past `committed` (a scoring forward there must wait for the run's end).
    ahead: bool

    def check(self, prompt_len: int, max_new_tokens: int, scratch: int, sampling: bool) -> None:
        """Raise now if a request of this size cannot get its cache and workspace."""
        ...

    def prefill(self, prompt: Sequence[int], max_new_tokens: int, scratch: int, sampling: SamplingParams, seed: int) -> int:
        """Reserve the request's cache (room for `scratch` slots of scoring), run the prompt into it;
        the first token, drawn at the prompt's end."""
        ...

    def verify(self, tree: TreeInput | None, sampling: SamplingParams) -> Verified: ...

    def plain_steps(self, limit: int, sampling: SamplingParams) -> Iterator[Verified]: ...

    def verify_size(self, nodes: int) -> int:
        """The forward a verify of `nodes` drafted nodes runs (root and padding included): what it costs."""
        ...

    def warmup(
        self,
        max_context: int,
        scratch: int,
        programs: Sequence[SamplingProgram],
        skips: Sequence[SkipSet],
        tick=None,
        drafting: Sequence[DeviceTreeShape] = (),
    ) -> None:
        """Make every step requests up to `max_context` tokens can demand now, off their critical path:
        each shape, in each of `programs` (a request's sampling values are inputs of its steps);
        `drafting`: the tree shapes of drafting steps, for an executor that runs them."""
        ...

    def warmup_steps(
        self,
        max_context: int,
        scratch: int,
        programs: Sequence[SamplingProgram],
        skips: Sequence[SkipSet],
        drafting: Sequence[DeviceTreeShape] = (),
    ) -> int:
        """How many times `warmup` with these arguments calls `tick` (for a progress bar)."""
        ...

    def draft_forward(self, skip: SkipSet, sampling: SamplingParams, *, start: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """A skip-mode forward of the draft chain's next token, written past the committed slots.

        start: begin a new chain at the root. Returns (candidates (K,) best first, head (2,) float32
        = [top-1 probability, top-1 token]), both on the device; the next call continues from the
        top-1 candidate.
        """
        ...

    def prepare_draft(self, skip: SkipSet, params: SamplingParams) -> None:
        """Make `skip`'s draft forward ready before its first use (between steps)."""
        ...

    def score(self, frame: Frame, cache: KVCache, skip: SkipSet) -> torch.Tensor: ...

    def sublayer_sizes(self, frame: Frame): ...

    def cost_timer(self): ...


class EagerExecutor:
    """The model's own forwards, shapes as they come, attention over the committed prefix only."""

    tag = "eager"
    capture_time = 0.0

    def __init__(
        self, adapter: ModelAdapter, topk: int, verify_topk: int, max_tree: int, runtime: RuntimeConfig | None = None
    ) -> None:
        self.adapter = adapter
        # On a CPU, the linears of multi-token forwards and the output head run packed weights
        # (`runtime.cpu_linear`); set on the adapter so that every eager forward of this decoder
        # (the search's scoring and step timing too) runs them.
        runtime = runtime or RuntimeConfig()
        packed = runtime.resolved_cpu_packed_linear("eager", adapter.device, adapter.dtype)
        adapter.sublayers = packed_sublayers(adapter) if packed else None
        self.tag = "eager+packed-linear" if packed else "eager"
        self.max_tree = max_tree  # nodes of the widest tree, root included
        self.topk = min(topk, adapter.vocab_size)
        self.verify_topk = min(verify_topk, adapter.vocab_size)
        self.cache: KVCache | None = None
        self.committed = 0
        self.draft_calls = 0
        self.ahead = False  # its steps run one at a time
        self._root: torch.Tensor | None = None  # (1,) the last committed token
        self._sampling: SamplingInputs | None = None  # the request's seed and values, staged at the prefill
        self._chain: tuple[torch.Tensor, int] | None = None  # the draft chain's next (token, slot)

    def check(self, prompt_len: int, max_new_tokens: int, scratch: int, sampling: bool) -> None:
        pass  # the cache is allocated per request, on whatever device the model is

    def warmup(self, max_context: int, scratch: int, programs, skips, tick=None, drafting=()) -> None:
        pass  # nothing is captured or compiled: shapes are free (and it runs no drafting steps)

    def warmup_steps(self, max_context: int, scratch: int, programs, skips, drafting=()) -> int:
        return 0

    def prepare_draft(self, skip: SkipSet, params: SamplingParams) -> None:
        pass

    @torch.inference_mode()
    def prefill(self, prompt: Sequence[int], max_new_tokens: int, scratch: int, sampling: SamplingParams, seed: int) -> int:
        a, n = self.adapter, len(prompt)
        device = a.device
        self.cache = a.new_cache(n + max_new_tokens + self.max_tree + scratch)
        self._sampling = SamplingInputs.of(sampling, device, seed)
        frame = Frame(
            input_ids=torch.tensor([list(prompt)], device=device),
            positions=torch.arange(n, device=device),
            write_start=0,
            allowed=torch.ones(n, n, dtype=torch.bool, device=device).tril(),
            key_positions=torch.arange(n, device=device),
        )
        logits = a.forward(frame, self.cache, NO_SKIP, last_only=True)
        self._root = target_tokens(logits, sampling_program(sampling), self._sampling, torch.tensor([n], device=device))
        self.committed = n
        return int(self._root.item())  # the prefill's one host sync

    @torch.inference_mode()
    def verify(self, tree: TreeInput | None, sampling: SamplingParams) -> Verified:
        a, committed = self.adapter, self.committed
        device = a.device
        size = tree.size if tree is not None else 0
        tokens = torch.cat([self._root, *(_on(part, device) for part in (tree.tokens if tree else ()))])
        # Drafted nodes count from 0 with -1 for the root; in the frame the root is node 0.
        parents = torch.cat(
            [torch.tensor([-1], device=device), *(_on(p, device) + 1 for p in (tree.parents if tree else ()))]
        )
        cols = torch.arange(committed + size + 1, device=device)
        f = tree_frame(committed, size + 1, tokens, parents, cols, a.vocab_size, doublings(size + 1))
        frame = Frame(f.tokens.clamp(min=0)[None], f.positions, committed, f.allowed, f.key_positions)
        logits = a.forward(frame, self.cache, NO_SKIP)
        verdict = verify_tree(logits, f, sampling_program(sampling), self._sampling, self.verify_topk)
        reading = Reading.of(verdict.packed.tolist(), size + 1)  # the step's one host sync
        if reading.fault is None:
            if reading.length > 1:
                self.cache.commit_path(committed, committed + verdict.path[: reading.length])
            self.committed = committed + reading.length
            self._root = verdict.packed[1:2]
        on_host = device.type == "cpu"  # then reading them costs nothing
        return reading.verified(verdict.topk, tokens, (tokens.numpy(), verdict.topk.numpy()) if on_host else None)

    def plain_steps(self, limit: int, sampling: SamplingParams) -> Iterator[Verified]:
        for _ in range(limit):
            yield self.verify(None, sampling)

    def verify_size(self, nodes: int) -> int:
        return nodes + 1

    @torch.inference_mode()
    def draft_forward(self, skip: SkipSet, sampling: SamplingParams, *, start: bool) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.adapter.device
        if start or self._chain is None:
            self._chain = (self._root.view(1, 1), self.committed)
        token, slot = self._chain
        frame = Frame(
            input_ids=token,
            positions=torch.tensor([slot], device=device),
            write_start=slot,
            allowed=torch.ones(1, slot + 1, dtype=torch.bool, device=device),
            key_positions=torch.arange(slot + 1, device=device),
        )
        logits = self.adapter.forward(frame, self.cache, skip)
        next_token = token.clone()
        position = torch.zeros(1, dtype=torch.long, device=device)
        candidates, head = draft_tail(logits, sampling_program(sampling), self._sampling, next_token, position, self.topk)
        self._chain = (next_token, slot + 1)
        self.draft_calls += 1
        return candidates, head

    # -- the search's scoring forwards ----------------------------------------------------------

    @torch.inference_mode()
    def score(self, frame: Frame, cache: KVCache, skip: SkipSet) -> torch.Tensor:
        return self.adapter.forward(frame, cache, skip)

    def sublayer_sizes(self, frame: Frame) -> None:
        return None  # the search runs its hooked probe

    def cost_timer(self) -> None:
        return None  # the search times eager forwards itself


def _on(part: Part, device: torch.device) -> torch.Tensor:
    """A tree part as a long tensor on `device` (host parts are copied, device parts kept)."""
    if isinstance(part, torch.Tensor):
        return part.to(device=device, dtype=torch.long)
    return torch.tensor(list(part), dtype=torch.long, device=device)
