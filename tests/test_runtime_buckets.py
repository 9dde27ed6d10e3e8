"""The graph path's fixed shapes alone: buckets, the padded tree frame, the graph LRU, memory planning.

These are the pieces that make a verify step's shape independent of the tree and the context,
so they are checked against the eager path's own constructions on the CPU.
"""

from __future__ import annotations

import random

import pytest
import torch
from test_tree_and_acceptance import random_parents

from skipspec.errors import ConfigError
from skipspec.runtime import DeviceMemoryError, MemoryPlan, RuntimeConfig
from skipspec.runtime.buckets import bucket_for, pack_tree, packed_length, powers_of_two, round_up
from skipspec.runtime.graphs import GraphCache, StepGraph
from skipspec.runtime.memory import check_fits
from skipspec.runtime.steps import StepInputs, static_tree_frame
from skipspec.tree import TreeLayout, doublings, tree_frame
from skipspec.verify import accept_longest_path


def test_bucket_is_the_smallest_that_holds_the_size():
    buckets = powers_of_two(251)
    assert buckets == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 16, 17, 251)] == [1, 2, 4, 16, 32, 256]
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket_for(257, buckets)
    assert round_up(1, 256) == 256 and round_up(512, 256) == 512


def test_packed_tree_has_fixed_length_and_inert_padding():
    parents = [-1, 0, 0, 0, 1]
    packed = pack_tree(7, [0, 11, 12, 13, 14], parents, bucket=8)
    assert len(packed) == packed_length(8)
    assert packed[:2] == [7, 5]
    tokens, pads = packed[2:10], packed[10:18]
    assert tokens[5:] == [-1, -1, -1], "padding carries a token no target equals"
    assert pads[:5] == parents and set(pads[5:]) == {0}, "padding hangs under the root: no real node's ancestor"
    with pytest.raises(ValueError):
        pack_tree(0, [0] * 5, parents, bucket=4)


def _inputs(capacity: int, bucket: int, depth: int, topk: int) -> StepInputs:
    return StepInputs.allocate(capacity, depth, topk, bucket, 16, 4, "cpu")


def _stage(rng: random.Random, n: int, committed: int, vocab: int):
    """A random tree of `n` nodes staged in the step inputs of its bucket; (inputs, bucket, tokens, parents)."""
    parents = random_parents(rng, n)
    tokens = [0] + [rng.randrange(vocab) for _ in range(n - 1)]
    bucket = bucket_for(n, powers_of_two(64))
    inp = _inputs(round_up(committed + bucket + 1, 16), 64, 1, 4)
    inp.root.fill_(5)
    inp.tree[: packed_length(bucket)] = torch.tensor(pack_tree(committed, tokens, parents, bucket))
    return inp, bucket, [5] + tokens[1:], parents


@pytest.mark.parametrize("seed", range(25))
def test_padded_tree_frame_matches_the_eager_verify_frame(seed):
    """Rows and columns of real nodes equal the eager executor's frame (the tree at its own size,
    over the committed prefix only); padding is invisible to real nodes."""
    rng = random.Random(seed)
    n, committed, vocab = rng.randint(1, 40), rng.randint(0, 40), 97
    inp, bucket, tokens, parents = _stage(rng, n, committed, vocab)
    f = static_tree_frame(inp, bucket, vocab)
    e = tree_frame(
        committed, n, torch.tensor(tokens), torch.tensor(parents), torch.arange(committed + n), vocab, doublings(n)
    )

    layout = TreeLayout(tuple(parents))
    depths = torch.tensor(layout.depths)
    assert torch.equal(e.tokens, torch.tensor(tokens)) and torch.equal(f.tokens[:n], e.tokens)
    assert (f.tokens[n:] == -1).all()
    assert torch.equal(f.positions[:n], committed + depths) and torch.equal(e.positions, committed + depths)
    assert torch.equal(f.ancestors[:n, :n], layout.ancestors()) and torch.equal(e.ancestors, layout.ancestors())
    assert torch.equal(f.allowed[:n, : committed + n], e.allowed)
    assert not f.allowed[:n, committed + n :].any(), "real nodes must not see padding or stale slots"
    assert torch.equal(f.key_positions[: committed + n], e.key_positions)
    assert f.fault.tolist() == [-1, 2] and e.fault.tolist() == [-1, 2]


