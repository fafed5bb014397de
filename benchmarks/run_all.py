"""Run every self-contained benchmark in this folder and collect their JSON figures.

    python benchmarks/run_all.py            # full runs (tens of minutes on a 2-core CPU)
    python benchmarks/run_all.py --quick    # small runs of each (a few minutes)

Each benchmark prints its own figures and writes them to benchmarks/results/NAME.json. Two need a
trained checkpoint and are run by hand: policy_closed_loop.py CKPT and safety_detector.py
--checkpoint CKPT. A benchmark that fails is reported and the others still run; the exit code is
non-zero if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

NEEDS_CHECKPOINT = {"policy_closed_loop", "safety_detector"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = ap.parse_args()
    here = Path(__file__).parent
    results = here / "results"
    results.mkdir(exist_ok=True)
    # (modules starting with "_" are helpers shared by benchmarks, not benchmarks)
    scripts = sorted(
        p for p in here.glob("*.py") if p.stem != "run_all" and not p.stem.startswith("_") and p.stem not in NEEDS_CHECKPOINT
    )
    failed, timings = [], []
    for script in scripts:
        cmd = [sys.executable, str(script), "--out", str(results / f"{script.stem}.json")] + (["--quick"] if args.quick else [])
        print(f"\n=== {script.name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd)
        timings.append((script.stem, time.perf_counter() - start, code))
        if code:
            failed.append(script.stem)
    print("\nbenchmark              seconds  status")
    for name, seconds, code in timings:
        print(f"{name:22s} {seconds:7.1f}  {'ok' if code == 0 else f'FAILED ({code})'}")
    print(f"figures in {results}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
