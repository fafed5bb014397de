"""Environment throughput: expert-driven steps per second, state only and with cameras.

Measures ``SimEnv.step(env.expert_action())`` (expert, physics and observation) in one process
for: state only, one 96 px "front" camera, one 96 px "corner" camera, and the front camera with
Meta-World's default render quality (shadows, reflections, multisampling) for comparison.

    python benchmarks/sim_env_speed.py --out speed.json
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

    from lbm.sim import RenderConfig

    steps = 200 if args.quick else args.steps
    configs = {
        "state only": {},
        "front 96px": {"cameras": ["front"], "image_size": 96},
        "corner 96px": {"cameras": ["corner"], "image_size": 96},
        "front 96px, default quality": {
            "cameras": ["front"],
            "image_size": 96,
            "render": RenderConfig(shadows=True, reflections=True, antialias=True, skybox=True),
        },
    }
    results = {}
    for name, kwargs in track(list(configs.items()), description="configurations"):
        # the slow default-quality renderer gets fewer steps so the benchmark stays short
        n = steps if "default" not in name else max(50, steps // 10)
        results[name] = measure(args.task, n, **kwargs)
    base = results["state only"]["steps_per_s"]
    print(f"\n{args.task}, 1 process, {platform.processor() or platform.machine()}")
    print("| configuration | steps/s | relative to state only |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['steps_per_s']:.0f} | {r['steps_per_s'] / base:.3f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"task": args.task, "results": results}, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
