"""Writer/reader round trips, training windows, mixtures, the audit, and bad input."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lbm.data import DatasetWriter, EpisodeDataset, Mixture, WindowDataset, collate_windows, compute_dataset_stats
from lbm.data.audit import audit_dataset
from lbm.errors import LbmError
from lbm.schema import ACTION, EMBODIMENT, EPISODE_INDEX, FRAME_INDEX, INSTRUCTION, STATE, Embodiment, image_key

TOY = Embodiment("toy-arm", state_dim=5, action_dim=2, action_low=(-1, -1), action_high=(1, 1), cameras=("cam",), control_hz=10)
TOY_WIDE = Embodiment("toy-wide", state_dim=7, action_dim=3, action_low=(-1,) * 3, action_high=(1,) * 3, control_hz=10)


def _episodes(emb, lengths, seed=0, images=False):
    rng = np.random.default_rng(seed)
    out = []
    for e, L in enumerate(lengths):
        s = rng.normal(size=(L, emb.state_dim)).astype(np.float32)
        s[:, -1] = 0.0  # an exactly-constant dim, like Meta-World's padding
        a = rng.uniform(-1, 1, size=(L, emb.action_dim)).astype(np.float32)
        ims = None
        if images:  # smooth images (video codecs are exact enough on those) that change per frame
            yy, xx = np.mgrid[0:32, 0:32]
            base = np.stack([xx * 3, yy * 3, xx + yy], -1).astype(np.int64)
            ims = {"cam": np.stack([base + 7 * t + 30 * e for t in range(L)]).astype(np.uint8)}
        out.append((s, a, f"task {e % 2}", ims))
    return out


def _write(root, emb=TOY, lengths=(6, 9, 4), images=False, video=True, seed=0):
    eps = _episodes(emb, lengths, seed, images)
    with DatasetWriter(root, emb, cameras=("cam",) if images else (), video=video) as w:
        for e, (s, a, task, ims) in enumerate(eps):
            w.add_episode(s, a, task, images=ims, sim_task=f"sim-{e % 2}", seed=e)
    return eps


def test_state_round_trip_is_exact_and_layout_is_lerobot_v3(tmp_path):
    eps = _write(tmp_path / "ds")
    ds = EpisodeDataset(tmp_path / "ds")
    assert (ds.num_episodes, ds.num_frames, ds.fps, ds.cameras) == (3, 19, 10.0, ())
    assert ds.tasks == ["task 0", "task 1"] and ds.embodiment == TOY
    for i, (s, a, task, _) in enumerate(eps):
        ep = ds.episode(i)
        np.testing.assert_array_equal(ep[STATE], s)
        np.testing.assert_array_equal(ep[ACTION], a)
        assert ds.episode_length(i) == len(s) and ds.episode_task(i) == task and ds.episode_sim_task(i) == f"sim-{i % 2}"
    assert ds.episodes_of("sim-0") == [0, 2]
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 19 and info["total_tasks"] == 2
    assert info["features"][STATE] == {"dtype": "float32", "shape": [5], "names": None}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    table = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet")
    assert set(table.column_names) == {STATE, ACTION, "timestamp", "frame_index", "episode_index", "index", "task_index"}
    assert pa.types.is_fixed_size_list(table.schema.field(STATE).type)
    tasks = pd.read_parquet(tmp_path / "ds/meta/tasks.parquet")
    assert tasks.loc["task 1", "task_index"] == 1
    stats = compute_dataset_stats(ds)
    np.testing.assert_allclose(stats[STATE].mean, np.concatenate([e[0] for e in eps]).mean(0), rtol=1e-6)
    assert stats[STATE].constant_dims == (4,) and ds.stats[ACTION].count == 19
    with pytest.raises(ValueError):  # shared read-only arrays cannot be edited by accident
        ds.episode(0)[STATE][0, 0] = 1.0


@pytest.mark.parametrize("video", [True, False], ids=["mp4", "png"])
def test_image_round_trip(tmp_path, video):
    eps = _write(tmp_path / "ds", images=True, video=video, lengths=(5, 7, 3))
    ds = EpisodeDataset(tmp_path / "ds")
    assert ds.cameras == ("cam",) and ds.features[image_key("cam")]["dtype"] == ("video" if video else "image")
    for i in (2, 0, 1):  # out of order: each episode is found by its timestamps, not by luck
        frames = ds.episode(i, cameras=("cam",))[image_key("cam")]
        truth = eps[i][3]["cam"]
        assert frames.shape == truth.shape and frames.dtype == np.uint8
        err = np.abs(frames.astype(int) - truth)
        if video:
            assert err.mean() < 3 and err.max() < 40  # lossy but close
        else:
            assert err.max() == 0
    assert audit_dataset(tmp_path / "ds").ok


def test_windows_pad_at_episode_ends(tmp_path):
    eps = _write(tmp_path / "ds", lengths=(6, 3))
    ds = EpisodeDataset(tmp_path / "ds")
    w = WindowDataset(ds, history=3, horizon=4)
    assert len(w) == 9
    first = w[0]
    s, a = eps[0][0], eps[0][1]
    np.testing.assert_array_equal(first[STATE], s[[0, 0, 0]])
    np.testing.assert_array_equal(first["observation.state_is_pad"], [True, True, False])
    np.testing.assert_array_equal(first[ACTION], a[0:4])
    assert not first["action_is_pad"].any()
    last = w[5]  # frame 5 of episode 0 (length 6)
    np.testing.assert_array_equal(last[STATE], s[3:6])
    np.testing.assert_array_equal(last[ACTION], a[[5, 5, 5, 5]])
    np.testing.assert_array_equal(last["action_is_pad"], [False, True, True, True])
    second = w[7]  # frame 1 of episode 1: never reaches into episode 0
    np.testing.assert_array_equal(second[STATE], eps[1][0][[0, 0, 1]])
    np.testing.assert_array_equal(second["observation.state_is_pad"], [True, False, False])
    assert (second[EPISODE_INDEX], second[FRAME_INDEX], second[INSTRUCTION], second[EMBODIMENT]) == (1, 1, "task 1", "toy-arm")
    only = WindowDataset(ds, episodes=[1], horizon=2)
    assert len(only) == 3 and only[0][EPISODE_INDEX] == 1
    batch = collate_windows([w[i] for i in range(4)])
    assert batch[STATE].shape == (4, 3, 5) and batch[ACTION].dtype == torch.float32
    assert batch["action_is_pad"].dtype == torch.bool and batch[INSTRUCTION] == ["task 0"] * 4
    assert batch[EPISODE_INDEX].tolist() == [0, 0, 0, 0]


def test_windows_with_images_and_dataloader(tmp_path):
    eps = _write(tmp_path / "ds", images=True, video=False, lengths=(4, 5))
    w = WindowDataset(EpisodeDataset(tmp_path / "ds"), history=2, horizon=3, cameras=("cam",))
    np.testing.assert_array_equal(w[5][image_key("cam")], eps[1][3]["cam"][[0, 1]])
    loader = torch.utils.data.DataLoader(w, batch_size=4, collate_fn=collate_windows, num_workers=1, shuffle=False)
    batch = next(iter(loader))
    assert batch[image_key("cam")].shape == (4, 2, 32, 32, 3) and batch[image_key("cam")].dtype == torch.uint8
    with pytest.raises(LbmError, match="Did you mean 'cam'"):
        WindowDataset(EpisodeDataset(tmp_path / "ds"), cameras=("camm",))


def test_mixture_weights_and_balancing(tmp_path):
    _write(tmp_path / "a", lengths=(10, 10, 10))
    _write(tmp_path / "b", emb=TOY_WIDE, lengths=(5, 5))
    wa, wb = WindowDataset(EpisodeDataset(tmp_path / "a"), horizon=2), WindowDataset(EpisodeDataset(tmp_path / "b"), horizon=2)
    plain = Mixture([wa, wb])
    np.testing.assert_allclose(plain.shares(), [30 / 40, 10 / 40])
    np.testing.assert_allclose(plain.sample_weights(), np.full(40, 1 / 40))
    balanced = Mixture([wa, wb], balance_by_size=True)
    np.testing.assert_allclose(balanced.shares(), [0.5, 0.5])
    weighted = Mixture([wa, wb], weights=[1, 3], balance_by_size=True)
    sw = weighted.sample_weights()
    assert sw.sum() == pytest.approx(1) and sw[:30].sum() == pytest.approx(0.25)
    np.testing.assert_allclose(Mixture([wa, wb], weights=[1, 3]).shares(), [30 / 60, 30 / 60])
    draws = np.array([weighted[i]["dataset_index"] for i in weighted.sampler(num_samples=4000, seed=0)])
    assert abs((draws == 1).mean() - 0.75) < 0.04
    batch = collate_windows([weighted[0], weighted[35]])  # 5-D and 7-D states: zero-padded to 7
    assert batch[STATE].shape == (2, 1, 7) and batch[STATE][0, 0, 5:].eq(0).all()
    assert batch["observation.state_dim_is_pad"].tolist() == [[False] * 5 + [True] * 2, [False] * 7]
    assert batch[EMBODIMENT] == ["toy-arm", "toy-wide"]
    with pytest.raises(LbmError, match="2 datasets"):
        Mixture([wa, wb], weights=[1])
    with pytest.raises(LbmError, match="non-negative"):
        Mixture([wa, wb], weights=[1, -1])


def test_bad_paths_and_corrupt_files_are_lbm_errors(tmp_path):
    with pytest.raises(LbmError, match="does not exist"):
        EpisodeDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LbmError, match="info.json is missing"):
        EpisodeDataset(tmp_path / "empty")
    _write(tmp_path / "ds")
    with pytest.raises(LbmError, match="already exists"):
        DatasetWriter(tmp_path / "ds", TOY)
    shutil.copytree(tmp_path / "ds", tmp_path / "corrupt")
    (tmp_path / "corrupt/data/chunk-000/file-000.parquet").write_bytes(b"not parquet")
    with pytest.raises(LbmError, match="corrupt"):
        EpisodeDataset(tmp_path / "corrupt")
    shutil.copytree(tmp_path / "ds", tmp_path / "noinfo")
    (tmp_path / "noinfo/meta/info.json").write_text("{")
    with pytest.raises(LbmError, match="corrupt"):
        EpisodeDataset(tmp_path / "noinfo")
    ds = EpisodeDataset(tmp_path / "ds")
    with pytest.raises(LbmError, match="has 3 episodes"):
        ds.episode(3)
    with pytest.raises(LbmError, match="state-only"):
        ds.images(0, "cam")
    with pytest.raises(LbmError, match=r"states must be \(L, 5\)"):
        DatasetWriter(tmp_path / "x", TOY).add_episode(np.zeros((3, 4)), np.zeros((3, 2)), "t")


def test_failed_write_leaves_no_dataset(tmp_path):
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", TOY) as w:
            w.add_episode(np.zeros((3, 5)), np.zeros((3, 2)), "t")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor the temp folder
    _write(tmp_path / "ds", lengths=(4,))
    before = (tmp_path / "ds/meta/info.json").read_text()
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", TOY, overwrite=True) as w:
            raise RuntimeError("interrupted")
    assert (tmp_path / "ds/meta/info.json").read_text() == before  # the old dataset survives a failed overwrite


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the writer handles it, and no cleanup runs."""


