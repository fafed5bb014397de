"""Tests of lbm.eval.stats / compare: reference values, simulated type-I error and coverage, bad input."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lbm.errors import LbmError
from lbm.eval import compare, stats


def synth(rates: dict, tasks=("reach", "push"), shifts=("none",), trials=40, seed=0) -> pd.DataFrame:
    """Synthetic paired records: Bernoulli draws, same (trial, seed) for every policy."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        for shift in shifts:
            for i in range(trials):
                for pol, r in rates.items():
                    p = r[task] if isinstance(r, dict) else r
                    rows.append(dict(policy=pol, task=task, shift=shift, trial=i, seed=10_000 + i,
                                     success=bool(rng.random() < p), steps=100, duration_s=0.1,
                                     failure_reason="", latency_ms=1.0, **{"return": 0.0}))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ reference values


def test_wilson_and_clopper_pearson_reference_values():
    lo, hi = stats.proportion_interval([25], [50], method="wilson")
    assert (lo[0], hi[0]) == pytest.approx((0.3664, 0.6336), abs=1e-4)  # evaluation-methods.md §5.1
    lo, hi = stats.proportion_interval([45], [50])
    assert (lo[0], hi[0]) == pytest.approx((0.7864, 0.9565), abs=1e-3)
    # Wilson by hand (Wilson 1927).
    s, n, z = 7, 20, sps.norm.ppf(0.975)
    ph = s / n
    c = (ph + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = stats.proportion_interval(s, n)
    assert (float(lo), float(hi)) == pytest.approx((c - h, c + h), abs=1e-10)
    for s, n in [(0, 10), (3, 10), (10, 10)]:
        lo, hi = stats.proportion_interval(s, n, method="clopper-pearson")
        ref = sps.binomtest(s, n).proportion_ci(0.95, method="exact")
        assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_beta_posterior_matches_scipy():
    post = stats.beta_posterior(30, 50)
    assert post.mean == pytest.approx(31 / 52)
    assert (post.lo, post.hi) == pytest.approx(tuple(sps.beta(31, 21).ppf([0.025, 0.975])))
    draws = post.samples(20_000, seed=1)
    assert draws.mean() == pytest.approx(post.mean, abs=0.005)
    assert np.array_equal(draws, post.samples(20_000, seed=1))


def test_exact_tests_match_scipy_and_mcnemar_is_binomial():
    for s1, n1, s2, n2 in [(7, 12, 2, 10), (30, 50, 20, 50), (0, 10, 0, 10)]:
        ref_b = sps.boschloo_exact([[s1, s2], [n1 - s1, n2 - s2]]).pvalue
        got = stats.two_proportion_test(s1, n1, s2, n2, "boschloo")
        assert got == pytest.approx(1.0 if np.isnan(ref_b) else ref_b, rel=1e-6)
        ref_ba = sps.barnard_exact([[s1, s2], [n1 - s1, n2 - s2]]).pvalue
        assert stats.two_proportion_test(s2, n2, s1, n1, "barnard") == pytest.approx(
            1.0 if np.isnan(ref_ba) else ref_ba, rel=1e-6)
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 0, 0, 1, 0, 1, 1, 0], bool)
    # Discordant: 5 favour a, 1 favours b -> two-sided binomial(6, 1/2) test.
    assert stats.mcnemar_exact(a, b) == pytest.approx(sps.binomtest(5, 6, 0.5).pvalue)
    assert stats.mcnemar_exact(a, a) == 1.0


def test_newcombe_reference_example():
    # Newcombe (1998), Stat Med 17:873, Table II example (56/70 vs 48/80): method 10 -> (0.0524, 0.3339).
    lo, hi = stats.newcombe_interval(56, 70, 48, 80)
    assert (lo, hi) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_holm_and_bonferroni_by_hand():
    p = [0.01, 0.04, 0.03, 0.2]
    assert stats.adjust_pvalues(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.8])
    # Holm: sorted 0.01*4, 0.03*3, 0.04*2, 0.2*1 with running max.
    assert stats.adjust_pvalues(p, "holm") == pytest.approx([0.04, 0.09, 0.09, 0.2])
    with pytest.raises(LbmError, match="holm"):
        stats.adjust_pvalues(p, "hom")


