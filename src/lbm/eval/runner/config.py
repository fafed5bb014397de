"""The settings of one evaluation: the frozen dataclass `lbm eval` parses with tyro."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from lbm.errors import LbmError


@dataclass(frozen=True)
class EvalConfig:
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
    """

    policy: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """NAME=SOURCE, repeatable; SOURCE is a checkpoint folder, ws://HOST:PORT of `lbm serve`, or a built-in: expert, random."""
    tasks: str = "mt10"
    """Task set name or comma-separated task names (see `lbm tasks`)."""
    shifts: str = "none"
    """Comma-separated shift conditions (none, obs_noise:low, ...); '+' composes shifts within one condition."""
    trials: int = 10
    """Trials per policy, task and shift condition (paired across policies)."""
    out: Path = Path("runs/eval")
    """Evaluation folder (records, manifest, blinding, videos)."""
    workers: int = 1
    """Worker processes, each with its own environments (1 runs in this process)."""
    envs_per_worker: int = 8
    """Environments a worker steps together; each policy's envs share one batched inference call."""
    cameras: tuple[str, ...] = ()
    """Cameras to render (empty: state observations only); commas also separate names."""
    image_size: int = 96
    """Rendered image height and width in pixels."""
    execute_steps: int | None = None
    """Actions executed per chunk before re-querying; default: the policy's own default, else its whole chunk."""
    max_steps: int | None = None
    """Step limit per trial; default: the task's limit."""
    init_states: Literal["fixed", "sampled"] = "fixed"
    """Tasks that ship fixed initial states (LIBERO: 50 per task): 'fixed' starts trial i from state i mod 50
    (the standard protocol; the trial seed still drives shifts), 'sampled' draws a fresh scene from the trial seed."""
    seed: int = 0
    """Seed of the trial order and the blind ids (initial conditions and policy noise depend only on task and trial)."""
    first_trial: int = 0
    """Index of the first trial's seed (trial i starts from eval_seed(task, first_trial + i)): a pilot run on trial
    seeds disjoint from a later confirmatory run."""
    jsonl: bool = False
    """Also write the records as OUT/records.jsonl."""
    video: bool = False
    """Write one mp4 per trial of the first camera under OUT/videos (needs --cameras)."""
    trial_timeout_s: float = 600.0
    """Wall-clock limit for a wave of trials; trials still running then fail with reason 'timeout'."""
    progress: bool = True
    """Show a progress bar."""
    shield: bool = False
    """Pass every action through the embodiment's action shield (bounds, workspace, rate limits; NaN -> hold)
    and report interventions and violations per 1000 steps."""
    monitor: Path | None = None
    """Failure-monitor folder (lbm.safety.monitor): record each trial's first alert step (column alert_step;
    -1 = none). Needs checkpoint policies."""
    features: bool = False
    """Store per-step policy features under OUT/features to train a failure monitor. Needs checkpoint policies."""
    action_samples: int = 0
    """With --features: also store per step the variance of this many extra action chunks sampled for the same
    observation (flow/diffusion policies; the failure-detector baseline). Outcomes are unchanged."""

    @property
    def camera_names(self) -> tuple[str, ...]:
        """``cameras`` with comma-separated entries split."""
        return tuple(c.strip() for entry in self.cameras for c in entry.split(",") if c.strip())

    def validate(self) -> None:
        """Refuse settings that cannot run, naming the option."""
        if self.trials < 1:
            raise LbmError(f"--trials must be at least 1 (got {self.trials}); paired comparisons need trials.")
        if self.workers < 1 or self.envs_per_worker < 1:
            raise LbmError(f"--workers and --envs-per-worker must be at least 1 (got {self.workers} and {self.envs_per_worker}).")
        if self.execute_steps is not None and self.execute_steps < 1:
            raise LbmError(f"--execute-steps must be at least 1 (got {self.execute_steps}), or omitted for the default.")
        if self.max_steps is not None and self.max_steps < 1:
            raise LbmError(f"--max-steps must be at least 1 (got {self.max_steps}), or omitted for the default.")
        if not self.trial_timeout_s > 0:
            raise LbmError(f"--trial-timeout-s must be positive (got {self.trial_timeout_s}).")
        if self.video and not self.camera_names:
            raise LbmError("--video records camera frames; also pass --cameras (e.g. --cameras corner).")
        if self.action_samples and not self.features:
            raise LbmError("--action-samples stores the variance beside the features: add --features.")
        if self.action_samples < 0 or self.action_samples == 1:
            raise LbmError(f"--action-samples must be 0 (off) or at least 2 to have a variance (got {self.action_samples}).")
        if self.seed < 0:
            raise LbmError(f"--seed must be a non-negative integer (got {self.seed}).")
        if self.first_trial < 0:
            raise LbmError(f"--first-trial must be a non-negative integer (got {self.first_trial}).")

    def settings(self, policies: list[list[str]], task_names: list[str], shift_list: list[str]) -> dict:
        """What defines the results (hashed for resume); operational knobs such as workers are excluded."""
        return {
            "policies": sorted(policies),
            "tasks": task_names,
            "shifts": shift_list,
            "trials": self.trials,
            "seed": self.seed,
            "cameras": list(self.camera_names),
            "image_size": self.image_size,
            "execute_steps": self.execute_steps,
            "max_steps": self.max_steps,
            **({"shield": True} if self.shield else {}),  # absent when off: older manifests keep their hash
            **({"monitor": str(self.monitor)} if self.monitor else {}),
            **({"init_states": "sampled"} if self.init_states == "sampled" else {}),
            **({"first_trial": self.first_trial} if self.first_trial else {}),
        }
