"""lbm.stats and lbm.eval.compare: reference values, simulated type-I error and coverage, exact corners, bad input.

Every statistic is checked against scipy / statsmodels or a brute-force computation, its error
rates by simulation, and every class of bad input by a table of cases.
"""

from __future__ import annotations

import itertools
import json
import math
import tracemalloc
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lbm import stats
from lbm.errors import InputError, LbmError
from lbm.eval import compare
from lbm.eval.records import cells, validate_records
from lbm.stats import _exact


def synth(rates: dict, tasks=("reach", "push"), shifts=("none",), trials=40, seed=0) -> pd.DataFrame:
    """Synthetic paired records: Bernoulli draws, same (trial, seed) for every policy."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        for shift in shifts:
            for i in range(trials):
                for pol, r in rates.items():
                    p = r[task] if isinstance(r, dict) else r
                    rows.append(
                        dict(
                            policy=pol,
                            task=task,
                            shift=shift,
                            trial=i,
                            seed=10_000 + i,
                            success=bool(rng.random() < p),
                            steps=100,
                            duration_s=0.1,
                            failure_reason="",
                            latency_ms=1.0,
                            **{"return": 0.0},
                        )
                    )
    return pd.DataFrame(rows)


def se(rate: float, reps: int) -> float:
    return math.sqrt(rate * (1 - rate) / reps)


# ------------------------------------------------------------------ reference values


def test_wilson_and_clopper_pearson_reference_values():
    lo, hi = stats.proportion_interval([25], [50], method="wilson")
    assert (lo[0], hi[0]) == pytest.approx((0.3664, 0.6336), abs=1e-4)  # evaluation-methods.md §5.1
    s, n, z = 7, 20, sps.norm.ppf(0.975)
    ph = s / n
    c = (ph + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = stats.proportion_interval(s, n)
    assert (float(lo), float(hi)) == pytest.approx((c - h, c + h), abs=1e-10)
    assert stats.wilson(ph, n) == pytest.approx((c - h, c + h), abs=1e-12)
    for s, n in [(0, 10), (3, 10), (10, 10)]:
        lo, hi = stats.proportion_interval(s, n, method="clopper-pearson")
        ref = sps.binomtest(s, n).proportion_ci(0.95, method="exact")
        assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_beta_posterior_matches_scipy():
    post = stats.beta_posterior(30, 50)
    assert post.mean == pytest.approx(31 / 52)
    assert (post.lo, post.hi) == pytest.approx(tuple(sps.beta(31, 21).ppf([0.025, 0.975])))
    assert np.array_equal(post.samples(2000, seed=1), post.samples(2000, seed=1))


def test_newcombe_reference_example():
    # Newcombe (1998), Stat Med 17:873, Table II example (56/70 vs 48/80): method 10 -> (0.0524, 0.3339).
    assert stats.newcombe_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    # The stratified Newcombe interval (MOVER of two Wilson intervals) is Newcombe's on one stratum.
    d = stats.mean_difference({"t": (56, 70)}, {"t": (48, 80)})
    assert (d.lo, d.hi) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_holm_and_bonferroni_by_hand():
    p = [0.01, 0.04, 0.03, 0.2]
    assert stats.adjust_pvalues(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.8])
    assert stats.adjust_pvalues(p, "holm") == pytest.approx([0.04, 0.09, 0.09, 0.2])
    with pytest.raises(LbmError, match="holm"):
        stats.adjust_pvalues(p, "hom")


# ------------------------------------------------------------------ exact two-sample tests


SMALL_TABLES = [(s1, n1, s2, n2) for n1 in (1, 3, 6) for n2 in (2, 5) for s1 in range(n1 + 1) for s2 in range(n2 + 1)]


def _brute_force(s1, n1, s2, n2, statistic) -> float:
    """Worst null mass of {tables at least as extreme}, with exact rational statistics and a fine grid."""
    obs = statistic(s1, s2)
    region = [(a, b) for a in range(n1 + 1) for b in range(n2 + 1) if statistic(a, b) >= obs]
    ps = np.linspace(1e-6, 1 - 1e-6, 20001)
    return float(max(sum(sps.binom.pmf(a, n1, ps) * sps.binom.pmf(b, n2, ps) for a, b in region)))


def _pooled_z2_fraction(n1, n2):
    def z2(a, b):
        N, t = n1 + n2, a + b
        return Fraction(0) if t in (0, N) else Fraction(N * (a * n2 - b * n1) ** 2, n1 * n2 * t * (N - t))

    return z2


def test_boschloo_equals_scipy_on_every_small_table():
    worst = 0.0
    for s1, n1, s2, n2 in SMALL_TABLES:
        ref = sps.boschloo_exact([[s1, s2], [n1 - s1, n2 - s2]]).pvalue
        ref = 1.0 if np.isnan(ref) else ref
        worst = max(worst, abs(stats.two_proportion_test(s1, n1, s2, n2) - ref))
    assert worst < 1e-6


def test_barnard_is_exact_with_ties_where_scipy_is_too_small():
    """Barnard's p-value equals the brute-force worst case over tables with |z| >= observed (exact ties);
    scipy's splits tied tables by float rounding and is sometimes smaller (never larger) than that."""
    below = 0
    for s1, n1, s2, n2 in SMALL_TABLES:
        got = stats.two_proportion_test(s1, n1, s2, n2, "barnard")
        assert got == pytest.approx(_brute_force(s1, n1, s2, n2, _pooled_z2_fraction(n1, n2)), abs=2e-6)
        ref = sps.barnard_exact([[s1, s2], [n1 - s1, n2 - s2]]).pvalue
        ref = 1.0 if np.isnan(ref) else ref
        assert got >= ref - 1e-6
        below += ref < got - 1e-4
    assert below > 0  # the tie problem exists in this table: the comparison is not vacuous


