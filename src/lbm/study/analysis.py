"""The study's answers from its records: per-task tests, data efficiency, robustness, zero-shot.

Every figure is a function of ``records.parquet`` alone (recomputable with :func:`analyze`), and
every statistic comes from :mod:`lbm.stats`: exact Boschloo tests per task, CMH
across tasks, stratified Newcombe (MOVER) intervals for mean differences and the robustness gap,
and the stratified bootstrap only for the discrete "first fraction that reaches" quantity.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import cast

import numpy as np
import pandas as pd

from lbm import stats
from lbm.eval.records import cells
from lbm.study.profiles import StudyConfig


def _rows(df: pd.DataFrame, arm: str, fraction: float | None, shift: str) -> pd.DataFrame:
    """The records of one arm under one condition (at one data fraction, unless None)."""
    sel = (df["arm"] == arm) & (df["shift"] == shift)
    if fraction is not None:
        sel &= (df["data_fraction"] - fraction).abs() < 1e-9
    return df[sel]


def arm_cells(df: pd.DataFrame, arm: str, fraction: float | None, shift: str) -> dict:
    """{task: (successes, n)} of one arm (all its training seeds pooled) under one condition."""
    rows = _rows(df, arm, fraction, shift)
    return {cast(tuple[str], k)[0]: v for k, v in cells(rows.assign(policy=arm), arm, by=("task",)).items()}


def run_cells(df: pd.DataFrame, arm: str, fraction: float | None, shift: str) -> dict:
    """{task: {training seed: (successes, n)}} of one arm under one condition: each training run apart."""
    out: dict = {}
    for (task, seed), g in _rows(df, arm, fraction, shift).groupby(["task", "train_seed"]):
        out.setdefault(task, {})[seed] = (int(g["success"].sum()), len(g))
    return out


def contrast(a: dict, b: dict, confidence: float = 0.95) -> dict:
    """Mean over common tasks of rate_a - rate_b (stratified Newcombe interval) and the CMH test across tasks."""
    common = sorted(set(a) & set(b))
    if not common:
        nan = float("nan")
        return dict(diff=nan, lo=nan, hi=nan, p=nan, tasks=0, rate_a=nan, rate_b=nan)
    a, b = {t: a[t] for t in common}, {t: b[t] for t in common}
    d = stats.mean_difference(a, b, confidence)
    return dict(
        diff=d.value,
        lo=d.lo,
        hi=d.hi,
        p=stats.cmh_over_strata(a, b),
        tasks=len(common),
        rate_a=stats.stratified_mean(a).value,
        rate_b=stats.stratified_mean(b).value,
    )


SCALING_ARMS = {
    "scaling": ("H7", "demonstrations", "Pretraining-data scaling"),
    "task_scaling": ("H8", "tasks", "Pretraining-task scaling"),
}
"""The pretraining-scaling arms: their hypothesis, what their nested fractions are fractions of, their title."""


def scaling_curve(df: pd.DataFrame, arm: str, full: float, n_seeds: int) -> dict:
    """Nominal success of ``arm`` per pretraining fraction, with the main finetuned@100% model as the 100% point:
    stratified Wilson intervals per level, and the stratified logistic trend in log2(fraction) (clustered by
    training run with several seeds; lbm.stats.dose_trend)."""
    sel = df[
        (df["shift"] == "none")
        & ((df["arm"] == arm) | ((df["arm"] == "finetuned") & ((df["data_fraction"] - full).abs() < 1e-9)))
    ]
    levels = []
    for pf, g in sel.groupby("pretrain_fraction"):
        per_task = {t: (int(h["success"].sum()), len(h)) for t, h in g.groupby("task")}
        m = stats.stratified_mean(per_task)
        levels.append(dict(fraction=float(cast(float, pf)), rate=m.value, lo=m.lo, hi=m.hi,
                           s=int(g["success"].sum()), n=len(g)))  # fmt: skip
    runs = list(zip(sel["task"], sel["pretrain_fraction"], sel["train_seed"])) if n_seeds > 1 else None
    trend = stats.dose_trend(sel["pretrain_fraction"].to_numpy(float), sel["success"].to_numpy(int), list(sel["task"]), runs)
    return dict(levels=levels, trend=asdict(trend))


def analyze(df: pd.DataFrame, config: StudyConfig, trials: int, mdd: float) -> dict:
    """The study's answers from its records: per-task tests, data efficiency, robustness, zero-shot."""
    rng = np.random.default_rng(config.subset_seed)
    reps = config.bootstrap_reps
    conditions = ["none", *config.shifts]
    full = max(config.fractions)
    fractions = sorted(config.fractions)
    out: dict = dict(
        trials_per_cell=trials,
        mdd=mdd,
        alpha=config.alpha,
        conditions=conditions,
        fractions=fractions,
        tasks=sorted(df["task"].unique()),
    )

    # Per task and condition: finetuned@100% vs scratch@100% (and zero-shot vs scratch@100%),
    # exact Boschloo tests, decided in the gated secondary Holm family (see gatekeeping()).
    rows = []
    for shift in conditions:
        ft, sc = arm_cells(df, "finetuned", full, shift), arm_cells(df, "scratch", full, shift)
        zs = arm_cells(df, "pretrained", None, shift)
        own = arm_cells(df, "own_robot", full, shift)
        for task in sorted(sc):
            for arm, arm_counts in (("finetuned", ft), ("pretrained", zs), ("own_robot", own)):
                if task not in arm_counts:
                    continue
                (s1, n1), (s2, n2) = arm_counts[task], sc[task]
                lo, hi = stats.newcombe_interval(s1, n1, s2, n2)
                rows.append(
                    dict(
                        task=task,
                        shift=shift,
                        arm=arm,
                        s=s1,
                        n=n1,
                        s_scratch=s2,
                        n_scratch=n2,
                        diff=s1 / n1 - s2 / n2,
                        lo=lo,
                        hi=hi,
                        p=stats.two_proportion_test(s1, n1, s2, n2),
                    )
                )
    out["per_task"] = rows  # adjusted and decided in the gated secondary family (gatekeeping below)

    # Aggregates across held-out tasks per condition (CMH across tasks; stratified Newcombe interval of the mean difference).
    # With several training seeds the headline also treats the training run as the unit of variation
    # (stats.compare_runs: a stratified permutation test over runs and a two-stage bootstrap interval);
    # pooling rollouts across runs would count seed luck as evidence.
    agg = {}
    for shift in conditions:
        sc = arm_cells(df, "scratch", full, shift)
        agg[shift] = dict(
            finetuned_vs_scratch=contrast(arm_cells(df, "finetuned", full, shift), sc),
            zero_shot_vs_scratch=contrast(arm_cells(df, "pretrained", None, shift), sc),
        )
        ft_runs, sc_runs = run_cells(df, "finetuned", full, shift), run_cells(df, "scratch", full, shift)
        if len(config.train_seeds) > 1 and set(ft_runs) & set(sc_runs):
            agg[shift]["finetuned_vs_scratch_runs"] = asdict(stats.compare_runs(ft_runs, sc_runs, reps=reps, rng=rng))
    out["aggregate"] = agg

    # Data efficiency (nominal). Primary: the smallest fraction at which finetuned is non-inferior
    # to scratch@100% (lower bound of the stratified Newcombe interval above -margin). Also:
    # finetuned vs scratch with the same demos at every fraction, and the bootstrap distribution of
    # the smallest fraction whose finetuned mean reaches scratch@100% (rollouts resampled in every cell).
    sc_full = arm_cells(df, "scratch", full, "none")
    per_fraction, draws = [], []
    _, _, b_sc = stats.bootstrap_rates(sc_full, reps, rng)
    for f in fractions:
        ft_cells = arm_cells(df, "finetuned", f, "none")
        if f == full:  # the headline contrast already computed above: one number, one interval
            c = same = agg["none"]["finetuned_vs_scratch"]
        else:
            c = contrast(ft_cells, sc_full)
            same = contrast(ft_cells, arm_cells(df, "scratch", f, "none"))
        _, _, b_ft = stats.bootstrap_rates(ft_cells, reps, rng)
        per_fraction.append(
            dict(
                fraction=f,
                **c,
                noninferior=bool(c["lo"] > -config.noninferiority_margin),
                same_data={k: same[k] for k in ("diff", "lo", "hi", "p", "rate_b") if k in same},
            )
        )
        draws.append(b_ft.mean(axis=1) >= b_sc.mean(axis=1))
    reached = np.array(draws)  # (fractions, reps)
    # When from-scratch at 100% never succeeds, "reaching" it is trivial: no multiplier is defined.
    floor = all(s == 0 for s, _ in sc_full.values())
    point = None if floor else next((f for f, r in zip(fractions, per_fraction) if r["diff"] >= 0), None)
    noninferior = None if floor else next((r["fraction"] for r in per_fraction if r["noninferior"]), None)
    first = np.where(reached.any(axis=0), np.argmax(reached, axis=0), -1)
    boot_f = np.array([fractions[i] if i >= 0 else np.inf for i in first])
    finite = boot_f[np.isfinite(boot_f)]
    out["data_efficiency"] = dict(
        per_fraction=per_fraction,
        scratch_floor=floor,
        margin=config.noninferiority_margin,
        noninferior_fraction=noninferior,
        noninferior_multiplier=(full / noninferior) if noninferior else None,
        fraction=point,
        multiplier=(full / point) if point else None,
        # inverted_cdf returns resampled values themselves, so "not reached" (inf) stays inf, not NaN.
        fraction_interval=[float(np.quantile(boot_f, q, method="inverted_cdf")) for q in (0.025, 0.975)],
        p_reached=float(np.isfinite(boot_f).mean()),
        bootstrap_fraction_distribution={str(f): float(np.mean(boot_f == f)) for f in fractions},
        note="fraction = smallest data fraction at which finetuned mean success >= from-scratch at 100%; "
        "interval = 2.5/97.5 percentiles of that fraction over the stratified bootstrap (inf = not reached)."
        if finite.size
        else "finetuned never reached from-scratch at 100% in the bootstrap.",
    )

    # Robustness: does the finetuned-minus-scratch advantage grow under shift? The change of the
    # advantage is a linear combination of four stratified means: its interval is MOVER's.
    nominal_ft = arm_cells(df, "finetuned", full, "none")
    gaps = []
    for shift in config.shifts:
        ft, sc = arm_cells(df, "finetuned", full, shift), arm_cells(df, "scratch", full, shift)
        common = stats.common_strata(ft, sc, nominal_ft, sc_full)
        means = [stats.stratified_mean({k: c[k] for k in common}) for c in (ft, sc, nominal_ft, sc_full)]
        gap = stats.mover(list(zip((1.0, -1.0, -1.0, 1.0), means)))
        gaps.append(
            dict(
                shift=shift,
                gap=gap.value,
                lo=gap.lo,
                hi=gap.hi,
                advantage_nominal=means[2].value - means[3].value,
                advantage_shift=means[0].value - means[1].value,
            )
        )
    out["robustness"] = gaps

    # Other robots' data vs the held-out robot's own (when the study has the own-robot arm): both
    # pretrained models finetuned on the same demos, at every fraction, nominal conditions.
    if (df["arm"] == "own_robot").any():
        contrasts: list[tuple[float, dict, dict]] = [
            (
                f,
                contrast(arm_cells(df, "finetuned", f, "none"), arm_cells(df, "own_robot", f, "none")),
                contrast(arm_cells(df, "own_robot", f, "none"), arm_cells(df, "scratch", f, "none")),
            )
            for f in fractions
        ]
        out["own_robot"] = [dict(fraction=f, cross_vs_own=cross, own_vs_scratch=own) for f, cross, own in contrasts]

    # Between-seed variation (training randomness is not in the evaluation error bars).
    if len(config.train_seeds) > 1:
        g = df.groupby(["task", "shift", "arm", "data_fraction", "train_seed"])["success"].mean().reset_index()
        spread = g.groupby(["task", "shift", "arm", "data_fraction"])["success"].agg(["mean", "std", "min", "max"])
        out["between_seeds"] = spread.reset_index().to_dict(orient="records")
    # Pretraining scaling: finetuned (100% of the task demos) from nested fractions of the pretraining demos
    # ('scaling') or tasks ('task_scaling'); success against log2(fraction) with a stratified logistic trend.
    for arm in SCALING_ARMS:
        if (df["arm"] == arm).any():
            out[arm] = scaling_curve(df, arm, full, len(config.train_seeds))
    out["headline"] = gatekeeping(out, config)
    out["verdicts"], out["warnings"] = verdicts(out, config)
    out["findings"] = findings(out, config)
    return out


