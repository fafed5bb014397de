"""Cost of the digital-twin predictive check per action chunk (lbm.safety.twin.TwinCheck).

The check rolls a 16-step chunk out on a copy of the MuJoCo state before it is executed. Prints
milliseconds per chunk and per simulated step next to the cost of one real env step, and writes
them as JSON (--out); --quick: fewer repetitions.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/safety_twin.json")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    from lbm.safety.twin import TwinCheck
    from lbm.sim import make_env

    reps = 10 if args.quick else 50
    figures = {}
    for task in ("reach-v3", "pick-place-v3", "door-open-v3"):
        env = make_env(task)
        env.reset(seed=0)
        twin = TwinCheck(env)
        chunk = np.random.default_rng(0).uniform(-1, 1, (16, 4)).astype(np.float32)
        twin.check(chunk)  # warm-up
        start = time.perf_counter()
        for _ in range(reps):
            twin.check(chunk)
        per_chunk = 1000 * (time.perf_counter() - start) / reps
        start = time.perf_counter()
        for _ in range(16 * reps // 4):
            if env.step(np.zeros(4, np.float32)).done:
                env.reset(seed=0)
        per_env_step = 1000 * (time.perf_counter() - start) / (16 * reps // 4)
        env.close()
        figures[task] = {
            "twin_ms_per_16_step_chunk": per_chunk,
            "twin_ms_per_step": per_chunk / 16,
            "env_ms_per_step": per_env_step,
        }
        print(
            f"{task:16s} twin {per_chunk:7.2f} ms per 16-step chunk ({per_chunk / 16:.3f} ms/step); "
            f"one real env step {per_env_step:.3f} ms"
        )
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
