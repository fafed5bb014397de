# statsmodels ships no type information (no stubs exist): its few functions used by lbm.stats are
# wrapped here once, with the types lbm relies on, so that the rest of the package type-checks strictly.
# pyright: reportMissingTypeStubs=false, reportUnknownMemberType=false, reportUnknownVariableType=false
# pyright: reportUnknownArgumentType=false
"""Typed wrappers of the statsmodels functions lbm.stats calls."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def proportion_confint(
    count: ArrayLike, nobs: ArrayLike, alpha: float, method: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``statsmodels.stats.proportion.proportion_confint`` as float arrays."""
    from statsmodels.stats.proportion import proportion_confint as confint

    lo, hi = confint(count, nobs, alpha=alpha, method=method)
    return np.asarray(lo, np.float64), np.asarray(hi, np.float64)


def newcombe(s1: int, n1: int, s2: int, n2: int, alpha: float) -> tuple[float, float]:
    """``confint_proportions_2indep(method="newcomb", compare="diff")``."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    lo, hi = confint_proportions_2indep(s1, n1, s2, n2, method="newcomb", compare="diff", alpha=alpha)
    return float(lo), float(hi)


def mcnemar_exact_pvalue(table: list[list[int]]) -> float:
    """``statsmodels.stats.contingency_tables.mcnemar(table, exact=True).pvalue``."""
    from statsmodels.stats.contingency_tables import mcnemar

    return float(mcnemar(table, exact=True).pvalue)  # pyright: ignore[reportAttributeAccessIssue]


def multipletests_adjusted(pvalues: NDArray[np.float64], method: str) -> NDArray[np.float64]:
    """The adjusted p-values of ``statsmodels.stats.multitest.multipletests``."""
    from statsmodels.stats.multitest import multipletests

    return np.asarray(multipletests(pvalues, method=method)[1], np.float64)


class FitError(Exception):
    """statsmodels could not fit the model (perfect separation, a singular design)."""


def binomial_glm(
    y: NDArray[np.float64], x: NDArray[np.float64], groups: NDArray[np.int64] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """``statsmodels.api.GLM(y, x, Binomial()).fit()``: (coefficients, standard errors, log-likelihood); the
    standard errors are cluster-robust by ``groups`` when given. Raises :class:`FitError` when no fit exists."""
    import warnings

    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on near-separated data; the caller checks the result
        try:
            model = sm.GLM(y, x, family=sm.families.Binomial())
            fit = model.fit(cov_type="cluster", cov_kwds=dict(groups=groups)) if groups is not None else model.fit()
        except (PerfectSeparationError, np.linalg.LinAlgError, ValueError) as error:
            raise FitError(type(error).__name__) from None
    return np.asarray(fit.params, np.float64), np.asarray(fit.bse, np.float64), float(fit.llf)