def gatekeeping(a: dict, config: StudyConfig) -> dict:
    """The pre-registered decisions with the whole study's error controlled: serial gatekeeping.

    The primary hypothesis H1 (finetuned vs scratch, mean over tasks, nominal) is tested at alpha.
    Only when it is rejected are the secondary hypotheses tested: the aggregate under each shift,
    every per-task test, the robustness changes, zero-shot and the own-robot contrasts, as one Holm
    family at alpha. This controls the family-wise error over every headline claim at alpha in the
    strong sense (Dmitrienko and Tamhane, "Gatekeeping procedures with clinical trial applications",
    Pharmaceutical Statistics 6, 2007; the serial gatekeeper of Westfall and Krishen, 2001). Checked
    by simulation on null studies in ``tests/test_study.py``. The robustness change has a MOVER
    interval and no exact test: its p-value is read off the interval (Altman and Bland, BMJ 2011).
    Non-inferiority (H3) is gated too; it states non-inferiority at the margin, not a difference.
    """
    from scipy.stats import norm

    alpha = config.alpha
    agg = a["aggregate"]

    def aggregate(shift: str) -> dict:
        return agg[shift].get("finetuned_vs_scratch_runs") or agg[shift]["finetuned_vs_scratch"]

    h1 = aggregate("none")["p"]
    family: list[tuple[str, dict]] = [(f"H1-{s}", aggregate(s)) for s in a["conditions"][1:]]
    family += [(f"H2 {r['arm']} {r['task']} {r['shift']}", r) for r in a["per_task"]]
    for g in a["robustness"]:
        se = (g["hi"] - g["lo"]) / (2 * norm.ppf(0.975))
        g["p"] = float(2 * norm.sf(abs(g["gap"]) / se)) if se > 0 else (1.0 if g["gap"] == 0 else 0.0)
        family.append((f"H4-{g['shift']}", g))
    if agg["none"]["zero_shot_vs_scratch"]["tasks"]:
        family.append(("H5", agg["none"]["zero_shot_vs_scratch"]))
    for r in a.get("own_robot", []):
        family += [(f"H6 {r['fraction']:g} {k}", r[k]) for k in ("cross_vs_own", "own_vs_scratch")]
    family += [(h, a[arm]["trend"]) for arm, (h, *_) in SCALING_ARMS.items() if arm in a]
    family = [(h, d) for h, d in family if math.isfinite(d["p"])]
    tested = bool(h1 <= alpha)
    for (_, d), q in zip(family, stats.adjust_pvalues([d["p"] for _, d in family], "holm") if family else []):
        d["p_holm"], d["tested"] = float(q), tested
    for r in a["per_task"]:
        r["verdict"] = (
            ("better" if r["diff"] > 0 else "worse") if r["p_holm"] <= alpha else "no significant difference"
        ) if r.get("tested") else "not tested (H1 not rejected)"  # fmt: skip
    for g in a["robustness"]:  # per-task wins under the gated family
        for key, shift in (("tasks_better_nominal", "none"), ("tasks_better_shift", g["shift"])):
            g[key] = sum(r["verdict"] == "better" and r["arm"] == "finetuned" and r["shift"] == shift for r in a["per_task"])
    claims = [h for h, d in family if tested and d["p_holm"] <= alpha]
    return dict(primary=dict(id="H1", p=h1, rejected=tested), secondary_tested=tested, secondary=len(family),
                claims=(["H1"] if tested else []) + claims)  # fmt: skip


