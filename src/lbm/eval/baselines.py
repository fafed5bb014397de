"""Built-in pseudo-policies for baselines and tests: ``expert`` and ``random``.

Both honour the :class:`lbm.policies.base.Policy` contract (``predict_chunk``, ``reset``) and are
*privileged*: before each call the runner calls ``bind_envs(envs)`` with the environment of every
slot in the call. Both are ``stateless``, so the runner asks them only for the slots that need an
action (a stateful policy always gets its full, fixed batch). The expert reads the true simulator state through ``env.expert_action()`` (so
observation-noise shifts do not disturb it — it is an upper reference, not a competitor); the random
policy only reads the action bounds of ``env.embodiment``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lbm.schema import Observation


class ExpertPolicy:
    """The simulator's scripted expert, one action per chunk (closed loop at every step)."""

    execute_steps = 1
    """The expert must see every state: re-query after each action."""
    stateless = True
    """No per-slot memory: the runner may call it with any subset of slots (after ``bind_envs``)."""

    def __init__(self) -> None:
        self._envs: list = []

    def bind_envs(self, envs: Sequence) -> None:
        """Attach the environment of every slot, in slot order."""
        self._envs = list(envs)

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Stateless: nothing to forget."""

    def predict_chunk(self, observations: Sequence[Observation]) -> np.ndarray:
        """Return ``(B, 1, action_dim)`` expert actions for the true state of each slot's env."""
        if len(observations) != len(self._envs):
            raise RuntimeError(f"expert policy bound to {len(self._envs)} envs but got {len(observations)} observations")
        return np.stack([np.asarray(env.expert_action(), np.float32)[None] for env in self._envs])


class RandomPolicy:
    """Uniform random actions within the embodiment's bounds: the chance-level baseline."""

    stateless = True
    """No per-slot memory: the runner may call it with any subset of slots (after ``bind_envs``)."""

    def __init__(self, seed: int = 0, horizon: int = 8) -> None:
        self.horizon = horizon
        self._rng = np.random.default_rng([seed, 0xAA])
        self._bounds: list[tuple[np.ndarray, np.ndarray]] = []

    def bind_envs(self, envs: Sequence) -> None:
        """Read each slot's action bounds."""
        self._bounds = [
            (np.asarray(e.embodiment.action_low, np.float32), np.asarray(e.embodiment.action_high, np.float32))
            for e in envs
        ]

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Stateless: nothing to forget."""

    def predict_chunk(self, observations: Sequence[Observation]) -> np.ndarray:
        """Return ``(B, horizon, action_dim)`` uniform samples within bounds."""
        return np.stack(
            [self._rng.uniform(lo, hi, size=(self.horizon, lo.shape[0])).astype(np.float32) for lo, hi in self._bounds]
        )


def make_builtin(name: str, seed: int = 0):
    """Build the built-in pseudo-policy ``name`` (``expert`` or ``random``)."""
    if name == "expert":
        return ExpertPolicy()
    if name == "random":
        return RandomPolicy(seed=seed)
    from lbm.errors import did_you_mean

    raise did_you_mean(name, ["expert", "random"], "built-in policy")
