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

import numpy as np

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


def image_key(camera: str) -> str:
    """Feature key of a camera's images, e.g. ``observation.images.corner``."""
    return IMAGE_PREFIX + camera


def camera_of(key: str) -> str:
    """Inverse of :func:`image_key`."""
    if not key.startswith(IMAGE_PREFIX):
        raise ValueError(f"{key!r} is not an image feature key (expected prefix {IMAGE_PREFIX!r})")
    return key[len(IMAGE_PREFIX) :]


@dataclass(frozen=True)
class Embodiment:
    """What a robot body accepts and reports: sizes, bounds, cameras and control rate."""

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

    def __post_init__(self) -> None:
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ValueError(f"embodiment {self.name!r}: action bounds must have {self.action_dim} entries")
        if any(lo > hi for lo, hi in zip(self.action_low, self.action_high)):
            raise ValueError(f"embodiment {self.name!r}: action_low exceeds action_high")

    def clip_actions(self, actions: np.ndarray) -> np.ndarray:
        """Clip an action or chunk ``(..., action_dim)`` to the embodiment's bounds."""
        return np.clip(actions, np.asarray(self.action_low, np.float32), np.asarray(self.action_high, np.float32))

    def to_json(self) -> dict:
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
        }

    @classmethod
    def from_json(cls, d: dict) -> Embodiment:
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
        )


@dataclass
class Observation:
    """One observation of one robot at one time step."""

    state: np.ndarray
    """float32 ``(state_dim,)``."""
    images: dict[str, np.ndarray] = field(default_factory=dict)
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
        raise ValueError(
            f"action chunk for {embodiment.name!r} must have shape (T, {embodiment.action_dim}), got {chunk.shape}"
        )
    return chunk.astype(np.float32, copy=False)
