"""Hypothesis tests: exact unconditional two-sample tests, exact McNemar, stratified CMH.

When to use which
    * ``boschloo`` (default) / ``barnard``: exact unconditional tests for two independent binomial
      samples (Boschloo 1970; Barnard 1945; Mehrotra, Chan & Berger 2003). No pairing assumption,
      type-I error <= alpha at every n. Boschloo is uniformly more powerful than Fisher's exact test.
    * ``mcnemar``: exact McNemar test for paired binary outcomes (McNemar 1947; Agresti 2013
      §11.1). More powerful when the outcomes of two policies on one seed are positively correlated.
    * :func:`cmh_test`: across strata (tasks) of different difficulty, a common odds ratio of 1.

Why the unconditional tests are written here rather than called from scipy: scipy's
``boschloo_exact`` takes minutes per table at n = 2,000 per arm (a global optimizer over a dense
table enumeration), and ``barnard_exact`` splits tables with tied statistics by floating-point
rounding, which makes its p-values too small (scipy issue #19232). Here Boschloo's rejection
region is a cut per row (found by binary search) and Barnard's statistic is computed from its exact
rational form with tie tolerance; the tests check agreement with scipy where scipy is right.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import chi2, hypergeom

from lbm.errors import InputError
from lbm.stats import _checks, _exact, _statsmodels

TWO_SAMPLE_TESTS = ("boschloo", "barnard")
CMH_METHODS = ("auto", "exact", "asymptotic")


@functools.lru_cache(maxsize=65536)
def _unconditional(s1: int, n1: int, s2: int, n2: int, test: str) -> float:
    if s1 + s2 in (0, n1 + n2):  # all failures or all successes: no evidence of a difference
        return 1.0
    if test == "boschloo":
        # Two-sided p = twice the smaller one-sided p (scipy's definition), capped at 1.
        less = _exact.boschloo_one_sided(s1, n1, s2, n2)
        greater = _exact.boschloo_one_sided(s2, n2, s1, n1)
        return float(min(1.0, 2 * min(less, greater)))
    return _barnard(s1, n1, s2, n2)


def _barnard(s1: int, n1: int, s2: int, n2: int) -> float:
    _exact.check_memory(
        8.0 * (n1 + 1) * (n2 + 1) * 3,
        f"Barnard's test at {n1} and {n2} trials",
        "Use the default Boschloo test, whose cost grows linearly with n.",
    )
    x1, x2 = np.arange(n1 + 1), np.arange(n2 + 1)
    z2 = _exact.pooled_z2(x1[:, None], n1, x2[None, :], n2)
    region = _exact.at_least(z2, float(z2[s1, s2])).astype(np.float64)  # (n1+1, n2+1)

    def mass(p: np.ndarray) -> np.ndarray:
        pmf1, pmf2 = _exact.binom_pmf(n1, p), _exact.binom_pmf(n2, p)  # (P, n+1)
        return np.sum(pmf1 * (pmf2 @ region.T), axis=1)

    return _exact.worst_case(mass)


def cache_clear() -> None:
    """Forget the cached two-sample p-values (benchmarks time the computation itself)."""
    _unconditional.cache_clear()


def cache_size() -> int:
    """Tables whose two-sample p-value is cached."""
    return _unconditional.cache_info().currsize


def two_proportion_test(s1: int, n1: int, s2: int, n2: int, test: str = "boschloo") -> float:
    """Two-sided p-value for H0: p1 = p2 from independent binomial counts ``s1/n1`` and ``s2/n2``.

    ``boschloo``: Boschloo's exact unconditional test (Boschloo 1970): tables ordered by Fisher's
    one-sided p-value, two-sided p = twice the smaller one-sided p, as ``scipy.stats.boschloo_exact``.
    ``barnard``: Barnard's exact unconditional test with the pooled-variance z (Barnard 1945;
    Mehrotra et al. 2003), ties handled exactly. Results are cached per table.
    """
    _checks.choice(test, TWO_SAMPLE_TESTS, "two-sample test")
    s1, n1 = _checks.count(s1, n1, "two_proportion_test")
    s2, n2 = _checks.count(s2, n2, "two_proportion_test")
    # Two-sided tests are symmetric under swapping the arms and under swapping successes with failures:
    # computing one canonical table of the four gives mirror tables bit-identical p-values (and more cache hits).
    canonical = min((s1, n1, s2, n2), (s2, n2, s1, n1), (n1 - s1, n1, n2 - s2, n2), (n2 - s2, n2, n1 - s1, n1))
    return _unconditional(*canonical, test)


def mcnemar_exact(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes ``a[i]``, ``b[i]`` (same seed i).

    Only discordant pairs carry information: under H0 the count favouring A is
    Binomial(n_discordant, 1/2) (McNemar 1947; Agresti, *Categorical Data Analysis*, 3rd ed.,
    §11.1.4). Computed by ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``.
    """
    x, y = _binary(a, "a"), _binary(b, "b")
    if x.shape != y.shape or x.ndim != 1:
        raise InputError(
            f"McNemar's test needs two equally long outcome vectors paired by seed; got shapes {x.shape} and {y.shape}."
        )
    n10, n01 = int(np.sum(x & ~y)), int(np.sum(~x & y))
    if n10 + n01 == 0:
        return 1.0
    return _statsmodels.mcnemar_exact_pvalue([[int(np.sum(x & y)), n10], [n01, int(np.sum(~x & ~y))]])


