"""The symbolic planner: scene atoms + goal atoms -> a workflow of skill steps, by a real STRIPS planner.

The domain (``domain.pddl`` beside this file) is lbm's skill library written in PDDL: pick-place onto
a place that holds many objects, stack onto one that holds one, pick-lift. A problem is built from
the scene's *observed* atoms (closed world: an atom not reported true is false), so the same call
plans from the start and replans from wherever execution left the scene.

Search is pyperplan's (Alkhazraji et al., 2020): A* with the admissible LM-cut heuristic after
pyperplan's relevance analysis, so plans have the fewest steps. We use pyperplan rather than
unified-planning because it is one pure-Python wheel with no engine to fetch and solves these
problems in milliseconds; its GPL-3.0 licence is why it is the optional extra ``lbm[plan]``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Protocol

from lbm.errors import LbmError
from lbm.sim.base import atom, parse_atom
from lbm.sim.waypoints import subtasks

SKILLS = ("pick-place", "stack", "pick-lift")
"""The skill library: the actions of ``domain.pddl``."""
SKILL_PREDICATES = ("on", "in", "lifted")
"""Scene predicates the skill library can make true (every other goal predicate is refused)."""
STACKABLE = ("cube", "block")
"""Objects with a top that holds one object (stacking needs them clear); every other place holds many."""
FLOOR = "floor"
"""Where an object rests when no scene atom places it (it can be moved, nothing can be put there)."""
INSTALL_HINT = "The symbolic planner needs pyperplan: `pip install 'lbm[plan]'` (GPL-3.0, so an optional extra)."


class PlanningError(LbmError):
    """A goal that cannot be planned, with the reason (ungroundable, contradictory, impossible, time-out)."""


@dataclass(frozen=True)
class Step:
    """One subtask of a workflow: a skill with its arguments, its instruction and its expected effect."""

    skill: str
    """Skill name in the domain: ``pick-place``, ``stack`` or ``pick-lift``."""
    args: tuple[str, ...]
    """The skill's arguments: ``(object, from, to)`` or ``(object, from)``."""
    instruction: str
    """The subtask instruction a skill policy is conditioned on."""
    goal_atom: str
    """The scene atom the skill drives to (``in(soup,basket_region)``): its skill target."""
    precondition: tuple[str, ...]
    """Domain facts that must hold before the step (``at(soup,floor)``, ``clear(soup)``, ``hand-empty()``)."""
    effect: tuple[str, ...]
    """Scene atoms expected true after the step."""


@dataclass(frozen=True)
class Plan:
    """A workflow ``P = [tau_1 ... tau_N]`` for a goal, and how it was found."""

    goal: tuple[str, ...]
    steps: tuple[Step, ...]
    planner: str
    seconds: float
    """Wall time of planning (grounding and search)."""
    satisfied: tuple[str, ...] = ()
    """Goal atoms that already held (no step needed)."""

    def describe(self) -> list[str]:
        """One line per step, for logs and ``lbm plan``."""
        return [
            f"{k}. {s.skill}({', '.join(s.args)}): {s.instruction}  -> {', '.join(s.effect)}" for k, s in enumerate(self.steps, 1)
        ]


@dataclass(frozen=True)
class SceneState:
    """What the planner knows of a scene: its movable objects, their words, and its atoms now."""

    objects: tuple[str, ...]
    atoms: Mapping[str, bool]
    """Every grounded atom of the scene, true or false (``predicates()``)."""
    words: Mapping[str, str] = field(default_factory=dict)

    @property
    def true(self) -> frozenset[str]:
        return frozenset(a for a, v in self.atoms.items() if v)

    @functools.cached_property
    def places(self) -> tuple[str, ...]:
        """Everything something can be put on or in (the second argument of a scene's on/in atoms)."""
        out: dict[str, None] = {}
        for text in self.atoms:
            name, args = parse_atom(text)
            if name in ("on", "in") and len(args) == 2:
                out[args[1]] = None
        return tuple(out)

    def relation(self, obj: str, place: str) -> str:
        """``in`` for a container region or an object with an ``in`` atom and no ``on`` one, else ``on``."""
        has_on, has_in = atom("on", obj, place) in self.atoms, atom("in", obj, place) in self.atoms
        if has_in and (not has_on or place.endswith("contain_region")):
            return "in"
        return "on"


