"""Study settings: one frozen dataclass and the named profiles (`lbm study PROFILE --field value ...`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


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
    pretrain_weights: tuple[float, ...] = ()
    """Mixture weight per pretraining dataset (one per robot body, in task order; empty = equal)."""
    balance_by_size: bool = False
    """Pretraining draws each body's dataset by its weight alone, however many frames it has (a
    cross-embodiment mixture whose bodies differ in episode length); otherwise weight x size."""
    own_pretrain_tasks: str = ""
    """Held-out robot's own other tasks (empty = none): a second pretraining run on them alone, finetuned on
    the same demos as the 'own_robot' arm, answers whether other robots' data is worth that robot's own."""
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
    finetune_variant: Literal["full", "head_only", "lora"] = "full"
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
    """Planner: power of the primary comparison (H1, over all held-out tasks and seeds) to detect target_p1 vs
    target_p2 on every task; --trials 0 picks the fewest trials per cell that reach it."""
    planning_seed_sd: float = 0.3
    """Planner, with several training seeds: the between-seed spread of a run's success assumed on the logit
    scale (0.3: at 50% success, a run's rate varies by about +-7.5 points)."""
    pretrain_data_fractions: tuple[float, ...] = ()
    """Pretraining-data scaling (e.g. 0.125 0.25 0.5 1.0): one pretraining run on each nested fraction of every
    pretraining dataset's demos, each finetuned on 100% of every held-out task's demos (arm 'scaling'); the report
    fits success against log2(pretraining data). Empty: no scaling arm."""
    pretrain_task_fractions: tuple[float, ...] = ()
    """Pretraining-task scaling (e.g. 0.25 0.5 1.0): one pretraining run on each nested fraction of the pretraining
    tasks (per robot body, at least one task each; a seeded order, so a larger fraction only adds tasks), each
    finetuned on 100% of every held-out task's demos (arm 'task_scaling'); the report fits success against
    log2(pretraining tasks). Empty: no such arm."""
    folds: int = 0
    """Leave-k-tasks-out: split --heldout-tasks into this many folds (a seeded order); each fold is held out in turn
    while pretraining runs on --pretrain-tasks plus the other folds' tasks, so every task is held out once and the
    aggregate tests gain tasks (e.g. --heldout-tasks mt50 --folds 10: ten pretraining runs on 45 tasks each).
    0: one split, pretraining on --pretrain-tasks alone."""
    pilot_demos: tuple[int, ...] = ()
    """Candidate demo counts per held-out task for a pilot (e.g. 1 2 5 10 20): from-scratch success at each,
    on trial seeds disjoint from the confirmatory ones, picks the study's 100% (and so its fractions) and the
    power planner's baseline before the analysis plan is registered. Empty: no pilot, --fractions as given."""
    pilot_trials: int = 10
    """Pilot rollouts per held-out task and candidate count."""
    pilot_band: tuple[float, float] = (0.2, 0.8)
    """From-scratch success band the pilot's anchor must lie in (away from the floor and the ceiling)."""
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

    @property
    def root(self) -> Path:
        """The study's folder: ``out``, or studies/NAME."""
        return Path(self.out or f"studies/{self.name}")


PROFILES: dict[str, StudyConfig] = {
    # The default of `make quickstart`. Its held-out tasks and demo counts keep from scratch off the ceiling, where
    # pretraining can show: door-unlock succeeded 23/23 from scratch with 5 demos (2026-11-28); with 10 demos as 100%
    # scratch reached 16/28 and finetuned 21/28 (H1 not decided), with 3 demos 4/28 vs 20/28 (2026-12-02). So 3 demos
    # are the 100% and 1 demo the few-shot fraction. With 2000 pretraining and 400 task steps it took 25.5 min from a
    # fresh clone on a slow day (2026-12-02, training at 300 samples/s; 500-620 on 2026-11-28) and decided H1; with 1500
    # and 250 steps (standard's task budget) 18.8 min that day, H1 decided again (+0.54 [+0.29, +0.70]).
    "quick": StudyConfig(
        name="quick",
        pretrain_tasks="ml45-train",
        heldout_tasks="hand-insert-v3,door-lock-v3",
        pretrain_episodes_per_task=12,
        heldout_episodes_per_task=3,
        fractions=(0.33, 1.0),
        pretrain_steps=1500,
        task_steps=250,
        shifts=("object_pose:medium",),
        trials=0,
        max_trials=25,
        target_p1=0.4,
        target_p2=0.8,
    ),
    # The sensitive design at this machine's scale: all five ML45 held-out tasks, three training seeds (the
    # headline treats the training run as the unit), a pilot between 2 and 5 demos (the few-shot regime, where quick
    # saw pretraining matter: 20/28 vs 4/28 at 3 demos, 21/28 vs 16/28 at 10), trials planned for H1 over 5 tasks x
    # 3 seeds (capped at 10 per cell); shifts and zero-shot are left out (quick measures them). 83.5 min (2026-12-02).
    "standard": StudyConfig(
        name="standard",
        heldout_tasks="ml45-test",
        pretrain_episodes_per_task=12,
        heldout_episodes_per_task=5,
        pilot_demos=(2, 5),
        pilot_trials=10,
        fractions=(0.4, 1.0),
        pretrain_steps=2000,
        task_steps=250,
        train_seeds=(0, 1, 2),
        shifts=(),
        zero_shot=False,
        trials=0,
        max_trials=10,
        target_p1=0.5,
        target_p2=0.7,
    ),
    # Pretraining-data scaling (the careful study's fourth finding): nested fractions of the pretraining demos
    # and, separately, of the pretraining tasks, each finetuned on the same held-out demos. CPU hours.
    "scaling": StudyConfig(
        name="scaling",
        heldout_tasks="door-unlock-v3,hand-insert-v3",
        pretrain_episodes_per_task=12,
        heldout_episodes_per_task=20,
        fractions=(1.0,),
        pretrain_data_fractions=(0.125, 0.25, 0.5, 1.0),
        pretrain_task_fractions=(0.25, 0.5, 1.0),
        pretrain_steps=2500,
        task_steps=400,
        train_seeds=(0, 1, 2),
        shifts=(),
        zero_shot=False,
        trials=10,
    ),
    # Leave-5-tasks-out over MT50: ten folds, each pretrained on the other 45 tasks, so all 50 tasks are held
    # out once (the aggregate tests gain most from more tasks). Thirty pretraining runs: sized for a GPU machine.
    "mt50-folds": StudyConfig(
        name="mt50-folds",
        pretrain_tasks="",
        heldout_tasks="mt50",
        folds=10,
        pretrain_episodes_per_task=20,
        heldout_episodes_per_task=10,
        fractions=(0.2, 1.0),
        pretrain_steps=10000,
        task_steps=600,
        train_seeds=(0, 1, 2),
        shifts=("object_pose:medium",),
        trials=10,
        eval_workers=8,
        demo_workers=8,
    ),
    # LIBERO: pretraining on LIBERO-Spatial and LIBERO-Object (17 tasks, their own scenes), LIBERO-Goal's six
    # tasks held out (one scene, new goals). LIBERO's simulator is slow on a CPU: hours; meant for a GPU machine.
    "libero-heldout": StudyConfig(
        name="libero-heldout",
        pretrain_tasks="libero-spatial,libero-object",
        heldout_tasks="libero-goal",
        pretrain_episodes_per_task=20,
        heldout_episodes_per_task=20,
        pilot_demos=(2, 5, 10, 20),
        fractions=(0.25, 1.0),
        pretrain_steps=10000,
        task_steps=600,
        train_seeds=(0, 1, 2),
        shifts=("object_pose:medium",),
        trials=10,
        eval_workers=8,
        demo_workers=8,
    ),
    # A robot pretraining never saw (Kinova3): cross-embodiment pretraining on four other bodies
    # (Meta-World Sawyer, LIBERO's Panda, robosuite's Panda, UR5e and IIWA) vs the Kinova3's own other
    # task vs from scratch, all finetuned on the same few Kinova3 demos. Four seeds: about 3 hours on a 2-core CPU
    # (one seed: 43 min, measured 2026-12-01).
    "heldout-robot": StudyConfig(
        name="heldout-robot",
        pretrain_tasks="mt10,libero-goal,robosuite@panda,robosuite@ur5e,robosuite@iiwa",
        own_pretrain_tasks="robosuite-stack@kinova3",
        heldout_tasks="robosuite-lift@kinova3",
        pretrain_weights=(0.3, 0.25, 0.15, 0.15, 0.15),  # per body by task count: 10, 6, 2, 2, 2 tasks
        balance_by_size=True,
        pretrain_episodes_per_task=12,
        heldout_episodes_per_task=20,
        fractions=(0.25, 1.0),
        pretrain_steps=2500,
        task_steps=400,
        shifts=(),
        zero_shot=False,
        # One held-out task: with k runs per arm the seed-aware test's smallest p is 2 / C(2k, k), 0.1 at three
        # seeds, so four (0.029) are the fewest that can decide H1 at alpha 0.05.
        train_seeds=(0, 1, 2, 3),
        trials=0,
        max_trials=25,
        target_p1=0.4,
        target_p2=0.8,
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
