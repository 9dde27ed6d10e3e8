"""Drafting on the device (`runtime.device_drafting`): each tensor function against the host
drafter it mirrors, then drafting steps in the decode loop against plain decoding."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from test_search import ZEROED, flat_costs, identity_model, run_until_settled, search_decoder
from tiny_models import FAMILIES, tiny_model

from skipspec import SwiftConfig, SwiftDecoder
from skipspec.drafting.ngram import scan_matches
from skipspec.drafting.recycle import UNKNOWN, expand, new_table, record_topk
from skipspec.drafting.hybrid import LayoutChoice, RateWatch
from skipspec.errors import ConfigError
from skipspec.model.skipset import SkipSet
from skipspec.runtime import RuntimeConfig
from skipspec.runtime.device_drafting import (
    HOLE,
    DeviceTreeShape,
    chain_trie,
    grow_template,
    lookup_chains,
    record_successors,
    template_accepted,
    template_paths,
)
from skipspec.search.online import RealizedRate
from skipspec.tree.template import build_template


def _paths(tokens: list[int], parents: list[int]) -> list[tuple[int, ...]]:
    """Each node's tokens from the root down."""
    out: list[tuple[int, ...]] = []
    for t, p in zip(tokens, parents):
        out.append((out[p] if p >= 0 else ()) + (t,))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_lookup_finds_the_matches_a_full_scan_finds(seed):
    rng = random.Random(seed)
    vocab = rng.choice([2, 3, 5, 20])
    n = rng.randint(1, 60)
    tokens = [rng.randrange(vocab) for _ in range(n)]
    shape = DeviceTreeShape(min_ngram=rng.randint(1, 3), max_ngram=rng.randint(3, 5), chains=rng.randint(1, 5),
                            chain_depth=rng.randint(1, 8))  # fmt: skip
    history = torch.tensor(tokens + [rng.randrange(vocab) for _ in range(20)])  # garbage past the length
    got = lookup_chains(history, torch.tensor([n]), shape).tolist()
    matches = scan_matches(tokens, shape.min_ngram, shape.max_ngram, shape.chains)
    want = [tokens[end + 1 : end + 1 + shape.chain_depth] for _, end in matches]
    want = [row + [HOLE] * (shape.chain_depth - len(row)) for row in want]
    want += [[HOLE] * shape.chain_depth] * (shape.chains - len(want))
    assert got == want, (tokens, shape)


@pytest.mark.parametrize("seed", range(40))
def test_chain_trie_holds_every_distinct_prefix_once(seed):
    rng = random.Random(seed)
    m, length = rng.randint(1, 5), rng.randint(1, 6)
    rows = []
    for _ in range(m):
        cut = rng.randint(0, length)  # a chain ends where the context does: holes after
        row = [rng.randrange(3) for _ in range(cut)] + [HOLE] * (length - cut)
        if rows and rng.random() < 0.5:  # share a prefix with an earlier chain
            other = rng.choice(rows)
            k = rng.randint(0, length)
            row = other[:k] + row[k:]
            row = row[: row.index(HOLE)] + [HOLE] * (length - row.index(HOLE)) if HOLE in row else row
        rows.append(row)
    tokens, parents = (t.tolist() for t in chain_trie(torch.tensor(rows)))
    assert all(p < i for i, p in enumerate(parents))
    real = [i for i, t in enumerate(tokens) if t != HOLE]
    assert all(parents[i] < 0 or tokens[parents[i]] != HOLE for i in real), "a node hangs under a hole"
    paths = _paths(tokens, parents)
    got = [paths[i] for i in real]
    want = {tuple(row[:d]) for row in rows for d in range(1, length + 1) if HOLE not in row[:d]}
    assert len(got) == len(set(got)) and set(got) == want


@pytest.mark.parametrize("seed", range(30))
def test_grown_template_is_the_host_expansion_with_holes_in_place(seed):
    rng = random.Random(seed)
    vocab, k = 12, 3
    table = new_table(vocab, k)
    for row in range(vocab):
        for r in range(k):
            if rng.random() < 0.6:
                table[row, r] = rng.randrange(vocab)
    template = build_template(rng.randint(1, 30), (0.5, 0.3, 0.1), max_children=k)
    root = rng.randrange(vocab)
    host = expand(table, root, template, len(template))
    device = torch.full((vocab + 1, k), HOLE)
    device[:vocab] = torch.from_numpy(table)
    paths = torch.tensor(template_paths(template.parents, template.ranks))
    grown = grow_template(device, torch.tensor([root]), paths).tolist()
    assert [t for t in grown if t != HOLE] == host.tokens
    # A hole's descendants are holes.
    assert all(grown[i] == HOLE for i, p in enumerate(template.parents) if p >= 0 and grown[p] == HOLE)