def rejected_in_family(d: dict, alpha: float) -> bool:
    """Whether a secondary hypothesis was tested and rejected in the gated Holm family (see gatekeeping())."""
    return bool(d.get("tested") and d.get("p_holm", 1.0) <= alpha)


def verdicts(a: dict, config: StudyConfig) -> tuple[list[str], list[str]]:
    """Plain sentences that state only what the tests and intervals support."""
    v, w = [], []
    n_tasks = len(a["tasks"])
    tested = a["headline"]["secondary_tested"]
    gated = "not tested: H1 was not rejected (serial gatekeeping)."

    def decided(d: dict) -> bool:
        return tested and rejected_in_family(d, config.alpha)

    for shift in a["conditions"]:
        label = "nominal conditions" if shift == "none" else f"shift {shift}"
        rows = [r for r in a["per_task"] if r["shift"] == shift and r["arm"] == "finetuned"]
        better = sum(r["verdict"] == "better" for r in rows)
        worse = sum(r["verdict"] == "worse" for r in rows)
        agg = a["aggregate"][shift]["finetuned_vs_scratch"]
        runs = a["aggregate"][shift].get("finetuned_vs_scratch_runs")
        headline = runs or agg
        sig = headline["p"] <= config.alpha if shift == "none" else decided(headline)
        across = (
            f"Across tasks, with each training run as one unit ({runs['runs_a']} finetuned and {runs['runs_b']} "
            f"from-scratch runs), the mean difference is {runs['diff']:+.2f} [95% two-stage bootstrap CI "
            f"{runs['lo']:+.2f}, {runs['hi']:+.2f}], permutation p = {runs['p']:.3g} (smallest attainable "
            f"{runs['min_p']:.3g}; between-seed SD {runs['spread_a']:.2f} finetuned, {runs['spread_b']:.2f} "
            f"from scratch); pooling rollouts over runs, which ignores seed variation, CMH p = {agg['p']:.3g}: "
            if runs
            else f"Across tasks the mean difference is {agg['diff']:+.2f} [95% CI {agg['lo']:+.2f}, {agg['hi']:+.2f}], "
            f"CMH p = {agg['p']:.3g} (one training seed: seed-to-seed variation is not in this test): "
        )
        tag = "[H1, primary] " if shift == "none" else f"[H1-{shift}, secondary] "
        per_task = (
            f"finetuned beats from-scratch (both with 100% of the task demos) on {better}/{len(rows)} held-out tasks, is "
            f"worse on {worse}, and shows no significant difference on {len(rows) - better - worse} (exact Boschloo "
            f"tests in the gated Holm family, alpha {config.alpha:g}). "
            if tested
            else "the per-task tests are secondary and were not tested (H1 was not rejected). "
        )
        ending = ("significant." if sig else "not significant.") if shift == "none" or tested else gated
        v.append(tag + f"Under {label}, " + per_task + across + ending)
        if not sig and not abs(agg["diff"]) >= a["mdd"]:  # also when no difference is detectable (mdd NaN)
            mdd = f"{a['mdd']:.2f}" if math.isfinite(a["mdd"]) else "larger than any possible difference"
            w.append(
                f"Under {label} the observed difference ({agg['diff']:+.2f}) is smaller than the minimum detectable "
                f"difference of one task cell ({mdd} at {a['trials_per_cell']} trials): no significant "
                "difference is not evidence of no difference."
            )
    de = a["data_efficiency"]
    if not tested:
        v.append(f"[H3, secondary] Data efficiency (non-inferiority at margin {de['margin']:.2f}): {gated}")
    elif de["scratch_floor"]:
        v.append(
            "[H3, secondary] Data efficiency: from-scratch with 100% of the demos never succeeded, so matching it says nothing; "
            "no data multiplier is reported (floor effect: train longer or pick easier tasks)."
        )
    else:
        margin = f"margin {de['margin']:.2f}"
        if de["noninferior_fraction"] is not None:
            v.append(
                "[H3, secondary] "
                f"Data efficiency: finetuned with {de['noninferior_fraction']:.0%} of the task demos is non-inferior to "
                f"from-scratch with 100% ({margin}, 95% stratified Newcombe interval): a {de['noninferior_multiplier']:.1f}x "
                "data multiplier."
            )
        else:
            v.append(
                "[H3, secondary] "
                f"Data efficiency: at no fraction tested is finetuned non-inferior to from-scratch with 100% of the "
                f"demos ({margin}), so no data multiplier is supported."
            )
        lo, hi = de["fraction_interval"]
        reach = (
            f"Its mean success first reaches from-scratch-with-100% at {de['fraction']:.0%} (point estimate; "
            f"bootstrap 95% range {lo:.0%} to {'not reached' if hi == float('inf') else f'{hi:.0%}'}, reached in "
            f"{de['p_reached']:.0%} of resamples)."
            if de["fraction"] is not None
            else "Its mean success does not reach from-scratch-with-100% at any fraction (point estimate)."
        )
        same = "; ".join(
            f"{r['fraction']:.0%}: {r['same_data']['diff']:+.2f} [{r['same_data']['lo']:+.2f}, "
            f"{r['same_data']['hi']:+.2f}], CMH p = {r['same_data']['p']:.3g}"
            for r in de["per_fraction"]
        )
        v.append(f"[exploratory] {reach} With the same demos, finetuned minus from-scratch: {same}.")
    for g in a["robustness"]:
        grows = decided(g) and g["gap"] > 0
        shrinks = decided(g) and g["gap"] < 0
        v.append(
            f"[H4-{g['shift']}, secondary] "
            f"Robustness ({g['shift']}): the finetuned advantage is {g['advantage_shift']:+.2f} under shift vs "
            f"{g['advantage_nominal']:+.2f} nominal, a change of {g['gap']:+.2f} [95% CI {g['lo']:+.2f}, {g['hi']:+.2f}]: "
            + (
                "the advantage grows under shift."
                if grows
                else "the advantage shrinks under shift."
                if shrinks
                else "no significant change."
                if tested
                else gated
            )
            + f" Finetuned significantly better on {g['tasks_better_shift']}/{n_tasks} tasks under shift vs "
            f"{g['tasks_better_nominal']}/{n_tasks} nominal."
        )

    def judge(c: dict, what: str) -> str:
        if not tested:
            return "not tested (H1 not rejected)"
        if not decided(c):  # NaN (no common task) is not significant either
            return "no significant difference"
        return f"{what} is " + ("better" if c["diff"] > 0 else "worse")

    nan = float("nan")
    for r in a.get("own_robot", []):
        c, o = r["cross_vs_own"], r["own_vs_scratch"]
        v.append(
            "[H6, secondary] "
            f"Other robots' data vs the held-out robot's own, both finetuned with {r['fraction']:.0%} of the task demos: "
            f"cross-embodiment {c['rate_a']:.2f} vs own-robot {c['rate_b']:.2f}, difference {c['diff']:+.2f} [95% CI "
            f"{c['lo']:+.2f}, {c['hi']:+.2f}], CMH p = {c['p']:.3g} (Holm {c.get('p_holm', nan):.3g}): "
            f"{judge(c, 'cross-embodiment pretraining')}; own-robot pretraining vs from scratch on the same demos: "
            f"{o['diff']:+.2f} [{o['lo']:+.2f}, {o['hi']:+.2f}], CMH p = {o['p']:.3g} (Holm {o.get('p_holm', nan):.3g}): "
            f"{judge(o, 'own-robot pretraining')}."
        )
    for arm, (h, what, title) in SCALING_ARMS.items():
        if arm not in a:
            continue
        t, levels = a[arm]["trend"], a[arm]["levels"]
        curve = "; ".join(
            f"{lv['fraction']:.1%}: {lv['rate']:.2f} [{lv['lo']:.2f}, {lv['hi']:.2f}] ({lv['n']} rollouts)" for lv in levels
        )
        if not tested:
            said = gated
        elif not math.isfinite(t["p"]):
            said = f"no trend can be estimated ({t['note']})."
        elif decided(t):
            direction = "rises" if t["slope"] > 0 else "falls"
            shape = (
                f"and departs from a log-linear trend (a jump or a plateau; departure p = {t['p_departure']:.3g})"
                if math.isfinite(t["p_departure"]) and t["p_departure"] <= config.alpha
                else "with no detectable departure from a smooth log-linear trend"
                + (
                    f" (departure p = {t['p_departure']:.3g}; weak evidence of smoothness at this n)"
                    if math.isfinite(t["p_departure"])
                    else ""
                )
            )
            said = f"success {direction} with the number of pretraining {what} (gated Holm) {shape}."
        else:
            said = f"no significant trend with the number of pretraining {what}."
        v.append(
            f"[{h}, secondary] {title} (finetuned on 100% of the task demos): {curve}. Log-odds "
            f"per doubling {t['slope']:+.2f} [95% CI {t['lo']:+.2f}, {t['hi']:+.2f}], p = {t['p']:.3g}"
            + (" (cluster-robust by training run)" if t["clustered"] else "")
            + f": {said}"
        )
    zs = a["aggregate"]["none"]["zero_shot_vs_scratch"]
    if zs["tasks"]:
        sig = decided(zs)
        v.append(
            f"[H5, secondary] Zero-shot: the pretrained policy without finetuning vs from-scratch-with-100%: {zs['diff']:+.2f} "
            f"[95% CI {zs['lo']:+.2f}, {zs['hi']:+.2f}], CMH p = {zs['p']:.3g}: "
            + (
                (("better" if zs["diff"] > 0 else "worse") + " (gated Holm)." if sig else "no significant difference.")
                if tested
                else gated
            )
        )
    return v, w


