"""Pure pieces alone: tree layout, ancestor mask, acceptance, logits processing."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from skipspec.config import SamplingParams
from skipspec.tree import build_tree, width_for
from skipspec.verify import accept_longest_path, process_logits


def test_tree_is_chain_plus_leaf_siblings():
    t = build_tree((3, 1, 2))
    assert t.size == 7
    assert t.parents == (-1, 0, 0, 0, 1, 4, 4)
    assert t.depths == (0, 1, 1, 1, 2, 3, 3)
    assert t.ranks == (0, 0, 1, 2, 0, 0, 1)
    assert t.candidate_index(topk=5).tolist() == [0, 1, 2, 5, 10, 11]


@pytest.mark.parametrize("seed", range(20))
def test_ancestor_mask_matches_parent_links(seed):
    rng = random.Random(seed)
    t = build_tree(tuple(rng.randint(1, 6) for _ in range(rng.randint(0, 8))))
    expected = torch.zeros(t.size, t.size, dtype=torch.bool)
    for i in range(t.size):
        j = i
        while j >= 0:
            expected[i, j] = True
            j = t.parents[j]
    assert torch.equal(t.ancestors(), expected)


def test_width_follows_confidence_schedule():
    schedule = ((0.95, 3), (0.8, 5), (0.5, 8))
    assert [width_for(p, schedule, 10) for p in (0.99, 0.9, 0.6, 0.5, 0.1)] == [3, 5, 8, 10, 10]


def _accept(widths, tokens, targets):
    t = build_tree(widths)
    r = accept_longest_path(
        torch.tensor(tokens), torch.tensor(t.parents), torch.tensor(t.depths), t.ancestors(), torch.tensor(targets)
    )
    packed = r.packed.tolist()
    n = t.size
    length = packed[0]
    return packed[2 : 2 + length], packed[1], packed[2 + n : 2 + n + length]


def test_acceptance_walks_the_chain_and_takes_the_bonus():
    # root=9; depth1: 1 (chain), 2; depth2: 3 (chain), 4; root->1, 1->3, 3->8
    path, bonus, toks = _accept((2, 2), [9, 1, 2, 3, 4], [1, 3, 0, 8, 0])
    assert path == [0, 1, 3] and bonus == 8 and toks == [9, 1, 3]


def test_acceptance_ends_in_a_sibling_leaf():
    # root->2 picks the sibling at depth 1; its own target is the bonus; the chain below 1 is dropped
    path, bonus, toks = _accept((2, 2), [9, 1, 2, 3, 4], [2, 3, 7, 8, 0])
    assert path == [0, 2] and bonus == 7 and toks == [9, 2]


def test_acceptance_rejects_everything():
    path, bonus, toks = _accept((2, 2), [9, 1, 2, 3, 4], [5, 3, 7, 8, 0])
    assert path == [0] and bonus == 5


def test_root_only_tree_is_a_plain_step():
    path, bonus, _ = _accept((), [9], [4])
    assert path == [0] and bonus == 4


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.6, 5, 1.0), (1.3, 0, 0.7), (0.9, 20, 0.9)])
def test_logits_processing_matches_transformers_warpers(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    expected = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = process_logits(logits, SamplingParams(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p))
    torch.testing.assert_close(got.softmax(-1), expected.softmax(-1))


def test_greedy_leaves_logits_alone():
    logits = torch.randn(2, 10)
    assert process_logits(logits, SamplingParams()) is logits
