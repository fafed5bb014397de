"""A trained failure monitor as a plain folder, its online use in rollouts, and its training from eval runs.

A monitor folder holds ``monitor.json`` (kind, feature width, standardization, the conformal band)
and, for the learned kind, ``model.safetensors``. No pickles; loading needs nothing but the folder.

Workflow::

    lbm eval --policy mine=CKPT --tasks ... --features --out runs/ev_train   # stores per-step features
    train_monitor([Path("runs/ev_train")], Path("runs/monitor"), alpha=0.1)  # SAFE-MLP + conformal band
    lbm eval --policy mine=CKPT --tasks <unseen> --monitor runs/monitor --out runs/ev_test  # alert_step per trial

Features are stored per trial as ``OUT/features/{policy_id}_{task}_{shift}_{trial:04d}.npy``
(float32 ``(steps, D)``, the last-layer feature of the chunk each executed step came from); with
``--action-samples K`` also ``...{trial:04d}.action_var.npy`` (float32 ``(steps,)``, the variance
of K extra action chunks sampled for that chunk's observation).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from lbm.errors import LbmError, did_you_mean
from lbm.eval.records import PARQUET_FILE, load_records
from lbm.safety.failure import ConformalBand, DetectorConfig, MahalanobisDetector, MLPDetector, cut_to_shortest_success

FEATURES_DIR = "features"
KINDS = ("mlp", "mahalanobis")


def features_path(out: Path, policy: str, task: str, shift: str, trial: int) -> Path:
    """Where one trial's per-step features live inside an evaluation folder."""
    safe_shift = shift.replace(":", "-").replace("+", "_")
    return Path(out) / FEATURES_DIR / f"{policy}_{task}_{safe_shift}_{int(trial):04d}.npy"


def action_var_path(features_file: Path) -> Path:
    """The companion file of a trial's features that holds its per-step action-sample variance."""
    return Path(features_file).with_suffix(".action_var.npy")


def _read_per_step(folders: list[Path], path_of, missing: str) -> tuple[list[np.ndarray], list[bool], list[str]]:
    """Per-step arrays stored beside every trial (``path_of(feature_path)``), with success and task."""
    arrays, success, tasks = [], [], []
    for folder in map(Path, folders):
        # Blind ids: the feature files are named by them.
        df = load_records(folder / PARQUET_FILE, blind=True, require_pairing=False)
        for r in df.itertuples(index=False):
            p = path_of(features_path(folder, str(r.policy), str(r.task), str(r.shift), int(str(r.trial))))
            if p.exists() and len(a := np.load(p)):
                arrays.append(a)
                success.append(bool(r.success))
                tasks.append(str(r.task))
    if not arrays:
        raise LbmError(f"No stored {missing} in {[str(f) for f in folders]}.")
    return arrays, success, tasks


def read_action_vars(folders: list[Path]) -> tuple[list[np.ndarray], list[bool], list[str]]:
    """Per-step action-sample variance ``(T,)``, success and task of every trial that has it."""
    return _read_per_step(
        folders,
        action_var_path,
        "action-sample variances. Run `lbm eval ... --features --action-samples K` with a flow or diffusion checkpoint first",
    )


