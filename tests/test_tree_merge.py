"""Merging drafters' trees alone: shared prefixes, the budget, origins, paths mapped back."""

from __future__ import annotations

import doctest
import random

import pytest
import torch

import skipspec.tree.merge
from skipspec.drafting.base import DraftTree
from skipspec.errors import DrafterError
from skipspec.tree.merge import merge_trees, split_path


def test_docstring_examples():
    assert doctest.testmod(skipspec.tree.merge).failed == 0


def _random_tree(rng, n, vocab):
    tokens, parents = [], []
    for i in range(n):
        parents.append(rng.randint(-1, i - 1))
        tokens.append(rng.randrange(vocab))
    return DraftTree(tokens, parents)


def _paths(tokens, parents):
    paths = []
    for t, p in zip(tokens, parents):
        paths.append((paths[p] if p >= 0 else ()) + (t,))
    return paths


def _sources(rng, count=3, vocab=3):
    return [(f"s{s}", _random_tree(rng, rng.randint(0, 12), vocab)) for s in range(count)]


@pytest.mark.parametrize("seed", range(40))
def test_merge_keeps_every_path_of_every_source(seed):
    rng = random.Random(seed)
    sources = _sources(rng)
    m = merge_trees(sources, max_nodes=1000, interleave=bool(seed % 2))
    merged = _paths(m.tokens, m.parents)
    for s, (_, tree) in enumerate(sources):
        assert m.sizes[s] == len(tree)
        for i, path in enumerate(_paths(tree.tokens, tree.parents)):
            node = merged.index(path)
            assert (s, i) in m.origins[node]
    # ... and every origin points at a source node with the merged node's path.
    for node, origins in enumerate(m.origins):
        assert origins
        for s, i in origins:
            tree = sources[s][1]
            assert _paths(tree.tokens, tree.parents)[i] == merged[node]


@pytest.mark.parametrize("seed", range(40))
def test_merge_dedups_identical_prefixes(seed):
    rng = random.Random(seed)
    sources = _sources(rng, vocab=2)
    m = merge_trees(sources, max_nodes=1000)
    merged = _paths(m.tokens, m.parents)
    distinct = {p for _, t in sources for p in _paths(t.tokens, t.parents)}
    assert len(merged) == len(set(merged)) == len(distinct)


@pytest.mark.parametrize("seed", range(60))
def test_merge_respects_budget_and_parents_first(seed):
    rng = random.Random(seed)
    sources = _sources(rng, vocab=3)
    distinct = {p for _, t in sources for p in _paths(t.tokens, t.parents)}
    budget = rng.randint(0, 20)
    interleave = bool(seed % 2)
    m = merge_trees(sources, max_nodes=budget, interleave=interleave)
    assert len(m) == len(m.tokens) == len(m.parents) == min(budget, len(distinct))
    assert all(-1 <= p < i for i, p in enumerate(m.parents))
    merged = set(_paths(m.tokens, m.parents))
    for s, (_, tree) in enumerate(sources):
        paths = _paths(tree.tokens, tree.parents)
        kept = {i for o in m.origins for t, i in o if t == s}
        assert len(kept) == m.sizes[s]
        # A kept node's parent is kept; a dropped node's path is not in the tree.
        assert all(tree.parents[i] < 0 or tree.parents[i] in kept for i in kept)
        assert all(paths[i] not in merged for i in range(len(tree)) if i not in kept)
    # Priority: in order, the first source's nodes all fit before any other's.
    if not interleave and len(sources[0][1]) <= budget:
        assert m.sizes[0] == len(sources[0][1])


def test_budget_goes_to_sources_in_the_order_given_or_in_turn():
    a = DraftTree([1, 2, 3], [-1, 0, 1])
    b = DraftTree([4, 5], [-1, 0])
    first = merge_trees([("a", a), ("b", b)], 4)
    assert first.tokens == [1, 2, 3, 4] and first.sizes == (3, 1)
    turns = merge_trees([("a", a), ("b", b)], 4, interleave=True)
    assert turns.tokens == [1, 4, 2, 5] and turns.parents == [-1, -1, 0, 1] and turns.sizes == (2, 2)
    # A node that merges into a kept one costs nothing: b's 1 -> 2 still counts when full.
    c = DraftTree([1, 2, 9], [-1, 0, 0])
    full = merge_trees([("a", a), ("c", c)], 3)
    assert full.tokens == [1, 2, 3] and full.sizes == (3, 2)
    assert full.origins == (((0, 0), (1, 0)), ((0, 1), (1, 1)), ((0, 2),))


