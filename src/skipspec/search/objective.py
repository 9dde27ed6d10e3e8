"""What a candidate skip set is worth: expected tokens per verify step, and tokens per second.

Everything here is a pure function of a `Profile` (how the draft behaved at each position of the
generated context, see `search.matchness`), the draft rule (`SwiftConfig`'s confidence stop and
tree widths) and measured costs (`search.costs`).

The estimator. Imagine a draft starting at each context position j. Its depth-d token is the
draft's top-1 at position j+d-1 (teacher forcing: as long as every earlier token was accepted,
the draft's prefix *is* the generated text). Drafting stops after depth d when that token's
confidence is under the threshold, at `max_draft_tokens`, or at the end of the context window.
Verification reaches depth d with probability prod_{k<d} match[j+k-1]; there the chain token is
accepted with probability match and a sibling (which ends the path) with probability sibling. So

    accepted_j = sum_{d=1..n_j} reach_d * (match_d + sibling_d)
    tokens_j   = 1 + accepted_j                       (the bonus token)
    time_j     = n_j * draft_cost + verify_cost(1 + sum_{d<=n_j} width_d)

and the long-run rate is mean(tokens_j) / mean(time_j) (renewal-reward: a ratio of means, not a
mean of ratios). Greedy: match and sibling are 0/1 indicators. Sampling: match = p(draft top-1)
under the target distribution, sibling = the target mass on the other tree candidates: exactly the
acceptance probabilities of the single-draw rule in `verify/logits.py`.

Two deliberate biases, both towards plain decoding: a draft still running at the window's end is
cut there (long chains are under-counted), and draft tokens after a rejection are charged the
teacher-forced confidences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import SwiftConfig
from ..model.skipset import SkipSet
from ..tree import width_for


@dataclass(frozen=True)
class DraftRule:
    """The drafting settings a candidate is scored under (from `SwiftConfig`)."""

    threshold: float
    max_depth: int
    schedule: tuple[tuple[float, int], ...]
    default_width: int
    topk: int

    @classmethod
    def of(cls, config: SwiftConfig, vocab_size: int) -> DraftRule:
        return cls(
            config.confidence_threshold,
            config.max_draft_tokens,
            config.tree_schedule,
            config.tree_default_width,
            min(config.topk, vocab_size),
        )

    def width(self, top1_prob: float) -> int:
        """Tree candidates at a depth whose chain token has this confidence.

        >>> DraftRule(0.8, 25, ((0.95, 3), (0.8, 5), (0.5, 8)), 10, 4).width(0.9)
        4
        """
        return min(width_for(top1_prob, self.schedule, self.default_width), self.topk)

    def keeps_drafting(self, top1_prob: float) -> bool:
        """Whether the chain goes on after a token of this confidence (SWIFT: stop under the threshold).

        >>> DraftRule(0.8, 25, (), 10, 4).keeps_drafting(0.79)
        False
        """
        return top1_prob >= self.threshold

    @property
    def narrowest(self) -> int:
        return min([self.default_width, self.topk] + [w for _, w in self.schedule])


@dataclass(frozen=True)
class Profile:
    """How a skip-mode draft did at each of W context positions (host float arrays, shape (W,)).

    match:      probability that the draft's top-1 is the target's token (greedy: 0 or 1)
    sibling:    probability that another of the depth's tree candidates is (greedy: 0 or 1)
    confidence: the draft's top-1 probability (drives the stop rule and the tree widths)
    """

    match: np.ndarray
    sibling: np.ndarray
    confidence: np.ndarray

    @property
    def matchness(self) -> float:
        """SWIFT's score: mean top-1 agreement (expected agreement when sampling)."""
        return float(self.match.mean()) if self.match.size else 0.0