MEANINGFUL_SLOPE = 0.5
"""A scaling slope worth seeing, in log-odds per doubling of pretraining data (50% -> 62% per doubling): an
undecided trend whose interval excludes it is 'not supported', one whose interval holds it 'underpowered'."""


def findings(a: dict, config: StudyConfig) -> list[dict]:
    """Per finding of the careful LBM study (seed 001): our measurement, its interval and test, and a plain verdict.

    ``supported``: its pre-registered test decided it in the careful study's direction (``contradicted``: the
    other way); ``not supported``: not decided, and the interval excludes the declared effect (target_p2 -
    target_p1; for the scaling slope, :data:`MEANINGFUL_SLOPE`), so an effect that large would have been seen;
    ``underpowered``: not decided, and the interval still holds it; ``not tested``: gated out (H1 not rejected).
    """
    tested, alpha = a["headline"]["secondary_tested"], config.alpha
    effect = config.target_p2 - config.target_p1

    def verdict(decided: bool, value: float, lo: float, hi: float, sign: int, size: float) -> str:
        if decided:
            return "supported" if value * sign > 0 else "contradicted"
        excluded = hi < size if sign > 0 else lo > -size
        return "not supported" if excluded else "underpowered"

    out = []

    def unmeasured(finding: str, hypothesis: str, why: str) -> dict:  # a finding this study's design leaves out
        return dict(finding=finding, id=hypothesis, value=None, lo=None, hi=None, test="", verdict=f"not measured ({why})")

    agg = a["aggregate"]["none"]
    h1 = agg.get("finetuned_vs_scratch_runs") or agg["finetuned_vs_scratch"]
    test = "permutation test over training runs" if "finetuned_vs_scratch_runs" in agg else "CMH across tasks"
    out.append(dict(finding="Finetuning a pretrained LBM beats single-task training (mean over new tasks, nominal)",
                    id="H1", value=h1["diff"], lo=h1["lo"], hi=h1["hi"], test=f"{test}, p = {h1['p']:.3g}",
                    verdict=verdict(h1["p"] <= alpha, h1["diff"], h1["lo"], h1["hi"], +1, effect)))  # fmt: skip

    de = a["data_efficiency"]
    smallest = de["per_fraction"][0]
    h3 = "Pretraining needs less task data (finetuned on a fraction matches from scratch on 100%)"
    if len(a["fractions"]) < 2:  # the only fraction is 100%: its row would be H1's comparison again
        said = ""
    elif not tested:
        said = "not tested"
    elif de["scratch_floor"]:
        said = "not measurable (from scratch at the floor)"
    elif de["noninferior_fraction"] is not None and de["noninferior_fraction"] < max(a["fractions"]):
        said = "supported"
    else:  # non-inferior nowhere below 100%: underpowered when the smallest fraction's point estimate is within the margin
        said = "underpowered" if smallest["diff"] > -de["margin"] else "not supported"
    multiplier = f"{de['noninferior_multiplier']:.1f}x" if de["noninferior_multiplier"] else "none"
    out.append(dict(finding=h3, id="H3", value=smallest["diff"], lo=smallest["lo"], hi=smallest["hi"],
                    test=f"non-inferiority at margin {de['margin']:.2f} (smallest fraction {smallest['fraction']:.0%} "
                         f"shown); data multiplier {multiplier}", verdict=said)
               if said else unmeasured(h3, "H3", "one data fraction"))  # fmt: skip

    for g in a["robustness"]:
        out.append(dict(finding=f"The finetuned advantage grows under distribution shift ({g['shift']})", id=f"H4-{g['shift']}",
                        value=g["gap"], lo=g["lo"], hi=g["hi"], test=f"MOVER interval, p = {g['p']:.3g} (Holm "
                        f"{g.get('p_holm', float('nan')):.3g})",
                        verdict=verdict(rejected_in_family(g, alpha), g["gap"], g["lo"], g["hi"], +1, effect) if tested
                        else "not tested"))  # fmt: skip

    if not a["robustness"]:
        out.append(unmeasured("The finetuned advantage grows under distribution shift", "H4", "no shift condition"))
    if "scaling" not in a:
        out.append(
            unmeasured("Success rises smoothly with the amount of pretraining data", "H7", "no pretraining-data scaling arm")
        )
    for arm, (h, what, _) in SCALING_ARMS.items():
        if arm not in a:
            continue
        t = a[arm]["trend"]
        said = (
            verdict(rejected_in_family(t, alpha), t["slope"], t["lo"], t["hi"], +1, MEANINGFUL_SLOPE) if tested else "not tested"
        )
        if said == "supported" and math.isfinite(t["p_departure"]) and t["p_departure"] <= alpha:
            said = "supported, not smoothly (departs from log-linear)"
        out.append(dict(finding=f"Success rises smoothly with the number of pretraining {what}", id=h, value=t["slope"],
                        lo=t["lo"], hi=t["hi"], test=f"logistic trend in log2, log-odds per doubling, p = {t['p']:.3g}",
                        verdict=said))  # fmt: skip

    zs = agg["zero_shot_vs_scratch"]
    if zs["tasks"]:
        out.append(dict(finding="Without finetuning, the pretrained policy does not match single-task training on new tasks",
                        id="H5", value=zs["diff"], lo=zs["lo"], hi=zs["hi"], test=f"CMH across tasks, p = {zs['p']:.3g}",
                        verdict=verdict(rejected_in_family(zs, alpha), zs["diff"], zs["lo"], zs["hi"], -1, effect) if tested
                        else "not tested"))  # fmt: skip
    else:
        out.append(unmeasured("Without finetuning, the pretrained policy does not match single-task training on new tasks",
                              "H5", "no zero-shot evaluation"))  # fmt: skip
    return out
