"""The tensor-parallel test's cases, shared by the test (one process: the references) and the script
torchrun runs (`tp_run.py`: two gloo processes, the sharded model)."""

from __future__ import annotations

from dataclasses import dataclass

#: Every model type with a tensor-parallel plan (all supported ones), by `tiny_models.FAMILIES` name.
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3")
#: Divisible by 2 ranks: transformers 5.17 gathers the output head's columns only when they divide.
VOCAB = 96
PROMPT = (5, 17, 33, 8, 5, 17, 33, 8, 61, 5, 17, 33, 2, 70, 44, 5, 17, 33, 8, 61)
NEW_TOKENS = 24
SKIP = dict(skip_attn=[2], skip_mlp=[3])
#: The saved model's prompt for `skipspec generate` (its tokenizer's words are w0..w95).
CLI_PROMPT = "w5 w17 w33 w8 w5 w17 w33 w8 w61 w5 w17"


@dataclass(frozen=True)
class Case:
    """One generation on one family's tiny model.

    name: how results are keyed. method: the decoder's method. search: None (a fixed set), or the
    skip-set search's objective, "speed" or "paper" (a small context window, so it scores within
    the request; "speed" may find from its measured costs that no set can pay, "paper" scores a
    proposal every step). runtime: the
    `RuntimeConfig` mode. seed: None greedy, else seeded sampling at temperature 0.8. plan:
    "auto" (transformers') or "dtensor". warmup: call `decoder.warmup` first.
    """

    name: str
    family: str
    method: str
    search: str | None = None
    runtime: str = "eager"
    seed: int | None = None
    plan: str = "auto"
    warmup: bool = False

    def sampling(self) -> dict:
        if self.seed is None:
            return {}
        return dict(do_sample=True, temperature=0.8, top_k=20, seed=self.seed)


def cases() -> list[Case]:
    # Every family: SWIFT (layer-skip drafts, branching trees). Hybrid (n-gram and recycling
    # drafts too, nodes chosen by measured costs: a couple of seconds to time) on two.
    out = [Case(f"{family}/swift", family, "swift") for family in FAMILIES]
    out += [
        Case("llama/hybrid", "llama", "hybrid"),
        Case("gemma3/hybrid", "gemma3", "hybrid"),
        Case("llama/ar", "llama", "ar"),
        Case("llama/search", "llama", "swift", search="speed"),
        Case("llama/paper", "llama", "swift", search="paper"),
        Case("llama/static-swift", "llama", "swift", runtime="static", warmup=True),
        Case("llama/static-ar", "llama", "ar", runtime="static"),
        Case("llama/static-search", "llama", "swift", runtime="static", search="speed"),
        Case("llama/sample-hybrid", "llama", "hybrid", seed=7),
        Case("gemma3/sample-swift", "gemma3", "swift", seed=11),
        Case("llama/dtensor-swift", "llama", "swift", plan="dtensor"),
    ]
    return out


def swift_config(case: Case):
    from skipspec import SwiftConfig
    from skipspec.config import SearchConfig

    if case.search == "paper":
        search = SearchConfig(objective="paper", context_window=8, bayes_interval=0, persist=False)
        return SwiftConfig(search=search, max_draft_tokens=6)
    if case.search == "speed":
        # Scores from the 9th generated token on, several forwards a step (when its costs say a set
        # could pay). Saved in the test's private store: the model's identity is read from a shard.
        search = SearchConfig(context_window=8, step_budget=float("inf"), proposals_per_step=2, task="tp-test")
        return SwiftConfig(search=search, max_draft_tokens=6)
    return SwiftConfig(optimize=False, max_draft_tokens=6, **SKIP)


def runtime_config(case: Case):
    from skipspec.runtime import RuntimeConfig

    return RuntimeConfig(mode=case.runtime, tree_buckets=(1, 2, 4, 8, 16, 32, 64) if case.runtime == "static" else None)
