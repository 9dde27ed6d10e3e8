"""What one request did, counted as it runs, and the statistics it reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..runtime.executor import TreeInput, Verified


@dataclass
class Counters:
    verify_steps: int = 0
    drafting_steps: int = 0  # verify steps whose tree was drafted on the device
    # Runs of drafting steps: each run's first and last step leave the GPU waiting for the host.
    drafting_runs: int = 0
    draft_forwards: int = 0
    drafted: int = 0  # tree nodes verified, root excluded
    depth: int = 0  # the trees' depths: the most drafted tokens the steps could have accepted
    accepted: int = 0
    verified_tokens: int = 0
    prefill_time: float = 0.0
    # Host time drafting: proposing and assembling trees (drafters' forwards included) and the
    # drafters' learning from each step's result (the search's scoring forwards included).
    draft_time: float = 0.0
    verify_time: float = 0.0
    accepted_per_step: list[int] = field(default_factory=list)
    # Tree nodes per verify step: 0 tells a plain step from a rejected draft.
    drafted_per_step: list[int] = field(default_factory=list)
    drafted_by_source: Counter = field(default_factory=Counter)
    accepted_by_source: Counter = field(default_factory=Counter)

    def count_step(self, step: Verified, tree: TreeInput | None, owners=None, paths=()) -> None:
        """One verify step over `tree` (None: a plain step) that committed `step.tokens`;
        `paths`: the accepted nodes per proposal (`Owners.paths`)."""
        nodes = tree.size if tree is not None else 0
        self._count(step, nodes)
        if nodes:
            for name, kept, own in zip(owners.names, owners.kept, paths):
                if kept:
                    self.drafted_by_source[name] += kept
                    self.accepted_by_source[name] += len(own)

    def _count(self, step: Verified, nodes: int) -> None:
        accepted = len(step.tokens) - 1
        self.verify_steps += 1
        self.drafted += nodes
        self.depth += step.depth
        self.accepted += accepted
        self.verified_tokens += len(step.tokens)
        self.accepted_per_step.append(accepted)
        self.drafted_per_step.append(nodes)

    def count_ranges(self, step: Verified, ranges: Sequence[tuple[str, int, int]]) -> None:
        """One drafting step (`runtime.device_drafting`) that committed `step.tokens`; `ranges`:
        (drafter name, first node, nodes) of each drafter's part of the tree's fixed layout, whose
        holes (token -1) count as nothing drafted."""
        drafted = step.host[0][1:] if step.host is not None else step.verified[1:].cpu().numpy()
        kept = [int((drafted[start : start + n] >= 0).sum()) for _, start, n in ranges]
        self._count(step, sum(kept))
        self.drafting_steps += 1
        for (name, start, n), nodes in zip(ranges, kept):
            if nodes:
                self.drafted_by_source[name] += nodes
                self.accepted_by_source[name] += sum(start <= i < start + n for i in step.path)

    def summary(self, new_tokens: int, elapsed: float) -> dict:
        decode_time = self.draft_time + self.verify_time
        steps = self.verify_steps
        return {
            "verify_steps": steps,
            "drafting_steps": self.drafting_steps,
            "drafting_runs": self.drafting_runs,
            "draft_forwards": self.draft_forwards,
            "drafted_tokens": self.drafted,
            "accepted_tokens": self.accepted,
            # Spec-Bench's tau: tokens emitted per verify step (accepted drafts + the bonus token).
            "mean_accepted": self.verified_tokens / steps if steps else 0.0,
            # Accepted drafted tokens over the most the trees allowed (SWIFT: over the chain tokens).
            "acceptance_rate": self.accepted / self.depth if self.depth else 0.0,
            "mean_tree_nodes": self.drafted / steps if steps else 0.0,
            "drafted_by_source": dict(self.drafted_by_source),
            "accepted_by_source": dict(self.accepted_by_source),
            "accepted_per_step": list(self.accepted_per_step),
            "drafted_per_step": list(self.drafted_per_step),
            "prefill_time": self.prefill_time,
            "draft_time": self.draft_time,
            "verify_time": self.verify_time,
            "host_share": self.draft_time / decode_time if decode_time > 0 else 0.0,
            "total_time": elapsed,
            "tokens_per_s": new_tokens / elapsed if elapsed > 0 else 0.0,
            "decode_tokens_per_s": (new_tokens - 1) / decode_time if decode_time > 0 else 0.0,
        }
