"""Round trip with LeRobot's own ``LeRobotDataset`` (marker ``interop``; run with ``make test-interop``).

``lerobot`` 0.4.x pins its own torch, so it runs in a separate venv (``tests/lerobot_env.py``, cached).

1. LeRobot reads what we write: ``LeRobotDataset(repo_id, root=...)`` on a dataset from our
   :class:`DatasetWriter` (video and PNG images) gives back every frame's state, action, indices,
   timestamp and task, images that match ours, and ``delta_timestamps`` windows padded at episode edges.
2. We read what LeRobot writes: ``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` /
   ``finalize`` make a dataset (AV1 video, as on the Hub, and a PNG camera; once in single files and
   once split over many files and chunks); our :class:`EpisodeDataset` must agree with LeRobot's own
   reading of it, frame by frame.

All runs are offline (``HF_HUB_OFFLINE=1``) from local roots. If the side environment cannot be
built (no registry, no wheel for this machine, too little disk) the test skips and says why.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import lerobot_env
from lbm.data import DatasetWriter, EpisodeDataset
from lbm.schema import ACTION, EPISODE_INDEX, FRAME_INDEX, INDEX, STATE, TASK_INDEX, TIMESTAMP, Embodiment, image_key

pytestmark = pytest.mark.interop

EMB = Embodiment("toy-arm", 5, 2, (-1, -1), (1, 1), cameras=("cam",), control_hz=10)


@pytest.fixture(scope="module")
def lerobot_python() -> Path:
    """Python of LeRobot's own venv (:func:`lerobot_env.build`, cached); the test skips, saying why, if it cannot be built."""
    try:
        return lerobot_env.build()
    except lerobot_env.Unavailable as error:
        pytest.skip(f"cannot build the LeRobot environment: {error}")


def _run(python: Path, code: str, home: Path) -> dict:
    """Run ``code`` in the LeRobot venv, offline; it prints one JSON object as its last line."""
    home.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        timeout=900,
        env=lerobot_env.offline_env(home),
        cwd=home,
    )
    assert r.returncode == 0, f"LeRobot side failed:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


# Dump every frame of a LeRobotDataset to an .npz (images as uint8 HWC) and its metadata as JSON.
DUMP = """
def dump(ds, out):
    import json, numpy as np
    cols = {}
    for i in range(len(ds)):
        item = ds[i]
        for k, v in item.items():
            if k == "task":
                cols.setdefault(k, []).append(v)
            elif k in ds.meta.camera_keys:  # float CHW in [0, 1] -> uint8 HWC
                cols.setdefault(k, []).append((v.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            else:
                cols.setdefault(k, []).append(v.numpy())
    np.savez(out, **{k: np.array(v) for k, v in cols.items()})
    tasks = ds.meta.tasks.sort_values("task_index").index.tolist()
    return {"len": len(ds), "episodes": ds.num_episodes, "fps": ds.fps, "robot_type": ds.meta.robot_type,
            "cameras": list(ds.meta.camera_keys), "video_keys": list(ds.meta.video_keys), "tasks": tasks,
            "lengths": [int(x) for x in ds.meta.episodes["length"]], "stats": sorted(ds.meta.stats)}
"""


def _frame_images(lengths, h, w):
    """Per-episode (L, h, w, 3) images: a gradient plus a level unique to each frame of the dataset, so a
    frame taken from a neighbour (off by one, or from the next episode) is far off."""
    gy, gx = np.meshgrid(np.linspace(0, 40, h), np.linspace(0, 30, w), indexing="ij")
    base = np.stack([gy, gx, gy + gx], -1)
    out, g = [], 0
    for L in lengths:
        out.append(np.stack([(base + 20 + 9 * (g + t)).clip(0, 255).astype(np.uint8) for t in range(L)]))
        g += L
    return out


