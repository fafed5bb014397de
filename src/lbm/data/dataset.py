"""Episode datasets on disk in the LeRobot dataset v3.0 layout: a writer and a reader.

Layout (all paths relative to the dataset root; templates are stored in ``meta/info.json``)::

    meta/info.json                                   features, fps, robot type, counts, path templates
    meta/stats.json                                  per-feature stats (LeRobot's layout)
    meta/tasks.parquet                               one row per task string, index = task, column task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, task(s), file indices,
                                                     global from/to frame indices, video from/to timestamps
    data/chunk-000/file-000.parquet                  one row per frame: observation.state, action, timestamp,
                                                     frame_index, episode_index, index, task_index
    videos/observation.images.<cam>/chunk-000/file-000.mp4   all episodes of a camera, back to back

A video file holds many episodes; an episode's frames are those with presentation time in
``[from_timestamp, to_timestamp)``. Frame ``k`` of a file is stamped exactly ``k / fps`` (time base
``1/fps``), so timestamps line up with LeRobot's decoder tolerance. Without video, images are PNG
bytes inside the data parquet (LeRobot's ``image`` feature: a ``{bytes, path}`` struct).

What lbm adds lives under the extra ``"lbm"`` key of ``info.json`` (the :class:`Embodiment`) and as
extra columns of the episode table (``sim_task``, ``seed``); LeRobot ignores both.

The writer fills a hidden temporary folder beside the target and renames it into place only when
everything is written, so an interrupted or failed write never leaves a dataset that looks complete.
With ``overwrite``, the old dataset is renamed aside (``.NAME.old``), the new one renamed in, and
only then is the old one deleted: a kill at any moment leaves either dataset whole, and the next
writer (:func:`recover_dataset`) finishes or undoes the swap.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lbm.data.meta import read_info, read_stats
from lbm.data.normalize import FeatureStats, StatsAccumulator
from lbm.errors import LbmError, did_you_mean
from lbm.schema import (
    ACTION,
    EPISODE_INDEX,
    FRAME_INDEX,
    INDEX,
    STATE,
    TASK_INDEX,
    TIMESTAMP,
    Embodiment,
    camera_of,
    image_key,
)

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # LeRobot's default: at most this many files per chunk folder
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
VIDEO_CODEC = "libx264"  # h264 decodes everywhere (PyAV, torchcodec, browsers); AV1 decoders are not
VIDEO_CRF = 12  # near-lossless at 96 px: decoded frames are within a few gray levels of the originals

SUBTASK_INDEX = "subtask_index"
"""Per-frame index into the task table of the subtask instruction being carried out."""
ATOMS = "atoms"
"""Per-frame symbolic state: the atoms of ``info.json["lbm"]["atoms"][sim_task]``, bit-packed (little bit order)."""

_INDEX_FEATURES = {
    TIMESTAMP: {"dtype": "float32", "shape": [1], "names": None},
    FRAME_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    EPISODE_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    INDEX: {"dtype": "int64", "shape": [1], "names": None},
    TASK_INDEX: {"dtype": "int64", "shape": [1], "names": None},
}


def _fixed_list(x: np.ndarray) -> pa.Array:
    """(N, D) array -> Arrow fixed-size list column (what HF ``Sequence(length=D)`` reads)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).reshape(-1)), x.shape[1])


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=4))


