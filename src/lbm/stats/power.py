"""Power planning for comparisons of two success rates, with the test that will actually be run.

:func:`exact_power` sums the two binomial pmfs over the exact rejection region of the test at
level alpha (no simulation error). For Boschloo's test (the default of every comparison here) the
region is two one-sided regions {Fisher one-sided p <= f*}, each a cut per row of the table, so
power costs O(n · grid) time and memory for any n: the planner never enumerates (n+1)^2 tables.
"""

from __future__ import annotations

import math

import numpy as np

from lbm.errors import InputError
from lbm.stats import _checks, _exact
from lbm.stats.sequential import sequential_design

POWER_TESTS = ("boschloo", "barnard")
DIRECTIONS = ("increase", "decrease", "either")
MAX_PLANNED_TRIALS = 20_000
"""Largest n per arm the exact planner searches; a design needing more is refused with its approximation."""


def _rejection_cuts(n1: int, n2: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Cuts of the two one-sided Boschloo regions at alpha/2 each (two-sided p = 2 · min one-sided)."""
    less = _exact.boschloo_cuts_at_level(n1, n2, alpha / 2)
    greater = less if n1 == n2 else _exact.boschloo_cuts_at_level(n2, n1, alpha / 2)
    return less, greater


def barnard_rejection_threshold(n: int, alpha: float = 0.05, grid: int = 201) -> float:
    """|z| threshold of the two-sided exact unconditional (Barnard, pooled-z) test with n per arm.

    Tables with |z_pooled| >= threshold are rejected; the worst-case type-I error over the null
    grid is <= alpha (Barnard 1945; Suissa & Shuster 1985). Computed by exact enumeration.
    """

    return sequential_design(n, looks=1, alpha=alpha, grid=grid).thresholds[0]


def exact_power(p1: float, p2: float, n: int, alpha: float = 0.05, test: str = "boschloo", n2: int | None = None) -> float:
    """Exact power of the two-sided exact unconditional test at level alpha with n (and n2) trials per arm.

    ``boschloo`` (default): the rejection region of :func:`lbm.stats.two_proportion_test` itself.
    ``barnard``: the pooled-z region of :func:`barnard_rejection_threshold` (equal arms only).
    Source of the method: Suissa & Shuster (1985), *JRSS A* 148:317–327.
    """
    _checks.choice(test, POWER_TESTS, "test")
    _checks.alpha(alpha)
    for p, name in ((p1, "p1"), (p2, "p2")):
        if not 0 <= p <= 1:
            raise InputError(f"{name}={p} must be a success rate in [0, 1].")
    n2 = n if n2 is None else n2
    if n < 1 or n2 < 1:
        raise InputError(f"Power needs at least one trial per arm (got {n} and {n2}).")
    if test == "barnard":
        if n2 != n:
            raise InputError("Barnard power is computed for equal arms only; use test='boschloo' for unequal arms.")
        c = barnard_rejection_threshold(n, alpha)
        if not math.isfinite(c):
            return 0.0
        z2 = _exact.pooled_z2_table(n)
        pm1, pm2 = _exact.binom_pmf(n, np.array([p1]))[0], _exact.binom_pmf(n, np.array([p2]))[0]
        return float(np.sum((pm1[:, None] * pm2[None, :])[_exact.at_least(z2, c * c)]))
    less, greater = _rejection_cuts(n, n2, alpha)
    # Arm 1 worse (x2 >= less[x1]) and arm 2 worse (x1 >= greater[x2]); the two regions are disjoint.
    return float(_exact.region_mass(less, n, n2, p1, p2)[0] + _exact.region_mass(greater, n2, n, p2, p1)[0])


def samplesize_approx(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Trials per policy for a two-sided test by the arcsine approximation with Fleiss's continuity correction.

    n₀ = 2((z_{1−α/2} + z_{power}) / h)² with Cohen's h = |2 asin √p1 − 2 asin √p2| (Cohen 1988, §6),
    then n = n₀/4 · (1 + √(1 + 4/(n₀|p1−p2|)))² (Fleiss, Tytun & Ury 1980). :func:`samplesize_exact`
    gives the exact answer; this is its starting point.
    """
    from scipy.stats import norm

    _checks.alpha(alpha)
    _checks.probability(power, "power")
    _checks.probability(p1, "p1")
    _checks.probability(p2, "p2")
    if p1 == p2:
        raise InputError("p1 equals p2: no finite number of trials detects a zero difference. Choose p2 != p1.")
    h = abs(2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2)))
    n0 = 2 * ((norm.ppf(1 - alpha / 2) + norm.ppf(power)) / h) ** 2
    d = abs(p1 - p2)
    return int(math.ceil(n0 / 4 * (1 + math.sqrt(1 + 4 / (n0 * d))) ** 2))


