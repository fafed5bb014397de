# robosuite's Python modules have no type stubs: pyright cannot see their attributes.
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
"""robosuite's arms behind the simulator contract: tasks x robots, each robot its own body.

Tasks are named ``robosuite-TASK@ROBOT`` (``robosuite-lift@ur5e``: end-effector control) and
``robosuite-TASK@ROBOT-joint`` (joint-position control). Each robot and controller is its own
:class:`Embodiment`: the state is the end-effector pose, the gripper's joints and the arm's joints
(so its size differs per robot: 30 Panda, 33 UR5e, 34 Kinova3 and IIWA), then two object slots;
the OSC action is the 7-D end-effector delta (xyz, rotation) and the gripper, the joint-position
action one delta per arm joint (6 UR5e, 7 the others) and the gripper. The robosuite here is
1.4.0, the version LIBERO pins (one environment for both); under MuJoCo 3 its Sawyer fails to load
and Jaco's three-finger gripper needs its own expert, so both are known gaps. Predicates:
``grasped(obj)``, ``lifted(obj)`` (robosuite's own 4 cm test) and ``on(a,b)``. The waypoint
expert (:mod:`lbm.sim.waypoints`) lifts and stacks; on a joint-position body its end-effector
command is turned into joint deltas by damped least squares on the arm's Jacobian (differential
inverse kinematics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

import numpy as np

from lbm.errors import LbmError, did_you_mean
from lbm.schema import Embodiment, Workspace
from lbm.sim.base import RenderConfig, TaskSpec, atom
from lbm.sim.robosuite_scene import Atom, RobosuiteScene
from lbm.sim.shifts import Shift

SUITE = "robosuite"
INSTALL_HINT = (
    "robosuite is not installed here. Install it with `pip install 'lbm[libero]'` (LIBERO brings robosuite 1.4.0, "
    "the version lbm drives)."
)


@dataclass(frozen=True)
class _Task:
    env: str
    objects: tuple[str, ...]
    goal: tuple[str, ...]
    instruction: str
    paraphrases: tuple[str, ...]
    max_steps: int
    words: tuple[tuple[str, str], ...]


TASK_FAMILIES: dict[str, _Task] = {
    "lift": _Task(
        "Lift",
        ("cube",),
        ("lifted(cube)",),
        "lift the red cube",
        ("pick up the red cube", "raise the red cube off the table", "grab the red cube and lift it"),
        150,
        (("cube", "red cube"),),
    ),
    "stack": _Task(
        "Stack",
        ("cubeA", "cubeB"),
        ("on(cubeA,cubeB)",),
        "stack the red cube on the green cube",
        (
            "put the red cube on top of the green cube",
            "place the red cube onto the green one",
            "pick up the red cube and set it on the green cube",
        ),
        250,
        (("cubeA", "red cube"), ("cubeB", "green cube")),
    ),
}
"""robosuite environments lbm registers, with their objects (state-slot order), goal and language."""


@dataclass(frozen=True)
class _Robot:
    name: str
    joints: int
    gripper_joints: int


ROBOTS: dict[str, _Robot] = {
    "panda": _Robot("Panda", 7, 2),
    "ur5e": _Robot("UR5e", 6, 6),
    "kinova3": _Robot("Kinova3", 7, 6),
    "iiwa": _Robot("IIWA", 7, 6),
}
"""Robots lbm drives (robosuite 1.4.0 names; joint counts of the arm and of its default gripper)."""
CONTROLLERS: dict[str, str] = {"": "OSC_POSE", "joint": "JOINT_POSITION"}
"""Controller suffix of a body name (``panda``, ``panda-joint``) -> robosuite controller."""
OSC_SCALE = np.array([0.05, 0.05, 0.05, 0.5, 0.5, 0.5])
"""robosuite's OSC_POSE output range: metres and radians of end-effector motion per unit action."""
JOINT_SCALE = 0.05
"""robosuite's JOINT_POSITION output range: radians per unit action."""
JOINT_KP = 150
"""Joint-position stiffness: robosuite's default 50 lags the hand behind its command by several steps; 150
is the stiffness of its OSC controller, so both bodies of a robot track their commands alike."""
IK_DAMPING = 0.05
"""Damping of the least-squares inverse (metres): bounds joint motion near singular poses."""
ROBOT_GAPS: dict[str, str] = {
    "sawyer": "robosuite 1.4.0's Sawyer fails to load under MuJoCo 3 ('mesh volume is too small: robot0_head_1')",
    "jaco": "Jaco's three-finger gripper command is inverted and slow in robosuite; the waypoint expert is not tuned for it",
}
MAX_OBJECTS = 2
CAMERAS = ("agentview", "robot0_eye_in_hand", "frontview")
# The table top is robosuite's (0.8 x 0.8 m at z 0.8); the hand stays over it, below 1.3 m. OSC moves
# the end-effector target by at most 0.05 m per step for an action of 1.
ARM_WORKSPACE = Workspace(
    action_dims=(0, 1, 2), state_dims=(0, 1, 2), action_scale=0.05, low=(-0.4, -0.4, 0.8), high=(0.4, 0.4, 1.3)
)