@pytest.mark.parametrize("video", [True, False], ids=["video", "png"])
def test_lerobot_reads_our_dataset(tmp_path, lerobot_python, video):
    rng = np.random.default_rng(0)
    root, lengths, tasks = tmp_path / "ours", (6, 9, 4), ("open the drawer", "press the button", "open the drawer")
    states, actions = [], []
    images = _frame_images(lengths, 32, 48) if video else [rng.integers(0, 256, (L, 12, 10, 3), np.uint8) for L in lengths]
    with DatasetWriter(root, EMB, cameras=("cam",), video=video) as w:
        for L, task, img in zip(lengths, tasks, images):
            s, a = rng.normal(size=(L, 5)).astype(np.float32), rng.uniform(-1, 1, (L, 2)).astype(np.float32)
            w.add_episode(s, a, task, images={"cam": img})
            states.append(s), actions.append(a)
    cam = image_key("cam")
    code = (
        DUMP
        + f"""
import json, numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/ours", root={str(root)!r}, video_backend="pyav")
meta = dump(ds, {str(tmp_path / "lerobot.npz")!r})
# A policy's view: action chunks ahead and the previous camera frame, padded at episode edges.
w = LeRobotDataset("local/ours", root={str(root)!r}, video_backend="pyav",
                   delta_timestamps={{"action": [0, 0.1, 0.2], {cam!r}: [-0.1, 0.0]}})
meta["windows"] = {{}}
for i in (5, 6, 18):
    it = w[i]
    meta["windows"][i] = {{"action": it["action"].tolist(), "action_is_pad": it["action_is_pad"].tolist(),
                           "cam": (it[{cam!r}].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8).tolist(),
                           "cam_is_pad": it[{cam!r} + "_is_pad"].tolist()}}
print(json.dumps(meta))
"""
    )
    meta = _run(lerobot_python, code, tmp_path / "home")
    got = np.load(tmp_path / "lerobot.npz")
    n = sum(lengths)
    assert (meta["len"], meta["episodes"], meta["fps"], meta["robot_type"]) == (n, 3, 10, "toy-arm")
    assert meta["cameras"] == [cam] and meta["video_keys"] == ([cam] if video else [])
    assert meta["tasks"] == ["open the drawer", "press the button"] and meta["lengths"] == list(lengths)
    assert {STATE, ACTION} <= set(meta["stats"])

    flat_s, flat_a = np.concatenate(states), np.concatenate(actions)
    ep = np.repeat(np.arange(3), lengths)
    fi = np.concatenate([np.arange(L) for L in lengths])
    np.testing.assert_array_equal(got[STATE], flat_s)
    np.testing.assert_array_equal(got[ACTION], flat_a)
    np.testing.assert_array_equal(got[EPISODE_INDEX], ep)
    np.testing.assert_array_equal(got[FRAME_INDEX], fi)
    np.testing.assert_array_equal(got[INDEX], np.arange(n))
    np.testing.assert_allclose(got[TIMESTAMP], fi / 10, atol=1e-6)
    np.testing.assert_array_equal(got[TASK_INDEX], [0 if tasks[e] == "open the drawer" else 1 for e in ep])
    assert got["task"].tolist() == [tasks[e] for e in ep]

    originals = np.concatenate(images)
    ours = EpisodeDataset(root)
    our_frames = np.concatenate([ours.images(e, "cam") for e in range(3)])
    theirs = got[cam]
    assert theirs.shape == originals.shape
    if video:  # lossy h264 (CRF 12): both decoders see the same stream; both stay near the originals
        diff = np.abs(theirs.astype(int) - our_frames.astype(int))
        assert diff.max() <= 2, f"LeRobot and lbm decode our video differently (max diff {diff.max()})"
        err = np.abs(theirs.astype(int) - originals.astype(int)).reshape(n, -1).mean(1)
        assert err.max() < 3, f"LeRobot's decoded frames stray from what we wrote: mean abs error per frame {err.round(2)}"
    else:
        np.testing.assert_array_equal(theirs, originals)
        np.testing.assert_array_equal(our_frames, originals)

    win = meta["windows"]
    # last frame of episode 0: the chunk runs past the end, so it repeats the last action, marked as padding
    np.testing.assert_array_equal(np.float32(win["5"]["action"]), flat_a[[5, 5, 5]])
    assert win["5"]["action_is_pad"] == [False, True, True] and win["5"]["cam_is_pad"] == [False, False]
    # first frame of episode 1: the previous camera frame would be episode 0's, so it is padding (a repeat)
    np.testing.assert_array_equal(np.float32(win["6"]["action"]), flat_a[6:9])
    assert win["6"]["action_is_pad"] == [False, False, False] and win["6"]["cam_is_pad"] == [True, False]
    cams6 = np.uint8(win["6"]["cam"])
    np.testing.assert_array_equal(cams6[0], cams6[1])
    np.testing.assert_array_equal(cams6[1], theirs[6])
    np.testing.assert_array_equal(np.uint8(win["18"]["cam"]), theirs[17:19])  # last frame of the dataset