class FailureMonitor:
    """A detector and its conformal band. ``score(features (T, D)) -> (T,)``; ``alarm_step(features)``."""

    def __init__(self, kind: str, detector, band: ConformalBand) -> None:
        self.kind, self.detector, self.band = kind, detector, band

    def score(self, features: np.ndarray) -> np.ndarray:
        """Failure scores ``(T,)`` of a rollout's per-step features so far."""
        return self.detector.score(np.asarray(features, np.float32))

    def alarm_step(self, features: np.ndarray) -> int | None:
        """First step whose score crosses the calibrated threshold, or None."""
        return self.band.alarm_step(self.score(features))

    def save(self, folder: Path) -> Path:
        """Write ``monitor.json`` (+ ``model.safetensors``) into ``folder``."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        b = self.band
        meta = {
            "format": "lbm-failure-monitor/1",
            "kind": self.kind,
            "band": {
                "centre": b.centre.tolist(),
                "scale": b.scale.tolist(),
                "q": b.q if np.isfinite(b.q) else None,
                "alpha": b.alpha,
                "n_calibration": b.n_calibration,
            },
        }
        if self.kind == "mlp":
            d = self.detector
            tensors = {k: v.detach().numpy() for k, v in d.mlp.state_dict().items()}
            tensors.update(mu=d.mu.numpy(), sd=d.sd.numpy())
            save_file(tensors, str(folder / "model.safetensors"))
            meta["config"] = {"hidden": d.config.hidden}
        else:
            d = self.detector
            save_file({"mean": d.mean, "precision": d.precision}, str(folder / "model.safetensors"))
        (folder / "monitor.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path) -> FailureMonitor:
        """Read a folder written by :meth:`save`."""
        import torch
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / "monitor.json").exists():
            raise LbmError(
                f"{folder} is not a failure-monitor folder (no monitor.json). Train one with "
                "lbm.safety.monitor.train_monitor, or check the --monitor path."
            )
        meta = json.loads((folder / "monitor.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
        b = meta["band"]
        band = ConformalBand(
            np.array(b["centre"]),
            np.array(b["scale"]),
            float("inf") if b["q"] is None else b["q"],
            b["alpha"],
            b["n_calibration"],
        )
        if meta["kind"] == "mlp":
            det = MLPDetector(DetectorConfig(hidden=meta["config"]["hidden"]))
            det.mu, det.sd = torch.from_numpy(tensors.pop("mu")), torch.from_numpy(tensors.pop("sd"))
            det.build(det.mu.shape[0])
            det.mlp.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
        elif meta["kind"] == "mahalanobis":
            det = MahalanobisDetector()
            det.mean, det.precision = tensors["mean"], tensors["precision"]
        else:
            raise LbmError(f"{folder}/monitor.json names an unknown kind {meta['kind']!r}; known: {', '.join(KINDS)}.")
        return cls(meta["kind"], det, band)


@lru_cache(maxsize=4)
def load_monitor(folder: str) -> FailureMonitor:
    """:meth:`FailureMonitor.load`, cached per process (every trial of a run shares one monitor)."""
    return FailureMonitor.load(Path(folder))


def read_rollouts(folders: list[Path]) -> tuple[list[np.ndarray], list[bool], list[str]]:
    """Per-step features, success and task of every trial with stored features in eval folders."""
    return _read_per_step(folders, lambda p: p, "features. Run `lbm eval ... --features` with a checkpoint policy first")


def train_monitor(
    folders: list[Path],
    out: Path,
    alpha: float = 0.1,
    kind: str = "mlp",
    calibration_fraction: float = 0.5,
    seed: int = 0,
    config: DetectorConfig | None = None,
) -> FailureMonitor:
    """Train a monitor on rollouts of eval folders and calibrate its band on held-out successes; save to ``out``.

    Rollouts are length-cut per task first. A seeded ``calibration_fraction`` of the successful
    rollouts is held out of training and used only for the conformal band.
    """
    if kind not in KINDS:
        raise did_you_mean(kind, KINDS, "monitor kind")
    feats, success, tasks = read_rollouts(folders)
    feats = cut_to_shortest_success(feats, success, tasks)
    rng = np.random.default_rng(seed)
    ok = [i for i, s in enumerate(success) if s]
    calib = set(rng.permutation(ok)[: int(round(calibration_fraction * len(ok)))].tolist())
    train = [i for i in range(len(feats)) if i not in calib]
    det = MLPDetector(config) if kind == "mlp" else MahalanobisDetector()
    det.fit([feats[i] for i in train], [success[i] for i in train])
    band = ConformalBand.fit([det.score(feats[i]) for i in sorted(calib)], alpha=alpha, seed=seed)
    monitor = FailureMonitor(kind, det, band)
    monitor.save(out)
    return monitor
