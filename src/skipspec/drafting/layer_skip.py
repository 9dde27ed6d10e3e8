"""SWIFT's self-drafter: the model itself, with the skip set's sublayers left out."""

from __future__ import annotations

import torch

from ..search.objective import DraftRule
from ..search.policy import SkipPolicy, StepContext
from .base import DraftContext, DraftTree, StepResult, TokenView


class LayerSkipDrafter:
    """Confidence-aware drafting in skip mode, through the executor's draft forwards.

    Each depth is one skip-mode forward of the chain's last token (written past the committed
    slots, where the verify step overwrites it); drafting stops when the top-1 probability falls
    under the rule's threshold (that token is kept) or at a stop token. The tree is SWIFT's
    dynamic one: the top-1 chain plus, at each depth, as many of that depth's next-best candidates
    as its confidence earns (`DraftRule.width`), leaf siblings of the chain node. Its tokens stay
    on the device.

    `policy` picks the skip set before each step (None: no draft) and is told about every step.
    """

    name = "layer_skip"

    def __init__(self, policy: SkipPolicy, rule: DraftRule, stop_tokens: frozenset[int]) -> None:
        self.policy = policy
        self.rule = rule
        self.stop_tokens = stop_tokens
        self._depth = 0  # chain tokens of the last proposal

    @property
    def scratch_slots(self) -> int:
        """Cache slots the policy's scoring forwards need past the committed ones."""
        return self.policy.scratch_slots

    def begin(self, prompt_len: int, max_new_tokens: int) -> None:
        self.policy.begin(prompt_len, max_new_tokens)

    def plain_steps(self) -> int:
        """Steps ahead that are plain for this drafter, whose `observe` only counts (see `SkipPolicy`)."""
        return self.policy.plain_steps() if self.policy.skip_set() is None else 0

    def quiet_steps(self) -> int:
        """Steps ahead whose `observe` only counts while this drafter drafts none of them (see `SkipPolicy`)."""
        return self.policy.quiet_steps()

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> DraftTree | None:
        self._depth = 0
        skip = self.policy.skip_set()
        if skip is None or ctx.max_depth < 1 or ctx.max_nodes < 1:
            return None
        rule, executor = self.rule, ctx.executor
        rows, widths = [], []
        budget = ctx.max_nodes
        for depth in range(min(rule.max_depth, ctx.max_depth)):
            candidates, head = executor.draft_forward(skip, ctx.sampling, start=depth == 0)
            # SWIFT's confidence stop is a host decision: one small sync per drafted token.
            p1, t1 = head.tolist()
            widths.append(min(rule.width(p1), budget))
            rows.append(candidates)
            budget -= widths[-1]
            if not rule.keeps_drafting(p1) or int(t1) in self.stop_tokens or budget < 1:
                break
        self._depth = len(widths)
        # Breadth first, chain node first at each depth: each depth's best `width` candidates in order.
        tokens = torch.cat([row[:w] for row, w in zip(rows, widths)])
        parents, chain = [], -1
        for w in widths:
            first = len(parents)
            parents.extend([chain] * w)
            chain = first
        return DraftTree(tokens, parents)

    def observe(self, ctx: DraftContext, result: StepResult) -> None:
        verified = result.topk.shape[0] if result.topk is not None else 1
        before = self.policy.skip_set()
        self.policy.observe(
            StepContext(
                ctx.executor.adapter,
                ctx.executor.cache,
                _after(ctx.tokens, result.accepted),
                ctx.prompt_len,
                ctx.committed + len(result.accepted),
                len(result.accepted) - 1,
                self._depth if result.tree is not None else 0,
                ctx.sampling,
                verified,
                ctx.executor.ahead,
            )
        )
        self._prepare(before, ctx)

    def set_baseline(self, speedup: float, ctx: DraftContext) -> None:
        """Steps drafted without layer skipping realise `speedup` over plain decoding (see
        `SkipPolicy.set_baseline`)."""
        before = self.policy.skip_set()
        self.policy.set_baseline(speedup)
        self._prepare(before, ctx)

    def _prepare(self, before, ctx: DraftContext) -> None:
        """A set the policy has just chosen gets its draft step now, before its first use."""
        chosen = self.policy.skip_set()
        if chosen is not None and chosen != before:
            ctx.executor.prepare_draft(chosen, ctx.sampling)


def _after(tokens, accepted: list[int]):
    """The tokens once `accepted` is committed: a longer view of the decoder's live list, which
    already holds them (no copy of the whole context per step), else a new list."""
    if isinstance(tokens, TokenView):
        return tokens.grown(len(accepted))
    return list(tokens) + accepted
