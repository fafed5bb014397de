"""Comparison of policies from rollout records: tables, letters, verdicts, and the JSON schema.

Records become per-cell counts here (:func:`lbm.eval.records.cells`); every number comes from
:mod:`lbm.stats`. This module decides what to say, never how to compute.

JSON schema (``lbm stats compare RECORDS --json``), version :data:`SCHEMA_VERSION`::

    {
      "schema_version": "2.0",
      "settings": {"test": "boschloo|barnard|mcnemar", "correction": "holm|bonferroni|none",
                   "family": "cell|study", "alpha": float, "confidence": float,
                   "interval": "wilson|clopper-pearson", "bootstrap_reps": int, "seed": int},
      "policies": [str, ...],                      # sorted names
      "cells": [{"task": str, "shift": str}, ...], # shift "none" = nominal conditions
      "success": [{"policy", "task", "shift",
                   "n": int, "successes": int, "rate": float,
                   "lo": float, "hi": float,                       # confidence interval (settings.interval)
                   "post_mean": float, "post_lo": float, "post_hi": float,  # Beta(1+s, 1+f) posterior
                   "letters": str,                                 # compact letter display within the cell
                   "failure_reasons": {reason: count}}, ...],
      "pairwise": [{"task", "shift", "a": str, "b": str,           # a = policy with the higher rate
                    "n_a", "s_a", "n_b", "s_b": int, "rate_a", "rate_b": float,
                    "diff": float, "diff_lo": float, "diff_hi": float,  # rate_a - rate_b, Newcombe CI
                    "p": float, "p_adj": float, "significant": bool,
                    "mdd": float}, ...],                           # min detectable difference at this n
      "aggregate": {"test": "cmh|mcnemar",
                    "policies": [{"policy", "cells": int, "trials": int,
                                  "mean", "mean_lo", "mean_hi",     # stratified Wilson interval
                                  "iqm", "iqm_lo", "iqm_hi": float, # stratified percentile bootstrap
                                  "letters": str}, ...],
                    "pairs": [{"a", "b", "cells": int,             # cells both policies have
                               "diff", "diff_lo", "diff_hi",        # mean difference, stratified Newcombe
                               "p", "p_adj", "significant",
                               "poi", "poi_lo", "poi_hi"}, ...],   # poi = P(a > b), rliable
                    "letters": {policy: str}},
      "verdicts": [str, ...],   # sentences that say only what the tests support
      "warnings": [str, ...]    # underpowered comparisons, pairing problems
    }

Policies that share a letter are not separated at family-wise level alpha; policies that share
no letter differ significantly.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lbm import stats
from lbm.errors import InputError, LbmError, did_you_mean
from lbm.eval.records import CELL, cells, check_pairing

SCHEMA_VERSION = "2.0"
TESTS = ("boschloo", "barnard", "mcnemar")
FAMILIES = ("cell", "study")


def cell_label(task: str, shift: str) -> str:
    """Human label of a (task, shift) cell: the task alone under nominal conditions."""
    return task if shift in ("none", "") else f"{task} [{shift}]"


def success_table(df: pd.DataFrame, confidence: float = 0.95, method: str = "wilson", by: Sequence[str] = CELL) -> pd.DataFrame:
    """Per (policy, *by) row: n, successes, rate, interval, Beta posterior mean and interval, failure reasons."""
    from scipy.stats import beta

    keys = ["policy", *by]
    t = df.groupby(keys, sort=True)["success"].agg(n="size", successes="sum").reset_index()
    t["successes"] = t["successes"].astype(int)
    t["rate"] = t["successes"] / t["n"]
    t["lo"], t["hi"] = stats.proportion_interval(t["successes"].to_numpy(), t["n"].to_numpy(), confidence, method)
    a, b = 1 + t["successes"], 1 + t["n"] - t["successes"]
    t["post_mean"] = a / (a + b)
    t["post_lo"] = beta.ppf((1 - confidence) / 2, a, b)
    t["post_hi"] = beta.ppf((1 + confidence) / 2, a, b)
    failed = df[df["failure_reason"].fillna("").astype(str) != ""]
    reasons = failed.groupby(keys)["failure_reason"].value_counts()
    index: dict[tuple[Any, ...], dict[str, int]] = {tuple(k): {} for k in t[keys].itertuples(index=False)}
    for key, count in reasons.items():
        parts = tuple(key) if isinstance(key, tuple) else (key,)
        index[parts[:-1]][str(parts[-1])] = int(count)
    t["failure_reasons"] = pd.Series([index[tuple(k)] for k in t[keys].itertuples(index=False)], index=t.index)
    return t


def pairwise_table(
    df: pd.DataFrame,
    test: str = "boschloo",
    correction: str = "holm",
    alpha: float = 0.05,
    confidence: float = 0.95,
    family: str = "cell",
    progress: bool = False,
) -> pd.DataFrame:
    """Every pair of policies in every (task, shift) cell: counts, difference, Newcombe CI, raw/adjusted p, MDD.

    ``a`` is the policy with the higher rate. ``family="cell"`` adjusts over the K(K-1)/2 pairs of
    each cell (the TRI LBM convention, matching per-task letters); ``family="study"`` over all
    pairs of all cells. ``mdd``: the smaller of the detectable rise and drop from the pooled rate at
    the realized n (power 0.8, Bonferroni level of the family), the optimistic value used to warn.
    """
    if test not in TESTS:
        raise did_you_mean(test, TESTS, "test")
    if family not in FAMILIES:
        raise did_you_mean(family, FAMILIES, "family")
    if test == "mcnemar" and check_pairing(df):
        raise LbmError(
            "McNemar's test needs paired trials, but the records are not paired (see the pairing warning). "
            "Use --test boschloo, or complete the missing trials."
        )
    rows = []
    groups = list(df.groupby(list(CELL), sort=True))
    if progress:
        from tqdm import tqdm

        groups = tqdm(groups, desc="pairwise tests", unit="cell", leave=False)
    for (task, shift), g in groups:
        counts = g.groupby("policy")["success"].agg(["size", "sum"])
        outcomes = {p: gp.sort_values(["trial", "seed"])["success"].to_numpy() for p, gp in g.groupby("policy")}
        pols = sorted(counts.index)
        for i, first in enumerate(pols):
            for second in pols[i + 1 :]:
                (n1, s1), (n2, s2) = (tuple(int(v) for v in counts.loc[p]) for p in (first, second))
                # a is the better policy of the pair
                (pa, na, sa), (pb, nb, sb) = sorted([(first, n1, s1), (second, n2, s2)], key=lambda r: -r[2] / r[1])
                p = (
                    stats.mcnemar_exact(outcomes[pa], outcomes[pb])
                    if test == "mcnemar"
                    else stats.two_proportion_test(sa, na, sb, nb, test)
                )
                lo, hi = stats.newcombe_interval(sa, na, sb, nb, confidence)
                rows.append(
                    dict(
                        task=task,
                        shift=shift,
                        a=pa,
                        b=pb,
                        n_a=na,
                        s_a=sa,
                        n_b=nb,
                        s_b=sb,
                        rate_a=sa / na,
                        rate_b=sb / nb,
                        diff=sa / na - sb / nb,
                        diff_lo=lo,
                        diff_hi=hi,
                        p=p,
                    )
                )
    columns = ["task", "shift", "a", "b", "n_a", "s_a", "n_b", "s_b", "rate_a", "rate_b", "diff", "diff_lo", "diff_hi", "p"]
    t = pd.DataFrame(rows, columns=columns)
    if t.empty:
        for c in ("p_adj", "significant", "mdd"):
            t[c] = pd.Series(dtype=float)
        return t
    if family == "cell":
        t["p_adj"] = t.groupby(list(CELL), sort=False)["p"].transform(lambda p: stats.adjust_pvalues(p.to_numpy(), correction))
        m = t.groupby(list(CELL), sort=False)["p"].transform("size")
    else:
        t["p_adj"] = stats.adjust_pvalues(t["p"].to_numpy(), correction)
        m = pd.Series(len(t), index=t.index)
    t["significant"] = t["p_adj"] <= alpha
    level = alpha / m if correction != "none" else pd.Series(alpha, index=t.index)
    pooled = (t["s_a"] + t["s_b"]) / (t["n_a"] + t["n_b"])
    t["mdd"] = [
        stats.min_detectable_difference_approx(int(min(na, nb)), a, baseline=float(pb), direction="either")
        for na, nb, a, pb in zip(t["n_a"], t["n_b"], level, pooled)
    ]
    return t


def aggregate(
    df: pd.DataFrame,
    test: str = "boschloo",
    correction: str = "holm",
    alpha: float = 0.05,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Across cells: per policy the mean (stratified Wilson) and IQM (stratified bootstrap) of per-cell rates;
    per pair, over the cells both policies have, the mean difference (stratified Newcombe), P(A > B), a
    stratified test (CMH; exact McNemar on pooled discordant pairs with ``test="mcnemar"``), adjusted over
    pairs, and the across-task letters. A pair with no cell in common is an error."""
    pols = sorted(df["policy"].unique())
    counts = {p: cells(df, p) for p in pols}
    policies = []
    for p in pols:
        m = stats.stratified_mean(counts[p], confidence)
        q = stats.iqm(counts[p], reps, confidence, seed)
        policies.append(
            dict(
                policy=p,
                cells=m.strata,
                trials=m.trials,
                mean=m.value,
                mean_lo=m.lo,
                mean_hi=m.hi,
                iqm=q.value,
                iqm_lo=q.lo,
                iqm_hi=q.hi,
            )
        )
    rates = {r["policy"]: r["mean"] for r in policies}
    pairs = []
    for i, pa in enumerate(pols):
        for pb in pols[i + 1 :]:
            a, b = (pa, pb) if rates[pa] >= rates[pb] else (pb, pa)
            try:
                common = stats.common_strata(counts[a], counts[b])
            except InputError:
                raise LbmError(
                    f"Policies {a!r} and {b!r} share no (task, shift) cell, so no aggregate can compare them; "
                    "evaluate them on the same tasks and shifts."
                ) from None
            ca: dict[Hashable, tuple[int, int]] = {k: counts[a][k] for k in common}
            cb: dict[Hashable, tuple[int, int]] = {k: counts[b][k] for k in common}
            if test == "mcnemar":
                key = ["task", "shift", "trial", "seed"]
                both = df[df.policy == a][key + ["success"]].merge(df[df.policy == b][key + ["success"]], on=key)
                p = stats.mcnemar_exact(both["success_x"].to_numpy(), both["success_y"].to_numpy())
            else:
                p = stats.cmh_over_strata(ca, cb)
            d = stats.mean_difference(ca, cb, confidence)
            poi = stats.probability_of_improvement(ca, cb, confidence)
            pairs.append(
                dict(
                    a=a,
                    b=b,
                    cells=len(common),
                    diff=d.value,
                    diff_lo=d.lo,
                    diff_hi=d.hi,
                    p=p,
                    poi=poi.value,
                    poi_lo=poi.lo,
                    poi_hi=poi.hi,
                )
            )
    for r, q in zip(pairs, stats.adjust_pvalues([r["p"] for r in pairs], correction)):
        r["p_adj"] = float(q)
        r["significant"] = bool(q <= alpha)
    let = stats.letters([(r["a"], r["b"], r["p_adj"]) for r in pairs], rates, alpha) if pols else {}
    for r in policies:
        r["letters"] = let.get(r["policy"], "")
    return dict(policies=policies, pairs=pairs, letters=let, test="mcnemar" if test == "mcnemar" else "cmh")


