"""Failure detector on a trained policy's last-layer features: trained on seen tasks, scored on unseen ones.

Reproduces benchmarks/results/failure_detector.md::

    python benchmarks/safety_detector.py --checkpoint studies/quick/cache/train-59c6b6293588/checkpoint \\
        --eval-dir /tmp/fd/ev

1. ``lbm eval --features --action-samples K`` of the checkpoint on SEEN + UNSEEN tasks, nominal and
   ``object_pose:medium`` (skipped when ``--eval-dir`` already holds that evaluation: it resumes).
2. Every rollout is cut at the shortest successful length of its task (length-leak guard).
3. Seen-task rollouts: a seeded share (--calibration-fraction) of the successes is held out for the conformal band; detectors
   are fit on the rest (successes + all failures). Unseen-task rollouts are only scored.
4. For each detector (SAFE-MLP, SAFE-LSTM, Mahalanobis, k-NN, timeout, action-sample variance):
   ROC-AUC of the max-so-far score, false-alarm rate at alpha with a Clopper-Pearson interval,
   detection rate, lead time (steps from the alarm to the cut end), scoring latency per step.

Prints a markdown table and writes the figures as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SEEN = (
    "coffee-pull-v3",
    "handle-pull-v3",
    "basketball-v3",
    "coffee-push-v3",
    "pick-place-v3",
    "push-v3",
    "sweep-v3",
    "drawer-open-v3",
)
UNSEEN = ("pick-out-of-hole-v3", "pick-place-wall-v3", "assembly-v3", "plate-slide-back-v3", "window-close-v3", "dial-turn-v3")


def run_eval(args) -> None:
    from lbm.eval.runner import EvalConfig, run_evaluation

    config = EvalConfig(
        policy=(f"pre={args.checkpoint}",),
        tasks=",".join(args.seen + args.unseen),
        shifts=args.shifts,
        trials=args.trials,
        out=Path(args.eval_dir),
        workers=args.workers,
        seed=args.seed,
        features=True,
        action_samples=args.action_samples,
    )
    run_evaluation(config)


def load(folder: Path):
    """Per trial: features (T, D), action variance (T,) or None, success, task."""
    from lbm.eval.records import load_records
    from lbm.safety.monitor import action_var_path, features_path

    rows = []
    if (folder / "records.parquet").exists():
        df = load_records(folder / "records.parquet", require_pairing=False)
    else:  # an evaluation still running: analyse the trials finished so far
        import pandas as pd

        df = pd.read_json(folder / "records.journal.jsonl", lines=True)
        print(f"PARTIAL: {len(df)} finished trials from the journal of a running evaluation")
    for r in df.itertuples(index=False):
        p = features_path(folder, r.policy, r.task, r.shift, r.trial)
        if not p.exists():
            continue
        v = action_var_path(p)
        rows.append((np.load(p), np.load(v) if v.exists() else None, bool(r.success), str(r.task), str(r.shift)))
    if not rows:
        raise SystemExit(f"no stored features in {folder}: run without --skip-eval first")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="flow/diffusion checkpoint folder")
    ap.add_argument("--eval-dir", default="/tmp/fd/ev", help="evaluation folder (created or resumed)")
    ap.add_argument("--seen", default=",".join(SEEN))
    ap.add_argument("--unseen", default=",".join(UNSEEN))
    ap.add_argument("--shifts", default="none,object_pose:medium")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--action-samples", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="eval seed; also calibration split and detector seed")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.7,
        help="share of seen successes held out for the band (it needs >= 9 in its own calibration half at alpha=0.1)",
    )
    ap.add_argument("--skip-eval", action="store_true", help="only analyse an existing --eval-dir")
    ap.add_argument("--out", default="benchmarks/safety_detector.json")
    args = ap.parse_args()
    args.seen, args.unseen = args.seen.split(","), args.unseen.split(",")
    import torch

    from lbm.safety.failure import (
        ActionVarianceDetector,
        ConformalBand,
        DetectorConfig,
        KNNDetector,
        LSTMDetector,
        MahalanobisDetector,
        MLPDetector,
        TimeoutDetector,
        cut_to_shortest_success,
        evaluate_detector,
    )

    torch.set_num_threads(1)
    if not args.skip_eval:
        run_eval(args)
    rows = load(Path(args.eval_dir))
    seen = [r for r in rows if r[3] in args.seen]
    unseen = [r for r in rows if r[3] in args.unseen]
    has_var = all(r[1] is not None and len(r[1]) == len(r[0]) for r in rows)

    def cut(part):
        feats = cut_to_shortest_success([r[0] for r in part], [r[2] for r in part], [r[3] for r in part])
        var = [r[1][: len(f)] if has_var else None for r, f in zip(part, feats)]
        return feats, var, [r[2] for r in part]

    tr_f, tr_v, tr_s = cut(seen)
    te_f, te_v, te_s = cut(unseen)
    rng = np.random.default_rng(args.seed)
    ok = [i for i, s in enumerate(tr_s) if s]
    calib = sorted(rng.permutation(ok)[: int(round(args.calibration_fraction * len(ok)))].tolist())
    train = [i for i in range(len(tr_f)) if i not in set(calib)]
    figures: dict = {
        "checkpoint": args.checkpoint,
        "eval_dir": args.eval_dir,
        "alpha": args.alpha,
        "seed": args.seed,
        "seen_tasks": args.seen,
        "unseen_tasks": args.unseen,
        "shifts": args.shifts,
        "trials": args.trials,
        "action_samples": args.action_samples,
        "feature_dim": int(tr_f[0].shape[1]),
        "seen": {"rollouts": len(tr_f), "successes": int(sum(tr_s)), "train": len(train), "calibration": len(calib)},
        "unseen": {"rollouts": len(te_f), "successes": int(sum(te_s))},
        "unseen_cut_length_mean": float(np.mean([len(f) for f in te_f])),
        "detectors": {},
    }
    cfg = DetectorConfig(epochs=args.epochs, seed=args.seed)
    detectors = {
        "SAFE-MLP": MLPDetector(cfg),
        "SAFE-LSTM": LSTMDetector(cfg),
        "Mahalanobis": MahalanobisDetector(),
        "k-NN (k=5)": KNNDetector(),
        "timeout": TimeoutDetector(),
    }
    if has_var:
        detectors[f"action variance (K={args.action_samples})"] = ActionVarianceDetector()
    for name, det in detectors.items():
        inputs_tr, inputs_te = (tr_v, te_v) if isinstance(det, ActionVarianceDetector) else (tr_f, te_f)
        t = time.perf_counter()
        det.fit([inputs_tr[i] for i in train], [tr_s[i] for i in train])
        fit_s = time.perf_counter() - t
        band = ConformalBand.fit([det.score(inputs_tr[i]) for i in calib], alpha=args.alpha, seed=args.seed)
        result = evaluate_detector([det.score(x) for x in inputs_te], te_s, band)
        seen_res = evaluate_detector([det.score(inputs_tr[i]) for i in calib], [True] * len(calib), band)
        x = inputs_te[0][:1]
        t = time.perf_counter()
        for _ in range(100):
            det.score(x)
        result.update(
            latency_ms_per_step=1000 * (time.perf_counter() - t) / 100,
            fit_s=fit_s,
            band_q=band.q,
            n_calibration=band.n_calibration,
            calib_false_alarm_in_sample=seen_res["false_alarm_rate"],
        )
        figures["detectors"][name] = result

    s, u = figures["seen"], figures["unseen"]
    print(
        f"seen: {s['rollouts']} rollouts ({s['successes']} successes; {s['train']} train, {s['calibration']} calibration "
        f"successes); unseen: {u['rollouts']} rollouts ({u['successes']} successes); alpha={args.alpha}; "
        f"features {figures['feature_dim']}-D"
    )
    print(
        "| detector | ROC-AUC (max-so-far) | false alarms at alpha (95% CP) | detection rate (95% CP) | "
        "lead time, median (mean) steps | ms/step |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in figures["detectors"].items():
        print(
            f"| {name} | {r['roc_auc']:.3f} | {r['false_alarm_rate']:.3f} [{r['false_alarm_low']:.3f}, "
            f"{r['false_alarm_high']:.3f}] | {r['detection_rate']:.3f} [{r['detection_low']:.3f}, "
            f"{r['detection_high']:.3f}] | {r['lead_time_median_steps']:.0f} ({r['lead_time_steps']:.1f}) | "
            f"{r['latency_ms_per_step']:.3f} |"
        )
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
