"""Tiny synthetic datasets for the policy and training tests, written through lbm.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lbm.schema import Embodiment

INSTRUCTIONS = ("push the puck to the goal", "open the drawer")


def tiny_embodiment(name: str = "toy-arm", state_dim: int = 6, action_dim: int = 3) -> Embodiment:
    return Embodiment(name, state_dim, action_dim, (-1.0,) * action_dim, (1.0,) * action_dim, cameras=("corner",))


def write_tiny_dataset(
    root: Path,
    *,
    episodes: int = 6,
    length: int = 24,
    embodiment: Embodiment | None = None,
    cameras: tuple[str, ...] = (),
    seed: int = 0,
    sim_task: str = "tiny",
) -> Path:
    """Episodes whose actions are a smooth function of state and instruction: learnable in seconds. Episode
    ``i`` is recorded as simulator task ``{sim_task}{i % 2}``."""
    from lbm.data.dataset import DatasetWriter

    emb = embodiment or tiny_embodiment()
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, emb, cameras=cameras) as w:
        for ep in range(episodes):
            task = ep % len(INSTRUCTIONS)
            s0 = rng.uniform(-1, 1, emb.state_dim)
            t = np.arange(length)[:, None] / length
            states = (s0 + 0.5 * np.sin(2 * np.pi * t + task)).astype(np.float32)
            actions = (0.8 * np.tanh(states[:, : emb.action_dim] * (1 if task == 0 else -1))).astype(np.float32)
            images = {c: rng.integers(0, 255, (length, 32, 32, 3), dtype=np.uint8) for c in cameras}
            w.add_episode(states, actions, INSTRUCTIONS[task], images=images, sim_task=f"{sim_task}{task}")
    return root
