"""``lbm serve --lerobot CKPT``: a LeRobot checkpoint behind the same protocol, run in LeRobot's own environment.

LeRobot 0.4.x pins a torch that cannot live beside lbm's, so the model runs in a second Python (the
environment the user trains LeRobot in) as ``python -m lbm_client.lerobot_server``; that module
needs only lbm_client's own files, which are put on that Python's path. This side picks the
embodiment, checks the checkpoint against it (sizes, normalization statistics, cameras) before
anything starts, applies the server's bind and token rules, and relays the server's output. Then
``lbm eval --policy NAME=ws://HOST:PORT`` evaluates the LeRobot policy with the same initial
states, shifts, blinding and statistics as an lbm checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import lbm_client
from lbm.data.meta import read_info
from lbm.errors import LbmError
from lbm.schema import Embodiment
from lbm.sim import embodiment_named
from lbm_client.lerobot_server import CheckpointError, CheckpointInfo, check_checkpoint, pretrained_dir

PYTHON_ENV = "LBM_LEROBOT_PYTHON"


def dataset_embodiment(checkpoint: Path) -> str:
    """The ``robot_type`` of the dataset a LeRobot checkpoint was trained on ('' when it cannot be read)."""
    try:
        folder = pretrained_dir(checkpoint)
        root = json.loads((folder / "train_config.json").read_text())["dataset"]["root"]
        return read_info(Path(root) / "meta" / "info.json").robot_type or ""
    except (CheckpointError, LbmError, OSError, ValueError, KeyError, TypeError):
        return ""


def resolve(checkpoint: Path, embodiment: str, env_state_from_state: bool) -> tuple[CheckpointInfo, Embodiment]:
    """Check ``checkpoint`` against ``embodiment`` (default: its dataset's robot type) or raise :class:`LbmError`."""
    name = embodiment or dataset_embodiment(checkpoint)
    if not name:
        raise LbmError(
            f"Cannot tell which robot {checkpoint} acts for: its train_config.json names no readable dataset with a "
            "robot_type. Pass --embodiment NAME (e.g. metaworld-sawyer)."
        )
    body = embodiment_named(name)
    try:
        return check_checkpoint(checkpoint, body.to_json(), env_state_from_state), body
    except CheckpointError as error:
        raise LbmError(str(error)) from None


def lerobot_python(given: str) -> str:
    """The Python with LeRobot in it: ``given``, else ``$LBM_LEROBOT_PYTHON``; checked to import what the server needs."""
    python = given or os.environ.get(PYTHON_ENV, "")
    if not python:
        raise LbmError(
            "lbm serve --lerobot needs the Python of an environment with LeRobot installed (LeRobot pins its own torch, "
            f"so it cannot run in lbm's). Pass --lerobot-python PATH or set {PYTHON_ENV}."
        )
    if not shutil.which(python):
        raise LbmError(f"--lerobot-python {python}: no such executable.")
    probe = subprocess.run(
        [python, "-c", "import lerobot, msgpack, websockets, safetensors"], capture_output=True, text=True, timeout=120
    )
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise LbmError(
            f"{python} cannot run the LeRobot server ({last}). Install lerobot there, plus msgpack and websockets "
            "(pip install 'msgpack>=1,<2' 'websockets>=13,<18')."
        )
    return python


def command(python: str, info: CheckpointInfo, body: Embodiment, host: str, port: int, threads: int, device: str) -> list[str]:
    """The command line that serves ``info`` in LeRobot's environment."""
    cmd = [python, "-m", "lbm_client.lerobot_server", str(info.path), "--embodiment-json", json.dumps(body.to_json())]
    cmd += ["--host", host, "--port", str(port), "--device", device, "--threads", str(threads)]
    return cmd + (["--env-state-from-state"] if info.env_state else [])


def child_env(token: str) -> dict[str, str]:
    """The server's environment: lbm_client importable, offline, the token passed through."""
    client_src = str(Path(lbm_client.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (client_src, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    if token:
        env["LBM_SERVE_TOKEN"] = token
    return env


def run(cmd: list[str], token: str) -> int:
    """Run the server in the foreground until it stops, Ctrl-C or SIGTERM (passed on); its output goes to ours."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    process = subprocess.Popen(cmd, env=child_env(token))
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()  # the server prints its summary (requests, errors, clipped actions) and exits
        try:
            return process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
