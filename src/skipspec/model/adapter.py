"""Run a Hugging Face causal LM's own decoder layers with some sublayers skipped.

No modeling code is copied and nothing in transformers is patched: the adapter calls each layer's
own submodules (norms, `self_attn`, `mlp`) in the order that layer's family composes them, and
leaves out the skipped ones. A skipped sublayer adds nothing to the residual stream; a skipped
attention never calls the cache, so it writes no KV.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version

import torch

from ..errors import UnsupportedArchitectureError
from .arch import arch_for
from .cache import KVCache
from .sharding import sharding_of
from .skipset import SkipSet

_SLIDING = "sliding_attention"
# The attention modules' cache argument: `past_key_values` up to transformers 5.23, `cache` from 5.24
# (where the old name warns, and from 5.40 fails). Read from package metadata: no import, no per-call cost.
_CACHE_KW = "cache" if tuple(int(p) for p in version("transformers").split(".")[:2]) >= (5, 24) else "past_key_values"


@dataclass(frozen=True)
class Frame:
    """One forward's geometry. Q = query tokens, V = visible cache slots.

    input_ids:     (1, Q) token ids
    positions:     (Q,)   rotary positions of the queries
    write_start:   the queries' KV go to slots [write_start, write_start + Q)
    allowed:       (Q, V) bool, True where query q may attend to slot v
    key_positions: (V,)   position held by each visible slot (for sliding windows)
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    write_start: int
    allowed: torch.Tensor
    key_positions: torch.Tensor


