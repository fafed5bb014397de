"""The study's closing summary and its report (the evaluation report with the study's tables first)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lbm.eval.report import write_report
from lbm.study.profiles import StudyConfig


def print_verdicts(analysis: dict) -> None:
    """The closing summary: the verdict table of the study."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    compute = sum(analysis.get("stage_seconds", {}).values())
    table = Table(
        title=f"lbm study verdicts ({analysis['trials_per_cell']} trials per policy, task and condition; "
        f"stages {compute / 60:.1f} min, this run {analysis.get('wall_s', 0) / 60:.1f} min)",
        show_lines=True,
    )
    table.add_column("#", justify="right")
    table.add_column("verdict")
    for i, v in enumerate(analysis["verdicts"], 1):
        table.add_row(str(i), v)
    for w in analysis["warnings"]:
        table.add_row("!", f"[yellow]{w}[/yellow]")
    console.print(table)


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
        ("Pre-registration", ["plan"], [[plan_note]]),
        *(
            [
                (
                    "Pretraining-data scaling (finetuned on 100% of the task demos, nominal)",
                    ["pretraining data", "success (mean over tasks) [95% CI]", "rollouts"],
                    [
                        [f"{lv['fraction']:.1%}", f"{lv['rate']:.2f} [{lv['lo']:.2f}, {lv['hi']:.2f}]", str(lv["n"])]
                        for lv in analysis["scaling"]["levels"]
                    ],
                )
            ]
            if analysis.get("scaling")
            else []
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
    paths = write_report(
        records,
        root / "report",
        alpha=config.alpha,
        title=f"lbm study: {config.name}",
        sections=sections,
        notes=analysis["warnings"],
    )
    return paths[0], paths[1]
