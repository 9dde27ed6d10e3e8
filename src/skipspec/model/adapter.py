"""Run a Hugging Face causal LM's own decoder layers with some sublayers skipped.

No modeling code is copied and nothing in transformers is patched: the adapter calls each layer's
own submodules (norms, `self_attn`, `mlp`) in the order that layer's family composes them, and
leaves out the skipped ones. A skipped sublayer adds nothing to the residual stream; a skipped
attention never calls the cache, so it writes no KV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import UnsupportedArchitectureError
from .arch import arch_for
from .cache import KVCache
from .skipset import SkipSet

_SLIDING = "sliding_attention"


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
        self.window: Optional[int] = getattr(config, "sliding_window", None)
        self.softcap: Optional[float] = getattr(config, "final_logit_softcapping", None)
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_positions = getattr(config, "max_position_embeddings", None)

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
        return KVCache(
            self.num_layers, self.num_kv_heads, self.head_dim, capacity, dtype=self.dtype, device=self.device
        )

    def _masks(self, frame: Frame) -> dict[str, torch.Tensor]:
        masks = {}
        for kind in set(self.layer_types):
            allowed = frame.allowed
            if kind == _SLIDING and self.window:
                distance = frame.positions[:, None] - frame.key_positions[None, :]
                allowed = allowed & (distance < self.window)
            if self.additive_mask:
                zero = torch.zeros((), dtype=self.dtype, device=allowed.device)
                neg = torch.tensor(torch.finfo(self.dtype).min, dtype=self.dtype, device=allowed.device)
                masks[kind] = torch.where(allowed, zero, neg)[None, None]
            else:
                masks[kind] = allowed[None, None]
        return masks

    def _rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        pos = positions[None]
        if self.spec.rope_per_layer_type:
            return {t: self.base.rotary_emb(hidden, pos, t) for t in set(self.layer_types)}
        shared = self.base.rotary_emb(hidden, pos)
        return {t: shared for t in set(self.layer_types)}

    @torch.inference_mode()
    def forward(
        self, frame: Frame, cache: KVCache, skip: SkipSet, *, last_only: bool = False
    ) -> torch.Tensor:
        """Logits `(Q, vocab)` (or `(1, vocab)` with `last_only`), in float32."""
        cache.prepare(frame.write_start, frame.input_ids.shape[1], frame.allowed.shape[1])
        hidden = self.base.embed_tokens(frame.input_ids)
        masks = self._masks(frame)
        rope = self._rope(hidden, frame.positions)
        sandwich = self.spec.sandwich_norms
        for i, layer in enumerate(self.layers):
            kind = self.layer_types[i]
            if i not in skip.attn:
                x = layer.input_layernorm(hidden)
                x, _ = layer.self_attn(
                    hidden_states=x,
                    position_embeddings=rope[kind],
                    attention_mask=masks[kind],
                    past_key_values=cache,
                )
                if sandwich:
                    x = layer.post_attention_layernorm(x)
                hidden = hidden + x
            if i not in skip.mlp:
                x = layer.pre_feedforward_layernorm(hidden) if sandwich else layer.post_attention_layernorm(hidden)
                x = layer.mlp(x)
                if sandwich:
                    x = layer.post_feedforward_layernorm(x)
                hidden = hidden + x
        if last_only:
            hidden = hidden[:, -1:]
        logits = self.model.lm_head(self.base.norm(hidden))[0]
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()