def test_cmh_matches_statsmodels_and_iqm_poi_by_hand():
    from statsmodels.stats.contingency_tables import StratifiedTable

    tables = [np.array([[20, 10], [20, 30]]), np.array([[35, 28], [5, 12]])]
    ref = StratifiedTable(tables).test_null_odds(correction=True).pvalue
    assert stats.cmh_test(tables) == pytest.approx(ref)
    df = synth({"A": {"reach": 0.9, "push": 0.5}, "B": {"reach": 0.6, "push": 0.5}}, trials=60, seed=3)
    r = df.groupby(["policy", "task"])["success"].mean()
    poi = stats.probability_of_improvement(df, "A", "B", reps=500)
    want = np.mean([0.5 * (1 + r["A", t] - r["B", t]) for t in ("push", "reach")])
    assert poi["value"] == pytest.approx(want)
    assert poi["lo"] <= poi["value"] <= poi["hi"]
    iqm = stats.stratified_bootstrap(df, "iqm", reps=200)
    assert iqm.set_index("policy").loc["A", "value"] == pytest.approx(sps.trim_mean(r["A"].to_numpy(), 0.25))


# ------------------------------------------------------------------ compact letter display


def test_letters_known_example():
    pols = ["A", "B", "C", "D"]
    # A>C, A>D, B>D significant: A,B share; B,C share; C,D share.
    sig = {frozenset("AC"), frozenset("AD"), frozenset("BD")}
    let = stats.compact_letter_display(pols, sig)
    assert let == {"A": "a", "B": "ab", "C": "bc", "D": "c"}
    assert stats.compact_letter_display(pols, set()) == {p: "a" for p in pols}


def test_letters_consistent_with_significance_for_random_patterns():
    rng = np.random.default_rng(0)
    pols = [f"p{i}" for i in range(6)]
    pairs = [frozenset(p) for p in itertools.combinations(pols, 2)]
    for _ in range(200):
        sig = {p for p in pairs if rng.random() < 0.4}
        let = stats.compact_letter_display(pols, sig)
        for pair in pairs:
            a, b = tuple(pair)
            share = bool(set(let[a]) & set(let[b]))
            assert share == (pair not in sig), (sig, let)


# ------------------------------------------------------------------ simulated type-I error and coverage


@pytest.mark.parametrize("test", ["boschloo", "barnard"])
def test_exact_test_type1_error_by_simulation(test):
    rng = np.random.default_rng(1)
    n, reps, alpha = 15, 3000, 0.05
    for p in (0.3, 0.5):
        s = rng.binomial(n, p, size=(reps, 2))  # few distinct tables; p-values are cached
        rej = np.mean([stats.two_proportion_test(int(a), n, int(b), n, test) <= alpha for a, b in s])
        se = math.sqrt(alpha * (1 - alpha) / reps)
        assert rej <= alpha + 3 * se
        assert rej >= 0.01  # conservative, not absurdly so


def test_mcnemar_type1_under_correlated_paired_null():
    rng = np.random.default_rng(2)
    reps, n = 3000, 40
    # Shared seed difficulty makes outcomes correlated; both policies have the same marginal rate.
    hard = rng.random((reps, n)) < 0.5
    a = np.where(hard, rng.random((reps, n)) < 0.3, rng.random((reps, n)) < 0.8)
    b = np.where(hard, rng.random((reps, n)) < 0.3, rng.random((reps, n)) < 0.8)
    rej = np.mean([stats.mcnemar_exact(x, y) <= 0.05 for x, y in zip(a, b)])
    assert 0.01 <= rej <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps)


def test_cmh_type1_with_heterogeneous_tasks():
    rng = np.random.default_rng(3)
    reps, n, base = 2000, 30, np.array([0.1, 0.5, 0.9, 0.7])
    sa = rng.binomial(n, base, size=(reps, 4))
    sb = rng.binomial(n, base, size=(reps, 4))
    rej = np.mean([stats.cmh_test([np.array([[x, y], [n - x, n - y]]) for x, y in zip(ra, rb)]) <= 0.05
                   for ra, rb in zip(sa, sb)])
    assert rej <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps)


@pytest.mark.parametrize("method,tol_low", [("wilson", 0.02), ("clopper-pearson", 0.0)])
def test_interval_coverage(method, tol_low):
    rng = np.random.default_rng(4)
    reps = 20_000
    for n, p in ((50, 0.3), (20, 0.8)):
        s = rng.binomial(n, p, reps)
        lo, hi = stats.proportion_interval(s, np.full(reps, n), 0.95, method)
        cover = np.mean((lo <= p) & (p <= hi))
        assert cover >= 0.95 - tol_low - 0.01
        assert cover <= 0.995
        if method == "wilson":
            assert abs(cover - 0.95) < 0.025


