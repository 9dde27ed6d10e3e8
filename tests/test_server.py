"""`skipspec serve`: the OpenAI-compatible server, driven by the official `openai` client.

Fast tests serve a tiny random model with a byte-level tokenizer (so random output is full of
multi-byte and broken characters, the hard case for streaming text) from uvicorn on 127.0.0.1 in
a thread. The slow test runs `skipspec serve` on SmolLM2 as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from tiny_models import tiny_model

import skipspec
from skipspec.engine.stops import tokenizer_stop_token_ids
from skipspec.prompts import encode_prompt
from skipspec.server import Backend, ServerSettings, create_app
from skipspec.server.load import LoadConfig, percentile, run_load
from skipspec.server.text import IncrementalDetokenizer, StopMatcher
from skipspec.verify import SAMPLING_PROGRAMS

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TIMEOUT = 60.0
FIXED = skipspec.SwiftConfig(optimize=False)  # drafts every step, so the speculation counters move


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges: token i < 256 is one byte; 256/257 are chat markers."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}, merges=[]))
    core.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def tiny(tok):
    # The same seed gives the same weights: the server's model and the reference's are twins.
    return tiny_model("llama", vocab_size=len(tok))


@pytest.fixture(scope="module")
def reference(tok):
    """A decoder over a twin of the served model: what `generate` produces, to compare against."""
    model = tiny(tok)
    return skipspec.SwiftDecoder(model, FIXED, stop_token_ids=tokenizer_stop_token_ids(tok, model))


def expected_text(reference, tok, ids, max_tokens, **sampling) -> tuple[str, list[int]]:
    tokens = reference.generate(ids, max_tokens, **sampling).tokens
    return tok.decode(tokens, skip_special_tokens=True), tokens


def chat_ids(tok, text: str) -> list[int]:
    return encode_prompt(tok, text, chat=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app, wait_ready: bool = True):
    """uvicorn serving `app` on a free port in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}/health", timeout=5).status_code
            if status == 200 or (status == 503 and not wait_ready):
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        raise AssertionError("the server did not come up")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)


def client(url: str, key: str = "none") -> openai.OpenAI:
    # No retries: a 429 or 500 must reach the test as it is.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def server(tok):
    backend = Backend.build(tiny(tok), tok, name="tiny", config=FIXED)
    with running(create_app(backend, ServerSettings(max_queue=32))) as url:
        yield url


class ToyDecoder:
    """A real decoder made slow (a delay per token) and made to fail on a prompt holding `poison`."""

    def __init__(self, inner, delay: float, poison: int) -> None:
        self.inner, self.delay, self.poison = inner, delay, poison
        self.streams: list[_SlowStream] = []

    def stream(self, ids, max_new_tokens, **kwargs):
        if self.poison in ids:
            raise RuntimeError("poisoned prompt")
        s = _SlowStream(self.inner.stream(ids, max_new_tokens, **kwargs), self.delay)
        self.streams.append(s)
        return s

    def generate(self, ids, max_new_tokens, **kwargs):
        return self.inner.generate(ids, max_new_tokens, **kwargs)


class _SlowStream:
    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.closed = threading.Event()

    def __iter__(self):
        for token in self.inner:
            time.sleep(self.delay)
            yield token

    def close(self) -> None:
        self.inner.close()
        self.closed.set()

    @property
    def tokens(self):
        return self.inner.tokens

    @property
    def result(self):
        return self.inner.result


@pytest.fixture(scope="module")
def slow(tok):
    """A server whose decoder takes 20 ms a token, with room for 2 waiting requests."""
    model = tiny(tok)
    stops = tokenizer_stop_token_ids(tok, model)
    decoder = ToyDecoder(
        skipspec.SwiftDecoder(model, FIXED, stop_token_ids=stops), delay=0.02, poison=tok("#")["input_ids"][0]
    )
    backend = Backend(model, tok, decoder, name="tiny", stop_token_ids=stops)
    app = create_app(backend, ServerSettings(max_queue=2))
    with running(app) as url:
        yield url, decoder


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics by name and labels, parsed by prometheus-client's own parser."""
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def stream_chat(c: openai.OpenAI, **kwargs) -> tuple[str, list]:
    chunks = list(c.chat.completions.create(stream=True, **kwargs))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    return text, chunks


def stream_completion(c: openai.OpenAI, **kwargs) -> tuple[str, list]:
    chunks = list(c.completions.create(stream=True, **kwargs))
    return "".join(ch.choices[0].text for ch in chunks if ch.choices), chunks