def _binary(x: ArrayLike, name: str) -> NDArray[np.bool_]:
    arr: NDArray[np.generic] = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr.astype(bool)
    if arr.dtype.kind in "iuf" and np.all(np.isin(arr, (0, 1))):
        return arr.astype(bool)
    raise InputError(f"McNemar's test needs binary outcomes (bool or 0/1) in {name}; got {arr.ravel()[:5].tolist()}.")


def cmh_test(tables: Sequence[ArrayLike], method: str = "auto") -> float:
    """Two-sided Cochran–Mantel–Haenszel p-value across strata of 2x2 tables ``[[s1, s2], [f1, f2]]``.

    Tests a common odds ratio of 1 while every stratum (task, shift) keeps its own base rate
    (Mantel & Haenszel 1959; Agresti 2013 §6.4). Columns are the two arms. Strata with an empty arm,
    or with no successes or no failures at all, carry no information and are dropped.

    ``asymptotic``: the continuity-corrected statistic max(|S| - 1/2, 0)^2 / V, with S the sum over
    strata of the first cell minus its null expectation and V the sum of hypergeometric variances;
    statsmodels' ``test_null_odds(correction=True)`` uses (|S| - 1/2)^2 even when |S| < 1/2, which
    inflates identical arms and tiny strata. ``exact``: the exact conditional test (the
    distribution of the sum of first cells given all margins, a convolution of hypergeometrics;
    two-sided p = mass of outcomes no more likely than the observed one, as R's
    ``mantelhaen.test(exact = TRUE)``). ``auto`` (default): asymptotic when the Mantel–Fleiss
    criterion (distance of the expected sum from both of its bounds >= 5; Mantel & Fleiss 1980)
    holds, exact otherwise, so small or unbalanced strata never rely on the chi-square approximation.
    """
    _checks.choice(method, CMH_METHODS, "CMH method")
    strata: list[tuple[int, int, int, int]] = []
    for k, t in enumerate(tables):
        arr: NDArray[np.generic] = np.asarray(t)
        if arr.shape != (2, 2):
            raise InputError(f"CMH stratum {k} must be a 2x2 table [[s1, s2], [f1, f2]], got shape {arr.shape}.")
        cells, _ = _checks.counts(arr, np.full(arr.shape, np.iinfo(np.int64).max), f"CMH stratum {k}")
        s1, s2, f1, f2 = (int(v) for v in cells.ravel())
        n1, n2, m = s1 + f1, s2 + f2, s1 + s2
        if n1 == 0 or n2 == 0 or m == 0 or m == n1 + n2:
            continue
        strata.append((s1, n1, n2, m))
    if not strata:
        return 1.0
    a = np.array([s[0] for s in strata], float)
    n1 = np.array([s[1] for s in strata], float)
    n2 = np.array([s[2] for s in strata], float)
    m = np.array([s[3] for s in strata], float)
    N = n1 + n2
    expected = m * n1 / N
    if method == "auto":
        low, high = np.maximum(0, m - n2).sum(), np.minimum(m, n1).sum()
        method = "asymptotic" if min(expected.sum() - low, high - expected.sum()) >= 5 else "exact"
    if method == "asymptotic":
        variance = (m * (N - m) * n1 * n2 / (N * N * (N - 1))).sum()
        S = abs(a.sum() - expected.sum())
        return float(chi2.sf(max(float(S) - 0.5, 0.0) ** 2 / float(variance), 1))
    return _cmh_exact(strata)


def _cmh_exact(strata: list[tuple[int, int, int, int]]) -> float:
    dist = np.ones(1)
    offset = 0
    observed = 0
    for s1, n1, n2, m in strata:
        lo, hi = max(0, m - n2), min(m, n1)
        pmf = np.asarray(hypergeom.pmf(np.arange(lo, hi + 1), n1 + n2, m, n1), np.float64)
        dist = np.convolve(dist, pmf)
        offset += lo
        observed += s1
    p_obs = dist[observed - offset]
    return float(min(1.0, dist[dist <= p_obs * (1 + 1e-7)].sum()))
