"""Failure detector on real Meta-World rollouts (seen vs unseen tasks), detector latency, twin-check cost.

Rollouts come from the scripted expert with Gaussian action noise of a per-rollout level (so some
succeed and some fail); features are the 39-D simulator state per step. This exercises the whole
pipeline on real simulator data (length cut, training on seen tasks, conformal band on held-out
seen successes, evaluation on unseen tasks) but it is NOT a measurement on policy latent features:
no trained checkpoint is involved. Prints the figures and writes them as JSON (--out); --quick:
fewer rollouts.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

SEEN = ("reach-v3", "push-v3", "drawer-open-v3", "button-press-v3", "door-open-v3", "window-open-v3")
UNSEEN = ("drawer-close-v3", "window-close-v3", "button-press-topdown-v3", "reach-wall-v3")


def rollouts(tasks, n, max_steps, seed):
    from tqdm import tqdm

    from lbm.sim import make_env

    rng = np.random.default_rng(seed)
    feats, success, names = [], [], []
    for task in tasks:
        env = make_env(task, max_steps=max_steps)
        for i in tqdm(range(n), desc=task, leave=False):
            obs = env.reset(seed=i)
            sigma = rng.uniform(0.0, 2.0)
            states = []
            for _ in range(max_steps):
                a = np.clip(env.expert_action() + rng.normal(0, sigma, 4), -1, 1).astype(np.float32)
                states.append(obs.state)
                r = env.step(a)
                obs = r.observation
                if r.done:
                    break
            feats.append(np.array(states, np.float32))
            success.append(bool(r.success))
            names.append(task)
        env.close()
    return feats, success, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--out", default="benchmarks/safety_detector.json")
    args = ap.parse_args()
    import torch

    from lbm.safety.failure import (ConformalBand, DetectorConfig, KNNDetector, MahalanobisDetector, MLPDetector,
                                    TimeoutDetector, cut_to_shortest_success, evaluate_detector)

    torch.set_num_threads(1)
    n, max_steps = (12, 120) if args.quick else (40, 150)
    t0 = time.perf_counter()
    tr_f, tr_s, tr_t = rollouts(SEEN, n, max_steps, 0)
    te_f, te_s, te_t = rollouts(UNSEEN, n, max_steps, 1)
    figures: dict = {"rollouts_seen": len(tr_f), "rollouts_unseen": len(te_f), "success_rate_seen": float(np.mean(tr_s)),
                     "success_rate_unseen": float(np.mean(te_s)), "rollout_s": time.perf_counter() - t0,
                     "alpha": args.alpha, "features": "simulator state (39-D), noisy scripted expert"}
    tr_f = cut_to_shortest_success(tr_f, tr_s, tr_t)
    te_f = cut_to_shortest_success(te_f, te_s, te_t)
    rng = np.random.default_rng(0)
    ok = [i for i, s in enumerate(tr_s) if s]
    calib = set(rng.permutation(ok)[: len(ok) // 2].tolist())
    train = [i for i in range(len(tr_f)) if i not in calib]
    detectors = {"safe-mlp": MLPDetector(DetectorConfig(epochs=40 if args.quick else 80)),
                 "mahalanobis": MahalanobisDetector(), "knn": KNNDetector(), "timeout": TimeoutDetector()}
    for name, det in detectors.items():
        det.fit([tr_f[i] for i in train], [tr_s[i] for i in train])
        band = ConformalBand.fit([det.score(tr_f[i]) for i in sorted(calib)], alpha=args.alpha)
        result = evaluate_detector([det.score(f) for f in te_f], te_s, band)
        x = te_f[0][:1]
        t = time.perf_counter()
        for _ in range(200):
            det.score(x)
        result["latency_ms_per_step"] = 1000 * (time.perf_counter() - t) / 200
        figures[name] = result

    from lbm.safety.twin import TwinCheck
    from lbm.sim import make_env

    for task in ("reach-v3", "pick-place-v3"):
        env = make_env(task)
        env.reset(seed=0)
        twin = TwinCheck(env)
        chunk = np.random.default_rng(0).uniform(-1, 1, (16, 4)).astype(np.float32)
        twin.check(chunk)
        t = time.perf_counter()
        reps = 10 if args.quick else 40
        for _ in range(reps):
            twin.check(chunk)
        figures[f"twin_ms_per_16_step_chunk_{task}"] = 1000 * (time.perf_counter() - t) / reps
        env.close()

    for k, v in figures.items():
        if isinstance(v, dict):
            print(f"{k:12s} " + "  ".join(f"{kk}={vv:.3f}" if isinstance(vv, float) else f"{kk}={vv}" for kk, vv in v.items()))
        else:
            print(f"{k:40s} {v:.4f}" if isinstance(v, float) else f"{k:40s} {v}")
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
