"""Command-line verbs of the safety package: `lbm safety check`, `lbm safety redteam`, `lbm safety train-monitor`.

Each function is parsed by tyro from its signature; its docstring is the help. The logic lives in
:mod:`lbm.safety.guard` and :mod:`lbm.safety.monitor`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tyro


def check(instruction: Annotated[str, tyro.conf.Positional], tasks: str = "") -> int:
    """Run the instruction guard on one instruction; exit 1 when it is refused.

    Example: lbm safety check "open the drawer" --tasks mt10

    Args:
        instruction: The instruction a user would send to the robot.
        tasks: Allowed skills of the deployment (a task set or comma-separated tasks; empty: all tasks).
    """
    from lbm.safety.guard import GuardConfig, InstructionGuard
    from lbm.sim import resolve_tasks

    allowed = tuple(resolve_tasks(tasks)) if tasks else ()
    decision = InstructionGuard(GuardConfig(allowed_tasks=allowed)).check(instruction)
    print(f"{decision.verdict}: {decision.explanation}" + (f" (skill: {decision.task})" if decision.task else ""))
    return 0 if decision.allowed else 1


def redteam(redteam_file: Path | None = None, seed: int = 0) -> int:
    """Refusal rates of the instruction guard on the red-team set, with Clopper-Pearson intervals.

    Harmful, injection and out-of-scope rows should be refused; benign rows (the evaluation half,
    the other half calibrates the thresholds) should be allowed and mapped to the right skill.

    Args:
        redteam_file: JSON file with a 'rows' list (default: the shipped lbm/safety/redteam.json).
        seed: Seed of the benign calibration/evaluation split.
    """
    from rich.console import Console
    from rich.table import Table

    from lbm.safety.guard import InstructionGuard, evaluate_guard, load_redteam

    rows = load_redteam(redteam_file)
    result = evaluate_guard(InstructionGuard(), rows, seed=seed)
    table = Table(title=f"instruction guard on {len(rows)} red-team instructions")
    for column in ("kind", "n", "refused", "rate", "95% Clopper-Pearson", "should be"):
        table.add_column(column, justify="left" if column in ("kind", "should be") else "right")
    for kind in ("harmful", "injection", "out_of_scope", "benign"):
        if kind in result:
            r = result[kind]
            table.add_row(kind, str(r["n"]), str(r["refused"]), f"{r['rate']:.2f}", f"[{r['low']:.2f}, {r['high']:.2f}]",
                          "allowed (false refusals)" if kind == "benign" else "refused")
    console = Console()
    console.print(table)
    if "benign_task_accuracy" in result:
        console.print(f"benign instructions allowed and mapped to the right skill: {result['benign_task_accuracy']:.2f}")
    for kind, r in result.items():
        if isinstance(r, dict) and r["misses"]:
            console.print(f"[yellow]{kind} misclassified:[/yellow] " + "; ".join(repr(m) for m in r["misses"]))
    return 0


def train_monitor(evals: Annotated[list[Path], tyro.conf.Positional], out: Path, alpha: float = 0.1, kind: str = "mlp",
                  calibration_fraction: float = 0.5, seed: int = 0) -> int:
    """Train a SAFE-style failure monitor on `lbm eval --features` folders and calibrate its alert band.

    Rollouts are cut at each task's shortest success (the length leak), a seeded fraction of the
    successes is held out to calibrate the split-conformal, time-varying alert threshold, and the
    monitor is saved to OUT for `lbm eval --monitor OUT`.

    Args:
        evals: Evaluation folders written with `lbm eval --features` (checkpoint policies).
        out: Folder for the monitor (monitor.json + model.safetensors).
        alpha: Target per-rollout false-alarm rate on successful rollouts like the calibration set.
        kind: Detector: mlp, lstm, mahalanobis or knn.
        calibration_fraction: Share of successful rollouts held out for the conformal band.
        seed: Seed of the split and of training.
    """
    from lbm.safety.monitor import train_monitor as train

    train(list(evals), out, alpha=alpha, kind=kind, calibration_fraction=calibration_fraction, seed=seed)
    print(f"monitor written to {out}; use it with: lbm eval ... --monitor {out}")
    return 0
