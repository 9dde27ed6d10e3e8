"""The on-the-fly search, end to end on tiny models: what it finds, when it decodes plainly, what it saves.

Synthetic step costs (`flat_costs`) make the speed objective's choices independent of how loaded
the test machine is; one test runs on measured costs to check the time budget.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from tiny_models import tiny_model

from skipspec import SkipSet, SwiftConfig, SwiftDecoder
from skipspec.config import SearchConfig
from skipspec.model.adapter import ModelAdapter
from skipspec.search import LayerSetStore, SearchPolicy
from skipspec.search.costs import CostModel, Line

PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8], [1, 6, 1, 8, 0, 3, 3, 9, 8], [5, 7, 7, 2, 1]]


def identity_model(zero_attn=(), zero_mlp=(), seed=0, family="llama"):
    """An undamped tiny model (every real sublayer matters) whose listed sublayers add exactly zero."""
    model = tiny_model(family, seed=seed, damp=1.0)
    with torch.no_grad():
        for i in zero_attn:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
        for i in zero_mlp:
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


def flat_costs(num_layers: int, slot: float = 0.08, per_node: float = 0.01, unit: float = 1.0) -> CostModel:
    """Plain step 1 `unit` s, each inner sublayer `slot`, a verify forward 1 + `per_node` per extra node."""
    n, slot = num_layers - 2, slot * unit
    return CostModel(num_layers, Line(unit, 0.0), Line(0.2 * unit, 0.0), (Line(slot, 0.0),) * n, (Line(slot, 0.0),) * n,
                     ((1, 0.0), (64, 63 * per_node * unit)))  # fmt: skip


def search_decoder(model, objective, *, costs=True, store=None, skip=None, runtime=None, **search):
    search = dict(context_window=16, step_budget=math.inf, proposals_per_step=8, persist=store is not None) | search
    attn, mlp = skip if skip is not None else (None, None)
    cfg = SwiftConfig(skip_attn=attn, skip_mlp=mlp, confidence_threshold=0.0, max_draft_tokens=8, topk=1,
                      search=SearchConfig(objective=objective, **search))  # fmt: skip
    adapter = ModelAdapter(model)
    start = SkipSet.starting(adapter.num_layers) if skip is None else SkipSet.of(attn, mlp)
    policy = SearchPolicy(adapter, cfg, start, store=store, costs=flat_costs(adapter.num_layers) if costs else None)
    return SwiftDecoder(model, cfg, stop_token_ids=[], policy=policy, runtime=runtime)


def run_until_settled(dec, requests=12, new_tokens=60):
    """Generate until the search stops looking (checking every output against plain decoding)."""
    for i in range(requests):
        prompt = PROMPTS[i % len(PROMPTS)]
        res = dec.generate(prompt, new_tokens, method="swift")
        assert res.tokens == dec.generate(prompt, new_tokens, method="ar").tokens
        if not dec.policy.search.active:
            return res
    raise AssertionError(f"search still running after {requests} requests: {dec.policy.stats()}")


ZEROED = SkipSet.of([2, 4], [3])  # 3 slots: SWIFT's fixed size for 6 layers is int(8 * 0.45) = 3


@pytest.mark.parametrize("objective", ["paper", "speed"])
def test_search_finds_the_sublayers_that_are_identities(objective):
    model = identity_model(zero_attn=[2, 4], zero_mlp=[3])
    dec = search_decoder(model, objective)
    run_until_settled(dec)
    assert dec.policy.skip_set() == ZEROED, dec.policy.stats()
    if objective == "paper":
        assert dec.policy.search.best_score == 1.0
        assert "matchness" in dec.policy.search.stop_reason
    # Skipping exact identities drafts exactly what the full model says: every draft is accepted.
    res = dec.generate(PROMPTS[0], 40, method="swift")
    assert res.stats["acceptance_rate"] == 1.0 and res.stats["drafted_tokens"] > 0


def test_a_settled_search_with_a_set_counts_its_quiet_steps_but_has_no_plain_ones():
    """Between looks, a step the set did not draft is only counted (`quiet_steps`, which a hybrid
    decoder runs drafting steps for), but with a set chosen no step is plain (`plain_steps`)."""
    dec = search_decoder(identity_model(zero_attn=[2, 4], zero_mlp=[3]), "speed", relook_steps=10)
    run_until_settled(dec)
    policy = dec.policy
    assert policy.skip_set() == ZEROED and not policy.search.active
    assert policy.plain_steps() == 0
    assert policy.quiet_steps() == policy._idle - 1 > 0


def test_speed_search_decodes_plainly_when_every_skip_hurts():
    dec = search_decoder(identity_model(), "speed")
    run_until_settled(dec)
    assert dec.policy.stats()["proposals"] > 0
    assert dec.policy.skip_set() is None
    after = dec.generate(PROMPTS[1], 30, method="swift")
    assert after.stats["drafted_tokens"] == 0 and after.stats["skip_attn"] == [] and after.stats["skip_mlp"] == []


def test_steps_the_search_only_counts_run_back_to_back_on_the_fast_path(monkeypatch):
    """Settled on plain decoding, the speed search needs nothing from the steps before its next look
    but their count (`plain_steps`): the fixed-shape runtime runs them with a step in flight
    (`plain_steps`), none of them scores, the search still looks again after `relook_steps`, and
    the output is plain decoding's."""
    from skipspec.runtime import RuntimeConfig, StaticExecutor

    dec = search_decoder(identity_model(), "speed", relook_steps=10, runtime=RuntimeConfig(mode="static"))
    run_until_settled(dec)
    policy = dec.policy
    assert policy.skip_set() is None and not policy.search.active
    idle, rounds = policy._idle, policy.search.rounds
    assert policy.plain_steps() == idle - 1 > 0
    expected = dec.generate(PROMPTS[1], 60, method="ar").tokens
    runs = []
    original = StaticExecutor.plain_steps

    def recording(self, limit, *args):
        forwards = policy.budget.forwards
        yield from original(self, limit, *args)
        runs.append((limit, policy.budget.forwards - forwards))

    monkeypatch.setattr(StaticExecutor, "plain_steps", recording)
    res = dec.generate(PROMPTS[1], 60, method="swift")
    assert res.tokens == expected and res.stats["drafted_tokens"] == 0
    assert runs and runs[0][0] == idle - 1, runs
    assert all(scored == 0 for _, scored in runs), "a step the search only counts ran a scoring forward"
    assert policy.search.rounds > rounds, "the search did not look again after its idle steps"


