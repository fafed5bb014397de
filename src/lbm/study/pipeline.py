"""The study's stages, each cached by a content hash of its settings: demos, training, evaluation.

Every stage builds into ``cache/KIND-HASH.partial`` (which training and evaluation resume from) and
is renamed to ``cache/KIND-HASH`` only when complete, so an interrupted study continues where it
stopped, a changed setting recomputes only what depends on it, and a failed stage never leaves a
complete-looking folder. This module composes lbm's pieces; it re-implements none of them.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import lbm
from lbm import stats
from lbm.data import EpisodeDataset, generate_demos
from lbm.data.normalize import near_constant_dims
from lbm.errors import LbmError, did_you_mean
from lbm.eval.manifest import settings_hash
from lbm.eval.records import load_records
from lbm.eval.runner import EvalConfig, run_evaluation
from lbm.policies.config import PolicyConfig, policy_config
from lbm.schema import ACTION, STATE
from lbm.sim import embodiment_of, resolve_tasks
from lbm.study.analysis import analyze
from lbm.study.pilot import PILOT_FIRST_TRIAL, PilotChoice, choose_design
from lbm.study.preregister import TrialPlan, analysis_plan, check_plan, preregister
from lbm.study.profiles import StudyConfig
from lbm.study.report import print_verdicts, write_study_report
from lbm.study.simulate import h1_power
from lbm.train import train
from lbm.train.config import DataConfig, FinetuneConfig, OptimConfig, TrainConfig
from lbm.train.loop import episode_subset

STUDY_FORMAT = 3  # 3: seeded policy noise per trial and the record schema with policy_seed
"""Version of the study folder layout; a folder written by another format is refused."""
DONE = "DONE"


class StageCache:
    """Content-addressed stage folders: ``cache/KIND-HASH`` appears only when the stage completed."""

    def __init__(self, root: Path) -> None:
        self.root = root / "cache"
        self.root.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        """Compute time of every stage, when it ran (read back from its DONE file when cached), by label."""
        self.folder_seconds: dict[str, float] = {}
        """The same by stage folder: two labels can name one stage (a pilot's run is the confirmatory scratch run
        with the same settings), so the study's compute time is the sum of these."""

    def stage(self, kind: str, settings: dict, build: Callable[[Path], None], label: str) -> Path:
        """The folder of a stage with these settings, built by ``build(work_folder)`` unless cached.

        Paths into this cache (an earlier stage's dataset or checkpoint) enter the key relative to it, so a
        study folder that is moved or renamed (``--out``) keeps its finished stages."""
        inside = f"{self.root}/"

        def relative(value: Any) -> Any:
            if isinstance(value, str):
                return value.replace(inside, "@cache/")
            if isinstance(value, dict):
                return {k: relative(v) for k, v in value.items()}
            return [relative(v) for v in value] if isinstance(value, list) else value

        key = relative(json.loads(json.dumps({"kind": kind, "format": STUDY_FORMAT, **settings}, default=str)))
        final = self.root / f"{kind}-{settings_hash(key)[:12]}"
        if (final / DONE).exists():
            log(f"[cached] {label}")
            self.seconds[label] = self.folder_seconds[final.name] = float((final / DONE).read_text() or "nan")
            return final
        work = final.with_name(final.name + ".partial")
        work.mkdir(parents=True, exist_ok=True)
        (work / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")
        log(f"[run] {label}")
        start = time.perf_counter()
        try:
            build(work)
        except LbmError as error:
            raise LbmError(
                f"Study stage '{label}' failed: {error} (its partial output is kept in {work} and is resumed "
                "or rebuilt when you rerun the study)."
            ) from error
        except Exception as error:  # noqa: BLE001 - any failure of a stage is reported with where its output is
            raise LbmError(
                f"Study stage '{label}' failed with {type(error).__name__}: {error}. Its partial output is kept "
                f"in {work}; rerun the study to retry (run with --debug for the traceback)."
            ) from error
        self.seconds[label] = self.folder_seconds[final.name] = round(time.perf_counter() - start, 1)
        (work / DONE).write_text(f"{self.seconds[label]}\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        return final


def log(message: str) -> None:
    """One progress line of the study on stderr."""
    print(message, file=sys.stderr, flush=True)


def check_folder(root: Path) -> None:
    """Refuse a study folder written by an incompatible version; stamp a new one."""
    stamp = root / "study.json"
    if stamp.exists():
        try:
            found = json.loads(stamp.read_text()).get("format")
        except (json.JSONDecodeError, AttributeError, OSError):
            found = None
        if found != STUDY_FORMAT:
            raise LbmError(
                f"{root} holds a study of format {found!r}, but this lbm writes format {STUDY_FORMAT}; its cache "
                "cannot be reused. Choose another --out folder or delete that one."
            )
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"format": STUDY_FORMAT, "lbm_version": lbm.__version__}) + "\n")
    except OSError as error:
        raise LbmError(f"Cannot write the study folder {root} ({error.strerror or error}); choose a writable --out.") from None


