"""Group-sequential comparison of two policies with an exact finite-sample type-I guarantee."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from lbm.errors import InputError
from lbm.stats import _checks, _exact


def obrien_fleming_spending(t: np.ndarray, alpha: float) -> np.ndarray:
    """Lan–DeMets O'Brien–Fleming-type alpha spending α(t) = 2 − 2Φ(z_{1−α/2}/√t), t in (0, 1].

    Source: Lan & DeMets (1983), *Biometrika* 70:659–663. Spends almost nothing early, so an early
    stop needs overwhelming evidence and the final look keeps nearly the full α.
    """
    from scipy.stats import norm

    t = np.asarray(t, float)
    return 2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / np.sqrt(t))


def _threshold(z2: np.ndarray, mass: np.ndarray, budget: np.ndarray) -> float:
    """Smallest z^2 threshold c such that, for every null point, mass{z^2 >= c} <= budget.

    ``z2``: (S,) statistic per state; ``mass``: (P, S) probability of reaching each state (still
    running) under each null point; ``budget``: (P,) type-I error still allowed per null point.
    Tied states (equal statistics, see :mod:`lbm.stats._exact`) are rejected together or not at all.
    """
    order = np.argsort(-z2, kind="stable")
    zs = z2[order]
    cum = np.cumsum(mass[:, order], axis=1)  # (P, S): mass of the states with z^2 >= zs[j]
    ties = np.abs(np.diff(zs)) <= _exact.TIE_RTOL * np.maximum(zs[:-1], 1e-300)
    last = np.r_[np.nonzero(~ties)[0], len(zs) - 1]  # last index of each run of tied statistics
    ok = np.all(cum[:, last] <= budget[:, None] + 1e-12, axis=0) & (zs[last] > 0)
    if not ok[0]:
        return math.inf
    k = np.argmin(ok) - 1 if not ok.all() else len(ok) - 1  # feasible sets form a prefix of `last`
    return float(zs[last[k]])


@dataclasses.dataclass(frozen=True)
class SequentialDesign:
    """A two-policy group-sequential design: look after ``looks[k]`` paired trials per policy.

    ``thresholds[k]`` is the |pooled z| at or beyond which look k stops and declares the better
    policy (inf: cannot stop there); ``spent[k]`` the cumulative α allowed by then;
    ``worst_type1`` the exact worst-case type-I error of the whole design over the null grid.
    Decisions compare squared z values from their exact rational form, with tied tables on the same
    side of every threshold, so mirror tables always get the same decision.
    """

    n_max: int
    """Declared maximum number of trials per policy."""
    alpha: float
    """Two-sided family-wise type-I error of the design."""
    looks: tuple[int, ...]
    """Trials per policy at each analysis, increasing, last == n_max."""
    thresholds: tuple[float, ...]
    """|z| stopping boundary per look."""
    spent: tuple[float, ...]
    """Cumulative alpha-spending α(t_k) per look."""
    worst_type1: float
    """Exact max over the null grid of P(stop for a difference at any look)."""

    def decide(self, successes_a: int, successes_b: int, trials: int) -> str:
        """``"A"``/``"B"`` (significantly better, stop), ``"continue"``, or ``"no difference"`` at n_max.

        ``trials`` must be one of :attr:`looks` (trials per policy so far), and the success counts
        whole numbers between 0 and ``trials``.
        """
        if trials not in self.looks:
            raise InputError(
                f"The design analyses only after {list(self.looks)} trials per policy, not {trials}. "
                "Looking at other times voids the type-I guarantee."
            )
        (a, b), _ = _checks.counts([successes_a, successes_b], [trials, trials], "decide")
        k = self.looks.index(trials)
        z2 = float(_exact.pooled_z2(np.int64(a), trials, np.int64(b), trials))
        c = self.thresholds[k]
        if math.isfinite(c) and _exact.at_least(np.array(z2), c * c):
            return "A" if a > b else "B"
        return "no difference" if trials == self.n_max else "continue"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the design (for pre-registration next to the records)."""
        return dataclasses.asdict(self)


