"""The simulator contract: what every backend (Meta-World, LIBERO, robosuite) offers lbm.

Everything above ``lbm.sim`` (data generation, the evaluation runner, safety, the planner) holds a
:class:`SimEnv` and uses only what this protocol declares. A backend is a module with a
``build(spec, cameras=..., image_size=..., shifts=..., render=..., max_steps=...)`` function,
listed in :data:`lbm.sim.registry.BACKENDS`; heavy simulators are imported only when one of their
tasks is built, so Meta-World-only use never pays LIBERO's start-up.

Symbolic state: :meth:`SimEnv.predicates` grounds the scene's predicates into atoms such as
``on(akita_black_bowl_1,plate_1)`` (lower-case predicate, arguments the scene's own object names,
no spaces), and :attr:`SimEnv.goal` lists the atoms the task's goal is the conjunction of.
Meta-World has no symbolic layer: its only atom is ``success()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from lbm.errors import LbmError
from lbm.schema import Embodiment, Observation

if TYPE_CHECKING:
    from lbm.sim.shifts import Shift, ShiftContext


@dataclass(frozen=True)
class TaskSpec:
    """One simulation task: what to do, in words, and how long an episode may last."""

    name: str
    """Simulator task name, e.g. ``drawer-open-v3``."""
    suite: str
    """Simulator suite the task belongs to (``metaworld``)."""
    instruction: str
    """Canonical natural-language instruction, e.g. ``open the drawer``."""
    paraphrases: tuple[str, ...]
    """Other wordings of the same instruction (at least 3), for language-generalization tests."""
    embodiment: str
    """Name of the robot embodiment that performs the task."""
    max_steps: int = 200
    """Default episode step limit."""
    fixed_init_states: int = 0
    """Number of fixed initial states the suite ships for evaluation (LIBERO: 50; Meta-World: none)."""
    goal: tuple[str, ...] = ()
    """The goal as atoms (their conjunction), e.g. ``("on(akita_black_bowl_1,plate_1)",)``."""
    source: str = ""
    """Where the task is defined (a BDDL file for LIBERO)."""

    @property
    def instructions(self) -> tuple[str, ...]:
        """The canonical instruction followed by its paraphrases."""
        return (self.instruction, *self.paraphrases)


@dataclass(frozen=True)
class RenderConfig:
    """Offscreen rendering quality. The defaults are the fast settings for CPU rendering."""

    shadows: bool = False
    """Render shadows (Meta-World's 4096 px shadow map; ~5x slower on CPU)."""
    reflections: bool = False
    """Render reflective surfaces (a second scene pass)."""
    antialias: bool = False
    """Multisample anti-aliasing."""
    skybox: bool = False
    """Draw the skybox behind the scene."""


@dataclass
class StepResult:
    """What one :meth:`SimEnv.step` returns."""

    observation: Observation
    """Observation after the step."""
    reward: float
    """The simulator's reward (Meta-World: dense shaped 0..10; LIBERO and robosuite: sparse 0/1)."""
    success: bool
    """True when the task is solved at this step."""
    done: bool
    """True on success or when the step limit is reached; reset before stepping again."""
    info: dict = field(default_factory=dict)
    """The simulator's info plus ``truncated``, ``executed_action`` and ``shifts``."""


@runtime_checkable
class SimEnv(Protocol):
    """One task of one simulator suite behind the lbm schema. Build it with :func:`lbm.sim.make_env`."""

    spec: TaskSpec
    """The task (name, suite, instructions, embodiment, step limit, fixed initial states, goal)."""
    task: str
    """The task's registry name."""
    embodiment: Embodiment
    """The robot body this env drives (state/action sizes, bounds, cameras, rate, workspace)."""
    cameras: tuple[str, ...]
    """Cameras rendered into every observation."""
    image_size: int
    """Side S of the square uint8 ``(S, S, 3)`` images."""
    max_steps: int
    """Episode step limit."""
    steps: int
    """Steps taken in the current episode."""
    seed: int | None
    """Seed of the current episode (None before the first reset)."""
    instruction: str
    """The instruction of the current episode."""
    shift_record: dict[str, Any]
    """What each active shift did in this episode (and the initial condition)."""
    initial_condition: np.ndarray | None
    """A vector that identifies the episode's initial condition (equal across policies iff paired)."""

    def reset(self, seed: int, instruction: str | None = None, *, init_state: int | None = None) -> Observation:
        """Start an episode fully determined by (task, seed, shifts), or by one of the task's fixed
        initial states (``init_state`` in ``range(spec.fixed_init_states)``; shifts still apply)."""
        ...

    def step(self, action: np.ndarray) -> StepResult:
        """Execute one action of ``embodiment.action_dim`` finite numbers."""
        ...

    def expert_action(self) -> np.ndarray:
        """The scripted expert's float32 action for the true simulator state."""
        ...

    def expert_subtask(self) -> tuple[int, str]:
        """The expert's current subtask: its index in the episode and its instruction."""
        ...

    def predicates(self) -> dict[str, bool]:
        """The grounded symbolic state now: every atom of the scene, true or false."""
        ...

    @property
    def goal(self) -> tuple[str, ...]:
        """The atoms whose conjunction is the task's goal."""
        ...

    @property
    def shift_context(self) -> ShiftContext:
        """What shifts may edit in this scene."""
        ...

    @property
    def active_shifts(self) -> tuple[Shift, ...]:
        """The shifts that do something."""
        ...

    def render(self, camera: str, decorate: Callable[[Any], None] | None = None) -> np.ndarray:
        """Render ``camera`` now: uint8 ``(S, S, 3)``."""
        ...

    def close(self) -> None:
        """Free the renderer and the simulator."""
        ...

    def __enter__(self) -> SimEnv: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class SymbolicScene(Protocol):
    """What a planner reads from and does in a scene with named objects (LIBERO, the robosuite arms).

    Every :class:`SimEnv` of those backends is one; Meta-World's single-skill tasks are not."""

    @property
    def objects(self) -> tuple[str, ...]:
        """The scene's movable objects."""
        ...

    @property
    def words(self) -> Mapping[str, str]:
        """Objects whose scene names are not language, in words (``cubeA`` -> ``red cube``)."""
        ...

    def position(self, name: str) -> np.ndarray:
        """World position (3,) of an object or region, now."""
        ...

    def holds(self, text: str) -> bool:
        """Whether one atom holds now (an unknown object or predicate is a clear error)."""
        ...

    def predicates(self) -> dict[str, bool]:
        """Every grounded atom of the scene now, true or false."""
        ...

    def skill_action(self, goal_atom: str, restart: bool = False) -> np.ndarray:
        """The scripted skill's next action toward one atom (privileged: it reads true poses); ``restart``
        starts a new attempt from the skill's first phase."""
        ...


def atom(predicate: str, *args: str) -> str:
    """The canonical text of an atom: ``atom("On", "bowl_1", "plate_1") == "on(bowl_1,plate_1)"``."""
    if not predicate or any(not a or "," in a or " " in a for a in args):
        raise LbmError(f"An atom needs a predicate and object names without commas or spaces; got {predicate!r}{args!r}.")
    return f"{predicate.lower()}({','.join(args)})"


@functools.lru_cache(maxsize=1 << 16)  # planners and guards parse the same atoms many times
def parse_atom(text: str) -> tuple[str, tuple[str, ...]]:
    """Inverse of :func:`atom`: ``"on(a,b)" -> ("on", ("a", "b"))``."""
    text = text.strip()
    if not text.endswith(")") or "(" not in text:
        raise LbmError(f"{text!r} is not an atom; write it as predicate(arg,...), e.g. 'on(bowl_1,plate_1)'.")
    name, _, rest = text[:-1].partition("(")
    args = tuple(a.strip() for a in rest.split(",") if a.strip())
    return name.strip().lower(), args


def goal_reached(state: Mapping[str, bool], goal: tuple[str, ...]) -> bool:
    """Whether every goal atom holds in ``state`` (an atom the state lacks is an error, not False)."""
    missing = [a for a in goal if a not in state]
    if missing:
        raise LbmError(f"The symbolic state has no atom(s) {missing}; it grounds {len(state)} atoms of another scene.")
    return all(state[a] for a in goal)