class DatasetWriter:
    """Write episodes into a new LeRobot-v3 dataset at ``root``.

    Use as a context manager (an exception inside discards the partial dataset)::

        with DatasetWriter(out, embodiment, cameras=("corner",)) as w:
            w.add_episode(states, actions, "open the drawer", images={"corner": frames})
        # on leaving the block the dataset is finalized and renamed into place

    ``states (L, S)`` float32, ``actions (L, A)`` float32, ``images[cam] (L, H, W, 3)`` uint8.
    ``extra_info`` is stored under ``info.json["lbm"]`` (e.g. how the dataset was generated). Every
    file lives in one chunk/file (``file-000``); LeRobot reads that as well as split files.
    """

    def __init__(
        self,
        root: str | Path,
        embodiment: Embodiment,
        *,
        fps: float | None = None,
        cameras: Sequence[str] = (),
        video: bool = True,
        robot_type: str | None = None,
        overwrite: bool = False,
        extra_info: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.extra_info = dict(extra_info or {})
        self.embodiment = embodiment
        self.fps = float(fps if fps is not None else embodiment.control_hz)
        self.cameras = tuple(cameras)
        self.video = bool(video)
        self.robot_type = robot_type or embodiment.name
        self.overwrite = overwrite
        self.recovered = recover_dataset(self.root)
        """What recovering an interrupted earlier write did (lines for a log)."""
        if self.root.exists() and not overwrite:
            raise LbmError(
                f"{self.root} already exists. Choose another output folder, delete it, or pass --overwrite "
                "to replace it (the old dataset is replaced only once the new one is complete)."
            )
        if self.fps <= 0 or not math.isfinite(self.fps):
            raise LbmError(f"fps must be a positive number, got {self.fps}.")
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LbmError(f"Cannot create the parent folder of {self.root}: {e}. Choose a writable location.") from None
        self.tmp = self.root.parent / f".{self.root.name}.partial-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self._states: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._task_of_frame: list[np.ndarray] = []
        self._subtask_of_frame: list[np.ndarray] = []
        self._atoms: list[np.ndarray] = []
        self._atom_names: dict[str, tuple[str, ...]] = {}
        self._symbolic = (False, False)
        self._episodes: list[dict[str, Any]] = []
        self._tasks: dict[str, int] = {}
        self._png: dict[str, list[bytes]] = {c: [] for c in self.cameras}
        self._containers: dict[str, Any] = {}
        self._image_shape: dict[str, tuple[int, int]] = {}
        self._frames = 0
        self._done = False

    # ---- writing ---------------------------------------------------------------------------
    def add_episode(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        task: str,
        *,
        images: Mapping[str, np.ndarray] | None = None,
        sim_task: str = "",
        seed: int = -1,
        subtasks: Sequence[str] | None = None,
        atoms: np.ndarray | None = None,
        atom_names: Sequence[str] | None = None,
    ) -> int:
        """Append one episode; returns its episode index. ``task`` is its instruction string.

        Long-horizon demonstrations also carry, per frame, the instruction of the subtask being
        done (``subtasks``, L strings: stored as ``subtask_index`` into the task table, beside the
        whole-task ``task_index``) and the symbolic state (``atoms``, ``(L, K)`` bool over
        ``atom_names``: stored bit-packed as ``atoms``, the names per ``sim_task`` in ``info.json``).
        Either every episode of a dataset carries them or none does.
        """
        states = np.asarray(states, np.float32)
        actions = np.asarray(actions, np.float32)
        emb = self.embodiment
        if states.ndim != 2 or states.shape[1] != emb.state_dim:
            raise LbmError(f"states must be (L, {emb.state_dim}) for {emb.name!r}, got {states.shape}.")
        if actions.shape != (states.shape[0], emb.action_dim):
            raise LbmError(f"actions must be ({states.shape[0]}, {emb.action_dim}), got {actions.shape}.")
        length = states.shape[0]
        if length == 0:
            raise LbmError("An episode needs at least one frame.")
        images = dict(images or {})
        if set(images) != set(self.cameras):
            raise LbmError(f"Episode images are for cameras {sorted(images)} but the writer expects {list(self.cameras)}.")
        symbolic = subtasks is not None, atoms is not None
        if self._episodes and symbolic != self._symbolic:
            raise LbmError(
                f"Episode {len(self._episodes)} {'carries' if any(symbolic) else 'lacks'} subtask labels or atoms but the "
                "first episode did not: either every episode of a dataset has them or none does."
            )
        self._symbolic = symbolic
        if subtasks is not None and len(subtasks) != length:
            raise LbmError(f"subtasks must name one subtask instruction per frame ({length}), got {len(subtasks)}.")
        if atoms is not None:
            atoms = np.asarray(atoms, bool)
            names = tuple(atom_names or ())
            if atoms.ndim != 2 or atoms.shape != (length, len(names)):
                raise LbmError(f"atoms must be ({length}, {len(names)}) booleans over atom_names, got {atoms.shape}.")
            if self._atom_names.setdefault(sim_task, names) != names:
                raise LbmError(f"The atoms of {sim_task!r} changed between episodes; one task's scene grounds one atom list.")
            self._atoms.append(np.packbits(atoms, axis=1, bitorder="little"))
        ep = len(self._episodes)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        if subtasks is not None:
            self._subtask_of_frame.append(np.array([self._tasks.setdefault(s, len(self._tasks)) for s in subtasks], np.int64))
        row: dict[str, Any] = {
            EPISODE_INDEX: ep,
            "tasks": [task],
            "length": length,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": self._frames,
            "dataset_to_index": self._frames + length,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
            "sim_task": sim_task,
            "seed": int(seed),
        }
        for cam in self.cameras:
            frames = np.asarray(images[cam])
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != length or frames.shape[-1] != 3:
                raise LbmError(f"Camera {cam!r}: images must be uint8 ({length}, H, W, 3), got {frames.dtype} {frames.shape}.")
            self._write_images(cam, frames)
            key = image_key(cam)
            if self.video:
                row[f"videos/{key}/chunk_index"] = 0
                row[f"videos/{key}/file_index"] = 0
                row[f"videos/{key}/from_timestamp"] = self._frames / self.fps
                row[f"videos/{key}/to_timestamp"] = (self._frames + length) / self.fps
        self._states.append(states)
        self._actions.append(actions)
        self._task_of_frame.append(np.full(length, task_index, np.int64))
        self._episodes.append(row)
        self._frames += length
        return ep

    def _write_images(self, cam: str, frames: np.ndarray) -> None:
        h, w = frames.shape[1:3]
        if self._image_shape.setdefault(cam, (h, w)) != (h, w):
            raise LbmError(f"Camera {cam!r}: image size changed from {self._image_shape[cam]} to {(h, w)} between episodes.")
        if not self.video:
            from PIL import Image

            for frame in frames:
                buf = io.BytesIO()
                Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
                self._png[cam].append(buf.getvalue())
            return
        import av

        if cam not in self._containers:
            if h % 2 or w % 2:
                raise LbmError(f"Camera {cam!r}: video needs even image sizes, got {h}x{w}; use an even size or --no-video.")
            path = self.tmp / VIDEO_PATH.format(video_key=image_key(cam), chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            container = av.open(str(path), mode="w")
            fps = Fraction(self.fps).limit_denominator(1000)
            stream = container.add_stream(VIDEO_CODEC, rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.time_base = 1 / fps
            stream.options = {"crf": str(VIDEO_CRF), "preset": "veryfast", "tune": "zerolatency"}
            self._containers[cam] = (container, stream)
        import av.video.frame

        container, stream = self._containers[cam]
        for k, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = self._frames + k
            if k == 0:  # a keyframe at every episode start: reading one episode never decodes its neighbours
                vf.pict_type = av.video.frame.PictureType.I
            for packet in stream.encode(vf):
                container.mux(packet)

    def finalize(self) -> Path:
        """Write metadata and stats, close videos, and rename the dataset into place. Returns root."""
        if self._done:
            return self.root
        if not self._episodes:
            self.abort()
            raise LbmError(f"No episodes were added, so no dataset was written at {self.root}.")
        for container, stream in self._containers.values():
            for packet in stream.encode():
                container.mux(packet)
            container.close()
        self._containers = {}
        states = np.concatenate(self._states)
        actions = np.concatenate(self._actions)
        n = states.shape[0]
        ep_index = np.concatenate([np.full(e["length"], e[EPISODE_INDEX], np.int64) for e in self._episodes])
        frame_index = np.concatenate([np.arange(e["length"], dtype=np.int64) for e in self._episodes])
        columns: dict[str, pa.Array] = {
            STATE: _fixed_list(states),
            ACTION: _fixed_list(actions),
            TIMESTAMP: pa.array((frame_index / self.fps).astype(np.float32)),
            FRAME_INDEX: pa.array(frame_index),
            EPISODE_INDEX: pa.array(ep_index),
            INDEX: pa.array(np.arange(n, dtype=np.int64)),
            TASK_INDEX: pa.array(np.concatenate(self._task_of_frame)),
        }
        if self._subtask_of_frame:
            columns[SUBTASK_INDEX] = pa.array(np.concatenate(self._subtask_of_frame))
        if self._atoms:
            width = max(a.shape[1] for a in self._atoms)
            packed = np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in self._atoms])
            # LeRobot (HF datasets) reads a feature of shape [1] as a scalar column, not a list of one.
            columns[ATOMS] = pa.array(packed[:, 0]) if width == 1 else _fixed_list(packed)
        if not self.video:
            img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            for cam in self.cameras:
                columns[image_key(cam)] = pa.array([{"bytes": b, "path": None} for b in self._png[cam]], type=img_type)
        data_path = self.tmp / DATA_PATH.format(chunk_index=0, file_index=0)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), data_path)

        episodes = pa.Table.from_pylist(self._episodes)
        ep_path = self.tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episodes, ep_path)

        import pandas as pd

        tasks = pd.DataFrame({TASK_INDEX: list(self._tasks.values())}, index=pd.Index(list(self._tasks), name="task"))
        tasks.to_parquet(self.tmp / TASKS_PATH)

        stats = {STATE: StatsAccumulator().update(states).finalize(), ACTION: StatsAccumulator().update(actions).finalize()}
        _write_json(self.tmp / STATS_PATH, {k: s.to_json() for k, s in stats.items()})
        _write_json(self.tmp / INFO_PATH, self._info(n))

        # --overwrite: the old dataset is renamed aside, the new one renamed in, and the old one deleted
        # last (each rename is atomic; recover_dataset() completes a swap a kill interrupted).
        old = _aside(self.root)
        if self.root.exists():
            os.replace(self.root, old)
        os.replace(self.tmp, self.root)
        if old.exists():
            shutil.rmtree(old)
        self._done = True
        return self.root

    def _info(self, total_frames: int) -> dict[str, Any]:
        emb = self.embodiment
        features: dict[str, Any] = {
            STATE: {"dtype": "float32", "shape": [emb.state_dim], "names": list(emb.state_names) or None},
            ACTION: {"dtype": "float32", "shape": [emb.action_dim], "names": list(emb.action_names) or None},
        }
        for cam in self.cameras:
            h, w = self._image_shape[cam]
            ft: dict[str, Any] = {
                "dtype": "video" if self.video else "image",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
            }
            if self.video:
                ft["info"] = {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "h264",
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                }
            features[image_key(cam)] = ft
        features.update(_INDEX_FEATURES)
        extra = dict(self.extra_info)
        if self._subtask_of_frame:
            features[SUBTASK_INDEX] = {"dtype": "int64", "shape": [1], "names": None}
        if self._atoms:
            features[ATOMS] = {"dtype": "uint8", "shape": [max(a.shape[1] for a in self._atoms)], "names": None}
            extra["atoms"] = {task: list(names) for task, names in self._atom_names.items()}
        n_eps = len(self._episodes)
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": n_eps,
            "total_frames": total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500,
            "fps": self.fps if not float(self.fps).is_integer() else int(self.fps),
            "splits": {"train": f"0:{n_eps}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if (self.video and self.cameras) else None,
            "features": features,
            "lbm": {"embodiment": emb.to_json(), "format": 1, **extra},
        }

    def abort(self) -> None:
        """Discard everything written so far (the target folder is left untouched)."""
        for container, _ in self._containers.values():
            try:
                container.close()
            except Exception:  # noqa: BLE001 - best effort while already failing
                pass
        self._containers = {}
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def _aside(root: Path) -> Path:
    return root.parent / f".{root.name}.old"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def recover_dataset(root: str | Path) -> list[str]:
    """Finish or undo an interrupted write of the dataset at ``root``; returns what was done.

    * ``root`` missing but its previous version aside (``.NAME.old``: a kill between the two renames
      of ``--overwrite``): the previous dataset is put back;
    * ``root`` present and ``.NAME.old`` beside it (killed while deleting the old one): the old is deleted;
    * partial writes (``.NAME.partial-PID``) of processes that no longer run are deleted.
    """
    root = Path(root)
    done = []
    old = _aside(root)
    if old.exists():
        if root.exists():
            shutil.rmtree(old)
            done.append(f"removed {old.name}, the previous dataset an interrupted --overwrite had already replaced")
        else:
            os.replace(old, root)
            done.append(f"restored the previous dataset from {old.name} (an --overwrite was interrupted before the swap)")
    for partial in sorted(root.parent.glob(f".{root.name}.partial-*")):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)
            done.append(f"removed {partial.name}, left by an interrupted write (process {pid} no longer runs)")
    return done


