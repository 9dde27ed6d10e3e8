"""Opt-in kernel fusion for the fast path: the sublayer functions compiled by TorchInductor.

A decode step of a small model is a thousand-odd tiny kernels (an RMSNorm alone is eight), and
inside a CUDA graph each still costs a couple of microseconds. Compiling the attention and MLP
sublayer functions fuses norms, rotary embedding, activations and residual adds (each residual add
in the same kernel as the next norm: see `model.adapter.attention_sublayer`). The final norm and
head, and the step programs' own work around the forward (the tree frame, acceptance, the draft's
top-k: `steps.StepFunctions`), are compiled likewise. The sublayer functions take the layer
module as an argument and the cache as a per-layer `LayerKV`, so one compiled copy serves every
layer and every skip set; only new shapes (the query bucket, the capacity) compile again.
Compilation happens on first use, inside the warm-up run that precedes a graph capture, never at
import. Inductor's own CUDA graphs stay off: our runtime captures the whole step.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from ..model.adapter import Sublayers, attention_sublayer, final_logits, mlp_sublayer
from ..model.cache import KVCache, LayerKV
from .steps import PLAIN_STEP_FUNCTIONS, StepFunctions

#: Variants each compiled function may keep (see `_allow_recompiles`).
RECOMPILE_LIMIT = 64


def _own_copy(fn: Callable) -> Callable:
    """`fn` with a code object of its own.

    TorchDynamo keeps compiled variants per code object, up to a recompile limit (8). Two models
    in one process (two families, or two dtypes) would share, and exhaust, that budget and fall
    back to eager; a copy per runtime keeps each model's variants apart.
    """
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


@dataclass(frozen=True)
class CompiledSublayers:
    """One runtime's compiled sublayer functions; `bind` points them at a cache."""

    attention: Callable
    mlp: Callable
    final: Callable
    steps: StepFunctions

    @classmethod
    def create(cls) -> CompiledSublayers:
        _allow_recompiles(RECOMPILE_LIMIT)
        steps = StepFunctions(*(_compiled(getattr(PLAIN_STEP_FUNCTIONS, f.name)) for f in fields(StepFunctions)))
        return cls(_compiled(attention_sublayer), _compiled(mlp_sublayer), _compiled(final_logits), steps)

    def bind(
        self, cache: KVCache, num_layers: int, layers: Sequence | None = None, head: torch.nn.Module | None = None
    ) -> Sublayers:
        caches = tuple(LayerKV(cache, i) for i in range(num_layers))
        return Sublayers(self.attention, self.mlp, caches, layers, final=self.final, head=head)


def _allow_recompiles(limit: int) -> None:
    """Raise TorchDynamo's per-function recompile limit (8) to at least `limit`, process-wide.

    One runtime's sublayer functions meet a variant per (one token or several) x (residual delta
    or none) x (first cache capacity or later ones, symbolic): a runtime whose cache grew once
    already needs 8. Past the limit TorchDynamo silently runs the function uncompiled: a 7B-shape
    plain step measured 5.85 ms instead of 4.67. Dynamo has no per-function setting; raising a
    cap changes nothing for code under it.
    """
    config = torch._dynamo.config
    if config.recompile_limit < limit:
        config.recompile_limit = limit


def _compiled(fn: Callable) -> Callable:
    # dynamic=None: the first shape compiles static, a second one of the same region compiles with
    # that dimension symbolic, so all tree buckets share one variant.
    return torch.compile(_own_copy(fn))
