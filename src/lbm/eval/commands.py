"""Command-line verbs of the evaluation package: `lbm eval`, `lbm stats compare`, `lbm stats plan`, `lbm report`.

Each function is parsed by tyro from its signature; its docstring is the help. Heavy imports live
inside the functions so that `lbm --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path


def evaluate(
    policy: list[str],
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
    """
    from rich.console import Console
    from rich.table import Table

    from lbm.eval.runner import EvalConfig, run_evaluation

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
    if summary.files:
        console.print(f"records: {', '.join(str(f) for f in summary.files)}")
        console.print(f"un-blind and compare: lbm stats compare {summary.out}")
    else:
        console.print(f"[yellow]incomplete: rerun the same command to resume into {summary.out}")
    return 0