# ---- reading ---------------------------------------------------------------------------------


def _read_parquet(path: Path, what: str, columns: Sequence[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise LbmError(f"Dataset file {path} ({what}) is missing; the dataset is incomplete. Regenerate or re-download it.")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowInvalid, OSError) as e:
        raise LbmError(f"Dataset file {path} ({what}) is corrupt or unreadable ({e}). Regenerate or re-download it.") from None


def _list_column(table: pa.Table, key: str, width: int, dtype: type = np.float32) -> np.ndarray:
    """A list column (fixed or variable length) -> (N, width) of ``dtype``."""
    col = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        flat = col.flatten().to_numpy(zero_copy_only=False)
    else:  # a scalar feature of shape (1,)
        flat = col.to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype).reshape(-1, width)


class EpisodeDataset:
    """Read-only view of a LeRobot v3 dataset (ours, or one LeRobot wrote) on local disk.

    State and action of every frame are loaded into memory at open (small: 43 floats a frame);
    images are decoded lazily, per episode and camera, only when asked for, and the most recently
    decoded episodes are kept in a small cache (``image_cache_episodes``).
    """

    def __init__(self, root: str | Path, *, image_cache_episodes: int = 32) -> None:
        self.root = Path(root)
        if not self.root.exists():
            if _aside(self.root).exists():
                raise LbmError(
                    f"Dataset folder {self.root} does not exist, but {_aside(self.root).name} beside it is the previous "
                    "version that an interrupted `lbm data generate --overwrite` moved aside. Run the generation again "
                    "(it restores that dataset first), or rename the folder back."
                )
            raise LbmError(f"Dataset folder {self.root} does not exist. Check the path, or create it with `lbm data generate`.")
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            partial = sorted(p.name for p in self.root.parent.glob(f".{self.root.name}.partial-*"))
            hint = f" A partial write ({partial[0]}) lies beside it: a generation was interrupted." if partial else ""
            raise LbmError(
                f"{self.root} is not a dataset: {INFO_PATH} is missing.{hint} Point to a folder written by "
                "`lbm data generate` or a LeRobot v3 dataset."
            )
        meta = read_info(info_path)
        if not meta.codebase_version.startswith("v3"):
            raise LbmError(
                f"{self.root} is a LeRobot {meta.codebase_version} dataset; only v3.x is read here. Convert it with "
                "LeRobot's `lerobot.datasets.v30.convert_dataset_v21_to_v30` script first."
            )
        self.info: dict[str, Any] = meta.model_dump()
        features = {k: f.model_dump() for k, f in meta.features.items()}
        self.features: dict[str, Any] = features
        self.fps = meta.fps
        self.cameras: tuple[str, ...] = tuple(
            camera_of(k)
            for k, ft in features.items()
            if ft.get("dtype") in ("video", "image") and k.startswith("observation.images.")
        )
        self._state_dim = meta.features[STATE].width
        self._action_dim = meta.features[ACTION].width

        self._load_tasks()
        self._load_episodes()
        self._load_data()
        self._image_cache: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._image_cache_size = int(image_cache_episodes)
        self._image_tables: dict[str, pa.Table] = {}
        self.stats = self._load_stats()
        self.embodiment = self._load_embodiment()

    # ---- loading -----------------------------------------------------------------------------
    def _load_tasks(self) -> None:
        table = _read_parquet(self.root / TASKS_PATH, "task list").to_pandas()
        if "task" in table.columns:
            names = table["task"].tolist()
        else:
            names = [str(x) for x in table.index]
        order = np.argsort(table[TASK_INDEX].to_numpy())
        indices = table[TASK_INDEX].to_numpy()[order]
        if not np.array_equal(indices, np.arange(len(indices))):
            raise LbmError(f"{self.root / TASKS_PATH} is corrupt: task indices {indices.tolist()} are not 0..{len(indices) - 1}.")
        self.tasks: list[str] = [names[i] for i in order]

    def _load_episodes(self) -> None:
        paths = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        if not paths:
            raise LbmError(f"{self.root / 'meta/episodes'} holds no episode table; the dataset is incomplete. Regenerate it.")
        tables = [_read_parquet(p, "episode table") for p in paths]
        cols = set.intersection(*(set(t.column_names) for t in tables))
        tables = [t.select([c for c in tables[0].column_names if c in cols and not c.startswith("stats/")]) for t in tables]
        eps = pa.concat_tables(tables, promote_options="default").to_pandas()
        missing = {EPISODE_INDEX, "length", "dataset_from_index", "dataset_to_index"} - set(eps.columns)
        if missing:
            raise LbmError(f"The episode table of {self.root} lacks columns {sorted(missing)}; the dataset is corrupt.")
        self._episodes = eps.sort_values(EPISODE_INDEX).reset_index(drop=True)
        self.num_episodes = len(self._episodes)
        if not np.array_equal(self._episodes[EPISODE_INDEX].to_numpy(), np.arange(self.num_episodes)):
            raise LbmError(f"The episode table of {self.root} is corrupt: episode indices are not 0..{self.num_episodes - 1}.")

    def _load_data(self) -> None:
        paths = sorted((self.root / "data").glob("*/*.parquet"))
        wanted = {int(c) for c in self._episodes["data/file_index"]} if "data/file_index" in self._episodes else set()
        if not paths:
            raise LbmError(f"{self.root / 'data'} holds no parquet files; the dataset is incomplete. Regenerate it.")
        if "data/chunk_index" in self._episodes:
            for ch, fi in set(zip(self._episodes["data/chunk_index"], self._episodes["data/file_index"])):
                p = self.root / self.info.get("data_path", DATA_PATH).format(chunk_index=int(ch), file_index=int(fi))
                if not p.is_file():
                    raise LbmError(f"Dataset file {p} (frame data) is missing; the dataset is incomplete. Regenerate it.")
        del wanted
        scalar_cols = [STATE, ACTION, INDEX, EPISODE_INDEX, FRAME_INDEX, TIMESTAMP, TASK_INDEX, SUBTASK_INDEX, ATOMS]
        tables = []
        for p in paths:
            t = _read_parquet(p, "frame data", columns=None)
            have = [c for c in scalar_cols if c in t.column_names]
            tables.append(t.select(have))
        table = pa.concat_tables(tables)
        for key in (STATE, ACTION, INDEX, EPISODE_INDEX):
            if key not in table.column_names:
                raise LbmError(f"The frame data of {self.root} lacks the column {key!r}; the dataset is corrupt.")
        index = table.column(INDEX).to_numpy()
        order = np.argsort(index, kind="stable") if np.any(np.diff(index) < 0) else None

        def col(key: str, width: int | None = None, dtype: type = np.float32) -> np.ndarray:
            a = _list_column(table, key, width, dtype) if width else table.column(key).to_numpy()
            a = a[order] if order is not None else a
            a.flags.writeable = False  # shared by every window and worker: nobody may edit it in place
            return a

        self._state = col(STATE, self._state_dim)
        self._action = col(ACTION, self._action_dim)
        self._index = col(INDEX)
        self._episode_of_frame = col(EPISODE_INDEX)
        n = len(self._index)
        self._frame_index = col(FRAME_INDEX) if FRAME_INDEX in table.column_names else np.zeros(n, np.int64)
        self._timestamp = col(TIMESTAMP) if TIMESTAMP in table.column_names else np.zeros(n, np.float32)
        self._task_index = col(TASK_INDEX) if TASK_INDEX in table.column_names else np.zeros(n, np.int64)
        self._subtask_index = col(SUBTASK_INDEX) if SUBTASK_INDEX in table.column_names else None
        atoms = self.features.get(ATOMS)
        self._atoms = col(ATOMS, atoms["shape"][0], np.uint8) if atoms and ATOMS in table.column_names else None
        self.num_frames = n
        # Row range of each episode, from the global frame indices the episode table names.
        starts = np.searchsorted(self._index, self._episodes["dataset_from_index"].to_numpy())
        ends = np.searchsorted(self._index, self._episodes["dataset_to_index"].to_numpy())
        self._starts, self._ends = starts.astype(np.int64), ends.astype(np.int64)

    def _load_stats(self) -> dict[str, FeatureStats]:
        path = self.root / STATS_PATH
        if not path.is_file():
            return {}
        return read_stats(path, {STATE: self._state_dim, ACTION: self._action_dim})

    def _load_embodiment(self) -> Embodiment:
        lbm_meta = self.info.get("lbm") or {}
        if "embodiment" in lbm_meta:
            return Embodiment.from_json(lbm_meta["embodiment"])

        # A foreign LeRobot dataset: name it after its robot type; bounds from the data itself.
        def names(key: str) -> tuple[str, ...]:
            n = self.features[key].get("names")
            if isinstance(n, dict):
                n = next(iter(n.values()), None)
            return tuple(str(x) for x in n) if isinstance(n, list) and all(not isinstance(x, list) for x in n) else ()

        low = self._action.min(axis=0) if self.num_frames else np.full(self._action_dim, -np.inf)
        high = self._action.max(axis=0) if self.num_frames else np.full(self._action_dim, np.inf)
        return Embodiment(
            name=str(self.info.get("robot_type") or "unknown"),
            state_dim=self._state_dim,
            action_dim=self._action_dim,
            action_low=tuple(float(x) for x in low),
            action_high=tuple(float(x) for x in high),
            cameras=self.cameras,
            control_hz=self.fps or 10.0,
            state_names=names(STATE),
            action_names=names(ACTION),
        )

    # ---- pickling (DataLoader workers): caches and open tables stay behind ------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_image_cache"] = OrderedDict()
        state["_image_tables"] = {}
        return state

    # ---- queries -----------------------------------------------------------------------------
    def _check_episode(self, i: int) -> int:
        if not -self.num_episodes <= i < self.num_episodes:
            raise LbmError(
                f"Episode {i} does not exist; {self.root} has {self.num_episodes} episodes (0..{self.num_episodes - 1})."
            )
        return i % self.num_episodes

    def episode_length(self, i: int) -> int:
        """Number of frames L of episode ``i``."""
        i = self._check_episode(i)
        return int(self._ends[i] - self._starts[i])

    def episode_task(self, i: int) -> str:
        """The instruction (LeRobot "task" string) of episode ``i``."""
        i = self._check_episode(i)
        if self._ends[i] > self._starts[i]:
            return self.tasks[int(self._task_index[self._starts[i]])]
        return str(self._episodes.loc[i, "tasks"][0]) if "tasks" in self._episodes else ""

    def episode_sim_task(self, i: int) -> str:
        """The simulator task (e.g. ``"reach-v3"``) episode ``i`` came from; ``""`` if unknown."""
        i = self._check_episode(i)
        return str(self._episodes.loc[i, "sim_task"]) if "sim_task" in self._episodes else ""

    def episodes_of(self, sim_task: str) -> list[int]:
        """Indices of the episodes recorded on simulator task ``sim_task``."""
        if "sim_task" not in self._episodes:
            return []
        names = self._episodes["sim_task"].astype(str)
        if sim_task not in set(names):
            raise did_you_mean(sim_task, set(names), "task in this dataset")
        return [int(i) for i in np.flatnonzero(names.to_numpy() == sim_task)]

    def episodes_of_tasks(self, sim_tasks: Sequence[str]) -> list[int]:
        """Indices of the episodes recorded on any of ``sim_tasks`` (every episode when it is empty)."""
        if not sim_tasks:
            return list(range(self.num_episodes))
        if "sim_task" not in self._episodes:
            raise LbmError(f"{self.root} does not record each episode's simulator task; it cannot be filtered by task.")
        wanted = np.isin(self._episodes["sim_task"].astype(str).to_numpy(), list(sim_tasks))
        return [int(i) for i in np.flatnonzero(wanted)]

    def stats_of(self, episodes: Sequence[int]) -> dict[str, FeatureStats]:
        """State and action statistics of these episodes alone (a run that leaves some of the dataset's tasks out
        must not normalize with theirs)."""
        rows = np.concatenate([np.arange(*self.episode_bounds(i)) for i in episodes]) if episodes else np.zeros(0, np.int64)
        return {key: StatsAccumulator().update(self.frames(key)[rows]).finalize() for key in (STATE, ACTION)}

    @property
    def has_subtasks(self) -> bool:
        """Whether frames carry subtask instructions (long-horizon demonstrations)."""
        return self._subtask_index is not None

    def subtask_instructions(self, i: int) -> list[str]:
        """Per frame of episode ``i``: the instruction of the subtask being carried out."""
        i = self._check_episode(i)
        return [self.tasks[int(k)] for k in self.frame_subtasks()[self._starts[i] : self._ends[i]]]

    def frame_subtasks(self) -> np.ndarray:
        """Per frame of the dataset: the index into :attr:`tasks` of its subtask instruction (read-only)."""
        if self._subtask_index is None:
            raise LbmError(f"{self.root} carries no subtask labels; generate it from a long-horizon suite (e.g. libero-10).")
        return self._subtask_index

    def atoms(self, i: int) -> tuple[tuple[str, ...], np.ndarray]:
        """The symbolic state of every frame of episode ``i``: atom names and a ``(L, K)`` bool array."""
        i = self._check_episode(i)
        names = tuple(((self.info.get("lbm") or {}).get("atoms") or {}).get(self.episode_sim_task(i), ()))
        if self._atoms is None or not names:
            raise LbmError(f"{self.root} carries no symbolic state for episode {i}; generate it from a LIBERO suite.")
        packed = self._atoms[self._starts[i] : self._ends[i]]
        return names, np.unpackbits(packed, axis=1, count=len(names), bitorder="little").astype(bool)

    def episode_bounds(self, i: int) -> tuple[int, int]:
        """Row range ``[start, end)`` of episode ``i`` in :meth:`frames` arrays."""
        i = self._check_episode(i)
        return int(self._starts[i]), int(self._ends[i])

    def frames(self, key: str) -> np.ndarray:
        """Every frame's values of a per-frame feature, ``(N, D)`` (read-only)."""
        table = {
            STATE: self._state,
            ACTION: self._action,
            INDEX: self._index,
            EPISODE_INDEX: self._episode_of_frame,
            FRAME_INDEX: self._frame_index,
            TIMESTAMP: self._timestamp,
            TASK_INDEX: self._task_index,
        }
        if key not in table:
            raise did_you_mean(key, table, "per-frame feature")
        return table[key]

    @property
    def episode_table(self):
        """The episode metadata table (pandas DataFrame, one row per episode)."""
        return self._episodes

    def episode(self, i: int, cameras: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Frames of episode ``i``: ``observation.state (L, S)`` and ``action (L, A)`` float32,
        ``timestamp (L,)``, ``frame_index (L,)``, and ``observation.images.<cam> (L, H, W, 3)`` uint8 for each
        camera asked for (decoded now). Arrays are read-only views; copy before editing."""
        i = self._check_episode(i)
        s, e = self._starts[i], self._ends[i]
        out = {
            STATE: self._state[s:e],
            ACTION: self._action[s:e],
            TIMESTAMP: self._timestamp[s:e],
            FRAME_INDEX: self._frame_index[s:e],
        }
        for cam in cameras:
            out[image_key(cam)] = self.images(i, cam)
        return out

    def images(self, i: int, camera: str) -> np.ndarray:
        """Decoded frames ``(L, H, W, 3)`` uint8 of episode ``i`` from ``camera`` (cached)."""
        i = self._check_episode(i)
        if camera not in self.cameras:
            raise (
                did_you_mean(camera, self.cameras, "camera")
                if self.cameras
                else LbmError(f"{self.root} has no camera images (state-only dataset); regenerate it with --cameras {camera}.")
            )
        cache_key = (i, camera)
        if cache_key in self._image_cache:
            self._image_cache.move_to_end(cache_key)
            return self._image_cache[cache_key]
        key = image_key(camera)
        frames = self._decode_video(i, key) if self.features[key]["dtype"] == "video" else self._decode_pngs(i, key)
        frames.flags.writeable = False
        self._image_cache[cache_key] = frames
        while len(self._image_cache) > self._image_cache_size:
            self._image_cache.popitem(last=False)
        return frames

    def _decode_pngs(self, i: int, key: str) -> np.ndarray:
        from PIL import Image

        if key not in self._image_tables:
            paths = sorted((self.root / "data").glob("*/*.parquet"))
            self._image_tables[key] = pa.concat_tables(_read_parquet(p, "frame images", [key, INDEX]) for p in paths)
        table = self._image_tables[key]
        s, e = self._starts[i], self._ends[i]
        cells = table.column(key).slice(s, e - s).to_pylist()
        return np.stack([np.asarray(Image.open(io.BytesIO(c["bytes"])).convert("RGB")) for c in cells])

    def _decode_video(self, i: int, key: str) -> np.ndarray:
        import av
        from av.error import FFmpegError

        ep = self._episodes.loc[i]
        path = self.root / str(self.info.get("video_path") or VIDEO_PATH).format(
            video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]), file_index=int(ep[f"videos/{key}/file_index"])
        )
        if not path.is_file():
            raise LbmError(f"Video file {path} is missing; the dataset is incomplete. Regenerate or re-download it.")
        t0, t1 = float(ep[f"videos/{key}/from_timestamp"]), float(ep[f"videos/{key}/to_timestamp"])
        length = self.episode_length(i)
        tol = 0.5 / (self.fps or 30.0)
        frames = []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                if stream.time_base is None:
                    raise LbmError(f"Video file {path} has no time base; regenerate the dataset.")
                container.seek(int(max(t0 - tol, 0) / stream.time_base), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    t = float((frame.pts or 0) * stream.time_base)
                    if t < t0 - tol:
                        continue
                    if t >= t1 - tol or len(frames) == length:
                        break
                    frames.append(frame.to_ndarray(format="rgb24"))
        except (FFmpegError, OSError) as e:
            raise LbmError(f"Video file {path} is corrupt or unreadable ({e}). Regenerate or re-download the dataset.") from None
        if len(frames) != length:
            raise LbmError(
                f"Video {path} yields {len(frames)} frames for episode {i} (expected {length}, "
                f"t in [{t0:.3f}, {t1:.3f}) s); the video and the frame data disagree. Run `lbm data audit {self.root}`."
            )
        return np.stack(frames)

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({str(self.root)!r}: {self.num_episodes} episodes, {self.num_frames} frames, "
            f"{len(self.tasks)} tasks, cameras={list(self.cameras)}, fps={self.fps:g})"
        )
