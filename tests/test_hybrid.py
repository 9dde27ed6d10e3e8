"""The hybrid node allocator alone: worth learning, node choice, step timings, the rate watch."""

from __future__ import annotations

import doctest
import itertools
import random

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

import skipspec.drafting.hybrid
from skipspec import SwiftDecoder
from skipspec.drafting.base import DraftTree
from skipspec.drafting.hybrid import HybridConfig, LayoutChoice, NodeAllocator, RateWatch, choose_nodes, parent_capped
from skipspec.errors import ConfigError


def test_doctests():
    assert doctest.testmod(skipspec.drafting.hybrid).failed == 0


def _best_by_brute_force(worths, costs):
    """The best rate over every combination of per-source prefixes (what the greedy choice approximates)."""
    best, best_rate = [0] * len(worths), 1.0 / costs[0]
    for lengths in itertools.product(*(range(len(w) + 1) for w in worths)):
        n = sum(lengths)
        if n >= len(costs):
            continue
        rate = (1.0 + sum(sum(w[:k]) for w, k in zip(worths, lengths))) / costs[n]
        if rate > best_rate + 1e-12:
            best, best_rate = list(lengths), rate
    return best, best_rate


@pytest.mark.parametrize("seed", range(40))
def test_choice_is_a_prefix_per_source_and_optimal_for_non_increasing_worth(seed):
    rng = random.Random(seed)
    worths = [sorted((rng.random() for _ in range(rng.randint(0, 5))), reverse=True) for _ in range(rng.randint(1, 3))]
    per_node = rng.choice([0.0, 0.05, 0.3, 1.0])
    costs = 1.0 + per_node * np.arange(rng.randint(1, 12))
    taken = choose_nodes(worths, costs)
    assert all(0 <= k <= len(w) for k, w in zip(taken, worths))
    assert sum(taken) <= len(costs) - 1
    rate = (1.0 + sum(sum(w[:k]) for w, k in zip(worths, taken))) / costs[sum(taken)]
    # Non-increasing worth and non-decreasing cost: taking best nodes first is optimal.
    _, best_rate = _best_by_brute_force(worths, costs)
    assert rate == pytest.approx(best_rate)


def test_a_node_is_taken_only_after_the_ones_before_it():
    # Source 0's second node is worth more than its first: it still comes after it.
    assert choose_nodes([[0.1, 0.9]], np.ones(4)) == [2]
    assert choose_nodes([[0.1, 0.9], [0.5]], np.array([1.0, 1.2, 1.7, 3.0])) == [0, 1]
    assert choose_nodes([[], []], np.ones(4)) == [0, 0]
    assert choose_nodes([[0.9]], np.ones(1)) == [0]  # no room for any node


def test_parent_capped_never_lets_a_child_beat_its_parent():
    assert parent_capped(np.array([0.2, 0.9, 0.8, 0.1]), [-1, 0, -1, 2]) == [0.2, 0.2, 0.8, 0.1]


