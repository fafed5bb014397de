"""Stand-in policies for runner tests: the real Policy contract around a simple ``actions`` function."""

from __future__ import annotations

import numpy as np

from lbm.policies.base import Chunk, ChunkRequest


class StubPolicy:
    """Subclasses implement ``actions(observations) -> (B, T, A)``; state is the episode's seed."""

    embodiments: dict = {}
    horizon, history, execute_steps = 4, 1, None

    def describe(self) -> dict:
        return {"family": type(self).__name__, "cameras": []}

    def reset(self, seed=None):
        return seed

    def actions(self, observations) -> np.ndarray:
        raise NotImplementedError

    def predict_chunk(self, observations, states, request=ChunkRequest()):
        return Chunk(np.asarray(self.actions(observations), np.float32), tuple(states))


def unit_stats(embodiment, state_spread: float = 1.0, action_spread: float = 1.0) -> dict:
    """``{embodiment: {feature: FeatureStats}}`` centred at 0 with the given spreads (no data needed)."""
    from lbm.data.normalize import FeatureStats
    from lbm.schema import ACTION, STATE

    return {
        embodiment.name: {
            STATE: FeatureStats.unit(embodiment.state_dim, state_spread),
            ACTION: FeatureStats.unit(embodiment.action_dim, action_spread),
        }
    }
