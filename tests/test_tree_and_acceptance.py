"""Pure pieces alone: tree layout, ancestor mask, acceptance, logits processing."""

from __future__ import annotations

import doctest
import math
import random

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import skipspec.verify.logits
import skipspec.verify.sampling
from skipspec.config import SamplingParams
from skipspec.tree import TreeLayout, build_tree, doublings, tree_ancestors, width_for
from skipspec.verify import (
    SamplingInputs,
    SamplingProgram,
    accept_longest_path,
    inverse_cdf,
    keyed_uniform,
    process_logits,
    sampling_program,
)


def random_parents(rng: random.Random, n: int) -> list[int]:
    """A random tree of `n` nodes, root first: every node's parent is an earlier node, so any shape
    (deep chains, wide fans, branches under any node) turns up."""
    style = rng.choice(["any", "deep", "wide"])
    parents = [-1]
    for i in range(1, n):
        if style == "deep":
            parents.append(max(0, i - rng.randint(1, 2)))
        elif style == "wide":
            parents.append(rng.randint(0, min(i - 1, 2)))
        else:
            parents.append(rng.randrange(i))
    return parents


def reference_path(parents: list[int], tokens: list[int], targets: list[int]) -> list[int]:
    """Every walk from the root through children whose token is the parent's target; the longest,
    the one ending at the first node of its depth."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents[1:], start=1):
        children.setdefault(p, []).append(i)
    walks, best = [[0]], [0]
    while walks:
        walk = walks.pop()
        if (len(walk), -walk[-1]) > (len(best), -best[-1]):
            best = walk
        walks += [walk + [c] for c in children.get(walk[-1], []) if tokens[c] == targets[walk[-1]]]
    return best


def test_swift_tree_is_chain_plus_leaf_siblings():
    t = build_tree((3, 1, 2))
    assert t.layout.size == 7
    assert t.layout.parents == (-1, 0, 0, 0, 1, 4, 4)
    assert t.layout.depths == (0, 1, 1, 1, 2, 3, 3)
    assert t.ranks == (0, 0, 1, 2, 0, 0, 1)
    assert t.candidate_index(topk=5).tolist() == [0, 1, 2, 5, 10, 11]


@pytest.mark.parametrize("seed", range(30))
def test_ancestor_mask_matches_parent_links_for_any_shape(seed):
    rng = random.Random(seed)
    t = TreeLayout(tuple(random_parents(rng, rng.randint(1, 40))))
    expected = torch.zeros(t.size, t.size, dtype=torch.bool)
    for i in range(t.size):
        j = i
        while j >= 0:
            expected[i, j] = True
            j = t.parents[j]
    assert torch.equal(t.ancestors(), expected)
    assert torch.equal(tree_ancestors(torch.tensor(t.parents), doublings(t.size)), expected)
    # More doubling rounds than needed change nothing (a compiled step uses the largest bucket's count).
    assert torch.equal(tree_ancestors(torch.tensor(t.parents), 8), expected)
    assert t.depths == tuple(int(d) for d in expected.sum(dim=1) - 1)


def test_a_layout_refuses_a_parent_that_is_not_an_earlier_node():
    with pytest.raises(ValueError, match="earlier node"):
        TreeLayout((-1, 0, 2))
    with pytest.raises(ValueError, match="root"):
        TreeLayout((0, 0))


def test_width_follows_confidence_schedule():
    schedule = ((0.95, 3), (0.8, 5), (0.5, 8))
    assert [width_for(p, schedule, 10) for p in (0.99, 0.9, 0.6, 0.5, 0.1)] == [3, 5, 8, 10, 10]


def _accept(parents, tokens, targets):
    t = TreeLayout(tuple(parents))
    r = accept_longest_path(
        torch.tensor(tokens), torch.tensor(t.parents), torch.tensor(t.depths), t.ancestors(), torch.tensor(targets)
    )
    packed = r.packed.tolist()
    n = t.size
    length = packed[0]
    return packed[2 : 2 + length], packed[1], packed[2 + n : 2 + n + length]


def test_acceptance_walks_the_chain_and_takes_the_bonus():
    # root=9; depth1: 1 (chain), 2; depth2: 3 (chain), 4; root->1, 1->3, 3->8
    path, bonus, toks = _accept(build_tree((2, 2)).layout.parents, [9, 1, 2, 3, 4], [1, 3, 0, 8, 0])
    assert path == [0, 1, 3] and bonus == 8 and toks == [9, 1, 3]


def test_acceptance_ends_in_a_sibling_leaf():
    # root->2 picks the sibling at depth 1; its own target is the bonus; the chain below 1 is dropped
    path, bonus, toks = _accept(build_tree((2, 2)).layout.parents, [9, 1, 2, 3, 4], [2, 3, 7, 8, 0])
    assert path == [0, 2] and bonus == 7 and toks == [9, 2]


def test_acceptance_rejects_everything():
    path, bonus, toks = _accept(build_tree((2, 2)).layout.parents, [9, 1, 2, 3, 4], [5, 3, 7, 8, 0])
    assert path == [0] and bonus == 5


def test_root_only_tree_is_a_plain_step():
    path, bonus, _ = _accept([-1], [9], [4])
    assert path == [0] and bonus == 4


def test_acceptance_follows_a_branch_under_a_non_chain_node():
    # root -> a(1) -> b(2); root -> c(3) -> d(4) -> e(5): the second branch is right and deeper.
    path, bonus, toks = _accept([-1, 0, 1, 0, 3, 4], [0, 1, 2, 3, 4, 5], [3, 9, 9, 4, 5, 6])
    assert path == [0, 3, 4, 5] and bonus == 6 and toks == [0, 3, 4, 5]


def test_duplicate_siblings_are_each_followed_and_the_deepest_path_wins():
    # Two children of the root carry token 1 (two sources' trees, not merged); only the second
    # has the right grandchild. Real targets are the same under both copies (the same prefix).
    path, bonus, _ = _accept([-1, 0, 0, 2], [0, 1, 1, 7], [1, 7, 7, 8])
    assert path == [0, 2, 3] and bonus == 8
    # Equally deep through either copy: the first copy's path.
    path, bonus, _ = _accept([-1, 0, 0, 1, 2], [0, 1, 1, 7, 7], [1, 7, 7, 8, 8])
    assert path == [0, 1, 3] and bonus == 8


@pytest.mark.parametrize("seed", range(60))
def test_acceptance_equals_the_reference_walk_on_random_trees(seed):
    rng = random.Random(seed)
    parents = random_parents(rng, rng.randint(1, 30))
    vocab = rng.randint(2, 5)  # small: many matches and duplicate siblings
    tokens = [rng.randrange(vocab) for _ in parents]
    targets = [rng.randrange(vocab) for _ in parents]
    path, bonus, toks = _accept(parents, tokens, targets)
    want = reference_path(parents, tokens, targets)
    assert path == want and bonus == targets[want[-1]] and toks == [tokens[i] for i in want]


def test_keyed_uniforms_are_deterministic_distinct_and_uniform():
    positions = torch.arange(200_000)
    u = keyed_uniform(torch.tensor([1234]), positions)
    assert torch.equal(u, keyed_uniform(torch.tensor([1234]), positions))
    assert not torch.equal(u[:100], keyed_uniform(torch.tensor([1235]), positions[:100]))
    assert ((u >= 0) & (u < 1)).all()
    # Kolmogorov-Smirnov distance of 200k uniforms: about 0.003 for a good generator; 0.01 is p < 1e-15.
    ks = (torch.sort(u).values - (torch.arange(1, u.numel() + 1, dtype=torch.float64) / u.numel())).abs().max()
    assert ks < 0.01
    # Neighbouring positions are not correlated.
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.01
    # Negative and large seeds work (they are hashed, not used as offsets).
    for seed in (-1, 2**62 + 7):
        v = keyed_uniform(torch.tensor([seed]), positions[:1000])
        assert ((v >= 0) & (v < 1)).all()


def test_inverse_cdf_draws_by_the_probabilities_and_never_a_zero():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]]).expand(100_000, 4)
    u = keyed_uniform(torch.tensor([7]), torch.arange(100_000))
    draws = inverse_cdf(probs, u)
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert freq[1] == 0
    assert torch.allclose(freq, torch.tensor([0.2, 0.0, 0.5, 0.3], dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.6, 5, 1.0), (1.3, 0, 0.7), (0.9, 20, 0.9)])
def test_logits_processing_matches_transformers_warpers(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    expected = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = _process(logits, SamplingParams(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p))
    torch.testing.assert_close(got.softmax(-1), expected.softmax(-1))


def test_greedy_leaves_logits_alone():
    logits = torch.randn(2, 10)
    assert _process(logits, SamplingParams(temperature=0.5, top_k=3, top_p=0.5)) is logits


def _process(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    return process_logits(logits, sampling_program(params), SamplingInputs.of(params, logits.device))


def _reference_kept(row: list[float], top_k: int, top_p: float) -> tuple[set[int], bool]:
    """The tokens temperature-scaled logits `row` keep after top-k (ties with the k-th kept) and then
    top-p (the smallest prefix, most likely first and ties by id, whose mass reaches top_p), in
    float64; and whether top-p's cut lies too close to a mass boundary for float32 to agree."""
    order = sorted(range(len(row)), key=lambda i: (-row[i], i))
    kept = order
    if 0 < top_k < len(row):
        kth = row[order[top_k - 1]]
        kept = [i for i in order if row[i] >= kth]
    if top_p >= 1.0:
        return set(kept), False
    top = max(row[i] for i in kept)
    weights = [math.exp(row[i] - top) for i in kept]
    total, before, chosen, close = sum(weights), 0.0, [], False
    for i, w in zip(kept, weights):
        close |= abs(before / total - top_p) < 1e-5
        if before / total >= top_p:
            break
        chosen.append(i)
        before += w
    return set(chosen), close