@dataclass(frozen=True)
class Action:
    """One ground action of the skill domain: the step it is, and its precondition and effects as domain facts."""

    step: Step
    pre: frozenset[str]
    add: frozenset[str]
    delete: frozenset[str]


@dataclass(frozen=True)
class GroundDomain:
    """The skill domain grounded in one scene: facts now, goal facts, and every action (pyperplan's grounding)."""

    initial: frozenset[str]
    goal: frozenset[str]
    actions: tuple[Action, ...]
    by_fact: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Action indices by their ``at`` precondition (pick-place, stack and pick-lift have one each): an index."""

    def __post_init__(self) -> None:
        index: dict[str, list[int]] = {}
        for k, a in enumerate(self.actions):
            key = next((f for f in sorted(a.pre) if f.startswith("(at ")), "")
            index.setdefault(key, []).append(k)
        object.__setattr__(self, "by_fact", {k: tuple(v) for k, v in index.items()})

    def applicable(self, facts: frozenset[str]) -> list[Action]:
        """Actions whose precondition holds in ``facts``, in the domain's (sorted) order."""
        keys = ("", *(f for f in facts if f in self.by_fact))
        found = sorted(k for key in keys for k in self.by_fact.get(key, ()))
        return [self.actions[k] for k in found if self.actions[k].pre <= facts]

    def find(self, step: Step) -> Action | None:
        """The ground action of a planned step (same skill and arguments)."""
        return next((a for a in self.actions if (a.step.skill, a.step.args) == (step.skill, step.args)), None)


class Planner(Protocol):
    """Goal atoms + scene -> plan. The symbolic planner is the default; an LLM/VLM planner served elsewhere
    implements the same call (and its plans are still checked by the verifier and the plan guard)."""

    name: str

    def plan(self, goal: Sequence[str], scene: SceneState, *, timeout_s: float = 5.0) -> Plan: ...


class _Deadline(Exception):
    pass


