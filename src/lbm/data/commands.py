"""``lbm data ...`` commands: generate, info, audit. Thin wrappers over :mod:`lbm.data`."""

from __future__ import annotations

import math
from pathlib import Path

import tyro

from lbm.errors import LbmError


def _console():
    from rich.console import Console

    return Console()


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


def generate(
    tasks: str = "mt10",
    episodes_per_task: int = 50,
    out: Path = Path("data/demos"),
    cameras: str = "",
    image_size: int = 96,
    workers: int = 2,
    max_steps: int | None = None,
    paraphrases: bool = False,
    video: bool = True,
    overwrite: bool = False,
    seed_offset: int = 0,
) -> int:
    """Run the scripted experts and write one demonstration dataset (LeRobot v3 layout).

    Only successful episodes are kept; failures are counted per task and reported. Episode k of a
    task is reset with seed demo_seed(task, seed_offset + k), from the demonstration seed space
    [0, 2^30), disjoint from evaluation seeds. The dataset appears at --out only once complete.

    Args:
        tasks: Task set (mt10, mt50, ml45-train, ml45-test) or comma-separated task names.
        episodes_per_task: Expert episodes to run per task (failed ones are dropped).
        out: Output folder of the dataset; must not exist unless --overwrite.
        cameras: Comma-separated camera names to record (empty: state only). `lbm tasks` lists them.
        image_size: Square image size in pixels when cameras are recorded.
        workers: Parallel worker processes (one simulator each).
        max_steps: Episode step limit (default: the task's own limit).
        paraphrases: Label each episode with a seeded choice among the instruction and its paraphrases.
        video: Store images as mp4 video (h264); --no-video stores PNG images in the parquet files.
        overwrite: Replace an existing dataset at --out (only once the new one is complete).
        seed_offset: Start of the episode index range, to make a disjoint extra set of demos.
    """
    from rich.table import Table

    from lbm.data.generate import generate_demos
    from lbm.sim import resolve_tasks

    names = resolve_tasks(tasks)
    cams = tuple(c.strip() for c in cameras.split(",") if c.strip())
    summary = generate_demos(
        names, episodes_per_task, out, cameras=cams, image_size=image_size, workers=workers, video=video,
        max_steps=max_steps, paraphrases=paraphrases, seed_offset=seed_offset, overwrite=overwrite,
    )
    table = Table(title="demonstrations kept per task")
    for col in ("task", "kept", "failed", "mean length"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for t in summary.tasks:
        table.add_row(t.task, str(t.kept), str(t.failed) if not t.failed else f"[yellow]{t.failed}", "-" if math.isnan(t.mean_length) else f"{t.mean_length:.1f}")
    console = _console()
    console.print(table)
    console.print(f"{summary.episodes} episodes, {summary.frames} frames in {summary.seconds:.0f} s; "
                  f"{sum(t.failed for t in summary.tasks)} failed episodes dropped")
    console.print(f"wrote [bold]{summary.root}[/bold] ({_size_mb(summary.root):.1f} MB)")
    return 0


def info(root: tyro.conf.Positional[Path]) -> int:
    """Summarize a dataset: episodes, frames, fps, features with shapes, per-task counts, disk size.

    Args:
        root: Dataset folder (ours or a local LeRobot v3 dataset).
    """
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


def audit(root: tyro.conf.Positional[Path]) -> int:
    """Check a dataset for defects and print a report; exit code 1 when any error is found.

    Checks: files present and readable, info.json vs data (features, shapes, counts), NaN/inf,
    action-bound violations, broken indices, timestamps vs fps, video frame rate and length
    (errors); exactly-constant dimensions and episode-length outliers (warnings).

    Args:
        root: Dataset folder to audit.
    """
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
