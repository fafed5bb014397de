"""``lbm serve --lerobot``: a LeRobot checkpoint is checked against the embodiment before anything runs.

The checks (:func:`lbm_client.lerobot_server.check_checkpoint`) read only the checkpoint's files, so
they are tested here without LeRobot, on checkpoint folders laid out as LeRobot 0.4's
``lerobot-train`` writes them. Serving and evaluating a real LeRobot checkpoint is the interop test
(``tests/test_peers_interop.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lbm.data import DatasetWriter
from lbm.serve.lerobot import dataset_embodiment, resolve
from lbm.sim import METAWORLD_EMBODIMENT
from lbm_client.lerobot_server import CheckpointError, check_checkpoint, pretrained_dir

EMB = METAWORLD_EMBODIMENT.to_json()  # state 39, action 4, cameras corner/...
S, A = EMB["state_dim"], EMB["action_dim"]
NORM = {"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ENV": "MEAN_STD", "ACTION": "MEAN_STD"}


def _stats(features: dict[str, int]) -> dict[str, np.ndarray]:
    out = {}
    for key, dim in features.items():
        for stat in ("mean", "std", "min", "max", "q01", "q99"):
            out[f"{key}.{stat}"] = np.zeros(dim, np.float32)
    return out


def write_checkpoint(
    root: Path,
    state: int = S,
    action: int = A,
    env_state: int | None = S,
    cameras: tuple[str, ...] = (),
    drop_stat: str | None = None,
    drop_file: str | None = None,
    dataset_root: str | None = None,
) -> Path:
    """A LeRobot 0.4 ``lerobot-train`` output folder (``checkpoints/last/pretrained_model``) with these features."""
    folder = root / "checkpoints" / "last" / "pretrained_model"
    folder.mkdir(parents=True)
    inputs: dict = {"observation.state": {"type": "STATE", "shape": [state]}}
    if env_state is not None:
        inputs["observation.environment_state"] = {"type": "ENV", "shape": [env_state]}
    for cam in cameras:
        inputs[f"observation.images.{cam}"] = {"type": "VISUAL", "shape": [3, 64, 64]}
    outputs = {"action": {"type": "ACTION", "shape": [action]}}
    config = {"type": "act", "input_features": inputs, "output_features": outputs, "normalization_mapping": NORM,
              "n_action_steps": 100, "chunk_size": 100}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    dims = {k: v["shape"][0] for k, v in {**inputs, **outputs}.items() if v["type"] != "VISUAL"}
    for name, step, registry in (("preprocessor", 3, "normalizer_processor"), ("postprocessor", 0, "unnormalizer_processor")):
        state_file = f"policy_{name}_step_{step}_{registry}.safetensors"
        stats = {k: v for k, v in _stats(dims).items() if k != drop_stat}
        save_file(stats, str(folder / state_file))
        steps = [{"registry_name": "device_processor", "config": {"device": "cpu"}},
                 {"registry_name": registry, "config": {"norm_map": NORM}, "state_file": state_file}]  # fmt: skip
        (folder / f"policy_{name}.json").write_text(json.dumps({"name": f"policy_{name}", "steps": steps}))
    if drop_file:
        (folder / drop_file).unlink()
    if dataset_root:
        (folder / "train_config.json").write_text(json.dumps({"dataset": {"root": dataset_root}}))
    return root


def test_a_matching_checkpoint_is_accepted_wherever_it_is_pointed_at(tmp_path):
    run = write_checkpoint(tmp_path / "run")
    folder = run / "checkpoints" / "last" / "pretrained_model"
    for path in (run, run / "checkpoints" / "last", folder):
        info = check_checkpoint(path, EMB, env_state_from_state=True)
        assert (info.path, info.state_dim, info.action_dim, info.env_state, info.cameras) == (folder, S, A, True, ())
    info = check_checkpoint(write_checkpoint(tmp_path / "plain", env_state=None), EMB)
    assert not info.env_state and info.policy_type == "act" and info.n_action_steps == 100


BAD = [  # (name, checkpoint settings, env_state_from_state, words the message must contain)
    ("state-size", dict(state=12), True, ("[12]", "39", "--embodiment")),
    ("action-size", dict(action=7), True, ("[7]", "4 values per action")),
    ("env-state-unannounced", dict(), False, ("observation.environment_state", "--env-state-from-state")),
    ("env-state-shape", dict(env_state=5), True, ("environment_state", "[5]")),
    ("unknown-camera", dict(cameras=("wrist",)), True, ("wrist", "lacks")),
    ("no-state-stats", dict(drop_stat="observation.state.std"), True, ("observation.state", "MEAN_STD", "'std'")),
    ("no-action-stats", dict(drop_stat="action.mean"), True, ("action", "'mean'")),
    ("no-preprocessor", dict(drop_file="policy_preprocessor.json"), True, ("policy_preprocessor.json", "lerobot-train")),
]


@pytest.mark.parametrize("kwargs,from_state,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_checkpoint_that_does_not_fit_is_refused_with_the_reason(tmp_path, kwargs, from_state, words):
    run = write_checkpoint(tmp_path / "run", **kwargs)
    with pytest.raises(CheckpointError) as caught:
        check_checkpoint(run, EMB, env_state_from_state=from_state)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_a_folder_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a LeRobot checkpoint"):
        pretrained_dir(tmp_path)
    (tmp_path / "pretrained_model").mkdir()
    (tmp_path / "pretrained_model" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a LeRobot policy config"):
        check_checkpoint(tmp_path, EMB)


def test_the_embodiment_defaults_to_the_training_dataset_robot(tmp_path):
    data = tmp_path / "data"  # one short episode of a Meta-World dataset, as lbm data generate writes it
    with DatasetWriter(data, METAWORLD_EMBODIMENT) as writer:
        writer.add_episode(np.zeros((3, S), np.float32), np.zeros((3, A), np.float32), "reach the goal")
    run = write_checkpoint(tmp_path / "run", dataset_root=str(data))
    assert dataset_embodiment(run) == METAWORLD_EMBODIMENT.name
    info, body = resolve(run, "", env_state_from_state=True)
    assert body == METAWORLD_EMBODIMENT and info.state_dim == S
    assert dataset_embodiment(write_checkpoint(tmp_path / "orphan")) == ""


def _lbm(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LBM_LEROBOT_PYTHON"} | {"COLUMNS": "200", **env}
    return subprocess.run([sys.executable, "-m", "lbm.cli", *args], capture_output=True, text=True, timeout=300, env=environ)


CLI = [  # (name, arguments after the checkpoint, words)
    ("no-robot-known", ["--lerobot", "--env-state-from-state"], ("Cannot tell which robot", "--embodiment")),
    ("unknown-embodiment", ["--lerobot", "--embodiment", "metaworld-sawyr"], ("metaworld-sawyer",)),
    ("no-lerobot-python", ["--lerobot", "--embodiment", "metaworld-sawyer", "--env-state-from-state"], ("LBM_LEROBOT_PYTHON",)),
    (
        "python-without-lerobot",
        ["--lerobot", "--embodiment", "metaworld-sawyer", "--env-state-from-state", "--lerobot-python", sys.executable],
        ("cannot run the LeRobot server", "lerobot"),
    ),  # fmt: skip
    ("lerobot-flags-alone", ["--embodiment", "metaworld-sawyer"], ("add --lerobot",)),
    ("exposed-without-token", ["--lerobot", "--host", "0.0.0.0"], ("without a token",)),
]


@pytest.mark.parametrize("args,words", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_lbm_serve_lerobot_bad_input_is_one_clear_error(tmp_path, args, words):
    run = write_checkpoint(tmp_path / "run")
    done = _lbm("serve", str(run), *args)
    message = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in message, message
    for word in words:
        assert word in message, (word, message)
