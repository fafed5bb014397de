"""Demonstration generation end to end, on the real Meta-World experts."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lbm.cli import main
from lbm.data import EpisodeDataset, WindowDataset, generate_demos
from lbm.data.audit import audit_dataset
from lbm.errors import LbmError
from lbm.schema import STATE, image_key
from lbm.sim import demo_seed, get_task


def test_generate_state_only_two_tasks(tmp_path):
    out = tmp_path / "demos"
    summary = generate_demos(["reach-v3", "drawer-close"], 2, out, workers=1, progress=False, paraphrases=True)
    ds = EpisodeDataset(out)
    assert [t.task for t in summary.tasks] == ["reach-v3", "drawer-close-v3"]
    assert ds.num_episodes == summary.episodes == sum(t.kept for t in summary.tasks) > 0
    assert ds.num_frames == summary.frames and ds.embodiment.name == "metaworld-sawyer"
    for i in range(ds.num_episodes):
        spec = get_task(ds.episode_sim_task(i))
        assert ds.episode_task(i) in spec.instructions  # canonical or a paraphrase
        ep = ds.episode(i)
        assert ep[STATE].shape == (ds.episode_length(i), 39) and np.abs(ep["action"]).max() <= 1
    seeds = ds.episode_table["seed"].tolist()
    assert seeds[0] == demo_seed("reach-v3", 0)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["lbm"]["generation"]["episodes_per_task"] == 2
    report = audit_dataset(out)
    assert report.ok, report.findings
    w = WindowDataset(ds, history=2, horizon=8)
    assert len(w) == ds.num_frames and w[0]["observation.state_is_pad"].tolist() == [True, False]


def test_generate_with_a_small_camera_through_the_cli(tmp_path, capsys):
    out = tmp_path / "cam"
    rc = main(
        [
            "data",
            "generate",
            "--tasks",
            "reach",
            "--episodes-per-task",
            "2",
            "--out",
            str(out),
            "--cameras",
            "corner",
            "--image-size",
            "32",
            "--workers",
            "2",
        ]
    )
    assert rc == 0 and "reach-v3" in capsys.readouterr().out
    ds = EpisodeDataset(out)
    assert ds.cameras == ("corner",)
    frames = ds.episode(ds.num_episodes - 1, cameras=("corner",))[image_key("corner")]
    assert frames.shape == (ds.episode_length(ds.num_episodes - 1), 32, 32, 3) and frames.std() > 5
    assert main(["data", "audit", str(out)]) == 0
    assert main(["data", "info", str(out)]) == 0
    assert main(["data", "generate", "--tasks", "reach", "--episodes-per-task", "1", "--out", str(out)]) == 2  # exists
    assert "already exists" in capsys.readouterr().err


def test_bad_generate_input_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "generate", "--tasks", "raech", "--out", str(tmp_path / "x")]) == 2
    assert "Did you mean" in capsys.readouterr().err
    with pytest.raises(LbmError, match="camera"):
        generate_demos(["reach-v3"], 1, tmp_path / "y", cameras=("cornr",), progress=False)
    with pytest.raises(LbmError, match="at least 1"):
        generate_demos(["reach-v3"], 0, tmp_path / "z", progress=False)
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert not any(tmp_path.iterdir())


def test_interrupted_generation_leaves_no_complete_looking_dataset(tmp_path):
    out = tmp_path / "demos"
    # Ctrl-C as in a terminal: a test run started in the background (`cmd &` in a script) inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt, so the child restores the default handler first.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); from lbm.cli import main; "
        f"sys.exit(main(['data','generate','--tasks','mt10','--episodes-per-task','50','--out',{str(out)!r},'--workers','1']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".demos.partial-*")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    assert not list(tmp_path.glob(".demos.partial-*"))  # the temporary folder is cleaned up too
    with pytest.raises(LbmError, match="does not exist"):
        EpisodeDataset(out)
    # A hard kill cannot clean up, but the leftover folder is hidden and never looks complete.
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while time.time() < deadline + 60 and not list(tmp_path.glob(".demos.partial-*")):
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert not out.exists()
    for partial in tmp_path.glob(".demos.partial-*"):
        with pytest.raises(LbmError, match="info.json is missing"):
            EpisodeDataset(partial)


def test_a_killed_generation_resumes_without_rerunning_finished_episodes(tmp_path):
    out, staging = tmp_path / "resume", tmp_path / ".resume.episodes"
    args = ["--tasks", "reach,button-press", "--episodes-per-task", "8", "--workers", "1"]
    code = f"import sys; from lbm.cli import main; sys.exit(main(['data','generate',*{args!r},'--out',{str(out)!r}]))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(staging.glob("*.npz"))) < 5:  # one unit of 5 episodes finished
        time.sleep(0.05)
    proc.kill()  # no chance to clean up
    proc.wait()
    finished = len(list(staging.glob("*.npz")))
    assert not out.exists() and 5 <= finished < 16

    summary = generate_demos(["reach-v3", "button-press"], 8, out, workers=1, progress=False)
    assert summary.resumed == finished  # nothing finished was simulated again
    assert not staging.exists()  # cleaned up once the dataset is complete
    fresh = generate_demos(["reach-v3", "button-press"], 8, tmp_path / "fresh", workers=1, progress=False)
    a, b = EpisodeDataset(out), EpisodeDataset(tmp_path / "fresh")
    assert fresh.resumed == 0 and summary.episodes == fresh.episodes and a.num_frames == b.num_frames
    np.testing.assert_array_equal(a.frames(STATE), b.frames(STATE))  # resumed = generated in one go

    # Staged episodes of other settings are never mixed in.
    staging = tmp_path / ".other.episodes"
    staging.mkdir()
    (staging / "settings.json").write_text('{"tasks": ["push-v3"]}')
    (staging / "0000-000000.npz").write_bytes(b"junk")
    generate_demos(["reach-v3"], 1, tmp_path / "other", workers=1, progress=False)
    assert EpisodeDataset(tmp_path / "other").num_episodes == 1 and not staging.exists()

    # A staged episode that cannot be read (settings match) is a clear error, never a traceback.
    staging = tmp_path / ".damaged.episodes"
    staging.mkdir()
    (staging / "settings.json").write_text(
        json.dumps(
            {"tasks": ["reach-v3"], "cameras": [], "image_size": 96, "max_steps": None, "paraphrases": False, "seed_offset": 0},
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    (staging / "0000-000000.npz").write_bytes(b"junk")
    with pytest.raises(LbmError, match="unreadable"):
        generate_demos(["reach-v3"], 1, tmp_path / "damaged", workers=1, progress=False)
