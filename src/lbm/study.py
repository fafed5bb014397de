"""``lbm study``: the careful LBM examination (TRI LBM team, arXiv 2507.05331) end to end.

The question: does pretraining on many tasks and then finetuning beat training from scratch on a
new task, how much task data does it save, and does the advantage grow under distribution shift?

Protocol (every stage is cached by a content hash of its settings, so an interrupted study
continues where it stopped and a changed setting recomputes only what depends on it):

1. demonstrations: the scripted experts of the pretraining tasks (one dataset) and of each held-out
   task (one dataset per task), from the demonstration seed space;
2. pretraining: one multitask policy on the pretraining tasks;
3. for each held-out task and data fraction (nested subsets of the task's demos chosen by seed):
   finetune the pretrained policy, and train a from-scratch policy of the same architecture and
   size on exactly the same demos with the same number of steps;
4. evaluation, blind and paired (``lbm.eval``), of every finetuned and from-scratch policy and of
   the pretrained policy zero-shot, on each held-out task under nominal conditions and under the
   profile's distribution shifts, with a number of trials chosen by the power planner;
5. analysis and report: per-task tables with intervals and letters, the data-efficiency
   multiplier, the robustness gap, zero-shot vs single-task, and verdicts that state only what
   the statistics support. Every number is recomputable from ``records.parquet``.

This module composes the pieces; it re-implements none of them.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lbm.errors import LbmError, did_you_mean

STUDY_FORMAT = 2  # its cached checkpoints follow the checkpoint format
"""Version of the study folder layout; a folder written by another format is refused."""
DONE = "DONE"


@dataclass(frozen=True)
class StudyConfig:
    """One study: which tasks, how much data, which model, how it is evaluated."""

    name: str = "quick"
    """Study name; the default output folder is studies/NAME."""
    out: str = ""
    """Output folder (default studies/NAME). Rerunning with the same folder resumes."""
    pretrain_tasks: str = "ml45-train"
    """Tasks of the pretraining mixture (a task set or comma-separated names)."""
    heldout_tasks: str = "ml45-test"
    """New tasks for finetuning and evaluation; must not overlap the pretraining tasks."""
    pretrain_episodes_per_task: int = 20
    """Scripted demonstrations per pretraining task."""
    heldout_episodes_per_task: int = 20
    """Scripted demonstrations per held-out task (100 % of the task data)."""
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    """Fractions of a held-out task's demos used for finetuning and from-scratch training (nested subsets)."""
    subset_seed: int = 0
    """Seed of the episode order from which the nested subsets are taken."""
    family: str = "flow"
    """Policy family for every arm (flow, diffusion, discrete)."""
    size: str = "small"
    """Model size preset for every arm (tiny, small, base)."""
    cameras: tuple[str, ...] = ()
    """Camera observations (empty: state only)."""
    image_size: int = 96
    """Rendered image size in pixels when cameras are used."""
    pretrain_steps: int = 3000
    """Optimizer steps of pretraining."""
    task_steps: int = 600
    """Optimizer steps of every finetuning and from-scratch run (the same budget for both arms)."""
    batch_size: int = 64
    """Batch size of every training run."""
    pretrain_lr: float = 3e-4
    """Peak learning rate of pretraining and from-scratch training."""
    finetune_lr: float = 1e-4
    """Peak learning rate of finetuning."""
    finetune_variant: str = "full"
    """How to finetune: full, head_only or lora."""
    train_seeds: tuple[int, ...] = (0,)
    """Training seeds per arm; several seeds show between-seed variation separately."""
    shifts: tuple[str, ...] = ("object_pose:medium", "obs_noise:medium")
    """Distribution-shift conditions evaluated besides nominal ('+' composes shifts in one condition)."""
    trials: int = 0
    """Trials per policy, task and condition; 0 = chosen by the power planner (capped by max_trials)."""
    target_p1: float = 0.5
    """Planner: success rate of the weaker arm the study must be able to separate from ..."""
    target_p2: float = 0.8
    """Planner: ... this success rate of the stronger arm."""
    alpha: float = 0.05
    """Family-wise significance level."""
    noninferiority_margin: float = 0.1
    """Data efficiency: finetuned counts as matching from-scratch@100% when the 95% lower bound of
    their difference in mean success is above minus this margin (a non-inferiority test)."""
    power: float = 0.8
    """Planner: power to detect target_p1 vs target_p2."""
    max_trials: int = 50
    """Upper bound on the planner's trials per cell (the compute budget)."""
    eval_workers: int = 2
    """Evaluation worker processes."""
    max_steps: int = 0
    """Step limit per evaluation trial (0 = the task's default)."""
    execute_steps: int = 8
    """Actions executed from each predicted chunk before the policy is asked again (receding horizon)."""
    zero_shot: bool = True
    """Also evaluate the pretrained policy without finetuning."""
    demo_workers: int = 2
    """Processes for demonstration generation."""
    threads: int = 0
    """torch CPU threads for training (0 = torch's default)."""
    bootstrap_reps: int = 2000
    """Bootstrap resamples for aggregate intervals."""