def compare_records(
    df: pd.DataFrame,
    test: str = "boschloo",
    correction: str = "holm",
    alpha: float = 0.05,
    confidence: float = 0.95,
    interval: str = "wilson",
    family: str = "cell",
    bootstrap_reps: int = 2000,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Full comparison of validated records (:func:`lbm.eval.records.load_records`) as a schema dict."""
    if not 0 < alpha < 1:
        raise LbmError(f"--alpha {alpha} must be strictly between 0 and 1 (e.g. 0.05).")
    if bootstrap_reps < 1:
        raise LbmError(f"--bootstrap-reps must be at least 1 (got {bootstrap_reps}).")
    succ = success_table(df, confidence, interval)
    pw = pairwise_table(df, test, correction, alpha, confidence, family, progress=progress)
    cell_letters: dict[tuple[str, str, str], str] = {}
    for (task, shift), g in succ.groupby(list(CELL), sort=True):  # pyright: ignore[reportGeneralTypeIssues]
        sub = pw[(pw["task"] == task) & (pw["shift"] == shift)]
        pairs = list(zip(sub["a"], sub["b"], sub["p_adj"]))
        for p, let in stats.letters(pairs, dict(zip(g["policy"], g["rate"])), alpha).items():
            cell_letters[(p, str(task), str(shift))] = let
    succ = succ.sort_values(["task", "shift", "rate", "policy"], ascending=[True, True, False, True])
    succ["letters"] = [cell_letters.get((str(p), str(t), str(s)), "a") for p, t, s in zip(succ.policy, succ.task, succ["shift"])]
    agg = aggregate(df, test, correction, alpha, bootstrap_reps, confidence, seed)
    result = dict(
        schema_version=SCHEMA_VERSION,
        settings=dict(
            test=test,
            correction=correction,
            family=family,
            alpha=alpha,
            confidence=confidence,
            interval=interval,
            bootstrap_reps=bootstrap_reps,
            seed=seed,
        ),
        policies=sorted(df["policy"].unique().tolist()),
        cells=[dict(task=t, shift=s) for t, s in succ[list(CELL)].drop_duplicates().itertuples(index=False)],
        success=_records(succ),
        pairwise=_records(pw),
        aggregate=_jsonable(agg),
    )
    result["verdicts"], result["warnings"] = verdicts(result)
    return result


def verdicts(result: dict) -> tuple[list[str], list[str]]:
    """Verdict sentences and warnings for a comparison result (schema dict).

    Only significant adjusted tests produce "A > B"; everything else is "no significant
    difference", and a warning follows whenever the minimum detectable difference at the realized
    n exceeds an observed difference that was not significant (absence of evidence is not evidence
    of equal performance).
    """
    s = result["settings"]
    alpha, n_cells = s["alpha"], len(result["cells"])
    fam = {"cell": "within each cell", "study": "over all pairs of all cells"}[s["family"]]
    corr = s["correction"] if s["correction"] != "none" else "no correction"
    pw = pd.DataFrame(result["pairwise"])
    out, warn = [], []
    pols = result["policies"]
    unit = "tasks" if all(c["shift"] in ("none", "") for c in result["cells"]) else "task/shift cells"
    for i, a in enumerate(pols):
        for b in pols[i + 1 :]:
            if pw.empty:
                continue
            sub = pw[((pw.a == a) & (pw.b == b)) | ((pw.a == b) & (pw.b == a))]
            a_wins = int(((sub.a == a) & sub.significant).sum())
            b_wins = int(((sub.a == b) & sub.significant).sum())
            ties = len(sub) - a_wins - b_wins
            first, second, w1, w2 = (a, b, a_wins, b_wins) if a_wins >= b_wins else (b, a, b_wins, a_wins)
            parts = [f"{first} > {second} on {w1}/{len(sub)} {unit}"]
            if w2:
                parts.append(f"{second} > {first} on {w2}")
            parts.append(f"no significant difference on {ties}")
            out.append("; ".join(parts) + f" (family-wise alpha {alpha:g}, {corr} {fam}, {s['test']} test).")
    agg = result["aggregate"]
    for pr in agg["pairs"]:
        what = "CMH test stratified by cell" if agg["test"] == "cmh" else "exact McNemar on paired trials"
        poi = f"P({pr['a']} > {pr['b']}) = {pr['poi']:.2f} [{pr['poi_lo']:.2f}, {pr['poi_hi']:.2f}]"
        where = f"all {n_cells} cells" if pr["cells"] == n_cells else f"the {pr['cells']} cells both were evaluated on"
        diff = f"{100 * pr['diff']:.1f} pp [{100 * pr['diff_lo']:.1f}, {100 * pr['diff_hi']:.1f}]"
        if pr["significant"]:
            out.append(
                f"Across {where}, {pr['a']} > {pr['b']} by {diff} of mean success ({what}, adjusted {_p_eq(pr['p_adj'])}; {poi})."
            )
        else:
            out.append(
                f"Across {where}, no significant difference between {pr['a']} and {pr['b']} (mean difference {diff}; "
                f"{what}, adjusted {_p_eq(pr['p_adj'])}; {poi})."
            )
    if not pw.empty:
        mdd = pw["mdd"].fillna(1.0)
        weak = pw[~pw.significant & (pw["diff"].abs() > 0) & (mdd > pw["diff"].abs())]
        if len(weak):
            n_min = int(min(weak.n_a.min(), weak.n_b.min()))
            warn.append(
                f"Underpowered: {len(weak)} of {len(pw)} non-significant pairwise differences (largest observed "
                f"{100 * weak['diff'].abs().max():.0f} pp) are smaller than the minimum detectable difference at "
                f"their n (as low as n={n_min}/policy: about {100 * mdd[weak.index].max():.0f} pp at power 0.8). "
                "'No significant difference' there is not evidence of equal performance; see `lbm stats plan` "
                "for the trials a conclusive comparison needs."
            )
    return out, warn


def render(result: dict, console=None) -> None:
    """Print the comparison as rich tables: per cell, pairwise, aggregate, verdicts, warnings."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = result["settings"]
    conf = f"{100 * s['confidence']:g}%"
    t = Table(title=f"Success per task/shift ({s['interval']} {conf} interval; Beta(1+s,1+f) posterior mean)")
    for col in ("task", "shift", "policy", "n", "succ", "rate", f"{conf} CI", "posterior", "letters"):
        t.add_column(col, justify="right" if col in ("n", "succ", "rate", "posterior") else "left")
    for r in result["success"]:
        t.add_row(
            r["task"],
            r["shift"],
            r["policy"],
            str(r["n"]),
            str(r["successes"]),
            f"{r['rate']:.3f}",
            f"[{r['lo']:.3f}, {r['hi']:.3f}]",
            f"{r['post_mean']:.3f}",
            r["letters"],
        )
    console.print(t)
    if result["pairwise"]:
        t = Table(title=f"Pairwise ({s['test']} test, {s['correction']} per {s['family']}; diff = a - b with Newcombe {conf} CI)")
        for col in ("task", "shift", "a", "b", "diff", "CI", "p", "p adj", "sig", "MDD"):
            t.add_column(col)
        for r in result["pairwise"]:
            t.add_row(
                r["task"],
                r["shift"],
                r["a"],
                r["b"],
                f"{r['diff']:+.3f}",
                f"[{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]",
                _fmt_p(r["p"]),
                _fmt_p(r["p_adj"]),
                "yes" if r["significant"] else "no",
                "-" if r["mdd"] is None else f"{r['mdd']:.2f}",
            )
        console.print(t)
    agg = result["aggregate"]
    t = Table(
        title=f"Across all cells (mean: stratified Wilson {conf} CI; IQM: stratified bootstrap, {s['bootstrap_reps']} reps)"
    )
    for col in ("policy", "cells", "trials", "mean", "CI", "IQM", "IQM CI", "letters"):
        t.add_column(col)
    for r in agg["policies"]:
        t.add_row(
            r["policy"],
            str(r["cells"]),
            str(r["trials"]),
            f"{r['mean']:.3f}",
            f"[{r['mean_lo']:.3f}, {r['mean_hi']:.3f}]",
            f"{r['iqm']:.3f}",
            f"[{r['iqm_lo']:.3f}, {r['iqm_hi']:.3f}]",
            r["letters"],
        )
    console.print(t)
    console.print(
        "Policies sharing a letter are not separated at family-wise alpha "
        f"{s['alpha']:g}; policies sharing no letter differ significantly."
    )
    for v in result["verdicts"]:
        console.print(f"• {v}")
    for w in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")


def _p_eq(p: float) -> str:
    return "p < 1e-4" if p < 1e-4 else f"p = {p:.4f}"


def _fmt_p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def _records(df: pd.DataFrame) -> list[Any]:
    return [_jsonable(r) for r in df.to_dict("records")]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating | float):
        v = float(x)
        return v if math.isfinite(v) else None
    return x
