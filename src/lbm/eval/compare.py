"""Comparison of policies from rollout records: tables, letters, verdicts, and the JSON schema.

Built only on :mod:`lbm.eval.stats`; this module decides what to say, never how to compute.

JSON schema (``lbm stats compare RECORDS --json``), version :data:`SCHEMA_VERSION`::

    {
      "schema_version": "1.0",
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
                                  "mean", "mean_lo", "mean_hi", "iqm", "iqm_lo", "iqm_hi": float,
                                  "letters": str}, ...],
                    "pairs": [{"a", "b", "diff", "p", "p_adj", "significant",
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

import numpy as np
import pandas as pd

from lbm.eval import stats

SCHEMA_VERSION = "1.0"


def cell_label(task: str, shift: str) -> str:
    """Human label of a (task, shift) cell: the task alone under nominal conditions."""
    return task if shift in ("none", "") else f"{task} [{shift}]"


def compare_records(df: pd.DataFrame, test: str = "boschloo", correction: str = "holm", alpha: float = 0.05,
                    confidence: float = 0.95, interval: str = "wilson", family: str = "cell",
                    bootstrap_reps: int = 2000, seed: int = 0, progress: bool = False) -> dict:
    """Full comparison of validated records (see :func:`lbm.eval.stats.load_records`) as a schema dict.

    Sources: every number comes from :mod:`lbm.eval.stats` (Wilson / Clopper–Pearson, Beta
    posterior, Boschloo / Barnard / McNemar, Newcombe, Holm / Bonferroni, Piepho letters,
    rliable aggregates, CMH).
    """
    stats._check_alpha(alpha)
    succ = stats.success_table(df, confidence, interval)
    pw = stats.pairwise_table(df, test, correction, alpha, confidence, family, progress=progress)
    cell_letters: dict[tuple[str, str, str], str] = {}
    for (task, shift), g in succ.groupby(stats.CELL, sort=True):
        rates = dict(zip(g["policy"], g["rate"]))
        sub = pw[(pw["task"] == task) & (pw["shift"] == shift)]
        for p, let in stats.letters(sub, rates, alpha).items():
            cell_letters[(p, task, shift)] = let
    succ = succ.sort_values(["task", "shift", "rate", "policy"], ascending=[True, True, False, True])
    succ["letters"] = [cell_letters.get((r.policy, r.task, r.shift), "a") for r in succ.itertuples()]
    agg = stats.aggregate(df, test, correction, alpha, bootstrap_reps, confidence, seed)
    cells = [dict(task=t, shift=s) for t, s in succ[stats.CELL].drop_duplicates().itertuples(index=False)]
    result = dict(
        schema_version=SCHEMA_VERSION,
        settings=dict(test=test, correction=correction, family=family, alpha=alpha, confidence=confidence,
                      interval=interval, bootstrap_reps=bootstrap_reps, seed=seed),
        policies=sorted(df["policy"].unique().tolist()),
        cells=cells,
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
        for b in pols[i + 1:]:
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
        if pr["significant"]:
            out.append(f"Across all {n_cells} cells, {pr['a']} > {pr['b']} by {100 * pr['diff']:.1f} pp of mean "
                       f"success ({what}, adjusted {_p_eq(pr['p_adj'])}; {poi}).")
        else:
            out.append(f"Across all {n_cells} cells, no significant difference between {pr['a']} and {pr['b']} "
                       f"({what}, adjusted {_p_eq(pr['p_adj'])}; {poi}).")
    if not pw.empty:
        weak = pw[~pw.significant & (pw["diff"].abs() > 0) & (pw["mdd"] > pw["diff"].abs())]
        if len(weak):
            n_min = int(min(weak.n_a.min(), weak.n_b.min()))
            warn.append(
                f"Underpowered: {len(weak)} of {len(pw)} non-significant pairwise differences (largest observed "
                f"{100 * weak['diff'].abs().max():.0f} pp) are smaller than the minimum detectable difference at "
                f"their n (as low as n={n_min}/policy: about {100 * weak['mdd'].max():.0f} pp at power 0.8). "
                "'No significant difference' there is not evidence of equal performance; see `lbm stats plan` "
                "for the trials a conclusive comparison needs.")
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
        t.add_row(r["task"], r["shift"], r["policy"], str(r["n"]), str(r["successes"]), f"{r['rate']:.3f}",
                  f"[{r['lo']:.3f}, {r['hi']:.3f}]", f"{r['post_mean']:.3f}", r["letters"])
    console.print(t)
    if result["pairwise"]:
        t = Table(title=f"Pairwise ({s['test']} test, {s['correction']} per {s['family']}; diff = a - b with "
                        f"Newcombe {conf} CI)")
        for col in ("task", "shift", "a", "b", "diff", "CI", "p", "p adj", "sig", "MDD"):
            t.add_column(col)
        for r in result["pairwise"]:
            t.add_row(r["task"], r["shift"], r["a"], r["b"], f"{r['diff']:+.3f}",
                      f"[{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]", _fmt_p(r["p"]), _fmt_p(r["p_adj"]),
                      "yes" if r["significant"] else "no", f"{r['mdd']:.2f}")
        console.print(t)
    agg = result["aggregate"]
    t = Table(title=f"Across all cells (stratified bootstrap {conf} CIs, {s['bootstrap_reps']} reps)")
    for col in ("policy", "cells", "trials", "mean", "CI", "IQM", "IQM CI", "letters"):
        t.add_column(col)
    for r in agg["policies"]:
        t.add_row(r["policy"], str(r["cells"]), str(r["trials"]), f"{r['mean']:.3f}",
                  f"[{r['mean_lo']:.3f}, {r['mean_hi']:.3f}]", f"{r['iqm']:.3f}",
                  f"[{r['iqm_lo']:.3f}, {r['iqm_hi']:.3f}]", r["letters"])
    console.print(t)
    console.print("Policies sharing a letter are not separated at family-wise alpha "
                  f"{s['alpha']:g}; policies sharing no letter differ significantly.")
    for v in result["verdicts"]:
        console.print(f"• {v}")
    for w in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")


def _p_eq(p: float) -> str:
    return "p < 1e-4" if p < 1e-4 else f"p = {p:.4f}"


def _fmt_p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def _records(df: pd.DataFrame) -> list[dict]:
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
