"""Fixed tree templates alone: optimal under the rank model, prefixes of each other, bounded."""

from __future__ import annotations

import doctest
import itertools
import math
import random
from functools import cache

import pytest

import skipspec.tree.template
from skipspec.errors import ConfigError
from skipspec.tree.template import build_template


def test_docstring_examples():
    assert doctest.testmod(skipspec.tree.template).failed == 0


def _full_tree(depth, width):
    """(parent, rank) of every node of the complete tree, parents first."""
    nodes, frontier = [], [-1]
    for _ in range(depth):
        nxt = []
        for parent in frontier:
            for rank in range(width):
                nodes.append((parent, rank))
                nxt.append(len(nodes) - 1)
        frontier = nxt
    return nodes


def _value(nodes, chosen, probs):
    values = {}
    for i in sorted(chosen):
        parent, rank = nodes[i]
        values[i] = probs[rank] * (1.0 if parent < 0 else values[parent])
    return sum(values.values())


def _best_by_enumeration(size, probs, depth, width):
    """Every parent-closed subset of the complete tree with `size` nodes (tiny trees only)."""
    nodes = _full_tree(depth, width)
    best = 0.0
    for chosen in itertools.combinations(range(len(nodes)), min(size, len(nodes))):
        picked = set(chosen)
        if all(nodes[i][0] < 0 or nodes[i][0] in picked for i in chosen):
            best = max(best, _value(nodes, chosen, probs))
    return best


def _best_by_knapsack(size, probs, depth, width):
    """Exact: split each budget among the ranks' subtrees (a tree knapsack)."""

    @cache
    def forest(height, budget, rank=0):
        # Best value of the children of rank >= `rank` of a node of value 1, `height` levels left.
        if budget == 0 or height == 0 or rank >= width:
            return 0.0
        best = forest(height, budget, rank + 1)  # no child of this rank
        for own in range(1, budget + 1):
            subtree = probs[rank] * (1.0 + forest(height - 1, own - 1))
            best = max(best, subtree + forest(height, budget - own, rank + 1))
        return best

    return forest(depth, size)


def _probs(rng):
    raw = sorted((rng.random() for _ in range(rng.randint(1, 4))), reverse=True)
    scale = rng.uniform(0.3, 1.0) / sum(raw)
    return tuple(p * scale for p in raw)


@pytest.mark.parametrize("seed", range(12))
def test_template_is_optimal_for_small_cases(seed):
    rng = random.Random(seed)
    probs = _probs(rng)
    depth, width = rng.randint(1, 3), min(len(probs), rng.randint(1, 2))
    for size in range(0, 8):
        t = build_template(size, probs, max_depth=depth, max_children=width)
        assert t.expected_accepted == pytest.approx(_best_by_enumeration(size, probs, depth, width), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_template_is_optimal_against_a_tree_knapsack(seed):
    rng = random.Random(100 + seed)
    probs = _probs(rng)
    depth, width = rng.randint(1, 6), rng.randint(1, len(probs))
    size = rng.randint(0, 30)
    t = build_template(size, probs, max_depth=depth, max_children=width)
    assert t.expected_accepted == pytest.approx(_best_by_knapsack(size, probs, depth, width), abs=1e-12)


@pytest.mark.parametrize("size", [4, 8, 40, 80])
def test_templates_are_valid_and_bounded(size):
    t = build_template(size, max_depth=6, max_children=3)
    assert len(t) == size
    assert all(-1 <= p < i for i, p in enumerate(t.parents))
    assert all(d == (1 if p < 0 else t.depths[p] + 1) for p, d in zip(t.parents, t.depths))
    assert max(t.depths) <= 6 and max(t.ranks) <= 2
    assert len({(p, r) for p, r in zip(t.parents, t.ranks)}) == size  # no slot twice
    assert all(a >= b for a, b in zip(t.values, t.values[1:]))


def test_a_smaller_template_is_the_larger_ones_prefix():
    big = build_template(80)
    for size in (1, 4, 8, 40):
        small = build_template(size)
        assert small.parents == big.parents[:size] and small.ranks == big.ranks[:size]


def test_a_template_cannot_outgrow_its_bounds():
    assert len(build_template(100, (0.5, 0.2), max_depth=2, max_children=2)) == 6
    assert len(build_template(5, max_depth=0)) == 0
    assert math.isclose(build_template(3, (0.5,)).expected_accepted, 0.5 + 0.25 + 0.125)


@pytest.mark.parametrize(
    "args",
    [
        dict(size=-1),
        dict(size=3, rank_probs=()),
        dict(size=3, rank_probs=(0.3, 0.5)),
        dict(size=3, rank_probs=(0.7, 0.6)),
        dict(size=3, rank_probs=(0.0,)),
        dict(size=3, max_depth=-1),
        dict(size=3, max_children=0),
        dict(size=3, rank_probs="ab"),
    ],
)
def test_bad_template_arguments_are_refused(args):
    with pytest.raises(ConfigError):
        build_template(**args)