def test_newcombe_coverage():
    rng = np.random.default_rng(5)
    reps, n1, n2, p1, p2 = 3000, 40, 40, 0.6, 0.4
    s1, s2 = rng.binomial(n1, p1, reps), rng.binomial(n2, p2, reps)
    cover = np.mean([lo <= p1 - p2 <= hi for lo, hi in (stats.newcombe_interval(a, n1, b, n2) for a, b in zip(s1, s2))])
    assert abs(cover - 0.95) < 0.025


def test_stratified_bootstrap_coverage_of_mean():
    rng = np.random.default_rng(6)
    true = {"reach": 0.7, "push": 0.4, "pick": 0.2}
    hits = 0
    reps = 150
    for i in range(reps):
        df = synth({"A": true}, tasks=tuple(true), trials=40, seed=int(rng.integers(1 << 30)))
        b = stats.stratified_bootstrap(df, "mean", reps=400, seed=i).iloc[0]
        hits += b.lo <= np.mean(list(true.values())) <= b.hi
    assert 0.88 <= hits / reps <= 0.99


# ------------------------------------------------------------------ sequential design and power


def test_sequential_design_exact_type1_matches_brute_force_and_simulation():
    from scipy.stats import binom

    d = stats.sequential_design(12, looks=3, alpha=0.05, grid=101)
    assert d.looks == (4, 8, 12) and d.worst_type1 <= 0.05

    def exact_reject(p):
        states, prev, total = {(0, 0): 1.0}, 0, 0.0
        for n, c in zip(d.looks, d.thresholds):
            m, new = n - prev, {}
            for (x, y), pr in states.items():
                for i, j in itertools.product(range(m + 1), repeat=2):
                    new[(x + i, y + j)] = new.get((x + i, y + j), 0) + pr * binom.pmf(i, m, p) * binom.pmf(j, m, p)
            states = {}
            for (x, y), pr in new.items():
                if stats._pooled_z(n)[x, y] >= c:
                    total += pr
                else:
                    states[(x, y)] = pr
            prev = n
        return total

    # Off-grid null points: the exact error stays within alpha (and near the grid's worst case).
    worst = max(exact_reject(p) for p in np.linspace(0.013, 0.987, 12))
    assert worst <= 0.05
    assert worst == pytest.approx(d.worst_type1, abs=2e-3)


def test_sequential_design_type1_and_early_stopping_by_simulation():
    d = stats.sequential_design(100, looks=5, alpha=0.05)
    assert d.worst_type1 <= 0.05
    assert all(a >= b for a, b in zip(d.thresholds, d.thresholds[1:]))  # O'Brien–Fleming: strict early
    reps = 40_000
    se = math.sqrt(0.05 * 0.95 / reps)
    for p in (0.15, 0.5, 0.8):
        null = stats.simulate_sequential(d, p, p, reps=reps, seed=int(p * 100))
        assert null["p_reject"] <= 0.05 + 3 * se
    alt = stats.simulate_sequential(d, 0.3, 0.8, reps=5000)
    assert alt["p_b_wins"] > 0.95 and alt["mean_trials"] < 70  # big gaps stop early
    assert d.decide(0, 20, 20) == "B" and d.decide(10, 11, 20) == "continue"
    assert d.decide(50, 50, 100) == "no difference"
    with pytest.raises(LbmError, match="analyses only"):
        d.decide(1, 2, 33)


def test_single_look_design_is_barnard_and_exact_power():
    d = stats.sequential_design(30, looks=1)
    assert d.thresholds[0] == pytest.approx(stats.barnard_rejection_threshold(30))
    # Exact power equals the Monte-Carlo rejection rate of the same rejection region.
    pw = stats.exact_power(0.3, 0.7, 30)
    sim = stats.simulate_sequential(d, 0.3, 0.7, reps=40_000, seed=9)["p_reject"]
    assert sim == pytest.approx(pw, abs=0.012)
    # Null power is the type-I error, which is <= alpha.
    assert stats.exact_power(0.5, 0.5, 30) <= 0.05