def pct(fraction: float) -> str:
    """A data fraction as a name part: 0.25 -> ``25pct``."""
    return f"{round(fraction * 100):d}pct"


def plan_trials(config: StudyConfig, tasks: int) -> TrialPlan:
    """Trials per cell: ``--trials``, or the fewest (up to --max-trials) that give the primary hypothesis its declared
    power. H1 compares the arms over all held-out tasks and training seeds, so its power, not one cell's, sizes the
    study (simulated with the analysis's own test, lbm.study.simulate.h1_power, common random numbers per n)."""

    @functools.cache  # the bisection, the cap and the final n ask for some n twice
    def power(n: int) -> float:
        return h1_power(config.target_p1, config.target_p2, tasks=tasks, seeds=len(config.train_seeds), trials=n,
                        alpha=config.alpha, seed_sd=config.planning_seed_sd if len(config.train_seeds) > 1 else 0.0,
                        rng=np.random.default_rng(config.subset_seed))  # fmt: skip

    lo, hi = 1, config.max_trials
    needed: int | None = None
    if power(hi) >= config.power:
        while lo < hi:  # power rises with n (up to simulation noise): bisect for the smallest sufficient n
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if power(mid) >= config.power else (mid + 1, hi)
        needed = lo
    n = config.trials if config.trials > 0 else (needed or config.max_trials)
    mdd = stats.min_detectable_difference_exact(n, config.alpha, config.power, baseline=config.target_p1)
    return TrialPlan(trials=n, h1_power=power(n), needed=needed, mdd=mdd)


