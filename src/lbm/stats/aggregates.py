"""Aggregates across strata (tasks, shift conditions): means, IQM, P(A > B), and the one bootstrap.

Every function takes per-stratum counts (``{stratum: (successes, trials)}``) rather than records, so
the same code serves ``lbm stats compare``, reports and the study.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
from numpy.typing import NDArray

from lbm.errors import InputError
from lbm.stats import _checks
from lbm.stats.hypotheses import cmh_test
from lbm.stats.intervals import Cells, Estimate, common_strata, mean_difference


def bootstrap_rates(
    cells: Cells, reps: int, rng: np.random.Generator
) -> tuple[list[Hashable], NDArray[np.float64], NDArray[np.float64]]:
    """The stratified bootstrap of per-stratum rates: ``(strata, rates (K,), draws (reps, K))``.

    Rollouts are resampled with replacement *within* each stratum (Agarwal et al. 2021, rliable's
    stratified bootstrap). Resampling n Bernoulli outcomes with replacement and summing is exactly
    a Binomial(n, p_hat) draw, so each stratum costs one binomial draw per replicate. Percentile
    intervals from these draws under-cover near rates of 0 or 1; use them for descriptive
    quantities (IQM, the first data fraction that reaches a target), and
    :mod:`lbm.stats.intervals` for means and differences.
    """
    if reps < 1:
        raise InputError(f"bootstrap replicates must be >= 1, got {reps}.")
    strata = sorted(cells, key=str)
    s, n = _checks.counts([cells[k][0] for k in strata], [cells[k][1] for k in strata], "bootstrap")
    p = s / n
    draws = rng.binomial(n[None, :], p[None, :], size=(reps, len(strata))) / n[None, :]
    return strata, p.astype(np.float64), draws.astype(np.float64)


def iqm(cells: Cells, reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Interquartile mean (25 % trimmed mean) of per-stratum rates, with a stratified percentile bootstrap.

    rliable's recommended aggregate (Agarwal et al. 2021); computed with ``scipy.stats.trim_mean``.
    Descriptive: its interval is the percentile bootstrap (see :func:`bootstrap_rates`).
    """
    from scipy.stats import trim_mean

    _checks.confidence(confidence)
    _, p, draws = bootstrap_rates(cells, reps, np.random.default_rng(seed))
    dist = trim_mean(draws, 0.25, axis=1)
    lo, hi = np.quantile(dist, [(1 - confidence) / 2, (1 + confidence) / 2])
    n = sum(c[1] for c in cells.values())
    return Estimate(float(trim_mean(p, 0.25)), float(lo), float(hi), len(p), int(n))


def probability_of_improvement(cells_a: Cells, cells_b: Cells, confidence: float = 0.95) -> Estimate:
    """P(A > B): mean over common strata of P(X_A > X_B) + 1/2 P(X_A = X_B) for single rollouts.

    For binary outcomes the per-stratum Mann–Whitney probability is 1/2 (1 + p_A - p_B) (rliable's
    ``probability_of_improvement``, Agarwal et al. 2021), so P(A > B) = 1/2 (1 + mean difference)
    and its interval is the stratified Newcombe interval of the difference, mapped the same way.
    """
    d = mean_difference(cells_a, cells_b, confidence)
    return Estimate(0.5 * (1 + d.value), 0.5 * (1 + d.lo), 0.5 * (1 + d.hi), d.strata, d.trials)


def cmh_over_strata(cells_a: Cells, cells_b: Cells, method: str = "auto") -> float:
    """CMH p-value of arm A vs arm B across their common strata (:func:`lbm.stats.hypotheses.cmh_test`)."""
    tables = [
        np.array([[cells_a[k][0], cells_b[k][0]], [cells_a[k][1] - cells_a[k][0], cells_b[k][1] - cells_b[k][0]]])
        for k in common_strata(cells_a, cells_b)
    ]
    return cmh_test(tables, method)
