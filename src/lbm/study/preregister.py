"""Pre-registration: the study's analysis plan is written, and its SHA-256 recorded, before any rollout.

``analysis_plan.json`` states the hypotheses (with direction), their tests, alpha, the correction,
the non-inferiority margin, the planned trials and seeds, and which hypothesis is primary. It is
written once, at the first run of a study; ``preregistration.json`` keeps its SHA-256, and every
confirmatory evaluation stage carries that hash in its settings (so its manifest names the plan it
was run under), as ``blinding.json``'s hash is kept in an evaluation's manifest. A later run of the
same study must produce the same plan: a changed pre-registered setting is refused (restart under a
new name), and a plan file edited by hand no longer matches its hash and is refused. The analysis
runs this plan; what it reports beyond it is labelled exploratory.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbm.errors import LbmError
from lbm.study.profiles import StudyConfig

PLAN_FILE = "analysis_plan.json"
RECORD_FILE = "preregistration.json"
PLAN_FORMAT = 1


@dataclass(frozen=True)
class TrialPlan:
    """How many rollouts each cell gets, and what that buys."""

    trials: int
    """Trials per policy, task and condition."""
    h1_power: float
    """Simulated power of the primary test (H1) for target_p1 vs target_p2 on every held-out task, at ``trials``."""
    needed: int | None
    """The fewest trials giving H1 the declared power (None: more than --max-trials; equal to ``trials`` unless fixed)."""
    mdd: float
    """Minimum detectable difference of one task's cell at ``trials`` (NaN: none)."""


def analysis_plan(config: StudyConfig, planned: TrialPlan) -> dict[str, Any]:
    """The analysis plan a study's settings imply (everything that decides a verdict, nothing operational)."""
    mdd = planned.mdd
    seeds = len(config.train_seeds)
    aggregate_test = (
        "stratified permutation test over training runs (lbm.stats.compare_runs), two-stage bootstrap interval"
        if seeds > 1
        else "CMH test across tasks, stratified Newcombe interval (one training seed)"
    )
    primary = dict(
        id="H1",
        claim="finetuned (100% of task demos) vs from scratch (100%), mean over held-out tasks, nominal conditions",
        direction="two-sided; the study's hypothesis is finetuned > scratch",
        test=aggregate_test,
    )
    secondary = [
        *(
            dict(id=f"H1-{shift}", claim=f"finetuned vs scratch (100%), mean over tasks, under {shift}", test=aggregate_test)
            for shift in config.shifts
        ),
        dict(id="H2", claim="finetuned vs scratch per held-out task and condition", test="exact Boschloo, Holm over the family"),
        dict(
            id="H3",
            claim="data efficiency: smallest fraction at which finetuned is non-inferior to scratch at 100%",
            test=f"stratified Newcombe lower bound above -{config.noninferiority_margin:g}",
        ),
        *(
            dict(id=f"H4-{shift}", claim=f"robustness: change of the finetuned advantage under {shift}", test="MOVER interval")
            for shift in config.shifts
        ),
        *([dict(id="H5", claim="zero-shot pretrained vs scratch at 100%", test="CMH across tasks")] if config.zero_shot else []),
        *(
            [
                dict(
                    id="H7",
                    claim="finetuned success rises with the amount of pretraining data (nested fractions)",
                    test="stratified logistic trend in log2(data), Wald test; LR test of departure from log-linearity",
                )
            ]
            if config.pretrain_data_fractions
            else []
        ),
        *(
            [
                dict(
                    id="H8",
                    claim="finetuned success rises with the number of pretraining tasks (nested fractions)",
                    test="stratified logistic trend in log2(tasks), Wald test; LR test of departure from log-linearity",
                )
            ]
            if config.pretrain_task_fractions
            else []
        ),
        *(
            [
                dict(
                    id="H6",
                    claim="cross-embodiment vs own-robot pretraining, and own-robot vs scratch, per fraction",
                    test="CMH across tasks, Holm over the family",
                )
            ]  # fmt: skip
            if config.own_pretrain_tasks
            else []
        ),
    ]
    return dict(
        format=PLAN_FORMAT,
        study=config.name,
        primary=primary,
        secondary=secondary,
        alpha=config.alpha,
        correction="Holm within the per-task family (H2) and within the own-robot family",
        noninferiority_margin=config.noninferiority_margin,
        planned_trials_per_cell=planned.trials,
        minimum_detectable_difference=None if mdd != mdd else round(mdd, 4),  # NaN: none at this n
        power=config.power,
        primary_power=dict(
            power=round(planned.h1_power, 3),
            effect=[config.target_p1, config.target_p2],
            trials_needed=planned.needed,
            planning_seed_sd=config.planning_seed_sd if len(config.train_seeds) > 1 else 0.0,
            method="Monte Carlo (200 simulated studies) with the analysis's own H1 test",
        ),
        training_seeds=list(config.train_seeds),
        heldout_tasks=config.heldout_tasks,
        pretrain_tasks=config.pretrain_tasks,
        fractions=list(config.fractions),
        pretrain_data_fractions=list(config.pretrain_data_fractions),
        shifts=list(config.shifts),
        # Settings added later are in the plan only when used, so the plans of earlier studies stay valid.
        **({"pretrain_task_fractions": list(config.pretrain_task_fractions)} if config.pretrain_task_fractions else {}),
        **({"folds": config.folds, "fold_seed": config.subset_seed} if config.folds else {}),
        exploratory="everything else the report shows (same-data contrasts per fraction, the bootstrap of the "
        "fraction that first reaches scratch at 100%, between-seed spread) is exploratory",
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def preregister(root: Path, plan: dict[str, Any]) -> str:
    """Write the plan the first time (before any rollout); later, check it is unchanged. Returns its SHA-256."""
    plan_file, record_file = root / PLAN_FILE, root / RECORD_FILE
    text = json.dumps(plan, indent=2, sort_keys=True) + "\n"
    if not plan_file.exists():
        root.mkdir(parents=True, exist_ok=True)
        digest = _digest(text)
        for path, content in (
            (plan_file, text),
            (
                record_file,
                json.dumps(dict(sha256=digest, file=PLAN_FILE, written=time.strftime("%Y-%m-%dT%H:%M:%S%z")), indent=2),
            ),
        ):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content, encoding="utf-8")
            tmp.replace(path)
        return digest
    return check_plan(root, plan)


def check_plan(root: Path, plan: dict[str, Any] | None = None) -> str:
    """The recorded plan's SHA-256 after checking the file against it (and, given ``plan``, against the settings)."""
    plan_file, record_file = root / PLAN_FILE, root / RECORD_FILE
    try:
        stored = plan_file.read_text(encoding="utf-8")
        recorded = json.loads(record_file.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError) as error:
        raise LbmError(
            f"{root}: the pre-registration ({PLAN_FILE} with {RECORD_FILE}) is missing or unreadable ({error}); "
            "the study's analysis plan cannot be verified. Restart the study under a new name."
        ) from None
    if _digest(stored) != recorded:
        raise LbmError(
            f"{plan_file} was changed after it was pre-registered (its SHA-256 no longer matches {RECORD_FILE}); "
            "a study is analysed only under the plan it registered. Restore the file or restart under a new name."
        )
    if plan is not None:
        old = json.loads(stored)
        changed = sorted(k for k in {*old, *plan} if old.get(k) != plan.get(k))
        if changed:
            raise LbmError(
                f"This run's settings change the pre-registered analysis plan of {root} ({', '.join(changed)}). "
                "A pre-registered setting cannot change once the plan is written: restart the study under a new "
                "name (--name NEW) or keep the registered settings."
            )
    return recorded
