"""Training throughput (samples/s) of a policy size with state observations and with 96 px images.

    python benchmarks/train_throughput.py --out throughput.json [--quick] [--size small]

Times optimizer steps (forward, backward, AdamW) on a synthetic collated batch, fp32 and bf16
autocast, so the figure is the model's cost, not the data loader's. Each configuration runs in a
fresh process, so its peak RSS (reported) is its own; the bare runtime's (python, torch and lbm
imported, nothing run) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from _fresh_process import in_fresh_process, peak_rss_mb, runtime_peak_rss_mb
from lbm.data.normalize import FeatureStats
from lbm.policies import InstructionCache, build_policy, policy_config
from lbm.schema import ACTION, STATE, Embodiment

EMB = Embodiment("metaworld-sawyer", 39, 4, (-1.0,) * 4, (1.0,) * 4, cameras=("corner",))
STATS = {EMB.name: {STATE: FeatureStats.unit(39), ACTION: FeatureStats.unit(4)}}


def batch(B: int, cameras: tuple[str, ...], image: int) -> dict:
    b = {
        "observation.state": torch.randn(B, 2, 39),
        "observation.state_is_pad": torch.zeros(B, 2, dtype=torch.bool),
        "action": torch.rand(B, 16, 4) * 2 - 1,
        "action_is_pad": torch.zeros(B, 16, dtype=torch.bool),
        "task": ["reach the goal"] * B,
        "embodiment": [EMB.name] * B,
    }
    for c in cameras:
        b[f"observation.images.{c}"] = torch.randint(0, 255, (B, 2, image, image, 3), dtype=torch.uint8)
    return b


def measure(family: str, size: str, cams: tuple[str, ...], bf16: bool, B: int, steps: int, threads: int, image: int) -> dict:
    """One configuration, run in a fresh process so its peak RSS is its own."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cache = InstructionCache({"reach the goal": np.ones(384, np.float32) / np.sqrt(384)}, use_user_cache=False)
    model = build_policy(policy_config(family, size, cameras=cams, image_size=image), [EMB], STATS, cache).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = batch(B, cams, 96)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.compute_loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return {
        "family": family,
        "size": size,
        "obs": "state+96px" if cams else "state",
        "precision": "bf16" if bf16 else "fp32",
        "batch": B,
        "params": sum(p.numel() for p in model.parameters()),
        "ms_per_step": float(np.median(times) * 1000),
        "samples_per_s": float(B / np.median(times)),
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="train_throughput.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", default="small")
    ap.add_argument("--family", default="flow")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    size, steps, B = ("tiny", 3, 8) if args.quick else (args.size, 10, args.batch)
    results = []
    baseline = runtime_peak_rss_mb()
    for cams in ((), ("corner",)):
        for bf16 in (False, True):
            row = in_fresh_process(measure, args.family, size, cams, bf16, B, steps, args.threads, 32 if args.quick else 96)
            results.append(row)
            print(json.dumps(row))
    load = open("/proc/loadavg").read().split()[0]
    with open(args.out, "w") as f:
        json.dump(
            {"threads": args.threads, "loadavg_1min": float(load), "runtime_rss_mb": baseline, "results": results}, f, indent=1
        )
    print(f"wrote {args.out} (1-min load average during the run: {load}; peak RSS of the bare runtime: {baseline:.0f} MB)")


if __name__ == "__main__":
    main()
