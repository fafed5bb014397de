"""``lbm data ...`` commands: generate, info, audit. Thin wrappers over :mod:`lbm.data`.

The CLI imports every command module to build its help, so each command imports its heavy
modules (MuJoCo, Arrow, rich) when it runs: ``lbm --help`` stays instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from lbm.errors import LbmError


def _console():
    from rich.console import Console

    return Console()


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


@dataclass(frozen=True)
class GenerateConfig:
    """Run the scripted experts and write one demonstration dataset (LeRobot v3 layout).

    Only successful episodes are kept; failures are counted per task and reported. Episode k of a
    task is reset with seed demo_seed(task, seed_offset + k), from the demonstration seed space
    [0, 2^30), disjoint from evaluation seeds. The dataset appears at --out only once complete.
    """

    tasks: str = "mt10"
    """Task set (mt10, mt50, ml45-train, ml45-test) or comma-separated task names."""
    episodes_per_task: int = 50
    """Expert episodes to run per task (failed ones are dropped)."""
    out: Path = Path("data/demos")
    """Output folder of the dataset; must not exist unless --overwrite."""
    cameras: str = ""
    """Comma-separated camera names to record (empty: state only). `lbm tasks` lists them."""
    image_size: int = 96
    """Square image size in pixels when cameras are recorded."""
    workers: int = 2
    """Parallel worker processes (one simulator each)."""
    max_steps: int | None = None
    """Episode step limit (default: the task's own limit)."""
    paraphrases: bool = False
    """Label each episode with a seeded choice among the instruction and its paraphrases."""
    video: bool = True
    """Store images as mp4 video (h264); --no-video stores PNG images in the parquet files."""
    overwrite: bool = False
    """Replace an existing dataset at --out (the old one is kept until the new one is complete)."""
    seed_offset: int = 0
    """Start of the episode index range, to make a disjoint extra set of demos."""


def generate(config: Annotated[GenerateConfig, tyro.conf.arg(name="")]) -> int:
    """Write a demonstration dataset (see GenerateConfig)."""
    from rich.table import Table

    from lbm.data.generate import generate_demos
    from lbm.sim import resolve_tasks

    c = config
    names = resolve_tasks(c.tasks)
    cams = tuple(x.strip() for x in c.cameras.split(",") if x.strip())
    summary = generate_demos(
        names,
        c.episodes_per_task,
        c.out,
        cameras=cams,
        image_size=c.image_size,
        workers=c.workers,
        video=c.video,
        max_steps=c.max_steps,
        paraphrases=c.paraphrases,
        seed_offset=c.seed_offset,
        overwrite=c.overwrite,
    )
    table = Table(title="demonstrations kept per task")
    for col in ("task", "kept", "failed", "mean length"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for t in summary.tasks:
        table.add_row(
            t.task,
            str(t.kept),
            str(t.failed) if not t.failed else f"[yellow]{t.failed}",
            "-" if math.isnan(t.mean_length) else f"{t.mean_length:.1f}",
        )
    console = _console()
    console.print(table)
    console.print(
        f"{summary.episodes} episodes, {summary.frames} frames in {summary.seconds:.0f} s; "
        f"{sum(t.failed for t in summary.tasks)} failed episodes dropped"
    )
    console.print(f"wrote [bold]{summary.root}[/bold] ({_size_mb(summary.root):.1f} MB)")
    return 0


@dataclass(frozen=True)
class DatasetPath:
    """A dataset folder."""

    root: Annotated[Path, tyro.conf.Positional]
    """Dataset folder (ours or a local LeRobot v3 dataset)."""


def info(config: Annotated[DatasetPath, tyro.conf.arg(name="")]) -> int:
    """Summarize a dataset: episodes, frames, fps, features with shapes, per-task counts, disk size."""
    root = config.root
    from collections import Counter

    from rich.table import Table

    from lbm.data.dataset import EpisodeDataset

    ds = EpisodeDataset(root)
    console = _console()
    head = Table(title=str(ds.root), show_header=False)
    head.add_column(style="bold")
    head.add_column()
    emb = ds.embodiment
    for k, v in (
        ("format", f"LeRobot {ds.info.get('codebase_version')}"),
        ("robot / embodiment", f"{ds.info.get('robot_type')} / {emb.name} (state {emb.state_dim}, action {emb.action_dim})"),
        ("episodes", str(ds.num_episodes)),
        ("frames", str(ds.num_frames)),
        ("fps", f"{ds.fps:g}"),
        ("tasks", str(len(ds.tasks))),
        ("cameras", ", ".join(ds.cameras) or "none (state only)"),
        ("disk size", f"{_size_mb(ds.root):.1f} MB"),
    ):
        head.add_row(k, v)
    console.print(head)
    feats = Table(title="features")
    for col in ("key", "dtype", "shape"):
        feats.add_column(col)
    for key, ft in ds.features.items():
        feats.add_row(key, str(ft.get("dtype")), str(tuple(ft.get("shape", ()))))
    console.print(feats)
    per = Table(title="episodes per task")
    for col in ("task", "instruction(s)", "episodes", "frames", "mean length"):
        per.add_column(col, justify="right" if col in ("episodes", "frames", "mean length") else "left")
    groups: dict[str, list[int]] = {}
    for i in range(ds.num_episodes):
        groups.setdefault(ds.episode_sim_task(i) or ds.episode_task(i), []).append(i)
    for name, members in groups.items():
        lengths = [ds.episode_length(i) for i in members]
        words = Counter(ds.episode_task(i) for i in members)
        shown = "; ".join(w for w, _ in words.most_common(2)) + (f" (+{len(words) - 2})" if len(words) > 2 else "")
        per.add_row(name, shown, str(len(members)), str(sum(lengths)), f"{sum(lengths) / len(lengths):.1f}")
    console.print(per)
    return 0


def audit(config: Annotated[DatasetPath, tyro.conf.arg(name="")]) -> int:
    """Check a dataset for defects and print a report; exit code 1 when any error is found.

    Checks: files present and readable, info.json vs data (features, shapes, counts), NaN/inf,
    action-bound violations, broken indices, timestamps vs fps, video frame rate, size and length
    (errors); exactly-constant dimensions and episode-length outliers (warnings).
    """
    root = config.root
    from rich.table import Table

    from lbm.data.audit import audit_dataset

    if not Path(root).exists():
        raise LbmError(f"Dataset folder {root} does not exist. Check the path, or create one with `lbm data generate`.")
    rep = audit_dataset(root)
    console = _console()
    table = Table(title=f"audit of {rep.root}")
    for col in ("check", "result"):
        table.add_column(col)
    for check in rep.checks:
        found = [f for f in rep.findings if f.check == check]
        if not found:
            table.add_row(check, "[green]ok")
        for f in found:
            color = "red" if f.level == "error" else "yellow"
            table.add_row(check, f"[{color}]{f.level}[/{color}]: {f.message}")
    console.print(table)
    verdict = "[green]PASSED" if rep.ok else "[red]FAILED"
    console.print(f"{verdict}[/] with {len(rep.errors)} error(s) and {len(rep.warnings)} warning(s).")
    return 0 if rep.ok else 1