# -- pure pieces ------------------------------------------------------------------------------


def test_detokenized_pieces_never_split_a_character_and_join_to_decode(tok):
    text = "héllo wörld, 你好 🙂 done"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.encode())  # one token per byte: characters span tokens
    d = IncrementalDetokenizer(tok)
    pieces = [d.add(t) for t in ids]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + d.flush() == text
    rng = random.Random(0)
    for _ in range(50):  # random bytes, broken sequences included: the same text as one decode
        ids = [rng.randrange(258) for _ in range(rng.randint(1, 40))]
        d = IncrementalDetokenizer(tok)
        assert "".join(d.add(t) for t in ids) + d.flush() == tok.decode(ids, skip_special_tokens=True)


def test_stop_strings_are_cut_exactly_however_the_text_is_split():
    rng = random.Random(1)
    alphabet = "ab c"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = tuple({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))})
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        want = text[: min(hits)] if hits else text
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        m = StopMatcher(stops)
        out, stopped = "", False
        for p in pieces:
            got, stopped = m.feed(p)
            out += got
            if stopped:
                break
        if not stopped:
            tail, stopped = m.flush()
            out += tail
        assert (out, stopped) == (want, bool(hits)), (text, stops, pieces)


def test_percentiles_interpolate_like_numpy():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)


# -- the server -------------------------------------------------------------------------------


def test_chat_streamed_equals_non_streamed_equals_generate(server, tok, reference):
    c = client(server)
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    want, tokens = expected_text(reference, tok, chat_ids(tok, messages[0]["content"]), 24)
    full = c.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0)
    streamed, chunks = stream_chat(c, model="tiny", messages=messages, max_completion_tokens=24, temperature=0,
                                   stream_options={"include_usage": True})  # fmt: skip
    assert full.choices[0].message.content == streamed == want
    assert full.choices[0].finish_reason == chunks[-2].choices[0].finish_reason
    assert full.usage.completion_tokens == chunks[-1].usage.completion_tokens == len(tokens)
    assert full.usage.prompt_tokens == len(chat_ids(tok, messages[0]["content"]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.usage is None for ch in chunks[:-1]) and chunks[-1].choices == []
    stats = full.model_extra["skipspec"]
    assert stats["drafted_tokens"] > 0 and stats["mean_accepted"] >= 1.0
    assert set(stats) >= {"mean_accepted", "drafted_tokens", "accepted_tokens", "by_source"}
    # The streamed request's own stats (the drafters learn between requests, so the counts may differ).
    streamed_stats = chunks[-2].model_extra["skipspec"]
    assert set(streamed_stats) == set(stats) and 0 <= streamed_stats["accepted_tokens"] <= streamed_stats["drafted_tokens"]


def test_completions_streamed_equals_non_streamed_equals_generate(server, tok, reference):
    c = client(server)
    want, tokens = expected_text(reference, tok, tok("Once upon a time")["input_ids"], 30)
    full = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=30, temperature=0)
    streamed, chunks = stream_completion(c, model="tiny", prompt="Once upon a time", max_tokens=30, temperature=0)
    assert full.choices[0].text == streamed == want
    reason = "stop" if tokens[-1] in reference.stop_tokens else "length"
    assert full.choices[0].finish_reason == chunks[-1].choices[0].finish_reason == reason
    assert chunks[-1].model_extra["skipspec"]["verify_steps"] >= 1


def test_sampling_with_a_seed_equals_generate_with_that_seed(server, tok, reference):
    c = client(server)
    want, _ = expected_text(reference, tok, chat_ids(tok, "hi"), 20, do_sample=True, temperature=0.7, top_p=0.9, seed=7)
    kwargs = dict(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=20, temperature=0.7, top_p=0.9, seed=7
    )
    assert c.chat.completions.create(**kwargs).choices[0].message.content == want
    assert stream_chat(c, **kwargs)[0] == want


def test_sixteen_concurrent_streams_each_get_their_own_text(server, tok, reference):
    prompts = [f"prompt number {i}: {'x' * i}" for i in range(16)]
    wants = [expected_text(reference, tok, chat_ids(tok, p), 12)[0] for p in prompts]
    c = client(server)

    def one(p):
        return stream_chat(c, model="tiny", messages=[{"role": "user", "content": p}], max_tokens=12, temperature=0)[0]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, prompts, timeout=TIMEOUT * 2))
    assert got == wants