@dataclass(frozen=True)
class StepEstimate:
    """Expected outcome of one verify step with a candidate (means over draft starts)."""

    tokens: float  # emitted per step, bonus included
    drafted: float  # draft forwards per step
    seconds: float  # draft + verify time per step
    matchness: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Evaluation:
    """One scored candidate. speedup: its estimated tokens/s over plain decoding's (nan: costs not measured)."""

    skip: SkipSet
    profile: Profile
    speedup: float = float("nan")


def draft_walks(profile: Profile, rule: DraftRule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per start j: (expected tokens, draft forwards, tree nodes incl. the root).

    >>> one = np.ones(4)
    >>> rule = DraftRule(0.5, 3, ((0.95, 1),), 2, 2)
    >>> tokens, drafted, nodes = draft_walks(Profile(one, 0 * one, one), rule)
    >>> tokens.tolist(), drafted.tolist(), nodes.tolist()
    ([4.0, 4.0, 3.0, 2.0], [3.0, 3.0, 2.0, 1.0], [4.0, 4.0, 3.0, 2.0])
    """
    w = profile.match.size
    widths = np.array([rule.width(float(p)) for p in profile.confidence], dtype=float)
    stops = profile.confidence < rule.threshold
    tokens, drafted, nodes = np.ones(w), np.zeros(w), np.ones(w)
    for j in range(w):
        reach = 1.0
        for i in range(j, min(w, j + rule.max_depth)):
            tokens[j] += reach * (profile.match[i] + profile.sibling[i])
            reach *= profile.match[i]
            drafted[j] += 1
            nodes[j] += widths[i]
            if stops[i]:
                break
    return tokens, drafted, nodes


def estimate_step(
    profile: Profile, rule: DraftRule, draft_cost: float, verify_cost: Callable[[float], float]
) -> StepEstimate:
    """Expected tokens, draft forwards and seconds of one verify step drafted with this profile.

    `draft_cost`: seconds of one skip-mode draft forward; `verify_cost(n)`: seconds of a verify
    forward over n tree nodes.

    >>> one = np.ones(4)
    >>> rule = DraftRule(0.5, 3, ((0.95, 1),), 2, 2)
    >>> e = estimate_step(Profile(one, 0 * one, one), rule, 0.5, lambda n: 1.0)
    >>> e.tokens, e.drafted, e.seconds, round(e.tokens_per_s, 3)
    (3.25, 2.25, 2.125, 1.529)
    """
    tokens, drafted, nodes = draft_walks(profile, rule)
    seconds = drafted * draft_cost + np.array([verify_cost(float(n)) for n in nodes])
    return StepEstimate(float(tokens.mean()), float(drafted.mean()), float(seconds.mean()), profile.matchness)


def speed_bound(rule: DraftRule, draft_cost, verify_cost: Callable[[float], float]):
    """Tokens/s no profile can beat with this draft cost: every drafted token accepted.

    A chain of d drafted tokens yields at most d + 1 tokens and its tree holds at least
    1 + d * (narrowest width) nodes, so no set whose draft forward costs `draft_cost` can do
    better than the best d here. On a CPU, where a verify forward grows with its tree, this rules
    out sets that save too little before any scoring forward is spent on them.

    `draft_cost` may be an array (one bound each): a search round bounds every prefix of its
    order at once, and the verify costs, which do not depend on the draft, are looked up once.

    >>> round(speed_bound(DraftRule(0.8, 4, ((0.95, 3),), 10, 10), 0.9, lambda n: 0.1 * n), 3)
    1.538
    >>> speed_bound(DraftRule(0.8, 4, ((0.95, 3),), 10, 10), np.array([0.9, 0.45]), lambda n: 0.1 * n).round(3).tolist()
    [1.538, 2.353]
    """
    depths = np.arange(1, rule.max_depth + 1)
    verify = np.array([verify_cost(1.0 + d * rule.narrowest) for d in depths.tolist()])
    rates = (depths + 1) / (np.multiply.outer(draft_cost, depths) + verify)
    best = rates.max(axis=-1)
    return float(best) if np.ndim(best) == 0 else best
