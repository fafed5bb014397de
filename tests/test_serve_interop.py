"""Round trip with the real, unmodified `openpi-client` from PyPI (marker: interop).

openpi-client pins numpy<2, so it gets its own virtual environment in a temporary folder; the
test skips with the reason when that environment cannot be built (no registry access, no wheel).
Our server runs in this process on 127.0.0.1 with an ephemeral port; openpi's
``WebsocketClientPolicy`` (and its ``ActionChunkBroker``) drive it from a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv

import pytest

pytestmark = pytest.mark.interop

CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
from openpi_client import action_chunk_broker, websocket_client_policy

port, prompt = int(sys.argv[1]), sys.argv[2]
policy = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
meta = policy.get_server_metadata()
obs = {"state": np.linspace(-0.5, 0.5, 39).astype(np.float32), "prompt": prompt}
reply = policy.infer(obs)
out = {
    "numpy": np.__version__,
    "server": meta["server"], "horizon": meta["action_horizon"],
    "shape": list(reply["actions"].shape), "dtype": str(reply["actions"].dtype),
    "timing": sorted(reply["server_timing"]),
    "finite": bool(np.all(np.isfinite(reply["actions"]))),
}
try:
    policy.infer({"state": np.zeros(3, np.float32), "prompt": prompt})
    out["error"] = None
except RuntimeError as error:
    out["error"] = str(error)
out["after_error_shape"] = list(policy.infer(obs)["actions"].shape)
broker = action_chunk_broker.ActionChunkBroker(policy, action_horizon=meta["action_horizon"])
steps = [broker.infer(obs)["actions"] for _ in range(2 * meta["action_horizon"] + 1)]
out["broker_step_shape"] = list(steps[0].shape)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def openpi_python(tmp_path_factory):
    root = tmp_path_factory.mktemp("openpi_venv")
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
    except Exception as error:  # noqa: BLE001 - depends on the machine
        pytest.skip(f"cannot create a virtual environment for openpi-client: {error}")
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # openpi-client imports typing_extensions without declaring it (seen with the PyPI release), so add it.
    try:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "openpi-client", "typing_extensions"],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot install openpi-client from PyPI into a fresh venv: {error.stderr.strip()[-500:]}")
    except subprocess.TimeoutExpired:
        pytest.skip("installing openpi-client from PyPI took over 10 minutes")
    return python


def test_openpi_client_round_trip(openpi_python, tmp_path):
    import torch

    from lbm.serve import PolicyServer, ServerConfig
    from lbm.train import load_policy
    from serve_helpers import INSTRUCTION, fresh_checkpoint

    torch.set_num_threads(1)
    policy = load_policy(fresh_checkpoint(tmp_path / "ckpt", "flow", "tiny", horizon=8))
    # The subprocess must reach 127.0.0.1 directly, whatever proxy this machine's environment names.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    with PolicyServer(policy, ServerConfig(port=0, metrics_every_s=0)) as server:
        script = tmp_path / "drive.py"
        script.write_text(CLIENT_SCRIPT)
        done = subprocess.run(
            [str(openpi_python), str(script), str(server.port), INSTRUCTION], capture_output=True, text=True, timeout=300, env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        requests = server.metrics.requests
    assert out["numpy"].startswith("1."), out  # really the numpy<2 world of openpi-client
    assert out["server"] == "lbm" and out["horizon"] == 8
    assert out["shape"] == [8, 4] and out["dtype"] == "float32" and out["finite"]
    assert {"infer_ms", "queue_ms", "total_ms"} <= set(out["timing"])
    assert out["error"] and "needs (39,)" in out["error"]  # openpi raises our text frame as RuntimeError
    assert out["after_error_shape"] == [8, 4]  # the connection survived the bad request
    assert out["broker_step_shape"] == [4]
    assert requests == 2 + 3  # two direct infers + three chunks for 17 broker steps
    print(sys.version, out)
