"""The study's closing summary and its report (the evaluation report with the study's tables first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lbm.eval.report import palette, pyplot, write_report
from lbm.study.analysis import SCALING_ARMS
from lbm.study.profiles import StudyConfig


def measurement(finding: dict) -> str:
    """A finding's estimate and interval, or a dash where the study did not measure it."""
    if finding["value"] is None:
        return "-"
    return f"{finding['value']:+.2f} [{finding['lo']:+.2f}, {finding['hi']:+.2f}]"


def print_verdicts(analysis: dict) -> None:
    """The closing summary: the verdict table of the study."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    compute = analysis.get("compute_s")  # absent from analyses written before it was recorded
    stages = f"stages {compute / 60:.1f} min, " if compute is not None else ""
    table = Table(
        title=f"lbm study verdicts ({analysis['trials_per_cell']} trials per policy, task and condition; "
        f"{stages}this run {analysis.get('wall_s', 0) / 60:.1f} min)",
        show_lines=True,
    )
    table.add_column("#", justify="right")
    table.add_column("verdict")
    for i, v in enumerate(analysis["verdicts"], 1):
        table.add_row(str(i), v)
    for w in analysis["warnings"]:
        table.add_row("!", f"[yellow]{w}[/yellow]")
    console.print(table)
    findings = Table(title="the careful LBM study's findings, measured here", show_lines=True)
    for column in ("finding", "ours [95% CI]", "verdict"):
        findings.add_column(column)
    for f in analysis.get("findings", []):
        findings.add_row(f"[{f['id']}] {f['finding']}", measurement(f), f["verdict"])
    console.print(findings)


def plot_forest(per_task: list[dict], path: Path) -> Path | None:
    """Per-task forest plot: each arm's success minus from-scratch (100% data) with its 95% Newcombe interval."""
    if not per_task:
        return None
    plt = pyplot()
    rows = sorted(per_task, key=lambda r: (r["shift"], r["task"], r["arm"]))
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.28 * len(rows)))
    color = palette(sorted({r["arm"] for r in rows}))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        ax.errorbar(r["diff"], yi, xerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]], fmt="o", color=color[r["arm"]],
                    capsize=2, ms=4, mfc="white" if r["verdict"] not in ("better", "worse") else color[r["arm"]])  # fmt: skip
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(y, [f"{r['task'].removesuffix('-v3')} · {r['shift']} · {r['arm']}" for r in rows], fontsize=7)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("success minus from-scratch (95% Newcombe; filled: significant after correction)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(
    scaling: dict | None, path: Path, what: str = "demonstrations", title: str = "Pretraining-data scaling"
) -> Path | None:
    """Finetuned success against the fraction of pretraining ``what`` (log2 axis), stratified Wilson intervals."""
    if not scaling or not scaling.get("levels"):
        return None
    plt = pyplot()
    levels = sorted(scaling["levels"], key=lambda lv: lv["fraction"])
    x = np.array([lv["fraction"] for lv in levels])
    rate, lo, hi = (np.array([lv[k] for lv in levels]) for k in ("rate", "lo", "hi"))
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.errorbar(x, rate, yerr=[rate - lo, hi - rate], fmt="o-", capsize=3, color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{f:.1%}" for f in x])
    t = scaling["trend"]
    ax.set_title(f"{title}: slope {t['slope']:+.2f} log-odds per doubling, p = {t['p']:.2g}", fontsize=9)
    ax.set_xlabel(f"fraction of the pretraining {what}")
    ax.set_ylabel("finetuned success (mean over tasks)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_study_report(root: Path, records: pd.DataFrame, analysis: dict, config: StudyConfig) -> tuple[Path, Path]:
    """report/report.html and report/report.md: the study's verdicts and tables over the evaluation report."""
    de = analysis["data_efficiency"]
    plan_note = (
        f"analysis_plan.json, SHA-256 {analysis['analysis_plan_sha256']}, written before the first rollout; "
        "[H1] is the primary hypothesis, [H2...] secondary, [exploratory] outside the plan"
        if analysis.get("analysis_plan_sha256")
        else "no pre-registered plan (analysis recomputed outside a study folder)"
    )
    sections = [
        ("Study verdicts", ["#", "verdict"], [[str(i), v] for i, v in enumerate(analysis["verdicts"], 1)]),
        (
            "Findings of the careful LBM study, measured here",
            ["finding", "hypothesis", "our measurement [95% CI]", "test", "verdict"],
            [[f["finding"], f["id"], measurement(f), f["test"] or "-", f["verdict"]] for f in analysis["findings"]],
        ),
        ("Pre-registration", ["plan"], [[plan_note]]),
        *(
            (
                f"{title} (finetuned on 100% of the task demos, nominal)",
                [f"pretraining {what}", "success (mean over tasks) [95% CI]", "rollouts"],
                [
                    [f"{lv['fraction']:.1%}", f"{lv['rate']:.2f} [{lv['lo']:.2f}, {lv['hi']:.2f}]", str(lv["n"])]
                    for lv in analysis[arm]["levels"]
                ],
            )
            for arm, (_, what, title) in SCALING_ARMS.items()
            if analysis.get(arm)
        ),
        *(
            [("Pilot (its rollouts are not in the analysis)", ["what the pilot chose and why"], [[analysis["pilot"]["reason"]]])]
            if analysis.get("pilot")
            else []
        ),
        (
            "Finetuned and zero-shot vs from-scratch (100% data), per task",
            ["task", "condition", "arm", "success", "scratch", "difference [95% Newcombe]", "p", "p (Holm)", "verdict"],
            [
                [
                    r["task"],
                    r["shift"],
                    r["arm"],
                    f"{r['s']}/{r['n']}",
                    f"{r['s_scratch']}/{r['n_scratch']}",
                    f"{r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]",
                    f"{r['p']:.3g}",
                    f"{r['p_holm']:.3g}",
                    r["verdict"],
                ]
                for r in analysis["per_task"]
            ],
        ),
        (
            "Data efficiency (nominal): finetuned at each fraction vs from-scratch at 100% and with the same demos",
            [
                "fraction",
                "finetuned",
                "scratch@100%",
                "difference [95% stratified Newcombe]",
                "CMH p",
                f"non-inferior (margin {de['margin']:.2f})",
                "scratch, same demos",
                "difference [95% stratified Newcombe]",
                "CMH p",
            ],
            [
                [
                    f"{r['fraction']:.0%}",
                    f"{r.get('rate_a', float('nan')):.2f}",
                    f"{r.get('rate_b', float('nan')):.2f}",
                    f"{r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]",
                    f"{r['p']:.3g}",
                    "yes" if r["noninferior"] else "no",
                    f"{r['same_data'].get('rate_b', float('nan')):.2f}",
                    f"{r['same_data']['diff']:+.2f} [{r['same_data']['lo']:+.2f}, {r['same_data']['hi']:+.2f}]",
                    f"{r['same_data']['p']:.3g}",
                ]
                for r in de["per_fraction"]
            ],
        ),
        (
            "Robustness gap: (finetuned - scratch) under shift minus nominal",
            ["shift", "advantage nominal", "advantage shift", "gap [95% MOVER]", "tasks better nominal / shift"],
            [
                [
                    g["shift"],
                    f"{g['advantage_nominal']:+.2f}",
                    f"{g['advantage_shift']:+.2f}",
                    f"{g['gap']:+.2f} [{g['lo']:+.2f}, {g['hi']:+.2f}]",
                    f"{g['tasks_better_nominal']} / {g['tasks_better_shift']}",
                ]
                for g in analysis["robustness"]
            ],
        ),
    ]
    if "own_robot" in analysis:

        def ci(c: dict) -> str:
            return f"{c['diff']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]"

        sections.append(
            (
                "Other robots' data vs the held-out robot's own (nominal; both finetuned on the same demos)",
                ["fraction", "cross-embodiment", "own robot", "difference [95% stratified Newcombe]", "CMH p (Holm)",
                 "scratch, same demos", "own robot - scratch [95%]", "CMH p (Holm)"],
                [
                    [
                        f"{r['fraction']:.0%}",
                        f"{r['cross_vs_own']['rate_a']:.2f}",
                        f"{r['cross_vs_own']['rate_b']:.2f}",
                        ci(r["cross_vs_own"]),
                        f"{r['cross_vs_own']['p']:.3g} ({r['cross_vs_own']['p_holm']:.3g})",
                        f"{r['own_vs_scratch']['rate_b']:.2f}",
                        ci(r["own_vs_scratch"]),
                        f"{r['own_vs_scratch']['p']:.3g} ({r['own_vs_scratch']['p_holm']:.3g})",
                    ]
                    for r in analysis["own_robot"]
                ],
            )
        )  # fmt: skip
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        (caption, path)
        for caption, path in (
            ("Per task: finetuned and zero-shot minus from-scratch", plot_forest(analysis["per_task"], out / "forest.png")),
            *(
                (title, plot_scaling(analysis.get(arm), out / f"{arm}.png", what, title))
                for arm, (_, what, title) in SCALING_ARMS.items()
            ),
        )
        if path is not None
    ]
    paths = write_report(
        records,
        out,
        figures_first=figures,
        alpha=config.alpha,
        title=f"lbm study: {config.name}",
        sections=[section for section in sections if section[2]],  # no empty table (e.g. robustness without shifts)
        notes=analysis["warnings"],
    )
    return paths[0], paths[1]