def _embodiment(key: str, robot: _Robot, controller: str) -> Embodiment:
    proprio = (
        *(f"eef_{a}" for a in "xyz"),
        *(f"eef_q{a}" for a in "wxyz"),
        *(f"gripper_{i}" for i in range(robot.gripper_joints)),
        *(f"joint_{i}" for i in range(robot.joints)),
    )
    slots = tuple(f"obj{k}_{f}" for k in range(MAX_OBJECTS) for f in ("x", "y", "z", "qw", "qx", "qy", "qz"))
    if controller == "joint":
        actions = (*(f"dq_{i}" for i in range(robot.joints)), "gripper")
    else:
        actions = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
    return Embodiment(
        name=f"robosuite-{key}" + (f"-{controller}" if controller else ""),
        state_dim=len(proprio) + len(slots),
        action_dim=len(actions),
        action_low=(-1.0,) * len(actions),
        action_high=(1.0,) * len(actions),
        cameras=CAMERAS,
        control_hz=20.0,
        state_names=(*proprio, *slots),
        action_names=actions,
        # A joint delta moves the hand through the arm's nonlinear kinematics, not by a fixed scale:
        # the shield's linear workspace prediction does not apply, so joint bodies get bounds only.
        workspace=None if controller else ARM_WORKSPACE,
    )


BODIES: dict[str, tuple[str, str]] = {(f"{k}-{c}" if c else k): (k, c) for k in ROBOTS for c in CONTROLLERS}
"""Body names of task names (``panda``, ``panda-joint``) -> (robot, controller suffix)."""
EMBODIMENTS: dict[str, Embodiment] = {
    f"robosuite-{body}": _embodiment(robot, ROBOTS[robot], controller) for body, (robot, controller) in BODIES.items()
}
"""One embodiment per robot and controller."""
REGISTER_THRESHOLD = 0.5
"""A task x robot is registered when its expert succeeds on at least this fraction of the seeds measured
by ``benchmarks/sim_expert_success.py --tasks robosuite`` (20 demonstration seeds)."""
EXPERT_GAPS: dict[str, str] = {}
"""Task x robot combinations whose expert falls below :data:`REGISTER_THRESHOLD` (measured), with why."""


def available() -> bool:
    return find_spec("robosuite") is not None


def _all_specs() -> dict[str, TaskSpec]:
    if not available():
        return {}
    return {
        f"robosuite-{family}@{robot}": TaskSpec(
            name=f"robosuite-{family}@{robot}",
            suite=SUITE,
            instruction=task.instruction,
            paraphrases=task.paraphrases,
            embodiment=f"robosuite-{robot}",
            max_steps=task.max_steps,
            goal=task.goal,
            source=task.env,
        )
        for family, task in TASK_FAMILIES.items()
        for robot in BODIES
    }


def task_specs() -> dict[str, TaskSpec]:
    """The registered task x robot combinations (empty if robosuite is absent)."""
    return {n: s for n, s in _all_specs().items() if n not in EXPERT_GAPS}


def task_sets() -> dict[str, tuple[str, ...]]:
    """``robosuite`` (everything), ``robosuite-lift`` (every body), ``robosuite@ur5e`` (every task of a body)."""
    names = list(task_specs())
    if not names:
        return {}
    sets = {"robosuite": tuple(names)}
    for family in TASK_FAMILIES:
        sets[f"robosuite-{family}"] = tuple(n for n in names if n.startswith(f"robosuite-{family}@"))
    for robot in BODIES:
        sets[f"robosuite@{robot}"] = tuple(n for n in names if n.endswith(f"@{robot}"))
    return {k: v for k, v in sets.items() if v}


def unavailable() -> dict[str, str]:
    """Names that exist but cannot be used here -> why."""
    if not available():
        return dict.fromkeys(["robosuite", *(f"robosuite-{f}" for f in TASK_FAMILIES)], INSTALL_HINT)
    out = {name: f"{name} is not registered: {why}." for name, why in EXPERT_GAPS.items()}
    for family in TASK_FAMILIES:
        for robot, why in ROBOT_GAPS.items():
            for suffix in CONTROLLERS:
                name = f"robosuite-{family}@{robot}" + (f"-{suffix}" if suffix else "")
                out[name] = f"{name} is not registered: {why}."
    return out