@pytest.mark.parametrize("split", [False, True], ids=["single-files", "split-files"])
def test_we_read_a_dataset_lerobot_wrote(tmp_path, lerobot_python, split):
    root, lengths = tmp_path / "theirs", (4, 6, 5)
    # Split: LeRobot starts a new data/video/episode file for every episode, and a new chunk folder
    # every 2 files (what a large recording looks like), so files and chunks roll over mid-dataset.
    settings = "ds.meta.update_chunk_settings(chunks_size=2, data_files_size_in_mb=1e-9, video_files_size_in_mb=1e-9)"
    code = (
        DUMP
        + f"""
import json, numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
features = {{"observation.state": {{"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]}},
            "action": {{"dtype": "float32", "shape": (2,), "names": ["x", "y"]}},
            "observation.images.front": {{"dtype": "video", "shape": (32, 48, 3), "names": ["height", "width", "channels"]}},
            "observation.images.wrist": {{"dtype": "image", "shape": (16, 16, 3), "names": ["height", "width", "channels"]}}}}
ds = LeRobotDataset.create("local/theirs", fps=15, root={str(root)!r}, robot_type="toybot", features=features,
                           use_videos=True, metadata_buffer_size=1)
{settings if split else ""}
gy, gx = np.meshgrid(np.linspace(0, 40, 32), np.linspace(0, 30, 48), indexing="ij")
base, g = np.stack([gy, gx, gy + gx], -1), 0
for e, L in enumerate({lengths!r}):
    for t in range(L):
        ds.add_frame({{"observation.state": np.full(3, 10 * e + t, np.float32), "action": np.full(2, -t - 0.5 * e, np.float32),
                      "observation.images.front": (base + 20 + 9 * g).clip(0, 255).astype(np.uint8),
                      "observation.images.wrist": np.full((16, 16, 3), (7 * g, 255 - 7 * g, 3 * e), np.uint8),
                      "task": ["pick up the cube", "stack the blocks"][e % 2]}})
        g += 1
    ds.save_episode()
ds.finalize()
# LeRobot's own reading of what it wrote is the reference for ours.
print(json.dumps(dump(LeRobotDataset("local/theirs", root={str(root)!r}, video_backend="pyav"),
                      {str(tmp_path / "lerobot.npz")!r})))
"""
    )
    meta = _run(lerobot_python, code, tmp_path / "home")
    ref = np.load(tmp_path / "lerobot.npz")
    n = sum(lengths)
    if split:
        assert len(list((root / "data").glob("*/*.parquet"))) == 3 and (root / "data" / "chunk-001").is_dir()
        assert len(list((root / "videos" / "observation.images.front").glob("*/*.mp4"))) == 3
        assert len(list((root / "meta" / "episodes").glob("*/*.parquet"))) > 1
    assert (
        json.loads((root / "meta" / "info.json").read_text())["features"]["observation.images.front"]["info"]["video.codec"]
        == "av1"
    )  # LeRobot's default, as on the Hub

    ours = EpisodeDataset(root)
    assert (ours.num_episodes, ours.num_frames, ours.fps) == (meta["episodes"], meta["len"], float(meta["fps"])) == (3, n, 15.0)
    assert ours.tasks == meta["tasks"] == ["pick up the cube", "stack the blocks"]
    assert ours.cameras == ("front", "wrist")
    emb = ours.embodiment
    assert (emb.name, emb.state_names, emb.action_names, emb.control_hz) == ("toybot", ("a", "b", "c"), ("x", "y"), 15.0)
    assert [ours.episode_length(i) for i in range(3)] == meta["lengths"] == list(lengths)
    assert [ours.episode_task(i) for i in range(3)] == [ref["task"][ours.episode_bounds(i)[0]] for i in range(3)]
    for key in (STATE, ACTION, INDEX, EPISODE_INDEX, FRAME_INDEX, TIMESTAMP, TASK_INDEX):
        np.testing.assert_array_equal(ours.frames(key), ref[key].reshape(ours.frames(key).shape), err_msg=key)
    np.testing.assert_array_equal(ours.episode(1)[STATE][:, 0], [10, 11, 12, 13, 14, 15])
    np.testing.assert_array_equal(ours.episode(2)[ACTION][:, 1], [-1, -2, -3, -4, -5])
    np.testing.assert_allclose(ours.stats[STATE].mean, ours.frames(STATE).mean(0), rtol=1e-5)

    wrist = np.concatenate([ours.images(i, "wrist") for i in range(3)])
    np.testing.assert_array_equal(wrist, ref["observation.images.wrist"])  # PNG: lossless both ways
    g = np.arange(n)
    np.testing.assert_array_equal(wrist[:, 0, 0, :2], np.stack([7 * g, 255 - 7 * g], -1))
    front = np.concatenate([ours.images(i, "front") for i in range(3)])
    assert front.shape == (n, 32, 48, 3)
    diff = np.abs(front.astype(int) - ref["observation.images.front"].astype(int))
    assert diff.max() <= 2, f"lbm and LeRobot decode LeRobot's AV1 video differently (max diff {diff.max()})"
    levels = front.reshape(n, -1).mean(1) - front[0].reshape(-1).mean()
    np.testing.assert_allclose(levels, 9 * g, atol=3)  # every frame is the right one, in order