@pytest.mark.parametrize("test", ["boschloo", "barnard"])
def test_mirror_tables_get_identical_p_values(test):
    for s1, n1, s2, n2 in SMALL_TABLES:
        p = stats.two_proportion_test(s1, n1, s2, n2, test)
        assert stats.two_proportion_test(n1 - s1, n1, n2 - s2, n2, test) == p  # failures <-> successes
        assert stats.two_proportion_test(s2, n2, s1, n1, test) == p  # arms swapped
    z2 = _exact.pooled_z2_table(30)
    assert np.array_equal(z2, z2[::-1, ::-1]) and np.array_equal(z2, z2.T)  # bit-identical mirrors


def test_boschloo_is_fast_at_large_n():
    """scipy's boschloo_exact takes minutes at n = 2,000 per arm; the cut-per-row form takes about a second."""
    p = stats.two_proportion_test(1000, 2000, 1060, 2000)
    z = (0.53 - 0.5) / math.sqrt(0.515 * 0.485 * 2 / 2000)
    assert p == pytest.approx(2 * sps.norm.sf(z), rel=0.15)  # large n: close to the normal approximation


@pytest.mark.parametrize("test", ["boschloo", "barnard"])
def test_exact_test_type1_error_by_simulation(test):
    rng = np.random.default_rng(1)
    n, reps, alpha = 15, 3000, 0.05
    for p in (0.3, 0.5):
        s = rng.binomial(n, p, size=(reps, 2))
        rej = np.mean([stats.two_proportion_test(int(a), n, int(b), n, test) <= alpha for a, b in s])
        assert 0.01 <= rej <= alpha + 3 * se(alpha, reps)


def test_mcnemar_is_binomial_and_keeps_type1_under_correlated_null():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 0, 0, 1, 0, 1, 1, 0], bool)
    assert stats.mcnemar_exact(a, b) == pytest.approx(sps.binomtest(5, 6, 0.5).pvalue)
    assert stats.mcnemar_exact(a, a) == 1.0
    rng = np.random.default_rng(2)
    reps, n = 3000, 40
    hard = rng.random((reps, n)) < 0.5
    x = np.where(hard, rng.random((reps, n)) < 0.3, rng.random((reps, n)) < 0.8)
    y = np.where(hard, rng.random((reps, n)) < 0.3, rng.random((reps, n)) < 0.8)
    rej = np.mean([stats.mcnemar_exact(u, v) <= 0.05 for u, v in zip(x, y)])
    assert 0.01 <= rej <= 0.05 + 3 * se(0.05, reps)


# ------------------------------------------------------------------ CMH