def test_steps_a_round_cannot_pay_for_run_back_to_back_on_the_fast_path(monkeypatch):
    """During a round, a step whose credit cannot pay for a scoring forward only adds to the credit:
    where a scoring forward costs many steps of budget (a fast device), the steps until the credit
    covers the next one (`plain_steps`) run with a step in flight; none of them scores, the search
    still scores between them, and the output is plain decoding's."""
    from skipspec.runtime import RuntimeConfig, StaticExecutor

    model = identity_model(zero_attn=[2, 4], zero_mlp=[3])  # sets worth finding: the round goes on
    dec = search_decoder(model, "speed", runtime=RuntimeConfig(mode="static"), step_budget=0.5)
    # A 0.5 ms plain step, and each scoring forward charged 2 ms whatever it took (its wall time on a
    # loaded machine ran to 6 ms, and then the debt outlasted the requests): the credit is in debt for
    # several steps after each forward, and the search scores again within these requests.
    dec.policy.costs = flat_costs(dec.policy.adapter.num_layers, unit=5e-4)
    policy, runs = dec.policy, []
    charge = policy.budget.charge
    monkeypatch.setattr(policy.budget, "charge", lambda seconds: charge(2e-3))
    original = StaticExecutor.plain_steps

    def recording(self, limit, *args):
        forwards, active = policy.budget.forwards, policy.search.active
        yield from original(self, limit, *args)
        runs.append((limit, policy.budget.forwards - forwards, active))

    monkeypatch.setattr(StaticExecutor, "plain_steps", recording)
    for prompt in PROMPTS[:3]:
        res = dec.generate(prompt, 100, method="swift")
        assert res.tokens == dec.generate(prompt, 100, method="ar").tokens
    in_round = [(limit, scored) for limit, scored, active in runs if active]
    assert in_round and max(limit for limit, _ in in_round) >= 5, runs
    assert all(scored == 0 for _, scored in in_round), "a step the search could not pay for ran a scoring forward"
    assert policy.budget.forwards >= 3, (policy.stats(), runs)


def test_a_round_counts_the_steps_before_its_request_has_the_tokens_it_scores_on():
    """A round scores on the latest `context_window` tokens of the output: until a request has
    produced one more than that, its steps are only counted (`quiet_steps`, with steps of one
    token), and the step that brings the last of them may score (0)."""
    dec = search_decoder(identity_model(zero_attn=[2, 4], zero_mlp=[3]), "speed", context_window=16)
    policy = dec.policy
    dec.generate(PROMPTS[0], 4, method="swift")  # sets the search up; its first round is on
    policy.begin(len(PROMPTS[1]), 60)
    assert policy.search.active and policy._context is None
    assert policy.quiet_steps() == 15  # the prefill gave one token of the 17 it needs
    policy._emitted = 17
    assert policy.quiet_steps() == 0


