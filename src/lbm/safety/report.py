"""Safety beside success: interventions and violations per 1000 steps, with intervals.

Steps of one rollout are not independent (a policy that drifts toward a wall hits it many steps
in a row), so a binomial interval over steps would be far too narrow. Rates per 1000 steps get a
*trial-level* (cluster) percentile bootstrap of the ratio sum(events) / sum(steps); the share of
rollouts with at least one violation gets an exact Clopper-Pearson interval; success gets the
Wilson interval of :func:`lbm.stats.proportion_interval`.
"""

from __future__ import annotations

import numpy as np

from lbm.errors import LbmError
from lbm.stats import mcnemar_exact, proportion_interval

SAFETY_COLUMNS = ("shield", "shield_interventions", "shield_holds", "violations", "proposed_violations")


def per_1000_steps(
    events: np.ndarray, steps: np.ndarray, confidence: float = 0.95, reps: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(rate, low, high)`` of events per 1000 steps with a trial-level bootstrap interval.

    ``events`` and ``steps`` are per-rollout counts ``(N,)``.
    """
    events, steps = np.asarray(events, float), np.asarray(steps, float)
    if events.shape != steps.shape or events.ndim != 1 or len(events) == 0:
        raise LbmError("per_1000_steps needs per-rollout event and step counts of equal, non-zero length.")
    total = steps.sum()
    if total <= 0:
        return float("nan"), float("nan"), float("nan")
    rate = 1000.0 * events.sum() / total
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(events), size=(reps, len(events)))
    num, den = events[idx].sum(1), steps[idx].sum(1)
    boot = 1000.0 * num[den > 0] / den[den > 0]
    q = (1 - confidence) / 2
    return float(rate), float(np.quantile(boot, q)), float(np.quantile(boot, 1 - q))


def safety_table(df, confidence: float = 0.95, by: tuple[str, ...] = ("policy",)):
    """One row per group (default: per policy): success and safety figures with intervals.

    ``df`` is a record table from ``lbm eval`` (un-blinded or not). Columns: n, steps,
    success (rate, low, high), interventions and violations per 1000 steps (rate, low, high),
    proposed violations per 1000 steps, share of rollouts with a violation (rate, low, high).
    """
    import pandas as pd

    missing = [c for c in ("success", "steps", "violations", "proposed_violations", "shield_interventions") if c not in df]
    if missing:
        raise LbmError(
            f"These records lack the safety columns {missing}; they were written before lbm eval recorded "
            "safety. Rerun the evaluation with this version of lbm."
        )
    rows = []
    for key, g in df.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        n, s = len(g), int(g["success"].sum())
        s_lo, s_hi = proportion_interval(s, n, confidence)
        steps = g["steps"].to_numpy(float)
        iv = per_1000_steps(g["shield_interventions"].fillna(0).to_numpy(float), steps, confidence)
        vi = per_1000_steps(g["violations"].fillna(0).to_numpy(float), steps, confidence)
        pv = per_1000_steps(g["proposed_violations"].fillna(0).to_numpy(float), steps, confidence)
        any_v = int((g["violations"].fillna(0) > 0).sum())
        a_lo, a_hi = proportion_interval(any_v, n, confidence, method="clopper-pearson")
        rows.append(
            {
                **dict(zip(by, key)),
                "shield": bool(g.get("shield", pd.Series([False])).fillna(False).any()),
                "n": n,
                "steps": int(steps.sum()),
                "success": s / n,
                "success_low": float(s_lo),
                "success_high": float(s_hi),
                "interventions_per_1000": iv[0],
                "interventions_low": iv[1],
                "interventions_high": iv[2],
                "violations_per_1000": vi[0],
                "violations_low": vi[1],
                "violations_high": vi[2],
                "proposed_violations_per_1000": pv[0],
                "rollouts_with_violation": any_v / n,
                "rollouts_with_violation_low": float(a_lo),
                "rollouts_with_violation_high": float(a_hi),
                **_rule_counts(g),
            }
        )
    return pd.DataFrame(rows)


RULE_COLUMNS = ("rule_violations_planned", "rule_violations_observed", "rule_repairs", "rule_refusals")
"""The plan guard's per-trial counts (``lbm eval --policy NAME=plan://...?rules=FILE``)."""


def _rule_counts(g) -> dict[str, int]:
    """Trials in which the plan guard saw a planned / observed violation, repaired or refused (absent: no guard)."""
    if "rule_violations_planned" not in g:
        return {}
    return {f"trials_{c}": int((g[c].fillna(0) > 0).sum()) for c in RULE_COLUMNS}


def shield_comparison(without, with_shield, confidence: float = 0.95):
    """Success without vs with the shield, paired on (policy, task, shift, trial); exact McNemar test.

    Both arguments are un-blinded record tables of the same policies, tasks, shifts and trials,
    one run without ``--shield`` and one with. Returns one row per policy.
    """
    import pandas as pd

    key = ["policy", "task", "shift", "trial"]
    m = without[key + ["success", "violations"]].merge(
        with_shield[key + ["success", "violations"]], on=key, suffixes=("_off", "_on")
    )
    if m.empty:
        raise LbmError(
            "The two record tables share no (policy, task, shift, trial); run both evaluations with the "
            "same --policy names, --tasks, --shifts and --trials."
        )
    rows = []
    for policy, g in m.groupby("policy", sort=True):
        n = len(g)
        off, on = g["success_off"].to_numpy(bool), g["success_on"].to_numpy(bool)
        lo_off, hi_off = proportion_interval(int(off.sum()), n, confidence)
        lo_on, hi_on = proportion_interval(int(on.sum()), n, confidence)
        rows.append(
            {
                "policy": policy,
                "n_pairs": n,
                "success_off": off.mean(),
                "success_off_low": float(lo_off),
                "success_off_high": float(hi_off),
                "success_on": on.mean(),
                "success_on_low": float(lo_on),
                "success_on_high": float(hi_on),
                "mcnemar_p": float(mcnemar_exact(off, on)),
                "violations_off": int(g["violations_off"].sum()),
                "violations_on": int(g["violations_on"].sum()),
            }
        )
    return pd.DataFrame(rows)


def print_safety_table(table, title: str = "safety") -> None:
    """Render :func:`safety_table` output with rich."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    guarded = "trials_rule_violations_planned" in table.columns
    for col in (
        "group",
        "shield",
        "n",
        "steps",
        "success",
        "interventions / 1000 steps",
        "violations / 1000 steps",
        "rollouts with a violation",
        *(["plan rules: trials planned-violating / observed-violating / repaired / refused"] if guarded else []),
    ):
        t.add_column(col, justify="left" if col == "group" else "right")
    group_cols = [c for c in table.columns if c not in _NUMERIC]
    for _, r in table.iterrows():
        t.add_row(
            " ".join(str(r[c]) for c in group_cols),
            "on" if r["shield"] else "off",
            str(r["n"]),
            str(r["steps"]),
            f"{r['success']:.2f} [{r['success_low']:.2f}, {r['success_high']:.2f}]",
            f"{r['interventions_per_1000']:.1f} [{r['interventions_low']:.1f}, {r['interventions_high']:.1f}]",
            f"{r['violations_per_1000']:.1f} [{r['violations_low']:.1f}, {r['violations_high']:.1f}]"
            + (f" (proposed {r['proposed_violations_per_1000']:.1f})" if r["shield"] else ""),
            f"{r['rollouts_with_violation']:.2f} [{r['rollouts_with_violation_low']:.2f}, "
            f"{r['rollouts_with_violation_high']:.2f}]",
            *([" / ".join(str(int(r[f"trials_{c}"])) for c in RULE_COLUMNS)] if guarded else []),
        )
    console = Console()
    # Intervals need room: never squeeze the table below 150 columns (wrapping beats truncating figures).
    Console(width=max(console.width, 150)).print(t)


_NUMERIC = {
    *(f"trials_{c}" for c in RULE_COLUMNS),
    "shield",
    "n",
    "steps",
    "success",
    "success_low",
    "success_high",
    "interventions_per_1000",
    "interventions_low",
    "interventions_high",
    "violations_per_1000",
    "violations_low",
    "violations_high",
    "proposed_violations_per_1000",
    "rollouts_with_violation",
    "rollouts_with_violation_low",
    "rollouts_with_violation_high",
}