def test_power_planner_reference_values():
    # Uncorrected arcsine n for 0.5 vs 0.7 is 93 (evaluation-methods.md §5.3); Fleiss's correction adds
    # n0/4 (1 + sqrt(1 + 4/(n0 d)))^2 - n0.
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    n0 = NormalIndPower().solve_power(proportion_effectsize(0.7, 0.5), alpha=0.05, power=0.8)
    assert math.ceil(n0) == 93
    assert stats.samplesize_approx(0.5, 0.7) == math.ceil(n0 / 4 * (1 + math.sqrt(1 + 4 / (n0 * 0.2))) ** 2)
    n = stats.samplesize_exact(0.5, 0.7)
    assert stats.exact_power(0.5, 0.7, n) >= 0.8 > stats.exact_power(0.5, 0.7, n - 1)
    assert 85 <= n <= 110
    assert stats.min_detectable_difference_approx(50) == pytest.approx(0.27, abs=0.015)  # ≈ 28 pp at 50/arm
    mdd = stats.min_detectable_difference_exact(50)
    assert stats.exact_power(0.5, 0.5 + mdd, 50) >= 0.8 - 1e-9
    with pytest.raises(LbmError, match="p1 equals p2"):
        stats.samplesize_approx(0.5, 0.5)


# ------------------------------------------------------------------ records and bad input


def test_load_records_validation(tmp_path):
    df = synth({"A": 0.5, "B": 0.5}, trials=5)
    df.to_parquet(tmp_path / "r.parquet")
    assert len(stats.load_records(tmp_path)) == len(df)
    df.to_json(tmp_path / "r.jsonl", orient="records", lines=True)
    assert len(stats.load_records(tmp_path / "r.jsonl")) == len(df)
    with pytest.raises(LbmError, match="latency_ms"):
        stats.validate_records(df.drop(columns=["latency_ms"]))
    with pytest.raises(LbmError, match="zero trials"):
        stats.validate_records(df.iloc[:0])
    with pytest.raises(LbmError, match="duplicate"):
        stats.validate_records(pd.concat([df, df.iloc[:1]]))
    reseeded = df.copy()
    reseeded.loc[(reseeded.policy == "B") & (reseeded.trial == 2), "seed"] = 999
    with pytest.raises(LbmError, match="task='push'.*B"):
        stats.validate_records(reseeded)
    with pytest.warns(UserWarning, match="paired"):
        ok = stats.validate_records(reseeded, require_pairing=False)
    with pytest.raises(LbmError, match="McNemar"):
        stats.pairwise_table(ok, test="mcnemar")
    missing = df[~((df.policy == "B") & (df.task == "reach"))]
    with pytest.raises(LbmError, match="no trials for \\['B'\\]"):
        stats.validate_records(missing)
    with pytest.raises(LbmError, match="not found"):
        stats.load_records(tmp_path / "nope")


# ------------------------------------------------------------------ comparison end to end


def test_compare_records_expert_beats_random_and_schema():
    df = stats.validate_records(synth({"expert": 0.9, "random": 0.05}, trials=30, seed=7))
    res = compare.compare_records(df, bootstrap_reps=300)
    assert res["schema_version"] == compare.SCHEMA_VERSION
    json.dumps(res)  # plain JSON
    assert {r["letters"] for r in res["success"] if r["policy"] == "expert"} == {"a"}
    assert {r["letters"] for r in res["success"] if r["policy"] == "random"} == {"b"}
    assert res["verdicts"][0].startswith("expert > random on 2/2 tasks")
    assert res["aggregate"]["pairs"][0]["significant"] and res["aggregate"]["letters"] == {"expert": "a", "random": "b"}
    for r in res["pairwise"]:
        assert r["a"] == "expert" and r["p_adj"] <= 0.05 and r["diff_lo"] > 0


def test_compare_underpowered_warning_and_no_false_claim():
    df = stats.validate_records(synth({"A": 0.55, "B": 0.45}, trials=15, seed=11))
    res = compare.compare_records(df, bootstrap_reps=200, test="mcnemar")
    assert not any(r["significant"] for r in res["pairwise"])
    assert any("no significant difference on 2" in v for v in res["verdicts"])
    assert res["warnings"] and "Underpowered" in res["warnings"][0]


def test_letters_agree_with_pairwise_table():
    df = stats.validate_records(synth({"a": 0.9, "b": 0.6, "c": 0.5, "d": 0.1}, tasks=("t",), trials=40, seed=2))
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
    assert "trials per policy" in text and "minimum detectable" in text
    assert main(["stats", "compare", str(tmp_path), "--test", "bosch"]) == 2
    assert "Did you mean 'boschloo'" in capsys.readouterr().err