@pytest.mark.parametrize("tasks", ["libero-goal", "robosuite-lift@ur5e"])
def test_lerobot_reads_a_symbolic_dataset_with_subtasks_and_atoms(tmp_path, lerobot_python, tasks):
    """`lbm data generate --tasks libero-goal --episodes-per-task 2` (with a small camera), and the same for a
    robosuite arm, read by LeRobot: the subtask index and the bit-packed atoms come through as plain features."""
    pytest.importorskip("libero", reason="LIBERO (and the robosuite it brings) is an optional extra: pip install 'lbm[libero]'")
    from lbm.data import generate_demos
    from lbm.data.audit import audit_dataset
    from lbm.data.dataset import ATOMS, SUBTASK_INDEX
    from lbm.sim import resolve_tasks

    root = tmp_path / "symbolic"
    summary = generate_demos(
        resolve_tasks(tasks),
        2,
        root,
        cameras=("agentview",),
        image_size=32,
        workers=2,
        progress=False,
    )
    assert summary.episodes >= len(summary.tasks)  # the expert may drop an episode; never a whole task
    assert audit_dataset(root).ok
    code = (
        DUMP
        + f"""
import json
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/symbolic", root={str(root)!r}, video_backend="pyav")
meta = dump(ds, {str(tmp_path / "lerobot.npz")!r})
meta["features"] = sorted(ds.meta.features)
print(json.dumps(meta))
"""
    )
    meta = _run(lerobot_python, code, tmp_path / "home")
    got = np.load(tmp_path / "lerobot.npz")
    ours = EpisodeDataset(root)
    assert {SUBTASK_INDEX, ATOMS} <= set(meta["features"]) and meta["len"] == ours.num_frames
    np.testing.assert_array_equal(got[SUBTASK_INDEX].reshape(-1), ours.frame_subtasks())
    assert meta["tasks"] == ours.tasks  # whole-task and subtask instructions share LeRobot's task table
    for e in range(ours.num_episodes):
        start, end = ours.episode_bounds(e)
        names, atoms = ours.atoms(e)
        packed = got[ATOMS].reshape(len(got[ATOMS]), -1).astype(np.uint8)  # one byte of atoms arrives as a scalar
        bits = np.unpackbits(packed[start:end], axis=1, count=len(names), bitorder="little")
        np.testing.assert_array_equal(bits.astype(bool), atoms)
