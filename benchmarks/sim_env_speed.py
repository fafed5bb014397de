"""Environment throughput of any suite: expert-driven steps per second, state only and with cameras,
and what building and resetting an env costs.

Measures ``SimEnv.step(env.expert_action())`` (expert, physics and observation) in one process
for: state only, each of the embodiment's first two cameras alone (96 px; 84 px for LIBERO, its
common policy input), all cameras at 128 px (LIBERO's default), and the first camera with the
simulator's default render quality (shadows, reflections, multisampling) for comparison. Also
times ``make_env`` and ``reset`` (from a seed, and from a fixed initial state where the task has them).

    python benchmarks/sim_env_speed.py --out speed.json
    python benchmarks/sim_env_speed.py --task libero-10/put-both-the-alphabet-soup-and-the-tomato-sauce-in-the-basket
    python benchmarks/sim_env_speed.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def measure(task: str, steps: int, **kwargs) -> dict:
    from lbm.sim import eval_seed, make_env

    with make_env(task, **kwargs) as env:
        env.reset(eval_seed(task, 0))
        env.step(env.expert_action())  # build the renderer outside the timed loop
        done_steps, episodes, trial = 0, 0, 0
        start = time.perf_counter()
        while done_steps < steps:
            result = env.step(env.expert_action())
            done_steps += 1
            if result.done:
                trial += 1
                episodes += 1
                env.reset(eval_seed(task, trial))
        elapsed = time.perf_counter() - start
    return {"steps": done_steps, "seconds": elapsed, "steps_per_s": done_steps / elapsed, "episodes_finished": episodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pick-place-v3")
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per configuration")
    parser.add_argument("--quick", action="store_true", help="200 steps per configuration")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    from rich.progress import track

    from lbm.sim import RenderConfig, embodiment_of, eval_seed, get_task, make_env

    steps = 200 if args.quick else args.steps
    spec = get_task(args.task)
    cams = embodiment_of(spec.name).cameras
    size = 84 if spec.suite == "libero" else 96
    configs: dict[str, dict] = {"state only": {}}
    for cam in cams[:2]:
        configs[f"{cam} {size}px"] = {"cameras": [cam], "image_size": size}
    configs[f"all {len(cams)} cameras 128px"] = {"cameras": list(cams), "image_size": 128}
    configs[f"{cams[0]} {size}px, default quality"] = {
        "cameras": [cams[0]],
        "image_size": size,
        "render": RenderConfig(shadows=True, reflections=True, antialias=True, skybox=True),
    }
    start = time.perf_counter()
    with make_env(spec.name) as env:
        costs = {"make_env_s": time.perf_counter() - start}
        for label, kwargs in [("reset_seed_ms", {})] + (
            [("reset_init_state_ms", {"init_state": 0})] if spec.fixed_init_states else []
        ):
            start = time.perf_counter()
            for i in range(10):
                env.reset(eval_seed(spec.name, i), **kwargs)
            costs[label] = 100 * (time.perf_counter() - start)
    results = {}
    for name, kwargs in track(list(configs.items()), description="configurations"):
        # the slow default-quality renderer gets fewer steps so the benchmark stays short
        n = steps if "default" not in name else max(50, steps // 10)
        results[name] = measure(args.task, n, **kwargs)
    base = results["state only"]["steps_per_s"]
    print(f"\n{args.task}, 1 process, {platform.processor() or platform.machine()}")
    print(" | ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    print("| configuration | steps/s | relative to state only |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['steps_per_s']:.0f} | {r['steps_per_s'] / base:.3f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"task": args.task, "results": results, "costs": costs}, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
