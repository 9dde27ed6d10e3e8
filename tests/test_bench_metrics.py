"""Benchmark arithmetic and the measuring loop, on hand-made records and fake methods (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skipspec import SamplingParams
from skipspec.bench.metrics import (
    OVERALL,
    acceptance_rate,
    accepted_histogram,
    by_source,
    drafting_share,
    host_share,
    mark_identical,
    mean_accepted,
    mean_tree_nodes,
    median,
    percentile,
    summarize,
    token_latencies,
    tokens_per_s,
)
from skipspec.bench.records import DEFAULT_METHODS, BenchConfig, GenSettings, Outcome, PromptRecord, WarmUp
from skipspec.bench.report import cold_start_table, drafting_table, latency_table, metric_table, overall_table
from skipspec.bench.runner import EncodedPrompt, make_record, measure
from skipspec.bench.suites import Prompt, limit_per_category, load_suite, load_suites
from skipspec.errors import ConfigError, InputError


def rec(method, prompt, category, tokens, time, **kw) -> PromptRecord:
    toks = kw.pop("toks", tuple(range(tokens)))
    return PromptRecord(prompt, category, method, 5, tokens, time, (time,), toks, **kw)


# Two categories, two prompts in "a"; hf takes twice ar's time, swift half.
RECORDS = [
    rec("ar", "p1", "a", 10, 1.0, verify_steps=9, mean_accepted=1.0, accepted_tokens=0, drafted_tokens=0),
    rec("ar", "p2", "a", 30, 2.0, verify_steps=29, mean_accepted=1.0, accepted_tokens=0, drafted_tokens=0),
    rec("ar", "p3", "b", 20, 4.0, verify_steps=19, mean_accepted=1.0, accepted_tokens=0, drafted_tokens=0),
    rec("hf", "p1", "a", 10, 2.0, verify_steps=9, mean_accepted=1.0),
    rec("hf", "p2", "a", 30, 4.0, verify_steps=29, mean_accepted=1.0),
    rec("hf", "p3", "b", 20, 8.0, verify_steps=19, mean_accepted=1.0, toks=(9,) * 20),
    rec("swift", "p1", "a", 10, 0.5, verify_steps=3, mean_accepted=3.0, accepted_tokens=6, drafted_tokens=12,
        accepted_per_step=(2, 2, 2)),
    rec("swift", "p2", "a", 30, 1.0, verify_steps=29, mean_accepted=1.0, accepted_tokens=0, drafted_tokens=10,
        accepted_per_step=(0,) * 29),
    rec("swift", "p3", "b", 20, 2.0, verify_steps=10, mean_accepted=1.9, accepted_tokens=9, drafted_tokens=18,
        accepted_per_step=(1,) * 9 + (0,)),
]  # fmt: skip


def test_tokens_per_s_is_total_tokens_over_total_time_not_mean_of_rates():
    # p1: 10 tok/s, p2: 15 tok/s; a mean of rates would say 12.5.
    assert tokens_per_s(RECORDS[:2]) == pytest.approx(40 / 3)


def test_speedups_are_rate_ratios_per_category_and_overall():
    s = summarize(mark_identical(RECORDS))
    assert list(s) == ["ar", "hf", "swift"]
    assert list(s["ar"]) == ["a", OVERALL, "b"]
    assert s["ar"]["a"].speedup_vs_ar == pytest.approx(1.0)
    assert s["hf"]["a"].speedup_vs_ar == pytest.approx(0.5)
    assert s["swift"]["a"].speedup_vs_ar == pytest.approx(2.0)
    assert s["swift"]["b"].speedup_vs_hf == pytest.approx(4.0)
    # overall: ar 60 tokens / 7 s, swift 60 tokens / 3.5 s
    assert s["swift"][OVERALL].tokens_per_s == pytest.approx(60 / 3.5)
    assert s["swift"][OVERALL].speedup_vs_ar == pytest.approx(2.0)
    assert s["ar"][OVERALL].prompts == 3 and s["ar"][OVERALL].new_tokens == 60 and s["ar"][OVERALL].time_s == 7.0


def test_decode_speedup_leaves_the_prefill_out():
    # A long prefill (3 s) that both methods pay, then 10 tokens: ar 1 s after the first token,
    # hybrid 0.25 s. The request is 4 / 3.25 = 1.23x faster, the decode phase 4x.
    timed = [
        rec("ar", "p1", "rag", 11, 4.0, ttft_s=(3.0,)),
        rec("hybrid", "p1", "rag", 11, 3.25, ttft_s=(3.0,)),
        rec("hf", "p1", "rag", 11, 5.0),  # no first-token time: no decode rate
    ]
    s = summarize(timed)
    assert s["hybrid"][OVERALL].speedup_vs_ar == pytest.approx(4.0 / 3.25)
    assert s["hybrid"][OVERALL].decode_tokens_per_s == pytest.approx(40.0)
    assert s["hybrid"]["rag"].decode_speedup_vs_ar == pytest.approx(4.0)
    assert s["ar"][OVERALL].decode_speedup_vs_ar == pytest.approx(1.0)
    assert s["hf"][OVERALL].decode_tokens_per_s is None and s["hf"][OVERALL].decode_speedup_vs_ar is None
    assert "| hybrid | 3.38 | 1.23x | 1.54x | 4.00x |" in overall_table(s)


def test_speedup_is_none_without_the_baseline():
    s = summarize([r for r in RECORDS if r.method != "hf"])
    assert s["swift"]["a"].speedup_vs_hf is None
    assert s["swift"]["a"].speedup_vs_ar == pytest.approx(2.0)


def test_mean_accepted_is_weighted_by_verify_steps():
    swift_a = [r for r in RECORDS if r.method == "swift" and r.category == "a"]
    # (3*3 + 1*29) / (3 + 29)
    assert mean_accepted(swift_a) == pytest.approx(38 / 32)
    assert mean_accepted([rec("x", "p", "c", 3, 1.0)]) is None


def test_acceptance_rate_is_accepted_over_drafted_and_none_when_nothing_drafted():
    swift = [r for r in RECORDS if r.method == "swift"]
    assert acceptance_rate(swift) == pytest.approx(15 / 40)
    assert acceptance_rate([r for r in RECORDS if r.method == "ar"]) is None
    assert acceptance_rate([r for r in RECORDS if r.method == "hf"]) is None


def test_identical_to_ar_compares_tokens_per_prompt():
    marked = mark_identical(RECORDS)
    flags = {(r.method, r.prompt_id): r.identical_to_ar for r in marked}
    assert flags[("ar", "p3")] and flags[("swift", "p3")] and not flags[("hf", "p3")]
    s = summarize(marked)
    assert s["hf"]["a"].identical_to_ar == 1.0
    assert s["hf"][OVERALL].identical_to_ar == pytest.approx(2 / 3)
    assert mark_identical([rec("hf", "p", "c", 2, 1.0)])[0].identical_to_ar is None


def test_accepted_histogram_is_a_share_of_steps():
    h = accepted_histogram([r for r in RECORDS if r.method == "swift"])
    assert sum(h.values()) == pytest.approx(1.0)
    assert h[2] == pytest.approx(3 / 42) and h[1] == pytest.approx(9 / 42) and h[0] == pytest.approx(30 / 42)


def test_median_of_odd_and_even_counts():
    assert median([5.0]) == 5.0
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    with pytest.raises(ValueError):
        median([])


def test_tables_show_a_dash_for_missing_metrics():
    s = summarize(mark_identical(RECORDS))
    table = metric_table(s, "acceptance_rate", lambda v: "–" if v is None else f"{v:.2f}")
    assert table.splitlines()[0] == "| method | a | b | overall |"
    assert "| ar | – | – | – |" in table
    overall = overall_table(s)
    assert "| swift | 17.14 | 2.00x | 4.00x |" in overall


# --- drafting and latency aggregates ------------------------------------------------------------


def test_tree_nodes_and_host_share_are_weighted_by_steps_and_time():
    rs = [
        rec("hybrid", "p1", "a", 10, 1.0, verify_steps=2, mean_tree_nodes=10.0, host_share=0.5, draft_time=1.0,
            verify_time=1.0, drafted_by_source={"ngram": 12, "recycle": 8}, accepted_by_source={"ngram": 3},
            drafting_steps=1),
        rec("hybrid", "p2", "a", 10, 1.0, verify_steps=8, mean_tree_nodes=5.0, host_share=0.1, draft_time=0.2,
            verify_time=1.8, drafted_by_source={"recycle": 20}, accepted_by_source={"recycle": 4}, drafting_steps=8),
    ]  # fmt: skip
    assert mean_tree_nodes(rs) == pytest.approx((2 * 10 + 8 * 5) / 10)
    assert host_share(rs) == pytest.approx(1.2 / 4.0)  # total host time over total time, not a mean of shares
    assert by_source(rs, "drafted_by_source") == {"ngram": 12, "recycle": 28}
    assert by_source(rs, "accepted_by_source") == {"ngram": 3, "recycle": 4}
    plain = [rec("hf", "p1", "a", 10, 1.0, verify_steps=9)]
    assert mean_tree_nodes(plain) is None and host_share(plain) is None and by_source(plain, "drafted_by_source") is None
    s = summarize(rs)["hybrid"][OVERALL]
    assert s.accepted_by_source == {"ngram": 3, "recycle": 4} and s.mean_tree_nodes == pytest.approx(6.0)
    assert drafting_share(rs) == pytest.approx(9 / 10) and drafting_share(plain) is None
    assert "| hybrid | 10.00 | – | – | 6.0 | 30% | 90% | ngram 3/12, recycle 4/28 |" in drafting_table(summarize(rs))


def test_a_chunk_gap_goes_to_its_first_token_and_the_rest_of_the_chunk_gets_zero():
    # Prefill at 0.5 s (1 token), a step of 3 tokens at 0.75 s, one of 1 token at 1.0 s.
    ttft, gaps = token_latencies([(0.5, 1), (0.75, 3), (1.0, 1)], 5)
    assert ttft == 0.5 and gaps == [0.25, 0.0, 0.0, 0.25]
    # A first chunk of several tokens (transformers' assisted loop has no separate prefill).
    assert token_latencies([(0.5, 2), (0.75, 1)], 3) == (0.5, [0.0, 0.25])
    # Tokens streamed past the method's output (cut at a stop token afterwards) are dropped.
    assert token_latencies([(0.5, 1), (0.75, 4)], 2) == (0.5, [0.25])
    assert token_latencies([(0.5, 1)], 1) == (0.5, [])
    assert token_latencies([], 0) == (None, [])


def test_percentiles_interpolate_between_order_statistics():
    values = [0.4, 0.1, 0.3, 0.2]  # order does not matter
    assert percentile(values, 0) == 0.1 and percentile(values, 100) == 0.4
    assert percentile(values, 50) == pytest.approx(0.25)
    assert percentile(values, 99) == pytest.approx(0.3 + 0.97 * 0.1)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert percentile(range(101), 99) == 99.0


def test_latency_percentiles_pool_every_prompt_and_repeat_of_a_method():
    rs = [
        rec("m", "p1", "a", 3, 1.0, ttft_s=(0.1, 0.3), itl_s=(0.01, 0.0, 0.02, 0.0)),
        rec("m", "p2", "b", 2, 1.0, ttft_s=(0.2,), itl_s=(0.05,)),
        rec("hf", "p1", "a", 3, 1.0),
    ]
    s = summarize(rs)
    assert s["m"][OVERALL].ttft_p50 == pytest.approx(0.2)
    assert s["m"][OVERALL].ttft_p99 == pytest.approx(0.2 + 0.98 * 0.1)
    assert s["m"][OVERALL].itl_p50 == pytest.approx(0.01)
    assert s["m"][OVERALL].itl_p99 == pytest.approx(0.02 + 0.96 * 0.03)
    assert s["m"][OVERALL].itl_max == pytest.approx(0.05) and s["m"]["a"].itl_max == pytest.approx(0.02)
    assert s["m"]["b"].ttft_p50 == pytest.approx(0.2)
    assert s["hf"][OVERALL].ttft_p50 is None and s["hf"][OVERALL].itl_max is None
    table = latency_table(s)
    assert "| m | 200.0 | 298.0 | 10.0 | 48.8 | 50.0 |" in table and "| hf | – | – | – | – | – |" in table


def test_a_record_takes_latencies_and_captures_from_every_repeat():
    p = EncodedPrompt(Prompt("p0", "c", "", False), (5, 6))
    outcomes = [
        Outcome((1, 2, 3), {"verify_steps": 1, "graph_captures": 2}, ((0.5, 1), (0.75, 2))),
        Outcome((1, 2, 3), {"verify_steps": 1, "graph_captures": 0}, ((0.25, 1), (0.5, 1), (0.75, 1))),
    ]
    r = make_record(p, "swift", outcomes, [1.0, 0.9])
    assert r.ttft_s == (0.5, 0.25) and r.itl_s == (0.25, 0.0, 0.25, 0.25)
    assert r.graph_captures == 2 and r.verify_steps == 1 and r.time_s == pytest.approx(0.95)
    assert make_record(p, "hf", [Outcome((1,), {})], [1.0]).graph_captures is None


def test_cold_start_table_shows_warmups_and_captures_during_timing():
    rs = [rec("swift", "p1", "a", 3, 1.0, graph_captures=0), rec("hf", "p1", "a", 3, 1.0)]
    table = cold_start_table(summarize(rs), {"swift": WarmUp(1.5, 0.25, 3), "hf": WarmUp(None, 0.5)})
    assert "| swift | 1.50 | 0.25 | 1.75 | 3 | 0 |" in table
    assert "| hf | – | 0.50 | 0.50 | – | – |" in table


# --- the measuring loop, with fake methods ------------------------------------------------------


class FakeMethod:
    """Emits `n` tokens per call; logs (name, prompt head, max_new_tokens) to a shared list."""

    def __init__(self, name: str, log: list, tokens: int = 4):
        self.name, self.log, self.tokens = name, log, tokens

    def generate(self, ids, settings: GenSettings) -> Outcome:
        self.log.append((self.name, ids[0], settings.max_new_tokens))
        n = min(self.tokens, settings.max_new_tokens)
        arrivals = tuple((0.001 * (i + 1), 1) for i in range(n))
        return Outcome(tuple(range(n)), {"verify_steps": n - 1, "mean_accepted": 1.0}, arrivals)


class PreparedMethod(FakeMethod):
    """A FakeMethod that can be readied for a context length, as the engine's methods can."""

    def prepare(self, max_context: int, settings: GenSettings) -> None:
        self.log.append((self.name, "prepare", max_context))


