"""Prompt lookup alone: the incremental index, the continuation trie, the drafter's requests."""

from __future__ import annotations

import doctest
import random

import pytest

import skipspec.drafting.ngram
from skipspec.config import SamplingParams
from skipspec.drafting.base import DraftContext
from skipspec.drafting.ngram import (
    NgramConfig,
    NgramDrafter,
    NgramIndex,
    RequestMark,
    continuation_tree,
    scan_matches,
)
from skipspec.errors import ConfigError


def test_docstring_examples():
    assert doctest.testmod(skipspec.drafting.ngram).failed == 0


def _ctx(tokens, prompt_len=None, max_nodes=16, max_depth=8, vocab_size=50):
    prompt_len = len(tokens) if prompt_len is None else prompt_len
    return DraftContext(list(tokens), prompt_len, max_nodes, max_depth, vocab_size, SamplingParams())


def _depths(parents):
    depths = []
    for p in parents:
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


def _paths(tree):
    """Every node's token path from the root."""
    paths = []
    for t, p in zip(tree.tokens, tree.parents):
        paths.append((paths[p] if p >= 0 else ()) + (t,))
    return paths


@pytest.mark.parametrize("seed", range(30))
def test_ngram_index_finds_the_same_matches_as_a_full_scan(seed):
    rng = random.Random(seed)
    lo = rng.randint(1, 3)
    hi = rng.randint(lo, 5)
    vocab = rng.randint(2, 5)
    index = NgramIndex(lo, hi)
    tokens = []
    while len(tokens) < 150:
        chunk = [rng.randrange(vocab) for _ in range(rng.choice((1, 1, 2, 5, 40)))]
        tokens += chunk
        index.extend(chunk)
        assert index.tokens == tokens
        for max_matches in (1, 3, 50):
            assert index.matches(max_matches) == scan_matches(tokens, lo, hi, max_matches)


@pytest.mark.parametrize("seed", range(5))
def test_hash_collisions_cost_no_wrong_match(seed, monkeypatch):
    # With base 0 an n-gram's hash is its last token: nearly every chain mixes n-grams.
    monkeypatch.setattr(skipspec.drafting.ngram, "_BASE", 0)
    rng = random.Random(seed)
    index = NgramIndex(1, 4)
    tokens = []
    for size in (50, 1, 3, 40, 2):
        chunk = [rng.randrange(4) for _ in range(size)]
        tokens += chunk
        index.extend(chunk)
        assert index.matches(6) == scan_matches(tokens, 1, 4, 6)


def test_drafter_extends_its_index_with_only_the_new_tokens(monkeypatch):
    seen = []
    extend = NgramIndex.extend

    def spy(self, new):
        seen.append(len(new))
        extend(self, new)

    monkeypatch.setattr(NgramIndex, "extend", spy)
    rng = random.Random(0)
    tokens = [rng.randrange(20) for _ in range(4000)]
    drafter = NgramDrafter()
    drafter.propose(_ctx(tokens, prompt_len=4000))
    index = drafter._index
    for step in (1, 3, 2):
        tokens += [rng.randrange(20) for _ in range(step)]
        drafter.propose(_ctx(tokens, prompt_len=4000))
    assert seen == [4000, 1, 3, 2]
    assert drafter._index is index


def test_a_new_request_gets_a_new_index():
    drafter = NgramDrafter(NgramConfig(min_ngram=1))
    first = [1, 2, 3, 4, 1, 2, 3, 4, 1]
    assert drafter.propose(_ctx(first, prompt_len=5)).tokens[0] == 2
    # Shorter than what was seen: a new request, whose own text has no 1 -> 2.
    second = [6, 1, 7, 1]
    tree = drafter.propose(_ctx(second, prompt_len=4))
    assert tree.tokens == [7, 1]
    # Same length and prompt length, other tokens: new again.
    third = [6, 1, 8, 1]
    assert drafter.propose(_ctx(third, prompt_len=4)).tokens == [8, 1]
    assert drafter._index.tokens == third


def test_request_mark_tells_a_continuation_from_another_prompt():
    rng = random.Random(1)
    prompt = [rng.randrange(100) for _ in range(300)]
    mark = RequestMark.of(prompt + [5], 300)
    assert mark.continued_by(prompt + [5, 6, 7], 300)
    assert not mark.continued_by(prompt + [5, 6, 7], 299)
    assert not mark.continued_by(prompt, 300)
    assert not mark.continued_by(prompt + [9], 300)  # the last seen token changed
    other = list(prompt)
    other[0] += 1
    assert not mark.continued_by(other + [5, 6], 300)


