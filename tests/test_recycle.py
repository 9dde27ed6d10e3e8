"""Token recycling alone: the successor table, its expansion through the template, its lifetime."""

from __future__ import annotations

import doctest
import random

import numpy as np
import pytest
import torch

import skipspec.drafting.recycle
from skipspec.config import SamplingParams
from skipspec.drafting.base import DraftContext, StepResult
from skipspec.drafting.recycle import UNKNOWN, RecycleConfig, RecycleDrafter, expand, new_table
from skipspec.errors import ConfigError
from skipspec.tree.template import build_template


def test_docstring_examples():
    assert doctest.testmod(skipspec.drafting.recycle).failed == 0


def _ctx(tokens, prompt_len=None, max_nodes=80, max_depth=16, vocab_size=50):
    prompt_len = len(tokens) if prompt_len is None else prompt_len
    return DraftContext(list(tokens), prompt_len, max_nodes, max_depth, vocab_size, SamplingParams())


def _random_table(rng, vocab, k, known=0.7):
    table = new_table(vocab, k)
    for token in range(vocab):
        if rng.random() < known:
            width = rng.randint(1, k)
            table[token, :width] = rng.sample(range(vocab), width)
    return table


def _depths(parents):
    depths = []
    for p in parents:
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


@pytest.mark.parametrize("seed", range(30))
def test_recycle_table_expands_through_template(seed):
    rng = random.Random(seed)
    vocab, k = rng.randint(3, 30), rng.randint(1, 4)
    table = _random_table(rng, vocab, k)
    template = build_template(rng.randint(1, 40), max_depth=rng.randint(1, 6), max_children=k)
    root = rng.randrange(vocab)
    tree = expand(table, root, template, max_nodes=1000)

    # Reference: every template node whose successors are all known, in template order.
    expected, where = [], {}
    for i, (parent, rank) in enumerate(zip(template.parents, template.ranks)):
        if parent >= 0 and parent not in where:
            continue
        head = root if parent < 0 else expected[where[parent]][0]
        token = int(table[head, rank])
        if token != UNKNOWN:
            where[i] = len(expected)
            expected.append((token, -1 if parent < 0 else where[parent]))
    assert list(zip(tree.tokens, tree.parents)) == expected


@pytest.mark.parametrize("seed", range(30))
def test_drafted_trees_are_valid(seed):
    rng = random.Random(seed)
    vocab = rng.randint(3, 40)
    drafter = RecycleDrafter(RecycleConfig(k=4, template_size=rng.choice((4, 8, 40, 80))))
    drafter.table = _random_table(rng, vocab, 4, known=0.9)
    tokens = [rng.randrange(vocab) for _ in range(rng.randint(1, 20))]
    max_nodes, max_depth = rng.randint(0, 90), rng.randint(0, 10)
    tree = drafter.propose(_ctx(tokens, max_nodes=max_nodes, max_depth=max_depth, vocab_size=vocab))
    if tree is None:
        return
    assert 0 < len(tree) <= min(max_nodes, drafter.config.template_size)
    assert all(-1 <= p < i for i, p in enumerate(tree.parents))
    assert all(0 <= t < vocab for t in tree.tokens)
    assert max(_depths(tree.parents)) <= max_depth


def test_a_small_budget_takes_the_templates_best_prefix():
    rng = random.Random(3)
    drafter = RecycleDrafter(RecycleConfig(k=3, template_size=40, seed_from_prompt=False))
    table = new_table(30, 3)
    for token in range(30):
        table[token] = rng.sample(range(30), 3)  # every successor known
    drafter.table = table
    template = build_template(40, drafter.config.rank_probs, max_depth=16, max_children=3)
    for n in (4, 8, 40):
        tree = drafter.propose(_ctx([1, 2], max_nodes=n, vocab_size=30))
        assert tree.parents == list(template.parents[:n])


def test_unknown_successors_leave_room_for_later_template_nodes():
    table = new_table(10, 2)
    table[1] = [2, 3]
    table[3] = [4, 5]  # 2 has no successors: the template's nodes under 2 are dropped
    template = build_template(12, (0.6, 0.3))
    assert template.parents[:4] == (-1, 0, -1, 1)  # the best 4 nodes: 3 of them under 2
    full = expand(table, 1, template, 8)
    assert full.tokens == [2, 3, 4, 5]
    assert full.parents == [-1, -1, 1, 1]
    assert expand(table, 1, template, 3).tokens == [2, 3, 4]
    assert len(expand(table, 99, template, 8)) == 0  # a root outside the table drafts nothing


def test_observe_records_the_models_topk_at_every_verified_node():
    drafter = RecycleDrafter(RecycleConfig(k=3, seed_from_prompt=False))
    ctx = _ctx([4, 1], vocab_size=20)
    verified = torch.tensor([1, 5, 7, -1])  # a padded row at the end
    topk = torch.tensor([[5, 6, 7, 8], [2, 3, 25, 9], [1, 1, 1, 1], [3, 3, 3, 3]])
    drafter.observe(ctx, StepResult([5, 2], None, topk, verified, ()))
    assert drafter.table[1].tolist() == [5, 6, 7]
    assert drafter.table[5].tolist() == [2, 3, UNKNOWN]  # 25 is outside the vocabulary
    assert drafter.table[7].tolist() == [1, 1, 1]
    assert (drafter.table[[0, 2, 3, 4]] == UNKNOWN).all()
    # A narrower top-k replaces the whole row.
    drafter.observe(ctx, StepResult([9], None, torch.tensor([[9, 8]]), torch.tensor([1]), ()))
    assert drafter.table[1].tolist() == [9, 8, UNKNOWN]
    # Plain steps without logits teach nothing.
    drafter.observe(ctx, StepResult([3], None, None, None, ()))
    assert drafter.table[1].tolist() == [9, 8, UNKNOWN]