def test_cmh_continuity_correction_and_exact_corners():
    from statsmodels.stats.contingency_tables import StratifiedTable

    # Large strata, |S| >= 1/2: the asymptotic corrected statistic is statsmodels'.
    tables = [np.array([[20, 10], [20, 30]]), np.array([[35, 28], [5, 12]])]
    ref = StratifiedTable(tables).test_null_odds(correction=True).pvalue
    assert stats.cmh_test(tables, "asymptotic") == pytest.approx(ref)
    assert stats.cmh_test(tables) == pytest.approx(ref)  # auto: Mantel-Fleiss holds here
    # Identical arms: S = 0, so the corrected statistic is 0 and p = 1 (statsmodels: (0 - 1/2)^2 -> p ~ 0.7).
    same = [np.array([[3, 3], [7, 7]]), np.array([[9, 9], [1, 1]])]
    assert stats.cmh_test(same, "asymptotic") == 1.0 and stats.cmh_test(same) == 1.0
    assert StratifiedTable(same).test_null_odds(correction=True).pvalue < 0.8  # the defect being fixed
    # 1/60 vs 0/2 is no evidence of anything.
    assert stats.cmh_test([np.array([[1, 0], [59, 2]])]) == pytest.approx(1.0, abs=1e-12)
    # Exact conditional test: equals an enumeration of the conditional law of sum(a_k).
    small = [np.array([[3, 0], [1, 4]]), np.array([[2, 1], [0, 3]])]
    law = {}
    for a1 in range(0, 4):  # stratum 1: N=8, 3 successes, arm 1 draws 4
        for a2 in range(0, 3):  # stratum 2: N=6, 3 successes, arm 1 draws 2
            pr = sps.hypergeom.pmf(a1, 8, 3, 4) * sps.hypergeom.pmf(a2, 6, 3, 2)
            law[a1 + a2] = law.get(a1 + a2, 0) + pr
    p_obs = law[5]
    want = sum(p for p in law.values() if p <= p_obs * (1 + 1e-7))
    assert stats.cmh_test(small, "exact") == pytest.approx(want)
    assert stats.cmh_test(small) == pytest.approx(want)  # auto: small strata use the exact test


@pytest.mark.parametrize("method", ["auto", "exact"])
def test_cmh_type1_with_unbalanced_and_heterogeneous_strata(method):
    """Under the null with arms of 2 vs 60 trials (statsmodels' correction rejected 14 % at alpha 0.05)."""
    rng = np.random.default_rng(3)
    reps = 2000
    for sizes, base in (((2, 60), [0.05, 0.3, 0.6]), ((30, 30), [0.1, 0.5, 0.9, 0.7])):
        n1, n2 = sizes
        rej = 0
        for _ in range(reps):
            x, y = rng.binomial(n1, base), rng.binomial(n2, base)
            rej += stats.cmh_test([np.array([[a, b], [n1 - a, n2 - b]]) for a, b in zip(x, y)], method) <= 0.05
        assert rej / reps <= 0.05 + 3 * se(0.05, reps), (sizes, rej / reps)


# ------------------------------------------------------------------ intervals across strata


def test_stratified_wilson_keeps_coverage_near_the_ceiling():
    """Mean over 5 tasks with rates near 1: the percentile bootstrap covers ~0.92; the stratified Wilson >= 0.94."""
    rng = np.random.default_rng(6)
    truth = np.array([0.95, 0.97, 0.9, 1.0, 0.93])
    n, reps = 20, 2000
    target = truth.mean()
    wilson_hits = boot_hits = 0
    for _ in range(reps):
        counts = {k: (int(s), n) for k, s in enumerate(rng.binomial(n, truth))}
        m = stats.stratified_mean(counts)
        wilson_hits += m.lo <= target <= m.hi
        _, _, draws = stats.bootstrap_rates(counts, 400, rng)
        lo, hi = np.quantile(draws.mean(1), [0.025, 0.975])
        boot_hits += lo <= target <= hi
    assert wilson_hits / reps >= 0.94
    assert boot_hits / reps < wilson_hits / reps  # the defect that motivated the change