@pytest.mark.parametrize("seed", range(40))
def test_split_path_gives_each_source_its_deepest_path_on_the_accepted_one(seed):
    rng = random.Random(seed)
    sources = _sources(rng, vocab=2)
    m = merge_trees(sources, max_nodes=rng.randint(1, 30))
    if not len(m):
        return
    # An accepted path: a random merged node and its ancestors.
    node, path = rng.randrange(len(m)), []
    while node >= 0:
        path.append(node)
        node = m.parents[node]
    path.reverse()
    merged_tokens = _paths(m.tokens, m.parents)[path[-1]]
    for s, own in enumerate(split_path(m, path)):
        tree = sources[s][1]
        # A path in the source's own tree (each node the previous one's child) ...
        assert all(tree.parents[i] == (own[d - 1] if d else -1) for d, i in enumerate(own))
        # ... spelling the accepted tokens ...
        assert tuple(tree.tokens[i] for i in own) == merged_tokens[: len(own)]
        # ... as deep as the deepest accepted node the source proposed.
        deepest = max((d + 1 for d, n in enumerate(path) if any(t == s for t, _ in m.origins[n])), default=0)
        assert len(own) == deepest


def test_duplicate_siblings_of_one_source_merge_and_map_back_validly():
    # root -> 5 (node 0) and root -> 5 (node 1); only node 1 has a child.
    tree = DraftTree([5, 5, 6], [-1, -1, 1])
    m = merge_trees([("x", tree)], 8)
    assert m.tokens == [5, 6] and m.origins == (((0, 0), (0, 1)), ((0, 2),))
    assert split_path(m, [0]) == ((0,),)
    assert split_path(m, [0, 1]) == ((1, 2),)


class _DeviceTensor(torch.Tensor):
    """A CPU tensor that stands for a device one: reading it on the host fails the test."""

    _READS = {
        torch.Tensor.tolist,
        torch.Tensor.item,
        torch.Tensor.numpy,
        torch.Tensor.cpu,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__index__,
        torch.Tensor.__float__,
        torch.Tensor.__iter__,
    }

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls._READS:
            raise AssertionError(f"host read of a device tensor: {func.__name__}")
        return super().__torch_function__(func, types, args, kwargs or {})


def _device(values):
    return torch.tensor(values).as_subclass(_DeviceTensor)


def _read(t):
    return t.as_subclass(torch.Tensor).tolist()


@pytest.fixture
def device_tensors(monkeypatch):
    # The stand-ins live on the CPU: count them as device tensors.
    monkeypatch.setattr(skipspec.tree.merge, "_on_host", lambda v: not isinstance(v, _DeviceTensor))


def test_device_trees_are_appended_unmerged_without_reading_them(device_tensors):
    host = DraftTree([1, 2], [-1, 0])
    dev = DraftTree(_device([7, 8, 9, 6]), _device([-1, 0, 0, 1]))
    m = merge_trees([("ngram", host), ("b", host), ("skip", dev)], 5)
    # Host nodes first (merged), then the device source's first 3 nodes (budget 5).
    assert _read(m.tokens) == [1, 2, 7, 8, 9]
    assert _read(m.parents) == [-1, 0, -1, 2, 2]
    assert m.origins == (((0, 0), (1, 0)), ((0, 1), (1, 1)), ((2, 0),), ((2, 1),), ((2, 2),))
    assert m.sizes == (2, 2, 3)
    assert split_path(m, [2, 4]) == ((), (), (0, 2))
    # Given first, the device source has the budget first; its nodes still go after the host's.
    m = merge_trees([("skip", dev), ("ngram", host)], 5)
    assert _read(m.tokens) == [1, 7, 8, 9, 6] and _read(m.parents) == [-1, -1, 1, 1, 2]
    assert m.origins == (((1, 0),), ((0, 0),), ((0, 1),), ((0, 2),), ((0, 3),))
    assert m.sizes == (4, 1)


def test_device_tokens_with_host_parents_keep_host_parents(device_tensors):
    dev_tokens = DraftTree(_device([4, 5]), [-1, 0])
    m = merge_trees([("h", DraftTree([1], [-1])), ("p", dev_tokens)], 10)
    assert _read(m.tokens) == [1, 4, 5] and m.parents == [-1, -1, 1]
    assert split_path(m, [1, 2]) == ((), (0, 1))
    m = merge_trees([("d", DraftTree(_device([7]), _device([-1]))), ("p", dev_tokens)], 10)
    assert _read(m.tokens) == [7, 4, 5] and _read(m.parents) == [-1, -1, 1]


def test_absent_and_empty_trees_take_no_room():
    m = merge_trees([("a", None), ("b", DraftTree([], [])), ("c", DraftTree([3], [-1]))], 4)
    assert m.tokens == [3] and m.origins == (((2, 0),),) and m.sizes == (0, 0, 1)
    assert split_path(m, [0]) == ((), (), (0,))


@pytest.mark.parametrize("tree", [DraftTree([1, 2], [-1, 1]), DraftTree([1, 2], [-1, -2]), DraftTree([1, 2], [-1])])
def test_malformed_host_trees_are_refused_with_the_drafters_name(tree):
    with pytest.raises(DrafterError, match="'bad'"):
        merge_trees([("good", DraftTree([1], [-1])), ("bad", tree)], 8)
