"""Time `compare_records` on a synthetic 10-policy x 50-task record set (and the sequential design).

Prints the figures and writes them as JSON (--out). --quick: 4 policies x 10 tasks.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd


def records(policies: int, tasks: int, trials: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.1, 0.9, size=(policies, tasks))
    pol, task, trial = np.meshgrid(np.arange(policies), np.arange(tasks), np.arange(trials), indexing="ij")
    success = rng.random(pol.shape) < rates[pol, task]
    n = pol.size
    return pd.DataFrame(
        dict(
            policy=[f"policy{i}" for i in pol.ravel()],
            task=[f"task{j:02d}" for j in task.ravel()],
            shift="none",
            trial=trial.ravel(),
            seed=trial.ravel() + 10_000,
            success=success.ravel(),
            steps=np.full(n, 100),
            duration_s=np.zeros(n),
            failure_reason="",
            latency_ms=np.zeros(n),
            **{"return": np.zeros(n)},
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/stats_speed.json")
    args = ap.parse_args()
    from lbm import stats
    from lbm.eval import compare
    from lbm.eval.records import validate_records
    from lbm.stats import hypotheses

    policies, tasks = (4, 10) if args.quick else (10, 50)
    df = validate_records(records(policies, tasks, args.trials))
    figures = dict(policies=policies, tasks=tasks, trials=args.trials, rows=len(df))
    for test in ("boschloo", "mcnemar"):
        hypotheses.cache_clear()
        t = time.perf_counter()
        res = compare.compare_records(df, test=test, bootstrap_reps=2000)
        figures[f"compare_{test}_s"] = time.perf_counter() - t
        figures[f"pairwise_tests_{test}"] = len(res["pairwise"])
        if test == "boschloo":
            figures["boschloo_distinct_tables"] = hypotheses.cache_size()
    for n_max in (100,) if args.quick else (100, 200):
        t = time.perf_counter()
        stats.sequential_design(n_max, looks=5)
        figures[f"sequential_design_nmax{n_max}_s"] = time.perf_counter() - t
    # Boschloo's test at large n (scipy's boschloo_exact: minutes at n = 2,000 per arm), and beside scipy at n = 200.
    from scipy.stats import boschloo_exact

    for n in (200, 2000):
        hypotheses.cache_clear()
        t = time.perf_counter()
        stats.two_proportion_test(n // 2, n, n // 2 + n // 30, n)
        figures[f"boschloo_n{n}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    boschloo_exact([[100, 106], [100, 94]])
    figures["scipy_boschloo_n200_s"] = time.perf_counter() - t
    t = time.perf_counter()
    figures["samplesize_exact_0.5_0.7"] = stats.samplesize_exact(0.5, 0.7)
    figures["samplesize_exact_s"] = time.perf_counter() - t
    for k, v in figures.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
