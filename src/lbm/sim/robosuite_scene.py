# MuJoCo's and robosuite's Python modules have no type stubs: pyright cannot see their attributes.
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
"""What every robosuite-driven scene (LIBERO's and the robosuite arms') shares behind the contract.

:class:`RobosuiteScene` implements :class:`lbm.sim.SimEnv` over a robosuite environment: seeded
resets (robosuite's and LIBERO's placement samplers draw from numpy's global RNG, which is seeded
around the reset and restored), shifts with the usual guarantees (model fields restored at every
reset), the state vector (end-effector pose, gripper, joints, then fixed object slots), images with
world-up, the waypoint expert and the typed symbolic state. A backend subclass builds its robosuite
env and says what its objects, regions, predicates and success are.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lbm.errors import LbmError, did_you_mean
from lbm.schema import Embodiment, Observation
from lbm.sim.base import RenderConfig, StepResult, TaskSpec, atom, parse_atom
from lbm.sim.shifts import Shift, ShiftContext
from lbm.sim.waypoints import PickPlaceExpert, subtasks

OBJECT_SLOT = 7
"""State entries per object slot: world position (3) and quaternion (4, wxyz)."""
SETTLE_STEPS = 5
"""Zero-motion steps after placing objects, so that they rest on their supports."""


def quiet_robosuite() -> None:
    """Drop robosuite's import-time advice to write a private macro file (lbm needs none)."""
    import logging
    import warnings

    logging.getLogger("robosuite_logs").addFilter(
        lambda record: "macro" not in record.getMessage() and "setup_macros" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message="The 'warn' method is deprecated", category=DeprecationWarning)


def seeded_global_numpy(seed_words: Sequence[int]) -> Callable[[], None]:
    """Seed numpy's global RNG (the placement samplers and robosuite's init noise draw from it); return the undo."""
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence(list(seed_words)).generate_state(1)[0])

    def restore() -> None:
        np.random.set_state(saved)

    return restore


def name_key(name: str) -> int:
    """A stable integer for a name (seed material)."""
    return zlib.crc32(name.encode())


Atom = tuple[str, Callable[[], bool]]
"""A grounded atom: its text and how to evaluate it now."""