class ArmEnv(RobosuiteScene):
    """One robosuite task on one robot behind the simulator contract (:class:`lbm.sim.SimEnv`)."""

    max_objects = MAX_OBJECTS

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
        if not available():
            raise LbmError(INSTALL_HINT)
        family, body = spec.name.removeprefix("robosuite-").split("@")
        robot, self._controller = BODIES[body]
        self._task, self._robot = TASK_FAMILIES[family], ROBOTS[robot]
        super().__init__(
            spec, EMBODIMENTS[spec.embodiment], cameras=cameras, image_size=image_size, shifts=shifts, render=render,
            max_steps=max_steps,
        )  # fmt: skip

    def _make(self) -> tuple[Any, Any]:
        import robosuite

        env = robosuite.make(
            self._task.env,
            robots=self._robot.name,
            controller_configs=self._controller_config(),
            has_renderer=False,
            has_offscreen_renderer=bool(self.cameras),
            use_camera_obs=False,  # images are rendered by the scene, once per step
            camera_names=list(self.cameras) or ["agentview"],
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            reward_shaping=False,
            control_freq=int(self.embodiment.control_hz),
            horizon=10**9,  # the step limit is ours
            ignore_done=True,
            hard_reset=False,  # resets re-place objects in the loaded model (milliseconds, not seconds)
        )
        return env, env

    def _to_body(self, action: np.ndarray) -> np.ndarray:
        """On a joint-position body, the expert's hand motion as joint deltas."""
        if not self._controller:
            return action
        import mujoco

        arm = self._env.robots[0]
        jacp, jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jacp, jacr, arm.eef_site_id)
        jac = np.vstack([jacp, jacr])[:, arm._ref_joint_vel_indexes]  # noqa: SLF001 - robosuite keeps the arm's dof indices only here
        twist = OSC_SCALE * action[:6]
        # Damped least squares: dq = J^T (J J^T + d^2 I)^-1 twist (Wampler 1986), stable near singular poses.
        dq = jac.T @ np.linalg.solve(jac @ jac.T + IK_DAMPING**2 * np.eye(6), twist)
        command = dq / JOINT_SCALE
        peak = float(np.abs(command).max())
        if peak > 1.0:  # scale, not clip: the hand keeps its direction
            command /= peak
        return np.concatenate([command, action[6:]]).astype(np.float32)

    def _controller_config(self) -> dict:
        from robosuite import load_controller_config

        config = load_controller_config(default_controller=CONTROLLERS[self._controller])
        if self._controller:
            config["kp"] = JOINT_KP
        return config

    # ---- the scene ---------------------------------------------------------------------------
    @property
    def objects(self) -> tuple[str, ...]:
        """The task's movable objects (``cube``; ``cubeA`` red, ``cubeB`` green)."""
        return self._task.objects

    @property
    def words(self) -> Mapping[str, str]:
        return dict(self._task.words)

    def _model_of(self, name: str) -> Any:
        if name not in self._task.objects:
            raise LbmError(f"{self.task}: {did_you_mean(name, self._task.objects, 'object')}")
        return getattr(self._env, name)

    def body_of(self, name: str) -> int:
        return int(self._env.sim.model.body_name2id(self._model_of(name).root_body))

    def position(self, name: str) -> np.ndarray:
        """World position (3,) of an object, now."""
        return np.array(self.data.xpos[self.body_of(name)], dtype=np.float64)

    def _place(self, init_state: int | None) -> None:
        self._env.reset()

    def _success(self) -> bool:
        return bool(self._env._check_success())  # noqa: SLF001 - robosuite's success test has no public name

    def _ground(self) -> list[Atom]:
        table = float(self._env.table_offset[2])
        out: list[Atom] = []
        for obj in self.objects:
            out.append((atom("grasped", obj), lambda o=obj: self.grasping(o)))
            # robosuite's own lift test: the object's center 4 cm above the table top
            out.append((atom("lifted", obj), lambda o=obj: bool(self.position(o)[2] > table + 0.04)))
            for other in self.objects:
                if other != obj:
                    out.append((atom("on", obj, other), lambda a=obj, b=other: self._on(a, b)))
        return out

    def _on(self, a: str, b: str) -> bool:
        """``a`` rests on ``b``: touching, above it, and not held."""
        touching = bool(self._env.check_contact(self._model_of(a), self._model_of(b)))
        return touching and self.position(a)[2] > self.position(b)[2] and not self.grasping(a)


build = ArmEnv
"""The backend entry point :func:`lbm.sim.make_env` calls for robosuite tasks (arguments validated there):
the env class itself, whose constructor takes ``(spec, *, cameras, image_size, shifts, render, max_steps)``."""
