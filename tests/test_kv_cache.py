"""The shared KV cache after every SWIFT step holds what plain decoding would hold at those positions.

Drafts write into the same cache (skipped attention layers write nothing) and verification writes
tree nodes at non-final slots; after acceptance the committed prefix must be exactly the full
model's KV of the committed tokens, or later steps would silently attend to wrong keys.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from skipspec import SkipSet, SwiftConfig, SwiftDecoder
from skipspec.model.adapter import Frame


def record_committed_cache(decoder: SwiftDecoder) -> list[tuple[int, torch.Tensor]]:
    """After every verify step of `decoder`: (committed slots, a copy of the committed cache prefix)."""
    snapshots = []
    executor = decoder.executor
    verify = executor.verify

    def recording(tree, sampling):
        step = verify(tree, sampling)
        snapshots.append((executor.committed, executor.cache.positions_view(executor.committed).clone()))
        return step

    executor.verify = recording
    return snapshots


def plain_kv(decoder: SwiftDecoder, tokens: list[int]) -> torch.Tensor:
    """KV of `tokens` written by one plain full-model forward (what plain decoding holds)."""
    a = decoder.adapter
    n = len(tokens)
    cache = a.new_cache(n)
    a.forward(
        Frame(torch.tensor([tokens]), torch.arange(n), 0, torch.ones(n, n, dtype=torch.bool).tril(), torch.arange(n)),
        cache,
        SkipSet.empty(),
    )
    return cache.positions_view(n)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("do_sample", [False, True])
def test_cache_matches_plain_decoding_after_every_step(family, do_sample):
    model = tiny_model(family)
    cfg = SwiftConfig(skip_attn=[1, 3], skip_mlp=[2], optimize=False, confidence_threshold=0.0, max_draft_tokens=5, topk=4)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[])
    snapshots = record_committed_cache(dec)
    prompt = list(range(3, 20))
    # A low temperature keeps sampled drafts acceptable often enough for multi-token steps.
    tokens = prompt + dec.generate(prompt, 30, method="swift", do_sample=do_sample, temperature=0.3, seed=4).tokens
    assert len(snapshots) >= 5
    assert any(b[0] - a[0] > 2 for a, b in zip(snapshots, snapshots[1:])), "no multi-token step"
    for committed, kv in snapshots:
        torch.testing.assert_close(kv, plain_kv(dec, tokens[:committed]), atol=2e-5, rtol=1e-4)
