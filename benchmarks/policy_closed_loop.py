"""Closed-loop success of a checkpoint on Meta-World tasks: a simple, honest loop (not the full runner).

    python benchmarks/policy_closed_loop.py CKPT --tasks mt10 --trials 5 --out closed_loop.json [--quick]

Every task runs ``--trials`` episodes from the evaluation seed space (``lbm.sim.eval_seed``, disjoint
from the demonstration seeds); all episodes of one trial index run as a batch of slots through one
``predict_chunk`` call. The first ``--execute`` actions of each chunk are executed (receding
horizon), an episode ends on success or at ``--max-steps``. Reports per-task successes, the pooled
rate and its exact (Clopper-Pearson) 95% interval.
"""

from __future__ import annotations

import argparse
import json
import time

from lbm.stats import proportion_interval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint")
    ap.add_argument("--tasks", default="mt10")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--execute", type=int, default=8, help="actions executed per predicted chunk")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--out", default="closed_loop.json")
    ap.add_argument("--quick", action="store_true", help="2 trials, 100 steps")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.max_steps = 2, 100
    import torch

    from lbm.sim import eval_seed, make_env, resolve_tasks
    from lbm.train import load_policy

    torch.set_num_threads(2)
    policy = load_policy(args.checkpoint)
    tasks = resolve_tasks(args.tasks)
    envs = [make_env(t, max_steps=args.max_steps) for t in tasks]
    results = {t: [] for t in tasks}
    t0 = time.perf_counter()
    for trial in range(args.trials):
        seeds = [eval_seed(t, trial) for t in tasks]
        states = [policy.reset(seed) for seed in seeds]  # the caller owns each robot's history
        obs = [env.reset(seed) for env, seed in zip(envs, seeds)]
        done = [False] * len(tasks)
        success = [False] * len(tasks)
        steps = 0
        while not all(done) and steps < args.max_steps:
            result = policy.predict_chunk(obs, states)
            chunks, states = result.actions, list(result.states)
            for k in range(min(args.execute, chunks.shape[1])):
                for i, env in enumerate(envs):
                    if done[i]:
                        continue
                    r = env.step(chunks[i, k])
                    obs[i] = r.observation
                    success[i] |= bool(r.success)
                    done[i] = bool(r.done or r.success)
                steps += 1
        for t, s in zip(tasks, success):
            results[t].append(s)
        print(f"trial {trial + 1}/{args.trials}: {sum(success)}/{len(tasks)} tasks solved ({time.perf_counter() - t0:.0f} s)")
    for env in envs:
        env.close()
    k = sum(sum(v) for v in results.values())
    n = sum(len(v) for v in results.values())
    lo, hi = (float(x) for x in proportion_interval(k, n, method="clopper-pearson"))
    print(f"\n{'task':28s} success")
    for t, v in results.items():
        print(f"{t:28s} {sum(v)}/{len(v)}")
    print(f"\npooled: {k}/{n} = {k / n:.3f} (95% Clopper-Pearson [{lo:.3f}, {hi:.3f}])")
    with open(args.out, "w") as f:
        json.dump(
            {
                "checkpoint": args.checkpoint,
                "trials_per_task": args.trials,
                "max_steps": args.max_steps,
                "execute": args.execute,
                "per_task": {t: [bool(x) for x in v] for t, v in results.items()},
                "successes": k,
                "episodes": n,
                "rate": k / n,
                "ci95": [lo, hi],
                "seconds": time.perf_counter() - t0,
            },
            f,
            indent=1,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