@pytest.mark.parametrize("seed", range(20))
def test_parent_capped_is_the_minimum_over_each_nodes_ancestors(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    parents = [int(rng.integers(-1, i)) for i in range(n)]
    values = rng.random(n)
    expected = []
    for i in range(n):
        best, node = values[i], parents[i]
        while node >= 0:
            best, node = min(best, values[node]), parents[node]
        expected.append(best)
    assert parent_capped(values, parents) == expected


def test_allocator_learns_which_source_pays():
    alloc = NodeAllocator(["good", "bad"], HybridConfig(decay=1.0))
    trees = [DraftTree([1, 2, 3], [-1, 0, 1]), DraftTree([4, 5, 6], [-1, 0, 1])]
    parents = [[-1, 0, 1], [-1, 0, 1]]
    costs = 1.0 + 0.2 * np.arange(7)  # each node costs a fifth of a step
    for _ in range(30):
        kept = alloc.plan(trees, parents, costs)
        alloc.observe(kept, [tuple(range(kept[0])), ()])
    kept = alloc.plan(trees, parents, costs)
    assert kept[0] == 3 and kept[1] == 0


def test_every_32nd_plan_is_plain():
    alloc = NodeAllocator(["a"])
    tree, costs = [DraftTree([1], [-1])], np.ones(2)
    plans = [alloc.plan(tree, [[-1]], costs) for _ in range(NodeAllocator.PLAIN_EVERY)]
    assert plans[-1] == [0] and all(p == [1] for p in plans[:-1])


def test_offers_follow_what_the_allocator_keeps():
    alloc = NodeAllocator(["a", "b"], HybridConfig(offer_window=4, min_offer=8))
    assert [alloc.offer(s, 80) for s in (0, 1)] == [80, 80]  # no window seen yet: the whole share
    for kept in ([3, 0], [10, 2], [5, 1], [2, 0]):
        alloc.observe(kept, [(), ()])
    assert [alloc.offer(s, 80) for s in (0, 1)] == [20, 8]  # twice the window's most, at least 8
    alloc.observe([20, 8], [(), ()])  # both took all they were offered
    assert [alloc.offer(s, 80) for s in (0, 1)] == [40, 16]
    assert alloc.offer(0, 30) == 30  # never above the share
    for _ in range(4):
        alloc.observe([1, 1], [(), ()])
    assert alloc.offer(0, 80) == 8  # the large kept trees left the window


def test_offers_off_ask_for_the_whole_share():
    alloc = NodeAllocator(["a"], HybridConfig(offer_window=0))
    for _ in range(40):
        alloc.observe([1], [()])
    assert alloc.offer(0, 80) == 80


@pytest.mark.parametrize(
    "bad",
    [{"prior": 0.0}, {"fade": 1.5}, {"weight": 0}, {"max_nodes": 0}, {"decay": -1}, {"offer_window": -1},
     {"min_offer": 0}, {"offer_window": True}],
)  # fmt: skip
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        HybridConfig(**bad)


def _slow_window(watch: RateWatch, plain: float = 1.0) -> None:
    """A full window of drafting steps at half plain decoding's rate."""
    for _ in range(watch.rate.steps.maxlen):
        watch.drafted(1, 2.0 * plain, plain_estimate=plain)


def test_watch_pauses_drafting_that_is_slower_than_plain_steps_and_doubles_each_pause():
    w = RateWatch(window=4, pause=3, max_pause=8)
    lengths = []
    for _ in range(4):
        _slow_window(w)
        lengths.append(w.plain_steps())
        for _ in range(lengths[-1]):
            assert w.plain_steps() > 0
            w.plain(1.0)
        assert w.plain_steps() == 0
    assert lengths == [3, 6, 8, 8]  # doubled, capped at max_pause
    assert w.pauses == 4


def test_watch_keeps_drafting_that_pays_and_a_paying_window_resets_the_pause():
    w = RateWatch(window=4, pause=3, max_pause=64)
    for _ in range(50):
        w.drafted(3, 2.0, plain_estimate=1.0)  # 1.5x plain
    assert w.plain_steps() == 0 and w.pauses == 0
    _slow_window(w)
    for _ in range(w.plain_steps()):
        w.plain(1.0)
    _slow_window(w)
    for _ in range(w.plain_steps()):
        w.plain(1.0)
    assert w.pauses == 2
    for _ in range(4):  # the first full window after the pause pays
        w.drafted(3, 2.0, plain_estimate=1.0)
    _slow_window(w)
    assert w.plain_steps() == 3, "a paying window resets the pause to its first length"


def test_watch_judges_against_measured_plain_steps_once_it_has_them():
    w = RateWatch(window=2, pause=5)
    w.plain(0.5)  # plain runs measured at 0.5 s a step
    w.drafted(3, 2.0, plain_estimate=1.0)
    w.drafted(1, 2.0, plain_estimate=1.0)  # 4 tokens in 4 s: even with the estimate, slower than measured
    assert w.plain_steps() == 5


def test_watch_judges_against_a_yardstick_of_several_tokens_a_step():
    """Against drafting steps (`NodeAllocator.skip_watch`) the yardstick is their tokens per second."""
    w = RateWatch(window=2, pause=5)
    w.plain(1.0, tokens=3)
    assert w.plain_seconds == pytest.approx(1 / 3)
    w.drafted(2, 1.0, plain_estimate=1.0)
    w.drafted(2, 1.0, plain_estimate=1.0)  # 2 tokens a second, under the yardstick's 3
    assert w.plain_steps() == 5
    w = RateWatch(window=2, pause=5)
    w.plain(1.0, tokens=3)
    w.drafted(4, 1.0, plain_estimate=1.0)
    w.drafted(4, 1.0, plain_estimate=1.0)  # 4 a second: it pays
    assert w.plain_steps() == 0


@pytest.mark.parametrize("bad", [{"window": 0}, {"pause": 0}, {"pause": 9, "max_pause": 8}, {"decay": 1.0}])
def test_watch_rejects_nonsense_settings(bad):
    with pytest.raises(ConfigError):
        RateWatch(**bad)


def test_a_paused_decoder_runs_plain_steps_then_drafts_again_with_the_same_tokens():
    """The decode loop obeys the watch: a pause's steps are plain (pipelined), timed, and the
    output is plain decoding's."""
    model = tiny_model("llama")
    prompt = torch.tensor([[5, 6, 7, 8] * 6])
    plain = SwiftDecoder(model, stop_token_ids=[]).generate(prompt, 40, method="ar").tokens
    dec = SwiftDecoder(model, stop_token_ids=[])
    watch = dec._allocator("ngram").watch
    _slow_window(watch)
    pause = watch.plain_steps()
    res = dec.generate(prompt, 40, method="ngram")
    assert res.tokens == plain
    assert res.stats["drafted_per_step"][:pause] == [0] * pause
    assert watch.plain_seconds is not None and watch.plain_seconds > 0
    assert any(res.stats["drafted_per_step"][pause:]), "drafting never resumed after the pause"


def test_a_decoder_asks_drafters_for_what_its_allocator_keeps_and_stays_lossless():
    """A drafter is asked for its whole share until a window of steps is seen, then for twice the
    most nodes a step of the window verified of it (at least the minimum); the output stays plain
    decoding's."""
    model = tiny_model("llama")
    prompt = torch.tensor([[5, 6, 7, 8, 9] * 8])
    plain = SwiftDecoder(model, stop_token_ids=[]).generate(prompt, 80, method="ar").tokens
    dec = SwiftDecoder(model, stop_token_ids=[])
    config = HybridConfig(offer_window=4, min_offer=2)
    alloc = dec._allocators["recycle"] = NodeAllocator(["recycle"], config)
    alloc.watch.drafted = lambda *args, **kwargs: None  # the tiny model's timings must not pause it
    recycle = dec._builtin["recycle"]
    asked, inner = [], recycle.propose

    def propose(ctx):
        asked.append(ctx.max_nodes)
        return inner(ctx)

    recycle.propose = propose
    res = dec.generate(prompt, 80, method="recycle")
    assert res.tokens == plain
    kept = res.stats["drafted_per_step"]  # one source: the nodes each step verified of it
    assert len(asked) == len(kept) > config.offer_window + 4
    share, window = asked[0], config.offer_window
    assert asked[:window] == [share] * window
    for i in range(window, len(asked)):
        assert asked[i] == min(share, max(config.min_offer, 2 * max(kept[i - window : i]))), i
    assert min(asked[window:]) < share, "the offer never shrank"


def test_layout_choice_runs_the_template_alone_only_while_it_commits_more_per_second():
    wide, narrow = LayoutChoice.WIDE, LayoutChoice.NARROW
    c = LayoutChoice(probe=4, min_wide=2)
    c.wide(tokens=3, narrow_tokens=3, seconds=1.0)
    assert c.pick() == wide, "too few wide steps to judge"
    c.wide(tokens=3, narrow_tokens=3, seconds=1.0)  # the chains brought nothing
    assert [c.pick(), c.pick()] == [narrow, wide], "one narrow step to time it, then wide until it is read"
    c.narrow(seconds=1.5)  # slower than a wide step: as many tokens, more seconds
    assert c.pick() == wide
    for _ in range(10):
        c.narrow(seconds=0.5)
    assert [c.pick() for _ in range(8)] == [narrow, narrow, narrow, wide] * 2, "every 4th step probes"
    for _ in range(10):  # the chains pay again: 6 tokens a step against 2
        c.wide(tokens=6, narrow_tokens=2, seconds=1.0)
    assert c.pick() == wide
    for bad in ({"probe": 1}, {"min_wide": 0}, {"decay": 1.0}):
        with pytest.raises(ConfigError):
            LayoutChoice(**bad)
