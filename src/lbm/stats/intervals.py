"""Confidence intervals: one rate, a difference of two rates, and means of rates across strata.

Method choices (each has its coverage checked by simulation in tests/test_stats.py):

* one rate: Wilson's score interval (Wilson 1927; Brown, Cai & DasGupta 2001) or the exact
  Clopper–Pearson interval (1934);
* a difference of two rates: Newcombe's hybrid score interval (Newcombe 1998, method 10);
* the mean of per-stratum rates (e.g. mean success over tasks): the stratified Wilson interval
  (Yan & Su 2010): Wilson's interval at the weighted mean with the effective sample size
  1 / sum(w_k^2 / n_k). Unlike a percentile bootstrap it keeps its coverage when rates sit near
  0 or 1, where a bootstrap distribution collapses onto the observed value;
* linear combinations of such means (differences, differences of differences): MOVER, the
  method of variance estimates recovery (Zou & Donner 2008), which builds the interval of
  sum c_j theta_j from the intervals of the theta_j; with two rates it is Newcombe's interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import beta, norm

from lbm.errors import InputError
from lbm.stats import _checks, _statsmodels

INTERVAL_METHODS = ("wilson", "clopper-pearson")

Cells = Mapping[Hashable, tuple[int, int]]
"""Per-stratum counts: stratum key (e.g. a (task, shift) pair) -> (successes, trials)."""


def proportion_interval(
    successes: ArrayLike, n: ArrayLike, confidence: float = 0.95, method: str = "wilson"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Confidence interval for a binomial proportion; vectorized over ``successes``/``n`` (same shape).

    ``wilson``: Wilson score interval; ``clopper-pearson``: exact Beta-quantile interval. Computed by
    ``statsmodels.stats.proportion.proportion_confint``; the degenerate Clopper–Pearson edges
    (statsmodels' NaN at 0/n and n/n) are their exact limits 0 and 1.
    """
    _checks.choice(method, INTERVAL_METHODS, "interval method")
    _checks.confidence(confidence)
    s, t = _checks.counts(successes, n, "proportion_interval")
    lo, hi = _statsmodels.proportion_confint(
        s.astype(float), t.astype(float), 1 - confidence, {"wilson": "wilson", "clopper-pearson": "beta"}[method]
    )
    lo = np.where(s == 0, 0.0, np.nan_to_num(lo, nan=0.0))
    hi = np.where(s == t, 1.0, np.nan_to_num(hi, nan=1.0))
    return np.clip(lo, 0, 1), np.clip(hi, 0, 1)


