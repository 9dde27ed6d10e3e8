"""SWIFT's self-drafter: the model itself, with the skip set's sublayers left out."""

from __future__ import annotations

import torch

from ..config import SamplingParams, SwiftConfig
from ..model.adapter import Frame, ModelAdapter
from ..model.cache import KVCache
from ..model.skipset import SkipSet
from ..tree import width_for
from ..verify import process_logits
from .base import Draft


class LayerSkipDrafter:
    """Confidence-aware drafting in skip mode, written in place into the request's KV cache.

    Non-skipped attention layers write the draft tokens' KV at the slots right after the committed
    prefix; verification overwrites those slots with the full model's KV, so no copy of the cache
    is ever made.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        cache: KVCache,
        config: SwiftConfig,
        params: SamplingParams,
        stop_tokens: frozenset[int],
    ) -> None:
        self.adapter = adapter
        self.cache = cache
        self.config = config
        self.params = params
        self.stop_tokens = stop_tokens
        self.topk = min(config.topk, adapter.vocab_size)

    def propose(self, root: torch.Tensor, committed: int, max_depth: int, skip: SkipSet) -> Draft:
        cfg = self.config
        device = root.device
        token = root.view(1, 1)
        rows, widths, probs = [], [], []
        for d in range(max_depth):
            slot = committed + d
            frame = Frame(
                input_ids=token,
                positions=torch.tensor([slot], device=device),
                write_start=slot,
                allowed=torch.ones(1, slot + 1, dtype=torch.bool, device=device),
                key_positions=torch.arange(slot + 1, device=device),
            )
            logits = self.adapter.forward(frame, self.cache, skip)
            dist = process_logits(logits, self.params).softmax(dim=-1)
            top = dist.topk(self.topk, dim=-1)
            rows.append(top.indices[0])
            token = top.indices[:, :1]
            # The stop rule is a host decision: one small transfer per drafted token.
            p1, t1 = torch.stack([top.values[0, 0], top.indices[0, 0].to(top.values.dtype)]).tolist()
            probs.append(p1)
            widths.append(min(width_for(p1, cfg.tree_schedule, cfg.tree_default_width), self.topk))
            if p1 < cfg.confidence_threshold or int(t1) in self.stop_tokens:
                break
        return Draft(torch.stack(rows), tuple(widths), tuple(probs), len(rows))
