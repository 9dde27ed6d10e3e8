"""The compiled step functions (`runtime.fuse`) compute exactly what the plain ones (`runtime.steps`) compute.

TorchInductor fuses each into a few kernels; the values it produces must not change: the tree
frame (any shape) and acceptance are integer and boolean work, the keyed draws integer hashing,
and the draft's top-k reads the same logits.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from test_tree_and_acceptance import random_parents

from skipspec.config import SamplingParams
from skipspec.runtime.buckets import bucket_for, pack_tree, packed_length, powers_of_two
from skipspec.runtime.fuse import RECOMPILE_LIMIT, CompiledSublayers
from skipspec.runtime.steps import PLAIN_STEP_FUNCTIONS, StepInputs
from skipspec.verify import SamplingInputs, sampling_program

CAPACITY, DEPTH, TOPK, VOCAB = 96, 6, 4, 50
BUCKETS = powers_of_two(DEPTH * TOPK + 1)


@pytest.fixture(scope="module")
def compiled():
    return CompiledSublayers.create().steps


def _inputs(rng: random.Random, committed: int) -> tuple[StepInputs, int]:
    """A random tree of any shape (sometimes with a malformed node) staged in fresh step inputs."""
    n = rng.randint(1, BUCKETS[-1])
    parents = random_parents(rng, n)
    tokens = [0] + [rng.randrange(VOCAB) for _ in range(n - 1)]
    if n > 1 and rng.random() < 0.2:
        tokens[rng.randrange(1, n)] = VOCAB + 3
    bucket = bucket_for(n, BUCKETS)
    inp = StepInputs.allocate(CAPACITY, DEPTH, TOPK, BUCKETS[-1], 16, 4, "cpu")
    inp.tree[: packed_length(bucket)].copy_(torch.tensor(pack_tree(committed, tokens, parents, bucket)))
    inp.root.fill_(rng.randrange(VOCAB))
    inp.sampling.seed.fill_(rng.randrange(2**40))
    return inp, bucket


def test_compiled_tree_frame_equals_the_plain_one(compiled):
    rng = random.Random("frame")
    for _ in range(12):
        inp, bucket = _inputs(rng, committed=rng.randrange(CAPACITY - BUCKETS[-1]))
        want = PLAIN_STEP_FUNCTIONS.frame(inp, bucket, VOCAB)
        got = compiled.frame(inp, bucket, VOCAB)
        for field in dataclasses.fields(want):
            assert torch.equal(getattr(got, field.name), getattr(want, field.name)), (field.name, bucket)


@pytest.mark.parametrize(
    "params",
    [SamplingParams(), SamplingParams(do_sample=True, temperature=0.7, top_p=0.9, top_k=20)],
    ids=["greedy", "sample"],
)
def test_compiled_verify_tail_accepts_what_the_plain_one_accepts(compiled, params):
    rng = random.Random(f"verify-{params.do_sample}")
    program = sampling_program(params)
    lengths = set()
    for case in range(12):
        inp, bucket = _inputs(rng, committed=rng.randrange(CAPACITY - BUCKETS[-1]))
        inp.sampling.write(params, int(inp.sampling.seed))
        frame = PLAIN_STEP_FUNCTIONS.frame(inp, bucket, VOCAB)
        # Logits that often agree with the drafted tokens, so paths of every length are accepted.
        logits = torch.randn(bucket, VOCAB, generator=torch.Generator().manual_seed(case))
        tokens = frame.tokens.clamp(min=0)
        children = frame.parents[None, :] == torch.arange(bucket)[:, None]
        for node in range(bucket):
            kids = children[node].nonzero().flatten().tolist()
            if kids and rng.random() < 0.9:
                logits[node, tokens[rng.choice(kids)]] += 12.0
        root_plain, root_compiled = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        want = PLAIN_STEP_FUNCTIONS.verify_tail(logits, frame, program, inp.sampling, TOPK, root_plain)
        got = compiled.verify_tail(logits, frame, program, inp.sampling, TOPK, root_compiled)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), case
        assert torch.equal(root_compiled, root_plain)
        lengths.add(int(want[0][0]))
    assert len(lengths) >= 3, f"accepted path lengths {lengths}: too few kinds of path were compared"


@pytest.mark.parametrize(
    "params",
    [SamplingParams(), SamplingParams(do_sample=True, temperature=0.7, top_k=7, top_p=0.8)],
    ids=["greedy", "sample"],
)
def test_compiled_draft_tail_ranks_and_advances_as_the_plain_one(compiled, params):
    values = SamplingInputs.of(params, "cpu")
    for case in range(6):
        logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(case)) * 3
        states = [(torch.tensor([[5]]), torch.tensor([17])) for _ in range(2)]
        want = PLAIN_STEP_FUNCTIONS.draft_tail(logits, sampling_program(params), values, *states[0], TOPK)
        got = compiled.draft_tail(logits, sampling_program(params), values, *states[1], TOPK)
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=0)
        assert states[0][0].item() == states[1][0].item() == want[0][0].item()
        assert states[0][1].item() == states[1][1].item() == 18


def test_compiled_runtimes_raise_dynamos_recompile_limit_and_never_lower_it():
    # Past the limit TorchDynamo silently runs a function uncompiled, and one runtime's
    # sublayers reach the default 8 variants once its cache has grown. (Set and restored by
    # hand: pytest's monkeypatch undo deletes torch's config entry instead of restoring it.)
    config = torch._dynamo.config
    before = config.recompile_limit
    try:
        config.recompile_limit = 8
        CompiledSublayers.create()
        assert config.recompile_limit == RECOMPILE_LIMIT > 8
        config.recompile_limit = 1000
        CompiledSublayers.create()
        assert config.recompile_limit == 1000
    finally:
        config.recompile_limit = before