def test_logits_processing_with_tensor_values_equals_the_plain_reference_including_ties():
    """Temperature, top-k and top-p read from device tensors, on rows with many ties (logits on a
    coarse grid, and rows all equal) and on continuous rows, for values from off to extreme."""
    vocab = 40
    gen = torch.Generator().manual_seed(0)
    logits = torch.cat(
        [
            torch.randint(-8, 8, (24, vocab), generator=gen) * 0.25,  # ties everywhere
            torch.randn(24, vocab, generator=gen) * 3,
            torch.zeros(2, vocab),  # one big tie
        ]
    )
    checked = ambiguous = 0
    for temperature in (0.3, 1.0, 1.7):
        for top_k in (0, 1, 3, 7, vocab, vocab + 5):
            for top_p in (0.05, 0.5, 0.83, 1.0):
                params = SamplingParams(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
                got = _process(logits, params)
                scaled = logits.double() / temperature
                for r in range(logits.shape[0]):
                    kept, close = _reference_kept(scaled[r].tolist(), top_k, top_p)
                    if close:
                        ambiguous += 1
                        continue
                    finite = torch.isfinite(got[r])
                    assert set(finite.nonzero().flatten().tolist()) == kept, (r, params)
                    assert (got[r][~finite] == float("-inf")).all()
                    torch.testing.assert_close(got[r][finite].double(), scaled[r][finite], rtol=1e-6, atol=0)
                    checked += 1
    assert ambiguous < checked // 20, (ambiguous, checked)


def test_a_filter_run_at_its_off_value_changes_nothing():
    """A step's program only decides which filters run; one that runs with top-k 0 or top-p 1 gives
    bit for bit what the program without it gives, so the program never changes a result."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.cat([torch.randn(16, 64, generator=gen) * 4, torch.randint(-3, 3, (16, 64), generator=gen) * 1.0])
    full = SamplingProgram(sample=True, filtered=True)
    for temperature, top_k, top_p in ((0.7, 0, 1.0), (1.3, 5, 1.0), (0.9, 0, 0.8), (1.1, 9, 0.6)):
        params = SamplingParams(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
        values = SamplingInputs.of(params, "cpu")
        want = process_logits(logits, sampling_program(params), values)
        assert torch.equal(process_logits(logits, full, values), want), params


@pytest.mark.parametrize("module", [skipspec.verify.logits, skipspec.verify.sampling], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0
