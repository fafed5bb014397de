"""Built-in pseudo-policies for baselines and tests: ``expert`` and ``random``.

Both are :class:`lbm.policies.base.PrivilegedPolicy`: their ``reset`` takes the episode's
environment and their state keeps it. The expert reads the true simulator state through
``env.expert_action()`` (so observation-noise shifts do not disturb it: it is an upper reference,
not a competitor); the random policy only reads the action bounds of ``env.embodiment``, and its
draws are seeded per episode like every policy's noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lbm.errors import LbmError, did_you_mean
from lbm.policies.base import Chunk, ChunkRequest, EpisodeSource, PrivilegedPolicy, noise_seed
from lbm.schema import Observation


@dataclass(frozen=True)
class EnvState:
    """A privileged policy's episode state: the environment it reads, and its seed and call count."""

    env: EpisodeSource
    seed: int | None = None
    calls: int = 0


def _env_states(states: Sequence[EnvState], n: int) -> Sequence[EnvState]:
    if len(states) != n or not all(isinstance(s, EnvState) for s in states):
        raise LbmError(
            f"A privileged policy needs one state from its reset(env=...) per observation; got {len(states)} "
            f"states for {n} observations."
        )
    return states


class ExpertPolicy(PrivilegedPolicy):
    """The simulator's scripted expert, one action per chunk (closed loop at every step)."""

    execute_steps = 1
    """The expert must see every state: re-query after each action."""

    def reset(self, seed: int | None = None, *, env: EpisodeSource) -> EnvState:
        """The episode state: the environment whose expert acts."""
        return EnvState(env, seed)

    def predict_chunk(
        self, observations: Sequence[Observation], states: Sequence[EnvState], request: ChunkRequest = ChunkRequest()
    ) -> Chunk:
        """``(B, 1, action_dim)`` expert actions for the true state of each slot's environment."""
        states = _env_states(states, len(observations))
        actions = np.stack([np.asarray(s.env.expert_action(), np.float32)[None] for s in states])
        return Chunk(actions, tuple(replace(s, calls=s.calls + 1) for s in states))


class RandomPolicy(PrivilegedPolicy):
    """Uniform random actions within the embodiment's bounds: the chance-level baseline."""

    def __init__(self, seed: int = 0, horizon: int = 8) -> None:
        self.horizon = horizon
        self.seed = seed

    def reset(self, seed: int | None = None, *, env: EpisodeSource) -> EnvState:
        """The episode state: the environment (for its action bounds) and the episode's seed."""
        return EnvState(env, seed)

    def predict_chunk(
        self, observations: Sequence[Observation], states: Sequence[EnvState], request: ChunkRequest = ChunkRequest()
    ) -> Chunk:
        """``(B, horizon, action_dim)`` uniform samples within each slot's bounds."""
        states = _env_states(states, len(observations))
        rows = []
        for s in states:
            emb = s.env.embodiment
            rng = np.random.default_rng(noise_seed(self.seed if s.seed is None else s.seed, s.calls))
            lo, hi = np.asarray(emb.action_low, np.float32), np.asarray(emb.action_high, np.float32)
            rows.append(rng.uniform(lo, hi, size=(self.horizon, lo.shape[0])).astype(np.float32))
        return Chunk(np.stack(rows), tuple(replace(s, calls=s.calls + 1) for s in states))


BUILTINS = {"expert": ExpertPolicy, "random": RandomPolicy}
"""Built-in pseudo-policies by name."""


def make_builtin(name: str, seed: int = 0) -> PrivilegedPolicy:
    """Build the built-in pseudo-policy ``name`` (``expert`` or ``random``)."""
    if name == "expert":
        return ExpertPolicy()
    if name == "random":
        return RandomPolicy(seed=seed)
    raise did_you_mean(name, BUILTINS, "built-in policy")
