"""Cost of the action shield per step (and of the instruction guard per instruction).

Measures, on Meta-World's embodiment: a safe action (pass-through fast path), an action that the
shield changes (workspace + rate), a NaN action (hold), the eval runner's per-step safety hook
(shield + violation audit), and one Meta-World ``env.step`` for scale. Then the instruction guard
on the red-team set with cached embeddings. Prints the figures and writes them as JSON (--out).
--quick: fewer repetitions. Figures on a shared CPU are directional; ratios beat absolute times.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def per_call_ms(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):  # best of three: the least disturbed by other processes
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return 1000.0 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/safety_shield.json")
    args = ap.parse_args()
    from lbm.safety import ActionShield, default_shield_config
    from lbm.safety.rollout import SlotSafety
    from lbm.sim import METAWORLD_EMBODIMENT, make_env

    reps = 2000 if args.quick else 20000
    cfg = default_shield_config(METAWORLD_EMBODIMENT)
    state = np.zeros(39, np.float32)
    state[:3] = (0.0, 0.65, 0.2)
    edge = state.copy()
    edge[0] = 0.497
    safe = np.array([0.1, -0.2, 0.3, 0.5], np.float32)
    figures: dict = {}

    sh = ActionShield(cfg)
    figures["safe_action_ms"] = per_call_ms(lambda: sh.filter(safe, state), reps)
    sh2 = ActionShield(cfg, keep_log=False)
    figures["changed_action_ms"] = per_call_ms(lambda: (sh2.reset(), sh2.filter(np.float32([1.0, 0, 0, 0]), edge)), reps)
    sh3 = ActionShield(cfg, keep_log=False)
    nan = np.array([np.nan, 0, 0, 0], np.float32)
    figures["nan_hold_ms"] = per_call_ms(lambda: sh3.filter(nan, state), reps)
    hook = SlotSafety(METAWORLD_EMBODIMENT, shield=True)
    figures["eval_hook_ms"] = per_call_ms(lambda: hook.filter(safe, state), reps)

    env = make_env("reach-v3", max_steps=500)
    env.reset(seed=0)
    n = 0

    def step():
        nonlocal n
        n += 1
        if n % 400 == 0:
            env.reset(seed=0)
        env.step(np.zeros(4, np.float32))

    figures["metaworld_env_step_ms"] = per_call_ms(step, 100 if args.quick else 400)
    env.close()
    figures["shield_overhead_vs_env_step"] = figures["safe_action_ms"] / figures["metaworld_env_step_ms"]
    figures["target_ms"] = 0.05
    figures["meets_target"] = figures["safe_action_ms"] < 0.05

    from lbm.safety.guard import InstructionGuard, evaluate_guard, load_redteam

    rows = load_redteam()
    guard = InstructionGuard()
    guard.check_many([r["text"] for r in rows])  # embeddings cached from here on
    t = time.perf_counter()
    for r in rows:
        guard.check(r["text"])
    figures["guard_cached_ms_per_instruction"] = 1000.0 * (time.perf_counter() - t) / len(rows)
    result = evaluate_guard(guard, rows)
    figures["redteam"] = {
        k: {kk: vv for kk, vv in v.items() if kk != "misses"} if isinstance(v, dict) else v for k, v in result.items()
    }

    for k, v in figures.items():
        print(f"{k:36s} {json.dumps(v) if isinstance(v, dict) else (f'{v:.4f}' if isinstance(v, float) else v)}")
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
