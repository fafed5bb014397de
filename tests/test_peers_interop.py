"""LeRobot's ACT and Diffusion, trained by ``lerobot-train`` on an lbm dataset, served by ``lbm serve --lerobot``
and evaluated by ``lbm eval`` (marker ``interop``; ``make test-interop``).

The real LeRobot 0.4.4 in its own environment (``tests/lerobot_env.py``), driven by the same code as
``benchmarks/peers/run.py`` (so the benchmark's steps are what is tested): a few training steps per
policy, two blind paired trials each, and the adapter's refusal of a checkpoint that does not fit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lerobot_env
from lbm.sim import METAWORLD_EMBODIMENT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
import run as peers  # noqa: E402

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def lerobot_python() -> str:
    try:
        return str(lerobot_env.build())
    except lerobot_env.Unavailable as error:
        pytest.skip(f"cannot build the LeRobot environment: {error}")


def test_lerobot_policies_train_serve_and_are_evaluated_by_lbm(tmp_path, lerobot_python):
    setting = peers.Setting("interop", "reach-v3", 3, 2)
    sdir = tmp_path / setting.name
    peers.sh([peers.LBM, "data", "generate", "--tasks", "reach-v3", "--episodes-per-task", "3", "--out", str(sdir / "data"),
              "--workers", "1"], sdir / "logs" / "data.log")  # fmt: skip
    env = peers.lerobot_env_vars(tmp_path)
    peers.sh([lerobot_python, str(peers.HERE / "lerobot_side.py"), "prepare", str(sdir / "data"), str(sdir / "data-lerobot")],
             sdir / "logs" / "prepare.log", env=env, cwd=tmp_path)  # fmt: skip
    info = json.loads((sdir / "data-lerobot" / "meta" / "info.json").read_text())
    assert info["features"]["observation.environment_state"]["shape"] == [METAWORLD_EMBODIMENT.state_dim]
    checkpoints = {}
    for arm in (a for a in peers.ARMS if a.toolkit == "lerobot"):
        trained = peers.train(arm, sdir, lerobot_python, 2, 0, "interop", tmp_path)
        assert trained["steps"] == 2 and Path(trained["checkpoint"], "model.safetensors").is_file()
        checkpoints[arm.name] = trained["checkpoint"]
    result = peers.evaluate(setting, sdir, checkpoints, lerobot_python, "none", "interop")
    rows = {r["policy"]: r for r in result["compare"]["success"]}
    assert set(rows) == set(checkpoints)
    assert all(r["n"] == 2 and r["task"] == "reach-v3" for r in rows.values())
    for name, served in result["served"].items():  # every control step went through LeRobot's select_action
        assert served["errors"] == 0 and served["requests"] >= 2, (name, served)
    emb = tmp_path / "emb.json"
    emb.write_text(json.dumps(METAWORLD_EMBODIMENT.to_json()))
    r = subprocess.run([lerobot_python, str(peers.HERE / "lerobot_side.py"), "latency", checkpoints["lerobot_act"], str(emb)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    latency = json.loads(r.stdout.strip().splitlines()[-1])
    assert latency["chunk_length"] == 100 and latency["chunk_ms_median"] > 0 and latency["parameters"] > 1e6

    # The adapter itself refuses a checkpoint for another body, before loading LeRobot's model.
    wrong = {**METAWORLD_EMBODIMENT.to_json(), "name": "other", "state_dim": 12}
    cmd = [lerobot_python, "-m", "lbm_client.lerobot_server", checkpoints["lerobot_act"], "--embodiment-json", json.dumps(wrong)]
    r = subprocess.run([*cmd, "--env-state-from-state"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "expects a state of [39] values but embodiment 'other' has 12" in r.stderr