def test_full_queue_answers_429_with_retry_after_and_loses_no_output(slow, tok, reference):
    url, _ = slow
    prompts = [f"client {i}" for i in range(8)]
    wants = {p: expected_text(reference, tok, chat_ids(tok, p), 10)[0] for p in prompts}
    barrier = threading.Barrier(8, timeout=TIMEOUT)

    def one(p):
        c = client(url)
        barrier.wait()
        try:
            return stream_chat(c, model="tiny", messages=[{"role": "user", "content": p}], max_tokens=10, temperature=0)[0]
        except openai.RateLimitError as e:
            assert e.response.headers["retry-after"] == "1"
            assert set(e.body) >= {"message", "type", "param", "code"}  # the client unwraps "error"
            return None

    with ThreadPoolExecutor(8) as pool:
        got = dict(zip(prompts, pool.map(one, prompts, timeout=TIMEOUT * 2)))
    served = {p: t for p, t in got.items() if t is not None}
    # One runs and two wait; the rest arrive while all three are still busy (10 tokens x 20 ms each).
    assert 3 <= len(served) < 8
    assert served == {p: wants[p] for p in served}


def test_a_cancelled_stream_frees_the_decoder_at_the_next_step(slow, tok):
    url, decoder = slow
    c = client(url)
    before = scrape(url).get("skipspec:request_success_total{finished_reason=abort}", 0.0)
    # 200 tokens at 20 ms each would hold the decoder for 4 s.
    stream = c.completions.create(model="tiny", prompt="a long one", max_tokens=200, temperature=0, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert decoder.streams[-1].closed.wait(2.0), "the generation was not closed after the client left"
    start = time.monotonic()
    r = c.completions.create(model="tiny", prompt="next", max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert time.monotonic() - start < 2.0
    assert scrape(url)["skipspec:request_success_total{finished_reason=abort}"] == before + 1


def test_an_internal_failure_answers_500_and_the_server_keeps_serving(slow):
    url, _ = slow
    c = client(url)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as info:
            r = c.completions.create(model="tiny", prompt="a # b", max_tokens=3, stream=stream)
            list(r) if stream else None
        assert info.value.status_code == 500 and info.value.body["type"] == "server_error"
    assert c.completions.create(model="tiny", prompt="fine", max_tokens=3).choices[0].text is not None


def test_bad_requests_answer_400_with_openais_error_body(server):
    c = client(server)
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        (dict(messages=msgs, n=2), "n"),
        (dict(messages=msgs, temperature=2.5), "temperature"),
        (dict(messages=msgs, max_tokens=0), "max_tokens"),
        (dict(messages=msgs, max_tokens=10_000), "max_tokens"),  # over the 256-token context
        (dict(messages=[{"role": "user", "content": "x" * 300}]), "messages"),
        (dict(messages=msgs, top_logprobs=2), "top_logprobs"),
        (dict(messages=msgs, stop=["a", "b", "c", "d", "e"]), "stop"),
        (dict(messages=msgs, stream_options={"include_usage": True}), "stream_options"),
        (dict(messages=msgs, presence_penalty=0.5), "presence_penalty"),
        (dict(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
        (dict(messages=[]), "messages"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="tiny", **kwargs)
        body = info.value.body
        assert set(body) == {"message", "type", "param", "code"}, kwargs
        assert body["param"] == param and body["type"] == "invalid_request_error", kwargs
    with pytest.raises(openai.BadRequestError) as info:
        c.completions.create(model="tiny", prompt="x" * 300)
    assert info.value.body["code"] == "context_length_exceeded"
    r = httpx.get(f"{server}/v1/nowhere", timeout=TIMEOUT)
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    for raw in (b"{not json", b"[1, 2]", b'{"messages": "hi"}'):
        r = httpx.post(f"{server}/v1/chat/completions", content=raw, timeout=TIMEOUT)
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_stop_strings_end_generation_and_are_left_out(server, tok, reference):
    c = client(server)
    full, _ = expected_text(reference, tok, tok("stop here")["input_ids"], 40)
    # A stop string that spans tokens (each byte is one), taken from the middle of the output.
    start = next(i for i in range(8, len(full) - 3) if "\ufffd" not in full[i : i + 3])
    stop = full[start : start + 3]
    want = full[: full.find(stop)]
    kwargs = dict(model="tiny", prompt="stop here", max_tokens=40, temperature=0)
    r = c.completions.create(stop=stop, **kwargs)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    assert stream_completion(c, stop=[stop], **kwargs)[0] == want
    # Of several stop strings, the one that appears first wins.
    early = full[2:4]
    assert c.completions.create(stop=[stop, early], **kwargs).choices[0].text == full[: full.find(early)]


def test_logprobs_are_the_targets_own(server, tok, reference):
    c = client(server)
    ids = chat_ids(tok, "hi")
    _, tokens = expected_text(reference, tok, ids, 6)
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                  temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    entries = r.choices[0].logprobs.content
    scored = tokens[:-1] if tokens[-1] in reference.stop_tokens else tokens
    assert len(entries) == len(scored)
    model = tiny(tok)
    with torch.no_grad():
        logits = model(torch.tensor([ids + scored])).logits[0, len(ids) - 1 : -1]
    want = torch.log_softmax(logits.float(), -1)
    for i, e in enumerate(entries):
        assert e.logprob == pytest.approx(want[i, scored[i]].item(), abs=1e-4)
        assert e.top_logprobs[0].logprob == pytest.approx(want[i].max().item(), abs=1e-4)  # greedy: the top one
        assert len(e.top_logprobs) == 3
    streamed, chunks = stream_chat(c, model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                   temperature=0, logprobs=True)  # fmt: skip
    listed = [x for ch in chunks if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.content]
    assert [x.logprob for x in listed] == pytest.approx([e.logprob for e in entries])
    comp = c.completions.create(model="tiny", prompt="hi", max_tokens=4, temperature=0, logprobs=2)
    assert len(comp.choices[0].logprobs.top_logprobs[0]) == 2


def test_metrics_parse_and_count_what_responses_reported(server):
    c = client(server)
    before = scrape(server)
    reported = []
    for i in range(3):
        r = c.completions.create(model="tiny", prompt=f"count {i}", max_tokens=16, temperature=0)
        reported.append((r.usage.completion_tokens, r.model_extra["skipspec"]))
    _, chunks = stream_completion(c, model="tiny", prompt="count streamed", max_tokens=16, temperature=0,
                                  stream_options={"include_usage": True})  # fmt: skip
    reported.append((chunks[-1].usage.completion_tokens, chunks[-2].model_extra["skipspec"]))
    after = scrape(server)

    def grew(name):
        return after[name] - before.get(name, 0.0)

    assert grew("skipspec:spec_decode_num_drafts_total") == sum(s["drafts"] for _, s in reported) > 0
    assert grew("skipspec:spec_decode_num_draft_tokens_total") == sum(s["drafted_tokens"] for _, s in reported) > 0
    assert grew("skipspec:spec_decode_num_accepted_tokens_total") == sum(s["accepted_tokens"] for _, s in reported)
    assert grew("skipspec:generation_tokens_total") == sum(n for n, _ in reported)
    assert grew("skipspec:time_to_first_token_seconds_count") == 4
    assert grew("skipspec:e2e_request_latency_seconds_count") == 4
    assert grew("skipspec:inter_token_latency_seconds_count") > 0
    assert after["skipspec:num_requests_waiting"] == 0 and after["skipspec:num_requests_running"] == 0


def test_api_key_is_required_when_set(tok):
    backend = Backend.build(tiny(tok), tok, name="tiny", config=FIXED)
    with running(create_app(backend, ServerSettings(api_key="sesame"))) as url:
        with pytest.raises(openai.AuthenticationError) as info:
            client(url, "wrong").completions.create(model="tiny", prompt="hi", max_tokens=2)
        assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models", timeout=TIMEOUT).status_code == 401
        assert client(url, "sesame").completions.create(model="tiny", prompt="hi", max_tokens=2).usage.completion_tokens
        assert [m.id for m in client(url, "sesame").models.list()] == ["tiny"]
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200


class _ColdDecoder(ToyDecoder):
    """A decoder whose warm-up waits for the test's signal."""

    def __init__(self, inner) -> None:
        super().__init__(inner, 0.0, -1)
        self.go = threading.Event()
        self.warmed_for = None
        self.warmed_sampling = None
        self.warmed_methods = None

    def warmup(self, max_context=None, sampling=(), methods=None):
        self.warmed_for, self.warmed_sampling, self.warmed_methods = max_context, tuple(sampling), methods
        assert self.go.wait(TIMEOUT)


def test_health_answers_503_until_warm_up_is_done(tok):
    model = tiny(tok)
    stops = tokenizer_stop_token_ids(tok, model)
    decoder = _ColdDecoder(skipspec.SwiftDecoder(model, FIXED, stop_token_ids=stops))
    backend = Backend(model, tok, decoder, name="tiny", stop_token_ids=stops, max_context=128)
    with running(create_app(backend), wait_ready=False) as url:
        r = httpx.get(f"{url}/health", timeout=TIMEOUT)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        with pytest.raises(openai.InternalServerError) as info:
            client(url).completions.create(model="tiny", prompt="hi", max_tokens=2)
        assert info.value.status_code == 503
        decoder.go.set()
        deadline = time.monotonic() + TIMEOUT
        while httpx.get(f"{url}/health", timeout=TIMEOUT).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert decoder.warmed_for == 128
        # Requests may bring any sampling settings: every program is captured before the first.
        assert set(decoder.warmed_sampling) == set(SAMPLING_PROGRAMS)
        assert client(url).completions.create(model="tiny", prompt="hi", max_tokens=2).choices[0].finish_reason


def test_a_model_of_unknown_context_length_warms_up_with_a_short_request(tok):
    model = tiny(tok)
    stops = tokenizer_stop_token_ids(tok, model)
    decoder = _ColdDecoder(skipspec.SwiftDecoder(model, FIXED, stop_token_ids=stops))
    requests = []
    decoder.generate = lambda ids, max_new_tokens, **kwargs: requests.append((ids, max_new_tokens))
    # A config with no `max_position_embeddings` (transformers' own configs always carry one).
    unknown = types.SimpleNamespace(config=types.SimpleNamespace(), get_output_embeddings=model.get_output_embeddings)
    backend = Backend(unknown, tok, decoder, name="tiny", stop_token_ids=stops)
    assert backend.max_context is None
    backend.warmup()  # a sized warm-up needs a size: it would refuse, and /health never turn 200
    assert decoder.warmed_for is None and len(requests) == 1


def test_warm_up_pays_only_the_served_methods_one_time_costs(tok):
    model = tiny(tok)
    stops = tokenizer_stop_token_ids(tok, model)
    decoder = _ColdDecoder(skipspec.SwiftDecoder(model, FIXED, stop_token_ids=stops))
    decoder.go.set()
    Backend(model, tok, decoder, name="tiny", stop_token_ids=stops, max_context=64, method="ar").warmup()
    assert decoder.warmed_methods == ("ar",)
    Backend(model, tok, decoder, name="tiny", stop_token_ids=stops, max_context=64).warmup()
    assert decoder.warmed_methods is None  # the decoder's own default method


def test_load_run_reports_throughput_and_latency_percentiles(server):
    report = run_load(LoadConfig(url=server, clients=3, requests=6, max_tokens=8))
    assert report.requests == 6 and report.failed == 0, report.errors
    assert report.requests_per_s > 0 and report.tokens_per_s > 0
    assert 0 < report.ttft_p50 <= report.ttft_p99 <= report.e2e_p99
    assert report.itl_p50 <= report.itl_p99
    from typer.testing import CliRunner

    from skipspec.cli import app

    out = CliRunner().invoke(app, ["serve-load", "--url", server, "-c", "2", "-r", "2", "-n", "4", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["requests"] == 2


# -- a real model through the command line ----------------------------------------------------


@pytest.mark.slow
def test_serve_command_serves_smollm2_like_generate(tmp_path):
    from skipspec import offline_models

    path = offline_models.fetch("smollm2-135m-instruct")
    port = free_port()
    env = {**os.environ, "SKIPSPEC_API_KEY": "k"}
    cmd = [sys.executable, "-m", "skipspec.cli", "serve", "--model", str(path), "--port", str(port),
           "--device", "cpu", "--dtype", "float32", "--max-queue", "4", "--served-model-name", "smol"]  # fmt: skip
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "no /health 200 within 10 minutes"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        model, tok = skipspec.load(str(path), device="cpu", dtype="float32")
        dec = skipspec.SwiftDecoder(model, stop_token_ids=tokenizer_stop_token_ids(tok, model))
        question = "What is the capital of France? Answer in one sentence."
        want = tok.decode(dec.generate(encode_prompt(tok, question, chat=True), 32).tokens, skip_special_tokens=True)
        c = client(url, "k")
        kwargs = dict(model="smol", messages=[{"role": "user", "content": question}], max_tokens=32, temperature=0)
        assert c.chat.completions.create(**kwargs).choices[0].message.content == want
        assert stream_chat(c, **kwargs)[0] == want
        assert scrape(url)["skipspec:generation_tokens_total"] > 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