@pytest.mark.parametrize("seed", range(30))
def test_recorded_successors_are_the_host_tables(seed):
    rng = random.Random(seed)
    vocab, k, width = 10, 3, rng.choice([2, 3, 5])
    host = new_table(vocab, k)
    device = torch.full((vocab + 1, k), HOLE)
    for _ in range(4):
        n = rng.randint(1, 12)
        verified = [rng.choice([HOLE, *range(vocab)]) for _ in range(n)]
        topk = [[rng.randrange(vocab + 3) for _ in range(width)] for _ in range(n)]  # ids past the vocabulary too
        record_topk(host, np.array(verified), np.array(topk)[:, :k])
        record_successors(device, torch.tensor(verified), torch.tensor(topk))
        assert (device[:vocab].numpy() == host).all()


def test_bad_shapes_are_refused():
    with pytest.raises(ConfigError, match="drafts nothing"):
        DeviceTreeShape()
    with pytest.raises(ConfigError, match="template node 1"):
        DeviceTreeShape(template_parents=(-1, 1), template_ranks=(0, 0))
    with pytest.raises(ConfigError, match="max_ngram"):
        DeviceTreeShape(min_ngram=3, max_ngram=2, chains=1, chain_depth=1)
    with pytest.raises(ConfigError, match="device_lookup"):
        RuntimeConfig(device_lookup=(2,))
    with pytest.raises(ConfigError, match="device_template"):
        RuntimeConfig(device_template=-1)


def _accepted_walk(tokens: list[int], parents: list[int], target) -> list[int]:
    """The deepest path of a tree (root 0 first, holes -1) whose every node's token is `target` of
    the tokens before it: what acceptance commits, with targets that depend on the prefix only."""
    best: list[int] = []
    paths: dict[int, list[int]] = {0: []}
    for i in range(1, len(tokens)):
        prefix = paths.get(parents[i])
        if prefix is not None and tokens[i] == target(tuple(prefix)):
            paths[i] = prefix + [tokens[i]]
            best = max(best, paths[i], key=len)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_template_alone_accepts_what_template_accepted_says(seed):
    """From a step over lookup chains and the template, `template_accepted` tells what a step over
    the template alone would have accepted: the two trees walked against one target function."""
    rng = random.Random(seed)
    vocab = rng.choice([2, 3, 5])  # few tokens: chains and template often agree, and often duplicate
    template = build_template(rng.choice([5, 9, 15]), (0.5, 0.3, 0.1))
    shape = DeviceTreeShape.of(template, 3, chains=rng.randint(1, 3), chain_depth=rng.randint(1, 5))
    secret = {}
    target = lambda prefix: secret.setdefault(prefix, rng.randrange(vocab))  # noqa: E731
    chains = torch.tensor([[rng.randrange(vocab) for _ in range(shape.chain_depth)] for _ in range(shape.chains)])
    lookup_tokens, lookup_parents = chain_trie(chains)
    template_tokens = [rng.randrange(vocab) if rng.random() < 0.9 else HOLE for _ in template.parents]
    # The drafting step's numbering: root 0, lookup nodes, then the template's.
    tokens = [0, *lookup_tokens.tolist(), *template_tokens]
    parents = [-1, *(lookup_parents + 1).tolist()]
    parents += [0 if p < 0 else 1 + shape.lookup_nodes + p for p in template.parents]
    wide = _accepted_walk(tokens, parents, target)
    alone = [0, *template_tokens], [-1, *[0 if p < 0 else 1 + p for p in template.parents]]
    narrow = _accepted_walk(*alone, target)
    assert template_accepted(shape, tokens, wide) == len(narrow)


