"""``lbm study PROFILE [--field value ...]``: the profiles are tyro subcommands of one StudyConfig."""

from __future__ import annotations

from typing import Annotated

import tyro

from lbm.files import writing
from lbm.study.pipeline import run_study
from lbm.study.profiles import PROFILES

StudyProfile = tyro.extras.subcommand_type_from_defaults(
    PROFILES,
    descriptions={
        "quick": "the default of `make quickstart`: two held-out tasks, minutes on a 2-core CPU",
        "standard": "all five ML45 held-out tasks, three seeds, a pilot-chosen design: 84 min on a 2-core CPU (2026-12-02)",
        "scaling": "pretraining on nested fractions of the demos and of the tasks: success vs pretraining data",
        "mt50-folds": "leave-5-tasks-out over MT50, ten folds: every task held out once (GPU-sized)",
        "libero-heldout": "LIBERO-Goal's tasks held out of LIBERO-Spatial and -Object pretraining (GPU-sized)",
        "heldout-robot": "a robot pretraining never saw (Kinova3): cross-embodiment vs its own data vs scratch",
        "full": "camera observations and the base model: sized for a GPU machine",
    },
)


def study(
    config: Annotated[StudyProfile, tyro.conf.arg(name=""), tyro.conf.OmitSubcommandPrefixes] =  # type: ignore[valid-type]
    PROFILES["quick"],
) -> int:
    """The careful LBM study end to end: demonstrations, pretraining, finetuning vs from-scratch at several data
    fractions, blind paired evaluation under nominal and shifted conditions, statistics and report.

    Pick a profile (default: quick) and override any field, e.g. `lbm study quick --trials 40`.
    """

    with writing("the study", config.root):
        result = run_study(config)
    print(f"\nreport: {result['report_html']}\nrecords: {result['records']}")
    return 0