class SymbolicPlanner:
    """A* with LM-cut over lbm's PDDL skill domain (pyperplan)."""

    name = "symbolic"

    def __init__(self) -> None:
        self.domain_text = resources.files("lbm.plan").joinpath("domain.pddl").read_text()

    def plan(self, goal: Sequence[str], scene: SceneState, *, timeout_s: float = 5.0) -> Plan:
        """The fewest-step plan from the scene's atoms now to ``goal``; :class:`PlanningError` says why there is none."""
        start = time.perf_counter()
        goal = tuple(goal)
        facts = goal_facts(goal, scene)
        true = scene.true
        satisfied = tuple(g for g in goal if g in true)
        pending = [f for g, f in zip(goal, facts) if g not in true]
        if not pending:
            return Plan(goal, (), self.name, time.perf_counter() - start, satisfied)
        task = self._ground(scene, pending)
        # Grounding iterates sets, whose order changes with Python's per-process hash seed; A* breaks ties
        # by successor order. Sorting the operators (those moving earlier goal objects first) makes the
        # plan a function of the scene and the goal alone, the same in every process.
        order = {_pddl_name(parse_atom(f)[1][0]): k for k, f in reversed(list(enumerate(pending)))}

        def rank(op) -> tuple[int, str]:  # op.name is "(skill object from [to])"
            return order.get(op.name.strip("()").split()[1], len(order)), op.name

        task.operators.sort(key=rank)
        from pyperplan import search
        from pyperplan.heuristics.lm_cut import LmCutHeuristic

        heuristic = LmCutHeuristic(task)
        deadline = start + timeout_s

        def bounded(node):  # the search calls the heuristic once per node: the deadline is checked there
            if time.perf_counter() > deadline:
                raise _Deadline
            return heuristic(node)

        try:
            ops = search.astar_search(task, bounded)
        except _Deadline:
            raise PlanningError(
                f"The planner found no plan within its time limit of {timeout_s:g} s for {', '.join(goal)}; "
                "raise --timeout-s or simplify the goal."
            ) from None
        if ops is None:
            raise PlanningError(
                f"No plan exists for {', '.join(goal)} from the scene's current state with the skills "
                f"{', '.join(SKILLS)} (e.g. a cycle of stacks, or a target that holds one object "
                "and is taken)."
            )
        steps = tuple(self._step(op.name, goal, scene) for op in ops)
        return Plan(goal, steps, self.name, time.perf_counter() - start, satisfied)

    def domain(self, goal: Sequence[str], scene: SceneState, objects: Sequence[str] = ()) -> GroundDomain:
        """Every ground action of the skill domain over the goal's objects (and ``objects``) and every place of
        the scene, with no relevance pruning: the search space of plan repair (:mod:`lbm.safety.plan_guard`)."""
        facts = goal_facts(goal, scene)
        extra = [atom("lifted", o) for o in objects if o in scene.objects]  # only to bring the objects in
        task = self._ground(scene, facts + extra, every_place=True, prune=False)
        task.goals = frozenset(self._pddl(f, {n: _pddl_name(n) for n in [*scene.places, *scene.objects, FLOOR]}) for f in facts)
        operators = sorted((op for op in task.operators if op is not None), key=lambda op: op.name)
        actions = tuple(
            Action(self._step(op.name, tuple(goal), scene), op.preconditions, op.add_effects, op.del_effects) for op in operators
        )
        return GroundDomain(frozenset(task.initial_state), frozenset(task.goals), actions)

    def _ground(self, scene: SceneState, pending: list[str], every_place: bool = False, prune: bool = True):
        """pyperplan's grounded task for reaching ``pending`` (domain facts) from the scene."""
        problem = self._problem(scene, pending, every_place)
        try:
            from pyperplan import grounding
            from pyperplan.pddl.parser import Parser
        except ImportError:
            raise LbmError(INSTALL_HINT) from None
        parser = Parser(None)  # parsed from strings: the domain ships with lbm, the problem is built here
        parser.domInput, parser.probInput = self.domain_text, problem
        parsed = parser.parse_problem(parser.parse_domain(read_from_file=False), read_from_file=False)
        return grounding.ground(parsed, remove_irrelevant_operators=prune)

    def _problem(self, scene: SceneState, pending: list[str], every_place: bool = False) -> str:
        true = scene.true
        supports = {
            o: [
                p
                for p in scene.places
                if p != o and not p.startswith(o) and (atom("on", o, p) in true or atom("in", o, p) in true)
            ]
            for o in scene.objects
        }
        # Only what the goal touches: its objects and targets, and (transitively) whatever rests on them,
        # since a loaded object cannot be picked and a loaded stackable cannot be stacked on. This keeps
        # grounding small (LIBERO scenes have dozens of regions), which is most of the planning time.
        objects = [o for o in scene.objects if any(o in parse_atom(f)[1] for f in pending)]
        targets = {parse_atom(f)[1][-1] for f in pending if parse_atom(f)[0] == "at"}
        grew = True
        while grew:
            grew = False
            for o in scene.objects:
                if o not in objects and any(p in objects or p in targets for p in supports[o]):
                    objects.append(o)
                    grew = True
        places = targets | {p for o in objects for p in supports[o]}
        if every_place or any(p in objects and _stackable(p, scene) for o in objects for p in supports[o]):
            # Something must come off a stack: every place that holds many objects is a place to put it.
            places |= {p for p in scene.places if p not in scene.objects}
        places = sorted(places - set(objects))
        names = {n: _pddl_name(n) for n in [*objects, *places, FLOOR]}
        held = [o for o in scene.objects if atom("lifted", o) in true or atom("grasped", o) in true]
        init = [f"(lifted {names[o]})" for o in held if o in names and atom("lifted", o) in true] if held else ["(hand-empty)"]
        loaded: set[str] = set()
        for o in objects:
            if o in held:
                continue
            for p in [q for q in supports[o] if q in names] or [FLOOR]:
                init.append(f"(at {names[o]} {names[p]})")
                loaded.add(p)
            init.append(f"(movable {names[o]})")
        for p in [*objects, *places]:
            init.append(f"(stackable {names[p]})" if p in objects and _stackable(p, scene) else f"(shared {names[p]})")
        init += [f"(clear {names[x]})" for x in [*objects, *places, FLOOR] if x not in loaded]
        init += [f"(distinct {names[a]} {names[b]})" for a in objects for b in [*objects, *places] if a != b]
        return (
            f"(define (problem lbm-goal) (:domain lbm-tabletop)\n(:objects {' '.join(names.values())})\n"
            f"(:init {' '.join(init)})\n(:goal (and {' '.join(self._pddl(f, names) for f in pending)})))\n"
        )

    @staticmethod
    def _pddl(fact: str, names: Mapping[str, str]) -> str:
        name, args = parse_atom(fact)
        return f"({name} {' '.join(names[a] for a in args)})"

    def _step(self, op: str, goal: tuple[str, ...], scene: SceneState) -> Step:
        # pyperplan names a ground operator "(stack cubea table cubeb)"; map PDDL names back to the scene's.
        back = {_pddl_name(n): n for n in [*scene.places, *scene.objects, FLOOR]}
        skill, *args = op.strip("()").split()
        args = [back[a] for a in args]
        obj, source = args[0], args[1]
        pre = [f"at({obj},{source})", f"clear({obj})", "hand-empty()"]
        if skill == "pick-lift":
            target = atom("lifted", obj)
        else:
            to = args[2]
            rel = next((parse_atom(g)[0] for g in goal if parse_atom(g)[1] == (obj, to)), scene.relation(obj, to))
            target = atom(rel, obj, to)
            if skill == "stack":
                pre.append(f"clear({to})")
        instruction = subtasks((target,), scene.objects, scene.words)[0].instruction
        return Step(skill, tuple(args), instruction, target, tuple(pre), (target,))