def samplesize_exact(
    p1: float, p2: float, alpha: float = 0.05, power: float = 0.8, test: str = "boschloo", max_n: int = MAX_PLANNED_TRIALS
) -> int:
    """Smallest n per policy whose exact power (:func:`exact_power`, the test that will be run) reaches ``power``.

    Exact power is not monotone in n (discreteness), so the answer is the first n at which the
    target is met: bracketing upward from below the approximation, bisection, then a short linear
    scan (Chan 1998's strategy). A design needing more than ``max_n`` trials per arm is refused.
    """
    start = samplesize_approx(p1, p2, alpha, power)
    if start > max_n:
        raise InputError(
            f"Detecting {p1:g} vs {p2:g} at alpha {alpha:g} with power {power:g} needs about {start} "
            f"trials per policy, beyond the planner's limit of {max_n}. Plan for a larger difference, or "
            "raise max_n if that compute is really available."
        )

    def ok(n: int) -> bool:
        return exact_power(p1, p2, n, alpha, test) >= power

    lo, hi = max(2, int(start * 0.6)), max(3, start)
    while not ok(hi):
        lo, hi = hi, int(hi * 1.3) + 1
        if hi > max_n:
            raise InputError(f"Exact power for {p1:g} vs {p2:g} does not reach {power:g} within {max_n} trials per policy.")
    while hi - lo > 8:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return next(n for n in range(lo, hi + 1) if ok(n))


def min_detectable_difference_approx(
    n: int, alpha: float = 0.05, power: float = 0.8, baseline: float = 0.5, direction: str = "increase"
) -> float:
    """Smallest change from ``baseline`` detectable with n per policy (arcsine approximation).

    h = (z_{1−α/2} + z_{power}) √(2/n) (Cohen 1988, §6). ``direction``: ``increase`` (the rise
    above baseline, what "improvement" means), ``decrease`` (the drop), or ``either`` (the smaller
    of the two: the optimistic value used for underpowered warnings). NaN when that direction
    cannot reach the power (e.g. an increase from a baseline near 1).
    """
    from scipy.stats import norm

    _checks.choice(direction, DIRECTIONS, "direction")
    if n < 1:
        raise InputError(f"n={n}: a minimum detectable difference needs at least one trial per policy.")
    if not 0 <= baseline <= 1:
        raise InputError(f"baseline={baseline} must be a success rate in [0, 1].")
    h = (norm.ppf(1 - alpha / 2) + norm.ppf(power)) * math.sqrt(2 / n)
    phi = 2 * math.asin(math.sqrt(baseline))
    up = math.sin((phi + h) / 2) ** 2 - baseline if phi + h <= math.pi else math.nan
    down = baseline - math.sin((phi - h) / 2) ** 2 if phi - h >= 0 else math.nan
    if direction == "increase":
        return float(up)
    if direction == "decrease":
        return float(down)
    finite = [v for v in (up, down) if math.isfinite(v)]
    return float(min(finite)) if finite else math.nan


def min_detectable_difference_exact(
    n: int, alpha: float = 0.05, power: float = 0.8, baseline: float = 0.5, test: str = "boschloo"
) -> float:
    """Smallest increase over ``baseline`` whose exact power (:func:`exact_power`) reaches ``power`` with n per policy.

    Bisection on p2 in (baseline, 1]; NaN if even p2 = 1 is not detectable. Source: Suissa &
    Shuster (1985).
    """
    if exact_power(baseline, 1.0, n, alpha, test) < power:
        return float("nan")
    lo, hi = baseline, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if exact_power(baseline, mid, n, alpha, test) >= power:
            hi = mid
        else:
            lo = mid
    return float(hi - baseline)