def test_overwrite_killed_at_any_step_leaves_one_whole_dataset(tmp_path, monkeypatch):
    """Kill `--overwrite` at each rename or delete; after recovery exactly the old or the new dataset is there, whole."""
    from lbm.data import dataset as ds_module

    k, seen, killed = 0, [], True
    while killed:
        root = tmp_path / f"k{k}" / "ds"
        _write(root, lengths=(4,), seed=1)
        calls = {"n": 0}
        real = {"replace": ds_module.os.replace, "rmtree": ds_module.shutil.rmtree}

        def kill_at(name, at=k, calls=calls, real=real):
            def step(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == at + 1:
                    raise _Killed
                return real[name](*args, **kwargs)

            return step

        writer = DatasetWriter(root, TOY, overwrite=True)
        writer.add_episode(np.zeros((7, 5), np.float32), np.zeros((7, 2), np.float32), "new task")
        monkeypatch.setattr(ds_module.os, "replace", kill_at("replace"))
        monkeypatch.setattr(ds_module.shutil, "rmtree", kill_at("rmtree"))
        try:
            writer.finalize()
            killed = False
        except _Killed:
            pass
        monkeypatch.undo()
        if not root.exists():  # between the two renames: a reader names the way out
            with pytest.raises(LbmError, match="interrupted `lbm data generate --overwrite`"):
                EpisodeDataset(root)
        recovered = DatasetWriter(root, TOY, overwrite=True)  # the next run recovers first
        recovered.abort()
        data = EpisodeDataset(root)
        seen.append(data.num_frames)
        assert data.num_frames in (4, 7) and audit_dataset(root).ok
        assert sorted(p.name for p in root.parent.iterdir()) == ["ds"], "leftovers were not cleaned"
        k += 1
    assert k >= 3 and seen[0] == 4 and seen[-1] == 7, seen


def test_partial_writes_of_dead_processes_are_removed_and_reported(tmp_path):
    root = tmp_path / "ds"
    dead = tmp_path / ".ds.partial-999999999"  # no such process
    (dead / "meta").mkdir(parents=True)
    live = tmp_path / f".ds.partial-{os.getpid()}-other"  # not a pid suffix: left alone
    live.mkdir()
    writer = DatasetWriter(root, TOY)
    assert any("partial-999999999" in line and "no longer runs" in line for line in writer.recovered)
    writer.abort()
    assert not dead.exists() and live.exists()


# ---- the audit catches each planted defect ---------------------------------------------------


def _rewrite_data(root, fn):
    path = root / "data/chunk-000/file-000.parquet"
    df = pq.read_table(path).to_pandas()
    fn(df)
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path)


