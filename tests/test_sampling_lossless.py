"""Sampling with SWIFT must draw from exactly the target distribution.

A tiny model with a 5-token vocabulary makes every 3-token continuation enumerable, so the exact
distribution of (x1, x2, x3) under temperature / top-k / top-p is computed with transformers' own
logits warpers (independent of skipspec's processing) and compared with SWIFT samples by a
chi-square goodness-of-fit test at significance level ALPHA. Cells with an expected count under 5
are pooled. The same number of samples must reject a deliberately broken acceptance rule, which
shows the test has the power to catch a wrong residual distribution.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import skipspec.verify.step as step_module
from skipspec import SwiftConfig, SwiftDecoder
from skipspec.config import SearchConfig

ALPHA = 1e-3
VOCAB = 5
LENGTH = 3
SAMPLES = 2500
PROMPT = [1, 3, 0, 2]


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def exact_distribution(model, temperature, top_k, top_p) -> dict[tuple[int, ...], float]:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    seqs = list(itertools.product(range(VOCAB), repeat=LENGTH))
    ids = torch.tensor([PROMPT + list(s) for s in seqs])
    with torch.no_grad():
        logits = model(ids).logits[:, len(PROMPT) - 1 : -1].double()
    dist = {}
    for row, seq in enumerate(seqs):
        prob = 1.0
        for t, tok in enumerate(seq):
            context = ids[row : row + 1, : len(PROMPT) + t]
            warped = warpers(context, logits[row : row + 1, t].float()).double()
            prob *= warped.softmax(-1)[0, tok].item()
        dist[seq] = prob
    return dist


def chi_square_pvalue(samples: Counter, dist: dict, n: int) -> float:
    observed, expected, rest_obs, rest_exp = [], [], 0, 0.0
    for seq, p in dist.items():
        if p * n >= 5:
            observed.append(samples.get(seq, 0))
            expected.append(p * n)
        else:
            rest_obs += samples.get(seq, 0)
            rest_exp += p * n
    if rest_exp > 0:
        observed.append(rest_obs)
        expected.append(rest_exp)
    scale = sum(observed) / sum(expected)
    return chisquare(observed, [e * scale for e in expected]).pvalue


# SWIFT's own search, scoring on a one-token context so that it runs inside these 3-token
# generations, never stopping on score: the skip set changes between requests throughout.
SEARCH = SearchConfig(objective="paper", context_window=1, stop_score=math.inf, proposals_per_step=2, persist=False)


def draw(model, n, seed, search: SearchConfig | None = None, method: str = "swift", **sampling) -> Counter:
    # topk=2 of 5 keeps some tokens out of every depth's candidates, so rejections (and with them
    # the bonus draw after a rejection) happen often; threshold 0 drafts deep trees.
    cfg = SwiftConfig(skip_attn=[2], skip_mlp=[1], confidence_threshold=0.0, max_draft_tokens=3, topk=2,
                      optimize=search is not None, search=search)  # fmt: skip
    dec = SwiftDecoder(model, cfg, stop_token_ids=[])
    counts = Counter()
    for i in range(n):
        res = dec.generate(PROMPT, LENGTH, do_sample=True, seed=seed * 100003 + i, method=method, **sampling)
        counts[tuple(res.tokens)] += 1
    if search is not None:
        stats = dec.policy.stats()
        # It only scores when a request's first step emits one token (a 3-token request ends otherwise).
        assert stats["proposals"] > 30 and stats["scoring_forwards"] > stats["proposals"], stats
    return counts


SETTINGS = [
    dict(temperature=1.0, top_k=0, top_p=1.0),
    dict(temperature=0.7, top_k=3, top_p=1.0),
    dict(temperature=1.5, top_k=0, top_p=0.8),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"T{s['temperature']}-k{s['top_k']}-p{s['top_p']}")
def test_swift_sampling_matches_target_distribution(model, setting):
    dist = exact_distribution(model, **setting)
    assert abs(sum(dist.values()) - 1) < 1e-6
    counts = draw(model, SAMPLES, seed=1, **setting)
    assert chi_square_pvalue(counts, dist, SAMPLES) > ALPHA


def test_hybrid_sampling_matches_target_distribution(model):
    setting = SETTINGS[1]
    dist = exact_distribution(model, **setting)
    counts = draw(model, SAMPLES, seed=4, method="hybrid", **setting)
    assert chi_square_pvalue(counts, dist, SAMPLES) > ALPHA


def test_swift_sampling_with_the_search_on_matches_target_distribution(model):
    setting = SETTINGS[1]
    dist = exact_distribution(model, **setting)
    counts = draw(model, SAMPLES, seed=3, search=SEARCH, **setting)
    assert chi_square_pvalue(counts, dist, SAMPLES) > ALPHA


def test_plain_sampling_matches_target_distribution(model):
    setting = SETTINGS[0]
    dist = exact_distribution(model, **setting)
    dec = SwiftDecoder(model, stop_token_ids=[])
    counts = Counter(
        tuple(dec.generate(PROMPT, LENGTH, method="ar", do_sample=True, seed=7 + i, **setting).tokens)
        for i in range(SAMPLES)
    )
    assert chi_square_pvalue(counts, dist, SAMPLES) > ALPHA


def test_broken_residual_is_detected(model, monkeypatch):
    """Bug on purpose: after a rejection, emit a fresh draw from p instead of the rejected draw's residual.

    Correct: the bonus token is the same draw y that matched no candidate, i.e. a draw from p with
    the candidates removed. The bug re-draws from the full p, so candidates come out too often.
    """
    fresh = {}
    real_targets = step_module.target_tokens
    real_accept = step_module.accept_longest_path

    def targets_and_spare(logits, program, values, positions):
        fresh["spare"] = real_targets(logits, program, values, positions + 1_000_003)  # other keys: a fresh draw
        return real_targets(logits, program, values, positions)

    def accept_with_fresh_bonus(tokens, parents, depths, ancestors, targets):
        result = real_accept(tokens, parents, depths, ancestors, targets)
        length = int(result.packed[0])
        deepest = int(result.path[length - 1])
        result.packed[1] = fresh["spare"][deepest]
        return result

    monkeypatch.setattr(step_module, "target_tokens", targets_and_spare)
    monkeypatch.setattr(step_module, "accept_longest_path", accept_with_fresh_bonus)
    setting = SETTINGS[0]
    dist = exact_distribution(model, **setting)
    counts = draw(model, SAMPLES, seed=2, **setting)
    assert chi_square_pvalue(counts, dist, SAMPLES) < ALPHA


class RandomBranches:
    """Random trees of any shape over the 5-token vocabulary: branches under any node, duplicates."""

    name = "random-branches"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def propose(self, ctx):
        from skipspec.drafting import DraftTree

        n = self.rng.randint(0, min(ctx.max_nodes, 12))
        parents = [self.rng.randint(-1, i - 1) for i in range(n)]
        return DraftTree([self.rng.randrange(VOCAB) for _ in range(n)], parents)

    def observe(self, ctx, result):
        pass


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_sampling_over_branching_trees_matches_target_distribution(model, mode):
    from skipspec.runtime import RuntimeConfig

    setting = SETTINGS[2]
    dist = exact_distribution(model, **setting)
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=RuntimeConfig(mode=mode))
    drafter = RandomBranches(5)
    counts, accepted = Counter(), 0
    for i in range(SAMPLES):
        res = dec.generate(PROMPT, LENGTH, do_sample=True, seed=11 * 100003 + i, drafters=[drafter], **setting)
        counts[tuple(res.tokens)] += 1
        accepted += res.stats["accepted_tokens"]
    assert accepted > SAMPLES // 2, "the random trees were hardly ever accepted: the test checks little"
    assert chi_square_pvalue(counts, dist, SAMPLES) > ALPHA


class NeverPlain:
    """A rate watch that never turns drafting off."""

    pauses = 0

    def plain_steps(self) -> int:
        return 0

    def drafted(self, tokens, seconds, plain_estimate) -> None:
        pass

    def plain(self, seconds) -> None:
        pass


def test_sampling_over_trees_drafted_on_the_device_matches_target_distribution(model):
    """Drafting steps (`runtime.device_drafting`, run uncaptured on the CPU): prompt lookup and
    recycling trees laid out with holes, drafted from the last step's state, drawn per node."""
    from skipspec.runtime import RuntimeConfig

    setting = SETTINGS[1]
    dist = exact_distribution(model, **setting)
    runtime = RuntimeConfig(mode="static", device_drafting=True, device_lookup=(2, 3), device_template=7)
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=runtime)
    dec._allocator("recycle").watch = NeverPlain()  # the rate watch times steps: keep the draws' path fixed
    counts, drafting, accepted = Counter(), 0, 0
    for i in range(SAMPLES):
        res = dec.generate(PROMPT, LENGTH, do_sample=True, seed=13 * 100003 + i, method="recycle", **setting)
        counts[tuple(res.tokens)] += 1
        drafting += res.stats["drafting_steps"]
        accepted += res.stats["accepted_tokens"]
    assert drafting >= SAMPLES and accepted > SAMPLES // 2, (drafting, accepted)
    assert chi_square_pvalue(counts, dist, SAMPLES) > ALPHA
