"""Planner latency per plan and verification cost per check, on the registered long-horizon scenes.

For each task (LIBERO-10 and LIBERO-Goal, plus robosuite Stack): ground the task's instruction
(MiniLM), plan from the scene's atoms (pyperplan A* + LM-cut), and check every goal atom on the
simulator's symbolic state (the privileged verifier), each repeated --repeats times after one
warm-up; prints median and p90 in milliseconds, and the budget they are measured against (one
control period at 20 Hz = 50 ms). Writes the figures as JSON with --out.

    python benchmarks/plan_latency.py
    python benchmarks/plan_latency.py --quick
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: imports, encoder load, first grounding
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="two tasks, 5 repeats")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from lbm.plan import Grounder, SymbolicPlanner, scene_state
    from lbm.sim import TASK_SETS, eval_seed, make_env
    from lbm.sim.base import SymbolicScene

    tasks = [*TASK_SETS.get("libero-10", ()), *TASK_SETS.get("libero-goal", ()), "robosuite-stack@panda"]
    repeats = args.repeats
    if args.quick:
        tasks, repeats = [tasks[0], tasks[-1]], 5
    planner = SymbolicPlanner()

    def measure(task: str) -> dict:
        with make_env(task) as env:
            assert isinstance(env, SymbolicScene), task
            env.reset(eval_seed(task, 0))
            state = scene_state(env)
            grounder = Grounder(state, env.position)
            goal = grounder.ground(env.spec.instruction).atoms
            return dict(
                task=task,
                plan_steps=len(planner.plan(goal, state).steps),
                # a fresh grounder each time: the cost of a new goal in a new scene (its entity words embedded once)
                ground_ms=timed(lambda: Grounder(state, env.position).ground(env.spec.instruction), repeats),
                plan_ms=timed(lambda: planner.plan(goal, state), repeats),
                state_ms=timed(lambda: scene_state(env), repeats),
                check_ms=timed(lambda: [env.holds(a) for a in goal], repeats),
            )

    rows = [measure(task) for task in tasks]
    print(f"| task | plan steps | ground (ms) | plan (ms) | scene atoms (ms) | verify goal (ms) | (median / p90 of {repeats})")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            f"{np.median(r[k]):.1f} / {np.percentile(r[k], 90):.1f}" for k in ("ground_ms", "plan_ms", "state_ms", "check_ms")
        ]
        print(f"| `{r['task']}` | {r['plan_steps']} | " + " | ".join(cells) + " |")
    plans = np.concatenate([r["plan_ms"] for r in rows])
    print(f"planning over all tasks: median {np.median(plans):.1f} ms, p90 {np.percentile(plans, 90):.1f} ms, max "
          f"{plans.max():.1f} ms (one control period at 20 Hz: 50 ms)")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(repeats=repeats, rows=rows), f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