def _prompts(n: int) -> list[EncodedPrompt]:
    return [EncodedPrompt(Prompt(f"p{i}", "c", "", False), (i,)) for i in range(n)]


def test_methods_are_warmed_up_once_then_interleaved_prompt_major():
    log: list = []
    methods = {"ar": FakeMethod("ar", log), "swift": FakeMethod("swift", log, tokens=3)}
    records = measure(methods, _prompts(2), GenSettings(max_new_tokens=8), repeats=2, warmup_tokens=2).records
    assert log == [
        ("ar", 0, 2), ("swift", 0, 2),  # warm-up, short
        ("ar", 0, 8), ("swift", 0, 8), ("ar", 0, 8), ("swift", 0, 8),
        ("ar", 1, 8), ("swift", 1, 8), ("ar", 1, 8), ("swift", 1, 8),
    ]  # fmt: skip
    assert [(r.prompt_id, r.method) for r in records] == [("p0", "ar"), ("p0", "swift"), ("p1", "ar"), ("p1", "swift")]
    assert all(len(r.times) == 2 and r.time_s == median(r.times) for r in records)
    assert [r.identical_to_ar for r in records] == [True, False, True, False]


def test_no_warmup_when_warmup_tokens_is_zero():
    log: list = []
    measure({"ar": FakeMethod("ar", log)}, _prompts(1), GenSettings(max_new_tokens=8), warmup_tokens=0)
    assert log == [("ar", 0, 8)]


