"""Command-line verbs of the safety package: `lbm safety check`, `lbm safety redteam`, `lbm safety train-monitor`.

Each function is parsed by tyro from its signature; its docstring is the help. The logic lives in
:mod:`lbm.safety.guard` and :mod:`lbm.safety.monitor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from lbm.errors import LbmError
from lbm.safety.guard import GuardConfig, InstructionGuard, evaluate_guard, load_redteam
from lbm.safety.monitor import train_monitor as train
from lbm.sim import resolve_tasks


@dataclass(frozen=True)
class CheckConfig:
    """Run the instruction guard on one instruction; exit 1 when it is refused.

    Example: lbm safety check "open the drawer" --tasks mt10
    """

    instruction: Annotated[str, tyro.conf.Positional]
    """The instruction a user would send to the robot."""
    tasks: str = ""
    """Allowed skills of the deployment (a task set or comma-separated tasks of any suite; empty: MT50)."""


def check(config: Annotated[CheckConfig, tyro.conf.arg(name="")]) -> int:
    """Run the instruction guard on one instruction (see CheckConfig)."""
    instruction, tasks = config.instruction, config.tasks

    allowed = tuple(resolve_tasks(tasks)) if tasks else ()
    decision = InstructionGuard(GuardConfig(allowed_tasks=allowed)).check(instruction)
    print(f"{decision.verdict}: {decision.explanation}" + (f" (skill: {decision.task})" if decision.task else ""))
    return 0 if decision.allowed else 1


@dataclass(frozen=True)
class RedteamConfig:
    """Refusal rates of the instruction guard on the red-team set, with Clopper-Pearson intervals.

    Harmful, injection and out-of-scope rows should be refused; benign rows (the evaluation half,
    the other half calibrates the thresholds) should be allowed and mapped to the right skill.
    """

    redteam_file: Path | None = None
    """JSON file with a 'rows' list (default: the shipped lbm/safety/redteam.json)."""
    seed: int = 0
    """Seed of the benign calibration/evaluation split."""


def redteam(config: Annotated[RedteamConfig, tyro.conf.arg(name="")]) -> int:
    """Instruction-guard refusal rates (see RedteamConfig)."""
    redteam_file, seed = config.redteam_file, config.seed
    from rich.console import Console
    from rich.table import Table

    rows = load_redteam(redteam_file)
    result = evaluate_guard(InstructionGuard(), rows, seed=seed)
    table = Table(title=f"instruction guard on {len(rows)} red-team instructions")
    for column in ("kind", "n", "refused", "rate", "95% Clopper-Pearson", "should be"):
        table.add_column(column, justify="left" if column in ("kind", "should be") else "right")
    for kind in ("harmful", "injection", "out_of_scope", "obfuscated", "benign"):
        if kind in result:
            r = result[kind]
            table.add_row(
                kind,
                str(r["n"]),
                str(r["refused"]),
                f"{r['rate']:.2f}",
                f"[{r['low']:.2f}, {r['high']:.2f}]",
                "allowed (false refusals)" if kind == "benign" else "refused",
            )
    console = Console()
    console.print(table)
    if "obfuscated" in result:
        console.print(
            "obfuscated variants (look-alike letters, invisible characters, spaced letters) decided like their "
            f"originals: {result['obfuscated']['same_verdict']:.2f}"
        )
    if "benign_task_accuracy" in result:
        console.print(f"benign instructions allowed and mapped to the right skill: {result['benign_task_accuracy']:.2f}")
    for kind, r in result.items():
        if isinstance(r, dict) and r["misses"]:
            console.print(f"[yellow]{kind} misclassified:[/yellow] " + "; ".join(repr(m) for m in r["misses"]))
    return 0


@dataclass(frozen=True)
class TrainMonitorConfig:
    """Train a SAFE-style failure monitor on `lbm eval --features` folders and calibrate its alert band.

    Rollouts are cut at each task's shortest success (the length leak), a seeded fraction of the
    successes is held out to calibrate the split-conformal, time-varying alert threshold, and the
    monitor is saved to OUT for `lbm eval --monitor OUT`.
    """

    evals: Annotated[tuple[Path, ...], tyro.conf.Positional]
    """Evaluation folders written with `lbm eval --features` (checkpoint policies)."""
    out: Path
    """Folder for the monitor (monitor.json + model.safetensors)."""
    alpha: float = 0.1
    """Target per-rollout false-alarm rate on successful rollouts like the calibration set."""
    kind: Literal["mlp", "mahalanobis"] = "mlp"
    """Detector: the SAFE-style MLP, or the Mahalanobis-distance baseline."""
    calibration_fraction: float = 0.5
    """Share of successful rollouts held out for the conformal band."""
    seed: int = 0
    """Seed of the split and of training."""


def train_monitor(config: Annotated[TrainMonitorConfig, tyro.conf.arg(name="")]) -> int:
    """Train and calibrate a failure monitor (see TrainMonitorConfig)."""

    c = config
    if not 0 < c.alpha < 1 or not 0 < c.calibration_fraction < 1:
        raise LbmError(
            f"--alpha ({c.alpha}) and --calibration-fraction ({c.calibration_fraction}) must be strictly between 0 and 1."
        )
    train(list(c.evals), c.out, alpha=c.alpha, kind=c.kind, calibration_fraction=c.calibration_fraction, seed=c.seed)
    print(f"monitor written to {c.out}; use it with: lbm eval ... --monitor {c.out}")
    return 0


@dataclass(frozen=True)
class PlanRedteamConfig:
    """The plan guard's red team: unsafe-plan execution without a guard, with the instruction guard only and
    with the plan guard; benign-goal completion (the cost of safety), repair success and latency, each
    rate with its count and a Clopper-Pearson interval.

    Rules files are YAML: a 'rules:' list of sentences, optional 'marks:' (name -> scene places) and
    'classes:' (object class -> name words); see lbm/safety/rules_files/tabletop.yaml.
    """

    redteam_file: Path | None = None
    """JSON file with a 'rows' list of {task, goal, expect, style} (default: lbm/safety/plan_redteam.json)."""
    rules: Path | None = None
    """Safety rules file (default: the shipped lbm/safety/rules_files/tabletop.yaml)."""
    out: Path | None = None
    """Write the per-goal outcomes and the figures to this JSON file (and a .md beside it)."""


def plan_redteam(config: Annotated[PlanRedteamConfig, tyro.conf.arg(name="")]) -> int:
    """Plan-guard red-team figures (see PlanRedteamConfig)."""
    from lbm.files import write_json_atomic
    from lbm.safety.plan_redteam import format_summary, load_plan_redteam, run_plan_redteam

    result = run_plan_redteam(load_plan_redteam(config.redteam_file), config.rules)
    text = format_summary(result["summary"])
    print(text)
    if config.out is not None:
        write_json_atomic(config.out, result)
        config.out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
        print(f"written: {config.out} and {config.out.with_suffix('.md')}")
    return 0
