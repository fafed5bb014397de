"""Dataset audit: find the defects that silently ruin training before they do.

Errors (the audit fails): missing or unreadable files, ``info.json`` disagreeing with the data
(features, shapes, counts), NaN/inf in state or action, actions outside the embodiment's bounds,
broken indices (global ``index``, per-episode ``frame_index``, episode ranges, task indices),
timestamps that disagree with ``fps``, videos whose frame rate or length disagree with the data.

Warnings (reported, the audit still passes): dimensions that are exactly constant over the whole
dataset (expected for Meta-World's zero padding; the normalizer passes them through), episode
lengths far from their task's median (more than 5 robust standard deviations), missing stats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lbm.data.dataset import STATS_PATH, TASKS_PATH, VIDEO_PATH, EpisodeDataset
from lbm.errors import LbmError
from lbm.schema import ACTION, EPISODE_INDEX, FRAME_INDEX, INDEX, STATE, TASK_INDEX, TIMESTAMP, image_key

OUTLIER_SIGMAS = 5.0
"""An episode is a length outlier when it is this many robust SDs (1.4826·MAD) from its task's median."""


@dataclass(frozen=True)
class Finding:
    """One audit result."""

    level: str
    """``"error"`` or ``"warning"``."""
    check: str
    """Short name of the check, e.g. ``"nan"``, ``"index"``."""
    message: str
    """What is wrong, where, and what to do."""


@dataclass
class AuditReport:
    """Everything the audit found about one dataset."""

    root: Path
    """The audited dataset folder."""
    findings: list[Finding] = field(default_factory=list)
    """All findings, errors and warnings, in check order."""
    checks: list[str] = field(default_factory=list)
    """Names of the checks that ran."""

    @property
    def errors(self) -> list[Finding]:
        """Findings that fail the audit."""
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings worth reading that do not fail the audit."""
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when no errors were found."""
        return not self.errors

    def has(self, check: str, level: str | None = None) -> bool:
        """Whether any finding of ``check`` (optionally of ``level``) was reported."""
        return any(f.check == check and (level is None or f.level == level) for f in self.findings)

    def add(self, level: str, check: str, message: str) -> None:
        self.findings.append(Finding(level, check, message))


def _fmt_dims(dims) -> str:
    dims = list(dims)
    return ", ".join(map(str, dims[:12])) + (f", ... ({len(dims)} in all)" if len(dims) > 12 else "")