def test_a_drafted_tree_fills_its_whole_bucket_after_a_smaller_one():
    """Steps of two layouts share one packed tree input: each writes its own node count, tokens
    and parents, whatever the step before it (of a smaller bucket) left there."""
    from skipspec.runtime.buckets import pack_tree, packed_length
    from skipspec.runtime.device_drafting import DraftingInputs, draft_tree

    template = build_template(9, (0.5, 0.3, 0.1))
    wide = DeviceTreeShape.of(template, 3, chains=2, chain_depth=6)
    narrow = DeviceTreeShape.of(template, 3)
    history = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2] + [0] * 40)
    table = torch.randint(0, 9, (11, 3))
    tree = torch.tensor(pack_tree(7, [0] + [HOLE] * 15, [-1] + [0] * 15, 16) + [0] * 64)
    root = torch.tensor([2])
    draft_tree(tree, root, DraftingInputs.of(narrow, history, table, 16), narrow, 16)
    assert tree[1] == 16
    draft_tree(tree, root, DraftingInputs.of(wide, history, table, 32), wide, 32)
    layout = tree[: packed_length(32)].tolist()
    assert layout[:2] == [7, 32], "the committed length kept, the node count the wide bucket's"
    parents = layout[2 + 32 :]
    assert parents[1 + wide.lookup_nodes :][: len(template.parents)] == [
        0 if p < 0 else 1 + wide.lookup_nodes + p for p in template.parents
    ]
    assert layout[3 : 3 + 6] == [3, 1, 2, HOLE, HOLE, HOLE], "the longest match's continuation, to the context's end"


# -- drafting steps in the decode loop --------------------------------------------------------------

DRAFTING = RuntimeConfig(mode="static", device_drafting=True, device_lookup=(2, 6), device_template=9)


def _decoder(model, runtime=DRAFTING, stop=()) -> SwiftDecoder:
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=list(stop), runtime=runtime)
    dec._costs = flat_costs(model.config.num_hidden_layers, per_node=0.001)
    # Hybrid's host steps keep the set's drafts in: the tiny model's timings must not pause them.
    dec._allocator("hybrid").skip_watch.drafted = lambda *args, **kwargs: None
    return dec


def _repetitive_prompt(rng: random.Random) -> list[int]:
    unit = [rng.randrange(97) for _ in range(rng.randint(2, 8))]
    return (unit * 8)[: rng.randint(4, 50)]


# The drafting steps with the fast path's stand-in layers: grouped projections, the attention and
# linear kernels' ops (the formula and F.linear on the CPU).
DRAFTING_PACKED = dataclasses.replace(
    DRAFTING, group_projections=True, decode_kernel=True, tree_kernel=True, linear_kernel=True
)


@pytest.mark.parametrize(
    "family, runtime",
    [(f, DRAFTING) for f in sorted(FAMILIES)] + [(f, DRAFTING_PACKED) for f in ("llama", "qwen2", "phi3")],
    ids=[*sorted(FAMILIES), "llama-packed", "qwen2-packed", "phi3-packed"],
)
def test_drafting_steps_give_plain_decodings_tokens(family, runtime):
    """Greedy, float32: every method that drafts from text, its trees drafted on the device."""
    model = tiny_model(family)
    rng = random.Random(f"drafting-{family}")
    dec, plain = _decoder(model, runtime), SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[])
    steps = accepted = 0
    for case in range(6):
        prompt = _repetitive_prompt(rng)
        max_new = rng.randint(1, 40)
        want = plain.generate(prompt, max_new, method="ar").tokens
        for method in ("recycle", "ngram", "hybrid"):
            res = dec.generate(prompt, max_new, method=method)
            assert res.tokens == want, f"{family} case {case} {method}: prompt={prompt}"
            if method != "hybrid":  # hybrid runs them only while layer skipping has no set
                assert res.stats["drafting_steps"] == res.stats["verify_steps"]
            steps += res.stats["verify_steps"]
            accepted += res.stats["accepted_tokens"]
    assert accepted > steps // 4, "drafts were hardly ever accepted: the test checks little"


def test_stop_tokens_and_the_end_of_the_cache_cut_drafting_runs_where_plain_decoding_stops():
    """The cache sized exactly (capacity_step 1): a step running ahead of the host must never write
    past it, and tokens after a stop token are never emitted."""
    model = tiny_model("llama")
    rng = random.Random("drafting-edges")
    runtime = RuntimeConfig(mode="static", device_drafting=True, device_lookup=(2, 6), device_template=9, capacity_step=1)
    for case in range(10):
        stop = [rng.randrange(97)] if case % 2 else []
        dec, plain = _decoder(model, runtime, stop), SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=stop)
        prompt = _repetitive_prompt(rng)
        max_new = rng.randint(20, 60)
        for _ in range(2):  # the second request finds the table the first one filled: long accepted paths
            res = dec.generate(prompt, max_new, method="recycle")
            assert res.tokens == plain.generate(prompt, max_new, method="ar").tokens, f"case {case}: {prompt}"