@pytest.mark.parametrize("seed", range(25))
def test_padding_never_changes_the_accepted_path(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    inp, bucket, tokens, parents = _stage(rng, n, 0, 4)
    layout = TreeLayout(tuple(parents))
    targets = torch.randint(0, 4, (n,))
    plain = accept_longest_path(
        torch.tensor(tokens), torch.tensor(parents), torch.tensor(layout.depths), layout.ancestors(), targets
    )
    f = static_tree_frame(inp, bucket, 4)
    padded_targets = torch.cat([targets, torch.randint(0, 4, (bucket - n,))])
    padded = accept_longest_path(f.tokens, f.parents, f.depths, f.ancestors, padded_targets)
    length = int(plain.packed[0])
    assert int(padded.packed[0]) == length
    assert int(padded.packed[1]) == int(plain.packed[1])
    assert torch.equal(padded.path[:length], plain.path[:length])


@pytest.mark.parametrize(
    "tokens, parents, fault",
    [
        ([0, 3, 4], [-1, 0, 2], [2, 1]),  # a node that is its own parent
        ([0, 3, 4], [-1, 0, 5], [2, 1]),  # a parent past the node
        ([0, 3, 4], [-1, -3, 0], [1, 1]),  # a parent under -1
        ([0, 3, 99], [-1, 0, 1], [2, 2]),  # a token outside the vocabulary
        ([0, -2, 4], [-1, 0, 1], [1, 2]),
    ],
)
def test_a_malformed_tree_is_reported_by_its_first_bad_node_and_stays_in_bounds(tokens, parents, fault):
    inp = _inputs(32, 4, 1, 4)
    inp.tree[: packed_length(4)] = torch.tensor(pack_tree(3, tokens, parents, 4))
    f = static_tree_frame(inp, 4, 10)
    assert f.fault.tolist() == fault
    assert ((f.tokens >= -1) & (f.tokens < 10)).all() and (f.parents < torch.arange(4)).all()


def test_graph_cache_evicts_the_least_recently_used_entry():
    cache: GraphCache[str, int] = GraphCache(2)
    built = []

    def build(key):
        return lambda: built.append(key) or len(built)

    cache.get("a", build("a"))
    cache.get("b", build("b"))
    cache.get("a", build("a"))  # a hit: "a" becomes most recently used
    cache.get("c", build("c"))  # evicts "b"
    assert cache.keys() == ["a", "c"]
    assert built == ["a", "b", "c"]
    assert (cache.captures, cache.evictions) == (3, 1)
    cache.get("b", build("b"))  # rebuilt after eviction; evicts "a"
    assert cache.keys() == ["c", "b"] and cache.captures == 4 and cache.evictions == 2
    with pytest.raises(ValueError):
        GraphCache(0)


def test_uncaptured_step_graph_rehearses_the_warm_up_and_restores_what_the_program_advances():
    counter, runs = torch.zeros(1), []

    def program():
        runs.append(1)
        counter.add_(1)
        return counter * 2

    step = StepGraph(program, capture=False, mutable=(counter,))
    assert len(runs) == 1 and counter.item() == 0, "the warm-up ran once and its advance was undone"
    assert step().item() == 2 and step().item() == 4


def test_runtime_config_is_validated_and_resolved_per_device():
    with pytest.raises(ConfigError, match="mode"):
        RuntimeConfig(mode="fast")
    with pytest.raises(ConfigError, match="tree_buckets"):
        RuntimeConfig(tree_buckets=(4, 2))
    with pytest.raises(ConfigError, match="max_draft_graphs"):
        RuntimeConfig(max_draft_graphs=0)
    assert RuntimeConfig().resolved_mode(torch.device("cpu")) == "eager"
    assert RuntimeConfig().resolved_mode(torch.device("cuda")) == "graphs"
    assert RuntimeConfig(mode="static").resolved_mode(torch.device("cpu")) == "static"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        RuntimeConfig(mode="graphs").resolved_mode(torch.device("cpu"))


def test_a_request_that_does_not_fit_is_refused_with_its_numbers():
    plan = MemoryPlan(capacity=4096, cache=3 * 2**30, workspace=2**30)
    check_fits(plan, torch.device("cuda"), 0.9, available=8 * 2**30)
    with pytest.raises(DeviceMemoryError, match=r"KV cache of 4096 slots 3.00 GiB .* 2.00 GiB is free"):
        check_fits(plan, torch.device("cuda"), 0.9, available=2 * 2**30)
    check_fits(plan, torch.device("cpu"), 0.9)  # no check off CUDA
