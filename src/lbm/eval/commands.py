"""Command-line verbs of the evaluation package: `lbm eval`, `lbm stats compare`, `lbm stats plan`, `lbm report`.

Each function is parsed by tyro from its signature; its docstring is the help. Heavy imports live
inside the functions so that `lbm --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tyro  # light, and already loaded by the CLI; needed to mark positional arguments


def evaluate(
    policy: Annotated[list[str], tyro.conf.UseAppendAction],
    tasks: str = "mt10",
    shifts: str = "none",
    trials: int = 10,
    out: Path = Path("runs/eval"),
    workers: int = 1,
    envs_per_worker: int = 8,
    cameras: str = "",
    image_size: int = 96,
    execute_steps: int | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    jsonl: bool = False,
    video: bool = False,
    trial_timeout_s: float = 600.0,
    shield: bool = False,
    monitor: Path | None = None,
    features: bool = False,
    action_samples: int = 0,
) -> int:
    """Blind, paired, randomized closed-loop evaluation of policies on simulation tasks.

    Every policy runs trial i of each task and shift from the same seed (paired). Trials of all
    policies are interleaved in a seeded random order, and the runner and progress bar see only
    opaque policy ids (p-xxxx); the id -> name mapping is written to OUT/blinding.json before the
    first trial (its SHA-256 is in OUT/manifest.json) and joined back only at analysis
    (`lbm stats compare OUT`). Rerunning the same command into the same OUT resumes an interrupted
    evaluation; different settings are refused. Records: OUT/records.parquet (schema in
    lbm.eval.records). Example:

        lbm eval --policy mine=runs/ckpt --policy oracle=expert --policy chance=random \\
            --tasks reach-v3,drawer-open-v3 --shifts none,obs_noise:low --trials 20 --out runs/eval1

    Args:
        policy: NAME=SOURCE, repeatable; SOURCE is a checkpoint folder or a built-in: expert, random.
        tasks: Task set (mt10, mt50, ml45-train, ml45-test) or comma-separated task names.
        shifts: Comma-separated shift conditions (none, obs_noise:low, ...); '+' composes shifts in one condition.
        trials: Trials per policy, task and shift condition.
        out: Evaluation folder (records, manifest, blinding, videos).
        workers: Worker processes, each with its own environments (1 runs in this process).
        envs_per_worker: Environments a worker steps together; each policy's envs share one batched inference call.
        cameras: Comma-separated cameras to render (empty: state observations only).
        image_size: Rendered image height and width in pixels.
        execute_steps: Actions executed per predicted chunk before asking the policy again (default: the policy's own default, else the whole chunk).
        max_steps: Step limit per trial (default: the task's limit).
        seed: Seed of the trial order, the blind ids and the random baseline (initial conditions depend only on task and trial).
        jsonl: Also write the records as OUT/records.jsonl.
        video: Write one mp4 per trial of the first camera under OUT/videos (needs --cameras).
        trial_timeout_s: Wall-clock limit for a batch of trials; trials still running then fail with reason 'timeout'.
        shield: Pass every action through the embodiment's action shield (bounds, workspace, rate limits; NaN -> hold) and print interventions and violations per 1000 steps.
        monitor: Failure-monitor folder (lbm.safety.monitor): record each trial's first alert step (column alert_step; -1 = none). Needs checkpoint policies.
        features: Store per-step policy features under OUT/features to train a failure monitor. Needs checkpoint policies.
        action_samples: With --features: also store per step the variance of this many extra action chunks sampled for the same observation (flow/diffusion policies; the failure-detector baseline). Outcomes are unchanged.
    """
    from rich.console import Console
    from rich.table import Table

    from lbm.eval.runner import EvalConfig, run_evaluation

    if action_samples and not features:
        from lbm.errors import LbmError

        raise LbmError("--action-samples stores the variance beside the features: add --features.")
    if monitor is not None:  # a wrong path fails now, not inside every trial
        from lbm.safety.monitor import FailureMonitor

        FailureMonitor.load(Path(monitor))

    config = EvalConfig(
        tasks=tasks,
        shifts=shifts,
        trials=trials,
        out=Path(out),
        workers=workers,
        envs_per_worker=envs_per_worker,
        cameras=tuple(c.strip() for c in cameras.split(",") if c.strip()),
        image_size=image_size,
        execute_steps=execute_steps,
        max_steps=max_steps,
        seed=seed,
        jsonl=jsonl,
        video=video,
        trial_timeout_s=trial_timeout_s,
        shield=shield,
        monitor=monitor,
        features=features,
        action_samples=action_samples,
    )
    summary = run_evaluation(policy, config)
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
    if summary.files and shield:
        from lbm.eval.stats import load_records as load_blind  # blind ids, like the table above
        from lbm.safety.report import print_safety_table, safety_table

        blind = load_blind(summary.out / "records.parquet", require_pairing=False)
        print_safety_table(safety_table(blind), "safety by blind policy id (shield on)")
    if summary.files:
        console.print(f"records: {', '.join(str(f) for f in summary.files)}")
        console.print(f"un-blind and compare: lbm stats compare {summary.out}")
    else:
        console.print(f"[yellow]incomplete: rerun the same command to resume into {summary.out}")
    return 0


def _load_for_analysis(records: Path, require_pairing: bool = True):
    """Records un-blinded through the rollout package when it is present, else the plain stats loader."""
    try:
        from lbm.eval.records import load_records
    except ImportError:  # pragma: no cover - the stats half works without the runner
        from lbm.eval.stats import load_records
    return load_records(Path(records), require_pairing=require_pairing)


def compare(
    records: Annotated[Path, tyro.conf.Positional],
    json: bool = False,
    alpha: float = 0.05,
    test: str = "boschloo",
    correction: str = "holm",
    family: str = "cell",
    interval: str = "wilson",
    confidence: float = 0.95,
    bootstrap_reps: int = 2000,
    seed: int = 0,
    allow_unpaired: bool = False,
    out: Path | None = None,
) -> int:
    """Compare policies from rollout records: per task/shift tables, letters, pairwise tests, aggregates, verdicts.

    Per (task, shift) cell: n, successes, rate with a Wilson (or Clopper-Pearson) interval, the
    Beta(1+s, 1+f) posterior mean, and compact letters (policies sharing no letter differ
    significantly). Every pair of policies gets an exact two-sided test, a Newcombe interval for
    the difference, and family-wise adjusted p-values. Across cells: mean and IQM with stratified
    bootstrap intervals, P(A > B), and a Cochran-Mantel-Haenszel test. Verdicts state only what
    the adjusted tests support, and a warning says when the trials were too few to detect the
    differences seen. Example:

        lbm stats compare runs/eval1 --test boschloo --correction holm

    Args:
        records: An `lbm eval --out` folder, or a records file (.parquet / .jsonl).
        json: Print the result as JSON (schema in lbm.eval.compare) instead of tables.
        alpha: Family-wise type-I error rate.
        test: Pairwise test: boschloo (exact unconditional, default), barnard, or mcnemar (exact, paired by seed; more powerful when outcomes on a seed are correlated).
        correction: Multiple-comparison correction across pairs: holm, bonferroni or none.
        family: What one correction covers: cell (the pairs of each task/shift, as the TRI LBM study) or study (all pairs of all cells).
        interval: Interval for a success rate: wilson or clopper-pearson.
        confidence: Confidence level of intervals.
        bootstrap_reps: Stratified bootstrap replicates for the aggregate intervals.
        seed: Seed of the bootstrap.
        allow_unpaired: Warn instead of failing when policies were evaluated on different trials/seeds.
        out: Also write the JSON result to this file.
    """
    import json as json_module

    from lbm.eval.compare import compare_records, render

    df = _load_for_analysis(records, require_pairing=not allow_unpaired)
    result = compare_records(df, test=test, correction=correction, alpha=alpha, confidence=confidence,
                             interval=interval, family=family, bootstrap_reps=bootstrap_reps, seed=seed,
                             progress=not json)
    text = json_module.dumps(result, indent=2)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    if json:
        print(text)
    else:
        render(result)
        if out is not None:
            print(f"wrote {out}")
    return 0


def plan(
    p1: float = 0.5,
    p2: float = 0.7,
    alpha: float = 0.05,
    power: float = 0.8,
    trials: int | None = None,
    comparisons: int = 1,
    sequential_looks: int = 0,
) -> int:
    """Power planner: trials per policy to detect p1 vs p2, and the minimum detectable difference for a budget.

    Trials are computed two ways for a two-sided test at level alpha / comparisons (Bonferroni):
    the arcsine (Cohen's h) normal approximation with Fleiss's continuity correction, and the
    exact answer, the smallest n whose exact power (enumerated, no simulation) of the exact
    unconditional Barnard test reaches the target. With --trials N it also prints the minimum
    detectable difference over p1 at N trials per policy. With --sequential-looks K it builds the
    O'Brien-Fleming group-sequential design for N (or the exact n) trials and prints its
    boundaries, exact worst-case type-I error and expected trials. Example:

        lbm stats plan --p1 0.5 --p2 0.7 --alpha 0.05 --power 0.8 --trials 50 --comparisons 3

    Args:
        p1: Success rate of the baseline policy.
        p2: Success rate of the policy you hope to distinguish from it.
        alpha: Family-wise two-sided type-I error rate.
        power: Desired probability of detecting the difference.
        trials: A trial budget per policy (and task) to report the minimum detectable difference for.
        comparisons: Number of pairwise comparisons sharing alpha (K policies: K(K-1)/2).
        sequential_looks: If > 0, also design a group-sequential test with this many analyses.
    """
    import math

    from rich.console import Console
    from rich.table import Table

    from lbm.errors import LbmError
    from lbm.eval import stats

    if comparisons < 1:
        raise LbmError(f"comparisons={comparisons} must be >= 1 (K policies compared pairwise: K(K-1)/2).")
    level = alpha / comparisons
    approx = stats.samplesize_approx(p1, p2, level, power)
    exact = stats.samplesize_exact(p1, p2, level, power)
    console = Console()
    t = Table(title=f"Trials per policy: p1={p1:g} vs p2={p2:g}, two-sided alpha={alpha:g}"
                    + (f"/{comparisons}" if comparisons > 1 else "") + f", power={power:g}")
    t.add_column("method")
    t.add_column("trials per policy", justify="right")
    t.add_row("arcsine approximation + Fleiss continuity correction", str(approx))
    t.add_row("exact power of the exact unconditional (Barnard) test", str(exact))
    console.print(t)
    console.print(f"Exact power at {exact} trials: {stats.exact_power(p1, p2, exact, level):.3f}.")
    if trials is not None:
        if trials < 2:
            raise LbmError(f"--trials {trials}: a comparison needs at least 2 trials per policy.")
        mdd = stats.min_detectable_difference_exact(trials, level, power, baseline=p1)
        mdd_a = stats.min_detectable_difference_approx(trials, level, power, baseline=p1)
        pw = stats.exact_power(p1, p2, trials, level)
        if math.isnan(mdd):
            console.print(f"With {trials} trials per policy no improvement over p1={p1:g} reaches power {power:g}.")
        else:
            console.print(f"With {trials} trials per policy: minimum detectable improvement over p1={p1:g} is "
                          f"{100 * mdd:.1f} pp (exact; arcsine approximation {100 * mdd_a:.1f} pp); exact power "
                          f"for p2={p2:g} is {pw:.3f}.")
    if sequential_looks > 0:
        n_max = trials or exact
        design = stats.sequential_design(n_max, sequential_looks, level, progress=True)
        t = Table(title=f"Group-sequential design, n_max={n_max}, O'Brien-Fleming spending (Lan-DeMets)")
        for col in ("look", "trials per policy", "stop if |Z| >=", "alpha spent"):
            t.add_column(col, justify="right")
        for k, (n, c, s) in enumerate(zip(design.looks, design.thresholds, design.spent), 1):
            t.add_row(str(k), str(n), "never" if math.isinf(c) else f"{c:.3f}", f"{s:.4f}")
        console.print(t)
        sim = stats.simulate_sequential(design, p1, p2, reps=20_000)
        console.print(f"Exact worst-case type-I error: {design.worst_type1:.4f} (<= {level:g}). At p1={p1:g}, "
                      f"p2={p2:g}: power {sim['p_reject']:.3f}, mean trials per policy {sim['mean_trials']:.1f} "
                      f"(simulated, 20,000 runs).")
    return 0


def report(
    dir: Annotated[Path, tyro.conf.Positional],
    out: Path | None = None,
    alpha: float = 0.05,
    test: str = "boschloo",
    correction: str = "holm",
    confidence: float = 0.95,
    allow_unpaired: bool = False,
) -> int:
    """Write a self-contained HTML report (plots embedded) and a markdown report from an evaluation folder.

    Contents: the comparison of `lbm stats compare` (tables, letters, verdicts, warnings), success
    with intervals per task and shift, Beta posterior violins labelled with letters, and, when the
    records carry data_fraction (and arm) columns, data-efficiency curves. Example:

        lbm report runs/eval1      # writes runs/eval1/report/report.html and report.md

    Args:
        dir: An `lbm eval --out` folder, or a records file.
        out: Folder to write the report into (default: DIR/report).
        alpha: Family-wise type-I error rate.
        test: Pairwise test: boschloo, barnard or mcnemar.
        correction: holm, bonferroni or none.
        confidence: Confidence level of intervals.
        allow_unpaired: Warn instead of failing when policies were evaluated on different trials/seeds.
    """
    from lbm.eval.report import write_report

    df = _load_for_analysis(dir, require_pairing=not allow_unpaired)
    base = Path(dir) if Path(dir).is_dir() else Path(dir).parent
    paths = write_report(df, Path(out) if out is not None else base / "report", alpha=alpha, test=test,
                         correction=correction, confidence=confidence, title=f"lbm report: {base.name}")
    for p in paths:
        print(f"wrote {p}")
    return 0
