"""Null studies: records of a study in which pretraining does nothing, for checking its error control.

Every arm of a task has the same true success rate; with ``seed_sd > 0`` each training run draws its
own rate around it (a normal effect on the logit scale), so training randomness is present but no arm
is better. Running :func:`lbm.study.analyze` on many such studies measures how often any headline
verdict claims a difference (``tests/test_study.py``, ``benchmarks/study_null.py``).
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from lbm import stats
from lbm.study.profiles import StudyConfig


def null_records(rng: np.random.Generator, config: StudyConfig, seed_sd: float, trials: int, tasks: int = 3) -> pd.DataFrame:
    """One null study's records (columns ``analyze`` reads) for ``config``'s arms, fractions, shifts and seeds."""
    rows = []
    arms = [("finetuned", config.fractions), ("scratch", config.fractions)]
    if config.zero_shot:
        arms.append(("pretrained", (0.0,)))
    for t in range(tasks):
        base = logit(rng.uniform(0.3, 0.7))
        for shift in ("none", *config.shifts):
            for arm, fractions in arms:
                for f in fractions:
                    for seed in config.train_seeds:
                        p = expit(base + rng.normal(0, seed_sd)) if seed_sd else expit(base)
                        success = rng.random(trials) < p
                        rows += [
                            dict(
                                task=f"task{t}",
                                shift=shift,
                                arm=arm,
                                data_fraction=f,
                                train_seed=seed,
                                trial=k,
                                success=bool(s),
                                pretrain_fraction=1.0,
                            )  # fmt: skip
                            for k, s in enumerate(success)
                        ]
    return pd.DataFrame(rows)


def h1_power(
    p1: float,
    p2: float,
    *,
    tasks: int,
    seeds: int,
    trials: int,
    alpha: float,
    seed_sd: float = 0.0,
    reps: int = 200,
    rng: np.random.Generator | None = None,
) -> float:
    """Monte Carlo power of the study's primary test (H1) at ``trials`` rollouts per training run and task.

    From scratch succeeds at ``p1`` and finetuned at ``p2`` on every one of ``tasks`` held-out tasks; with
    ``seeds`` training runs per arm each run draws its rate around that (normal on the logit scale, sd
    ``seed_sd``). H1 is tested exactly as the analysis does: the CMH test across tasks with one seed, the
    stratified permutation test over training runs (``lbm.stats.compare_runs``) with several. The planner
    uses it to size ``trials`` for the aggregate comparison, which gains from every task and seed, rather
    than for one task's cell.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    hits = 0
    for _ in range(reps):
        runs: dict[str, dict[Hashable, dict[Hashable, tuple[int, int]]]] = {"a": {}, "b": {}}
        for arm, p in (("a", p2), ("b", p1)):
            for t in range(tasks):
                rates = expit(logit(p) + rng.normal(0, seed_sd, seeds)) if seed_sd else np.full(seeds, p)
                runs[arm][f"task{t}"] = {s: (int(rng.binomial(trials, r)), trials) for s, r in enumerate(rates)}
        if seeds > 1:
            p = stats.compare_runs(runs["a"], runs["b"], reps=500, rng=rng).p
        else:
            pooled: dict[str, dict[Hashable, tuple[int, int]]] = {arm: {t: c[0] for t, c in runs[arm].items()} for arm in runs}
            p = stats.cmh_over_strata(pooled["a"], pooled["b"])
        hits += p <= alpha
    return hits / reps
