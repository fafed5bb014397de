"""Training-window reader throughput: samples/s, state only and with images, raw and via DataLoader.

Writes a synthetic dataset shaped like Meta-World demos (39-D state, 4-D action, 80-frame
episodes, optional 96 px camera as mp4) to a temp folder, then times random access.
Usage: python benchmarks/data_reader.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lbm.data import DatasetWriter, EpisodeDataset, WindowDataset, collate_windows
from lbm.schema import Embodiment

EMB = Embodiment("bench", 39, 4, (-1,) * 4, (1,) * 4, cameras=("corner",), control_hz=80)


def _write(root: Path, episodes: int, cameras: tuple[str, ...], size: int) -> None:
    rng = np.random.default_rng(0)
    with DatasetWriter(root, EMB, cameras=cameras) as w:
        for e in range(episodes):
            L = 80
            imgs = {c: rng.integers(0, 255, (L, size, size, 3), dtype=np.uint8) // 8 + 100 for c in cameras}
            w.add_episode(rng.normal(size=(L, 39)), rng.uniform(-1, 1, (L, 4)), f"task {e % 10}", images=imgs)


def _rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small dataset and few samples")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args()
    episodes, samples = (20, 2000) if args.quick else (200, 20000)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cams in ((), ("corner",)):
            root = Path(tmp) / f"ds{len(cams)}"
            _write(root, episodes if not cams else max(episodes // 4, 5), cams, 96)
            ds = EpisodeDataset(root, image_cache_episodes=64)
            w = WindowDataset(ds, history=2, horizon=16, cameras=cams)
            rng = np.random.default_rng(0)
            label = "images_96px" if cams else "state_only"
            n = samples if not cams else samples // 4
            idx = rng.integers(0, len(w), n)
            results[f"{label}_samples_per_s"] = _rate(lambda k, w=w, idx=idx: [w[int(i)] for i in idx[:k]], n)
            batch = 64
            loader = torch.utils.data.DataLoader(
                w, batch_size=batch, shuffle=True, collate_fn=collate_windows, num_workers=0, drop_last=True
            )

            def run(k: int, loader=loader, batch=batch) -> None:
                seen = 0
                while seen < k:
                    for _ in loader:
                        seen += batch
                        if seen >= k:
                            break

            results[f"{label}_dataloader_samples_per_s"] = _rate(run, n)
    for k, v in results.items():
        print(f"{k:45s} {v:12.0f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
