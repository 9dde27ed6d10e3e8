"""The search's time budget: a credit that steps earn and scoring forwards spend.

Every verify step adds `step_budget x` the measured cost of a plain step to the credit; a scoring
forward runs only when the credit covers its predicted cost, and its measured time is charged.
The credit is capped at one forward, so the search never runs more than one forward in a step
after an idle spell; time spent beyond the prediction drives the credit negative and is paid back
by later steps. So the search costs at most about `step_budget` of decoding time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ScoringBudget:
    """Seconds of credit, and what was handed out and spent.

    >>> b = ScoringBudget()
    >>> b.earn(need=1.0, gain=0.4); b.affords(1.0)
    False
    >>> b.earn(need=1.0, gain=0.4); b.earn(need=1.0, gain=0.4); b.affords(1.0)
    True
    >>> b.charge(1.5); round(b.credit, 6), b.forwards
    (-0.5, 1)
    >>> b.steps_until_affordable(need=1.0, gain=0.25, margin=2)
    4
    """

    credit: float = 0.0
    granted: float = 0.0  # seconds of credit handed out
    spent: float = 0.0  # seconds of scoring; spent <= granted + longest
    longest: float = 0.0  # the longest scoring call
    forwards: int = 0  # scoring forwards run (proposals, re-scorings of the incumbent, probes)

    def earn(self, need: float, gain: float) -> None:
        """One step's credit, capped at one forward of cost `need` (or one step's `gain`)."""
        self.credit = min(self.credit + gain, max(need, gain))
        self.granted += gain

    def affords(self, need: float) -> bool:
        return self.credit >= need

    def charge(self, seconds: float) -> None:
        """A scoring forward ran for `seconds` (set-up excluded)."""
        self.credit -= seconds
        self.spent += seconds
        self.longest = max(self.longest, seconds)
        self.forwards += 1

    def steps_until_affordable(self, need: float, gain: float, margin: int) -> int:
        """Steps that only add credit before a forward of cost `need` is affordable, less `margin`
        (costs grow with the context while they run); 0 when it is affordable now."""
        if gain <= 0 or self.credit >= need:
            return 0
        return max(math.ceil((need - self.credit) / gain) - margin, 0)