def test_methods_are_prepared_for_the_longest_context_before_their_warmup():
    log: list = []
    prompts = [EncodedPrompt(Prompt("p0", "c", "", False), (0,) * 3), EncodedPrompt(Prompt("p1", "c", "", False), (1,) * 7)]
    methods = {"swift": PreparedMethod("swift", log), "hf": FakeMethod("hf", log)}
    m = measure(methods, prompts, GenSettings(max_new_tokens=8), warmup_tokens=2)
    assert log[:3] == [("swift", "prepare", 7 + 8), ("swift", 0, 2), ("hf", 0, 2)]
    assert m.warmups["swift"].prepare_s is not None and m.warmups["swift"].generate_s is not None
    assert m.warmups["hf"].prepare_s is None and m.warmups["hf"].generate_s is not None
    r = m.records[0]
    assert r.ttft_s == (0.001,) and r.itl_s == pytest.approx((0.001, 0.001, 0.001))


def test_default_methods_include_the_engines_default_and_both_baselines():
    assert DEFAULT_METHODS == ("ar", "hybrid", "swift", "hf", "hf-pld")
    assert BenchConfig(model="m", suites=("s",)).methods == DEFAULT_METHODS


# --- suites and config ---------------------------------------------------------------------------


def test_limit_keeps_the_first_k_of_each_category_in_order():
    ps = [Prompt(str(i), c, "", False) for i, c in enumerate("aabab")]
    assert [p.prompt_id for p in limit_per_category(ps, 1)] == ["0", "2"]
    assert [p.prompt_id for p in limit_per_category(ps, 2)] == ["0", "1", "2", "4"]
    assert len(limit_per_category(ps, None)) == 5


