"""Demonstration generation: scripted experts -> one episode dataset.

Seeds. Episode ``k`` of task ``t`` is reset with ``lbm.sim.demo_seed(t, seed_offset + k)``, which
lies in the demonstration seed space ``[0, 2**30)``; evaluation uses ``[2**30, 2**31)``, so no
policy is evaluated on an initial condition it was trained on. The same arguments always give
the same dataset (episodes are written in task order, then episode order, whatever the number of
worker processes).

Only successful episodes are kept; failures are counted per task and reported (the episode
indices simply skip them, no retry with other seeds, so ``--episodes-per-task`` is an upper bound).
Each frame records ``(observation_t, action_t)``: the observation the expert acted on and the
action it took. Tasks with a symbolic goal (LIBERO) also record, per frame, the expert's subtask
instruction and the grounded symbolic state (see :meth:`lbm.data.DatasetWriter.add_episode`).

Resuming. Every finished episode (kept or failed) is saved at once into a staging folder beside
the output (``.NAME.episodes``); an interrupted generation run again with the same arguments loads
those instead of simulating them again, and the staging folder is deleted once the dataset is
complete. LIBERO episodes cost seconds each: a kill never costs more than the episodes in flight.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lbm.errors import LbmError
from lbm.files import write_json_atomic
from lbm.processes import exit_with_parent

EPISODES_PER_UNIT = 5  # episodes a worker runs per work unit: fine-grained progress, env reused within a unit


@dataclass(frozen=True)
class TaskSummary:
    """What generation produced for one task."""

    task: str
    """Simulator task name."""
    kept: int
    """Successful episodes written."""
    failed: int
    """Expert episodes that did not succeed within the step limit (dropped)."""
    mean_length: float
    """Mean length of the kept episodes, in frames (NaN if none kept)."""


@dataclass(frozen=True)
class GenerateSummary:
    """Result of :func:`generate_demos`."""

    root: Path
    """Folder the dataset was written to."""
    tasks: tuple[TaskSummary, ...]
    """Per-task counts, in task order."""
    episodes: int
    """Episodes written."""
    frames: int
    """Frames written."""
    seconds: float
    """Wall-clock time of the whole generation."""
    failed_episodes: tuple[tuple[str, int], ...] = field(default=())
    """``(task, episode index)`` of every dropped episode."""
    resumed: int = 0
    """Episodes (kept or failed) loaded from an interrupted run's staging folder instead of simulated."""

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (stored in ``info.json["lbm"]["generation"]``)."""
        return {
            "tasks": [{"task": t.task, "kept": t.kept, "failed": t.failed, "mean_length": t.mean_length} for t in self.tasks],
            "episodes": self.episodes,
            "frames": self.frames,
            "seconds": round(self.seconds, 2),
            "failed_episodes": [list(f) for f in self.failed_episodes],
        }


@dataclass(frozen=True)
class _Unit:
    task: str
    episodes: tuple[int, ...]
    cameras: tuple[str, ...]
    image_size: int
    max_steps: int | None
    paraphrases: bool
    seed_offset: int


_ENV_CACHE: dict[tuple, Any] = {}  # per worker process: the env of the task it ran last


def _env_for(unit: _Unit):
    # lbm.sim (MuJoCo) is imported where an env is built, so that `import lbm.data` stays light.
    from lbm.sim import make_env

    key = (unit.task, unit.cameras, unit.image_size, unit.max_steps)
    if key not in _ENV_CACHE:
        for env in _ENV_CACHE.values():
            env.close()
        _ENV_CACHE.clear()
        kwargs: dict[str, Any] = {"cameras": unit.cameras, "image_size": unit.image_size}
        if unit.max_steps is not None:
            kwargs["max_steps"] = unit.max_steps
        _ENV_CACHE[key] = make_env(unit.task, **kwargs)
    return _ENV_CACHE[key]


def _instruction(spec: Any, seed: int, paraphrases: bool) -> str:
    if not paraphrases:
        return spec.instruction
    choices = (spec.instruction, *spec.paraphrases)
    # Seeded by the episode seed alone: the same episode always gets the same wording.
    return choices[int(np.random.default_rng([seed, 0x1B3]).integers(len(choices)))]


def _run_unit(unit: _Unit) -> list[dict[str, Any]]:
    """Run the expert on the unit's episodes; one result dict per episode (success or not)."""
    import warnings

    from lbm.sim import demo_seed

    warnings.filterwarnings("ignore", message=".*Constant\\(s\\) may be too high.*")
    env = _env_for(unit)
    results = []
    for k in unit.episodes:
        seed = demo_seed(unit.task, unit.seed_offset + k)
        obs = env.reset(seed=seed)
        symbolic = bool(env.spec.goal)
        states, actions, subtasks, atoms = [], [], [], []
        frames: dict[str, list[np.ndarray]] = {c: [] for c in unit.cameras}
        success = False
        names: list[str] = []
        while True:
            if symbolic:
                truth = env.predicates()
                names = names or list(truth)
                atoms.append([truth[a] for a in names])
            action = np.asarray(env.expert_action(), np.float32)
            if symbolic:
                subtasks.append(env.expert_subtask()[1])  # after the action: the subtask it belongs to
            states.append(obs.state)
            actions.append(action)
            for cam in unit.cameras:
                frames[cam].append(obs.images[cam])
            step = env.step(action)
            obs = step.observation
            if step.done:
                success = bool(step.success)
                break
        results.append(
            {
                "task": unit.task,
                "episode": k,
                "seed": seed,
                "success": success,
                "instruction": _instruction(env.spec, seed, unit.paraphrases),
                "states": np.stack(states).astype(np.float32),
                "actions": np.stack(actions).astype(np.float32),
                "images": {c: np.stack(v) for c, v in frames.items()},
                "subtasks": subtasks if symbolic else None,
                "atoms": np.array(atoms, bool).reshape(len(states), len(names)) if symbolic else None,
                "atom_names": names,
            }
        )
    return results


