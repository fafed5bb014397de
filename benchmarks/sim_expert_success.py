"""Scripted-expert success per task (any suite), with exact (Clopper-Pearson) 95% intervals.

Runs the scripted expert (Meta-World's own; the waypoint expert for LIBERO and the robosuite arms)
on every task of a set for N seeds of the evaluation seed space (the demonstration seed space with
--seeds demo) and prints a table: successes / trials, interval, mean and max episode length of the
successful episodes, episodes per minute per worker. Writes the figures as JSON with --out.

    python benchmarks/sim_expert_success.py --tasks mt50 --episodes 10 --out expert.json
    python benchmarks/sim_expert_success.py --tasks libero-goal,libero-10 --episodes 20 --seeds demo --workers 2
    python benchmarks/sim_expert_success.py --quick
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.stats import beta


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def run_task(args: tuple[str, int, str, int | None]) -> dict:
    task, episodes, space, max_steps = args
    from lbm.sim import demo_seed, eval_seed, make_env

    seed_of = eval_seed if space == "eval" else demo_seed
    env = make_env(task, max_steps=max_steps)
    lengths, successes = [], 0
    start = time.perf_counter()
    steps = 0
    for i in range(episodes):
        env.reset(seed_of(task, i))
        while True:
            result = env.step(env.expert_action())
            if result.done:
                break
        steps += env.steps
        if result.success:
            successes += 1
            lengths.append(env.steps)
    elapsed = time.perf_counter() - start
    env.close()
    lo, hi = clopper_pearson(successes, episodes)
    return {
        "task": task,
        "successes": successes,
        "trials": episodes,
        "rate": successes / episodes,
        "ci95": [lo, hi],
        "mean_len": float(np.mean(lengths)) if lengths else None,
        "max_len": int(max(lengths)) if lengths else None,
        "max_steps": env.max_steps,
        "steps_per_s": steps / elapsed,
        "episodes_per_min": 60 * episodes / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="mt50", help="task spec, e.g. mt10 or reach-v3,push-v3")
    parser.add_argument("--episodes", type=int, default=10, help="episodes (seeds) per task")
    parser.add_argument("--seeds", choices=("eval", "demo"), default="eval", help="seed space")
    parser.add_argument("--max-steps", type=int, default=None, help="override every task's step limit (<=500)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--quick", action="store_true", help="small run: mt10, 3 episodes")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    from rich.progress import track

    from lbm.sim import resolve_tasks

    if args.quick:
        args.tasks, args.episodes = "mt10", 3
    tasks = resolve_tasks(args.tasks)
    jobs = [(t, args.episodes, args.seeds, args.max_steps) for t in tasks]
    start = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(track(pool.map(run_task, jobs), total=len(jobs), description="experts"))
    else:
        rows = [run_task(j) for j in track(jobs, description="experts")]
    total_k = sum(r["successes"] for r in rows)
    total_n = sum(r["trials"] for r in rows)
    lo, hi = clopper_pearson(total_k, total_n)
    print("\n| task | success | 95% CI | mean len | max len | limit | episodes/min |\n|---|---|---|---|---|---|---|")
    for r in rows:
        mean = f"{r['mean_len']:.0f}" if r["mean_len"] is not None else "-"
        print(
            f"| {r['task']} | {r['successes']}/{r['trials']} | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] "
            f"| {mean} | {r['max_len'] or '-'} | {r['max_steps']} | {r['episodes_per_min']:.1f} |"
        )
    print(f"| **all** | **{total_k}/{total_n} = {total_k / total_n:.3f}** | [{lo:.3f}, {hi:.3f}] | | | | |")
    summary = {
        "tasks": args.tasks,
        "episodes_per_task": args.episodes,
        "seed_space": args.seeds,
        "successes": total_k,
        "trials": total_n,
        "rate": total_k / total_n,
        "ci95": [lo, hi],
        "wall_s": time.perf_counter() - start,
        "per_task": rows,
    }
    print(f"wall {summary['wall_s']:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