def _write_spec_bench(path: Path) -> Path:
    rows = [
        {"question_id": 82, "category": "writing", "turns": ["w1", "second turn"]},
        {"question_id": 84, "category": "coding", "turns": ["c1"]},
        {"question_id": 162, "category": "translation", "turns": ["t1"]},
        {"question_id": 164, "category": "translation", "turns": ["t2"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_spec_bench_folds_mt_bench_categories_and_uses_the_first_turn(tmp_path):
    prompts = load_suite(str(_write_spec_bench(tmp_path / "q.jsonl")), limit=1)
    assert [(p.prompt_id, p.category, p.text, p.chat) for p in prompts] == [
        ("mt_bench/82", "mt_bench", "w1", True),
        ("translation/162", "translation", "t1", True),
    ]


def test_spec_bench_shortcut_resolves_beside_the_repository(tmp_path):
    repo = tmp_path / "main"
    repo.mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    _write_spec_bench(tmp_path / "shared" / "data" / "spec_bench_dev.jsonl")
    assert len(load_suite("spec-bench", repo_root=repo)) == 4
    with pytest.raises(InputError, match="spec-bench"):
        load_suite("spec-bench", repo_root=tmp_path / "other" / "main")


def test_text_suite_is_one_prompt_per_line_and_suites_combine(tmp_path):
    (tmp_path / "mine.txt").write_text("first prompt\n\nsecond prompt\n")
    prompts = load_suites([str(tmp_path / "mine.txt"), str(_write_spec_bench(tmp_path / "q.jsonl"))], limit=1)
    assert [p.prompt_id for p in prompts] == ["mine/0", "mt_bench/82", "translation/162"]
    with pytest.raises(InputError, match="duplicate"):
        load_suites([str(tmp_path / "mine.txt")] * 2)


def test_humaneval_is_plain_completion_of_the_signature():
    prompts = load_suite("humaneval", limit=2)
    assert [p.prompt_id for p in prompts] == ["HumanEval/0", "HumanEval/1"]
    assert all(p.category == "humaneval" and not p.chat and "def " in p.text for p in prompts)


def test_bench_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        BenchConfig(model="m", suites=("s",), methods=("ar", "ar"))
    with pytest.raises(ConfigError):
        BenchConfig(model="m", suites=("s",), repeats=0)
    with pytest.raises(ConfigError):
        GenSettings(temperature=-1.0)
    assert BenchConfig(model="m", suites=["s"]).suites == ("s",)


def test_categories_keep_only_the_named_ones_and_reject_unknown_names(tmp_path):
    path = str(_write_spec_bench(tmp_path / "q.jsonl"))
    assert [p.prompt_id for p in load_suites([path], categories=["translation"])] == ["translation/162", "translation/164"]
    with pytest.raises(InputError, match="writing"):
        load_suites([path], categories=["writing"])  # folded into mt_bench


# --- engine methods' preparation ------------------------------------------------------------------


class _Decoder:
    """Stands in for SwiftDecoder: records how it was warmed up or asked to generate."""

    def __init__(self, log: list, warmup: bool) -> None:
        self.log = log
        if warmup:
            self.warmup = lambda max_context, methods=("hybrid",), sampling=(): log.append(
                ("warmup", max_context, methods, sampling)
            )

    def generate(self, ids, max_new_tokens, method):
        self.log.append(("generate", len(ids), max_new_tokens, method))


def test_engine_methods_prepare_through_the_decoders_warmup_or_a_request_of_full_length():
    from skipspec.bench.methods import EngineMethod

    log: list = []
    method = EngineMethod.__new__(EngineMethod)
    method.mode = "swift"
    method.decoder = _Decoder(log, warmup=True)
    method.prepare(40, GenSettings(temperature=0.7, seed=3))
    method.decoder = _Decoder(log, warmup=False)
    method.prepare(40, GenSettings())
    # The run's sampling is warmed up (a sampled step is another graph than a greedy one). Without
    # `warmup`: plain decoding (no drafter learns from the made-up prompt), the full context.
    sampled = SamplingParams(do_sample=True, temperature=0.7, seed=3)
    assert log == [("warmup", 40, ("swift",), (sampled,)), ("generate", 36, 4, "ar")]


def test_the_registry_has_the_engines_methods_and_hf_assisted_needs_a_draft():
    from skipspec.bench.methods import METHODS, MethodContext

    assert {"ar", "hybrid", "swift", "ngram", "recycle", "hf", "hf-pld", "hf-assisted"} <= set(METHODS)
    assert METHODS["hf-assisted"].needs_draft and not METHODS["hf"].needs_draft
    with pytest.raises(ConfigError, match="--draft-model"):
        METHODS["hf-assisted"].factory(MethodContext(model=None, tokenizer=None, stop_ids=()))