def test_the_device_table_stays_the_host_table(monkeypatch):
    """Recycling's host table learns from each drafting step's read-back top-k what the device
    table learnt, so a later run needs no upload: also from the step in flight when a request ends.
    A new request's seeding, and steps learnt on the host (here: hybrid's plain steps while its
    watch pauses drafting), go up as the rows they wrote, not the whole table."""
    model = tiny_model("llama")
    dec = _decoder(model)
    recycle, ex = dec._builtin["recycle"], dec.executor
    uploads = []
    load = type(ex).load_successors

    def recording(self, table, tag, rows=None):
        uploads.append(rows)
        load(self, table, tag, rows)

    monkeypatch.setattr(type(ex), "load_successors", recording)
    rng = random.Random("table")
    for method in ("recycle", "recycle", "hybrid", "recycle"):
        res = dec.generate(_repetitive_prompt(rng), 30, method=method)
        if method == "hybrid":  # it ended on steps drafted on the host: the next run uploads their rows
            assert res.stats["drafting_steps"] < res.stats["verify_steps"] and ex.successors_tag != recycle.tag
            continue
        assert ex.successors_tag == recycle.tag
        assert (ex._table[: recycle.table.shape[0]].numpy() == recycle.table).all()
    assert uploads[0] is None  # the first copy is whole
    vocab = recycle.table.shape[0]
    assert len(uploads) >= 3 and all(0 < len(rows) < vocab for rows in uploads[1:]), uploads
    stream = dec.stream(_repetitive_prompt(rng), 30, method="recycle")
    next(iter(stream))  # the prefill's token
    next(iter(stream))  # a drafting step's, the next one already launched
    stream.close()
    assert ex.successors_tag == recycle.tag
    assert (ex._table[: recycle.table.shape[0]].numpy() == recycle.table).all()


def test_warmup_captures_the_drafting_steps_so_requests_capture_nothing():
    """Every method that drafts from text, in every sampling program: all kept after warm-up."""
    from skipspec.verify import SAMPLING_PROGRAMS

    model = tiny_model("llama")
    dec = _decoder(model)
    dec.warmup(128, methods=("hybrid", "ngram", "recycle"), sampling=SAMPLING_PROGRAMS)
    captures = dec.executor.captures
    settings = ({}, {"do_sample": True, "seed": 1}, {"do_sample": True, "top_k": 5, "top_p": 0.9, "seed": 1})
    drafting = 0
    for i, kwargs in enumerate(settings):
        for method in ("recycle", "ngram", "hybrid"):
            res = dec.generate(_repetitive_prompt(random.Random(i)), 30, method=method, **kwargs)
            drafting += res.stats["drafting_steps"]
    assert drafting > 0
    assert dec.executor.captures == captures


def test_drafting_steps_are_off_in_eager_mode_and_by_request():
    model = tiny_model("llama")
    prompt = _repetitive_prompt(random.Random(3))
    for runtime in (RuntimeConfig(mode="eager", device_drafting=True), RuntimeConfig(mode="static", device_drafting=False)):
        res = _decoder(model, runtime).generate(prompt, 20, method="recycle")
        assert res.stats["drafting_steps"] == 0


class Alternating:
    """A rate watch that asks for 2 plain steps after every drafting run."""

    pauses = 0

    def __init__(self) -> None:
        self.calls = 0

    def plain_steps(self) -> int:
        self.calls += 1
        return 2 if self.calls % 2 == 0 else 0

    def drafted(self, tokens, seconds, plain_estimate) -> None:
        pass

    def plain(self, seconds) -> None:
        pass