def test_stratified_wilson_and_mover_coverage_in_the_middle():
    rng = np.random.default_rng(7)
    ta, tb = np.array([0.7, 0.4, 0.2]), np.array([0.5, 0.45, 0.1])
    n, reps = 30, 2000
    cover_mean = cover_diff = 0
    for _ in range(reps):
        a = {k: (int(s), n) for k, s in enumerate(rng.binomial(n, ta))}
        b = {k: (int(s), n) for k, s in enumerate(rng.binomial(n, tb))}
        m = stats.stratified_mean(a)
        d = stats.mean_difference(a, b)
        cover_mean += m.lo <= ta.mean() <= m.hi
        cover_diff += d.lo <= ta.mean() - tb.mean() <= d.hi
    assert 0.93 <= cover_mean / reps <= 0.985
    assert 0.93 <= cover_diff / reps <= 0.99


def test_aggregates_use_only_common_strata():
    a = {("t1", "none"): (8, 10), ("t2", "none"): (5, 10)}
    b = {("t2", "none"): (2, 10), ("t3", "none"): (9, 10)}
    d = stats.mean_difference(a, b)
    assert d.value == pytest.approx(0.3) and d.strata == 1
    assert stats.probability_of_improvement(a, b).value == pytest.approx(0.5 * 1.3)
    with pytest.raises(InputError, match="share no stratum"):
        stats.mean_difference({"x": (1, 2)}, {"y": (1, 2)})
    # Through the records: --allow-unpaired with disjoint tasks is refused, overlapping ones use the overlap.
    df = pd.concat([synth({"A": 0.8}, tasks=("reach",), trials=10), synth({"B": 0.2}, tasks=("push",), trials=10)])
    with pytest.warns(UserWarning):
        loose = validate_records(df, require_pairing=False)
    with pytest.raises(LbmError, match="share no"):
        compare.compare_records(loose, bootstrap_reps=50)


# ------------------------------------------------------------------ letters


def test_letters_known_example_and_consistency():
    pols = ["A", "B", "C", "D"]
    sig = {frozenset("AC"), frozenset("AD"), frozenset("BD")}
    assert stats.compact_letter_display(pols, sig) == {"A": "a", "B": "ab", "C": "bc", "D": "c"}
    assert stats.compact_letter_display(pols, set()) == {p: "a" for p in pols}
    rng = np.random.default_rng(0)
    pols = [f"p{i}" for i in range(6)]
    pairs = [frozenset(p) for p in itertools.combinations(pols, 2)]
    for _ in range(200):
        sig = {p for p in pairs if rng.random() < 0.4}
        let = stats.compact_letter_display(pols, sig)
        for pair in pairs:
            a, b = tuple(pair)
            assert bool(set(let[a]) & set(let[b])) == (pair not in sig)


def _insert_and_absorb(policies, significant):
    """Piepho's (2004) algorithm as published, for reference: the letter groups it converges to."""
    cols = [set(policies)]
    for pair in significant:
        a, b = tuple(pair)
        while any(a in c and b in c for c in cols):
            c = next(c for c in cols if a in c and b in c)
            cols.remove(c)
            cols.extend([c - {a}, c - {b}])
            cols = [
                x
                for i, x in enumerate(cols)
                if x and not any((x < y) or (x == y and j < i) for j, y in enumerate(cols) if j != i)
            ]
    return sorted(sorted(c) for c in cols)


def test_letter_groups_are_those_of_insert_and_absorb():
    rng = np.random.default_rng(5)
    pols = [f"p{i}" for i in range(7)]
    pairs = [frozenset(p) for p in itertools.combinations(pols, 2)]
    for _ in range(200):
        sig = {p for p in pairs if rng.random() < 0.4}
        let = stats.compact_letter_display(pols, sig)
        groups = sorted(sorted(p for p in pols if ch in let[p]) for ch in set("".join(let.values())))
        assert groups == _insert_and_absorb(pols, sig)


def test_letters_beyond_26_groups_stay_unambiguous():
    pols = [f"p{i:02d}" for i in range(40)]
    sig = {frozenset(p) for p in itertools.combinations(pols, 2)}  # all differ: 40 groups
    let = stats.compact_letter_display(pols, sig)
    assert all(len(v) == 1 for v in let.values()) and len(set(let.values())) == 40  # one character each
    with pytest.raises(InputError, match="52"):
        stats.compact_letter_display(
            [f"q{i}" for i in range(53)], {frozenset(p) for p in itertools.combinations([f"q{i}" for i in range(53)], 2)}
        )


# ------------------------------------------------------------------ sequential design


