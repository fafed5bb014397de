"""Per-chunk inference latency of every policy family (batch 1 and 16), torch.compile off/on, peak memory.

    python benchmarks/policy_latency.py --out latency.json [--quick] [--size small] [--compile]

State observations (Meta-World sawyer: 39-D state, 4-D actions); random weights have the same cost
as trained ones. Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from lbm.policies import POLICIES, InstructionCache, build_policy, policy_config
from lbm.schema import Embodiment, Observation

EMB = Embodiment("metaworld-sawyer", 39, 4, (-1.0,) * 4, (1.0,) * 4, cameras=("corner",))
STATS = {EMB.name: {"observation.state": {"mean": np.zeros(39), "std": np.ones(39)},
                    "action": {"q01": -np.ones(4), "q99": np.ones(4), "mean": np.zeros(4), "std": np.ones(4)}}}


def measure(policy, batch: int, repeats: int, cameras=()) -> float:
    images = {c: np.zeros((96, 96, 3), np.uint8) for c in cameras}
    obs = [Observation(np.zeros(39, np.float32), images, "reach the goal", EMB.name) for _ in range(batch)]
    for _ in range(2):
        policy.predict_chunk(obs)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        policy.predict_chunk(obs)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="policy_latency.json")
    ap.add_argument("--quick", action="store_true", help="tiny size, few repeats")
    ap.add_argument("--size", default="small")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile: ~1 min each)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size, repeats = ("tiny", 3) if args.quick else (args.size, 15)
    cache = InstructionCache({"reach the goal": np.ones(384, np.float32) / np.sqrt(384)}, use_user_cache=False)
    results = []
    for family in POLICIES:
        torch.manual_seed(0)
        policy = build_policy(policy_config(family, size), [EMB], STATS, cache).eval()
        row = {"family": family, "size": size, "params": sum(p.numel() for p in policy.parameters())}
        for b in (1, 16):
            row[f"ms_b{b}"] = measure(policy, b, repeats if family != "discrete" or b == 1 else max(2, repeats // 5))
        if args.compile:
            policy.expert = torch.compile(policy.expert, dynamic=True)
            row["ms_b1_compiled"] = measure(policy, 1, repeats)
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results.append(row)
        print(json.dumps(row))
    print(f"\n{'family':10s} {'params':>9s} {'b=1 ms':>8s} {'b=16 ms':>8s}" + (f" {'compiled b=1':>12s}" if args.compile else ""))
    for r in results:
        print(f"{r['family']:10s} {r['params']:9d} {r['ms_b1']:8.1f} {r['ms_b16']:8.1f}" + (f" {r['ms_b1_compiled']:12.1f}" if args.compile else ""))
    load = open("/proc/loadavg").read().split()[0]
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "loadavg_1min": float(load), "results": results}, f, indent=1)
    print(f"wrote {args.out} (1-min load average during the run: {load})")


if __name__ == "__main__":
    main()
