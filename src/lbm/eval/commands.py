"""Command-line verbs of the evaluation package: `lbm eval`, `lbm stats compare`, `lbm stats plan`, `lbm report`.

Each verb takes one frozen config dataclass, which tyro turns into its options (the field docs are
the help).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from lbm import stats
from lbm.errors import LbmError
from lbm.eval.compare import compare_records, render
from lbm.eval.records import load_records
from lbm.eval.report import write_report
from lbm.eval.runner import EvalConfig, hooks, run_evaluation
from lbm.files import writing


def evaluate(config: Annotated[EvalConfig, tyro.conf.arg(name="")]) -> int:
    """Blind, paired, randomized closed-loop evaluation of policies on simulation tasks (see EvalConfig)."""
    from rich.console import Console
    from rich.table import Table

    if not config.policy:
        raise LbmError(
            "lbm eval needs at least one --policy NAME=SOURCE (a checkpoint folder, ws://HOST:PORT of `lbm "
            "serve`, or a built-in: expert, random), e.g. --policy oracle=expert."
        )
    summary = run_evaluation(config)
    console = Console()
    table = Table(title=f"lbm eval: {summary.total} trials ({summary.ran} run now, {summary.skipped} resumed)")
    table.add_column("policy (blind id)")
    table.add_column("trials", justify="right")
    table.add_column("successes", justify="right")
    for pid, (s, n) in sorted(summary.success_by_policy_id.items()):
        table.add_row(pid, str(n), str(s))
    console.print(table)
    rate = summary.env_steps / summary.wall_s if summary.wall_s > 0 else float("nan")
    console.print(f"{summary.env_steps} env steps in {summary.wall_s:.1f} s ({rate:.0f} steps/s)")
    if summary.failures_by_reason:
        console.print(
            "[yellow]trials that failed for reasons other than running out of steps (counted as failures): "
            + ", ".join(f"{k} {v}" for k, v in sorted(summary.failures_by_reason.items()))
        )
    if summary.files:
        for provider in hooks.providers():
            provider.summary(config, summary.out)
        console.print(f"records: {', '.join(str(f) for f in summary.files)}")
        console.print(f"un-blind and compare: lbm stats compare {summary.out}")
    else:
        console.print(f"[yellow]incomplete: rerun the same command to resume into {summary.out}")
    return 0


@dataclass(frozen=True)
class CompareConfig:
    """Compare policies from rollout records: per task/shift tables, letters, pairwise tests, aggregates, verdicts.

    Per (task, shift) cell: n, successes, rate with a Wilson (or Clopper-Pearson) interval, the
    Beta(1+s, 1+f) posterior mean, and compact letters (policies sharing no letter differ
    significantly). Every pair of policies gets an exact two-sided test, a Newcombe interval for
    the difference, and family-wise adjusted p-values. Across cells: the mean (stratified Wilson
    interval) and IQM, P(A > B), and a Cochran-Mantel-Haenszel test over the cells both policies
    have. Verdicts state only what the adjusted tests support, and a warning says when the trials
    were too few to detect the differences seen. Example:

        lbm stats compare runs/eval1 --test boschloo --correction holm
    """

    records: Annotated[Path, tyro.conf.Positional]
    """An `lbm eval --out` folder, or a records file (.parquet / .jsonl)."""
    json: bool = False
    """Print the result as JSON (schema in lbm.eval.compare) instead of tables."""
    alpha: float = 0.05
    """Family-wise type-I error rate."""
    test: Literal["boschloo", "barnard", "mcnemar"] = "boschloo"
    """Pairwise test: boschloo (exact unconditional), barnard, or mcnemar (exact, paired by seed)."""
    correction: Literal["holm", "bonferroni", "none"] = "holm"
    """Multiple-comparison correction across pairs."""
    family: Literal["cell", "study"] = "cell"
    """What one correction covers: the pairs of each task/shift (the TRI LBM convention) or all pairs of all cells."""
    interval: Literal["wilson", "clopper-pearson"] = "wilson"
    """Interval for a success rate."""
    confidence: float = 0.95
    """Confidence level of intervals."""
    bootstrap_reps: int = 2000
    """Stratified bootstrap replicates for the IQM intervals."""
    seed: int = 0
    """Seed of the bootstrap."""
    allow_unpaired: bool = False
    """Warn instead of failing when policies were evaluated on different trials/seeds (aggregates then use only
    the cells both policies have)."""
    out: Path | None = None
    """Also write the JSON result to this file."""


def compare(config: Annotated[CompareConfig, tyro.conf.arg(name="")]) -> int:
    """Compare policies from rollout records (see CompareConfig)."""
    import json

    c = config
    df = load_records(c.records, require_pairing=not c.allow_unpaired)
    result = compare_records(
        df,
        test=c.test,
        correction=c.correction,
        alpha=c.alpha,
        confidence=c.confidence,
        interval=c.interval,
        family=c.family,
        bootstrap_reps=c.bootstrap_reps,
        seed=c.seed,
        progress=not c.json,
    )
    text = json.dumps(result, indent=2)
    if c.out is not None:
        _write(c.out, text)
    if c.json:
        print(text)
    else:
        render(result)
        if c.out is not None:
            print(f"wrote {c.out}")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    except OSError as error:
        raise LbmError(f"Cannot write {path} ({error.strerror or error}); choose a writable --out path.") from None


@dataclass(frozen=True)
class PlanConfig:
    """Power planner: trials per policy to detect p1 vs p2, and the minimum detectable difference for a budget.

    Trials are computed for a two-sided test at level alpha / comparisons (Bonferroni): by the
    arcsine (Cohen's h) approximation with Fleiss's continuity correction, and exactly, as the
    smallest n whose exact power of the test that comparisons run (Boschloo's exact unconditional
    test) reaches the target. With --trials N it also prints the minimum detectable improvement over
    p1 at N trials per policy. With --sequential-looks K it builds the O'Brien-Fleming
    group-sequential design for N (or the exact n) trials and prints its boundaries, exact
    worst-case type-I error and expected trials. Example:

        lbm stats plan --p1 0.5 --p2 0.7 --alpha 0.05 --power 0.8 --trials 50 --comparisons 3
    """

    p1: float = 0.5
    """Success rate of the baseline policy."""
    p2: float = 0.7
    """Success rate of the policy you hope to distinguish from it."""
    alpha: float = 0.05
    """Family-wise two-sided type-I error rate."""
    power: float = 0.8
    """Desired probability of detecting the difference."""
    trials: int | None = None
    """A trial budget per policy (and task) to report the minimum detectable difference for."""
    comparisons: int = 1
    """Number of pairwise comparisons sharing alpha (K policies: K(K-1)/2)."""
    sequential_looks: int = 0
    """If > 0, also design a group-sequential test with this many analyses."""


def plan(config: Annotated[PlanConfig, tyro.conf.arg(name="")]) -> int:
    """Power planner (see PlanConfig)."""
    from rich.console import Console
    from rich.table import Table

    c = config
    if c.comparisons < 1:
        raise LbmError(f"--comparisons {c.comparisons} must be >= 1 (K policies compared pairwise: K(K-1)/2).")
    if c.trials is not None and c.trials < 2:
        raise LbmError(f"--trials {c.trials}: a comparison needs at least 2 trials per policy.")
    if c.sequential_looks < 0:
        raise LbmError(f"--sequential-looks {c.sequential_looks} must be 0 (off) or a positive number of analyses.")
    level = c.alpha / c.comparisons
    approx = stats.samplesize_approx(c.p1, c.p2, level, c.power)
    exact = stats.samplesize_exact(c.p1, c.p2, level, c.power)
    console = Console()
    t = Table(
        title=f"Trials per policy: p1={c.p1:g} vs p2={c.p2:g}, two-sided alpha={c.alpha:g}"
        + (f"/{c.comparisons}" if c.comparisons > 1 else "")
        + f", power={c.power:g}"
    )
    t.add_column("method")
    t.add_column("trials per policy", justify="right")
    t.add_row("arcsine approximation + Fleiss continuity correction", str(approx))
    t.add_row("exact power of Boschloo's exact unconditional test (the test comparisons run)", str(exact))
    console.print(t)
    console.print(f"Exact power at {exact} trials: {stats.exact_power(c.p1, c.p2, exact, level):.3f}.")
    if c.trials is not None:
        mdd = stats.min_detectable_difference_exact(c.trials, level, c.power, baseline=c.p1)
        mdd_a = stats.min_detectable_difference_approx(c.trials, level, c.power, baseline=c.p1)
        pw = stats.exact_power(c.p1, c.p2, c.trials, level)
        if math.isnan(mdd):
            console.print(f"With {c.trials} trials per policy no improvement over p1={c.p1:g} reaches power {c.power:g}.")
        else:
            console.print(
                f"With {c.trials} trials per policy: minimum detectable improvement over p1={c.p1:g} is "
                f"{100 * mdd:.1f} pp (exact; arcsine approximation {100 * mdd_a:.1f} pp); exact power for "
                f"p2={c.p2:g} is {pw:.3f}."
            )
    if c.sequential_looks > 0:
        n_max = c.trials or exact
        design = stats.sequential_design(n_max, c.sequential_looks, level, progress=True)
        t = Table(title=f"Group-sequential design, n_max={n_max}, O'Brien-Fleming spending (Lan-DeMets)")
        for col in ("look", "trials per policy", "stop if |Z| >=", "alpha spent"):
            t.add_column(col, justify="right")
        for k, (n, thr, s) in enumerate(zip(design.looks, design.thresholds, design.spent), 1):
            t.add_row(str(k), str(n), "never" if math.isinf(thr) else f"{thr:.3f}", f"{s:.4f}")
        console.print(t)
        sim = stats.simulate_sequential(design, c.p1, c.p2, reps=20_000)
        console.print(
            f"Exact worst-case type-I error: {design.worst_type1:.4f} (<= {level:g}). At p1={c.p1:g}, "
            f"p2={c.p2:g}: power {sim['p_reject']:.3f}, mean trials per policy {sim['mean_trials']:.1f} "
            "(simulated, 20,000 runs)."
        )
    return 0


@dataclass(frozen=True)
class ReportConfig:
    """Write a self-contained HTML report (plots embedded) and a markdown report from an evaluation folder.

    Contents: the comparison of `lbm stats compare` (tables, letters, verdicts, warnings), success
    with intervals per task and shift, Beta posterior violins labelled with letters, and, when the
    records carry data_fraction (and arm) columns, data-efficiency curves. Example:

        lbm report runs/eval1      # writes runs/eval1/report/report.html and report.md
    """

    dir: Annotated[Path, tyro.conf.Positional]
    """An `lbm eval --out` folder, or a records file."""
    out: Path | None = None
    """Folder to write the report into (default: DIR/report)."""
    alpha: float = 0.05
    """Family-wise type-I error rate."""
    test: Literal["boschloo", "barnard", "mcnemar"] = "boschloo"
    """Pairwise test."""
    correction: Literal["holm", "bonferroni", "none"] = "holm"
    """Multiple-comparison correction."""
    confidence: float = 0.95
    """Confidence level of intervals."""
    allow_unpaired: bool = False
    """Warn instead of failing when policies were evaluated on different trials/seeds."""


def report(config: Annotated[ReportConfig, tyro.conf.arg(name="")]) -> int:
    """Write the evaluation report (see ReportConfig)."""

    c = config
    df = load_records(c.dir, require_pairing=not c.allow_unpaired)
    base = Path(c.dir) if Path(c.dir).is_dir() else Path(c.dir).parent
    out = Path(c.out) if c.out is not None else base / "report"
    with writing("the report", out):
        paths = write_report(
            df,
            out,
            alpha=c.alpha,
            test=c.test,
            correction=c.correction,
            confidence=c.confidence,
            title=f"lbm report: {base.name}",
        )
    for p in paths:
        print(f"wrote {p}")
    return 0
