"""Comparisons in which the training run, not the rollout, is the unit of variation.

Two policies trained with different seeds on the same data can differ by more than their rollouts'
binomial noise; a test that pools rollouts across training runs then mistakes seed luck for an
effect (its type-I error rises with the between-seed spread; ``tests/test_stats_clustered.py``
measures it). Here each training run is summarized by its success rate on each task, and:

* the **test** is a stratified permutation test of the arm labels over training runs, within each
  task (a cluster-level randomization test: Gail, Mark, Carroll, Green and Pee, "On design
  considerations and randomization-based inference for community intervention trials", Statistics
  in Medicine 15, 1996; Edgington and Onghena, *Randomization Tests*, 2007). Under the null
  hypothesis that runs of the two arms are exchangeable within a task it is exact for any spread
  between seeds; it is enumerated exactly when the design is small and sampled otherwise;
* the **interval** for the mean (over tasks) difference in success rates is a two-stage bootstrap:
  training runs resampled within task and arm, then rollouts within each run (Davison and Hinkley,
  *Bootstrap Methods and their Application*, 1997, section 3.8; resampling both stages errs on the
  wide side);
* the **spread** between seeds is reported per arm (the within-task standard deviation of run rates).

The price of honesty is power: with k runs per arm on one task the smallest attainable two-sided p
is ``2 / C(2k, k)`` (0.1 for k = 3), so decisions need several tasks or more seeds; the result says
what the design can reach (``min_p``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from numpy.typing import NDArray

from lbm.errors import InputError
from lbm.stats import _checks

RunCells = Mapping[Hashable, Mapping[Hashable, tuple[int, int]]]
"""Per stratum (task) and training run: (successes, trials), e.g. ``{"door-open": {0: (7, 20), 1: (12, 20)}}``."""
MAX_EXACT = 200_000
"""Largest number of label assignments enumerated exactly; larger designs are sampled."""


@dataclass(frozen=True)
class RunComparison:
    """Arm a vs arm b with training runs as units (see the module doc)."""

    diff: float
    """Mean over strata of (mean run rate of a - mean run rate of b)."""
    lo: float
    hi: float
    p: float
    """Two-sided p of the stratified permutation test over runs."""
    exact: bool
    """Whether ``p`` was enumerated exactly (else sampled)."""
    min_p: float
    """The smallest p this design can produce (with k runs per arm on one task: 2 / C(2k, k))."""
    strata: int
    runs_a: int
    runs_b: int
    spread_a: float
    """Between-seed spread of arm a: mean over strata of the standard deviation of its run rates."""
    spread_b: float


Floats = NDArray[np.float64]


def _split(pooled: Floats, chosen: list[int]) -> float:
    """Mean of the chosen runs minus the mean of the others."""
    mask = np.zeros(len(pooled), dtype=bool)
    mask[chosen] = True
    return float(pooled[mask].mean() - pooled[~mask].mean())


def _rates(cells: Mapping[Hashable, tuple[int, int]], what: str) -> tuple[Floats, NDArray[np.int64], NDArray[np.int64]]:
    s = np.array([c[0] for c in cells.values()], dtype=np.int64)
    n = np.array([c[1] for c in cells.values()], dtype=np.int64)
    if len(s) == 0 or (n <= 0).any() or (s < 0).any() or (s > n).any():
        raise InputError(f"{what}: every run needs 0 <= successes <= trials and trials > 0, got {dict(cells)}.")
    return s / n, s, n


def compare_runs(
    a: RunCells, b: RunCells, *, confidence: float = 0.95, reps: int = 4000, rng: np.random.Generator | None = None
) -> RunComparison:
    """Seed-aware comparison of two arms over the strata both have (see the module doc)."""
    _checks.confidence(confidence)
    rng = rng if rng is not None else np.random.default_rng(0)
    strata = sorted(set(a) & set(b), key=str)
    if not strata:
        raise InputError("compare_runs: the two arms share no stratum (task); compare runs on the same tasks.")
    data = [(_rates(a[k], f"arm a, {k}"), _rates(b[k], f"arm b, {k}")) for k in strata]
    observed = float(np.mean([ra.mean() - rb.mean() for (ra, _, _), (rb, _, _) in data]))

    # Permutation distribution of the statistic: per stratum, every split of its runs into the two arms.
    per_stratum: list[tuple[Floats, int]] = [(np.concatenate([ra, rb]), len(ra)) for (ra, _, _), (rb, _, _) in data]
    total = math.prod(math.comb(len(pooled), na) for pooled, na in per_stratum)
    exact = total <= MAX_EXACT
    dist: Floats
    if exact:
        dist = np.zeros(1)
        for pooled, na in per_stratum:
            values = np.array([_split(pooled, list(c)) for c in combinations(range(len(pooled)), na)], dtype=np.float64)
            dist = (dist[:, None] + values[None, :]).ravel()
    else:
        dist = np.zeros(reps)
        for pooled, na in per_stratum:
            shuffled: Floats = pooled[np.argsort(rng.random((reps, len(pooled))), axis=1)]
            dist = dist + shuffled[:, :na].mean(axis=1) - shuffled[:, na:].mean(axis=1)
    dist = dist / len(per_stratum)
    tol = 1e-12
    hits = int((np.abs(dist) >= abs(observed) - tol).sum())
    extreme = int((np.abs(dist) >= np.abs(dist).max() - tol).sum())
    if exact:
        p, min_p = hits / len(dist), extreme / len(dist)
    else:  # the observed assignment counts as one of the draws (Phipson and Smyth, 2010)
        p, min_p = (hits + 1) / (reps + 1), 1 / (reps + 1)

    # Two-stage bootstrap: runs within task and arm, then rollouts within each drawn run.
    draws = np.zeros(reps)
    for (ra, _, na_), (rb, _, nb_) in data:
        for rates, n, sign in ((ra, na_, 1.0), (rb, nb_, -1.0)):
            pick = rng.integers(0, len(rates), size=(reps, len(rates)))
            resampled = rng.binomial(n[pick], rates[pick]) / n[pick]
            draws += sign * resampled.mean(axis=1)
    draws /= len(data)
    lo, hi = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])

    def spread(which: int) -> float:
        sds = [float(np.std(d[which][0], ddof=1)) for d in data if len(d[which][0]) > 1]
        return float(np.mean(sds)) if sds else float("nan")

    return RunComparison(
        diff=observed,
        lo=float(lo),
        hi=float(hi),
        p=float(min(1.0, p)),
        exact=exact,
        min_p=float(min_p),
        strata=len(strata),
        runs_a=sum(len(d[0][0]) for d in data),
        runs_b=sum(len(d[1][0]) for d in data),
        spread_a=spread(0),
        spread_b=spread(1),
    )
