"""Proposals over the 2(L-2) skip slots: uniform random k-subsets, and SWIFT's Bayesian optimisation.

Bayesian optimisation uses the maintained `bayesian-optimization` package (`bayes_opt`, the one the
SWIFT reference used; imported only when a proposal is asked of it, from the `search` extra):
a Gaussian process with a Matern 5/2 kernel (the package's default) over the continuous
relaxation [0, 1]^(2(L-2)), noise alpha 1e-2 as in the reference, the upper confidence bound with
kappa 2.5; the top-k coordinates of the suggested point become the set. Two bounds on its cost,
which the reference did not have (its suggestions grew to seconds on a CPU): the GP is fitted on
the latest `max_history` observations only, and the acquisition is maximised from 2,000 random
points and 2 L-BFGS starts instead of 10,000 and 10.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError


def random_slots(rng: np.random.Generator, n_slots: int, k: int) -> tuple[int, ...]:
    """k distinct slots, uniformly (SWIFT's random proposal).

    >>> random_slots(np.random.default_rng(0), 8, 3)
    (4, 5, 7)
    """
    return tuple(sorted(int(s) for s in rng.choice(n_slots, size=k, replace=False)))


def top_k(point: Sequence[float], k: int) -> tuple[int, ...]:
    """The continuous relaxation back to a set: the k largest coordinates (ties: lower index).

    >>> top_k([0.1, 0.9, 0.5, 0.9], 2)
    (1, 3)
    """
    order = sorted(range(len(point)), key=lambda i: (-point[i], i))
    return tuple(sorted(order[:k]))


def _key(i: int) -> str:
    return f"x{i:04d}"


def require_bayes_opt() -> None:
    """Raise `ConfigError` now, not mid-generation, when Bayesian proposals are asked for without the package."""
    if importlib.util.find_spec("bayes_opt") is None:
        raise ConfigError(
            "bayes_interval > 0 needs the bayesian-optimization package: pip install 'skipspec[search]' "
            "(or SearchConfig(bayes_interval=0) for random proposals only)"
        )


def bayes_suggest(
    history: Sequence[tuple[tuple[int, ...], float]],
    n_slots: int,
    k: int,
    *,
    seed: int,
    kappa: float = 2.5,
    max_history: int = 100,
) -> tuple[int, ...]:
    """The next k-subset from a GP fitted to (slots, score) observations (UCB, kappa 2.5)."""
    from bayes_opt import BayesianOptimization, acquisition

    class LightUCB(acquisition.UpperConfidenceBound):
        def suggest(self, gp, target_space, n_random=10_000, n_smart=10, fit_gp=True, random_state=None):
            return super().suggest(gp, target_space, n_random=2_000, n_smart=2, fit_gp=fit_gp, random_state=random_state)

    bounds = {_key(i): (0.0, 1.0) for i in range(n_slots)}
    optimizer = BayesianOptimization(
        f=None,
        pbounds=bounds,
        acquisition_function=LightUCB(kappa=kappa),
        random_state=seed,
        verbose=0,
        allow_duplicate_points=True,
    )
    optimizer.set_gp_params(alpha=1e-2)
    # One observation per set (the mean of its scores): the package prints a notice per duplicate.
    scores: dict[tuple[int, ...], list[float]] = {}
    for slots, score in history[-max_history:]:
        scores.setdefault(tuple(sorted(slots)), []).append(float(score))
    for slots, values in scores.items():
        chosen = set(slots)
        optimizer.register(params={_key(i): float(i in chosen) for i in range(n_slots)}, target=sum(values) / len(values))
    point = optimizer.suggest()
    return top_k([float(point[_key(i)]) for i in range(n_slots)], k)