def test_the_device_history_holds_the_tokens_when_plain_steps_come_between_drafting_runs(monkeypatch):
    """Drafting steps write what they commit into the device's token history; what plain steps
    committed in between is uploaded at the next run, so prompt lookup sees the real context."""
    import skipspec.engine.decoder as decoder_module

    monkeypatch.setattr(decoder_module, "DRAFTING_RUN", 3)
    model = tiny_model("llama")
    dec, plain = _decoder(model), SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[])
    rng = random.Random("history")
    for method in ("ngram", "recycle"):
        dec._allocator(method).watch = Alternating()
        for _ in range(3):
            prompt = _repetitive_prompt(rng)
            res = dec.generate(prompt, 40, method=method)
            assert res.tokens == plain.generate(prompt, 40, method="ar").tokens
            assert 0 < res.stats["drafting_steps"] < res.stats["verify_steps"], "no plain steps came between"
            # Up to the end of the last drafting run (later plain steps go up with the next run;
            # its last step may have committed past the request's budget).
            seen = prompt + res.tokens
            valid = min(dec.executor._history_valid, len(seen))
            assert valid > len(prompt)
            assert dec.executor._history[:valid].tolist() == seen[:valid]


class NoSetYet:
    """A layer-skip policy with no set, which wants to observe a step (as a search round that
    may score would) every third step and only counts the others."""

    scratch_slots = 0
    optimize_time = 0.0

    def __init__(self) -> None:
        self.observed = 0

    def begin(self, prompt_len, max_new_tokens) -> None:
        self.count = self.observed = 0

    def skip_set(self):
        return None

    def plain_steps(self) -> int:
        return 0 if self.count % 3 == 0 else 2

    def quiet_steps(self) -> int:
        return self.plain_steps()

    def observe(self, ctx) -> None:
        self.count += 1
        self.observed += 1

    def set_baseline(self, speedup) -> None:
        pass

    def stats(self) -> dict:
        return {}


def test_hybrid_runs_drafting_steps_while_layer_skipping_has_no_set():
    """With no skip set, hybrid's trees are drafted on the device, and the layer-skip drafter
    observes every step, as it observes plain steps."""
    model = tiny_model("qwen2")
    policy = NoSetYet()
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=DRAFTING, policy=policy)
    dec._costs = flat_costs(model.config.num_hidden_layers, per_node=0.001)
    plain = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[])
    rng = random.Random("hybrid-no-set")
    for _ in range(3):
        prompt = _repetitive_prompt(rng)
        res = dec.generate(prompt, 40, method="hybrid")
        assert res.tokens == plain.generate(prompt, 40, method="ar").tokens
        assert res.stats["drafting_steps"] == res.stats["verify_steps"] > 0
        assert set(res.stats["drafted_by_source"]) <= {"ngram", "recycle"}
        assert policy.observed == res.stats["verify_steps"] - 1  # each step but the one that ended the request


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hybrid_steps_of_either_layout_in_any_order_give_plain_decodings_tokens(family, monkeypatch):
    """Hybrid's drafting steps switch between its two layouts (lookup and template, the template
    alone) from one step to the next, a step in flight: random picks, greedy and sampling."""
    rng = random.Random(f"layouts-{family}")
    ran = [0, 0]
    monkeypatch.setattr(LayoutChoice, "pick", lambda self: rng.randrange(2))
    monkeypatch.setattr(LayoutChoice, "wide", lambda self, *args: ran.__setitem__(0, ran[0] + 1))
    monkeypatch.setattr(LayoutChoice, "narrow", lambda self, *args: ran.__setitem__(1, ran[1] + 1))
    model = tiny_model(family)
    runtime = dataclasses.replace(DRAFTING, device_template_alone=True)
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=runtime, policy=NoSetYet())
    dec._costs = flat_costs(model.config.num_hidden_layers, per_node=0.001)
    plain = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[])
    assert len(_decoder(model)._device_layouts("hybrid")) == 1, "one layout unless asked for"
    wide, narrow = dec._device_layouts("hybrid")
    assert dec.executor.drafting_bucket(narrow) < dec.executor.drafting_bucket(wide)
    for case in range(6):
        prompt = _repetitive_prompt(rng)
        kwargs = {"do_sample": True, "temperature": 0.8, "seed": case} if case % 2 else {}
        want = plain.generate(prompt, 40, method="ar", **kwargs).tokens
        res = dec.generate(prompt, 40, method="hybrid", **kwargs)
        assert res.tokens == want, f"{family} case {case}: prompt={prompt}"
        assert res.stats["drafting_steps"] == res.stats["verify_steps"]
    assert min(ran) > 10, f"steps of each layout: {ran}"