@pytest.mark.parametrize("device_drafting", [False, True])
def test_hybrid_never_scores_while_a_step_launched_ahead_writes_the_cache(monkeypatch, device_drafting):
    """A scoring forward writes the cache past the committed slots, where a step launched ahead of
    the host writes too. Hybrid's rate watch can pause drafting for longer than the search only
    counts steps, and those plain steps (or drafting steps) run with the next one in flight: the
    search must defer its scoring to the run's last step, or it overwrites what that step
    committed and the output leaves plain decoding's (float32, fast-path executor)."""
    from skipspec.drafting.hybrid import RateWatch
    from skipspec.runtime import RuntimeConfig

    # Plain steps: sets worth finding, so rounds go on scoring. Drafting steps run while layer
    # skipping has no set: none worth finding, a round every few steps.
    model = identity_model() if device_drafting else identity_model(zero_attn=[2, 4], zero_mlp=[3])
    runtime = RuntimeConfig(mode="static", device_drafting=device_drafting)
    dec = search_decoder(model, "speed", runtime=runtime, relook_steps=4)
    policy, busy, runs = dec.policy, [], []
    # The watch pauses drafting for 7 plain steps at a time, whatever the search expects.
    monkeypatch.setattr(RateWatch, "plain_steps", lambda self: 0 if device_drafting else 7)
    score = policy._run

    def recording(request, ctx, context):
        busy.append(dec.executor.ahead)
        return score(request, ctx, context)

    monkeypatch.setattr(policy, "_run", recording)
    plain = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[])
    for prompt in PROMPTS * 2:
        res = dec.generate(prompt, 80, method="hybrid")
        assert res.tokens == plain.generate(prompt, 80, method="ar").tokens, policy.stats()
        runs.append((res.stats["drafting_steps"], res.stats["drafting_runs"]))
    assert len(busy) >= 5 and not any(busy), (busy, policy.stats())
    if device_drafting:  # runs went on while the search had no context yet, or could not pay
        assert sum(n for n, _ in runs) > 2 * sum(r for _, r in runs), runs


def test_one_off_set_up_inside_a_scoring_call_is_not_charged_to_the_time_budget():
    """On the fast path a scoring call may first capture (and compile) its graph: seconds, against a
    budget of a fraction of a step. Charged, that one call stalled the search for thousands of
    steps on the GPU; the policy subtracts what its backend's `capture_time` says was set-up."""
    model = tiny_model("llama")
    adapter = ModelAdapter(model)
    cfg = SwiftConfig(search=SearchConfig(objective="speed", context_window=8, step_budget=2.0, persist=False))

    class FirstCallCaptures:
        """A scoring backend whose first call spends 1 s on set-up, as a graph capture would (far
        more than the 60 steps earn, even at a generous budget: charged, it stalls the search)."""

        tag = "eager"
        capture_time = 0.0
        calls = 0

        def score(self, frame, cache, skip):
            self.calls += 1
            if self.calls == 1:
                time.sleep(1.0)
                self.capture_time += 1.0
            return adapter.forward(frame, cache, skip)

        def sublayer_sizes(self, frame):
            return None

        def cost_timer(self):
            return None

    policy = SearchPolicy(adapter, cfg, SkipSet.starting(6), backend=FirstCallCaptures())
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], policy=policy)
    res = dec.generate(PROMPTS[0], 60, method="swift")
    assert res.tokens == dec.generate(PROMPTS[0], 60, method="ar").tokens
    assert policy.budget.forwards >= 5, f"the search stalled after its first scoring call: {policy.stats()}"
    assert policy.budget.spent < 1.0 <= policy.total_time


def test_the_influence_probe_runs_in_the_scoring_graph_on_the_fast_path(monkeypatch):
    """No eager forward with hooks on the fast path: on a GPU one cost the search's budget ~21,000 steps."""
    import skipspec.search.online as online
    from skipspec.runtime import RuntimeConfig

    monkeypatch.setattr(online, "influence", lambda *a: pytest.fail("the probe ran eagerly on the fast path"))
    cfg = SwiftConfig(search=SearchConfig(context_window=8, step_budget=math.inf, persist=False))
    dec = SwiftDecoder(tiny_model("llama"), cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="static"))
    res = dec.generate(PROMPTS[0], 40, method="swift")
    assert res.tokens == dec.generate(PROMPTS[0], 40, method="ar").tokens
    assert any(measure for _, measure in dec.executor._scores.keys()), "no measuring scoring forward ran"
    assert dec.policy.budget.forwards > 1


