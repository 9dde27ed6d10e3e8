"""Public API behaviour: streaming, streamers, stop tokens, lengths, stats."""

from __future__ import annotations

import torch
from tiny_models import tiny_model

from skipspec import SwiftConfig, SwiftDecoder


def make_decoder(**cfg):
    # A fixed skip set: these tests are about the API, not about the search.
    cfg = {"optimize": False, "confidence_threshold": 0.0, "max_draft_tokens": 4, **cfg}
    return SwiftDecoder(tiny_model("qwen2"), SwiftConfig(**cfg), stop_token_ids=[])


def test_stream_yields_the_generated_tokens_in_order():
    dec = make_decoder()
    stream = dec.stream([5, 6, 7], 25)
    streamed = list(stream)
    assert streamed == stream.result.tokens == dec.generate([5, 6, 7], 25).tokens
    assert len(streamed) == 25


def test_closing_a_stream_early_keeps_the_decoder_usable():
    dec = make_decoder()
    stream = dec.stream([5, 6, 7], 40)
    first = [tok for _, tok in zip(range(3), stream)]
    stream.close()
    assert stream.result.tokens[:3] == first
    assert dec.generate([5, 6, 7], 40).tokens[:3] == first


class RecordingStreamer:
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


def test_transformers_streamer_gets_prompt_then_tokens():
    dec = make_decoder()
    streamer = RecordingStreamer()
    res = dec.generate([5, 6, 7], 12, streamer=streamer)
    assert streamer.puts[0] == [[5, 6, 7]]
    assert [t for chunk in streamer.puts[1:] for t in chunk] == res.tokens
    assert streamer.ended


def test_generation_stops_at_the_first_stop_token_like_plain_decoding():
    model = tiny_model("llama")
    free = SwiftDecoder(model, stop_token_ids=[]).generate([1, 2, 3], 30, method="ar").tokens
    stop = free[7]
    first = free.index(stop)
    for method in ("swift", "ar", "ngram", "recycle", "hybrid"):
        res = SwiftDecoder(model, SwiftConfig(confidence_threshold=0.0), stop_token_ids=[stop]).generate(
            [1, 2, 3], 30, method=method
        )
        assert res.tokens == free[: first + 1]


def test_every_max_new_tokens_is_honoured_exactly():
    dec = make_decoder()
    full = dec.generate([9, 8], 20).tokens
    for n in range(1, 20):
        assert dec.generate([9, 8], n).tokens == full[:n]


def test_stats_describe_the_run():
    dec = make_decoder(skip_attn=[2], skip_mlp=[3])
    s = dec.generate(torch.tensor([[4, 5, 6]]), 30, method="swift").stats
    assert s["new_tokens"] == 30 and s["method"] == "swift"
    assert s["skip_attn"] == [2] and s["skip_mlp"] == [3]
    assert s["verify_steps"] == len(s["accepted_per_step"])
    assert s["accepted_tokens"] == sum(s["accepted_per_step"])
    assert s["drafted_tokens"] == sum(s["drafted_per_step"]) and len(s["drafted_per_step"]) == s["verify_steps"]
    assert all(a <= d for a, d in zip(s["accepted_per_step"], s["drafted_per_step"]))
    assert abs(s["mean_accepted"] - 29 / s["verify_steps"]) < 1e-9  # first token comes from the prefill
    assert 0 <= s["acceptance_rate"] <= 1
    assert s["draft_forwards"] >= s["verify_steps"] - 1
    plain = dec.generate([4, 5, 6], 30, method="ar").stats
    assert plain["verify_steps"] == 29 and plain["draft_forwards"] == 0 and plain["mean_accepted"] == 1.0
    assert set(plain["drafted_per_step"]) == {0}


def test_hybrid_is_the_default_and_reports_its_sources():
    dec = make_decoder()
    prompt = [4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6]  # repetition: n-gram lookup has something to find
    s = dec.generate(prompt, 40).stats
    assert s["method"] == "hybrid"
    assert set(s["drafted_by_source"]) <= {"ngram", "recycle", "layer_skip"}
    assert sum(s["drafted_by_source"].values()) >= s["drafted_tokens"] > 0
    assert all(s["accepted_by_source"].get(k, 0) <= v for k, v in s["drafted_by_source"].items())
    assert abs(s["mean_tree_nodes"] - s["drafted_tokens"] / s["verify_steps"]) < 1e-9
    assert 0.0 <= s["host_share"] <= 1.0
    assert dec.generate(prompt, 40).tokens == dec.generate(prompt, 40, method="ar").tokens


def test_same_seed_same_sample():
    dec = make_decoder()
    a = dec.generate([1, 2], 15, do_sample=True, seed=11).tokens
    b = dec.generate([1, 2], 15, do_sample=True, seed=11).tokens
    assert a == b


def test_plain_decoding_spends_no_host_time_drafting():
    s = make_decoder().generate([4, 5, 6], 20, method="ar").stats
    assert s["draft_time"] == 0.0 and s["host_share"] == 0.0