def test_sequential_design_exact_type1_matches_brute_force():
    d = stats.sequential_design(12, looks=3, alpha=0.05, grid=101)
    assert d.looks == (4, 8, 12) and d.worst_type1 <= 0.05

    def exact_reject(p):
        states, prev, total = {(0, 0): 1.0}, 0, 0.0
        for n in d.looks:
            m, new = n - prev, {}
            for (x, y), pr in states.items():
                for i, j in itertools.product(range(m + 1), repeat=2):
                    new[(x + i, y + j)] = new.get((x + i, y + j), 0) + pr * sps.binom.pmf(i, m, p) * sps.binom.pmf(j, m, p)
            states = {}
            for (x, y), pr in new.items():
                if d.decide(x, y, n) in ("A", "B"):
                    total += pr
                else:
                    states[(x, y)] = pr
            prev = n
        return total

    worst = max(exact_reject(p) for p in np.linspace(0.013, 0.987, 12))
    assert worst <= 0.05 and worst == pytest.approx(d.worst_type1, abs=2e-3)


def test_sequential_decisions_are_mirror_symmetric_and_standard_z_keeps_alpha():
    """Tables with mathematically equal |z| get the same decision; the published |z| thresholds applied with
    the textbook float formula never reject more than alpha (computed exactly over the final look)."""
    d = stats.sequential_design(40, looks=1, alpha=0.05)
    n, c = 40, d.thresholds[0]
    for x in range(n + 1):
        for y in range(n + 1):
            v = d.decide(x, y, n)
            assert d.decide(n - x, n - y, n) == {"A": "B", "B": "A"}.get(v, v) or v == "no difference"
            assert d.decide(y, x, n) == {"A": "B", "B": "A"}.get(v, v)
    x = np.arange(n + 1)[:, None] / n
    y = np.arange(n + 1)[None, :] / n
    pbar = (x + y) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.nan_to_num(np.abs(y - x) / np.sqrt(pbar * (1 - pbar) * 2 / n))
    region = z >= c  # a user's standard computation
    worst = max(
        float(np.sum(np.outer(sps.binom.pmf(np.arange(n + 1), n, p), sps.binom.pmf(np.arange(n + 1), n, p))[region]))
        for p in _exact.null_grid(401)
    )
    assert worst <= 0.05 + 1e-9


def test_sequential_design_type1_early_stopping_and_bad_looks():
    d = stats.sequential_design(100, looks=5, alpha=0.05)
    assert d.worst_type1 <= 0.05 and all(a >= b for a, b in zip(d.thresholds, d.thresholds[1:]))
    reps = 40_000
    for p in (0.15, 0.5, 0.8):
        assert stats.simulate_sequential(d, p, p, reps=reps, seed=int(p * 100))["p_reject"] <= 0.05 + 3 * se(0.05, reps)
    alt = stats.simulate_sequential(d, 0.3, 0.8, reps=5000)
    assert alt["p_b_wins"] > 0.95 and alt["mean_trials"] < 70
    assert d.decide(0, 20, 20) == "B" and d.decide(10, 11, 20) == "continue" and d.decide(50, 50, 100) == "no difference"
    for bad, needle in (
        ((1, 2, 33), "analyses only"),
        ((21, 0, 20), "exceed"),
        ((-1, 0, 20), "negative"),
        ((1.5, 0, 20), "whole"),
        ((float("nan"), 0, 20), "NaN"),
    ):
        with pytest.raises(InputError, match=needle):
            d.decide(*bad)


# ------------------------------------------------------------------ power


def test_planner_uses_the_test_that_is_run():
    """0.8 vs 0.95: Barnard-based planning said 72 trials; Boschloo, the test that is run, needs 76."""
    n = stats.samplesize_exact(0.8, 0.95)
    assert n == 76
    assert stats.exact_power(0.8, 0.95, n) >= 0.8 > stats.exact_power(0.8, 0.95, n - 1)
    # The exact power equals the rejection rate of two_proportion_test itself on simulated counts.
    rng = np.random.default_rng(8)
    reps = 2000
    a, b = rng.binomial(n, 0.8, reps), rng.binomial(n, 0.95, reps)
    rate = np.mean([stats.two_proportion_test(int(x), n, int(y), n) <= 0.05 for x, y in zip(a, b)])
    assert rate == pytest.approx(stats.exact_power(0.8, 0.95, n), abs=3 * se(0.8, reps))
    # Boschloo's region at level alpha keeps alpha exactly: its null power is <= alpha everywhere.
    assert max(stats.exact_power(p, p, 30) for p in (0.05, 0.3, 0.5, 0.77)) <= 0.05