def test_a_set_that_loses_in_use_is_dropped_before_the_search_scores_it():
    """Realized rate: a named bad set is used as asked, then dropped once it is measured slower than plain."""
    inner = [1, 2, 3, 4]
    dec = search_decoder(identity_model(), "speed", skip=(inner, inner), context_window=64)
    res = dec.generate(PROMPTS[0], 50, method="swift")
    assert res.stats["drafted_tokens"] > 0  # it was used
    assert dec.policy.skip_set() is None and dec.policy.fallbacks == 1
    assert dec.policy.stats()["proposals"] == 0  # no scoring forward: the context never filled
    assert res.tokens == dec.generate(PROMPTS[0], 50, method="ar").tokens


def test_search_time_stays_within_its_budget():
    """Scoring forwards may spend `step_budget` x the measured plain step per verify step (plus one forward)."""
    model = tiny_model("llama")
    budget = 0.05
    # SWIFT's search never runs out of proposals here, so only the budget holds it back.
    settings = dict(costs=False, context_window=8, proposals_per_step=2, stop_score=math.inf, bayes_interval=0)
    dec = search_decoder(model, "paper", step_budget=budget, **settings)
    for prompt in PROMPTS:
        dec.generate(prompt, 80, method="swift")
    p = dec.policy
    assert p.budget.forwards > 0
    b = p.budget
    assert b.spent <= b.granted + b.longest, (b.spent, b.granted, b.longest)
    free = search_decoder(model, "paper", **settings)
    for prompt in PROMPTS:
        free.generate(prompt, 80, method="swift")
    assert free.policy.budget.forwards > 5 * p.budget.forwards


# -- saved sets -----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSPEC_CACHE", str(tmp_path))
    return LayerSetStore()


def test_saved_set_round_trip(store):
    model = identity_model(zero_attn=[2, 4], zero_mlp=[3])
    run_until_settled(search_decoder(model, "paper", store=store))
    entry = next(iter(json.loads(store.path.read_text())["sets"].values()))
    assert entry["set"] == {"attn": [2, 4], "mlp": [3]} and entry["done"] is True
    # A later decoder (or process) starts from the saved set and does not search again.
    again = search_decoder(model, "paper", store=store)
    res = again.generate(PROMPTS[2], 40, method="swift")
    assert again.policy.skip_set() == ZEROED and res.stats["acceptance_rate"] == 1.0
    assert again.policy.stats()["proposals"] == 0


def test_a_corrupt_store_is_ignored_with_a_warning(store):
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text("{ not json")
    model = identity_model(zero_attn=[2, 4], zero_mlp=[3])
    dec = search_decoder(model, "paper", store=store)
    with pytest.warns(RuntimeWarning, match="not valid JSON"):
        run_until_settled(dec)
    assert dec.policy.skip_set() == ZEROED
    assert json.loads(store.path.read_text())["version"] == 1  # replaced by a good file


def test_a_saved_set_for_another_shape_is_ignored_with_a_warning(store):
    model = identity_model(zero_attn=[2, 4], zero_mlp=[3])
    run_until_settled(search_decoder(model, "paper", store=store))
    doc = json.loads(store.path.read_text())
    for entry in doc["sets"].values():
        entry["num_layers"] = 40
    store.path.write_text(json.dumps(doc))
    dec = search_decoder(model, "paper", store=store)
    with pytest.warns(RuntimeWarning, match="40 layers"):
        dec.generate(PROMPTS[0], 10, method="swift")
    assert dec.policy.skip_set() == SkipSet.starting(6)


def test_two_models_keep_separate_sets(store):
    a = identity_model(zero_attn=[2, 4], zero_mlp=[3], seed=1)
    b = identity_model(zero_attn=[1], zero_mlp=[2, 4], seed=2)
    dec_a, dec_b = search_decoder(a, "paper", store=store), search_decoder(b, "paper", store=store)
    for _ in range(3):  # interleaved, as two decoders serving in one process
        dec_a.generate(PROMPTS[0], 60, method="swift")
        dec_b.generate(PROMPTS[1], 60, method="swift")
    run_until_settled(dec_a)
    run_until_settled(dec_b)
    assert dec_a.policy.skip_set() == ZEROED
    assert dec_b.policy.skip_set() == SkipSet.of([1], [2, 4])
    assert len(json.loads(store.path.read_text())["sets"]) == 2
    assert search_decoder(a, "paper", store=store).generate(PROMPTS[3], 5, method="swift").stats["skip_attn"] == [2, 4]
    assert search_decoder(b, "paper", store=store).generate(PROMPTS[3], 5, method="swift").stats["skip_attn"] == [1]