class SetChosen(NoSetYet):
    """A layer-skip policy that has chosen a set (skipping every other layer's MLP)."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.skip = SkipSet.of(mlp=range(0, layers, 2))

    def skip_set(self):
        return self.skip

    def plain_steps(self) -> int:
        return 0


def test_hybrid_pauses_layer_skipping_where_its_host_steps_lose_to_drafting_steps():
    """With a set chosen, hybrid steps run on the host with layer-skip drafts merged in, and are
    timed against drafting steps; while they are found slower, drafting steps run for the pause,
    then layer skipping joins again. Every output is plain decoding's."""
    model = tiny_model("llama")
    layers = model.config.num_hidden_layers
    policy = SetChosen(layers)
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=DRAFTING, policy=policy)
    dec._costs = flat_costs(layers, per_node=0.001)
    plain = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[])
    alloc = dec._allocator("hybrid")
    alloc.watch.drafted = lambda *args, **kwargs: None  # the tiny model's timings must not pause drafting
    watch = alloc.skip_watch = RateWatch(window=1000, pause=3, max_pause=3)  # no verdict but the one forced below
    prompt = _repetitive_prompt(random.Random("hybrid-set"))
    res = dec.generate(prompt, 24, method="hybrid")
    assert res.tokens == plain.generate(prompt, 24, method="ar").tokens
    assert res.stats["drafting_steps"] == 0, "with a set and no pause every step runs on the host"
    assert "layer_skip" in res.stats["drafted_by_source"]
    assert len(watch.rate.steps) > 0 and watch.plain_seconds is None  # judged, with no drafting step yet

    for _ in range(1000):
        watch.drafted(1, 10.0, plain_estimate=1.0)  # a window far slower than plain: a pause of 3
    assert watch.plain_steps() == 3
    res = dec.generate(prompt, 40, method="hybrid")
    assert res.tokens == plain.generate(prompt, 40, method="ar").tokens
    assert res.stats["drafting_steps"] == 3, "the pause's steps are drafting steps"
    assert res.stats["verify_steps"] > 3 and watch.plain_steps() == 0
    assert watch.plain_seconds is not None and watch.plain_seconds > 0, "drafting steps are the yardstick"


def test_hybrid_keeps_only_a_skip_set_whose_estimate_beats_its_drafting_steps():
    """A settled search's set (here a perfect one) drafts on the host; once drafting steps have
    run, their measured rate over plain decoding's is the baseline the set's estimate must beat.
    Below it the set is dropped and every step is a drafting step; a lower baseline takes it up
    again. Every output is plain decoding's."""
    dec = search_decoder(identity_model(zero_attn=[2, 4], zero_mlp=[3]), "speed", runtime=DRAFTING)
    run_until_settled(dec)
    policy = dec.policy
    estimate = policy.stats()["estimated_speedup"]
    assert policy.skip_set() == ZEROED and estimate > 1.0
    alloc = dec._allocator("hybrid")
    watch = alloc.skip_watch = RateWatch(window=1000, pause=3, max_pause=3)
    for _ in range(1000):
        watch.drafted(1, 10.0, plain_estimate=1.0)  # host steps far slower: a pause of 3 drafting steps
    alloc.drafting_rate = RealizedRate(3)  # the baseline from those 3
    rng = random.Random("baseline")

    def hybrid():
        prompt = _repetitive_prompt(rng)
        res = dec.generate(prompt, 40, method="hybrid")
        assert res.tokens == dec.generate(prompt, 40, method="ar").tokens
        return res.stats

    stats = hybrid()
    # The cost model's plain step is 1 s; the tiny model's drafting steps take milliseconds.
    assert policy.stats()["baseline"] > 10 * estimate
    assert policy.skip_set() is None and stats["drafting_steps"] == stats["verify_steps"]
    stats = hybrid()
    assert stats["drafting_steps"] == stats["verify_steps"] and "layer_skip" not in stats["drafted_by_source"]

    policy.set_baseline(1.0)
    assert policy.skip_set() == ZEROED
    watch.drafted = lambda *args, **kwargs: None  # no verdict: the set drafts every step
    stats = hybrid()
    assert stats["drafting_steps"] < stats["verify_steps"] and stats["drafted_by_source"]["layer_skip"] > 0