PROFILES: dict[str, StudyConfig] = {
    # The default of `make quickstart`: about 13 minutes on an idle 2-core CPU, data included.
    "quick": StudyConfig(
        name="quick",
        pretrain_tasks="ml45-train",
        heldout_tasks="door-unlock-v3,hand-insert-v3",
        pretrain_episodes_per_task=12,
        heldout_episodes_per_task=20,
        fractions=(0.25, 1.0),
        pretrain_steps=2500,
        task_steps=400,
        shifts=("object_pose:medium",),
        trials=0,
        max_trials=25,
        target_p1=0.4,
        target_p2=0.8,
    ),
    # All five held-out tasks and all fractions: CPU hours.
    "standard": StudyConfig(
        name="standard",
        pretrain_episodes_per_task=50,
        heldout_episodes_per_task=50,
        pretrain_steps=20000,
        task_steps=3000,
        shifts=("object_pose:medium", "obs_noise:medium", "friction:high+mass:high"),
        max_trials=100,
        target_p1=0.5,
        target_p2=0.7,
    ),
    # Camera observations and the base model: the same protocol, sized for a GPU machine.
    "full": StudyConfig(
        name="full",
        pretrain_episodes_per_task=100,
        heldout_episodes_per_task=100,
        size="base",
        cameras=("front",),
        image_size=96,
        pretrain_steps=100000,
        task_steps=10000,
        batch_size=128,
        shifts=("object_pose:medium", "obs_noise:medium", "lighting:high", "camera_pose:medium", "color:high"),
        train_seeds=(0, 1, 2),
        max_trials=200,
        target_p1=0.5,
        target_p2=0.65,
        eval_workers=8,
        demo_workers=8,
    ),
}


# ---- the command ---------------------------------------------------------------------------


def study_command(args: Sequence[str]) -> int:
    """Run a study profile end to end: ``lbm study --profile quick [--field value ...]``."""
    import tyro

    args = list(args)
    profile = "quick"
    if "--profile" in args:
        i = args.index("--profile")
        if i + 1 >= len(args):
            raise LbmError(f"--profile needs a name: one of {', '.join(PROFILES)}.")
        profile = args[i + 1]
        del args[i : i + 2]
    if profile not in PROFILES:
        raise did_you_mean(profile, PROFILES, "study profile")
    description = (
        "The careful LBM study end to end: demonstrations, pretraining, finetuning vs from-scratch at several data "
        f"fractions, blind paired evaluation under nominal and shifted conditions, statistics and report. Profiles: "
        f"{', '.join(PROFILES)} (select with --profile NAME; defaults below are the {profile!r} profile's; every field "
        "can be overridden)."
    )
    config = tyro.cli(StudyConfig, args=args, default=PROFILES[profile], prog=f"lbm study --profile {profile}",
                      description=description)
    result = run_study(config)
    print(f"\nreport: {result['report_html']}\nrecords: {result['records']}")
    return 0


study_command.raw_args = True  # the CLI hands this command its raw arguments (it parses --profile itself)


# ---- stages ---------------------------------------------------------------------------------


class _Cache:
    """Content-addressed stage folders: ``cache/KIND-HASH`` appears only when the stage completed.

    A stage builds into ``KIND-HASH.partial`` (which training and evaluation resume from), then is
    renamed; a failed stage leaves only its ``.partial`` folder and never a complete-looking one.
    """

    def __init__(self, root: Path) -> None:
        self.root = root / "cache"
        self.root.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        """Compute time of every stage, when it ran (read back from its DONE file when cached)."""

    def stage(self, kind: str, settings: dict, build: Callable[[Path], None], label: str) -> Path:
        from lbm.eval.schedule import settings_hash

        final = self.root / f"{kind}-{settings_hash({'kind': kind, 'format': STUDY_FORMAT, **settings})[:12]}"
        if (final / DONE).exists():
            _log(f"[cached] {label}")
            self.seconds[label] = float((final / DONE).read_text() or "nan")
            return final
        work = final.with_name(final.name + ".partial")
        work.mkdir(parents=True, exist_ok=True)
        (work / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")
        _log(f"[run] {label}")
        start = time.perf_counter()
        try:
            build(work)
        except LbmError as error:
            raise LbmError(f"Study stage '{label}' failed: {error} (its partial output is kept in {work} and is "
                           "resumed or rebuilt when you rerun the study).") from error
        except Exception as error:
            raise LbmError(f"Study stage '{label}' failed with {type(error).__name__}: {error}. Its partial output is "
                           f"kept in {work}; rerun the study to retry (run with --debug for the traceback).") from error
        self.seconds[label] = round(time.perf_counter() - start, 1)
        (work / DONE).write_text(f"{self.seconds[label]}\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        return final


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_folder(root: Path) -> None:
    """Refuse a study folder written by an incompatible version; stamp a new one."""
    stamp = root / "study.json"
    if stamp.exists():
        try:
            found = json.loads(stamp.read_text()).get("format")
        except json.JSONDecodeError:
            found = None
        if found != STUDY_FORMAT:
            raise LbmError(f"{root} holds a study of format {found!r}, but this lbm writes format {STUDY_FORMAT}; its "
                           "cache cannot be reused. Choose another --out folder or delete that one.")
    else:
        root.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"format": STUDY_FORMAT, "lbm_version": __import__("lbm").__version__}) + "\n")