def _plant(root, defect):
    if defect == "nan":

        def f(df):
            df.at[3, STATE] = np.where(np.arange(5) == 1, np.nan, df.at[3, STATE]).astype(np.float32)

        _rewrite_data(root, f)
    elif defect == "action_bounds":

        def f(df):
            df.at[2, ACTION] = np.array([1.5, 0.0], np.float32)

        _rewrite_data(root, f)
    elif defect == "index":

        def f(df):
            df.loc[4, "frame_index"] = 7

        _rewrite_data(root, f)
    elif defect == "files":
        (root / "meta/tasks.parquet").unlink()
    elif defect == "timestamps":
        info = json.loads((root / "meta/info.json").read_text())
        info["fps"] = 30
        (root / "meta/info.json").write_text(json.dumps(info))
    elif defect == "schema":
        info = json.loads((root / "meta/info.json").read_text())
        info["total_frames"] += 1
        (root / "meta/info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("defect", ["nan", "action_bounds", "index", "files", "timestamps", "schema"])
def test_audit_catches_planted_defect(tmp_path, defect):
    _write(tmp_path / "ds", lengths=(6, 9, 4, 5))
    clean = audit_dataset(tmp_path / "ds")
    assert clean.ok and clean.has("constant_dims", "warning") and not clean.has(defect)
    _plant(tmp_path / "ds", defect)
    report = audit_dataset(tmp_path / "ds")
    assert not report.ok and report.has(defect, "error"), report.findings


def test_audit_flags_length_outliers_and_missing_video(tmp_path):
    _write(tmp_path / "ds", lengths=(10, 10, 11, 10, 9, 10, 10, 200))
    report = audit_dataset(tmp_path / "ds")
    assert report.has("lengths", "warning") and "7" in next(f.message for f in report.findings if f.check == "lengths")
    _write(tmp_path / "vid", images=True, lengths=(4, 4))
    shutil.rmtree(tmp_path / "vid/videos")
    report = audit_dataset(tmp_path / "vid")
    assert report.has("files", "error")


def test_audit_catches_declared_video_size_that_differs_from_the_frames(tmp_path):
    _write(tmp_path / "ds", lengths=(6, 5), images=True)
    assert audit_dataset(tmp_path / "ds").ok
    info_path = tmp_path / "ds/meta/info.json"
    info = json.loads(info_path.read_text())
    info["features"][image_key("cam")]["shape"] = [64, 64, 3]  # the frames are 32x32
    info_path.write_text(json.dumps(info))
    report = audit_dataset(tmp_path / "ds")
    assert not report.ok and report.has("schema", "error")
    assert any("32x32" in f.message and "[64, 64, 3]" in f.message for f in report.findings), report.findings


def _edit_json(path, edit):
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))


