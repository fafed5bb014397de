# MuJoCo's Python bindings are a compiled module without type stubs: pyright cannot see its functions.
# pyright: reportAttributeAccessIssue=false
"""Meta-World v3 behind the simulator contract: seeded resets, shifts, rendering and scripted experts.

:func:`lbm.sim.make_env` builds a :class:`MetaWorldEnv` for one task. ``reset(seed)`` fully determines the
initial condition from ``(task, seed, shifts)``: Meta-World ignores ``reset(seed=)``, so the env
draws the initial-condition vector (object and goal positions) itself, with a numpy generator
seeded by the task name and the seed, through Meta-World's own rejection loop (some tasks reject
draws whose object and goal overlap). ``step`` never lets Meta-World reach its 500-step hard limit.

Rendering uses our own ``mujoco.Renderer`` with shadows, multisampling and reflections off by
default: on a CPU (llvmpipe) that is 5-10x faster than Meta-World's default renderer. Meta-World's
``corner*`` cameras are mounted rolled upside down; their images are rotated 180 degrees so that
world-up is image-up (a plain ``np.flipud`` would give an upright but mirrored image).
"""

from __future__ import annotations

import atexit
import pickle
import warnings
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lbm.errors import LbmError, did_you_mean
from lbm.schema import Embodiment, Observation, Workspace
from lbm.sim.base import RenderConfig, StepResult, TaskSpec
from lbm.sim.shifts import Shift, ShiftContext

MAX_METAWORLD_STEPS = 500  # Meta-World raises ValueError on step 501
SUCCESS_ATOM = "success()"

_META_CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
# Free (not model-defined) cameras. "front" looks at the workspace from the front-left corner of
# the table; at 64-96 px it shows gripper and objects far larger than the corner cameras do.
FREE_CAMERAS: dict[str, dict[str, Any]] = {
    "front": {"lookat": (0.0, 0.7, 0.1), "distance": 0.95, "azimuth": 135.0, "elevation": -35.0},
}

_OBJ_NAMES = tuple(f"obj_{i}" for i in range(14))
# Meta-World moves the mocap target by action_scale * a per step (sawyer_xyz_env.py: 1/100). The box
# is the union over all 50 v3 tasks of their mocap limits (measured from the task classes), with the
# floor raised to the table top: a hand target below z=0 only pushes into the table.
METAWORLD_WORKSPACE = Workspace(
    action_dims=(0, 1, 2), state_dims=(0, 1, 2), action_scale=0.01, low=(-0.5, 0.35, 0.0), high=(0.5, 1.0, 0.5)
)
METAWORLD_EMBODIMENT = Embodiment(
    name="metaworld-sawyer",
    state_dim=39,
    action_dim=4,
    action_low=(-1.0, -1.0, -1.0, -1.0),
    action_high=(1.0, 1.0, 1.0, 1.0),
    cameras=(*FREE_CAMERAS, *_META_CAMERAS),
    control_hz=80.0,  # MuJoCo timestep 0.0025 s x frame_skip 5 = 12.5 ms per action
    # Meta-World's 39-D state: hand xyz, gripper opening, up to 2 objects (pos + quat, 14 numbers),
    # the same 18 numbers from the previous step, then the goal position.
    state_names=(
        "hand_x",
        "hand_y",
        "hand_z",
        "gripper",
        *_OBJ_NAMES,
        "prev_hand_x",
        "prev_hand_y",
        "prev_hand_z",
        "prev_gripper",
        *(f"prev_{n}" for n in _OBJ_NAMES),
        "goal_x",
        "goal_y",
        "goal_z",
    ),  # fmt: skip
    action_names=("dx", "dy", "dz", "gripper"),
    workspace=METAWORLD_WORKSPACE,
)


@dataclass(frozen=True)
class MocapActuation:
    """How Meta-World turns an action into motion (for a digital twin that reproduces it)."""

    action_scale: float
    """The mocap target moves by action_scale * action[:3] per step."""
    frame_skip: int
    """Physics steps per action."""
    mocap_low: np.ndarray
    """Lower corner of the task's mocap box."""
    mocap_high: np.ndarray
    """Upper corner of the task's mocap box."""


# Envs holding a renderer. An EGL renderer still open when the interpreter tears down prints
# EGLError tracebacks; closing the forgotten ones at exit keeps scripts' output clean. The hook is
# registered after the first renderer exists, so that it runs before MuJoCo's own exit hook
# (atexit is last-in, first-out) terminates the EGL display.
_RENDERING: weakref.WeakSet[MetaWorldEnv] = weakref.WeakSet()
_exit_hook_registered = False