def sequential_design(
    n_max: int, looks: int = 5, alpha: float = 0.05, grid: int = 201, progress: bool = False
) -> SequentialDesign:
    """Group-sequential exact unconditional design with Lan–DeMets O'Brien–Fleming spending.

    Method (derived here; not STEP's code): two policies run paired trials; after
    n_k = round(k·n_max/looks) trials per policy compute the pooled two-proportion z. The joint
    distribution of the success counts (x, y) of the still-running comparison is propagated
    *exactly* from look to look (binomial convolution per arm, mass of stopped states removed)
    under every null point p_A = p_B = π of a dense grid. At look k the boundary c_k is the
    smallest |z| such that, for *every* π, the cumulative probability of having stopped for a
    difference is <= α(t_k), the O'Brien–Fleming-type spending at t_k = n_k/n_max (Lan & DeMets
    1983). By induction the probability of ever rejecting under any grid null is <= α, an exact
    finite-sample guarantee. Between grid points the error is a smooth polynomial of π; the
    tests check it off the grid. Boundaries are non-randomized, so the design is conservative.

    Independence of the two arms is assumed; with paired seeds, positively correlated outcomes
    make the difference less variable, so the test stays valid (conservative). With ``looks=1``
    this is Barnard's exact unconditional test. Cost: O(looks·grid·n_max²) time and
    O(grid·n_max²) memory; designs beyond the memory budget are refused up front.
    """
    if int(n_max) != n_max or n_max < 2:
        raise InputError(f"n_max={n_max!r}: a sequential comparison needs a maximum of at least 2 trials per policy.")
    if int(looks) != looks or not 1 <= looks <= n_max:
        raise InputError(f"looks={looks!r} must be a whole number between 1 and n_max={n_max}.")
    _checks.alpha(alpha)
    _exact.check_memory(
        8.0 * grid * (n_max + 1) ** 2 * 4,
        f"A sequential design with n_max={n_max}",
        "Use fewer trials (n_max), a coarser null grid, or a fixed-sample test.",
    )
    ns = sorted({int(round(n_max * (k + 1) / looks)) for k in range(looks)})
    spend = obrien_fleming_spending(np.array(ns) / n_max, alpha)
    nulls = _exact.null_grid(grid)
    rejected = np.zeros(len(nulls))  # cumulative stopping probability per null point
    dist = np.ones((len(nulls), 1, 1))  # P(x, y, still running) per null point: (P, n+1, n+1)
    prev = 0
    thresholds: list[float] = []
    steps: Iterable[tuple[int, int]] = enumerate(ns)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, total=len(ns), desc="sequential design", unit="look", leave=False)
    for k, n in steps:
        dist = _advance(dist, _exact.binom_pmf(n - prev, nulls), n)
        z2 = _exact.pooled_z2_table(n)
        c2 = _threshold(z2.ravel(), dist.reshape(len(nulls), -1), spend[k] - rejected)
        thresholds.append(math.sqrt(c2) if math.isfinite(c2) else math.inf)
        stop = _exact.at_least(z2, c2) if math.isfinite(c2) else np.zeros_like(z2, bool)
        rejected = rejected + dist[:, stop].sum(axis=1)
        dist = dist * ~stop
        prev = n
    return SequentialDesign(
        n_max=n_max,
        alpha=alpha,
        looks=tuple(ns),
        thresholds=tuple(thresholds),
        spent=tuple(float(s) for s in spend),
        worst_type1=float(rejected.max()),
    )


def _advance(dist: np.ndarray, step: np.ndarray, n: int) -> np.ndarray:
    """Add m = n - prev Binomial(m, π) successes to each arm: (P, prev+1, prev+1) -> (P, n+1, n+1).

    T[π, x, x+i] = step[π, i] is the per-arm transition, so the new joint law is Tᵀ · dist · T.
    """
    prev = dist.shape[1] - 1
    trans = np.zeros((dist.shape[0], prev + 1, n + 1))
    for x in range(prev + 1):
        trans[:, x, x : x + n - prev + 1] = step
    return np.matmul(np.matmul(trans.transpose(0, 2, 1), dist), trans)


def simulate_sequential(design: SequentialDesign, p_a: float, p_b: float, reps: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Monte-Carlo operating characteristics of a design: P(stop for A), P(stop for B), mean trials used."""
    rng = np.random.default_rng(seed)
    xa = np.zeros(reps, np.int64)
    xb = np.zeros(reps, np.int64)
    running = np.ones(reps, bool)
    used = np.full(reps, design.n_max)
    win_a = np.zeros(reps, bool)
    win_b = np.zeros(reps, bool)
    prev = 0
    for n, c in zip(design.looks, design.thresholds):
        xa += rng.binomial(n - prev, p_a, reps)
        xb += rng.binomial(n - prev, p_b, reps)
        stop = running & (_exact.at_least(_exact.pooled_z2(xa, n, xb, n), c * c) if math.isfinite(c) else False)
        win_a |= stop & (xa > xb)
        win_b |= stop & (xb > xa)
        used[stop] = n
        running &= ~stop
        prev = n
    return dict(
        p_a_wins=float(win_a.mean()),
        p_b_wins=float(win_b.mean()),
        p_reject=float((win_a | win_b).mean()),
        mean_trials=float(used.mean()),
    )
