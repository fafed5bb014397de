"""Null studies: records of a study in which pretraining does nothing, for checking its error control.

Every arm of a task has the same true success rate; with ``seed_sd > 0`` each training run draws its
own rate around it (a normal effect on the logit scale), so training randomness is present but no arm
is better. Running :func:`lbm.study.analyze` on many such studies measures how often any headline
verdict claims a difference (``tests/test_study.py``, ``benchmarks/study_null.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit, logit

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
