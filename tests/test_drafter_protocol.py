"""A drafter written only against the public protocol gives exactly plain decoding's output.

The drafter below proposes random trees of random shape (branches under any node, deep and wide,
duplicate siblings, sometimes nothing) in which one path is the true continuation, so long
paths are accepted; the output must still be transformers' greedy output, in the eager and the
static executor, on tiny random models of every supported family. Malformed trees are refused
with `DrafterError` naming the drafter, and the decoder serves the next request as if nothing
happened. Seeded sampling gives the same tokens whatever the method or drafter.
"""

from __future__ import annotations

import random
import time

import pytest
import torch
from test_greedy_lossless import _hf_greedy
from tiny_models import FAMILIES, tiny_model

import skipspec
from skipspec import SwiftConfig, SwiftDecoder
from skipspec.drafting import DraftContext, Drafter, DraftTree, StepResult
from skipspec.runtime import RuntimeConfig

MODES = ["eager", "static"]


class TruthInRandomTrees:
    """Random trees that contain the true continuation (when it is known) somewhere inside."""

    name = "truth-in-random-trees"

    def __init__(self, rng: random.Random, truth: list[int], vocab: int, as_tensors: bool = False, device="cpu") -> None:
        self.rng = rng
        self.truth = truth  # prompt + the reference continuation
        self.vocab = vocab
        self.as_tensors = as_tensors
        self.device = device
        self.observed: list[StepResult] = []

    def propose(self, ctx: DraftContext) -> DraftTree | None:
        rng = self.rng
        if rng.random() < 0.15:
            return None
        budget = min(ctx.max_nodes, rng.randint(1, ctx.max_nodes))
        tokens, parents = [], []
        for _ in range(rng.randint(0, budget // 2)):  # noise first, any shape
            parents.append(rng.randint(-1, len(tokens) - 1))
            tokens.append(rng.randrange(self.vocab))
        # The true path hangs under a random existing node whose own path is also true: the root.
        done = len(ctx.tokens)
        true_next = self.truth[done : done + min(ctx.max_depth, budget - len(tokens), rng.randint(1, 12))]
        parent = -1
        for tok in true_next:
            if len(tokens) >= budget:
                break
            if rng.random() < 0.3 and len(tokens) < budget - 1:  # a wrong sibling before the right one
                parents.append(parent)
                tokens.append(rng.randrange(self.vocab))
            if len(tokens) >= budget:
                break
            parents.append(parent)
            tokens.append(tok)
            parent = len(tokens) - 1
            if rng.random() < 0.3 and len(tokens) < budget:  # a duplicate of the right token
                parents.append(parents[-1])
                tokens.append(tok)
        if self.as_tensors:
            return DraftTree(torch.tensor(tokens, device=self.device), torch.tensor(parents, device=self.device))
        return DraftTree(tokens, parents)

    def observe(self, ctx: DraftContext, result: StepResult) -> None:
        assert result.accepted and ctx.tokens[-1] == self.truth[len(ctx.tokens) - 1]
        self.observed.append(result)


def test_a_protocol_drafter_is_a_drafter():
    assert isinstance(TruthInRandomTrees(random.Random(0), [], 10), Drafter)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_tree_drafter_gives_transformers_greedy_output(family, mode):
    model = tiny_model(family)
    rng = random.Random(f"protocol-{family}-{mode}")
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=RuntimeConfig(mode=mode))
    vocab = dec.adapter.vocab_size
    produced = steps = 0
    for case in range(4):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 30))]
        max_new = rng.randint(1, 40)
        want = _hf_greedy(model, torch.tensor([prompt]), max_new, [])
        drafter = TruthInRandomTrees(rng, prompt + want, vocab, as_tensors=case % 2 == 1)
        res = dec.generate(prompt, max_new, drafters=[drafter])
        assert res.tokens == want, f"{family} {mode} case {case}"
        produced += len(res.tokens) - 1
        steps += res.stats["verify_steps"]
        # Duplicate siblings are verified once, but each is counted as the drafter's.
        assert res.stats["drafted_by_source"].get(drafter.name, 0) >= res.stats["drafted_tokens"]
        assert res.stats["accepted_by_source"].get(drafter.name, 0) == res.stats["accepted_tokens"]
        for result in drafter.observed:
            assert result.topk is not None and result.topk.shape[1] == dec.config.verify_topk
            assert result.verified.shape[0] == result.topk.shape[0]
            if result.tree is not None:
                tree_tokens = [int(t) for t in result.tree.tokens]
                assert [tree_tokens[i] for i in result.path] == result.accepted[: len(result.path)]
    assert produced / steps > 1.8, "the true paths were not accepted deeply: the test checks little"


@pytest.mark.parametrize("mode", MODES)
def test_two_drafters_share_the_budget_side_by_side(mode):
    model = tiny_model("qwen2")
    rng = random.Random(mode)
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=RuntimeConfig(mode=mode))
    prompt = [5, 9, 2, 7]
    want = dec.generate(prompt, 30, method="ar").tokens
    a, b = (TruthInRandomTrees(rng, prompt + want, dec.adapter.vocab_size) for _ in range(2))
    b.name = "second"
    res = dec.generate(prompt, 30, drafters=[a, b])
    assert res.tokens == want
    assert set(res.stats["drafted_by_source"]) == {a.name, "second"}
    assert sum(res.stats["accepted_by_source"].values()) >= res.stats["accepted_tokens"]


