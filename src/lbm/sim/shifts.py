# MuJoCo's Python bindings are a compiled module without type stubs: pyright cannot see its functions.
# pyright: reportAttributeAccessIssue=false
"""Distribution shifts: named, composable perturbations with a severity level.

A shift is chosen by name and level (``"friction:high"``) and applied by :class:`lbm.sim.SimEnv`
at every reset. All of its randomness comes from the reset seed, through a random stream of its
own (seeded by seed, task and shift name), so that a shifted trial replays exactly, adding one
shift never changes another's draws, and every policy in a paired comparison meets the same
perturbation. Model edits (friction, mass, colors, lights, cameras) are undone before every reset
and drawn afresh, so they never accumulate across episodes. Level ``none`` does nothing at all:
an env with ``friction:none`` is bit-identical to one without the shift.

Every shift records what it did (the factors, offsets or delays it drew) in
``SimEnv.shift_record`` and in each step's ``info["shifts"]``.

Adding a shift: subclass :class:`Shift`, fill in the class variables, override the hooks it needs,
and list it in :data:`SHIFTS`; the registry-generated tests then check it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lbm.errors import LbmError, did_you_mean

LEVELS: tuple[str, ...] = ("none", "low", "medium", "high")
"""Severity levels, from no perturbation to the strongest."""


@dataclass(frozen=True)
class ShiftContext:
    """What a shift may edit in one scene, handed over by the environment at every reset.

    Everything here is restored to nominal by the environment before the next reset, so edits never
    accumulate. Simulator backends fill it from their own scene description.
    """

    model: Any
    """The ``mujoco.MjModel`` of the scene (its fields in ``SimEnv.EDITABLE_MODEL_FIELDS`` may be edited)."""
    action_dim: int
    """Width of one action."""
    movable_bodies: tuple[int, ...]
    """Bodies outside the robot that can move (objects, drawers, doors, handles)."""
    scene_geoms: np.ndarray
    """Geoms that do not belong to the robot (table, objects), int ``(G,)``."""
    free_cameras: dict[str, dict[str, Any]]
    """Parameters of the free cameras (lookat, distance, azimuth, elevation), editable in place."""
    data: Any = None
    """The ``mujoco.MjData`` (for :meth:`Shift.after_placement`; backends that place objects themselves)."""


@dataclass(frozen=True)
class Shift:
    """One perturbation at one severity level. Subclasses define what it changes."""

    level: str = "medium"
    """Severity: one of :data:`LEVELS`."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "initial state" | "observation" | "action" | "physics" | "camera"
    what: ClassVar[str] = ""  # one sentence: what the shift changes
    unit: ClassVar[str] = ""  # unit of the magnitude
    magnitudes: ClassVar[dict[str, float]] = {}  # level -> magnitude (0 at "none")
    needs_cameras: ClassVar[bool] = False  # only visible in camera observations

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise did_you_mean(self.level, LEVELS, f"level of shift {self.name!r}")

    @property
    def magnitude(self) -> float:
        """Size of the perturbation at this level, in :attr:`unit`."""
        return 0.0 if self.level == "none" else float(self.magnitudes[self.level])

    @property
    def active(self) -> bool:
        """False at level ``none``: the shift then does nothing at all."""
        return self.level != "none"

    @property
    def spec(self) -> str:
        """The shift as spec text, e.g. ``friction:high``."""
        return f"{self.name}:{self.level}"

    @classmethod
    def about(cls) -> str:
        """What this kind of shift changes, and its magnitude at each level."""
        levels = ", ".join(f"{lv} {cls.magnitudes[lv]:g}" for lv in LEVELS[1:])
        return f"{cls.what} Magnitude ({cls.unit}): {levels}."

    def describe(self) -> str:
        """What the shift changes, and by how much at this level."""
        return f"{self.about()} This one is {self.level!r} ({self.magnitude:g})."

    # ---- hooks, called by SimEnv only when the shift is active ---------------------------------
    def reset_space(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the initial-condition sampling box (Meta-World's ``_random_reset_space``)."""
        return low, high

    def on_reset(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        """Apply per-episode changes (model edits, buffers); return a JSON-able record of them."""
        return {}

    def after_placement(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        """Edit the placed scene (``ctx.data``) once the backend placed its objects; return a record.

        Called by backends that place objects with their own samplers (LIBERO, robosuite); Meta-World
        draws its initial condition from :meth:`reset_space` instead.
        """
        return {}

    def observe(self, state: np.ndarray, rng: np.random.Generator, scratch: dict) -> np.ndarray:
        """Perturb the float32 ``(state_dim,)`` state the policy sees (not the simulator)."""
        return state

    def act(self, action: np.ndarray, rng: np.random.Generator, scratch: dict) -> np.ndarray:
        """Turn the commanded ``(action_dim,)`` action into the one the simulator executes."""
        return action


def _signed_factor(rng: np.random.Generator, max_factor: float) -> float:
    # A factor in [1/k, 1/sqrt(k)] or [sqrt(k), k]: log-symmetric and never ~1, so that every
    # draw is a real shift of about the level's size.
    u = rng.uniform(0.5, 1.0) * (1.0 if rng.random() < 0.5 else -1.0)
    return float(max_factor**u)


def _offset_color(rgb: np.ndarray, offset: np.ndarray) -> np.ndarray:
    # Reflect offsets that would leave [0, 1]: most Meta-World materials are pure white (1, 1, 1),
    # where a clipped positive offset would change nothing.
    moved = rgb + offset
    return np.clip(np.where((moved > 1) | (moved < 0), rgb - offset, moved), 0.0, 1.0)


def _is_horizontal(n: int) -> np.ndarray:
    # Meta-World's initial-condition vectors are concatenated xyz positions (object, goal).
    return np.arange(n) % 3 != 2


@dataclass(frozen=True)
class ObjectPose(Shift):
    name: ClassVar[str] = "object_pose"
    kind: ClassVar[str] = "initial state"
    what: ClassVar[str] = (
        "Widens the range from which initial object and goal positions are drawn: the horizontal "
        "(x, y) bounds of Meta-World's reset box move outward by the magnitude on each side (in "
        "suites that place objects with their own samplers, every free object moves horizontally "
        "by up to the magnitude); heights are untouched so objects still rest on their support."
    )
    unit: ClassVar[str] = "m added on each side"
    magnitudes: ClassVar[dict[str, float]] = {"low": 0.02, "medium": 0.04, "high": 0.07}

    def reset_space(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pad = np.where(_is_horizontal(low.size), self.magnitude, 0.0)
        return low - pad, high + pad

    def after_placement(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        # Backends with their own samplers: move every free-floating object horizontally by up to
        # the magnitude (objects keep their height, so they still rest on their support).
        model, data, moved = ctx.model, ctx.data, {}
        for body in ctx.movable_bodies:
            joint = int(model.body_jntadr[body])
            if joint < 0 or model.jnt_type[joint] != 0:  # 0: mjJNT_FREE
                continue
            offset = rng.uniform(-self.magnitude, self.magnitude, 2)
            address = int(model.jnt_qposadr[joint])
            data.qpos[address : address + 2] += offset
            moved[model.body(body).name or f"body{body}"] = offset.tolist()
        return {"offsets": moved}


@dataclass(frozen=True)
class ObsNoise(Shift):
    name: ClassVar[str] = "obs_noise"
    kind: ClassVar[str] = "observation"
    what: ClassVar[str] = (
        "Adds independent Gaussian noise to every entry of the state the policy observes at every "
        "step (the simulator and the expert see the true state)."
    )
    unit: ClassVar[str] = "std, state units (m)"
    magnitudes: ClassVar[dict[str, float]] = {"low": 0.003, "medium": 0.01, "high": 0.02}

    def observe(self, state: np.ndarray, rng: np.random.Generator, scratch: dict) -> np.ndarray:
        return (state + rng.normal(0.0, self.magnitude, state.shape)).astype(np.float32)

    def on_reset(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        return {"std": self.magnitude}


@dataclass(frozen=True)
class ActionNoise(Shift):
    name: ClassVar[str] = "action_noise"
    kind: ClassVar[str] = "action"
    what: ClassVar[str] = (
        "Adds independent Gaussian noise to every action before execution, then clips it to the action bounds [-1, 1]."
    )
    unit: ClassVar[str] = "std, normalized action units"
    magnitudes: ClassVar[dict[str, float]] = {"low": 0.05, "medium": 0.1, "high": 0.2}

    def act(self, action: np.ndarray, rng: np.random.Generator, scratch: dict) -> np.ndarray:
        noisy = action + rng.normal(0.0, self.magnitude, action.shape)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)

    def on_reset(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        return {"std": self.magnitude}


@dataclass(frozen=True)
class ActionLatency(Shift):
    name: ClassVar[str] = "action_latency"
    kind: ClassVar[str] = "action"
    what: ClassVar[str] = (
        "Delays execution: the action commanded at step t is executed at step t + k; during the "
        "first k steps of an episode the robot receives the zero action (hold still, gripper "
        "unactuated)."
    )
    unit: ClassVar[str] = "steps of delay"
    magnitudes: ClassVar[dict[str, float]] = {"low": 1, "medium": 2, "high": 4}

    def on_reset(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        k = int(self.magnitude)
        scratch["queue"] = [np.zeros(ctx.action_dim, np.float32) for _ in range(k)]
        return {"delay_steps": k}

    def act(self, action: np.ndarray, rng: np.random.Generator, scratch: dict) -> np.ndarray:
        queue = scratch["queue"]
        queue.append(np.array(action, np.float32))
        return queue.pop(0)


@dataclass(frozen=True)
class Friction(Shift):
    name: ClassVar[str] = "friction"
    kind: ClassVar[str] = "physics"
    what: ClassVar[str] = (
        "Multiplies the sliding friction coefficient of every geom (MuJoCo geom_friction[:, 0]) "
        "by one factor per episode, drawn log-symmetrically between k^0.5 and k (or their "
        "inverses), where k is the magnitude."
    )
    unit: ClassVar[str] = "max factor k"
    magnitudes: ClassVar[dict[str, float]] = {"low": 1.3, "medium": 1.7, "high": 2.5}

    def on_reset(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        factor = _signed_factor(rng, self.magnitude)
        ctx.model.geom_friction[:, 0] *= factor
        return {"factor": factor}


@dataclass(frozen=True)
class Mass(Shift):
    name: ClassVar[str] = "mass"
    kind: ClassVar[str] = "physics"
    what: ClassVar[str] = (
        "Multiplies the mass and inertia of every movable non-robot body (objects, drawers, doors, "
        "handles) by a factor per body, drawn log-symmetrically between k^0.5 and k (or their "
        "inverses), where k is the magnitude."
    )
    unit: ClassVar[str] = "max factor k"
    magnitudes: ClassVar[dict[str, float]] = {"low": 1.5, "medium": 2.5, "high": 5.0}

    def on_reset(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        record = {}
        for body in ctx.movable_bodies:
            factor = _signed_factor(rng, self.magnitude)
            ctx.model.body_mass[body] *= factor
            ctx.model.body_inertia[body] *= factor
            record[ctx.model.body(body).name or f"body{body}"] = factor
        return {"factors": record}


@dataclass(frozen=True)
class CameraPose(Shift):
    name: ClassVar[str] = "camera_pose"
    kind: ClassVar[str] = "camera"
    needs_cameras: ClassVar[bool] = True
    what: ClassVar[str] = (
        "Moves every camera: named cameras are translated by up to the magnitude along each axis "
        "and rotated by up to 100x the magnitude in degrees about a random axis; free cameras get "
        "the same look-at offset, distance change and azimuth/elevation change."
    )
    unit: ClassVar[str] = "m (and x100 degrees)"
    magnitudes: ClassVar[dict[str, float]] = {"low": 0.02, "medium": 0.05, "high": 0.1}

    def on_reset(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        import mujoco

        m, deg = self.magnitude, 100.0 * self.magnitude
        model = ctx.model
        for cam in range(model.ncam):
            model.cam_pos[cam] += rng.uniform(-m, m, 3)
            axis = rng.normal(size=3)
            turn = np.zeros(4)
            mujoco.mju_axisAngle2Quat(turn, axis / np.linalg.norm(axis), np.deg2rad(rng.uniform(-deg, deg)))
            out = np.zeros(4)
            mujoco.mju_mulQuat(out, turn, model.cam_quat[cam])
            model.cam_quat[cam] = out
        record = {}
        for name, params in ctx.free_cameras.items():
            params["lookat"] = np.asarray(params["lookat"]) + rng.uniform(-m, m, 3)
            params["distance"] = params["distance"] + rng.uniform(-m, m)
            params["azimuth"] = params["azimuth"] + rng.uniform(-deg, deg)
            params["elevation"] = params["elevation"] + rng.uniform(-deg, deg) / 2
            record[name] = {k: np.asarray(v).tolist() for k, v in params.items()}
        return {"free_cameras": record}


@dataclass(frozen=True)
class Lighting(Shift):
    name: ClassVar[str] = "lighting"
    kind: ClassVar[str] = "camera"
    needs_cameras: ClassVar[bool] = True
    what: ClassVar[str] = (
        "Changes the scene lighting: all lights and the headlight are scaled by one gain drawn "
        "log-symmetrically between (1+m)^0.5 and 1+m (or their inverses), tinted by a per-channel "
        "color cast of up to m/3, and the directional lights are tilted by up to m (direction units)."
    )
    unit: ClassVar[str] = "m, relative intensity change"
    magnitudes: ClassVar[dict[str, float]] = {"low": 0.3, "medium": 0.6, "high": 1.0}

    def on_reset(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        m = self.magnitude
        model = ctx.model
        gain = _signed_factor(rng, 1.0 + m)
        tint = 1.0 + rng.uniform(-m / 3, m / 3, 3)
        scale = np.clip(gain * tint, 0.0, None)
        # Total light exceeds 1 on bright surfaces (saturated pixels), so dimming shows most.
        model.light_diffuse[:] = np.clip(model.light_diffuse * scale, 0.0, 1.0)
        model.light_specular[:] = np.clip(model.light_specular * scale, 0.0, 1.0)
        for attr in ("diffuse", "ambient", "specular"):
            value = getattr(model.vis.headlight, attr)
            value[:] = np.clip(np.asarray(value) * scale, 0.0, 1.0)
        for light in range(model.nlight):
            direction = model.light_dir[light] + rng.uniform(-m, m, 3)
            model.light_dir[light] = direction / max(np.linalg.norm(direction), 1e-6)
        return {"gain": gain, "tint": tint.tolist()}


@dataclass(frozen=True)
class Color(Shift):
    name: ClassVar[str] = "color"
    kind: ClassVar[str] = "camera"
    needs_cameras: ClassVar[bool] = True
    what: ClassVar[str] = (
        "Recolors the table and the task objects (every non-robot geom, or its material when it has "
        "one): each RGB channel moves by a uniform offset of up to the magnitude, clipped to [0, 1]."
    )
    unit: ClassVar[str] = "max RGB offset"
    magnitudes: ClassVar[dict[str, float]] = {"low": 0.1, "medium": 0.25, "high": 0.5}

    def on_reset(self, ctx: ShiftContext, rng: np.random.Generator, scratch: dict) -> dict[str, Any]:
        m = self.magnitude
        model = ctx.model
        # MuJoCo draws a geom that has a material in the material's color unless the geom's own
        # rgba was changed from the default, so recolor materials, and plain geoms directly.
        geoms = ctx.scene_geoms[model.geom_matid[ctx.scene_geoms] < 0]
        model.geom_rgba[geoms, :3] = _offset_color(model.geom_rgba[geoms, :3], rng.uniform(-m, m, (len(geoms), 3)))
        mats = np.unique(model.geom_matid[ctx.scene_geoms])
        mats = mats[mats >= 0]
        model.mat_rgba[mats, :3] = _offset_color(model.mat_rgba[mats, :3], rng.uniform(-m, m, (len(mats), 3)))
        return {"geoms": len(geoms), "materials": len(mats)}


SHIFTS: dict[str, type[Shift]] = {
    cls.name: cls for cls in (ObjectPose, ObsNoise, ActionNoise, ActionLatency, Friction, Mass, CameraPose, Lighting, Color)
}
"""Every shift, by name. ``SHIFTS[name](level)`` builds one."""


def parse_shifts(spec: str | Sequence[Shift] | None) -> tuple[Shift, ...]:
    """Parse ``"none"`` / ``""`` (no shift) or ``"obs_noise:low,friction:high"`` into shifts.

    A name without a level means ``medium``. Already-built :class:`Shift` sequences pass through
    (validated). Each shift may appear once.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        shifts = []
        for part in (p.strip() for p in spec.split(",")):
            if not part or part.lower() == "none":
                continue
            name, _, level = part.partition(":")
            name, level = name.strip().lower().replace("-", "_"), (level.strip().lower() or "medium")
            if name not in SHIFTS:
                error = did_you_mean(name, SHIFTS, "shift")
                raise LbmError(f"{error} Write shifts as 'name:level' separated by commas, e.g. 'obs_noise:low,friction:high'.")
            if level not in LEVELS:
                raise did_you_mean(level, LEVELS, f"level of shift {name!r}")
            shifts.append(SHIFTS[name](level))
    else:
        shifts = list(spec)
        for shift in shifts:
            if not isinstance(shift, Shift):
                raise LbmError(f"Expected Shift objects or a spec string like 'friction:high', got {shift!r}.")
    names = [s.name for s in shifts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LbmError(f"Shift(s) {', '.join(duplicates)} given more than once in {spec!r}; give each shift one level.")
    return tuple(shifts)


def shifts_spec(shifts: Sequence[Shift]) -> str:
    """Inverse of :func:`parse_shifts`: ``"none"`` or ``"name:level,..."``."""
    return ",".join(s.spec for s in shifts) or "none"