# (file, how it is damaged, words the error must contain): every way lbm read metadata unchecked
BAD_METADATA = [
    ("info", lambda d: d.pop("features"), "features: Field required"),
    ("info", lambda d: d.update(fps="fast"), "fps"),
    ("info", lambda d: d.update(fps=0), "fps"),
    ("info", lambda d: d.update(fps=float("nan")), "fps"),
    ("info", lambda d: d["features"][STATE].update(shape="five"), "features.observation.state.shape"),
    ("info", lambda d: d["features"][STATE].update(shape=[0]), "at least 1"),
    ("info", lambda d: d["features"][ACTION].update(dtype="string"), "needs float values"),
    ("info", lambda d: d["features"].pop(ACTION), "declares no 'action' feature"),
    ("info", lambda d: d.update(total_frames=-3), "total_frames"),
    ("info", lambda d: d.update(codebase_version=3), "codebase_version"),
    ("stats", lambda d: d[STATE].pop("std"), "std: Field required"),
    ("stats", lambda d: d[STATE].update(mean=[0.0, 1.0]), "lengths"),
    ("stats", lambda d: d[ACTION].update(min="low"), "min"),
    ("stats", lambda d: d[ACTION].update(std=[-1.0, 1.0]), "inconsistent at dimension(s) [0]"),
    ("stats", lambda d: d.clear() or d.update(rows=[1, 2]), None),  # foreign keys only: ignored, recomputed
]


@pytest.mark.parametrize(("which", "damage", "words"), BAD_METADATA, ids=[f"{w}-{i}" for i, (w, _, _) in enumerate(BAD_METADATA)])
def test_damaged_metadata_is_named_at_open(tmp_path, which, damage, words):
    root = tmp_path / "ds"
    _write(root, lengths=(5, 4))
    path = root / ("meta/info.json" if which == "info" else "meta/stats.json")
    _edit_json(path, damage)
    if words is None:
        assert EpisodeDataset(root).stats == {}
        return
    with pytest.raises(LbmError) as info:
        EpisodeDataset(root)
    assert words in str(info.value) and path.name in str(info.value), str(info.value)


def test_unreadable_metadata_files(tmp_path):
    root = tmp_path / "ds"
    _write(root, lengths=(5,))
    (root / "meta/stats.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(LbmError, match="stats.json is not readable JSON"):
        EpisodeDataset(root)
    (root / "meta/info.json").write_text("[]")
    with pytest.raises(LbmError, match="info.json is not a valid info.json"):
        EpisodeDataset(root)