class Malformed:
    name = "broken-drafter"

    def __init__(self, tree) -> None:
        self.tree = tree

    def propose(self, ctx: DraftContext) -> DraftTree:
        return self.tree(ctx) if callable(self.tree) else self.tree

    def observe(self, ctx: DraftContext, result: StepResult) -> None:
        pass


BAD_TREES = {
    "parent is the node itself": (DraftTree([1, 2], [-1, 1]), "parent"),
    "parent after the node": (DraftTree([1, 2], [1, -1]), "parent"),
    "parent under -1": (DraftTree([1], [-2]), "parent"),
    "token past the vocabulary": (DraftTree([1, 10**6], [-1, 0]), "vocabulary"),
    "negative token": (DraftTree([-1], [-1]), "vocabulary"),
    "lengths differ": (DraftTree([1, 2, 3], [-1, 0]), "3 tokens but 2 parents"),
    "over budget": (lambda ctx: DraftTree([1] * (ctx.max_nodes + 1), [-1] * (ctx.max_nodes + 1)), "budget"),
    "not ints": (DraftTree(["a"], [-1]), "ints"),
    "2-D tensor": (DraftTree(torch.ones(2, 2, dtype=torch.long), torch.tensor([-1, 0])), "1-D"),
    "tensor parent is the node itself": (DraftTree(torch.tensor([1, 2]), torch.tensor([-1, 1])), "parent"),
    "tensor token past the vocabulary": (DraftTree(torch.tensor([1, 10**6]), torch.tensor([-1, 0])), "vocabulary"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(BAD_TREES))
def test_a_malformed_tree_raises_drafter_error_and_the_decoder_goes_on(mode, case):
    tree, fault = BAD_TREES[case]
    model = tiny_model("llama")
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=RuntimeConfig(mode=mode))
    prompt = [3, 1, 4, 1, 5]
    want = dec.generate(prompt, 12, method="ar").tokens
    stream = dec.stream(prompt, 12, drafters=[Malformed(tree)])
    with pytest.raises(skipspec.DrafterError, match=fault) as err:
        for _ in stream:
            pass
    assert "broken-drafter" in str(err.value)
    assert stream.tokens == want[:1], "nothing past the prefill's token may be emitted"
    assert dec.generate(prompt, 12, method="ar").tokens == want
    assert dec.generate(prompt, 12, method="swift").tokens == want


def test_an_object_that_is_not_a_drafter_is_refused_before_any_work():
    dec = SwiftDecoder(tiny_model("llama"), SwiftConfig(optimize=False), stop_token_ids=[])
    with pytest.raises(skipspec.DrafterError, match="not a drafter"):
        dec.stream([1, 2, 3], 5, drafters=[object()])


@pytest.mark.parametrize("mode", MODES)
def test_the_same_seed_gives_the_same_tokens_whatever_the_method_or_drafter(mode):
    model = tiny_model("gemma3")
    rng = random.Random(f"seeded-{mode}")
    dec = SwiftDecoder(model, SwiftConfig(optimize=False, confidence_threshold=0.0), stop_token_ids=[],
                       runtime=RuntimeConfig(mode=mode))  # fmt: skip
    vocab = dec.adapter.vocab_size
    deep = 0
    for seed in range(6):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 20))]
        settings = dict(do_sample=True, temperature=rng.choice([0.7, 1.0, 1.4]), top_p=rng.choice([1.0, 0.9]),
                        top_k=rng.choice([0, 20]), seed=seed)  # fmt: skip
        plain = dec.generate(prompt, 30, method="ar", **settings).tokens
        swift = dec.generate(prompt, 30, method="swift", **settings)
        drafter = TruthInRandomTrees(rng, prompt + plain, vocab)
        custom = dec.generate(prompt, 30, drafters=[drafter], **settings)
        assert swift.tokens == plain and custom.tokens == plain, seed
        deep += max(custom.stats["accepted_per_step"], default=0) >= 3
        other = dec.generate(prompt, 30, method="ar", **{**settings, "seed": seed + 1000}).tokens
        assert other != plain, "another seed should give other tokens"
    assert deep >= 3


def test_the_example_drafter_runs_and_is_lossless():
    """examples/bigram_drafter.py, as a user runs it."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "bigram_drafter.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "identical to plain decoding" in out.stdout


class SlowLearner:
    """Drafts nothing useful and takes 5 ms to learn from every step."""

    name = "slow-learner"

    def propose(self, ctx: DraftContext) -> DraftTree | None:
        return DraftTree([0], [-1])

    def observe(self, ctx: DraftContext, result: StepResult) -> None:
        time.sleep(0.005)


def test_host_share_counts_what_drafters_spend_learning_from_each_step():
    model = tiny_model("llama")
    dec = SwiftDecoder(model, SwiftConfig(), stop_token_ids=[])
    s = dec.generate([4, 5, 6], 12, drafters=[SlowLearner()]).stats
    # Every step but the last is observed (the request ends before learning from its last step).
    assert s["draft_time"] >= 0.005 * (s["verify_steps"] - 1)
    assert s["host_share"] == pytest.approx(s["draft_time"] / (s["draft_time"] + s["verify_time"]))