class RobosuiteScene:
    """The simulator contract over one robosuite environment; subclasses fill in the scene."""

    EDITABLE_MODEL_FIELDS = (
        "geom_friction", "body_mass", "body_inertia", "geom_rgba", "mat_rgba",
        "light_diffuse", "light_specular", "light_dir", "cam_pos", "cam_quat",
    )  # fmt: skip
    """MuJoCo model fields a shift may edit; each reset restores them to their nominal values."""
    max_objects: int = 8
    """Object slots in the state."""

    # ---- what a backend provides -----------------------------------------------------------------
    def _make(self) -> tuple[Any, Any]:
        """Build the robosuite env: ``(outer, env)``, where ``outer`` has reset/step (LIBERO wraps the env)."""
        raise NotImplementedError

    def _place(self, init_state: int | None) -> None:
        """Reset the scene (numpy's global RNG is seeded), optionally to a fixed initial state."""
        raise NotImplementedError

    def _success(self) -> bool:
        raise NotImplementedError

    def _ground(self) -> list[Atom]:
        """Every atom defined in the scene."""
        raise NotImplementedError

    def position(self, name: str) -> np.ndarray:
        """World position (3,) of an object or region, now."""
        raise NotImplementedError

    def body_of(self, name: str) -> int:
        """The MuJoCo body id of a movable object."""
        raise NotImplementedError

    @property
    def objects(self) -> tuple[str, ...]:
        """The scene's movable objects, in state-slot order."""
        raise NotImplementedError

    @property
    def words(self) -> Mapping[str, str]:
        """Objects and regions whose scene names are not language, in words (for subtask instructions)."""
        return {}

    # ---- shared ------------------------------------------------------------------------------
    def __init__(
        self,
        spec: TaskSpec,
        embodiment: Embodiment,
        *,
        cameras: Sequence[str] = (),
        image_size: int = 96,
        shifts: Sequence[Shift] = (),
        render: RenderConfig | None = None,
        max_steps: int | None = None,
    ) -> None:
        import lbm  # noqa: F401  (sets MUJOCO_GL before MuJoCo is imported)

        quiet_robosuite()
        self.spec = spec
        self.task = spec.name
        self.embodiment = embodiment
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.shifts = tuple(shifts)
        self._active_shifts = tuple(s for s in self.shifts if s.active)
        self.render_config = render or RenderConfig()
        self.max_steps = int(max_steps if max_steps is not None else spec.max_steps)
        self.steps = 0
        self.seed: int | None = None
        self.instruction = spec.instruction
        self.shift_record: dict[str, Any] = {}
        self.initial_condition: np.ndarray | None = None
        if len(self.objects) > self.max_objects:
            raise LbmError(f"{self.task} has {len(self.objects)} movable objects; the state has {self.max_objects} object slots.")
        self._outer, self._env = self._make()
        sim = self._env.sim
        self.model = sim.model._model  # noqa: SLF001 - robosuite's binding wraps the raw MjModel; shifts edit the raw one
        self.data = sim.data._data  # noqa: SLF001
        if not self.render_config.shadows:
            self.model.vis.quality.shadowsize = 0
            self.model.light_castshadow[:] = 0
        if not self.render_config.reflections:
            self.model.mat_reflectance[:] = 0
        self._nominal_model = {k: getattr(self.model, k).copy() for k in self.EDITABLE_MODEL_FIELDS}
        self._nominal_headlight = {a: np.array(getattr(self.model.vis.headlight, a)) for a in ("diffuse", "ambient", "specular")}
        robot = {b for b in range(self.model.nbody) if self.model.body(b).name.startswith(("robot0", "gripper0", "mount0"))}
        self._scene_geoms = np.array([g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] not in robot], int)
        self._object_bodies = tuple(self.body_of(o) for o in self.objects)
        arm = self._env.robots[0]
        self._joint_qpos = np.array([self.model.joint(j).qposadr[0] for j in arm.robot_joints], int)
        self._shift_rngs: dict[str, np.random.Generator] = {}
        self._shift_scratch: dict[str, dict] = {}
        self._atoms: list[Atom] | None = None
        self._expert = PickPlaceExpert(self)
        self._done = True

    # ---- the scene, for the expert and the planner ---------------------------------------------
    def object_extent(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box ``(low, high)`` of an object's collision geoms in the world, now."""
        root = self.body_of(name)
        geoms = [
            g
            for g in range(self.model.ngeom)
            if self._is_below(int(self.model.geom_bodyid[g]), root) and self.model.geom_contype[g]
        ]
        if not geoms:
            p = self.position(name)
            return p - 0.02, p + 0.02
        lows, highs = [], []
        for g in geoms:
            center, half = self.data.geom_xpos[g], self.model.geom_rbound[g]
            if self.model.geom_type[g] == 6:  # box: exact half sizes, rotated
                half = np.abs(self.data.geom_xmat[g].reshape(3, 3)) @ self.model.geom_size[g]
            lows.append(center - half)
            highs.append(center + half)
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def _is_below(self, body: int, root: int) -> bool:
        while body > 0:
            if body == root:
                return True
            body = int(self.model.body_parentid[body])
        return False

    def eef(self) -> tuple[np.ndarray, np.ndarray, float]:
        """End-effector position (3,), orientation (3, 3) and gripper opening (finger joint travel), now."""
        robot = self._env.robots[0]
        pos = np.array(self.data.site_xpos[robot.eef_site_id], dtype=np.float64)
        rotation = np.array(self.data.site_xmat[robot.eef_site_id], dtype=np.float64).reshape(3, 3)
        fingers = self.data.qpos[robot._ref_gripper_joint_pos_indexes]  # noqa: SLF001 - robosuite keeps the finger joints private
        return pos, rotation, float(np.abs(fingers).sum())

    def grasping(self, name: str) -> bool:
        """Whether both finger pads touch the object now (robosuite's grasp test)."""
        return bool(self._env._check_grasp(gripper=self._env.robots[0].gripper, object_geoms=self._model_of(name)))  # noqa: SLF001

    def _model_of(self, name: str) -> Any:
        raise NotImplementedError

    def holds(self, text: str) -> bool:
        """Whether one atom of this scene (e.g. ``on(cubeA,cubeB)``) holds now."""
        name, args = parse_atom(text)
        atoms = dict(self._grounded())
        key = atom(name, *args) if args else f"{name}()"
        if key not in atoms:
            names = sorted({a for text in atoms for a in parse_atom(text)[1]})
            unknown = [a for a in args if a not in names]
            if unknown:
                raise LbmError(f"{self.task}: {did_you_mean(unknown[0], names, 'object or region')}")
            raise LbmError(f"{self.task}: {text} is not defined in this scene ({name} does not apply to {', '.join(args)}).")
        return bool(atoms[key]())

    def _grounded(self) -> list[Atom]:
        if self._atoms is None:
            self._atoms = self._ground()
            missing = set(self.spec.goal) - {text for text, _ in self._atoms}
            if missing:
                raise LbmError(f"{self.task}: its goal atom(s) {sorted(missing)} are not defined in the scene.")
        return self._atoms

    # ---- contract --------------------------------------------------------------------------------
    @property
    def active_shifts(self) -> tuple[Shift, ...]:
        """The shifts that do something (level other than ``none``)."""
        return self._active_shifts

    @property
    def shift_context(self) -> ShiftContext:
        """What shifts may edit: the model, the non-robot geoms, the movable objects (no free cameras)."""
        return ShiftContext(
            model=self.model,
            action_dim=self.embodiment.action_dim,
            movable_bodies=self._object_bodies,
            scene_geoms=self._scene_geoms,
            free_cameras={},
            data=self.data,
        )

    @property
    def goal(self) -> tuple[str, ...]:
        """The atoms whose conjunction is the task's goal."""
        return self.spec.goal

    def reset(self, seed: int, instruction: str | None = None, *, init_state: int | None = None) -> Observation:
        """Start an episode: a scene sampled by the suite's placement samplers from ``seed``, or fixed
        initial state ``init_state`` (of ``spec.fixed_init_states``) with ``seed`` driving the shifts."""
        import mujoco

        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise LbmError(f"reset(seed=...) needs a non-negative integer seed, got {seed!r}. Use lbm.sim.eval_seed().")
        if init_state is not None and not 0 <= int(init_state) < self.spec.fixed_init_states:
            raise LbmError(
                f"{self.task} has {self.spec.fixed_init_states} fixed initial states; init_state {init_state} is out of range."
            )
        seed = int(seed)
        self.seed, self.steps, self._done = seed, 0, False
        self.instruction = self.spec.instruction if instruction is None else str(instruction)
        key = name_key(self.task)
        self._restore_model()
        self.shift_record, self._shift_rngs, self._shift_scratch = {}, {}, {}
        for shift in self.active_shifts:
            self._shift_rngs[shift.name] = np.random.default_rng([seed, key, name_key(shift.name)])
            self._shift_scratch[shift.name] = {}
        context = self.shift_context
        for shift in self.active_shifts:
            record = shift.on_reset(context, self._shift_rngs[shift.name], self._shift_scratch[shift.name])
            self.shift_record[shift.name] = {"level": shift.level, **record}
        if any(s.name == "mass" for s in self.active_shifts):
            mujoco.mj_setConst(self.model, self.data)
        # robosuite's soft reset leaves the gripper's commanded opening where the last episode left it:
        # without this, an episode would depend on the one before it.
        for robot in self._env.robots:
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        restore = seeded_global_numpy([seed, key])
        try:
            self._place(None if init_state is None else int(init_state))
        finally:
            restore()
        for shift in self.active_shifts:
            record = shift.after_placement(context, self._shift_rngs[shift.name], self._shift_scratch[shift.name])
            if record:
                self.shift_record[shift.name].update(record)
        mujoco.mj_forward(self.model, self.data)
        self._settle()
        self.initial_condition = np.concatenate([self.data.qpos, [-1.0 if init_state is None else float(init_state)]])
        self.shift_record["init_state"] = init_state
        self._expert.reset()
        return self._observe()

    def _settle(self) -> None:
        hold = np.zeros(self.embodiment.action_dim)
        hold[-1] = -1.0  # gripper open
        for _ in range(SETTLE_STEPS):
            self._env.step(hold)
        self._env.timestep = 0

    def step(self, action: np.ndarray) -> StepResult:
        """Execute one action in [-1, 1]: OSC end-effector delta (xyz, rotation) and gripper (+1 closes)."""
        if self.seed is None or (self._done and self.steps >= self.max_steps):
            raise LbmError(f"{self.task}: the episode is over or was never started; call reset(seed) before step().")
        dim = self.embodiment.action_dim
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (dim,) or not np.all(np.isfinite(action)):
            raise LbmError(
                f"{self.task}: an action must be {dim} finite numbers ({', '.join(self.embodiment.action_names)}), "
                f"got {action!r}."
            )
        executed = np.clip(action, -1.0, 1.0)
        for shift in self.active_shifts:
            executed = shift.act(executed, self._shift_rngs[shift.name], self._shift_scratch[shift.name])
        _, reward, _, info = self._outer.step(executed.astype(np.float64))
        self.steps += 1
        success = self._success()
        truncated = self.steps >= self.max_steps
        self._done = success or truncated
        info = dict(info)
        info.update(success=success, truncated=truncated and not success, executed_action=executed, shifts=self.shift_record)
        return StepResult(self._observe(), float(reward), success, self._done, info)

    def expert_action(self) -> np.ndarray:
        """The waypoint expert's float32 action for the true simulator state."""
        if self.seed is None:
            raise LbmError("expert_action() needs a started episode; call reset(seed) first.")
        return self._to_body(self._expert.action())

    def skill_action(self, goal_atom: str, restart: bool = False) -> np.ndarray:
        """The scripted skill's action toward one atom (``in(soup,basket)``, ``lifted(cube)``), for a planner's step.

        The skill is the waypoint expert restricted to that atom; it starts over when the atom changes or on ``restart``."""
        if self.seed is None:
            raise LbmError("skill_action() needs a started episode; call reset(seed) first.")
        self._expert.follow(subtasks((goal_atom,), self.objects, self.words)[0], restart)
        return self._to_body(self._expert.action())

    def _to_body(self, action: np.ndarray) -> np.ndarray:
        """The expert's OSC end-effector action as this body's action (identity unless a backend says otherwise)."""
        return action

    def expert_subtask(self) -> tuple[int, str]:
        """The expert's current subtask: its index and instruction (``pick up the X and place it in the Y``)."""
        return self._expert.subtask()

    def predicates(self) -> dict[str, bool]:
        """Every grounded atom of the scene now, true or false."""
        return {text: bool(evaluate()) for text, evaluate in self._grounded()}

    def _observe(self) -> Observation:
        # Forced: robosuite's step returns observables sampled up to a control step earlier. Its camera
        # observables are off (they would render inside every step, and again here): we render once, now.
        obs = self._env._get_observations(force_update=True)  # noqa: SLF001 - robosuite's only way to read observables now
        parts = [obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["robot0_gripper_qpos"], self.data.qpos[self._joint_qpos]]
        slots = np.zeros((self.max_objects, OBJECT_SLOT))
        for k, body in enumerate(self._object_bodies):
            slots[k, :3], slots[k, 3:] = self.data.xpos[body], self.data.xquat[body]
        state = np.concatenate([*parts, slots.reshape(-1)]).astype(np.float32)
        observed = state
        for shift in self.active_shifts:
            observed = shift.observe(observed, self._shift_rngs[shift.name], self._shift_scratch[shift.name])
        images = {cam: self.render(cam) for cam in self.cameras}
        return Observation(state=observed, images=images, instruction=self.instruction, embodiment=self.embodiment.name)

    def _restore_model(self) -> None:
        for key, value in self._nominal_model.items():
            getattr(self.model, key)[...] = value
        for attr, value in self._nominal_headlight.items():
            getattr(self.model.vis.headlight, attr)[:] = value

    def render(self, camera: str, decorate: Callable[[Any], None] | None = None) -> np.ndarray:
        """Render ``camera`` now: uint8 ``(S, S, 3)``, world-up = image-up (``decorate`` is not supported here)."""
        if camera not in self.embodiment.cameras:
            raise did_you_mean(camera, self.embodiment.cameras, "camera")
        if not self.cameras:
            raise LbmError(f"{self.task}: this env was built without cameras; pass cameras=[{camera!r}] to make_env.")
        image = self._env.sim.render(camera_name=camera, width=self.image_size, height=self.image_size)
        return np.ascontiguousarray(image[::-1])  # OpenGL's origin is at the bottom: flip rows so image-up is world-up

    def close(self) -> None:
        """Free the simulator and its renderer."""
        try:
            self._outer.close()
        except AttributeError:  # already closed
            pass

    def __enter__(self) -> RobosuiteScene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        shifts = ",".join(s.spec for s in self.shifts) or "none"
        size = self.image_size
        kind = type(self).__name__
        return f"{kind}({self.task!r}, cameras={self.cameras}, image_size={size}, shifts={shifts!r}, max_steps={self.max_steps})"