class _Staging:
    """Finished episodes of an interrupted generation, one ``.npz`` each (never pickles)."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.root = out.parent / f".{out.name}.episodes"
        self.settings = settings
        stamp = self.root / "settings.json"
        if self.root.is_dir():
            try:
                same = json.loads(stamp.read_text()) == settings
            except (OSError, ValueError):
                same = False
            if not same:  # episodes of other settings would silently mix into this dataset
                shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stamp, settings)
        self.resumed = 0

    def _path(self, task: str, episode: int) -> Path:
        return self.root / f"{self.settings['tasks'].index(task):04d}-{episode:06d}.npz"

    def missing(self, unit: _Unit) -> _Unit | None:
        """The part of ``unit`` still to simulate (None: every episode is staged)."""
        todo = tuple(k for k in unit.episodes if not self._path(unit.task, k).is_file())
        return replace(unit, episodes=todo) if todo else None

    def save(self, r: dict[str, Any]) -> None:
        meta = {k: r[k] for k in ("task", "episode", "seed", "success", "instruction", "atom_names")}
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta))}
        if r["success"]:
            arrays |= {"states": r["states"], "actions": r["actions"], **{f"image.{c}": v for c, v in r["images"].items()}}
            if r["subtasks"] is not None:
                arrays |= {"subtasks": np.array(r["subtasks"]), "atoms": r["atoms"]}
        path = self._path(r["task"], r["episode"])
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # a kill mid-write leaves no half episode

    def load(self, unit: _Unit, episodes: Sequence[int]) -> list[dict[str, Any]]:
        out = []
        for k in episodes:
            path = self._path(unit.task, k)
            try:
                with np.load(path, allow_pickle=False) as f:
                    r: dict[str, Any] = json.loads(str(f["meta"]))
                    r["images"] = {c: f[f"image.{c}"] for c in unit.cameras} if r["success"] else {}
                    for key in ("states", "actions", "atoms"):
                        r[key] = f[key] if key in f else None
                    r["subtasks"] = [str(x) for x in f["subtasks"]] if "subtasks" in f else None
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
                raise LbmError(
                    f"The staged episode {path} of an interrupted generation is unreadable ({error}). Delete {self.root} "
                    "to simulate its episodes again, then rerun the command."
                ) from None
            out.append(r)
        self.resumed += len(out)
        return out

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _worker_init(parent_pid: int) -> None:
    exit_with_parent(parent_pid)  # a killed `lbm data generate` takes its workers with it
    # One env per core: software rendering with more threads than cores only adds contention.
    os.environ.setdefault("LP_NUM_THREADS", "1")
    import lbm  # noqa: F401  (sets MUJOCO_GL before MuJoCo is imported)


def _results(units: list[_Unit], workers: int, staging: _Staging) -> Iterator[list[dict[str, Any]]]:
    """Each unit's results in unit order: staged episodes loaded, the others simulated (and staged)."""
    parts = [staging.missing(u) for u in units]
    todo = [p for p in parts if p is not None]
    if workers <= 1 or len(todo) <= 1:
        yield from _merge(units, parts, map(_run_unit, todo), staging)
        return
    # spawn, not fork: a forked child would inherit the parent's threads (Arrow, OpenMP) mid-state.
    with mp.get_context("spawn").Pool(min(workers, len(todo)), initializer=_worker_init, initargs=(os.getpid(),)) as pool:
        # imap keeps submission order: the dataset is the same whatever the worker count.
        yield from _merge(units, parts, pool.imap(_run_unit, todo, chunksize=1), staging)


