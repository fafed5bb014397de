"""An in-process policy as a chunk source for :class:`lbm_client.ChunkBroker` (same calls as a Client)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lbm.policies.base import Policy
from lbm.schema import Observation


class LocalSource:
    """``infer(obs dict) -> {"actions": (T, A)}`` and ``reset(seed)`` for one robot, on a policy in this process.

    Lets the same robot loop (a :class:`lbm_client.ChunkBroker`) run against a served or a local
    policy. It keeps the robot's policy state between calls.
    """

    def __init__(self, policy: Policy, seed: int | None = None) -> None:
        self.policy = policy
        self.state = policy.reset(seed)

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """One chunk for the observation dict of the wire protocol (``state``, ``prompt``, ``images``, ``embodiment``)."""
        o = Observation(
            state=obs["state"],
            images=dict(obs.get("images", {})),
            instruction=obs.get("prompt", ""),
            embodiment=obs.get("embodiment", ""),
        )
        chunk = self.policy.predict_chunk([o], [self.state])
        self.state = chunk.states[0]
        return {"actions": np.asarray(chunk.actions[0], dtype=np.float32)}

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (seeded noise when ``seed`` is given)."""
        self.state = self.policy.reset(seed)