def validate(config: StudyConfig) -> tuple[list[str], list[str], list[str]]:
    """Refuse a study that cannot run: ``(pretraining tasks, held-out tasks, own-robot pretraining tasks)``."""
    pretrain = resolve_tasks(config.pretrain_tasks) if config.pretrain_tasks.strip() or not config.folds else []
    heldout = resolve_tasks(config.heldout_tasks)
    own = resolve_tasks(config.own_pretrain_tasks) if config.own_pretrain_tasks.strip() else []
    if config.folds and not 2 <= config.folds <= len(heldout):
        raise LbmError(
            f"--folds splits the {len(heldout)} held-out tasks into folds held out in turn: it must be from 2 to "
            f"{len(heldout)} (got {config.folds}); 0 runs one split."
        )
    if config.folds and own:
        raise LbmError("--folds and --own-pretrain-tasks cannot be combined (the own-robot arm holds one robot out); drop one.")
    for other, flag in ((pretrain, "--pretrain-tasks"), (own, "--own-pretrain-tasks")):
        overlap = sorted(set(other) & set(heldout))
        if overlap:
            raise LbmError(
                f"Held-out tasks must not be pretraining tasks, but {', '.join(overlap)} are in both {flag} and "
                f"--heldout-tasks; the study would measure memorization. Pick disjoint task sets."
            )
    bodies = list(dict.fromkeys(embodiment_of(t).name for t in pretraining_pool(pretrain, heldout, config)))
    if config.pretrain_weights and len(config.pretrain_weights) != len(bodies):
        raise LbmError(
            f"--pretrain-weights has {len(config.pretrain_weights)} values, but pretraining has {len(bodies)} datasets "
            f"(one per robot body, in task order: {', '.join(bodies)})."
        )
    if own:
        robots = {embodiment_of(t).name for t in heldout}
        foreign = sorted({embodiment_of(t).name for t in own} - robots)
        seen = sorted(robots & {embodiment_of(t).name for t in pretrain})
        if foreign or len(robots) > 1:
            raise LbmError(
                "--own-pretrain-tasks are the held-out robot's own other tasks: they and the held-out tasks must all be "
                f"on one body, but the held-out tasks are on {', '.join(sorted(robots))}"
                + (f" and the own-robot tasks also on {', '.join(foreign)}." if foreign else ".")
            )
        if seen:
            raise LbmError(
                f"The own-robot arm compares pretraining on other robots with pretraining on the held-out robot, but "
                f"--pretrain-tasks already contain the held-out robot ({', '.join(seen)}). Remove its tasks from "
                "--pretrain-tasks or leave --own-pretrain-tasks empty."
            )
    if not config.fractions or any(not 0 < f <= 1 for f in config.fractions):
        raise LbmError(f"--fractions must be in (0, 1], got {config.fractions}.")
    if 1.0 not in config.fractions:
        raise LbmError("--fractions must include 1.0: every comparison is anchored on from-scratch with all the data.")
    for flag, values in (
        ("--pretrain-data-fractions", config.pretrain_data_fractions),
        ("--pretrain-task-fractions", config.pretrain_task_fractions),
    ):
        if any(not 0 < f <= 1 for f in values) or len(set(values)) == 1:
            raise LbmError(f"{flag} must be at least two distinct fractions in (0, 1], got {values}.")
    if config.pilot_demos:
        if any(c < 1 for c in config.pilot_demos) or max(config.pilot_demos) > config.heldout_episodes_per_task:
            raise LbmError(
                f"--pilot-demos must be counts from 1 to --heldout-episodes-per-task ({config.heldout_episodes_per_task}), "
                f"got {config.pilot_demos}."
            )
        if config.pilot_trials < 1 or not 0 <= config.pilot_band[0] < config.pilot_band[1] <= 1:
            raise LbmError(
                f"--pilot-trials must be >= 1 and --pilot-band two rates 0 <= low < high <= 1 (got {config.pilot_trials}, "
                f"{config.pilot_band})."
            )
    if config.finetune_variant not in ("full", "head_only", "lora"):
        raise did_you_mean(config.finetune_variant, ("full", "head_only", "lora"), "finetune variant")
    if not config.train_seeds:
        raise LbmError("--train-seeds needs at least one seed.")
    for name in (
        "pretrain_episodes_per_task",
        "heldout_episodes_per_task",
        "pretrain_steps",
        "task_steps",
        "batch_size",
        "max_trials",
        "eval_workers",
        "demo_workers",
        "bootstrap_reps",
        "execute_steps",
    ):
        if getattr(config, name) < 1:
            raise LbmError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(config, name)}).")
    return pretrain, heldout, own


def pretraining_pool(pretrain: list[str], heldout: list[str], config: StudyConfig) -> list[str]:
    """Every task some pretraining run uses: the pretraining tasks, plus the held-out tasks with --folds."""
    return pretrain + (heldout if config.folds else [])


def task_folds(tasks: list[str], folds: int, seed: int) -> list[list[str]]:
    """Leave-k-tasks-out: ``tasks`` in a seeded order, split into ``folds`` folds of near-equal size."""
    order = np.random.default_rng(seed).permutation(len(tasks))
    return [[tasks[i] for i in sorted(part)] for part in np.array_split(order, folds)]


def task_subset(tasks: list[str], fraction: float, seed: int) -> list[str]:
    """Nested task subsets: per robot body, the first ceil(fraction x n) of a seeded order of its tasks (at least
    one, so every body's dataset stays in the mixture), in ``tasks``' order."""
    bodies: dict[str, list[str]] = {}
    for t in tasks:
        bodies.setdefault(embodiment_of(t).name, []).append(t)
    keep = {group[i] for group in bodies.values() for i in episode_subset(len(group), fraction, seed)}
    return [t for t in tasks if t in keep]


