"""Family-wise corrections of p-values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from lbm.errors import InputError
from lbm.stats import _checks, _statsmodels

CORRECTIONS = ("holm", "bonferroni", "none")


def adjust_pvalues(pvalues: Sequence[float] | NDArray[np.float64], method: str = "holm") -> NDArray[np.float64]:
    """Family-wise adjusted p-values: Holm (1979) step-down or Bonferroni; ``none`` returns them as is.

    Computed by ``statsmodels.stats.multitest.multipletests``. Holm controls the family-wise error
    rate like Bonferroni and is never less powerful.
    """
    _checks.choice(method, CORRECTIONS, "correction")
    p = np.asarray(pvalues, np.float64)
    if p.ndim != 1:
        raise InputError(f"adjust_pvalues needs a flat list of p-values, got shape {p.shape}.")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InputError(f"p-values must lie in [0, 1]; got {p[~np.isfinite(p) | (p < 0) | (p > 1)][:5].tolist()}.")
    if p.size == 0 or method == "none":
        return p.copy()
    return _statsmodels.multipletests_adjusted(p, method)
