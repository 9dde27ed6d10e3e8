"""The graph path's fixed shapes alone: buckets, the padded tree frame, the graph LRU, memory planning.

These are the pieces that make a verify step's shape independent of the tree and the context,
so they are checked against the eager path's own constructions on the CPU.
"""

from __future__ import annotations

import random

import pytest
import torch

from skipspec.errors import ConfigError
from skipspec.runtime import DeviceMemoryError, MemoryPlan, RuntimeConfig
from skipspec.runtime.buckets import bucket_for, pack_tree, packed_length, powers_of_two, round_up
from skipspec.runtime.graphs import GraphCache, StepGraph
from skipspec.runtime.memory import check_fits
from skipspec.runtime.steps import StepInputs, tree_frame
from skipspec.tree import build_tree
from skipspec.verify import accept_longest_path


def test_bucket_is_the_smallest_that_holds_the_size():
    buckets = powers_of_two(251)
    assert buckets == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 16, 17, 251)] == [1, 2, 4, 16, 32, 256]
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket_for(257, buckets)
    assert round_up(1, 256) == 256 and round_up(512, 256) == 512


def test_packed_tree_has_fixed_length_and_inert_padding():
    layout = build_tree((3, 1))
    packed = pack_tree(layout, committed=7, bucket=8)
    assert len(packed) == packed_length(8)
    assert packed[:2] == [7, layout.size]
    depths, ranks, parents = packed[2:10], packed[10:18], packed[18:26]
    assert depths[: layout.size] == list(layout.depths) and set(depths[layout.size :]) == {0}
    assert set(ranks[layout.size :]) == {1}, "padding must never be a chain node (an ancestor)"
    assert parents[: layout.size] == list(layout.parents)
    with pytest.raises(ValueError):
        pack_tree(layout, committed=0, bucket=4)


def _inputs(capacity: int, bucket: int, depth: int, topk: int) -> StepInputs:
    return StepInputs.allocate(capacity, depth, topk, bucket, 16, 4, "cpu")


@pytest.mark.parametrize("seed", range(25))
def test_padded_tree_frame_matches_the_eager_verify_frame(seed):
    """Rows and columns of real nodes equal `SwiftDecoder._verify`'s frame; padding is invisible."""
    rng = random.Random(seed)
    topk = rng.randint(1, 6)
    widths = tuple(rng.randint(1, topk) for _ in range(rng.randint(0, 6)))
    layout = build_tree(widths)
    n = layout.size
    bucket = bucket_for(n, powers_of_two(64))
    committed = rng.randint(0, 40)
    capacity = round_up(committed + bucket + 1, 16)
    inp = _inputs(capacity, bucket, max(len(widths), 1), topk)
    candidates = torch.randint(0, 97, (max(len(widths), 1), topk))
    inp.cand.copy_(candidates)
    inp.root.fill_(5)
    inp.tree[: packed_length(bucket)] = torch.tensor(pack_tree(layout, committed, bucket))
    f = tree_frame(inp, bucket)

    # The eager construction, as in SwiftDecoder._verify.
    index = layout.candidate_index(topk)
    tokens = torch.cat([torch.tensor([5]), candidates.flatten()[index]])
    depths = torch.tensor(layout.depths)
    ancestors = layout.ancestors()
    allowed = torch.cat([torch.ones(n, committed, dtype=torch.bool), ancestors], dim=1)
    keys = torch.cat([torch.arange(committed), committed + depths])

    assert torch.equal(f.tokens[:n], tokens)
    assert (f.tokens[n:] == -1).all()
    assert torch.equal(f.positions[:n], committed + depths)
    assert torch.equal(f.slots, committed + torch.arange(bucket))
    assert torch.equal(f.ancestors[:n, :n], ancestors)
    assert torch.equal(f.allowed[:n, : committed + n], allowed)
    assert not f.allowed[:n, committed + n :].any(), "real nodes must not see padding or stale slots"
    assert torch.equal(f.key_positions[: committed + n], keys)
    # Padding rows see the prefix and themselves only, so they stay finite and harmless.
    for row in range(n, bucket):
        assert f.allowed[row, committed + row]
        assert f.allowed[row, committed : committed + bucket].sum() == 1


@pytest.mark.parametrize("seed", range(25))
def test_padding_never_changes_the_accepted_path(seed):
    rng = random.Random(seed)
    layout = build_tree(tuple(rng.randint(1, 4) for _ in range(rng.randint(0, 5))))
    n = layout.size
    bucket = bucket_for(n, powers_of_two(64))
    tokens = torch.randint(0, 6, (n,))
    targets = torch.randint(0, 6, (n,))
    plain = accept_longest_path(
        tokens, torch.tensor(layout.parents), torch.tensor(layout.depths), layout.ancestors(), targets
    )

    inp = _inputs(64, bucket, max(layout.max_depth, 1), 4)
    inp.tree[: packed_length(bucket)] = torch.tensor(pack_tree(layout, 0, bucket))
    f = tree_frame(inp, bucket)
    padded_tokens = torch.cat([tokens, torch.full((bucket - n,), -1)])
    padded_targets = torch.cat([targets, torch.randint(0, 6, (bucket - n,))])
    padded = accept_longest_path(padded_tokens, f.parents, f.depths, f.ancestors, padded_targets)
    length = int(plain.packed[0])
    assert int(padded.packed[0]) == length
    assert int(padded.packed[1]) == int(plain.packed[1])
    assert torch.equal(padded.path[:length], plain.path[:length])


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
