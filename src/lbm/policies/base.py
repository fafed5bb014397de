"""The runtime contract every policy honours (DESIGN.md rule 4), and the kind that reads the simulator.

A caller (the rollout runner, the policy server, the chunk broker, the planner) relies on exactly
what :class:`Policy` declares and nothing else::

    state = policy.reset(seed)                        # one robot, one episode
    chunk = policy.predict_chunk([obs], [state])      # one robot; or B robots in one batched call
    actions, state = chunk.actions[0], chunk.states[0]

Per-robot history is *state the caller owns*: ``reset`` returns a fresh state for one episode and
``predict_chunk`` returns every slot's next state beside the actions. The policy object holds
weights and caches only, so one policy serves any number of robots in any batch composition, and
a server keeps each connection's state next to the connection.

Sampling noise is seeded per episode: ``reset(seed)`` puts the seed in the state and every chunk
of that episode draws its noise from it, so a rerun reproduces every action whatever else was
batched with it. ``reset(None)`` draws from the process's random stream instead.

A :class:`ChunkRequest` asks for more than actions (per-slot features for failure monitors, the
variance of extra action samples); they come back in the :class:`Chunk`.

Scripted experts and random baselines need the simulator itself. They are a separate, declared
kind: :class:`PrivilegedPolicy`, whose ``reset`` takes the environment of the episode.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lbm.schema import Embodiment, Observation

PolicyState = Any
"""Opaque per-robot, per-episode state: produced by ``reset``, threaded through ``predict_chunk``."""


@dataclass(frozen=True)
class ChunkRequest:
    """What a caller wants from one ``predict_chunk`` call besides the actions."""

    features: bool = False
    """Return per-slot features ``(B, D)`` (the policy's last-layer representation of the chunk)."""
    action_samples: int = 0
    """Also draw this many extra chunks per slot with fresh noise and return their variance (0: off).
    The executed actions are the same as without them."""


@dataclass(frozen=True)
class Chunk:
    """What ``predict_chunk`` returns."""

    actions: np.ndarray
    """float32 ``(B, T, action_dim)`` in the embodiment's units, within its bounds."""
    states: tuple[PolicyState, ...]
    """The state of every slot after this call, in slot order: pass them to the next call."""
    features: np.ndarray | None = None
    """float32 ``(B, D)`` when the request asked for features and the policy has them."""
    action_variance: np.ndarray | None = None
    """float64 ``(B,)`` variance of the extra action samples, when requested."""


@runtime_checkable
class Policy(Protocol):
    """What every caller may rely on from a learned (or served) policy."""

    @property
    def embodiments(self) -> Mapping[str, Embodiment]:
        """The embodiments this policy can act for, by name."""
        ...

    @property
    def horizon(self) -> int:
        """T: actions per predicted chunk."""
        ...

    @property
    def history(self) -> int:
        """H: observations of one robot the policy conditions on (newest last)."""
        ...

    @property
    def execute_steps(self) -> int | None:
        """Actions to execute from each chunk before asking again; None: the whole chunk."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description: ``family`` and ``cameras`` (the images every observation must carry) at
        least, and ``instructions``, the instructions it knows (new ones may cost an encoder pass)."""
        ...

    def reset(self, seed: int | None = None) -> PolicyState:
        """A fresh state for one robot's episode; ``seed`` fixes its sampling noise (None: unseeded)."""
        ...

    def predict_chunk(
        self, observations: Sequence[Observation], states: Sequence[PolicyState], request: ChunkRequest = ChunkRequest()
    ) -> Chunk:
        """Actions for ``observations[i]`` given ``states[i]`` (slot i), and every slot's next state."""
        ...


class EpisodeSource(Protocol):
    """The part of a simulator a privileged policy reads (``lbm.sim`` environments provide it)."""

    @property
    def embodiment(self) -> Embodiment:
        """The embodiment the environment drives."""
        ...

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the true simulator state."""
        ...


class PrivilegedPolicy(abc.ABC):
    """A pseudo-policy that reads the simulator (scripted experts, random baselines).

    It cannot be served to a real robot: its ``reset`` needs the episode's environment, which its
    state keeps. Callers tell the two kinds apart with ``isinstance(policy, PrivilegedPolicy)``.
    """

    horizon: int = 1
    history: int = 1
    execute_steps: int | None = None

    @property
    def embodiments(self) -> Mapping[str, Embodiment]:
        """Empty: a privileged policy acts for whatever embodiment its environment drives."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The kind of pseudo-policy; it needs no cameras."""
        return {"family": type(self).__name__, "cameras": [], "horizon": self.horizon, "history": self.history}

    @abc.abstractmethod
    def reset(self, seed: int | None = None, *, env: EpisodeSource) -> PolicyState:
        """A fresh state for one episode in ``env``."""

    @abc.abstractmethod
    def predict_chunk(
        self, observations: Sequence[Observation], states: Sequence[PolicyState], request: ChunkRequest = ChunkRequest()
    ) -> Chunk:
        """Actions for every slot from its environment (``states[i]`` holds it)."""


@runtime_checkable
class ReportingState(Protocol):
    """A per-episode policy state that adds columns to its trial's record (a planner's subtask counts)."""

    def record(self) -> dict[str, Any]:
        """Columns for the trial's record (JSON-able scalars)."""
        ...


class TrainablePolicy(Protocol):
    """What the single training loop needs from a model (a ``torch.nn.Module``)."""

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        """Return ``(scalar loss tensor, metrics)`` for a collated training batch."""
        ...


def noise_seed(seed: int, call: int, sample: int = 0) -> int:
    """The seed of the noise of chunk ``call`` (and extra sample ``sample``) of an episode seeded ``seed``.

    A fixed integer mix (not Python's salted ``hash``) so that it is the same in every process.
    """
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(call) * 0xBF58476D1CE4E5B9 + int(sample) * 0x94D049BB133111EB) % 2**64
    x ^= x >> 31
    return x % 2**63
