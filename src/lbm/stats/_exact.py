"""Exact unconditional machinery: the composite null, its worst case, and the tests' statistics.

An exact unconditional test of H0: p1 = p2 computes, for a rejection region R, the worst case over
the nuisance rate pi of P_pi(R) = sum over tables in R of Binomial(x1; n1, pi) Binomial(x2; n2, pi).
The worst case is found on a dense grid in pi (denser near 0 and 1, where binomials change fastest)
and refined around the best grid points by a bounded scalar search, as scipy does with its global
optimizer (the mass is a polynomial in pi, smooth between grid points).

Ties. Two tables whose statistics are mathematically equal must land on the same side of every
threshold. The pooled z statistic is therefore computed from its exact rational form (integer
numerator and denominator, identical for mirror tables), and every comparison with a threshold
allows a relative tolerance of ``TIE_RTOL``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize_scalar
from scipy.stats import binom, hypergeom

from lbm.errors import InputError

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

TIE_RTOL = 1e-12
"""Statistics within this relative distance are ties (scipy uses 1e-13 for Boschloo's Fisher p)."""
GRID_POINTS = 201
MEMORY_BUDGET_BYTES = 2 * 2**30
"""Largest working set an exact enumeration may allocate; bigger designs are refused up front."""


def null_grid(points: int = GRID_POINTS) -> Floats:
    """Nuisance rates in (0, 1): a sin^2 map of a uniform grid (dense near 0 and 1)."""
    u = np.linspace(0, np.pi / 2, points)
    return np.clip(np.sin(u) ** 2, 1e-9, 1 - 1e-9)


def null_grid_for(n: int) -> Floats:
    """A grid fine enough for n trials per arm: at least 4 points per standard deviation of the peak.

    pi = sin^2(u) is the variance-stabilizing map, so a rate estimated from n trials has standard
    deviation about 1 / (2 sqrt(n)) in u everywhere; a uniform u-grid with spacing 1 / (8 sqrt(n))
    misses the maximum of a smooth null-mass curve by under 1 % of its height.
    """
    return null_grid(max(GRID_POINTS, int(np.ceil(4 * np.pi * np.sqrt(n))) + 1))


def binom_pmf(n: int, ps: ArrayLike) -> Floats:
    """``(P, n + 1)`` Binomial(n, p) pmfs for the rates ``ps``."""
    return np.asarray(binom.pmf(np.arange(n + 1)[None, :], n, np.asarray(ps, np.float64)[:, None]), np.float64)


def worst_case(mass: Callable[[Floats], Floats], grid: Floats | None = None, refine: int = 3) -> float:
    """Max over pi in (0, 1) of ``mass(pi)`` (vectorized over pi): grid, then refinement of the best points."""
    grid = null_grid() if grid is None else grid
    values = mass(grid)
    best = float(values.max())
    # Refine around the highest local maxima of the grid (usually one peak).
    padded = np.r_[-np.inf, values, -np.inf]
    peaks = np.flatnonzero((values >= padded[:-2]) & (values >= padded[2:]))
    for i in peaks[np.argsort(-values[peaks])][:refine]:
        lo, hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
        if hi - lo < 1e-12:
            continue
        res = minimize_scalar(
            lambda p: -float(mass(np.array([p]))[0]), bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
        )
        best = max(best, -float(res.fun))  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
    return min(1.0, best)


def check_memory(nbytes: float, what: str, hint: str) -> None:
    """Refuse a computation whose working set exceeds :data:`MEMORY_BUDGET_BYTES`."""
    if nbytes > MEMORY_BUDGET_BYTES:
        raise InputError(
            f"{what} would need about {nbytes / 2**30:.1f} GiB of memory (budget {MEMORY_BUDGET_BYTES / 2**30:.0f} GiB). {hint}"
        )


# ---- the pooled z statistic (Barnard's test, the sequential design) --------------------------------


def pooled_z2(x1: ArrayLike, n1: int, x2: ArrayLike, n2: int) -> Floats:
    """Squared pooled two-proportion z of tables (x1/n1, x2/n2), from its exact rational form.

    z^2 = N (x1 n2 - x2 n1)^2 / (n1 n2 t (N - t)), t = x1 + x2, N = n1 + n2; 0 where t is 0 or N.
    Numerator and denominator are integers, identical for a table and its mirrors, so mirror tables
    get bit-identical statistics.
    """
    x1, x2 = np.asarray(x1, np.int64), np.asarray(x2, np.int64)
    N = n1 + n2
    t = x1 + x2
    d = (x1 * n2 - x2 * n1).astype(np.float64)
    den = (np.int64(n1 * n2) * t * (N - t)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = np.where(den > 0, N * d * d / np.where(den > 0, den, 1.0), 0.0)
    return z2


def pooled_z2_table(n: int) -> Floats:
    """``(n + 1, n + 1)`` squared pooled z of every table with n trials per arm."""
    x = np.arange(n + 1)
    return pooled_z2(x[:, None], n, x[None, :], n)


def at_least(stat: ArrayLike, threshold: float) -> NDArray[np.bool_]:
    """``stat >= threshold`` with ties (relative :data:`TIE_RTOL`) counted as equal."""
    return np.asarray(stat) >= threshold * (1 - TIE_RTOL)


# ---- Boschloo: tables ordered by Fisher's one-sided p-value ---------------------------------------


def fisher_less(x1: ArrayLike, n1: int, x2: ArrayLike, n2: int) -> Floats:
    """Fisher's one-sided p-value P(X1 <= x1 | X1 + X2 = x1 + x2) for "arm 1 is worse"."""
    a, b = np.asarray(x1, np.int64), np.asarray(x2, np.int64)
    return np.asarray(hypergeom.cdf(a, n1 + n2, a + b, n1), np.float64)


def fisher_cuts(n1: int, n2: int, f: float, lo: Ints | None = None, hi: Ints | None = None) -> Ints:
    """``cut[x1]``: the smallest x2 whose table has Fisher p <= ``f`` (n2 + 1 when none).

    For fixed x1, P(X1 <= x1 | t) falls as x2 (hence t) grows, because the conditional law of X1
    is stochastically increasing in t; so the tables of row x1 with p <= f are x2 >= cut[x1], and
    a vectorized binary search finds every cut. ``lo``/``hi`` bracket the answer when known (the
    cuts of a larger and a smaller f), so only rows whose bracket is open are evaluated.
    """
    x1 = np.arange(n1 + 1)
    lo = np.zeros(n1 + 1, np.int64) if lo is None else lo.copy()
    hi = np.full(n1 + 1, n2 + 1, np.int64) if hi is None else hi.copy()
    limit = f * (1 + TIE_RTOL)
    while True:
        rows = np.flatnonzero(lo < hi)
        if rows.size == 0:
            return lo
        mid = (lo[rows] + hi[rows]) // 2  # <= n2 because mid < hi <= n2 + 1
        ok = fisher_less(x1[rows], n1, mid, n2) <= limit
        hi[rows[ok]] = mid[ok]
        lo[rows[~ok]] = mid[~ok] + 1


def region_mass(cuts: Ints, n1: int, n2: int, p1: ArrayLike, p2: ArrayLike) -> Floats:
    """P(X2 >= cuts[X1]) for X1 ~ Bin(n1, p1), X2 ~ Bin(n2, p2), vectorized over paired rates."""
    q1, q2 = np.atleast_1d(np.asarray(p1, np.float64)), np.atleast_1d(np.asarray(p2, np.float64))
    pmf1 = np.asarray(binom.pmf(np.arange(n1 + 1)[None, :], n1, q1[:, None]), np.float64)
    tail2 = np.asarray(binom.sf(cuts[None, :] - 1, n2, q2[:, None]), np.float64)
    return np.sum(pmf1 * tail2, axis=1)


def boschloo_one_sided(s1: int, n1: int, s2: int, n2: int) -> float:
    """Boschloo's one-sided p-value for "arm 1 is worse": the worst null mass of {Fisher p <= observed}."""
    f_obs = float(fisher_less(s1, n1, s2, n2))
    cuts = fisher_cuts(n1, n2, f_obs)
    return worst_case(lambda p: region_mass(cuts, n1, n2, p, p), null_grid_for(max(n1, n2)))


def boschloo_cuts_at_level(n1: int, n2: int, level: float) -> Ints:
    """Cuts of the largest one-sided Boschloo rejection region whose worst null mass is <= ``level``.

    The region {Fisher p <= f} grows with f, and so does its worst null mass, so the largest
    admissible f is found by bisection in log f. Each step's cuts are bracketed by those of the
    bracket's ends, and the search stops once the tables still undecided are one tie group, which
    is left out (that keeps the level). Memory and time are O(n · grid) per step.
    """
    grid = null_grid_for(max(n1, n2))
    pmf1 = binom_pmf(n1, grid)  # (P, n1 + 1)
    tail2 = np.asarray(binom.sf(np.arange(-1, n2 + 1)[None, :], n2, grid[:, None]), np.float64)  # [:, c] = P(X2 >= c)

    def feasible(c: Ints) -> bool:
        on_grid = float(np.sum(pmf1 * tail2[:, c], axis=1).max())
        if on_grid > level:
            return False
        if on_grid <= 0.98 * level:  # the grid's miss is below 1 % of the peak (null_grid_for)
            return True
        return worst_case(lambda p: region_mass(c, n1, n2, p, p), grid) <= level

    lo, hi = -700.0, 0.0  # ln f: e^-700 excludes every table with a positive p-value
    c_lo = fisher_cuts(n1, n2, float(np.exp(lo)))
    if not feasible(c_lo):
        return np.full(n1 + 1, n2 + 1, np.int64)
    c_hi = np.zeros(n1 + 1, np.int64)  # f = 1: every table, mass 1
    for _ in range(200):
        rows = np.flatnonzero(c_hi < c_lo)
        undecided = int(np.sum(c_lo[rows] - c_hi[rows]))
        if undecided <= 64:
            xs = np.repeat(rows, c_lo[rows] - c_hi[rows])
            ys = np.concatenate([np.arange(int(a), int(b)) for a, b in zip(c_hi[rows], c_lo[rows])])
            f = fisher_less(xs, n1, ys, n2)
            if f.max() <= f.min() * (1 + TIE_RTOL):
                return c_lo
        mid = (lo + hi) / 2
        c = fisher_cuts(n1, n2, float(np.exp(mid)), lo=c_hi, hi=c_lo)
        # Most bisection steps land on a region already judged: no worst-case search for those.
        if np.array_equal(c, c_lo) or (not np.array_equal(c, c_hi) and feasible(c)):
            lo, c_lo = mid, c
        else:
            hi, c_hi = mid, c
    return c_lo
