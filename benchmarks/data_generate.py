"""Demonstration generation throughput (episodes/min) with 1 and 2 worker processes.

Usage: python benchmarks/data_generate.py [--quick] [--cameras corner] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from lbm.data import generate_demos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 tasks x 4 episodes instead of 4 x 10")
    ap.add_argument("--cameras", default="", help="comma-separated cameras to render (default: state only)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args()
    tasks = ["reach-v3", "push-v3"] if args.quick else ["reach-v3", "push-v3", "drawer-open-v3", "window-open-v3"]
    per_task = 4 if args.quick else 10
    cams = tuple(c for c in args.cameras.split(",") if c)
    results = {"tasks": tasks, "episodes_per_task": per_task, "cameras": list(cams), "image_size": args.image_size}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            s = generate_demos(
                tasks, per_task, Path(tmp) / "d", cameras=cams, image_size=args.image_size, workers=workers, progress=False
            )
        # Includes process start-up and env construction: what a user waits for.
        results[f"workers_{workers}_episodes_per_min"] = 60 * (s.episodes + len(s.failed_episodes)) / s.seconds
        results[f"workers_{workers}_frames_per_s"] = s.frames / s.seconds
        print(
            f"workers={workers}: {results[f'workers_{workers}_episodes_per_min']:.1f} episodes/min, "
            f"{results[f'workers_{workers}_frames_per_s']:.0f} frames/s ({s.seconds:.1f} s)"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
