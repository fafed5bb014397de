"""``make_env``: one entry point that builds an env of any registered suite."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np

from lbm.errors import LbmError, did_you_mean
from lbm.schema import Embodiment
from lbm.sim.base import RenderConfig, SimEnv
from lbm.sim.registry import BACKENDS, get_task
from lbm.sim.shifts import Shift, parse_shifts


def embodiment_of(task: str) -> Embodiment:
    """The :class:`Embodiment` that performs ``task`` (without building a simulator)."""
    spec = get_task(task)
    return importlib.import_module(BACKENDS[spec.suite]).EMBODIMENTS[spec.embodiment]


def embodiment_named(name: str) -> Embodiment:
    """The registered :class:`Embodiment` called ``name`` (e.g. ``metaworld-sawyer``), from any suite."""
    known: dict[str, Embodiment] = {}
    for module in BACKENDS.values():
        try:
            known.update(importlib.import_module(module).EMBODIMENTS)
        except ImportError:  # a suite whose simulator is not installed names no embodiments here
            continue
    if name not in known:
        raise did_you_mean(name, known, "embodiment")
    return known[name]


def make_env(
    task: str,
    *,
    cameras: Sequence[str] | str = (),
    image_size: int = 96,
    shifts: str | Sequence[Shift] = (),
    render: RenderConfig | None = None,
    max_steps: int | None = None,
) -> SimEnv:
    """Build the env of ``task`` (any registered suite: ``reach-v3``, ``libero-goal/put-the-bowl-on-the-plate``).

    ``cameras``: names from the embodiment's cameras to render into every observation (none: state
    only). ``image_size``: side S of the square uint8 ``(S, S, 3)`` images. ``shifts``: a spec
    such as ``"obs_noise:low,friction:high"`` or :class:`Shift` objects. ``max_steps``: episode
    limit (default: the task's).
    """
    spec = get_task(task)
    embodiment = embodiment_of(spec.name)
    if isinstance(cameras, str):
        cameras = [c for c in cameras.split(",") if c.strip()]
    cameras = tuple(c.strip() for c in cameras)
    for cam in cameras:
        if cam not in embodiment.cameras:
            raise LbmError(f"{task} ({embodiment.name}): {did_you_mean(cam, embodiment.cameras, 'camera')}")
    if len(set(cameras)) != len(cameras):
        raise LbmError(f"Camera list {list(cameras)} names a camera twice; give each camera once.")
    if not isinstance(image_size, (int, np.integer)) or not 8 <= image_size <= 1024:
        raise LbmError(f"image_size must be an integer between 8 and 1024 pixels, got {image_size!r}.")
    if max_steps is not None and (not isinstance(max_steps, (int, np.integer)) or max_steps < 1):
        raise LbmError(f"max_steps must be a positive integer, got {max_steps!r}.")
    backend = importlib.import_module(BACKENDS[spec.suite])
    return backend.build(
        spec, cameras=cameras, image_size=int(image_size), shifts=parse_shifts(shifts), render=render, max_steps=max_steps
    )