def test_power_reference_values_and_barnard_option():
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    n0 = NormalIndPower().solve_power(proportion_effectsize(0.7, 0.5), alpha=0.05, power=0.8)
    assert math.ceil(n0) == 93
    assert stats.samplesize_approx(0.5, 0.7) == math.ceil(n0 / 4 * (1 + math.sqrt(1 + 4 / (n0 * 0.2))) ** 2)
    n = stats.samplesize_exact(0.5, 0.7)
    assert stats.exact_power(0.5, 0.7, n) >= 0.8 > stats.exact_power(0.5, 0.7, n - 1) and 85 <= n <= 110
    d = stats.sequential_design(30, looks=1)
    pw = stats.exact_power(0.3, 0.7, 30, test="barnard")
    assert stats.simulate_sequential(d, 0.3, 0.7, reps=40_000, seed=9)["p_reject"] == pytest.approx(pw, abs=0.012)
    with pytest.raises(LbmError, match="p1 equals p2"):
        stats.samplesize_approx(0.5, 0.5)


def test_detectable_difference_direction_follows_its_name():
    """From a baseline below 0.5 the rise is larger than the drop; "increase" must report the rise."""
    up = stats.min_detectable_difference_approx(50, baseline=0.2)
    down = stats.min_detectable_difference_approx(50, baseline=0.2, direction="decrease")
    assert up > down > 0
    assert stats.min_detectable_difference_approx(50, baseline=0.2, direction="either") == down
    # The rise is what an arcsine power calculation at (0.2, 0.2 + up) says is detectable with power 0.8.
    h = abs(2 * math.asin(math.sqrt(0.2 + up)) - 2 * math.asin(math.sqrt(0.2)))
    assert sps.norm.cdf(h * math.sqrt(50 / 2) - sps.norm.ppf(0.975)) == pytest.approx(0.8, abs=1e-6)
    assert math.isnan(stats.min_detectable_difference_approx(10, baseline=0.97))  # no room to rise
    mdd = stats.min_detectable_difference_exact(50)
    assert stats.exact_power(0.5, 0.5 + mdd, 50) >= 0.8 - 1e-9


def test_planner_memory_is_bounded():
    """0.01 vs 0.02 needs ~2,400 trials per arm; the enumeration of (n+1)^2 tables was killed at 21 GB."""
    tracemalloc.start()
    try:
        power = stats.exact_power(0.01, 0.02, 2413)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert power == pytest.approx(0.80, abs=0.01)
    assert peak < 300 * 2**20
    with pytest.raises(InputError, match="GiB"):
        stats.sequential_design(5000, looks=5)
    with pytest.raises(InputError, match="trials per policy"):
        stats.samplesize_exact(0.5, 0.5001)


# ------------------------------------------------------------------ bad input, by class


BAD_COUNTS = [
    ((11, 10), "exceed"),
    ((-1, 10), "negative"),
    ((2.5, 10), "whole"),
    ((float("nan"), 10), "NaN"),
    ((3, 0), "at least one trial"),
    ((3, float("inf")), "NaN or infinite"),
    (("3", 10), "numbers"),
]


@pytest.mark.parametrize("counts, needle", BAD_COUNTS, ids=[n for _, n in BAD_COUNTS])
def test_bad_counts_are_clear_value_errors_everywhere(counts, needle):
    s, n = counts
    calls = [
        lambda: stats.proportion_interval(s, n),
        lambda: stats.beta_posterior(s, n),
        lambda: stats.two_proportion_test(s, n, 1, 5),
        lambda: stats.newcombe_interval(1, 5, s, n),
        lambda: stats.stratified_mean({"t": (s, n)}),
    ]
    for call in calls:
        with pytest.raises(InputError, match=needle):
            call()
    assert issubclass(InputError, ValueError)