def test_the_table_outlives_requests_and_the_prompt_only_seeds_unknown_rows():
    drafter = RecycleDrafter(RecycleConfig(k=2))
    first = _ctx([3, 4, 3], prompt_len=3, vocab_size=10)
    assert drafter.propose(first).tokens[:2] == [4, 3]  # seeded: 3 -> 4 -> 3
    assert drafter.table[3].tolist() == [4, UNKNOWN]
    drafter.observe(first, StepResult([6], None, torch.tensor([[6, 7]]), torch.tensor([3]), ()))
    # A new request whose prompt says 3 -> 9: the model's row for 3 stays; 9 is seeded 9 -> 3.
    second = _ctx([9, 3, 9], prompt_len=3, vocab_size=10)
    tree = drafter.propose(second)
    assert drafter.table[3].tolist() == [6, 7]
    assert drafter.table[9].tolist() == [3, UNKNOWN]
    assert tree.tokens[0] == 3 and tree.tokens[1] == 6


def test_rows_since_names_what_a_copy_of_an_earlier_tag_must_update(monkeypatch):
    """A copy of the table (the device's, for drafting steps) made under some tag is brought up to
    date by the rows written since: a new request's seeding and every step learnt. Another table,
    or more changes than the log keeps, mean copying it whole (None)."""
    drafter = RecycleDrafter(RecycleConfig(k=2))
    first = _ctx([3, 4, 3], prompt_len=3, vocab_size=10)
    drafter.propose(first)
    copied = drafter.tag
    assert drafter.rows_since(copied).tolist() == []
    drafter.observe(first, StepResult([6], None, torch.tensor([[6, 7], [1, 2]]), torch.tensor([3, 8]), ()))
    drafter.propose(_ctx([9, 3, 5], prompt_len=3, vocab_size=10))  # a new request: seeds 9 and 5's rows
    rows = drafter.rows_since(copied)
    assert rows.tolist() == [3, 8, 9]  # 3 -> 5 is not seeded: the model's row for 3 stays
    copy = np.full_like(drafter.table, UNKNOWN)
    copy[[3, 4]] = [[4, UNKNOWN], [3, UNKNOWN]]  # the table as it was under `copied`
    copy[rows] = drafter.table[rows]
    assert (copy == drafter.table).all()
    assert drafter.rows_since(None) is None
    assert drafter.rows_since((id(drafter.table) + 1, copied[1])) is None
    assert drafter.rows_since((copied[0], drafter.version + 1)) is None
    monkeypatch.setattr(skipspec.drafting.recycle, "CHANGE_LOG", 2)
    short = RecycleDrafter(RecycleConfig(k=2, seed_from_prompt=False))
    ctx = _ctx([1, 2], vocab_size=10)
    short.propose(ctx)
    tag = short.tag
    for token in range(3):
        short.observe(ctx, StepResult([token], None, torch.tensor([[token, 1]]), torch.tensor([token]), ()))
    assert short.rows_since(tag) is None  # 3 changes since, 2 remembered


def test_seeding_is_once_per_request():
    drafter = RecycleDrafter(RecycleConfig(k=2))
    ctx = _ctx([3, 4], prompt_len=2, vocab_size=10)
    drafter.propose(ctx)
    drafter.table[3] = UNKNOWN  # forget; the same request continuing does not seed again
    drafter.propose(_ctx([3, 4, 5], prompt_len=2, vocab_size=10))
    assert drafter.table[3].tolist() == [UNKNOWN, UNKNOWN]


def test_a_new_vocabulary_gets_a_new_table():
    drafter = RecycleDrafter(RecycleConfig(seed_from_prompt=False))
    drafter.propose(_ctx([1, 2], vocab_size=10))
    assert drafter.table.shape == (10, 8)
    drafter.propose(_ctx([1, 2], vocab_size=12))
    assert drafter.table.shape == (12, 8)
    assert drafter.table.dtype == np.int32


def test_templates_are_built_once_per_depth():
    drafter = RecycleDrafter()
    drafter.propose(_ctx([1, 2], max_depth=5))
    template = drafter._templates[5]
    drafter.propose(_ctx([1, 2, 3], max_depth=5))
    assert drafter._templates[5] is template
    drafter.propose(_ctx([1, 2, 3, 4], max_depth=4))
    assert sorted(drafter._templates) == [4, 5]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(k=0),
        dict(template_size=0),
        dict(max_depth=0),
        dict(rank_probs=(0.2, 0.4)),
        dict(rank_probs=(0.9, 0.5)),
        dict(seed_from_prompt=1),
        dict(k=True),
    ],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ConfigError):
        RecycleConfig(**kwargs)
