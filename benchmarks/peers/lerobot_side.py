"""The LeRobot half of the peers benchmark; runs in LeRobot's own environment (``tests/lerobot_env.py``).

    python lerobot_side.py prepare SRC OUT        # an lbm dataset -> the copy LeRobot's ACT/Diffusion can train on
    python lerobot_side.py latency CKPT EMB.json  # chunk latency at batch 1 of a lerobot-train checkpoint

``prepare``: LeRobot 0.4.4's ACT and Diffusion refuse state-only data ("You must provide at least one
image or the environment state among the inputs"), so the copy gains ``observation.environment_state``,
a copy of ``observation.state``, made with LeRobot's own ``dataset_tools.modify_features``; the
state's statistics are copied to it (LeRobot computes none for an added feature). Each prints one
JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

STATE, ENV_STATE = "observation.state", "observation.environment_state"


def prepare(src: str, out: str) -> dict:
    from lerobot.datasets.dataset_tools import modify_features
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("local/lbm-source", root=src, video_backend="pyav")
    feature = dataset.meta.features[STATE]
    info = {"dtype": "float32", "shape": list(feature["shape"]), "names": feature.get("names")}
    # The per-row callable form: the (N, D) array form fails under pandas 3 in LeRobot 0.4.4.
    copy = modify_features(
        dataset,
        add_features={ENV_STATE: (lambda row, episode, frame: row[STATE], info)},
        output_dir=out,
        repo_id="local/lbm-peers",
    )
    stats_file = Path(out) / "meta" / "stats.json"
    stats = json.loads(stats_file.read_text())
    stats[ENV_STATE] = stats[STATE]
    stats_file.write_text(json.dumps(stats, indent=2))
    return {"frames": len(copy), "episodes": copy.num_episodes}


def latency(checkpoint: str, embodiment_json: str, repeats: int = 50) -> dict:
    """Median and p90 of one chunk at batch 1, as an episode pays it (pre-processing, model, post-processing)."""
    import torch

    from lbm_client.lerobot_server import LeRobotAdapter, check_checkpoint

    embodiment = json.loads(Path(embodiment_json).read_text())
    adapter = LeRobotAdapter(check_checkpoint(checkpoint, embodiment, env_state_from_state=True), embodiment)
    policy, state = adapter.policy, torch.zeros(1, adapter.info.state_dim)
    batch = {STATE: state, ENV_STATE: state.clone(), "task": [""]}
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            # After reset the action queue is empty, so select_action computes a whole chunk (as every
            # n_action_steps-th control step of an episode does) and returns its first action.
            policy.reset()
            t0 = time.perf_counter()
            adapter.post(policy.select_action(adapter.pre(batch)))
            if i >= 3:  # warm-up calls are not counted
                times.append(1000.0 * (time.perf_counter() - t0))
    config = adapter.info.config
    chunk_length = int(config.get("chunk_size") or config.get("horizon") or 0)
    n_action_steps = int(adapter.info.n_action_steps or chunk_length)
    return {
        "chunk_ms_median": float(np.median(times)),
        "chunk_ms_p90": float(np.percentile(times, 90)),
        "chunk_length": chunk_length,
        "executed_per_chunk": n_action_steps,
        "parameters": adapter.parameters,
    }


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    result = {"prepare": prepare, "latency": latency}[command](*args)
    print(json.dumps(result), flush=True)