def wilson(p_hat: float, n_eff: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval at estimate ``p_hat`` with (possibly fractional) sample size ``n_eff``."""
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    denom = 1 + z * z / n_eff
    centre = (p_hat + z * z / (2 * n_eff)) / denom
    half = z * np.sqrt(max(p_hat * (1 - p_hat), 0.0) / n_eff + z * z / (4 * n_eff * n_eff)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


@dataclasses.dataclass(frozen=True)
class BetaPosterior:
    """Beta(1+s, 1+f) posterior of a success rate under a uniform prior."""

    a: float
    """1 + successes."""
    b: float
    """1 + failures."""
    mean: float
    """(s + 1) / (n + 2)."""
    lo: float
    """Lower end of the equal-tailed credible interval."""
    hi: float
    """Upper end of the equal-tailed credible interval."""

    def samples(self, size: int = 10_000, seed: int = 0) -> NDArray[np.float64]:
        """``size`` posterior draws (for violin plots), reproducible from ``seed``."""
        return np.random.default_rng(seed).beta(self.a, self.b, size)


def beta_posterior(successes: int, n: int, confidence: float = 0.95) -> BetaPosterior:
    """Posterior of the success rate with a uniform Beta(1,1) prior: Beta(1+s, 1+f).

    Source: conjugate Bernoulli/Beta model (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §2.4),
    as used for display in the TRI LBM study (violins of 10,000 draws). For display, not testing.
    """
    _checks.confidence(confidence)
    s, t = _checks.count(successes, n, "beta_posterior")
    a, b = 1.0 + s, 1.0 + t - s
    lo = float(beta.ppf((1 - confidence) / 2, a, b))
    hi = float(beta.ppf((1 + confidence) / 2, a, b))
    return BetaPosterior(a=a, b=b, mean=a / (a + b), lo=lo, hi=hi)


def newcombe_interval(s1: int, n1: int, s2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval for p1 - p2 by Newcombe's hybrid score method (Newcombe 1998, method 10).

    Computed by ``statsmodels.stats.proportion.confint_proportions_2indep(method="newcomb")``.
    """
    _checks.confidence(confidence)
    s1, n1 = _checks.count(s1, n1, "newcombe_interval")
    s2, n2 = _checks.count(s2, n2, "newcombe_interval")
    lo, hi = _statsmodels.newcombe(s1, n1, s2, n2, 1 - confidence)
    return max(-1.0, lo), min(1.0, hi)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval and what it was computed from."""

    value: float
    lo: float
    hi: float
    strata: int
    """Strata (cells) that entered the estimate."""
    trials: int
    """Trials that entered the estimate."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def stratified_mean(cells: Cells, confidence: float = 0.95) -> Estimate:
    """Equal-weight mean of per-stratum success rates with the stratified Wilson interval (Yan & Su 2010).

    ``cells``: stratum -> (successes, trials). Each stratum (task) weighs 1/K, as in the LBM study's
    "mean success over tasks"; the interval is Wilson's at the mean with n_eff = 1 / sum(w^2 / n_k).
    """
    s, t = _cell_arrays(cells, "stratified_mean")
    _checks.confidence(confidence)
    w = np.full(len(s), 1.0 / len(s))
    value = float(np.sum(w * s / t))
    lo, hi = wilson(value, 1.0 / float(np.sum(w * w / t)), confidence)
    return Estimate(value, lo, hi, len(s), int(t.sum()))


def mover(terms: Sequence[tuple[float, Estimate]], confidence: float = 0.95) -> Estimate:
    """Interval of ``sum c_j theta_j`` from independent estimates with intervals (MOVER; Zou & Donner 2008).

    L = S - sqrt(sum (c_j theta_j - min(c_j l_j, c_j u_j))^2), U = S + sqrt(sum (max(c_j l_j, c_j u_j) -
    c_j theta_j)^2). With ``[(1, A), (-1, B)]`` and Wilson intervals this is Newcombe's interval.
    Independence is assumed; paired evaluation (shared seeds) makes estimates positively
    correlated, which this ignores, so the interval is conservative there.
    """
    del confidence  # the terms carry their intervals; kept for a uniform signature
    if not terms:
        raise InputError("mover needs at least one term.")
    total = sum(c * e.value for c, e in terms)
    below = sum((c * e.value - min(c * e.lo, c * e.hi)) ** 2 for c, e in terms)
    above = sum((max(c * e.lo, c * e.hi) - c * e.value) ** 2 for c, e in terms)
    strata = min(e.strata for _, e in terms)
    return Estimate(
        float(total), float(total - np.sqrt(below)), float(total + np.sqrt(above)), strata, int(sum(e.trials for _, e in terms))
    )


def mean_difference(cells_a: Cells, cells_b: Cells, confidence: float = 0.95) -> Estimate:
    """Mean over common strata of rate_a - rate_b, with the stratified Newcombe interval (MOVER).

    Only strata both arms have enter (comparing one policy's task with another's task would be
    meaningless); no stratum in common is an error.
    """
    common = common_strata(cells_a, cells_b)
    a = stratified_mean({k: cells_a[k] for k in common}, confidence)
    b = stratified_mean({k: cells_b[k] for k in common}, confidence)
    return mover([(1.0, a), (-1.0, b)], confidence)


def common_strata(*cells: Cells) -> list[Hashable]:
    """Strata present in every one of ``cells`` (sorted); none in common is an :class:`InputError`."""
    keys: set[Hashable] = set(cells[0])
    for c in cells[1:]:
        keys &= set(c)
    if not keys:
        raise InputError(
            "The arms share no stratum (task/shift cell), so there is nothing to compare; evaluate them on "
            "the same tasks and shifts."
        )
    return sorted(keys, key=str)


def _cell_arrays(cells: Cells, what: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if not cells:
        raise InputError(f"{what}: no strata given.")
    s, t = _checks.counts([c[0] for c in cells.values()], [c[1] for c in cells.values()], what)
    return s.astype(float), t.astype(float)