def _merge(units: list[_Unit], parts: list[_Unit | None], fresh: Iterator[list[dict[str, Any]]], staging: _Staging):
    for unit, part in zip(units, parts):
        new = next(fresh) if part is not None else []
        for r in new:
            staging.save(r)
        simulated = set(part.episodes) if part is not None else set()
        old = staging.load(unit, [k for k in unit.episodes if k not in simulated])
        yield sorted(old + new, key=lambda r: r["episode"])


def generate_demos(
    tasks: Sequence[str],
    episodes_per_task: int,
    out: Path,
    *,
    cameras: Sequence[str] = (),
    image_size: int = 96,
    workers: int = 2,
    video: bool = True,
    max_steps: int | None = None,
    paraphrases: bool = False,
    seed_offset: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> GenerateSummary:
    """Run the scripted expert of each task and write the successful episodes as one dataset.

    ``tasks`` are Meta-World task names (already resolved, e.g. by ``lbm.sim.resolve_tasks``).
    Episode ``k`` of a task uses seed ``demo_seed(task, seed_offset + k)``. The dataset appears at
    ``out`` only when complete. Returns a :class:`GenerateSummary`.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from lbm.data.dataset import DatasetWriter
    from lbm.sim import embodiment_of, get_task, make_env

    if episodes_per_task < 1:
        raise LbmError(f"episodes_per_task must be at least 1, got {episodes_per_task}.")
    if workers < 1:
        raise LbmError(f"workers must be at least 1, got {workers}.")
    if image_size < 8:
        raise LbmError(f"image_size must be at least 8 pixels, got {image_size}.")
    if seed_offset < 0:
        raise LbmError(f"seed_offset must be >= 0, got {seed_offset}.")
    tasks = [get_task(t).name for t in tasks]  # unknown names -> "did you mean"
    if not tasks:
        raise LbmError("No tasks given; pass e.g. --tasks mt10 or --tasks reach-v3,push-v3.")
    cameras = tuple(cameras)
    out = Path(out)

    bodies = {t: embodiment_of(t).name for t in tasks}
    if len(set(bodies.values())) > 1:
        by_body: dict[str, list[str]] = {}
        for t, b in bodies.items():
            by_body.setdefault(b, []).append(t)
        raise LbmError(
            "A dataset holds one robot body; these tasks need "
            + "; ".join(f"{b} ({', '.join(ts[:3])}{', ...' if len(ts) > 3 else ''})" for b, ts in by_body.items())
            + ". Generate one dataset per body and train on them together (--data.roots A B)."
        )
    # One env in this process to learn the embodiment and to reject unknown cameras early.
    probe = make_env(tasks[0], cameras=cameras, image_size=image_size)
    embodiment = probe.embodiment
    probe.close()

    units = [
        _Unit(
            t,
            tuple(range(s, min(s + EPISODES_PER_UNIT, episodes_per_task))),
            cameras,
            image_size,
            max_steps,
            paraphrases,
            seed_offset,
        )
        for t in tasks
        for s in range(0, episodes_per_task, EPISODES_PER_UNIT)
    ]
    total = len(tasks) * episodes_per_task
    kept = {t: [] for t in tasks}
    failed: list[tuple[str, int]] = []
    start = time.perf_counter()
    writer = DatasetWriter(out, embodiment, cameras=cameras, video=video, overwrite=overwrite)
    for line in writer.recovered:
        print(f"[lbm data generate] {out}: {line}")
    settings = {
        "tasks": tasks,
        "cameras": list(cameras),
        "image_size": image_size,
        "max_steps": max_steps,
        "paraphrases": paraphrases,
        "seed_offset": seed_offset,
    }
    try:
        staging = _Staging(out, settings)
    except (OSError, LbmError) as e:
        writer.abort()
        raise LbmError(f"Cannot create the staging folder beside {out} ({e}); choose a writable --out folder.") from None
    columns = (
        TextColumn("[bold]demos"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, disable=not progress, transient=False) as bar:
            job = bar.add_task("demos", total=total, failed=0)
            for results in _results(units, workers, staging):
                for r in results:
                    if r["success"]:
                        writer.add_episode(
                            r["states"],
                            r["actions"],
                            r["instruction"],
                            images=r["images"],
                            sim_task=r["task"],
                            seed=r["seed"],
                            subtasks=r["subtasks"],
                            atoms=r["atoms"],
                            atom_names=r["atom_names"],
                        )
                        kept[r["task"]].append(len(r["states"]))
                    else:
                        failed.append((r["task"], r["episode"]))
                    bar.update(job, advance=1, failed=len(failed))
        per_task = tuple(
            TaskSummary(
                t, len(kept[t]), sum(1 for f in failed if f[0] == t), float(np.mean(kept[t])) if kept[t] else float("nan")
            )
            for t in tasks
        )
        n_eps = sum(len(v) for v in kept.values())
        if n_eps == 0:
            raise LbmError(
                f"The expert failed every one of the {total} episodes, so no dataset was written. Raise --max-steps "
                "(some tasks need up to 300 steps) or check the task names."
            )
        summary = GenerateSummary(
            out, per_task, n_eps, sum(sum(v) for v in kept.values()), time.perf_counter() - start, tuple(failed), staging.resumed
        )
        writer.extra_info["generation"] = {
            "tasks": tasks,
            "episodes_per_task": episodes_per_task,
            "cameras": list(cameras),
            "image_size": image_size,
            "max_steps": max_steps,
            "paraphrases": paraphrases,
            "seed_offset": seed_offset,
            "seed_space": "lbm.sim.demo_seed(task, seed_offset + episode)",
            **summary.to_json(),
        }
        writer.finalize()
    except OSError as e:
        writer.abort()
        raise LbmError(
            f"Writing the dataset to {out} failed ({e}); nothing that looks like a dataset was left behind. Free disk "
            f"space or choose another --out folder, then run the command again (finished episodes in {staging.root} are reused)."
        ) from e
    except BaseException:
        writer.abort()  # interrupted or failed: nothing that looks like a dataset is left behind
        if any(staging.root.glob("*.npz")):
            print(
                f"[lbm data generate] interrupted: finished episodes are kept in {staging.root}; run the same command to resume."
            )
        raise
    if staging.resumed:
        print(f"[lbm data generate] resumed: {staging.resumed} episodes came from the interrupted run's {staging.root.name}.")
    staging.discard()
    return summary