def constant_marks(dataset: Path, policy: PolicyConfig, tasks: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``constant_dims`` entries for the dimensions of a dataset that are constant up to float noise.

    Such dimensions (e.g. the orientation of an object that never turns: spread ~1e-7; with ``tasks``, in
    those tasks' episodes) cannot be normalized, and the normalizer refuses them unless they are marked.
    The study marks them explicitly, logs them, and records them in the stage settings and the
    checkpoint's config.
    """
    ds = EpisodeDataset(dataset)
    normalized_with = ds.stats_of(ds.episodes_of_tasks(tasks)) if tasks else ds.stats  # what the run normalizes with
    marks = []
    for feature, mode in ((STATE, policy.state_norm), (ACTION, policy.action_norm)):
        dims = near_constant_dims(normalized_with[feature], mode)
        if dims:
            marks.append(f"{ds.embodiment.name}/{feature}:{','.join(map(str, dims))}")
    return tuple(marks)


def run_study(config: StudyConfig) -> dict[str, Any]:
    """Run (or resume) a study; return the paths it wrote and its analysis."""
    start = time.perf_counter()
    pretrain_tasks, heldout_tasks, own_tasks = validate(config)
    root = config.root
    check_folder(root)
    cache = StageCache(root)
    planned = plan_trials(config, len(heldout_tasks))
    trials, mdd = planned.trials, planned.mdd
    if planned.needed is None or planned.h1_power < config.power:  # said before any compute is spent
        need = f"{planned.needed} trials per cell" if planned.needed else f"more than --max-trials {config.max_trials}"
        log(
            f"warning: the primary comparison (H1, {len(heldout_tasks)} tasks x {len(config.train_seeds)} seeds) has power "
            f"{planned.h1_power:.2f} to detect {config.target_p1:.2f} vs {config.target_p2:.2f} at {trials} trials per "
            f"cell; power {config.power} needs {need}. The study is underpowered for its declared effect (raise "
            "--trials / --max-trials, add tasks or seeds, or declare a larger effect)."
        )
    # Pre-registration: the analysis plan is fixed (or checked unchanged) before any stage runs; with a pilot,
    # right after it (the pilot decides the design), still before any confirmatory rollout.
    plan_sha256 = "" if config.pilot_demos else preregister(root, analysis_plan(config, planned))
    detectable = (
        f"one task's cell detects {mdd:.2f} (alpha {config.alpha}, power {config.power}, from a success rate of "
        f"{config.target_p1:.2f})"
        if math.isfinite(mdd)
        else f"one task's cell detects no difference with power {config.power}"
    )
    log(
        f"study {config.name}: {len(pretraining_pool(pretrain_tasks, heldout_tasks, config))} pretraining tasks"
        + (f" in {config.folds} folds, each held out in turn" if config.folds else "")
        + f", held out: {', '.join(heldout_tasks)}; {trials} "
        f"trials per policy, task and condition; H1 power {planned.h1_power:.2f} for {config.target_p1:.2f} vs "
        f"{config.target_p2:.2f}; {detectable}."
    )
    sizes = dict(cameras=list(config.cameras), image_size=config.image_size)

    # 1. demonstrations
    def demos(tasks: list[str], episodes: int) -> Callable[[Path], None]:
        def build(work: Path) -> None:
            generate_demos(
                tasks,
                episodes,
                work / "dataset",
                cameras=config.cameras,
                image_size=config.image_size,
                workers=config.demo_workers,
                overwrite=True,
            )

        return build

    def pretraining_data(tasks: list[str], label: str) -> list[Path]:
        """One dataset per robot body (a dataset holds one); pretraining mixes them."""
        bodies: dict[str, list[str]] = {}
        for t in tasks:
            bodies.setdefault(embodiment_of(t).name, []).append(t)
        return [
            cache.stage(
                "data",
                dict(tasks=group, episodes=config.pretrain_episodes_per_task, **sizes),
                demos(group, config.pretrain_episodes_per_task),
                f"demonstrations for {label}" + (f" ({body})" if len(bodies) > 1 else ""),
            )
            / "dataset"
            for body, group in bodies.items()
        ]

    # Leave-k-tasks-out: fold k's pretraining leaves fold k out of one pool (one dataset per body, filtered by task).
    folds = task_folds(heldout_tasks, config.folds, config.subset_seed) if config.folds else [heldout_tasks]
    fold_of = {t: k for k, fold in enumerate(folds) for t in fold}
    pool = pretraining_pool(pretrain_tasks, heldout_tasks, config)
    fold_pretrain = [[t for t in pool if fold_of.get(t) != k] for k in range(len(folds))]
    if config.folds:
        log("folds: " + "; ".join(f"{k + 1}: {', '.join(fold)}" for k, fold in enumerate(folds)))
    pretrain_data = pretraining_data(pool, "pretraining")
    own_data = pretraining_data(own_tasks, "own-robot pretraining") if own_tasks else []
    seen_bodies = {embodiment_of(t).name for t in pool}
    task_data = {
        t: cache.stage(
            "data",
            dict(tasks=[t], episodes=config.heldout_episodes_per_task, **sizes),
            demos([t], config.heldout_episodes_per_task),
            f"demonstrations for {t}",
        )
        / "dataset"
        for t in heldout_tasks
    }

    # 2. pretraining
    policy = policy_config(config.family, config.size, cameras=config.cameras)
    base = TrainConfig(
        policy=policy,
        batch_size=config.batch_size,
        threads=config.threads,
        tensorboard=False,
        log_every=50,
        val_every=0,
        save_every=max(config.pretrain_steps // 4, 100),
    )

    def trainer(cfg: TrainConfig) -> Callable[[Path], None]:
        def build(work: Path) -> None:
            train(replace(cfg, out_dir=str(work), resume=True))  # resumes a partial stage; starts one from scratch

        return build

    def marked(cfg: TrainConfig, datasets: Path | list[Path], label: str) -> TrainConfig:
        roots = datasets if isinstance(datasets, list) else [datasets]
        marks = tuple(m for d in roots for m in constant_marks(d, cfg.policy, cfg.data.tasks))
        if marks:
            log(f"[{label}] constant up to float noise, passed through unnormalized: {'; '.join(marks)}")
        return replace(cfg, policy=replace(cfg.policy, constant_dims=marks))

    def pretrain(
        datasets: list[Path],
        seed: int,
        label: str,
        weights: tuple[float, ...],
        fraction: float = 1.0,
        tasks: list[str] | None = None,
    ) -> Path:
        """One pretraining stage; ``tasks``: only these tasks' episodes of ``datasets`` (None: all of them)."""
        cfg = replace(
            base,
            name=f"{label.replace(' ', '-')}-s{seed}",
            mode="pretrain",
            seed=seed,
            steps=config.pretrain_steps,
            data=DataConfig(
                roots=tuple(str(d) for d in datasets),
                weights=weights,
                balance_by_size=config.balance_by_size,
                val_episodes=1,
                fraction=fraction,
                subset_seed=config.subset_seed if fraction < 1 else DataConfig.subset_seed,  # the 100% model's hash unchanged
                tasks=tuple(tasks or ()),
            ),
            optim=OptimConfig(lr=config.pretrain_lr, warmup_steps=min(200, config.pretrain_steps // 10)),
        )
        cfg = marked(cfg, datasets, f"{label} data")
        return cache.stage("train", train_settings(cfg), trainer(cfg), f"{label} (seed {seed})") / "checkpoint"

    pilot: PilotChoice | None = None
    if config.pilot_demos:
        pilot = run_pilot(config, heldout_tasks, task_data, base, cache, trainer, marked)
        log(f"pilot: {pilot.reason}")
        effect = config.target_p2 - config.target_p1
        config = replace(
            config,
            fractions=pilot.fractions,
            heldout_episodes_per_task=pilot.anchor,
            target_p1=pilot.target_p1,
            target_p2=min(0.99, pilot.target_p1 + effect),
        )
        task_data = {  # the anchor's demos: the same episodes as the first `anchor` of the pilot's (same seeds)
            t: cache.stage("data", dict(tasks=[t], episodes=pilot.anchor, **sizes), demos([t], pilot.anchor),
                           f"demonstrations for {t} ({pilot.anchor}, the pilot's anchor)") / "dataset"
            for t in heldout_tasks
        }  # fmt: skip
        planned = plan_trials(config, len(heldout_tasks))
        trials, mdd = planned.trials, planned.mdd
        plan = dict(analysis_plan(config, planned), pilot=pilot.summary())
        plan_sha256 = preregister(root, plan)
        log(
            f"design after the pilot: demo counts {', '.join(map(str, pilot.counts))}; {trials} trials per cell (H1 power "
            f"{planned.h1_power:.2f} for {config.target_p1:.2f} vs {config.target_p2:.2f})."
        )

    def fold_label(k: int) -> str:
        return f" fold {k + 1}/{len(folds)}" if config.folds else ""

    def fold_filter(k: int) -> list[str] | None:  # no filter without folds: the stage hashes of a one-split study
        return fold_pretrain[k] if config.folds else None

    weights = config.pretrain_weights
    ks = range(len(folds))
    pretrained = {
        (k, seed): pretrain(pretrain_data, seed, "pretrain" + fold_label(k), weights, tasks=fold_filter(k))
        for k in ks
        for seed in config.train_seeds
    }
    own_pretrained = {seed: pretrain(own_data, seed, "own-robot pretrain", ()) for seed in config.train_seeds if own_data}
    scaled = {  # the scaling arms: pretraining on nested fractions of the demos, or of the tasks (100%: the main model)
        "scaling": {
            (k, f, seed): pretrain(
                pretrain_data, seed, f"pretrain{fold_label(k)} {pct(f)} of the data", weights, f, fold_filter(k)
            )  # fmt: skip
            for f in config.pretrain_data_fractions
            if f < 1
            for k in ks
            for seed in config.train_seeds
        },
        "task_scaling": {
            (k, f, seed): pretrain(
                pretrain_data,
                seed,
                f"pretrain{fold_label(k)} {pct(f)} of the tasks",
                weights,
                tasks=task_subset(fold_pretrain[k], f, config.subset_seed),
            )  # fmt: skip
            for f in config.pretrain_task_fractions
            if f < 1
            for k in ks
            for seed in config.train_seeds
        },
    }

    # 3. finetuning and from-scratch runs on nested subsets of each held-out task's demos
    checkpoints: dict[str, dict[str, dict]] = {t: {} for t in heldout_tasks}
    for task in heldout_tasks:
        for fraction in sorted(config.fractions):
            for seed in config.train_seeds:
                data = DataConfig(
                    roots=(str(task_data[task]),), val_episodes=0, fraction=fraction, subset_seed=config.subset_seed
                )
                warmup = min(50, config.task_steps // 10)
                finetuned = replace(
                    base,
                    mode="finetune",
                    data=data,
                    finetune=FinetuneConfig(init_from=str(pretrained[(fold_of[task], seed)]), variant=config.finetune_variant),
                    optim=OptimConfig(lr=config.finetune_lr, warmup_steps=warmup),
                )
                if embodiment_of(task).name not in seen_bodies:  # a robot pretraining never saw: mark its constant dims
                    finetuned = marked(finetuned, task_data[task], task)
                arms = {
                    "finetuned": finetuned,
                    "scratch": marked(
                        replace(base, mode="scratch", data=data, optim=OptimConfig(lr=config.pretrain_lr, warmup_steps=warmup)),
                        task_data[task],
                        task,
                    ),
                }
                if own_pretrained:  # the same finetuning from the held-out robot's own pretraining
                    arms["own_robot"] = replace(
                        finetuned,
                        policy=base.policy,
                        finetune=replace(finetuned.finetune, init_from=str(own_pretrained[seed])),
                    )
                for arm, cfg in arms.items():
                    name = policy_name(arm, fraction, seed, len(config.train_seeds))
                    cfg = replace(cfg, name=f"{task}-{name}", seed=seed, steps=config.task_steps)
                    path = (
                        cache.stage("train", train_settings(cfg), trainer(cfg), f"{arm} {task} {pct(fraction)} (seed {seed})")
                        / "checkpoint"
                    )
                    checkpoints[task][name] = dict(path=path, arm=arm, data_fraction=fraction, train_seed=seed,
                                                   pretrain_fraction=1.0 if arm != "scratch" else 0.0)  # fmt: skip
                if fraction < max(config.fractions):
                    continue
                for arm, models in scaled.items():  # the scaling arms: the 100% finetuning from each smaller pretraining
                    what = "data" if arm == "scaling" else "tasks"
                    for pf in sorted(f for k, f, s in models if k == fold_of[task] and s == seed):
                        prefix = arm.replace("_", "-")
                        cfg = replace(
                            finetuned, name=f"{task}-{prefix}-{pct(pf)}-s{seed}", seed=seed, steps=config.task_steps,
                            finetune=replace(finetuned.finetune, init_from=str(models[(fold_of[task], pf, seed)])),
                        )  # fmt: skip
                        label = f"finetuned {task} from {pct(pf)} of the pretraining {what} (seed {seed})"
                        path = cache.stage("train", train_settings(cfg), trainer(cfg), label) / "checkpoint"
                        name = f"{prefix}-{pct(pf)}" + (f"-s{seed}" if len(config.train_seeds) > 1 else "")
                        checkpoints[task][name] = dict(path=path, arm=arm, data_fraction=fraction, train_seed=seed,
                                                       pretrain_fraction=pf)  # fmt: skip
        if config.zero_shot:
            for seed in config.train_seeds:
                name = "pretrained" + (f"-s{seed}" if len(config.train_seeds) > 1 else "")
                checkpoints[task][name] = dict(path=pretrained[(fold_of[task], seed)], arm="pretrained", data_fraction=0.0,
                                               train_seed=seed, pretrain_fraction=1.0)  # fmt: skip

    # 4. blind, paired evaluation per held-out task (each task has its own finetuned policies)
    frames = []
    conditions = ",".join(("none", *config.shifts))
    for task in heldout_tasks:
        specs = tuple(f"{name}={info['path']}" for name, info in sorted(checkpoints[task].items()))
        settings = dict(
            task=task,
            policies=list(specs),
            shifts=conditions,
            trials=trials,
            max_steps=config.max_steps,
            execute_steps=config.execute_steps,
            analysis_plan_sha256=plan_sha256,  # the manifest names the plan these rollouts were run under
            **sizes,
        )

        build = evaluation(config, task, specs, trials, shifts=conditions)
        folder = cache.stage("eval", settings, build, f"evaluation on {task}")
        frames.append(annotated_records(folder, checkpoints[task]))

    # 5. analysis and report
    records = pd.concat(frames, ignore_index=True)
    records_path = root / "records.parquet"
    records.to_parquet(records_path, index=False)
    analysis = analyze(records, config, trials=trials, mdd=mdd)
    analysis["analysis_plan_sha256"] = check_plan(root)  # verified again: the plan the analysis ran
    if pilot is not None:
        analysis["pilot"] = pilot.summary()
    analysis["wall_s"] = round(time.perf_counter() - start, 1)  # this invocation (stages may have been cached)
    analysis["stage_seconds"] = cache.seconds  # when each stage ran, by label
    analysis["compute_s"] = round(sum(cache.folder_seconds.values()), 1)  # the study's compute time end to end
    (root / "analysis.json").write_text(json.dumps(analysis, indent=2, default=json_default) + "\n")
    html, md = write_study_report(root, records, analysis, config)
    print_verdicts(analysis)
    return dict(root=root, records=records_path, report_html=html, report_md=md, analysis=analysis)


def evaluation(
    config: StudyConfig, task: str, specs: tuple[str, ...], trials: int, *, shifts: str = "none", first_trial: int = 0
) -> Callable[[Path], None]:
    """The build function of an evaluation stage: ``specs`` on ``task``, blind and paired, into the stage's folder."""

    def build(work: Path) -> None:
        run_evaluation(
            EvalConfig(
                policy=specs,
                tasks=task,
                shifts=shifts,
                trials=trials,
                first_trial=first_trial,
                out=work,
                workers=config.eval_workers,
                cameras=config.cameras,
                image_size=config.image_size,
                max_steps=config.max_steps or None,
                execute_steps=config.execute_steps,
            )
        )

    return build


def run_pilot(
    config: StudyConfig,
    tasks: list[str],
    task_data: dict[str, Path],
    base: TrainConfig,
    cache: StageCache,
    trainer: Callable[[TrainConfig], Callable[[Path], None]],
    marked: Callable[[TrainConfig, Path, str], TrainConfig],
) -> PilotChoice:
    """From-scratch runs at each candidate demo count, evaluated on the pilot's own trial seeds (lbm.study.pilot)."""
    total = config.heldout_episodes_per_task
    rates: dict[int, list[int]] = {c: [0, 0] for c in config.pilot_demos}
    for task in tasks:
        specs = []
        for count in sorted(config.pilot_demos):
            data = DataConfig(
                roots=(str(task_data[task]),), val_episodes=0, fraction=count / total, subset_seed=config.subset_seed
            )
            cfg = replace(
                base, mode="scratch", data=data, name=f"{task}-pilot-{count}", seed=config.train_seeds[0],
                steps=config.task_steps, optim=OptimConfig(lr=config.pretrain_lr, warmup_steps=min(50, config.task_steps // 10)),
            )  # fmt: skip
            cfg = marked(cfg, task_data[task], task)
            path = cache.stage("train", train_settings(cfg), trainer(cfg), f"pilot: scratch {task} {count} demos") / "checkpoint"
            specs.append(f"pilot-{count}={path}")
        settings = dict(task=task, policies=specs, trials=config.pilot_trials, first_trial=PILOT_FIRST_TRIAL,
                        max_steps=config.max_steps, execute_steps=config.execute_steps)  # fmt: skip

        build = evaluation(config, task, tuple(specs), config.pilot_trials, first_trial=PILOT_FIRST_TRIAL)
        folder = cache.stage("eval", settings, build, f"pilot evaluation on {task}")
        for name, g in load_records(folder).groupby("policy"):
            count = int(str(name).removeprefix("pilot-"))
            rates[count][0] += int(g["success"].sum())
            rates[count][1] += len(g)
    return choose_design({c: (s, n) for c, (s, n) in rates.items()}, config.pilot_band)


def policy_name(arm: str, fraction: float, seed: int, n_seeds: int) -> str:
    """The name of one trained arm in the evaluation: ``finetuned-25pct`` (``-s1`` with several seeds)."""
    return f"{arm}-{pct(fraction)}" + (f"-s{seed}" if n_seeds > 1 else "")


def train_settings(cfg: TrainConfig) -> dict:
    """What defines a training stage (its hash key): the config without operational knobs."""
    settings = asdict(cfg)
    for key in ("out_dir", "resume", "overwrite", "threads", "tensorboard", "log_every", "name"):
        settings.pop(key, None)
    settings["data"] = dict(settings["data"], num_workers=None)
    if not settings["data"]["tasks"]:  # no task filter: the hash of a stage from before the filter existed
        del settings["data"]["tasks"]
    return settings


def annotated_records(folder: Path, policies: dict[str, dict]) -> pd.DataFrame:
    """The un-blinded records of one evaluation, with the study's arm / fraction / seed columns."""
    df = load_records(folder)
    names = df["policy"].astype(str)
    df["arm"] = [policies[p]["arm"] for p in names]
    df["data_fraction"] = [policies[p]["data_fraction"] for p in names]
    df["train_seed"] = [policies[p]["train_seed"] for p in names]
    df["pretrain_fraction"] = [policies[p].get("pretrain_fraction", 1.0) for p in names]
    df["eval_folder"] = str(folder)
    return df


def json_default(x: Any) -> Any:
    """JSON encoding of numpy scalars and arrays, NaN as null, paths as text."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return None if math.isnan(x) else float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