def _pct(fraction: float) -> str:
    return f"{round(fraction * 100):d}pct"


def plan_trials(config: StudyConfig) -> tuple[int, float]:
    """Trials per cell (from the power planner unless fixed) and the minimum detectable difference."""
    from lbm.eval import stats

    if config.trials > 0:
        n = config.trials
    else:
        n = min(stats.samplesize_exact(config.target_p1, config.target_p2, config.alpha, config.power),
                config.max_trials)
    mdd = stats.min_detectable_difference_exact(n, config.alpha, config.power, baseline=config.target_p1)
    return n, mdd


def _validate(config: StudyConfig) -> tuple[list[str], list[str]]:
    from lbm.sim import resolve_tasks

    pretrain = resolve_tasks(config.pretrain_tasks)
    heldout = resolve_tasks(config.heldout_tasks)
    overlap = sorted(set(pretrain) & set(heldout))
    if overlap:
        raise LbmError(f"Held-out tasks must not be pretraining tasks, but {', '.join(overlap)} are both; the study "
                       "would measure memorization. Pick disjoint --pretrain-tasks and --heldout-tasks.")
    if not config.fractions or any(not 0 < f <= 1 for f in config.fractions):
        raise LbmError(f"--fractions must be in (0, 1], got {config.fractions}.")
    if 1.0 not in config.fractions:
        raise LbmError("--fractions must include 1.0: every comparison is anchored on from-scratch with all the data.")
    if config.finetune_variant not in ("full", "head_only", "lora"):
        raise did_you_mean(config.finetune_variant, ("full", "head_only", "lora"), "finetune variant")
    if not config.train_seeds:
        raise LbmError("--train-seeds needs at least one seed.")
    return pretrain, heldout


