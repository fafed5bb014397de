"""Whole-study error control on null studies: how often does any headline verdict claim a difference?

Simulates studies in which pretraining does nothing (lbm.study.simulate.null_records; every arm of a
task has the same success rate, training runs vary by seed on the logit scale), runs the study's own
analysis (lbm.study.analyze, gatekeeping included) on each and prints the rate of studies with any
headline claim, with its Clopper-Pearson interval. It must be at most alpha.

    python benchmarks/study_null.py                 # 400 studies per setting, standard-like design
    python benchmarks/study_null.py --quick         # 60 per setting
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np

from lbm.stats import proportion_interval
from lbm.study import PROFILES, analyze
from lbm.study.simulate import null_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--studies", type=int, default=0, help="null studies per setting (default 400, --quick 60)")
    ap.add_argument("--out", default="benchmarks/results/study_null.json")
    args = ap.parse_args()
    studies = args.studies or (60 if args.quick else 400)
    rng = np.random.default_rng(0)
    base = replace(PROFILES["standard"], shifts=("obs_noise:medium",), bootstrap_reps=100)
    results = []
    for seeds, seed_sd in ((1, 0.0), (3, 0.0), (3, 1.0)):
        config = replace(base, train_seeds=tuple(range(seeds)))
        start, claims, primary = time.perf_counter(), 0, 0
        for _ in range(studies):
            a = analyze(null_records(rng, config, seed_sd, trials=20, tasks=5), config, trials=20, mdd=0.4)
            claims += bool(a["headline"]["claims"])
            primary += bool(a["headline"]["primary"]["rejected"])
        lo, hi = proportion_interval(claims, studies, method="clopper-pearson")
        row = dict(seeds=seeds, seed_sd=seed_sd, studies=studies, any_claim=claims, rate=claims / studies,
                   low=float(lo), high=float(hi), primary_rejections=primary, alpha=config.alpha,
                   seconds=round(time.perf_counter() - start, 1))  # fmt: skip
        results.append(row)
        print(
            f"{seeds} training seed(s), seed sd {seed_sd}: any headline claim in {claims}/{studies} null studies = "
            f"{claims / studies:.3f} [{float(lo):.3f}, {float(hi):.3f}] (alpha {config.alpha}); {row['seconds']} s"
        )
    with open(args.out, "w") as f:
        json.dump(dict(results=results, design=dict(tasks=5, trials=20, fractions=list(base.fractions),
                                                   shifts=list(base.shifts))), f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
