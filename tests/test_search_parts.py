"""The search's parts alone: scoring geometry, the speed estimator, costs, the store, the config."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
import torch
from test_search import flat_costs
from tiny_models import tiny_model

import skipspec.search.costs
import skipspec.search.matchness
import skipspec.search.objective
import skipspec.search.online
import skipspec.search.random_bo
import skipspec.search.speed
import skipspec.search.store
from skipspec import ConfigError, SkipSet, SwiftConfig, SwiftDecoder
from skipspec.config import SamplingParams, SearchConfig
from skipspec.model.adapter import Frame, ModelAdapter
from skipspec.search.costs import CostModel, measure_costs
from skipspec.search.matchness import Context, context_frame, influence, score_skip_set, target_probs
from skipspec.search.objective import DraftRule, Profile, estimate_step, speed_bound
from skipspec.search.speed import SpeedSearch
from skipspec.search.store import LayerSetStore, model_identity

RULE = DraftRule.of(SwiftConfig(), 97)


@pytest.mark.parametrize(
    "module",
    [
        skipspec.search.costs,
        skipspec.search.matchness,
        skipspec.search.objective,
        skipspec.search.online,
        skipspec.search.random_bo,
        skipspec.search.speed,
        skipspec.search.store,
    ],
    ids=lambda m: m.__name__.rsplit(".", 1)[-1],
)
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


# -- scoring on generated text --------------------------------------------------------------------


def _generated(model, prompt, n, **sampling):
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[])
    return list(prompt) + dec.generate(prompt, n, method="ar", **sampling).tokens


def _committed_cache(adapter, tokens, committed, extra):
    cache = adapter.new_cache(committed + extra)
    frame = Frame(torch.tensor([tokens[:committed]]), torch.arange(committed), 0,
                  torch.ones(committed, committed, dtype=torch.bool).tril(), torch.arange(committed))  # fmt: skip
    adapter.forward(frame, cache, SkipSet.empty())
    return cache


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3"])  # mistral / gemma3: context crosses the sliding window
def test_scoring_the_empty_set_reproduces_greedy_decoding(family):
    """With nothing skipped, the scoring forward is the full model: its argmax is every emitted token."""
    model = tiny_model(family)
    prompt = [5, 9, 2, 6, 5, 3]
    tokens = _generated(model, prompt, 40)
    adapter = ModelAdapter(model)
    committed = len(tokens) - 1
    cache = _committed_cache(adapter, tokens, committed, 20)
    ctx = Context.of(tokens, len(prompt) + 4, 20)
    frame = context_frame(ctx, committed, "cpu")
    profile = score_skip_set(lambda f, s: adapter.forward(f, cache, s), frame, torch.tensor(ctx.targets), SkipSet.empty(),
                             RULE, SamplingParams())  # fmt: skip
    assert profile.matchness == 1.0 and profile.sibling.sum() == 0


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_scoring_forward_equals_teacher_forced_skip_mode_after_a_full_prefix(family):
    """Scratch slots + mask = a fresh cache holding the full prefix, then the context in skip mode."""
    model = tiny_model(family)
    prompt = [7, 1, 8, 2, 8]
    tokens = _generated(model, prompt, 30)
    adapter = ModelAdapter(model)
    skip = SkipSet.of([1, 4], [2])
    ctx = Context.of(tokens, len(prompt) + 3, 12)
    committed = len(tokens) - 1
    cache = _committed_cache(adapter, tokens, committed, ctx.width)
    scored = adapter.forward(context_frame(ctx, committed, "cpu"), cache, skip)

    fresh = _committed_cache(adapter, tokens, ctx.start, ctx.width)
    w = ctx.width
    expected = adapter.forward(
        Frame(torch.tensor([ctx.inputs]), ctx.start + torch.arange(w), ctx.start,
              torch.ones(w, ctx.start + w, dtype=torch.bool).tril(ctx.start), torch.arange(ctx.start + w)),
        fresh, skip,
    )  # fmt: skip
    torch.testing.assert_close(scored, expected, atol=1e-4, rtol=1e-4)


def test_sampling_profile_is_the_targets_acceptance_probability():
    model = tiny_model("llama")
    sampling = SamplingParams(do_sample=True, temperature=0.7, top_k=20)
    tokens = _generated(model, [4, 4, 2], 24, do_sample=True, temperature=0.7, top_k=20, seed=5)
    adapter = ModelAdapter(model)
    committed = len(tokens) - 1
    cache = _committed_cache(adapter, tokens, committed, 16)
    ctx = Context.of(tokens, 5, 16)
    frame = context_frame(ctx, committed, "cpu")
    forward = lambda f, s: adapter.forward(f, cache, s)  # noqa: E731
    p = target_probs(forward(frame, SkipSet.empty()), sampling)
    profile = score_skip_set(forward, frame, torch.tensor(ctx.targets), SkipSet.empty(), RULE, sampling, p)
    # Nothing skipped: the draft's top-1 is the target's mode, accepted with the mode's probability.
    np.testing.assert_allclose(profile.match, p.max(dim=-1).values.numpy(), rtol=1e-5)
    assert np.all(profile.match + profile.sibling <= 1 + 1e-6)


def test_influence_is_zero_exactly_for_sublayers_that_add_nothing():
    model = tiny_model("llama", damp=1.0)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[3].mlp.down_proj.weight.zero_()
    tokens = _generated(model, [1, 2, 3], 20)
    adapter = ModelAdapter(model)
    committed = len(tokens) - 1
    cache = _committed_cache(adapter, tokens, committed, 8)
    values, _ = influence(adapter, cache, context_frame(Context.of(tokens, 3, 8), committed, "cpu"))
    zero = {SkipSet.of([2], []).slots(6)[0], SkipSet.of([], [3]).slots(6)[0]}
    assert all((values[s] == 0) == (s in zero) for s in range(8)), values


# -- the estimator --------------------------------------------------------------------------------


def _simulate(profile: Profile, rule: DraftRule, rng: np.random.Generator, trials: int) -> float:
    """Monte Carlo of drafting + single-draw acceptance from every start (same cut at the window end)."""
    w, total = profile.match.size, 0.0
    for _ in range(trials):
        for j in range(w):
            tokens = 1
            for i in range(j, min(w, j + rule.max_depth)):
                u = rng.random()
                if u < profile.match[i]:
                    tokens += 1
                elif u < profile.match[i] + profile.sibling[i]:
                    tokens += 1
                    break
                else:
                    break
                if profile.confidence[i] < rule.threshold:
                    break
            total += tokens
    return total / (trials * w)


def test_expected_tokens_per_step_matches_a_simulation_of_drafting():
    rng = np.random.default_rng(0)
    w = 12
    match = rng.uniform(0.3, 1.0, w)
    profile = Profile(match, rng.uniform(0, 1 - match), rng.uniform(0.5, 1.0, w))
    rule = DraftRule(0.8, 5, ((0.95, 3), (0.8, 5)), 8, 8)
    estimate = estimate_step(profile, rule, 0.5, lambda n: 1.0)
    assert abs(estimate.tokens - _simulate(profile, rule, rng, 4000)) < 0.03


def test_no_profile_beats_the_speed_bound():
    rng = np.random.default_rng(1)
    rule = DraftRule(0.8, 10, ((0.95, 3), (0.8, 5), (0.5, 8)), 10, 10)
    verify = lambda n: 1.0 + 0.03 * n  # noqa: E731
    bound = speed_bound(rule, 0.4, verify)
    for _ in range(200):
        w = int(rng.integers(1, 30))
        m = (rng.random(w) < rng.random()).astype(float)
        profile = Profile(m, (1 - m) * (rng.random(w) < 0.5), rng.random(w))
        assert estimate_step(profile, rule, 0.4, verify).tokens_per_s <= bound + 1e-12


# -- costs ----------------------------------------------------------------------------------------


def test_cost_fit_recovers_known_sublayer_costs():
    """A fake clock: 10 + 0.01*ctx fixed, each attention 2 + 0.05*ctx, each MLP 3, each extra token 0.5."""
    model = tiny_model("llama")
    adapter = ModelAdapter(model)

    def clock(n, context, skip):
        attn = 4 - len(skip.attn)
        mlp = 4 - len(skip.mlp)
        return 10 + 0.01 * context + 4 + attn * (2 + 0.05 * context) + mlp * 3 + 0.5 * (n - 1)

    m = measure_costs(adapter, timer=clock, budget_s=0.0)
    assert all(c.a == pytest.approx(2.0) and c.b == pytest.approx(0.05) for c in m.attn)
    assert all(c.a == pytest.approx(3.0) and c.b == pytest.approx(0.0, abs=1e-12) for c in m.mlp)
    assert m.plain(100) == pytest.approx(10 + 1 + 4 + 4 * 7 + 12)
    assert m.verify_cost(16, 100) == pytest.approx(m.plain(100) + 7.5)
    assert m.draft_cost(SkipSet.of([1], [1, 2]), 100) == pytest.approx(m.plain(100) - 7 - 6)
    assert CostModel.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_measured_costs_are_positive_and_fall_with_skipping():
    adapter = ModelAdapter(tiny_model("gemma3"))  # two attention layer types
    m = measure_costs(adapter, budget_s=0.2)
    assert m.plain(100) > 0 and m.floor(100) > 0
    assert m.draft_cost(SkipSet.starting(6), 100) <= m.plain(100)
    assert m.draft_cost(SkipSet.of([1, 2, 3, 4], [1, 2, 3, 4]), 100) == pytest.approx(
        max(m.floor(100), m.plain(100) - m.slot_costs(100).sum())
    )


# -- the store ------------------------------------------------------------------------------------


def test_model_identity_is_stable_and_tells_weights_apart():
    a, a2, b = tiny_model("llama", seed=0), tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert model_identity(a) == model_identity(a2) != model_identity(b)
    with torch.no_grad():
        a2.model.layers[0].self_attn.q_proj.weight[0, 0] += 1.0  # the sampled first parameter of layer 0
    assert model_identity(a2) != model_identity(a)


def test_store_round_trip_and_bad_files(tmp_path):
    store = LayerSetStore(tmp_path / "sub" / "sets.json")
    assert store.get("sets", "k") is None
    store.put("sets", "k", {"x": 1})
    assert store.get("sets", "k") == {"x": 1}
    for bad, message in (("[]", "not a version-1"), ('{"format": "skipspec-layer-sets", "version": 99}', "not a version-1"),
                         ("\x00\x01", "not valid JSON")):  # fmt: skip
        store.path.write_text(bad)
        with pytest.warns(RuntimeWarning, match=message):
            assert store.get("sets", "k") is None
    with pytest.warns(RuntimeWarning):
        store.put("sets", "k", {"y": 2})
    assert store.get("sets", "k") == {"y": 2}
    (tmp_path / "a-file").write_text("")
    with pytest.warns(RuntimeWarning) as caught:
        LayerSetStore(tmp_path / "a-file" / "sets.json").put("sets", "k", {})  # unwritable: a warning, no crash
    assert any("cannot save" in str(w.message) for w in caught)


# -- configuration --------------------------------------------------------------------------------


def test_search_config_presets_and_validation():
    paper, speed = SearchConfig(objective="paper"), SearchConfig()
    assert (paper.bayes_interval, paper.stop_score, paper.patience, paper.max_proposals) == (25, 0.93, 300, 1000)
    assert speed.objective == "speed" and speed.step_budget < 1
    assert SearchConfig(objective="paper", patience=5).patience == 5
    assert SwiftConfig().optimize and SwiftConfig(search="paper").search == paper
    for bad in (dict(objective="fast"), dict(context_window=0), dict(skip_ratio=1.0), dict(step_budget=0),
                dict(patience=True), dict(task=" "), dict(min_gain=float("nan"))):  # fmt: skip
        with pytest.raises(ConfigError):
            SearchConfig(**bad)
    with pytest.raises(ConfigError):
        SwiftConfig(search=3)


def test_speed_search_moves_away_from_an_empty_best_set():
    """The empty set (a full-model draft) can be the best seen: local moves must still add slots."""
    search = SpeedSearch(6, SearchConfig(), flat_costs(6), RULE, order=tuple(range(8)), top=SkipSet.empty(), top_speedup=0.5)
    rng = np.random.default_rng(0)
    moves = {search._neighbour(rng, set()) for _ in range(10)}
    assert moves and all(len(m) == 1 for m in moves)


def test_a_set_is_used_only_while_it_beats_the_baseline_and_rounds_no_set_could_win_never_start():
    """`SpeedSearch.set_baseline`: what the decoder realises without layer skipping is the bar."""
    costs, top = flat_costs(6), SkipSet.from_slots([0, 1], 6)
    search = SpeedSearch(6, SearchConfig(), costs, RULE, order=tuple(range(8)), top=top, top_speedup=1.5)
    assert search.decision() == top
    search.set_baseline(2.0)
    assert search.decision() is None
    search.set_baseline(1.2)
    assert search.decision() == top
    search.set_baseline(0.5)  # never below plain decoding
    assert search.baseline == 1.0

    bound = speed_bound(RULE, costs.floor(1), lambda n: costs.verify_cost(n, 1)) * costs.plain(1)
    assert bound > 1.0 + SearchConfig().min_gain
    search.start_round()
    assert search.active and search.next_request() is not None
    search.set_baseline(bound)
    search.start_round()
    assert not search.active and search.next_request() is None and search.decision() is None
