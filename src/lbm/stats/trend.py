"""Trend of success over a dose (e.g. the amount of pretraining data): logistic regression with strata.

The model is ``logit P(success) = a_task + b * x`` with ``x = log2(dose)``, fitted by statsmodels'
binomial GLM on individual rollouts with one intercept per stratum (task), so tasks of different
difficulty do not masquerade as a trend (the stratified dose-response analysis of Breslow and Day,
*Statistical Methods in Cancer Research* I, 1980, ch. 6). ``b`` is the log-odds change per doubling,
with a Wald interval and test; with several training runs per level the standard errors are
cluster-robust by run (Liang and Zeger, 1986), which is anti-conservative with few clusters and is
reported as such. Smoothness is checked against the model with one coefficient per dose level: a
likelihood-ratio test of departure from the log-linear trend (a jump or a plateau shows as a
departure; "no departure" with few levels and rollouts is weak evidence of smoothness).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import chi2, norm

from lbm.errors import InputError
from lbm.stats import _statsmodels


@dataclass(frozen=True)
class Trend:
    """The fitted trend (NaN where the data cannot identify it; ``note`` says why)."""

    slope: float
    """Log-odds change of success per doubling of the dose."""
    lo: float
    hi: float
    p: float
    """Two-sided Wald p of the slope."""
    p_departure: float
    """Likelihood-ratio p of departure from the log-linear trend (NaN with fewer than 3 levels)."""
    levels: int
    strata: int
    rollouts: int
    clustered: bool
    note: str = ""


def _dummies(labels: Sequence[Hashable]) -> NDArray[np.float64]:
    """One column per label but the first (a reference level)."""
    values = sorted(set(labels), key=str)
    return np.array([[float(lab == v) for v in values[1:]] for lab in labels], dtype=np.float64).reshape(len(labels), -1)


def dose_trend(
    dose: ArrayLike,
    success: ArrayLike,
    strata: Sequence[Hashable],
    clusters: Sequence[Hashable] | None = None,
    confidence: float = 0.95,
) -> Trend:
    """Stratified logistic trend of ``success`` (0/1 per rollout) on ``log2(dose)`` (see the module doc)."""
    x = np.asarray(dose, dtype=np.float64)
    y = np.asarray(success, dtype=np.float64)
    if x.shape != y.shape or len(strata) != len(x) or (clusters is not None and len(clusters) != len(x)):
        raise InputError("dose_trend: dose, success, strata (and clusters) must have one entry per rollout.")
    if len(x) == 0 or (x <= 0).any() or not np.isin(y, (0.0, 1.0)).all():
        raise InputError("dose_trend: doses must be positive and successes 0 or 1.")
    # Strata where every rollout succeeded or every one failed say nothing about the slope (and break the fit).
    keep = np.array([0 < y[[s == t for s in strata]].mean() < 1 for t in strata])
    nan = float("nan")
    levels = len(set(x[keep].tolist()))
    kept = [s for s, k in zip(strata, keep) if k]
    if levels < 2 or not kept:
        why = "no task varies in success across the doses: no trend is identified"
        return Trend(nan, nan, nan, nan, nan, len(set(x.tolist())), 0, int(keep.sum()), clusters is not None, why)
    xs, ys = np.log2(x[keep]), y[keep]
    base = np.column_stack([np.ones(len(xs)), _dummies(kept)])
    groups = None
    if clusters is not None:
        groups = np.unique([str(c) for c, k in zip(clusters, keep) if k], return_inverse=True)[1].astype(np.int64)
    try:
        params, bse, _ = _statsmodels.binomial_glm(ys, np.column_stack([base, xs]), groups)
        _, _, llf_linear = _statsmodels.binomial_glm(ys, np.column_stack([base, xs]))
        _, _, llf_levels = _statsmodels.binomial_glm(ys, np.column_stack([base, _dummies(xs.tolist())]))
    except _statsmodels.FitError as error:
        why = f"the logistic fit failed ({error}): too few successes or failures"
        return Trend(nan, nan, nan, nan, nan, levels, len(set(kept)), int(keep.sum()), groups is not None, why)
    slope, se = float(params[-1]), float(bse[-1])
    z = float(norm.ppf(0.5 + confidence / 2))
    departure = float(chi2.sf(max(0.0, 2 * (llf_levels - llf_linear)), levels - 2)) if levels >= 3 else nan
    p = float(2 * norm.sf(abs(slope) / se)) if se > 0 and math.isfinite(se) else nan
    return Trend(slope, slope - z * se, slope + z * se, p, departure, levels=levels, strata=len(set(kept)),
                 rollouts=int(keep.sum()), clustered=groups is not None)  # fmt: skip
