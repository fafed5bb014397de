"""The canonical observation / action schema shared by every part of lbm.

Simulators and robots are adapted to these types at the edge; everything inside (datasets,
policies, evaluation, serving) speaks only this schema. Feature keys follow LeRobot's naming so
that a dataset written here reads as a LeRobot dataset without renaming.

Glossary (paper symbol -> name used in code):
    o_t  -> ``Observation``            a_t:t+T -> action chunk ``(T, action_dim)``
    T    -> ``horizon`` (chunk length)   H -> ``history`` (observation steps fed to a policy)
    B    -> batch size                   D -> feature width

This module must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

# ---- feature keys (LeRobot v3 names) -------------------------------------------------------
STATE = "observation.state"
ACTION = "action"
IMAGE_PREFIX = "observation.images."
INSTRUCTION = "task"  # LeRobot stores the language instruction as the frame's "task"
TASK_INDEX = "task_index"
EPISODE_INDEX = "episode_index"
FRAME_INDEX = "frame_index"
INDEX = "index"
TIMESTAMP = "timestamp"
EMBODIMENT = "embodiment"
# Padding masks produced by the training-window reader: True where the value is padding.
PAD_SUFFIX = "_is_pad"
STATE_PAD = STATE + PAD_SUFFIX
ACTION_PAD = ACTION + PAD_SUFFIX


def image_key(camera: str) -> str:
    """Feature key of a camera's images, e.g. ``observation.images.corner``."""
    return IMAGE_PREFIX + camera


def camera_of(key: str) -> str:
    """Inverse of :func:`image_key`."""
    if not key.startswith(IMAGE_PREFIX):
        raise ValueError(f"{key!r} is not an image feature key (expected prefix {IMAGE_PREFIX!r})")
    return key[len(IMAGE_PREFIX) :]


@dataclass(frozen=True)
class Workspace:
    """Where a delta end-effector embodiment may move its hand: what an action shield enforces.

    The next hand position is predicted as ``state[state_dims] + action_scale * action[action_dims]``
    and must stay inside the box ``[low, high]``.
    """

    action_dims: tuple[int, ...]
    """Action dimensions that move the end effector (delta position)."""
    state_dims: tuple[int, ...]
    """State dimensions holding the end-effector position, in the same order."""
    action_scale: float
    """Metres of end-effector motion per unit of a position action dimension per step."""
    low: tuple[float, ...]
    """Lower corner of the box (metres), one value per position dimension."""
    high: tuple[float, ...]
    """Upper corner of the box (metres)."""

    def __post_init__(self) -> None:
        n = len(self.action_dims)
        if not (len(self.state_dims) == len(self.low) == len(self.high) == n) or n == 0:
            raise ValueError("Workspace: action_dims, state_dims, low and high need one entry each per position dimension")
        if any(lo >= hi for lo, hi in zip(self.low, self.high)) or self.action_scale <= 0:
            raise ValueError("Workspace: low must be below high on every axis and action_scale positive")

    def to_json(self) -> dict[str, Any]:
        return {
            "action_dims": list(self.action_dims),
            "state_dims": list(self.state_dims),
            "action_scale": self.action_scale,
            "low": list(self.low),
            "high": list(self.high),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Workspace:
        return cls(
            tuple(int(x) for x in d["action_dims"]),
            tuple(int(x) for x in d["state_dims"]),
            float(d["action_scale"]),
            tuple(float(x) for x in d["low"]),
            tuple(float(x) for x in d["high"]),
        )


@dataclass(frozen=True)
class Embodiment:
    """What a robot body accepts and reports: sizes, bounds, cameras, control rate and workspace."""

    name: str
    """Unique name, the key for per-embodiment normalization stats and projections."""
    state_dim: int
    """Length of the proprioceptive / simulator state vector."""
    action_dim: int
    """Length of one action."""
    action_low: tuple[float, ...]
    """Per-dimension lower action bound, in the robot's units."""
    action_high: tuple[float, ...]
    """Per-dimension upper action bound, in the robot's units."""
    cameras: tuple[str, ...] = ()
    """Camera names this embodiment can render or stream."""
    control_hz: float = 10.0
    """Rate at which actions are executed."""
    state_names: tuple[str, ...] = ()
    """Optional per-dimension names of the state vector (documentation and LeRobot ``names``)."""
    action_names: tuple[str, ...] = ()
    """Optional per-dimension names of the action vector."""
    workspace: Workspace | None = None
    """The end-effector box of a delta-position embodiment (None: no workspace limit is known)."""

    def __post_init__(self) -> None:
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ValueError(f"embodiment {self.name!r}: action bounds must have {self.action_dim} entries")
        if any(lo > hi for lo, hi in zip(self.action_low, self.action_high)):
            raise ValueError(f"embodiment {self.name!r}: action_low exceeds action_high")
        if self.workspace is not None and (
            max(self.workspace.action_dims) >= self.action_dim or max(self.workspace.state_dims) >= self.state_dim
        ):
            raise ValueError(f"embodiment {self.name!r}: the workspace names action or state dimensions it does not have")

    def clip_actions(self, actions: np.ndarray) -> np.ndarray:
        """Clip an action or chunk ``(..., action_dim)`` to the embodiment's bounds."""
        return np.clip(actions, np.asarray(self.action_low, np.float32), np.asarray(self.action_high, np.float32))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
            "cameras": list(self.cameras),
            "control_hz": self.control_hz,
            "state_names": list(self.state_names),
            "action_names": list(self.action_names),
            "workspace": None if self.workspace is None else self.workspace.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Embodiment:
        return cls(
            name=d["name"],
            state_dim=int(d["state_dim"]),
            action_dim=int(d["action_dim"]),
            action_low=tuple(float(x) for x in d["action_low"]),
            action_high=tuple(float(x) for x in d["action_high"]),
            cameras=tuple(d.get("cameras", ())),
            control_hz=float(d.get("control_hz", 10.0)),
            state_names=tuple(d.get("state_names", ())),
            action_names=tuple(d.get("action_names", ())),
            workspace=None if d.get("workspace") is None else Workspace.from_json(d["workspace"]),
        )


@dataclass
class Observation:
    """One observation of one robot at one time step."""

    state: np.ndarray
    """float32 ``(state_dim,)``."""
    images: dict[str, NDArray[np.uint8]] = field(default_factory=lambda: {})
    """camera name -> uint8 ``(H, W, 3)``."""
    instruction: str = ""
    """Natural-language instruction the policy is asked to follow."""
    embodiment: str = ""
    """Name of the :class:`Embodiment` that produced this observation."""

    def __post_init__(self) -> None:
        self.state = np.asarray(self.state, dtype=np.float32)
        if self.state.ndim != 1:
            raise ValueError(f"Observation.state must be a vector, got shape {self.state.shape}")
        for cam, img in self.images.items():
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
                raise ValueError(f"camera {cam!r}: images must be uint8 (H, W, 3), got {img.dtype} {img.shape}")


def validate_action_chunk(chunk: np.ndarray, embodiment: Embodiment) -> np.ndarray:
    """Check that ``chunk`` is a float32 ``(T, action_dim)`` array for ``embodiment``; return it."""
    chunk = np.asarray(chunk)
    if chunk.ndim != 2 or chunk.shape[1] != embodiment.action_dim:
        raise ValueError(f"action chunk for {embodiment.name!r} must have shape (T, {embodiment.action_dim}), got {chunk.shape}")
    return chunk.astype(np.float32, copy=False)