def _close_forgotten_renderers() -> None:
    for env in list(_RENDERING):
        env.close_renderer()


def _task_key(task: str) -> int:
    # A stable (process- and platform-independent) integer for the task; Python's hash() is salted.
    return zlib.crc32(task.encode())


class MetaWorldEnv:
    """One Meta-World task behind the simulator contract (:class:`lbm.sim.SimEnv`)."""

    EDITABLE_MODEL_FIELDS = (
        "geom_friction", "body_mass", "body_inertia", "geom_rgba", "mat_rgba",
        "light_diffuse", "light_specular", "light_dir", "cam_pos", "cam_quat",
    )  # fmt: skip
    """MuJoCo model fields a shift may edit; each reset restores them to their nominal values."""

    def __init__(
        self,
        spec: TaskSpec,
        *,
        cameras: Sequence[str] = (),
        image_size: int = 96,
        shifts: Sequence[Shift] = (),
        render: RenderConfig | None = None,
        max_steps: int | None = None,
    ) -> None:
        import mujoco
        from metaworld.env_dict import ENV_CLS_MAP
        from metaworld.policies import ENV_POLICY_MAP
        from metaworld.types import Task

        self.spec = spec
        self.task = spec.name
        self.embodiment = METAWORLD_EMBODIMENT
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.shifts = tuple(shifts)
        self._active_shifts = tuple(s for s in self.shifts if s.active)
        self.render_config = render or RenderConfig()
        self.max_steps = int(max_steps if max_steps is not None else spec.max_steps)
        if not 1 <= self.max_steps <= MAX_METAWORLD_STEPS:
            raise LbmError(
                f"max_steps must be between 1 and {MAX_METAWORLD_STEPS} (Meta-World's hard limit), got {self.max_steps}."
            )
        self.steps = 0
        self.seed: int | None = None
        self.instruction = spec.instruction
        self.shift_record: dict[str, Any] = {}
        self.initial_condition: np.ndarray | None = None

        cls = ENV_CLS_MAP[self.task]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = cls()
            # Goal observable, as in Meta-World's MT benchmarks: the goal is part of the state.
            space = self._env._random_reset_space  # noqa: SLF001 - Meta-World exposes its reset box only privately
            mid = (space.low + space.high) / 2
            data = {"env_cls": cls, "rand_vec": mid, "partially_observable": False}
            self._env.set_task(Task(env_name=self.task, data=pickle.dumps(data)))
            self._expert = ENV_POLICY_MAP[self.task]()
        self.model, self.data = self._env.model, self._env.data
        self._nominal_space = (space.low.copy(), space.high.copy())

        mujoco.mj_forward(self.model, self.data)
        # Cameras whose up axis points down in the world are mounted upside down: rotate by 180.
        self._rotate_180 = {
            self.model.camera(i).name: bool(self.data.cam_xmat[i].reshape(3, 3)[2, 1] < 0) for i in range(self.model.ncam)
        }
        robot = self._subtree(self.model.body("base").id) | {self.model.body("mocap").id, 0}
        self._scene_geoms = np.array([g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] not in robot], int)
        self._movable_bodies = tuple(
            b for b in range(1, self.model.nbody) if b not in robot and self._has_joint_above(b) and self.model.body_mass[b] > 0
        )
        self._nominal_model = {k: getattr(self.model, k).copy() for k in self.EDITABLE_MODEL_FIELDS}
        self._nominal_headlight = {
            attr: np.array(getattr(self.model.vis.headlight, attr)) for attr in ("diffuse", "ambient", "specular")
        }
        self._free_cameras = {k: dict(v) for k, v in FREE_CAMERAS.items()}
        self._shift_rngs: dict[str, np.random.Generator] = {}
        self._shift_scratch: dict[str, dict] = {}
        self._true_state: np.ndarray | None = None
        self._renderer = None
        self._done, self._success = True, False
        if not self.render_config.shadows:
            self.model.vis.quality.shadowsize = 0
        if not self.render_config.antialias:
            self.model.vis.quality.offsamples = 0

    # ---- structure helpers -----------------------------------------------------------------
    def _subtree(self, root: int) -> set[int]:
        out = {root}
        for b in range(self.model.nbody):
            parent = b
            while parent != 0:
                if parent == root:
                    out.add(b)
                    break
                parent = int(self.model.body_parentid[parent])
        return out

    def _has_joint_above(self, body: int) -> bool:
        while body != 0:
            if self.model.body_jntnum[body] > 0:
                return True
            body = int(self.model.body_parentid[body])
        return False

    @property
    def active_shifts(self) -> tuple[Shift, ...]:
        """The shifts that do something (level other than ``none``)."""
        return self._active_shifts

    @property
    def shift_context(self) -> ShiftContext:
        """What shifts may edit in this scene: the model, the non-robot geoms and movable bodies, free cameras."""
        return ShiftContext(
            model=self.model,
            action_dim=self.embodiment.action_dim,
            movable_bodies=self._movable_bodies,
            scene_geoms=self._scene_geoms,
            free_cameras=self._free_cameras,
        )

    @property
    def nominal_reset_space(self) -> tuple[np.ndarray, np.ndarray]:
        """Meta-World's initial-condition box ``(low, high)`` before any shift widens it (copies)."""
        return self._nominal_space[0].copy(), self._nominal_space[1].copy()

    @property
    def actuation(self) -> MocapActuation:
        """Meta-World's actuation constants of this task (for a digital twin)."""
        env = self._env
        return MocapActuation(
            float(env.action_scale), int(env.frame_skip), np.asarray(env.mocap_low).copy(), np.asarray(env.mocap_high).copy()
        )

    # ---- episode ----------------------------------------------------------------------------
    def reset(self, seed: int, instruction: str | None = None, *, init_state: int | None = None) -> Observation:
        """Start an episode whose initial condition is fully determined by (task, seed, shifts).

        ``instruction`` defaults to the task's canonical instruction; pass a paraphrase to test
        language generalization. Meta-World has no fixed initial states (``init_state`` must be
        None). Returns the first :class:`Observation`.
        """
        import mujoco

        if init_state is not None:
            raise LbmError(f"{self.task}: Meta-World tasks have no fixed initial states; reset from a seed instead.")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise LbmError(f"reset(seed=...) needs a non-negative integer seed, got {seed!r}. Use lbm.sim.eval_seed().")
        seed = int(seed)
        self.seed, self.steps, self._done, self._success = seed, 0, False, False
        self.instruction = self.spec.instruction if instruction is None else str(instruction)
        task_key = _task_key(self.task)

        self._restore_model()
        self.shift_record = {}
        self._shift_rngs, self._shift_scratch = {}, {}
        low, high = self._nominal_space
        for shift in self.active_shifts:
            rng = np.random.default_rng([seed, task_key, _task_key(shift.name)])
            self._shift_rngs[shift.name], self._shift_scratch[shift.name] = rng, {}
            low, high = shift.reset_space(low, high)
        context = self.shift_context
        for shift in self.active_shifts:
            record = shift.on_reset(context, self._shift_rngs[shift.name], self._shift_scratch[shift.name])
            self.shift_record[shift.name] = {"level": shift.level, **record}
        if any(s.name == "mass" for s in self.active_shifts):
            mujoco.mj_setConst(self.model, self.data)  # derived inertia quantities follow body_mass

        # Let Meta-World's own reset loop draw the initial condition (it rejects overlapping
        # object/goal draws per task) from our seeded generator, then freeze it for the episode.
        # Meta-World ignores reset(seed=) and has no public API for its reset box and draw, hence
        # the private fields below (pinned metaworld==3.1.1; tests/test_sim.py checks the behaviour).
        env = self._env
        box = type(env._random_reset_space)  # noqa: SLF001
        env._random_reset_space = box(low, high, dtype=np.float64)  # noqa: SLF001
        env.np_random = np.random.default_rng([seed, task_key])
        env._freeze_rand_vec, env.seeded_rand_vec = False, True  # noqa: SLF001
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, _ = env.reset()
        env._freeze_rand_vec = True  # noqa: SLF001
        env._random_reset_space = box(*self._nominal_space, dtype=np.float64)  # noqa: SLF001
        self.initial_condition = np.array(env._last_rand_vec, dtype=np.float64)  # noqa: SLF001
        self.shift_record["initial_condition"] = self.initial_condition.tolist()
        return self._observe(state)

    def step(self, action: np.ndarray) -> StepResult:
        """Execute one ``(4,)`` action in [-1, 1] (xyz hand motion, gripper effort)."""
        if self._done and self.steps >= self.max_steps or self.seed is None:
            raise LbmError(
                f"{self.task}: the episode is over ({self.steps} of {self.max_steps} steps) or was never "
                "started; call reset(seed) before step()."
            )
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (4,) or not np.all(np.isfinite(action)):
            raise LbmError(f"{self.task}: an action must be 4 finite numbers (dx, dy, dz, gripper), got {action!r}.")
        executed = np.clip(action, -1.0, 1.0)
        for shift in self.active_shifts:
            executed = shift.act(executed, self._shift_rngs[shift.name], self._shift_scratch[shift.name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, reward, _, _, info = self._env.step(executed)
        self.steps += 1
        success = bool(info.get("success", 0.0))
        self._success = success
        truncated = self.steps >= min(self.max_steps, MAX_METAWORLD_STEPS)
        self._done = success or truncated
        info = {k: (float(v) if isinstance(v, (np.floating, float, int, bool)) else v) for k, v in info.items()}
        info.update(success=success, truncated=truncated and not success, executed_action=executed, shifts=self.shift_record)
        return StepResult(self._observe(state), float(reward), success, self._done, info)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's float32 ``(4,)`` action for the true simulator state."""
        if self._true_state is None:
            raise LbmError("expert_action() needs a started episode; call reset(seed) first.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action = self._expert.get_action(self._true_state)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def expert_subtask(self) -> tuple[int, str]:
        """Meta-World tasks are one skill each: subtask 0, the task's canonical instruction."""
        return 0, self.spec.instruction

    def predicates(self) -> dict[str, bool]:
        """Meta-World has no symbolic layer: the one atom ``success()``, its success flag at the last step."""
        return {SUCCESS_ATOM: self._success}

    @property
    def goal(self) -> tuple[str, ...]:
        """``("success()",)``."""
        return (SUCCESS_ATOM,)

    def _observe(self, state: np.ndarray) -> Observation:
        self._true_state = np.array(state, dtype=np.float64)
        observed = state.astype(np.float32)
        for shift in self.active_shifts:
            observed = shift.observe(observed, self._shift_rngs[shift.name], self._shift_scratch[shift.name])
        images = {cam: self.render(cam) for cam in self.cameras}
        return Observation(state=observed, images=images, instruction=self.instruction, embodiment=self.embodiment.name)

    def _restore_model(self) -> None:
        for key, value in self._nominal_model.items():
            getattr(self.model, key)[...] = value
        for attr, value in self._nominal_headlight.items():
            getattr(self.model.vis.headlight, attr)[:] = value
        self._free_cameras = {k: dict(v) for k, v in FREE_CAMERAS.items()}

    # ---- rendering --------------------------------------------------------------------------
    def render(self, camera: str, decorate: Callable[[Any], None] | None = None) -> np.ndarray:
        """Render ``camera`` now: uint8 ``(S, S, 3)`` with S = ``image_size``, world-up = image-up.

        ``decorate(scene)`` may add visual-only geoms to the ``mujoco.MjvScene`` before drawing.
        """
        import mujoco

        if camera not in self.embodiment.cameras:
            raise did_you_mean(camera, self.embodiment.cameras, "camera")
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            _RENDERING.add(self)
            global _exit_hook_registered
            if not _exit_hook_registered:
                atexit.register(_close_forgotten_renderers)
                _exit_hook_registered = True
        if camera in self._free_cameras:
            params = self._free_cameras[camera]
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            cam.lookat[:] = params["lookat"]
            cam.distance, cam.azimuth, cam.elevation = params["distance"], params["azimuth"], params["elevation"]
            self._renderer.update_scene(self.data, camera=cam)
        else:
            self._renderer.update_scene(self.data, camera=camera)
        flags = self._renderer.scene.flags
        cfg = self.render_config
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = cfg.shadows
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = cfg.reflections
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = cfg.skybox
        if decorate is not None:
            decorate(self._renderer.scene)
        image = self._renderer.render()
        if self._rotate_180.get(camera, False):
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image)

    def close(self) -> None:
        """Free the renderer (EGL contexts left open print errors at exit) and the simulator."""
        self.close_renderer()
        self._env.close()

    def close_renderer(self) -> None:
        """Free the renderer (it is built again on the next render)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        _RENDERING.discard(self)

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        shifts = ",".join(s.spec for s in self.shifts) or "none"
        return (
            f"MetaWorldEnv({self.task!r}, cameras={self.cameras}, image_size={self.image_size}, shifts={shifts!r}, "
            f"max_steps={self.max_steps})"
        )


EMBODIMENTS = {METAWORLD_EMBODIMENT.name: METAWORLD_EMBODIMENT}
"""The embodiments of this suite, by name."""


build = MetaWorldEnv
"""The backend entry point :func:`lbm.sim.make_env` calls for Meta-World tasks (arguments validated there):
the env class itself, whose constructor takes ``(spec, *, cameras, image_size, shifts, render, max_steps)``."""
