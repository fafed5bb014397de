"""Round trip with LeRobot's own ``LeRobotDataset`` (marker ``interop``; run with ``make test-interop``).

``lerobot`` 0.4.x pins ``torch<2.11`` and ``huggingface-hub<0.36``, so it cannot live in our venv.
This test builds a separate venv in a temporary folder: our CPU ``torch==2.13.0`` first (so nothing
pulls a multi-GB CUDA build), then ``lerobot`` with ``--no-deps`` plus only the packages its dataset
code imports. It then (1) loads a dataset we wrote with ``LeRobotDataset(repo_id, root=...)`` and
compares frames, and (2) has LeRobot write a dataset that our :class:`EpisodeDataset` reads back.
If the environment cannot be built (no registry, incompatible wheels) the test skips and says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lbm.data import DatasetWriter, EpisodeDataset
from lbm.schema import ACTION, STATE, Embodiment, image_key

pytestmark = pytest.mark.interop

LEROBOT = "lerobot==0.4.4"
DEPS = [
    "datasets>=4,<5", "huggingface-hub>=0.34.2,<0.36", "draccus==0.10.0", "av>=15,<16", "packaging<26", "einops",
    "jsonlines", "deepdiff", "termcolor", "gymnasium>=1.1.1", "pandas", "pyarrow", "pillow",
]
EMB = Embodiment("toy-arm", 5, 2, (-1, -1), (1, 1), cameras=("cam",), control_hz=10)


def _pip(python: Path, *args: str, timeout: int = 900) -> None:
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        pytest.skip(f"cannot build the LeRobot environment: pip install {' '.join(args)} failed: {r.stderr[-400:]}")


@pytest.fixture(scope="module")
def lerobot_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("lerobot-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    _pip(python, "torch==2.13.0")
    _pip(python, "--no-deps", LEROBOT, "torchvision")
    _pip(python, *DEPS)
    probe = subprocess.run([str(python), "-c", "from lerobot.datasets.lerobot_dataset import LeRobotDataset"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"{LEROBOT} does not import in the side environment: {probe.stderr.strip().splitlines()[-1:]}")
    return python


def _run(python: Path, code: str) -> str:
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600,
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_lerobot_reads_our_dataset(tmp_path, lerobot_python):
    rng = np.random.default_rng(0)
    root = tmp_path / "ours"
    states, actions = [], []
    with DatasetWriter(root, EMB, cameras=("cam",)) as w:
        for e, L in enumerate((6, 9)):
            s, a = rng.normal(size=(L, 5)).astype(np.float32), rng.uniform(-1, 1, (L, 2)).astype(np.float32)
            img = np.full((L, 32, 32, 3), 100, np.uint8) + np.arange(L, dtype=np.uint8)[:, None, None, None] * 5
            w.add_episode(s, a, f"task {e}", images={"cam": img})
            states.append(s), actions.append(a)
    code = f"""
import json, numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/ours", root={str(root)!r})
out = {{"len": len(ds), "episodes": ds.num_episodes, "items": []}}
for i in (0, 5, 6, 14):
    it = ds[i]
    out["items"].append({{"state": it["{STATE}"].tolist(), "action": it["{ACTION}"].tolist(), "task": it["task"],
                          "img_mean": float(it["{image_key('cam')}"].float().mean()), "ep": int(it["episode_index"])}})
print(json.dumps(out))
"""
    got = json.loads(_run(lerobot_python, code).strip().splitlines()[-1])
    assert got["len"] == 15 and got["episodes"] == 2
    flat_s, flat_a = np.concatenate(states), np.concatenate(actions)
    for i, item in zip((0, 5, 6, 14), got["items"]):
        np.testing.assert_array_equal(np.float32(item["state"]), flat_s[i])
        np.testing.assert_array_equal(np.float32(item["action"]), flat_a[i])
        assert item["task"] == f"task {item['ep']}"
    frame = (100 + 5 * np.array([0, 5, 0, 8])) / 255  # LeRobot returns images as float in [0, 1]
    np.testing.assert_allclose([it["img_mean"] for it in got["items"]], frame, atol=0.03)


def test_we_read_a_dataset_lerobot_wrote(tmp_path, lerobot_python):
    root = tmp_path / "theirs"
    code = f"""
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
features = {{"observation.state": {{"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]}},
            "action": {{"dtype": "float32", "shape": (2,), "names": ["x", "y"]}}}}
ds = LeRobotDataset.create("local/theirs", fps=15, root={str(root)!r}, robot_type="toybot", features=features, use_videos=False)
for e in range(2):
    for t in range(4 + e):
        ds.add_frame({{"observation.state": np.full(3, 10 * e + t, np.float32), "action": np.full(2, -t, np.float32),
                      "task": f"do {{e}}"}})
    ds.save_episode()
ds.finalize()
print("written")
"""
    _run(lerobot_python, code)
    ours = EpisodeDataset(root)
    assert (ours.num_episodes, ours.num_frames, ours.fps) == (2, 9, 15.0)
    assert ours.embodiment.name == "toybot" and ours.embodiment.state_names == ("a", "b", "c")
    assert [ours.episode_task(i) for i in range(2)] == ["do 0", "do 1"]
    np.testing.assert_array_equal(ours.episode(1)[STATE][:, 0], [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(ours.episode(0)[ACTION][:, 1], [0, -1, -2, -3])