def test_measured_costs_are_saved_and_reused(store):
    model = tiny_model("qwen2")
    first = search_decoder(model, "speed", costs=False, store=store)
    first.generate(PROMPTS[0], 4, method="swift")
    assert first.policy.calibration_time > 0
    second = search_decoder(model, "speed", costs=False, store=store)
    second.generate(PROMPTS[0], 4, method="swift")
    assert second.policy.calibration_time == 0 and second.policy.costs == first.policy.costs


def test_fast_path_costs_are_measured_on_its_own_steps_and_kept_apart(store, monkeypatch):
    """A decoder on the fixed-shape runtime times its own kind of step (`StepTimer`), not eager
    forwards, and saves costs and sets under its runtime's name, apart from the eager path's."""
    from skipspec.runtime import RuntimeConfig
    from skipspec.runtime.timing import StepTimer

    calls = []
    original = StepTimer.__call__
    monkeypatch.setattr(StepTimer, "__call__", lambda self, *a: calls.append(a) or original(self, *a))
    model = tiny_model("llama")
    cfg = SwiftConfig(search=SearchConfig(context_window=8, persist=True))
    fast = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="static"))
    prompt = PROMPTS[0]
    assert fast.generate(prompt, 20).tokens == fast.generate(prompt, 20, method="ar").tokens
    assert calls and fast.policy.calibration_time > 0
    assert {n for n, _, _ in calls} >= {1, 4, 32}  # plain, sublayer and verify-size forwards
    costs = json.loads(store.path.read_text())["costs"]
    assert [k.split("|")[3] for k in costs] == ["static"]
    calls.clear()
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="eager"))
    eager.generate(prompt, 4, method="swift")
    assert not calls and eager.policy.calibration_time > 0  # its own costs, measured eagerly
    saved = sorted(k.split("|")[3] for k in json.loads(store.path.read_text())["costs"])
    assert saved == sorted([eager.executor.tag, "static"])  # "eager", or "eager+packed-linear" on a CPU


def test_tune_command_saves_a_set_under_its_task(store, tmp_path):
    from tiny_models import save_tiny
    from typer.testing import CliRunner

    from skipspec.cli import app

    folder = save_tiny(tmp_path / "m")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('w5 w6 w7 w8\n\n{"turns": ["w9 w3 w2", "ignored"]}\n')
    res = CliRunner().invoke(app, ["tune", "--model", folder, "--prompts", str(prompts), "--task", "chat",
                                   "--objective", "paper", "-n", "40", "--passes", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["proposals"] > 0 and out["requests"] >= 2
    ((key, entry),) = json.loads(store.path.read_text())["sets"].items()
    assert key.endswith("|chat|paper") and entry["set"]["attn"] == out["skip_attn"]
    bad = CliRunner().invoke(app, ["tune", "--model", folder, "--prompts", str(prompts), "--objective", "fast"])
    assert bad.exit_code == 2 and "objective" in bad.output


def test_warmup_runs_what_follows_a_scoring_forward_once_per_sampling_program(monkeypatch):
    """The search's first scoring comes deep into some request: the tensor work after its forward
    (the drafter's view of the logits, the target distribution when sampling) runs in warm-up,
    so that a GPU has loaded its kernels by then."""
    import skipspec.search.online as online
    from skipspec.runtime import RuntimeConfig
    from skipspec.verify import SAMPLING_PROGRAMS

    dec = search_decoder(identity_model(), "speed", runtime=RuntimeConfig(mode="static"))
    dec.warmup(200, methods=("hybrid",), sampling=SAMPLING_PROGRAMS)  # the real thing runs
    seen = []

    def profile_of(logits, targets, rule, params, p):
        seen.append((tuple(logits.shape), params.do_sample, params.top_k, params.top_p, p is not None))

    monkeypatch.setattr(online, "profile_of", profile_of)
    dec.warmup(200, methods=("ngram",), sampling=SAMPLING_PROGRAMS)
    assert seen == [], "no layer skipping, no search"
    dec.warmup(200, methods=("hybrid",), sampling=SAMPLING_PROGRAMS)
    shape = (dec.policy.cfg.context_window, dec.adapter.vocab_size)
    assert seen == [(shape, False, 0, 1.0, False), (shape, True, 0, 1.0, True), (shape, True, 2, 0.9, True)]
