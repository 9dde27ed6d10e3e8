"""Greedy SWIFT must emit exactly the tokens of plain decoding, in this engine and in transformers.

Fuzzed over tiny random float32 models of every supported family, random prompts, skip sets
(including none and every inner sublayer), confidence thresholds, draft lengths, tree widths and
stop tokens.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from test_search import flat_costs
from tiny_models import FAMILIES, tiny_model

from skipspec import SkipSet, SwiftConfig, SwiftDecoder
from skipspec.config import SearchConfig
from skipspec.engine.decoder import resolve_skip_set
from skipspec.model.adapter import ModelAdapter
from skipspec.search import SearchPolicy

CASES_PER_FAMILY = 30


def _random_search(rng: random.Random) -> SearchConfig:
    """A search that runs within these short generations: tiny context, no time cap, either objective."""
    return SearchConfig(
        objective=rng.choice(["paper", "speed"]),
        context_window=rng.randint(1, 8),
        step_budget=math.inf,
        proposals_per_step=rng.randint(1, 3),
        persist=False,
        seed=rng.randrange(1000),
    )


def _fixed_cost_search(model, cfg: SwiftConfig) -> SearchPolicy | None:
    """The speed objective on synthetic step costs, so that which sets it tries does not depend on
    how loaded the machine is (None: the decoder builds its own policy)."""
    if not (cfg.optimize and cfg.search.objective == "speed"):
        return None
    n = model.config.num_hidden_layers
    return SearchPolicy(ModelAdapter(model), cfg, resolve_skip_set(cfg, n), costs=flat_costs(n))


def _random_config(rng: random.Random, num_layers: int, optimize: bool = False) -> SwiftConfig:
    inner = list(range(1, num_layers - 1))
    style = rng.choice(["empty", "all", "random", "random", "starting"])
    if style == "starting":
        attn = mlp = None
    elif style == "empty":
        attn, mlp = [], []
    elif style == "all":
        attn, mlp = inner, inner
    else:
        attn = rng.sample(inner, rng.randint(0, len(inner)))
        mlp = rng.sample(inner, rng.randint(0, len(inner)))
    return SwiftConfig(
        skip_attn=attn,
        skip_mlp=mlp,
        confidence_threshold=rng.choice([0.0, 0.0, 0.0, 0.1, 0.5, 0.8, 1.0]),
        max_draft_tokens=rng.randint(1, 12),
        topk=rng.randint(1, 10),
        optimize=optimize,
        search=_random_search(rng) if optimize else None,
    )


def _hf_greedy(model, prompt: torch.Tensor, max_new: int, stop: list[int]) -> list[int]:
    out = model.generate(
        prompt,
        # Explicit: otherwise generate masks every prompt token equal to pad_token_id.
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=stop or None,
        pad_token_id=0,
        **({} if stop else {"min_new_tokens": max_new}),
    )[0, prompt.shape[1] :].tolist()
    for i, tok in enumerate(out):
        if tok in stop:
            return out[: i + 1]
    return out


@pytest.mark.parametrize("optimize", [False, True], ids=["fixed-set", "search"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_swift_matches_plain_decoding_and_transformers(family, optimize):
    """With `optimize` the skip set changes between steps as the on-the-fly search runs: never the output."""
    model = tiny_model(family)
    num_layers = model.config.num_hidden_layers
    rng = random.Random(f"greedy-{family}" + ("-search" if optimize else ""))
    deep_paths = searched = 0
    for case in range(CASES_PER_FAMILY):
        cfg = _random_config(rng, num_layers, optimize)
        stop = [rng.randrange(97)] if rng.random() < 0.3 else []
        prompt = torch.tensor([[rng.randrange(97) for _ in range(rng.randint(1, 40))]])
        max_new = rng.randint(1, 40)
        dec = SwiftDecoder(model, cfg, stop_token_ids=stop, policy=_fixed_cost_search(model, cfg))
        swift = dec.generate(prompt, max_new, method="swift")
        plain = dec.generate(prompt, max_new, method="ar")
        hf = _hf_greedy(model, prompt, max_new, stop)
        context = f"{family} case {case}: {cfg}, stop={stop}, prompt={prompt.tolist()}"
        assert plain.tokens == hf, context
        assert swift.tokens == plain.tokens, context
        deep_paths += max(swift.stats["accepted_per_step"], default=0) >= 3
        searched += optimize and dec.policy.stats()["scoring_forwards"] > 0
    # The fuzz only means something if drafts were accepted several tokens deep. With the search on
    # fewer cases draft deeply (the speed objective rightly decodes plainly where skipping does not
    # pay); the `searched` count shows that the search ran.
    assert deep_paths >= (1 if optimize else CASES_PER_FAMILY // 8), deep_paths
    if optimize:
        assert searched >= CASES_PER_FAMILY // 3, searched


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_hybrid_and_text_drafters_match_plain_decoding_and_transformers(family):
    """n-gram lookup, token recycling and both with layer skipping, on prompts that repeat themselves
    (so lookups hit); costs are fixed and flat, as on a GPU, so trees are wide."""
    model = tiny_model(family)
    num_layers = model.config.num_hidden_layers
    rng = random.Random(f"hybrid-{family}")
    accepted = steps = 0
    dec = None
    for case in range(8):
        if case % 4 == 0:  # a decoder lives for a few requests: recycling's table carries over
            dec = SwiftDecoder(model, _random_config(rng, num_layers), stop_token_ids=[])
            dec._costs = flat_costs(num_layers, per_node=0.001)
        unit = [rng.randrange(97) for _ in range(rng.randint(2, 8))]
        prompt = torch.tensor([(unit * 8)[: rng.randint(4, 50)]])
        max_new = rng.randint(1, 40)
        hf = _hf_greedy(model, prompt, max_new, [])
        for method in ("hybrid", "ngram", "recycle"):
            res = dec.generate(prompt, max_new, method=method)
            assert res.tokens == hf, f"{family} case {case} {method}: prompt={prompt.tolist()}"
            accepted += res.stats["accepted_tokens"]
            steps += res.stats["verify_steps"]
    assert accepted > steps // 4, "drafts were hardly ever accepted: the test checks little"


def test_empty_skip_set_accepts_every_draft():
    """With nothing skipped the draft *is* the full model, so greedy accepts every drafted token."""
    model = tiny_model("llama")
    cfg = SwiftConfig(skip_attn=[], skip_mlp=[], confidence_threshold=0.0, max_draft_tokens=6, optimize=False)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[])
    res = dec.generate(list(range(1, 9)), 50, method="swift")
    assert res.stats["acceptance_rate"] == 1.0
    assert res.stats["mean_accepted"] > 6.0
    assert len(res.tokens) == 50


def test_skip_set_helpers_roundtrip():
    skip = SkipSet.from_slots([0, 3, 4, 7], num_layers=6)
    assert skip.attn == {1, 4} and skip.mlp == {1, 4}
    assert skip.slots(6) == (0, 3, 4, 7)