def run_study(config: StudyConfig) -> dict:
    """Run (or resume) a study; return the paths it wrote and its analysis."""
    from lbm.data import generate_demos
    from lbm.policies.config import policy_config
    from lbm.train import train
    from lbm.train.config import DataConfig, FinetuneConfig, OptimConfig, TrainConfig

    start = time.perf_counter()
    pretrain_tasks, heldout_tasks = _validate(config)
    root = Path(config.out or f"studies/{config.name}")
    _check_folder(root)
    cache = _Cache(root)
    trials, mdd = plan_trials(config)
    detectable = (f"minimum detectable difference {mdd:.2f} (alpha {config.alpha}, power {config.power}, from a "
                  f"success rate of {config.target_p1:.2f})" if math.isfinite(mdd) else
                  f"no difference is detectable with power {config.power} at this n")
    _log(f"study {config.name}: {len(pretrain_tasks)} pretraining tasks, held out: {', '.join(heldout_tasks)}; "
         f"{trials} trials per policy, task and condition; {detectable}.")
    sizes = dict(cameras=list(config.cameras), image_size=config.image_size)

    # 1. demonstrations
    def demos(tasks: list[str], episodes: int) -> Callable[[Path], None]:
        def build(work: Path) -> None:
            generate_demos(tasks, episodes, work / "dataset", cameras=config.cameras, image_size=config.image_size,
                           workers=config.demo_workers, overwrite=True)
        return build

    pretrain_data = cache.stage(
        "data", dict(tasks=pretrain_tasks, episodes=config.pretrain_episodes_per_task, **sizes),
        demos(pretrain_tasks, config.pretrain_episodes_per_task), "demonstrations for pretraining") / "dataset"
    task_data = {
        t: cache.stage("data", dict(tasks=[t], episodes=config.heldout_episodes_per_task, **sizes),
                       demos([t], config.heldout_episodes_per_task), f"demonstrations for {t}") / "dataset"
        for t in heldout_tasks
    }

    # 2. pretraining
    policy = policy_config(config.family, config.size, cameras=config.cameras)
    base = TrainConfig(policy=policy, batch_size=config.batch_size, threads=config.threads, tensorboard=False,
                       log_every=50, val_every=0, save_every=max(config.pretrain_steps // 4, 100))

    def trainer(cfg: TrainConfig) -> Callable[[Path], None]:
        def build(work: Path) -> None:
            resume = (work / "checkpoint" / "config.json").exists()
            train(replace(cfg, out_dir=str(work), resume=resume))
        return build

    pretrained = {}
    for seed in config.train_seeds:
        cfg = replace(base, name=f"pretrain-s{seed}", mode="pretrain", seed=seed, steps=config.pretrain_steps,
                      data=DataConfig(roots=(str(pretrain_data),), val_episodes=1),
                      optim=OptimConfig(lr=config.pretrain_lr, warmup_steps=min(200, config.pretrain_steps // 10)))
        pretrained[seed] = cache.stage("train", _train_settings(cfg), trainer(cfg), f"pretrain (seed {seed})") / "checkpoint"

    # 3. finetuning and from-scratch runs on nested subsets of each held-out task's demos
    checkpoints: dict[str, dict[str, dict]] = {t: {} for t in heldout_tasks}
    for task in heldout_tasks:
        for fraction in sorted(config.fractions):
            for seed in config.train_seeds:
                data = DataConfig(roots=(str(task_data[task]),), val_episodes=0, fraction=fraction,
                                  subset_seed=config.subset_seed)
                warmup = min(50, config.task_steps // 10)
                arms = {
                    "finetuned": replace(base, mode="finetune", data=data,
                                         finetune=FinetuneConfig(init_from=str(pretrained[seed]),
                                                                 variant=config.finetune_variant),
                                         optim=OptimConfig(lr=config.finetune_lr, warmup_steps=warmup)),
                    "scratch": replace(base, mode="scratch", data=data,
                                       optim=OptimConfig(lr=config.pretrain_lr, warmup_steps=warmup)),
                }
                for arm, cfg in arms.items():
                    name = _policy_name(arm, fraction, seed, len(config.train_seeds))
                    cfg = replace(cfg, name=f"{task}-{name}", seed=seed, steps=config.task_steps)
                    path = cache.stage("train", _train_settings(cfg), trainer(cfg), f"{arm} {task} {_pct(fraction)} "
                                       f"(seed {seed})") / "checkpoint"
                    checkpoints[task][name] = dict(path=path, arm=arm, data_fraction=fraction, train_seed=seed)
        if config.zero_shot:
            for seed in config.train_seeds:
                name = "pretrained" + (f"-s{seed}" if len(config.train_seeds) > 1 else "")
                checkpoints[task][name] = dict(path=pretrained[seed], arm="pretrained", data_fraction=0.0,
                                               train_seed=seed)

    # 4. blind, paired evaluation per held-out task (each task has its own finetuned policies)
    frames = []
    conditions = ",".join(("none", *config.shifts))
    for task in heldout_tasks:
        specs = [f"{name}={info['path']}" for name, info in sorted(checkpoints[task].items())]
        settings = dict(task=task, policies=specs, shifts=conditions, trials=trials, max_steps=config.max_steps,
                        execute_steps=config.execute_steps, **sizes)

        def build(work: Path, task=task, specs=specs) -> None:
            from lbm.eval.runner import EvalConfig, run_evaluation

            run_evaluation(specs, EvalConfig(tasks=task, shifts=conditions, trials=trials, out=work,
                                             workers=config.eval_workers, cameras=config.cameras,
                                             image_size=config.image_size, max_steps=config.max_steps or None,
                                             execute_steps=config.execute_steps))

        folder = cache.stage("eval", settings, build, f"evaluation on {task}")
        frames.append(_annotated_records(folder, checkpoints[task]))

    # 5. analysis and report
    import pandas as pd

    records = pd.concat(frames, ignore_index=True)
    records_path = root / "records.parquet"
    records.to_parquet(records_path, index=False)
    analysis = analyze(records, config, trials=trials, mdd=mdd)
    analysis["wall_s"] = round(time.perf_counter() - start, 1)  # this invocation (stages may have been cached)
    analysis["stage_seconds"] = cache.seconds  # when each stage ran: the study's compute time end to end
    (root / "analysis.json").write_text(json.dumps(analysis, indent=2, default=_json_default) + "\n")
    html, md = write_study_report(root, records, analysis, config)
    print_verdicts(analysis)
    return dict(root=root, records=records_path, report_html=html, report_md=md, analysis=analysis)


def _policy_name(arm: str, fraction: float, seed: int, n_seeds: int) -> str:
    return f"{arm}-{_pct(fraction)}" + (f"-s{seed}" if n_seeds > 1 else "")


def _train_settings(cfg) -> dict:
    settings = asdict(cfg)
    for key in ("out_dir", "resume", "threads", "tensorboard", "log_every", "name"):
        settings.pop(key, None)
    settings["data"] = dict(settings["data"], num_workers=None)
    return settings


def _annotated_records(folder: Path, policies: dict[str, dict]):
    """The un-blinded records of one evaluation, with the study's arm / fraction / seed columns."""
    from lbm.eval.records import load_records

    df = load_records(folder)
    df["arm"] = df["policy"].map(lambda p: policies[p]["arm"])
    df["data_fraction"] = df["policy"].map(lambda p: policies[p]["data_fraction"])
    df["train_seed"] = df["policy"].map(lambda p: policies[p]["train_seed"])
    df["eval_folder"] = str(folder)
    return df


def _json_default(x):
    import numpy as np

    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if math.isnan(x) else float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)  # paths and anything else


# ---- analysis -------------------------------------------------------------------------------
# Every figure below is a function of records.parquet alone (recomputable with `analyze`).


def _arm_cells(df, arm: str, fraction: float | None, shift: str):
    """{task: (successes, n)} of one arm (all its training seeds pooled) under one condition."""
    sel = (df["arm"] == arm) & (df["shift"] == shift)
    if fraction is not None:
        sel &= (df["data_fraction"] - fraction).abs() < 1e-9
    g = df[sel].groupby("task")["success"]
    return {t: (int(v.sum()), int(v.size)) for t, v in g}


def _bootstrap_rates(cells: dict, reps: int, rng):
    """(reps, tasks) bootstrap draws of per-task rates; resampling n Bernoulli rollouts with
    replacement is a Binomial(n, p_hat) draw (the stratified bootstrap of lbm.eval.stats)."""
    import numpy as np

    tasks = sorted(cells)
    s = np.array([cells[t][0] for t in tasks], float)
    n = np.array([cells[t][1] for t in tasks], float)
    return tasks, s / n, rng.binomial(n.astype(int)[None, :], (s / n)[None, :], size=(reps, len(tasks))) / n[None, :]


def _contrast(a: dict, b: dict, reps: int, rng, confidence: float = 0.95) -> dict:
    """Mean over tasks of rate_a - rate_b, stratified bootstrap CI, and the CMH test across tasks."""
    import numpy as np

    from lbm.eval import stats

    common = sorted(set(a) & set(b))
    a, b = {t: a[t] for t in common}, {t: b[t] for t in common}
    if not common:
        return dict(diff=float("nan"), lo=float("nan"), hi=float("nan"), p=float("nan"), tasks=0)
    _, pa, ba = _bootstrap_rates(a, reps, rng)
    _, pb, bb = _bootstrap_rates(b, reps, rng)
    dist = (ba - bb).mean(axis=1)
    lo, hi = np.quantile(dist, [(1 - confidence) / 2, (1 + confidence) / 2])
    tables = [np.array([[a[t][0], b[t][0]], [a[t][1] - a[t][0], b[t][1] - b[t][0]]]) for t in common]
    return dict(diff=float((pa - pb).mean()), lo=float(lo), hi=float(hi), p=stats.cmh_test(tables), tasks=len(common),
                rate_a=float(pa.mean()), rate_b=float(pb.mean()))


def analyze(df, config: StudyConfig, trials: int, mdd: float) -> dict:
    """The study's answers from its records: per-task tests, data efficiency, robustness, zero-shot."""
    import numpy as np

    from lbm.eval import stats

    rng = np.random.default_rng(config.subset_seed)
    reps = config.bootstrap_reps
    conditions = ["none", *config.shifts]
    full = max(config.fractions)
    fractions = sorted(config.fractions)
    out: dict = dict(trials_per_cell=trials, mdd=mdd, alpha=config.alpha, conditions=conditions,
                     fractions=fractions, tasks=sorted(df["task"].unique()))

    # Per task and condition: finetuned@100% vs scratch@100% (and zero-shot vs scratch@100%),
    # exact Boschloo tests with Holm control over the whole family of per-task tests.
    rows = []
    for shift in conditions:
        ft, sc = _arm_cells(df, "finetuned", full, shift), _arm_cells(df, "scratch", full, shift)
        zs = _arm_cells(df, "pretrained", None, shift)
        for task in sorted(sc):
            for arm, cells in (("finetuned", ft), ("pretrained", zs)):
                if task not in cells:
                    continue
                (s1, n1), (s2, n2) = cells[task], sc[task]
                lo, hi = stats.newcombe_interval(s1, n1, s2, n2)
                rows.append(dict(task=task, shift=shift, arm=arm, s=s1, n=n1, s_scratch=s2, n_scratch=n2,
                                 diff=s1 / n1 - s2 / n2, lo=lo, hi=hi, p=stats.two_proportion_test(s1, n1, s2, n2)))
    for r, q in zip(rows, stats.adjust_pvalues([r["p"] for r in rows], "holm")):
        r["p_holm"] = float(q)
        r["verdict"] = ("better" if r["diff"] > 0 else "worse") if q <= config.alpha else "no significant difference"
    out["per_task"] = rows

    # Aggregates across held-out tasks per condition (CMH across tasks; bootstrap CI of the mean difference).
    agg = {}
    for shift in conditions:
        sc = _arm_cells(df, "scratch", full, shift)
        agg[shift] = dict(
            finetuned_vs_scratch=_contrast(_arm_cells(df, "finetuned", full, shift), sc, reps, rng),
            zero_shot_vs_scratch=_contrast(_arm_cells(df, "pretrained", None, shift), sc, reps, rng),
        )
    out["aggregate"] = agg

    # Data efficiency (nominal). Primary: the smallest fraction at which finetuned is non-inferior
    # to scratch@100% (bootstrap lower bound above -margin). Also: finetuned vs scratch with the
    # same demos at every fraction, and the bootstrap distribution of the smallest fraction whose
    # finetuned mean reaches scratch@100% (resampling rollouts within every cell).
    sc_full = _arm_cells(df, "scratch", full, "none")
    per_fraction, draws = [], []
    _, p_sc, b_sc = _bootstrap_rates(sc_full, reps, rng)
    for f in fractions:
        cells = _arm_cells(df, "finetuned", f, "none")
        if f == full:  # the headline contrast already computed above: one number, one interval
            c = same = agg["none"]["finetuned_vs_scratch"]
        else:
            c = _contrast(cells, sc_full, reps, rng)
            same = _contrast(cells, _arm_cells(df, "scratch", f, "none"), reps, rng)
        _, p_ft, b_ft = _bootstrap_rates(cells, reps, rng)
        per_fraction.append(dict(fraction=f, **c, noninferior=bool(c["lo"] > -config.noninferiority_margin),
                                 same_data={k: same[k] for k in ("diff", "lo", "hi", "p", "rate_b") if k in same}))
        draws.append(b_ft.mean(axis=1) >= b_sc.mean(axis=1))
    reached = np.array(draws)  # (fractions, reps)
    # When from-scratch at 100% never succeeds, "reaching" it is trivial: no multiplier is defined.
    floor = all(s == 0 for s, _ in sc_full.values())
    point = None if floor else next((f for f, r in zip(fractions, per_fraction) if r["diff"] >= 0), None)
    noninferior = None if floor else next((r["fraction"] for r in per_fraction if r["noninferior"]), None)
    first = np.where(reached.any(axis=0), np.argmax(reached, axis=0), -1)
    boot_f = np.array([fractions[i] if i >= 0 else np.inf for i in first])
    finite = boot_f[np.isfinite(boot_f)]
    out["data_efficiency"] = dict(
        per_fraction=per_fraction,
        scratch_floor=floor,
        margin=config.noninferiority_margin,
        noninferior_fraction=noninferior,
        noninferior_multiplier=(full / noninferior) if noninferior else None,
        fraction=point,
        multiplier=(full / point) if point else None,
        # inverted_cdf returns resampled values themselves, so "not reached" (inf) stays inf, not NaN.
        fraction_interval=[float(np.quantile(boot_f, q, method="inverted_cdf")) for q in (0.025, 0.975)],
        p_reached=float(np.isfinite(boot_f).mean()),
        bootstrap_fraction_distribution={str(f): float(np.mean(boot_f == f)) for f in fractions},
        note="fraction = smallest data fraction at which finetuned mean success >= from-scratch at 100%; "
             "interval = 2.5/97.5 percentiles of that fraction over the stratified bootstrap (inf = not reached)."
        if finite.size else "finetuned never reached from-scratch at 100% in the bootstrap.",
    )

    # Robustness: does the finetuned-minus-scratch advantage grow under shift?
    nominal_ft, nominal_sc = _arm_cells(df, "finetuned", full, "none"), sc_full
    _, p_nf, b_nf = _bootstrap_rates(nominal_ft, reps, rng)
    _, p_ns, b_ns = _bootstrap_rates(nominal_sc, reps, rng)
    gaps = []
    for shift in config.shifts:
        ft, sc = _arm_cells(df, "finetuned", full, shift), _arm_cells(df, "scratch", full, shift)
        _, p_sf, b_sf = _bootstrap_rates(ft, reps, rng)
        _, p_ss, b_ss = _bootstrap_rates(sc, reps, rng)
        gap = (p_sf - p_ss).mean() - (p_nf - p_ns).mean()
        dist = (b_sf - b_ss).mean(axis=1) - (b_nf - b_ns).mean(axis=1)
        lo, hi = np.quantile(dist, [0.025, 0.975])
        wins = {c: sum(1 for r in rows if r["shift"] == c and r["arm"] == "finetuned" and r["verdict"] == "better")
                for c in ("none", shift)}
        gaps.append(dict(shift=shift, gap=float(gap), lo=float(lo), hi=float(hi),
                         advantage_nominal=float((p_nf - p_ns).mean()), advantage_shift=float((p_sf - p_ss).mean()),
                         tasks_better_nominal=wins["none"], tasks_better_shift=wins[shift]))
    out["robustness"] = gaps

    # Between-seed variation (training randomness is not in the evaluation error bars).
    if len(config.train_seeds) > 1:
        g = df.groupby(["task", "shift", "arm", "data_fraction", "train_seed"])["success"].mean().reset_index()
        spread = g.groupby(["task", "shift", "arm", "data_fraction"])["success"].agg(["mean", "std", "min", "max"])
        out["between_seeds"] = spread.reset_index().to_dict(orient="records")
    out["verdicts"], out["warnings"] = _verdicts(out, config)
    return out


def _verdicts(a: dict, config: StudyConfig) -> tuple[list[str], list[str]]:
    """Plain sentences that state only what the tests and intervals support."""
    v, w = [], []
    n_tasks = len(a["tasks"])
    for shift in a["conditions"]:
        label = "nominal conditions" if shift == "none" else f"shift {shift}"
        rows = [r for r in a["per_task"] if r["shift"] == shift and r["arm"] == "finetuned"]
        better = sum(r["verdict"] == "better" for r in rows)
        worse = sum(r["verdict"] == "worse" for r in rows)
        agg = a["aggregate"][shift]["finetuned_vs_scratch"]
        sig = agg["p"] <= config.alpha
        v.append(f"Under {label}, finetuned beats from-scratch (both with 100% of the task demos) on {better}/{len(rows)} "
                 f"held-out tasks, is worse on {worse}, and shows no significant difference on {len(rows) - better - worse} "
                 f"(exact Boschloo tests, Holm family-wise alpha {config.alpha:g}). Across tasks the mean difference is "
                 f"{agg['diff']:+.2f} [95% CI {agg['lo']:+.2f}, {agg['hi']:+.2f}], CMH p = {agg['p']:.3g}: "
                 + ("significant." if sig else "not significant."))
        if not sig and not abs(agg["diff"]) >= a["mdd"]:  # also when no difference is detectable (mdd NaN)
            mdd = f"{a['mdd']:.2f}" if math.isfinite(a["mdd"]) else "larger than any possible difference"
            w.append(f"Under {label} the observed difference ({agg['diff']:+.2f}) is smaller than the minimum detectable "
                     f"difference of one task cell ({mdd} at {a['trials_per_cell']} trials): no significant "
                     "difference is not evidence of no difference.")
    de = a["data_efficiency"]
    if de["scratch_floor"]:
        v.append("Data efficiency: from-scratch with 100% of the demos never succeeded, so matching it says nothing; "
                 "no data multiplier is reported (floor effect: train longer or pick easier tasks).")
    else:
        margin = f"margin {de['margin']:.2f}"
        if de["noninferior_fraction"] is not None:
            v.append(f"Data efficiency: finetuned with {de['noninferior_fraction']:.0%} of the task demos is non-inferior to "
                     f"from-scratch with 100% ({margin}, 95% stratified bootstrap): a {de['noninferior_multiplier']:.1f}x "
                     "data multiplier.")
        else:
            v.append(f"Data efficiency: at no fraction tested is finetuned non-inferior to from-scratch with 100% of the "
                     f"demos ({margin}), so no data multiplier is supported.")
        lo, hi = de["fraction_interval"]
        reach = (f"Its mean success first reaches from-scratch-with-100% at {de['fraction']:.0%} (point estimate; "
                 f"bootstrap 95% range {lo:.0%} to {'not reached' if hi == float('inf') else f'{hi:.0%}'}, reached in "
                 f"{de['p_reached']:.0%} of resamples)." if de["fraction"] is not None else
                 "Its mean success does not reach from-scratch-with-100% at any fraction (point estimate).")
        same = "; ".join(f"{r['fraction']:.0%}: {r['same_data']['diff']:+.2f} [{r['same_data']['lo']:+.2f}, "
                         f"{r['same_data']['hi']:+.2f}], CMH p = {r['same_data']['p']:.3g}" for r in de["per_fraction"])
        v.append(f"{reach} With the same demos, finetuned minus from-scratch: {same}.")
    for g in a["robustness"]:
        grows = g["lo"] > 0
        shrinks = g["hi"] < 0
        v.append(f"Robustness ({g['shift']}): the finetuned advantage is {g['advantage_shift']:+.2f} under shift vs "
                 f"{g['advantage_nominal']:+.2f} nominal, a change of {g['gap']:+.2f} [95% CI {g['lo']:+.2f}, {g['hi']:+.2f}]: "
                 + ("the advantage grows under shift." if grows else "the advantage shrinks under shift." if shrinks
                    else "no significant change.")
                 + f" Finetuned significantly better on {g['tasks_better_shift']}/{n_tasks} tasks under shift vs "
                 f"{g['tasks_better_nominal']}/{n_tasks} nominal.")
    zs = a["aggregate"]["none"]["zero_shot_vs_scratch"]
    if zs["tasks"]:
        sig = zs["p"] <= config.alpha
        v.append(f"Zero-shot: the pretrained policy without finetuning vs from-scratch-with-100%: {zs['diff']:+.2f} "
                 f"[95% CI {zs['lo']:+.2f}, {zs['hi']:+.2f}], CMH p = {zs['p']:.3g}: "
                 + (("better" if zs["diff"] > 0 else "worse") + "." if sig else "no significant difference."))
    return v, w


def print_verdicts(analysis: dict) -> None:
    """The closing summary: the verdict table of the study."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    compute = sum(analysis.get("stage_seconds", {}).values())
    table = Table(title=f"lbm study verdicts ({analysis['trials_per_cell']} trials per policy, task and condition; "
                        f"stages {compute / 60:.1f} min, this run {analysis.get('wall_s', 0) / 60:.1f} min)",
                  show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("verdict")
    for i, v in enumerate(analysis["verdicts"], 1):
        table.add_row(str(i), v)
    for w in analysis["warnings"]:
        table.add_row("!", f"[yellow]{w}[/yellow]")
    console.print(table)


def write_study_report(root: Path, records, analysis: dict, config: StudyConfig) -> tuple[Path, Path]:
    """report/report.html and report/report.md: the study's verdicts and tables over the evaluation report."""
    from lbm.eval.report import write_report

    de = analysis["data_efficiency"]
    sections = [
        ("Study verdicts", ["#", "verdict"], [[str(i), v] for i, v in enumerate(analysis["verdicts"], 1)]),
        ("Finetuned and zero-shot vs from-scratch (100% data), per task", 
         ["task", "condition", "arm", "success", "scratch", "difference [95% Newcombe]", "p", "p (Holm)", "verdict"],
         [[r["task"], r["shift"], r["arm"], f"{r['s']}/{r['n']}", f"{r['s_scratch']}/{r['n_scratch']}",
           f"{r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]", f"{r['p']:.3g}", f"{r['p_holm']:.3g}", r["verdict"]]
          for r in analysis["per_task"]]),
        ("Data efficiency (nominal): finetuned at each fraction vs from-scratch at 100% and with the same demos",
         ["fraction", "finetuned", "scratch@100%", "difference [95% bootstrap]", "CMH p",
          f"non-inferior (margin {de['margin']:.2f})", "scratch, same demos", "difference [95% bootstrap]", "CMH p"],
         [[f"{r['fraction']:.0%}", f"{r.get('rate_a', float('nan')):.2f}", f"{r.get('rate_b', float('nan')):.2f}",
           f"{r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]", f"{r['p']:.3g}", "yes" if r["noninferior"] else "no",
           f"{r['same_data'].get('rate_b', float('nan')):.2f}",
           f"{r['same_data']['diff']:+.2f} [{r['same_data']['lo']:+.2f}, {r['same_data']['hi']:+.2f}]",
           f"{r['same_data']['p']:.3g}"] for r in de["per_fraction"]]),
        ("Robustness gap: (finetuned - scratch) under shift minus nominal",
         ["shift", "advantage nominal", "advantage shift", "gap [95% bootstrap]", "tasks better nominal / shift"],
         [[g["shift"], f"{g['advantage_nominal']:+.2f}", f"{g['advantage_shift']:+.2f}",
           f"{g['gap']:+.2f} [{g['lo']:+.2f}, {g['hi']:+.2f}]", f"{g['tasks_better_nominal']} / {g['tasks_better_shift']}"]
          for g in analysis["robustness"]]),
    ]
    paths = write_report(records, root / "report", alpha=config.alpha, title=f"lbm study: {config.name}",
                         sections=sections, notes=analysis["warnings"])
    return paths[0], paths[1]