BAD_OTHER = [
    (lambda: stats.cmh_test([np.array([[1, -2], [3, 4]])]), "negative"),
    (lambda: stats.cmh_test([np.array([1, 2, 3])]), "2x2"),
    (lambda: stats.adjust_pvalues([0.1, 1.5]), r"\[0, 1\]"),
    (lambda: stats.adjust_pvalues([float("nan")]), r"\[0, 1\]"),
    (lambda: stats.mcnemar_exact([1, 2], [0, 1]), "binary"),
    (lambda: stats.mcnemar_exact([1, 0], [0, 1, 1]), "equally long"),
    (lambda: stats.proportion_interval(3, 10, confidence=1.2), "confidence"),
    (lambda: stats.two_proportion_test(1, 5, 2, 5, "boschlo"), "Did you mean"),
    (lambda: stats.sequential_design(1), "at least 2"),
    (lambda: stats.exact_power(1.2, 0.5, 10), r"\[0, 1\]"),
    (lambda: stats.min_detectable_difference_approx(0), "at least one trial"),
    (lambda: stats.compact_letter_display(["a", "b"], {frozenset("ax")}), "two of the policies"),
    (lambda: stats.stratified_mean({}), "no strata"),
]


@pytest.mark.parametrize("call, needle", BAD_OTHER, ids=[n for _, n in BAD_OTHER])
def test_other_bad_arguments_are_clear_errors(call, needle):
    with pytest.raises(LbmError, match=needle):
        call()


# ------------------------------------------------------------------ comparison end to end


def test_compare_records_expert_beats_random_and_schema():
    df = validate_records(synth({"expert": 0.9, "random": 0.05}, trials=30, seed=7))
    res = compare.compare_records(df, bootstrap_reps=300)
    assert res["schema_version"] == compare.SCHEMA_VERSION
    json.dumps(res)
    assert {r["letters"] for r in res["success"] if r["policy"] == "expert"} == {"a"}
    assert {r["letters"] for r in res["success"] if r["policy"] == "random"} == {"b"}
    assert res["verdicts"][0].startswith("expert > random on 2/2 tasks")
    pair = res["aggregate"]["pairs"][0]
    assert pair["significant"] and pair["cells"] == 2 and pair["diff_lo"] > 0
    assert res["aggregate"]["letters"] == {"expert": "a", "random": "b"}
    for r in res["pairwise"]:
        assert r["a"] == "expert" and r["p_adj"] <= 0.05 and r["diff_lo"] > 0
    # The per-policy mean is the stratified Wilson interval of the per-cell counts.
    m = stats.stratified_mean(cells(df, "expert"))
    got = next(r for r in res["aggregate"]["policies"] if r["policy"] == "expert")
    assert (got["mean"], got["mean_lo"], got["mean_hi"]) == pytest.approx((m.value, m.lo, m.hi))


def test_compare_underpowered_warning_and_no_false_claim():
    df = validate_records(synth({"A": 0.55, "B": 0.45}, trials=15, seed=11))
    res = compare.compare_records(df, bootstrap_reps=200, test="mcnemar")
    assert not any(r["significant"] for r in res["pairwise"])
    assert any("no significant difference on 2" in v for v in res["verdicts"])
    assert res["warnings"] and "Underpowered" in res["warnings"][0]


def test_letters_agree_with_pairwise_table():
    df = validate_records(synth({"a": 0.9, "b": 0.6, "c": 0.5, "d": 0.1}, tasks=("t",), trials=40, seed=2))
    res = compare.compare_records(df, bootstrap_reps=200, correction="bonferroni")
    let = {r["policy"]: r["letters"] for r in res["success"]}
    for r in res["pairwise"]:
        assert bool(set(let[r["a"]]) & set(let[r["b"]])) == (not r["significant"])


def test_cli_compare_json_and_plan(tmp_path, capsys):
    from lbm.cli import main

    synth({"expert": 0.9, "random": 0.1}, trials=20).to_parquet(tmp_path / "records.parquet")
    assert main(["stats", "compare", str(tmp_path), "--json", "--bootstrap-reps", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema_version"] == compare.SCHEMA_VERSION
    assert main(["stats", "plan", "--p1", "0.5", "--p2", "0.8", "--trials", "40"]) == 0
    text = capsys.readouterr().out
    assert "trials per policy" in text and "minimum detectable" in text and "Boschloo" in text
    assert main(["stats", "compare", str(tmp_path), "--test", "bosch"]) == 2
    assert "boschloo" in capsys.readouterr().err