class ModelAdapter:
    """Wraps one loaded model; holds no per-request state."""

    def __init__(self, model: torch.nn.Module) -> None:
        config = model.config
        self.spec = arch_for(getattr(config, "model_type", "?"))
        self.model = model
        self.config = config
        self.base = model.model
        self.layers = list(self.base.layers)[: config.num_hidden_layers]
        self.num_layers = len(self.layers)
        if self.num_layers < 3:
            raise UnsupportedArchitectureError(
                f"model has {self.num_layers} layers; layer skipping needs at least 3 (first and last are kept)"
            )
        impl = getattr(config, "_attn_implementation", None) or "eager"
        if impl not in ("sdpa", "eager"):
            raise UnsupportedArchitectureError(
                f"attention implementation {impl!r} cannot take a tree attention mask; "
                "load the model with attn_implementation='sdpa' or 'eager'"
            )
        self.additive_mask = impl == "eager"
        self.layer_types = self._layer_types(config, self.num_layers)
        self.window: int | None = getattr(config, "sliding_window", None)
        self.softcap: float | None = getattr(config, "final_logit_softcapping", None)
        # A tensor-parallel model's attention holds its share of the heads: so does its KV cache.
        sharding = sharding_of(model)
        self.num_kv_heads = sharding.kv_heads if sharding is not None else config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_positions = getattr(config, "max_position_embeddings", None)
        # How `forward` runs the sublayers when not told: None = the plain ones; an executor may set
        # its own (the CPU's packed linears, `skipspec.runtime.cpu_linear`).
        self.sublayers: Sublayers | None = None

    @staticmethod
    def _layer_types(config, n: int) -> tuple[str, ...]:
        types = getattr(config, "layer_types", None)
        if types:
            return tuple(types[:n])
        # Mistral and Phi-3 have no layer_types: a sliding_window applies to every layer.
        kind = _SLIDING if getattr(config, "sliding_window", None) else "full_attention"
        return (kind,) * n

    @property
    def device(self) -> torch.device:
        return self.base.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.embed_tokens.weight.dtype

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.num_layers, self.num_kv_heads, self.head_dim, capacity, dtype=self.dtype, device=self.device)

    def _masks(
        self, allowed: torch.Tensor, positions: torch.Tensor, key_positions: torch.Tensor, additive: bool
    ) -> dict[str, torch.Tensor]:
        """One mask per layer type, `(1, 1, Q, V)`: boolean, or additive in the model's dtype.

        Additive masks are built with Python scalars only (no host-to-device copy), so the same code
        runs inside a captured CUDA graph.
        """
        masks = {}
        for kind in set(self.layer_types):
            ok = allowed
            if kind == _SLIDING and self.window:
                distance = positions[:, None] - key_positions[None, :]
                ok = ok & (distance < self.window)
            if additive:
                bias = torch.zeros(ok.shape, dtype=self.dtype, device=ok.device)
                masks[kind] = bias.masked_fill_(~ok, torch.finfo(self.dtype).min)[None, None]
            else:
                masks[kind] = ok[None, None]
        return masks

    def _rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        pos = positions[None]
        if self.spec.rope_per_layer_type:
            return {t: self.base.rotary_emb(hidden, pos, t) for t in set(self.layer_types)}
        shared = self.base.rotary_emb(hidden, pos)
        return {t: shared for t in set(self.layer_types)}

    @torch.inference_mode()
    def forward(
        self,
        frame: Frame,
        cache: KVCache,
        skip: SkipSet,
        *,
        last_only: bool = False,
        row: int = -1,
        sublayers: Sublayers | None = None,
    ) -> torch.Tensor:
        """Logits `(Q, vocab)` (or `(1, vocab)` of query `row` with `last_only`), in float32.

        sublayers: how to run the sublayers (see `Sublayers`); None = `self.sublayers`.
        """
        cache.prepare(frame.write_start, frame.input_ids.shape[1], frame.allowed.shape[1])
        masks = self._masks(frame.allowed, frame.positions, frame.key_positions, self.additive_mask)
        run = sublayers or self.sublayers
        return self._layers(frame.input_ids, frame.positions, masks, cache, skip, None, last_only, run, row=row)

    def forward_static(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        key_positions: torch.Tensor,
        cache: KVCache,
        skip: SkipSet,
        *,
        keep: torch.Tensor | None = None,
        sublayers: Sublayers | None = None,
        sizes: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The fixed-shape forward the CUDA-graph runtime captures: logits `(Q, vocab)`, float32.

        The caller has routed the writes with `cache.prepare_slots` (a device tensor of slots) and
        `allowed` spans the whole cache `(Q, capacity)`, so every shape is fixed by the request's
        capacity and the tree bucket, and nothing here reads a value back to the host.

        keep: optional `(2, layers)` bool tensor. When given, every sublayer is computed and its
        residual update is kept only where `keep[0]` (attention) / `keep[1]` (MLP) is True; `skip`
        is then ignored. The result equals skipping those sublayers exactly (a select, not a
        multiply), so one captured graph scores any skip set. Costs a full forward.
        sublayers: compiled sublayer regions (see `Sublayers`); None runs the plain ones.
        sizes: with `keep`, `(weights (Q,), out (4, layers))`: writes each sublayer's sizes, the
        weighted sum over queries of the L2 norm of the residual stream it is added to (rows 0 and 2:
        attention, MLP) and of its update (rows 1 and 3), so the search's influence probe
        (`search.matchness.influence`) runs inside the scoring graph instead of eagerly with hooks.
        """
        masks = self._masks(allowed, positions, key_positions, additive=True)
        return self._layers(input_ids, positions, masks, cache, skip, keep, False, sublayers, sizes)

    def _layers(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        masks: dict[str, torch.Tensor],
        cache: KVCache,
        skip: SkipSet,
        keep: torch.Tensor | None,
        last_only: bool,
        sublayers: Sublayers | None = None,
        sizes: tuple[torch.Tensor, torch.Tensor] | None = None,
        row: int = -1,
    ) -> torch.Tensor:
        run = sublayers or PLAIN_SUBLAYERS

        def measure(row: int, i: int, residual: torch.Tensor, update: torch.Tensor) -> None:
            if sizes is not None:
                weights, out = sizes
                for r, x in ((row, residual), (row + 1, update)):
                    out[r, i].copy_((x[0].float().norm(dim=-1) * weights).sum())

        hidden = self.base.embed_tokens(input_ids)
        rope = self._rope(hidden, positions)
        sandwich = self.spec.sandwich_norms
        # The residual stream is carried as (hidden, delta): each sublayer adds the update before it
        # as its first step, where a compiled copy fuses that add with its norm (see attention_sublayer).
        delta = None
        for i, layer in enumerate(run.layers or self.layers):
            kind = self.layer_types[i]
            kv = run.caches[i] if run.caches is not None else cache
            if keep is not None:
                # A dropped sublayer's update is a selected zero: x + 0 == x exactly, so this equals skipping it.
                hidden, delta = run.attention(layer, hidden, delta, rope[kind], masks[kind], kv, sandwich)
                measure(0, i, hidden, delta)
                delta = torch.where(keep[0, i], delta, 0.0)
                hidden, delta = run.mlp(layer, hidden, delta, sandwich)
                measure(2, i, hidden, delta)
                delta = torch.where(keep[1, i], delta, 0.0)
                continue
            if i not in skip.attn:
                hidden, delta = run.attention(layer, hidden, delta, rope[kind], masks[kind], kv, sandwich)
            if i not in skip.mlp:
                hidden, delta = run.mlp(layer, hidden, delta, sandwich)
        if last_only:
            keep = slice(row, row + 1 if row != -1 else None)
            hidden = hidden[:, keep]
            delta = None if delta is None else delta[:, keep]
        head = self.model.lm_head if run.head is None else run.head
        return run.final(self.base.norm, head, hidden, delta, self.softcap)


def attention_sublayer(
    layer, hidden: torch.Tensor, delta: torch.Tensor | None, rope, mask: torch.Tensor, cache, sandwich: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's attention sublayer (its norms included), as that layer's family composes it.

    Takes the residual stream as `hidden + delta` (delta: the previous sublayer's update, None at the
    first) and returns it as `(hidden + delta, this sublayer's update)`. Adding the previous update
    here rather than at the end of the previous sublayer is the same arithmetic, and lets a compiled
    copy do the add in the same kernel as this sublayer's norm: the previous sublayer ends in a
    matrix product, which an add cannot join.
    """
    if delta is not None:
        hidden = hidden + delta
    x = layer.input_layernorm(hidden)
    x, _ = layer.self_attn(hidden_states=x, position_embeddings=rope, attention_mask=mask, **{_CACHE_KW: cache})
    if sandwich:
        x = layer.post_attention_layernorm(x)
    return hidden, x


def mlp_sublayer(
    layer, hidden: torch.Tensor, delta: torch.Tensor | None, sandwich: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's MLP sublayer (its norms included); the residual stream as in `attention_sublayer`."""
    if delta is not None:
        hidden = hidden + delta
    x = layer.pre_feedforward_layernorm(hidden) if sandwich else layer.post_attention_layernorm(hidden)
    x = layer.mlp(x)
    if sandwich:
        x = layer.post_feedforward_layernorm(x)
    return hidden, x


def final_logits(norm, lm_head, hidden: torch.Tensor, delta: torch.Tensor | None, softcap: float | None) -> torch.Tensor:
    """Logits `(Q, vocab)`, float32, of the residual stream `hidden + delta` (see `attention_sublayer`)."""
    if delta is not None:
        hidden = hidden + delta
    logits = lm_head(norm(hidden))[0]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


@dataclass(frozen=True)
class Sublayers:
    """How the adapter runs each sublayer: the plain functions above, or compiled copies of them.

    The functions take the layer module as an argument, so one compiled copy serves every layer.
    caches: per-layer objects passed as `past_key_values` instead of the shared cache (a
    `LayerKV` each): a compiled region must not see the layer index, or it would be specialised,
    and recompiled, once per layer.
    layers: stand-ins for the model's decoder layers (same weights, grouped projections, another
    attention implementation: see `skipspec.runtime.layers.stand_in_layers`); None runs the model's own.
    final: the last residual add, final norm, LM head and cast (`final_logits`), likewise.
    head: a stand-in for the model's output head (same weights, another kernel); None runs the model's.
    """

    attention: Callable = attention_sublayer
    mlp: Callable = mlp_sublayer
    caches: Sequence | None = None
    layers: Sequence | None = None
    final: Callable = final_logits
    head: torch.nn.Module | None = None


PLAIN_SUBLAYERS = Sublayers()
