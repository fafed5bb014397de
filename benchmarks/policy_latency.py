"""Per-chunk inference latency of every policy family (batch 1 and 16): reference vs fast sampling path.

    python benchmarks/policy_latency.py --out latency.json [--quick] [--size small] [--threads 1 2] [--compile]

State observations (Meta-World sawyer: 39-D state, 4-D actions); random weights have the same cost
as trained ones. The CPU may be shared with other jobs, so every variant (the reference sampling loop,
``sample_actions(..., reference=True)``: the pre-optimization code; the fast path: a whole
``predict_chunk`` call as deployed, with the caller-owned state, seeded noise, normalization and
clipping; each at every thread count) is timed *interleaved* in one loop, the order rotating every
repeat, and the medians are reported with their ratio to the reference at the same thread count.
The reference times the sampling loop alone (no batch building), so the ratio slightly understates
the gain. The 1-min load average at the start and end of the run is written with the figures. Each family runs in a
fresh process, so its
peak RSS (inference only) is its own; the bare runtime's is written beside it. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from _fresh_process import in_fresh_process, peak_rss_mb, runtime_peak_rss_mb
from lbm.data.normalize import FeatureStats
from lbm.policies import POLICIES, InstructionCache, build_policy, policy_config
from lbm.schema import ACTION, STATE, STATE_PAD, Embodiment, Observation

EMB = Embodiment("metaworld-sawyer", 39, 4, (-1.0,) * 4, (1.0,) * 4, cameras=("corner",))


STATS = {EMB.name: {STATE: FeatureStats.unit(39), ACTION: FeatureStats.unit(4)}}


def _load() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def measure(policy, batch: int, repeats: int, threads: list[int], paths=("ref", "fast")) -> dict[str, float]:
    """Median ms per chunk for ``{path}_t{threads}``, all variants interleaved."""
    obs = [Observation(np.zeros(39, np.float32), {}, "reach the goal", EMB.name) for _ in range(batch)]
    states = [policy.reset(seed=i) for i in range(batch)]
    H = policy.config.history
    window = {
        STATE: torch.zeros(batch, H, 39),
        STATE_PAD: torch.zeros(batch, H, dtype=torch.bool),
        "task": [o.instruction for o in obs],
        "embodiment": [EMB.name] * batch,
    }
    noise = policy.initial_noise(states)
    calls = {
        "ref": lambda: policy.sample_actions(window, noise, reference=True),
        "fast": lambda: policy.predict_chunk(obs, states),
    }
    variants = [(path, t) for t in threads for path in paths]
    times: dict[str, list[float]] = {f"{p}_t{t}": [] for p, t in variants}
    for r in range(repeats + 2):
        for j in range(len(variants)):
            path, t = variants[(r + j) % len(variants)]
            torch.set_num_threads(t)
            start = time.perf_counter()
            calls[path]()
            if r >= 2:  # two warm-up rounds
                times[f"{path}_t{t}"].append(time.perf_counter() - start)
    return {k: float(np.median(v) * 1000) for k, v in times.items()}


def run_family(family: str, size: str, repeats: int, threads: list[int], compile_: bool) -> dict:
    """Latency of one family at batch 1 and 16 (and compiled at batch 1), and the process's peak RSS."""
    cache = InstructionCache({"reach the goal": np.ones(384, np.float32) / np.sqrt(384)}, use_user_cache=False)
    torch.manual_seed(0)
    policy = build_policy(policy_config(family, size), [EMB], STATS, cache).eval()
    row: dict = {"family": family, "size": size, "params": sum(p.numel() for p in policy.parameters())}
    for b in (1, 16):
        n = repeats if family != "discrete" or b == 1 else max(2, repeats // 5)
        row[f"b{b}"] = {"repeats": n, "load_1min": _load(), **measure(policy, b, n, threads)}
    if compile_:
        torch.set_num_threads(max(threads))
        policy.expert = torch.compile(policy.expert, dynamic=True)
        row["ref_compiled_b1_ms"] = measure(policy, 1, repeats, [max(threads)], paths=("ref",))[f"ref_t{max(threads)}"]
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="policy_latency.json")
    ap.add_argument("--quick", action="store_true", help="tiny size, few repeats")
    ap.add_argument("--size", default="small")
    ap.add_argument("--repeats", type=int, default=31, help="interleaved rounds per batch size (discrete at b=16: a fifth)")
    ap.add_argument(
        "--compile", action="store_true", help="also time torch.compile of the reference path (slow to compile: ~1 min each)"
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to compare")
    args = ap.parse_args()
    size, repeats = ("tiny", 3) if args.quick else (args.size, args.repeats)
    load_start = _load()
    results = []
    baseline = runtime_peak_rss_mb()
    for family in POLICIES:
        row = in_fresh_process(run_family, family, size, repeats, args.threads, args.compile)
        results.append(row)
        print(json.dumps(row))
    print(f"\n{'family':10s} {'batch':>5s} {'threads':>7s} {'ref ms':>8s} {'fast ms':>8s} {'fast/ref':>8s}")
    for r in results:
        for b in (1, 16):
            for t in args.threads:
                ref, fast = r[f"b{b}"][f"ref_t{t}"], r[f"b{b}"][f"fast_t{t}"]
                print(f"{r['family']:10s} {b:5d} {t:7d} {ref:8.1f} {fast:8.1f} {fast / ref:8.2f}")
        if args.compile:
            print(f"{r['family']:10s} compiled reference b=1: {r['ref_compiled_b1_ms']:.1f} ms")
    load_end = _load()
    with open(args.out, "w") as f:
        json.dump(
            {
                "threads": args.threads,
                "loadavg_1min_start": load_start,
                "loadavg_1min_end": load_end,
                "runtime_rss_mb": baseline,
                "results": results,
            },
            f,
            indent=1,
        )
    print(
        f"wrote {args.out} (1-min load average: {load_start} at start, {load_end} at end; median of {repeats} interleaved rounds)"
    )


if __name__ == "__main__":
    main()