@pytest.mark.parametrize("seed", range(30))
def test_drafted_trees_are_valid(seed):
    rng = random.Random(seed)
    vocab = rng.randint(2, 8)
    tokens = [rng.randrange(vocab) for _ in range(rng.randint(1, 120))]
    max_nodes, max_depth = rng.randint(0, 20), rng.randint(0, 12)
    cfg = NgramConfig(min_ngram=rng.randint(1, 2), max_ngram=rng.randint(2, 4), max_depth=rng.randint(1, 10))
    tree = NgramDrafter(cfg).propose(_ctx(tokens, rng.randint(1, len(tokens)), max_nodes, max_depth, vocab))
    if tree is None:
        return
    assert 0 < len(tree) <= max_nodes
    assert all(-1 <= p < i for i, p in enumerate(tree.parents))
    assert all(0 <= t < vocab for t in tree.tokens)
    assert max(_depths(tree.parents)) <= min(max_depth, cfg.max_depth)
    paths = _paths(tree)
    assert len(set(paths)) == len(paths)  # a trie: no sibling repeats a token


@pytest.mark.parametrize("seed", range(20))
def test_every_branch_continues_a_match_and_the_best_match_is_drafted_first(seed):
    rng = random.Random(seed)
    tokens = [rng.randrange(4) for _ in range(rng.randint(2, 100))]
    cfg = NgramConfig(min_ngram=1, max_ngram=3, max_depth=5, max_matches=4)
    tree = NgramDrafter(cfg).propose(_ctx(tokens, max_nodes=64, max_depth=8))
    matches = scan_matches(tokens, 1, 3, 4)
    if not matches:
        assert tree is None
        return
    continuations = [tuple(tokens[end + 1 : end + 6]) for _, end in matches]
    for path in _paths(tree):
        assert any(c[: len(path)] == path for c in continuations)
    assert set(continuations) <= set(_paths(tree))  # with room for all, every branch is whole
    # The first nodes, each the first child of the last, spell the best match's continuation.
    best = continuations[0]
    assert tuple(tree.tokens[: len(best)]) == best
    assert list(tree.parents[: len(best)]) == list(range(-1, len(best) - 1))


def test_recency_wins_over_one_older_agreement_but_not_over_two():
    # Match j weighs 1 / (j + 1), most recent first: after "1 2", the latest continuation 7 0
    # weighs 1, and two older 5 6 weigh 1/2 + 1/3 < 1, three 1/2 + 1/3 + 1/4 > 1.
    twice = [1, 2, 5, 6, 0, 1, 2, 5, 6, 0, 1, 2, 7, 0, 1, 2]
    ends = [end for _, end in scan_matches(twice, 2, 2, 8)]
    assert ends == [11, 6, 1]
    tree = continuation_tree(twice, ends, max_nodes=2, max_depth=2)
    assert tree.tokens == [7, 0] and tree.parents == [-1, 0]
    thrice = [1, 2, 5, 6, 0] + twice
    ends = [end for _, end in scan_matches(thrice, 2, 2, 8)]
    tree = continuation_tree(thrice, ends, max_nodes=2, max_depth=2)
    assert tree.tokens == [5, 6] and tree.parents == [-1, 0]
    tree = continuation_tree(thrice, ends, max_nodes=4, max_depth=2)
    assert tree.tokens == [5, 6, 7, 0] and tree.parents == [-1, 0, -1, 2]


def test_nothing_to_match_drafts_nothing():
    assert NgramDrafter().propose(_ctx([1, 2, 3, 4, 5])) is None
    assert NgramDrafter().propose(_ctx([1, 2, 1, 2], max_nodes=0)) is None
    assert NgramDrafter().propose(_ctx([1, 2, 1, 2], max_depth=0)) is None
    assert NgramDrafter().propose(_ctx([3])) is None


@pytest.mark.parametrize(
    "kwargs",
    [dict(min_ngram=0), dict(max_ngram=1, min_ngram=2), dict(max_depth=0), dict(max_matches=-1), dict(max_depth=2.5)],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ConfigError):
        NgramConfig(**kwargs)