def audit_dataset(root: str | Path) -> AuditReport:
    """Run every check on the dataset at ``root``; never raises for a defective dataset."""

    root = Path(root)
    rep = AuditReport(root)
    if not root.is_dir():
        raise LbmError(f"{root} is not a folder; give the path of a dataset written by `lbm data generate`.")

    # ---- files ---------------------------------------------------------------------------------
    rep.checks.append("files")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        rep.add("error", "files", f"meta/info.json is missing: {root} is not a complete dataset (interrupted write?).")
        return rep
    try:
        info = json.loads(info_path.read_text())
        features = info["features"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        rep.add("error", "files", f"meta/info.json is unreadable ({e!r}).")
        return rep
    if not (root / TASKS_PATH).is_file():
        rep.add("error", "files", f"{TASKS_PATH} is missing.")
    if not list((root / "meta" / "episodes").glob("*/*.parquet")):
        rep.add("error", "files", "meta/episodes/ holds no episode table.")
    if not list((root / "data").glob("*/*.parquet")):
        rep.add("error", "files", "data/ holds no frame data.")
    if not (root / STATS_PATH).is_file():
        rep.add("warning", "files", f"{STATS_PATH} is missing; training will recompute statistics.")
    if rep.errors:
        return rep
    try:
        ds = EpisodeDataset(root)
    except LbmError as e:
        rep.add("error", "files", str(e))
        return rep
    eps = ds.episode_table
    for cam in ds.cameras:
        key = image_key(cam)
        if features[key]["dtype"] != "video":
            continue
        template = info.get("video_path") or VIDEO_PATH
        for ch, fi in sorted(
            {(int(a), int(b)) for a, b in zip(eps[f"videos/{key}/chunk_index"], eps[f"videos/{key}/file_index"])}
        ):
            path = root / template.format(video_key=key, chunk_index=ch, file_index=fi)
            if not path.is_file():
                rep.add("error", "files", f"video {path.relative_to(root)} of camera {cam!r} is missing.")
    n, n_eps = ds.num_frames, ds.num_episodes

    # ---- schema ----------------------------------------------------------------------------------
    rep.checks.append("schema")
    for key, expected in (("total_frames", n), ("total_episodes", n_eps), ("total_tasks", len(ds.tasks))):
        if int(info.get(key, -1)) != expected:
            rep.add("error", "schema", f"info.json says {key}={info.get(key)} but the dataset has {expected}.")
    for key in (STATE, ACTION):
        shape = list(features[key].get("shape", []))
        width = ds.frames(key).shape[1]
        if shape != [width]:
            rep.add("error", "schema", f"info.json declares {key} shape {shape} but the data has width {width}.")
    emb = ds.embodiment
    if (emb.state_dim, emb.action_dim) != (ds.frames(STATE).shape[1], ds.frames(ACTION).shape[1]):
        rep.add(
            "error",
            "schema",
            f"embodiment {emb.name!r} declares state/action dims {emb.state_dim}/{emb.action_dim} "
            f"but the data has {ds.frames(STATE).shape[1]}/{ds.frames(ACTION).shape[1]}.",
        )
    if not str(info.get("codebase_version", "")).startswith("v3"):
        rep.add("error", "schema", f"codebase_version is {info.get('codebase_version')!r}, expected v3.x.")

    # ---- values ------------------------------------------------------------------------------------
    rep.checks.append("nan")
    for key in (STATE, ACTION):
        x = ds.frames(key)
        bad = ~np.isfinite(x)
        if bad.any():
            rows, dims = np.nonzero(bad)
            episodes = sorted(set(ds.frames(EPISODE_INDEX)[rows].tolist()))
            rep.add(
                "error",
                "nan",
                f"{key} has {bad.sum()} NaN/inf values in dims [{_fmt_dims(sorted(set(dims.tolist())))}] "
                f"of episodes [{_fmt_dims(episodes)}]; drop those episodes and regenerate.",
            )
    rep.checks.append("action_bounds")
    if "embodiment" in (info.get("lbm") or {}):
        a = ds.frames(ACTION)
        low, high = np.asarray(emb.action_low), np.asarray(emb.action_high)
        with np.errstate(invalid="ignore"):
            out = (a < low - 1e-6) | (a > high + 1e-6)
        if out.any():
            rows, dims = np.nonzero(out)
            rep.add(
                "error",
                "action_bounds",
                f"{int(out.any(axis=1).sum())} frames have actions outside the bounds of "
                f"{emb.name!r} in dims [{_fmt_dims(sorted(set(dims.tolist())))}] (e.g. episode "
                f"{int(ds.frames(EPISODE_INDEX)[rows[0]])}: {a[rows[0]].tolist()}); clip or drop them.",
            )
    rep.checks.append("constant_dims")
    for key in (STATE, ACTION):
        x = ds.frames(key)
        if len(x):
            const = np.flatnonzero(np.all(x == x[:1], axis=0))
            if len(const):
                rep.add(
                    "warning",
                    "constant_dims",
                    f"{key} dims [{_fmt_dims(const)}] are exactly constant over the dataset; "
                    "normalizers pass them through (Normalizer.from_stats).",
                )

    # ---- indices -------------------------------------------------------------------------------------
    rep.checks.append("index")
    index, ep_of, fr = ds.frames(INDEX), ds.frames(EPISODE_INDEX), ds.frames(FRAME_INDEX)
    if not np.array_equal(index, np.arange(n)):
        rep.add("error", "index", f"global 'index' is not 0..{n - 1} without gaps or repeats.")
    lengths = eps["length"].to_numpy()
    from_i, to_i = eps["dataset_from_index"].to_numpy(), eps["dataset_to_index"].to_numpy()
    if not (np.array_equal(to_i - from_i, lengths) and from_i[0] == 0 and np.array_equal(from_i[1:], to_i[:-1])):
        rep.add(
            "error",
            "index",
            "episode table ranges (dataset_from_index/to_index/length) are not contiguous or disagree with the lengths.",
        )
    expected_ep = np.repeat(np.arange(n_eps), lengths) if lengths.sum() == n else None
    if expected_ep is None or not np.array_equal(ep_of, expected_ep):
        rep.add("error", "index", "frames' episode_index disagrees with the episode table.")
    expected_fr = np.concatenate([np.arange(L) for L in lengths]) if lengths.sum() == n else None
    if expected_fr is None or not np.array_equal(fr, expected_fr):
        bad_eps = sorted({int(e) for e in ep_of[fr != expected_fr]}) if expected_fr is not None else []
        rep.add("error", "index", f"frame_index does not run 0..L-1 in episodes [{_fmt_dims(bad_eps)}].")
    ti = ds.frames(TASK_INDEX)
    if len(ti) and (ti.min() < 0 or ti.max() >= len(ds.tasks)):
        rep.add("error", "index", f"task_index outside 0..{len(ds.tasks) - 1}.")

    # ---- time -------------------------------------------------------------------------------------------
    rep.checks.append("timestamps")
    if not ds.fps > 0:
        rep.add("error", "timestamps", f"fps in info.json is {info.get('fps')!r}; it must be a positive number.")
    else:
        ts = ds.frames(TIMESTAMP).astype(np.float64)
        err = np.abs(ts - fr / ds.fps)
        if len(err) and err.max() > 1e-3:
            worst = int(np.argmax(err))
            rep.add(
                "error",
                "timestamps",
                f"timestamps disagree with fps={ds.fps:g}: frame {int(fr[worst])} of episode "
                f"{int(ep_of[worst])} is stamped {ts[worst]:.4f}s, expected {fr[worst] / ds.fps:.4f}s "
                "(wrong fps in info.json, or dropped/duplicated frames).",
            )
        for cam in ds.cameras:
            key = image_key(cam)
            if features[key]["dtype"] == "video":
                _check_video(rep, ds, key, info)

    # ---- lengths -------------------------------------------------------------------------------------------
    rep.checks.append("lengths")
    groups = eps["sim_task"].astype(str).to_numpy() if "sim_task" in eps else np.array([ds.episode_task(i) for i in range(n_eps)])
    for g in sorted(set(groups.tolist())):
        members = np.flatnonzero(groups == g)
        L = lengths[members].astype(np.float64)
        if len(L) < 3:
            continue
        med = np.median(L)
        scale = max(1.4826 * np.median(np.abs(L - med)), 1.0, 0.05 * med)
        far = members[np.abs(L - med) > OUTLIER_SIGMAS * scale]
        if len(far):
            rep.add(
                "warning",
                "lengths",
                f"task {g!r}: episodes [{_fmt_dims(far.tolist())}] have lengths "
                f"{lengths[far].tolist()[:6]} vs a median of {med:g}; inspect them before training.",
            )
    if (lengths < 2).any():
        rep.add("warning", "lengths", f"episodes [{_fmt_dims(np.flatnonzero(lengths < 2))}] have fewer than 2 frames.")
    return rep


def _check_video(rep: AuditReport, ds, key: str, info: dict) -> None:
    import av
    from av.error import FFmpegError

    eps = ds.episode_table
    template = info.get("video_path") or VIDEO_PATH
    files = eps.groupby([f"videos/{key}/chunk_index", f"videos/{key}/file_index"])
    for (ch, fi), rows in files:
        path = ds.root / template.format(video_key=key, chunk_index=int(ch), file_index=int(fi))
        if not path.is_file():
            continue  # already reported as missing
        try:
            with av.open(str(path)) as c:
                stream = c.streams.video[0]
                rate = float(stream.average_rate or stream.guessed_rate or 0)
                size = (int(stream.codec_context.height), int(stream.codec_context.width))
                frames = stream.frames or sum(1 for _ in c.demux(stream) if _.size)
        except (FFmpegError, OSError) as e:
            rep.add("error", "files", f"video {path.relative_to(ds.root)} is unreadable ({e}).")
            continue
        declared = list(info["features"][key].get("shape", []))[:2]
        if declared != list(size):
            rep.add(
                "error",
                "schema",
                f"video {path.relative_to(ds.root)} holds {size[0]}x{size[1]} frames but info.json declares {key} "
                f"shape {info['features'][key].get('shape')} (height, width, channels): readers would mis-shape every image.",
            )
        if abs(rate - ds.fps) > 1e-3 * ds.fps:
            rep.add(
                "error", "timestamps", f"video {path.relative_to(ds.root)} runs at {rate:g} fps but info.json says {ds.fps:g}."
            )
        needed = int(round(float(rows[f"videos/{key}/to_timestamp"].max()) * ds.fps))
        if frames < needed:
            rep.add(
                "error",
                "files",
                f"video {path.relative_to(ds.root)} has {frames} frames but its episodes need {needed} (truncated file?).",
            )