def goal_facts(goal: Sequence[str], scene: SceneState) -> list[str]:
    """Goal atoms as domain facts (``on``/``in`` -> ``at``), refusing what the skills cannot achieve or contradicts itself."""
    facts, where = [], {}
    known = set(scene.atoms)
    for text in goal:
        name, args = parse_atom(text)
        if name not in SKILL_PREDICATES:
            raise PlanningError(
                f"The goal atom {text} is beyond the skill library: its skills achieve only "
                f"{', '.join(p + '(...)' for p in SKILL_PREDICATES)} (no skill opens, closes or turns things)."
            )
        if text not in known:
            names = sorted({a for t in known for a in parse_atom(t)[1]})
            missing = [a for a in args if a not in names]
            raise PlanningError(
                f"The goal atom {text} names {', '.join(missing) or 'a relation'} that is not in the scene"
                + (f" (its objects and places: {', '.join(names)})." if missing else f" ({text} is not defined here).")
            )
        obj = args[0]
        target = "lifted" if name == "lifted" else args[1]
        if obj in where and where[obj] != target:
            raise PlanningError(
                f"The goal is contradictory: it wants {obj} both {where[obj]!r} and {target!r}; an object is in one place."
            )
        where[obj] = target
        facts.append(atom("lifted", obj) if name == "lifted" else atom("at", obj, args[1]))
    return facts


def _stackable(name: str, scene: SceneState) -> bool:
    label = f"{name} {scene.words.get(name, '')}".lower()
    return any(w in label for w in STACKABLE)


def _pddl_name(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "_", name.lower())
