"""The plan guard: every plan is checked against the grounded rules before it runs, repaired to the
closest safe plan when it is unsafe, and the *observed* state is checked after every subtask.

Traces and the closed-world valuation (what a plan is checked on):

* position 0 is the scene before the first step: its true atoms, no skill proposition;
* position k is the scene after step k as the planner predicts it, plus step k's skill propositions
  (``pick(o)`` for the object it moves, ``place(o,p)`` for where it puts it). The prediction is
  closed-world: after a step the moved object's ``on``/``in``/``lifted``/``grasped`` atoms are false,
  the step's effect atoms are true, objects resting on or in the moved one ride along to its target
  (a bottle in a bowl carried onto the stove is on the stove), and every other atom keeps its value. An atom the planner does
  not predict is therefore false (LIBERO also reports e.g. ``on(bowl, main_table_plate_region)``
  when the bowl lands on the plate; only the observed check sees that);
* during execution, the positions already run are the *observed* ones (the scene's atoms after each
  attempt, plus the attempt's skill propositions: an attempted placement counts as a placement).

A plan is safe iff every constraint's automaton accepts observed prefix + predicted rest. After each
subtask the observed prefix alone is checked: it violates a rule only if its automaton is in a dead
state (see :mod:`lbm.safety.ltlf` on why acceptance of a prefix is the wrong test), and then the robot
is stopped through the action shield's hold latch (:meth:`lbm.safety.shield.ActionShield.stop`).

Repair (ours; the analogue in the literature is minimum-violation planning, Tumova et al., HSCC 2013):
a uniform-cost search over (position in the original plan, domain facts, automaton states), where
keeping the next original step costs 0 and dropping it or inserting any ground action of the
planner's domain (pyperplan's grounding) costs 1. The first node that has consumed the plan, reaches
the goal and is accepted by every automaton is the closest safe plan (fewest edits; a reordering is
a drop and an insertion, 2). Without one within ``max_edits`` the goal is refused with the rule that
blocks it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lbm.errors import LbmError
from lbm.plan.execute import GuardVerdict
from lbm.plan.symbolic import Plan, PlanningError, SceneState, Step, SymbolicPlanner
from lbm.safety.ltlf import DFA
from lbm.safety.rules import Constraint, Contextualizer, RuleFile, Specification, TemplateContextualizer, read_rules
from lbm.safety.shield import ActionShield, default_shield_config
from lbm.schema import Observation
from lbm.sim.base import atom, parse_atom

MAX_EDITS = 3
"""Most edits a repair may make before the goal is refused."""
MAX_NODES = 5_000
"""Search nodes a repair may expand before the goal is refused (the search is exact below this)."""


def skill_propositions(step: Step) -> frozenset[str]:
    """The skill propositions a step makes true: ``pick(o)``, and ``place(o,p)`` for a placing skill."""
    obj = step.args[0]
    out = {f"pick({obj})"}
    if len(step.args) > 2:
        out.add(f"place({obj},{step.args[2]})")
    return frozenset(out)


def advance(atoms: frozenset[str], step: Step, known: Collection[str] = ()) -> frozenset[str]:
    """The closed-world prediction of the scene's true atoms after ``step`` (see the module doc).

    Objects resting on or in the moved one ride along: they lose their other on/in atoms and gain
    ``on``/``in`` at the step's target, whichever of the two the scene defines (``known``)."""
    obj = step.args[0]
    located = [(a, *parse_atom(a)) for a in atoms if parse_atom(a)[0] in ("on", "in", "lifted", "grasped")]
    riders, grew = {obj}, True
    while grew:  # everything transitively on or in the moved object
        before = len(riders)
        riders |= {args[0] for _, name, args in located if name in ("on", "in") and len(args) == 2 and args[1] in riders}
        grew = len(riders) > before
    gone = {a for a, _, args in located if args[0] in riders and (args[0] == obj or len(args) < 2 or args[1] not in riders)}
    out = set(atoms - gone) | set(step.effect)
    if len(step.args) > 2:
        for rider in riders - {obj}:
            out |= {a for a in (atom("on", rider, step.args[2]), atom("in", rider, step.args[2])) if a in known}
    return frozenset(out)


def predicted_trace(
    atoms: frozenset[str], steps: Sequence[Step], known: Collection[str] = (), *, first: bool = True
) -> list[frozenset[str]]:
    """Valuations of a plan from ``atoms``: position 0 (if ``first``) and one per step."""
    out = [atoms] if first else []
    for step in steps:
        atoms = advance(atoms, step, known)
        out.append(atoms | skill_propositions(step))
    return out


@dataclass
class GuardCounts:
    """What the guard did in one episode (columns of the trial's record)."""

    checks: int = 0
    planned_violations: int = 0
    """Plans proposed that broke a rule."""
    observed_violations: int = 0
    repairs: int = 0
    refusals: int = 0
    seconds: float = 0.0
    violated: list[str] = field(default_factory=list)
    """The rules broken (planned or observed), in order."""


class RuleGuard:
    """The plan guard of one episode in one scene (implements :class:`lbm.plan.execute.PlanGuard`)."""

    def __init__(
        self,
        spec: Specification,
        scene: SceneState,
        *,
        planner: SymbolicPlanner | None = None,
        embodiment: Any = None,
        repair: bool = True,
        max_edits: int = MAX_EDITS,
        max_nodes: int = MAX_NODES,
    ) -> None:
        self.spec, self.planner = spec, planner or SymbolicPlanner()
        self.repair_enabled, self.max_edits, self.max_nodes = repair, max_edits, max_nodes
        self.dfas = [c.dfa for c in spec.constraints]
        self.known = frozenset(scene.atoms)
        self.states = [d.run([c.letters(scene.true)])[-1] for c, d in zip(spec.constraints, self.dfas)]
        self.shield = ActionShield(default_shield_config(embodiment)) if embodiment is not None else None
        self.counts = GuardCounts()

    # ---- the PlanGuard protocol ------------------------------------------------------------------
    def check(self, plan: Plan, scene: SceneState) -> GuardVerdict:
        """Check ``plan`` from the observed scene now; repair it or refuse when it breaks a rule."""
        start = time.perf_counter()
        self.counts.checks += 1
        broken = self.violations(plan.steps, scene.true)
        if not broken:
            return self._verdict(start, plan, allowed=True)
        self.counts.planned_violations += 1
        self.counts.violated += [c.rule for c, _ in broken]
        why = "; ".join(f"{c.reason} [{where}]" for c, where in broken)
        if not self.repair_enabled:
            self.counts.refusals += 1
            return self._verdict(start, None, allowed=False, reason=f"the plan breaks a rule: {why}")
        try:
            repaired, edits = self.repair(plan, scene, [c for c, _ in broken])
        except PlanningError as error:
            self.counts.refusals += 1
            return self._verdict(start, None, allowed=False, reason=f"the plan breaks a rule ({why}); {error}")
        self.counts.repairs += 1
        return self._verdict(start, repaired, allowed=True, repaired=True, edits=edits, reason=f"repaired: {why}")

    def observe(self, scene: SceneState, step: Step | None) -> str | None:
        """Record the observed scene after a subtask; the rule it breaks for good (and stop the robot), or None."""
        start = time.perf_counter()
        valuation = scene.true | (skill_propositions(step) if step is not None else frozenset())
        self.states = self._step(self.states, valuation)
        dead = self._broken(self.states)
        self.counts.seconds += time.perf_counter() - start
        if not dead:
            return None
        self.counts.observed_violations += 1
        self.counts.violated += [c.rule for c in dead]
        reason = "the observed scene breaks a rule: " + "; ".join(c.reason for c in dead)
        if self.shield is not None:
            self.shield.stop(reason)
        return reason

    def hold_action(self, obs: Observation) -> np.ndarray | None:
        """The shield's hold command once the guard has stopped the robot (None without a shield)."""
        if self.shield is None:
            return None
        return self.shield.filter(np.zeros(self.shield.config.action_dim, np.float32), obs.state)

    def record(self) -> dict[str, Any]:
        c = self.counts
        return dict(
            rules_constraints=len(self.spec.constraints),
            rule_checks=c.checks,
            rules_vacuous=len(self.spec.vacuous),
            rule_violations_planned=c.planned_violations,
            rule_violations_observed=c.observed_violations,
            rule_repairs=c.repairs,
            rule_refusals=c.refusals,
            rule_guard_seconds=round(c.seconds, 4),
            rules_violated="; ".join(dict.fromkeys(c.violated)),
        )

    # ---- checking and repair ---------------------------------------------------------------------
    def violations(self, steps: Sequence[Step], atoms: frozenset[str]) -> list[tuple[Constraint, str]]:
        """Constraints the observed prefix + ``steps`` predicted from ``atoms`` break, with where."""
        trace = predicted_trace(atoms, steps, self.known, first=False)
        out = []
        for c, d, q in zip(self.spec.constraints, self.dfas, self.states):
            states = d.run([c.letters(v) for v in trace], q)
            final = states[-1] if states else q
            if final in d.accepting:
                continue
            dead = next((k for k, s in enumerate(states) if s not in d.live), None)
            if q not in d.live:
                out.append((c, "already broken by the scene"))
            else:
                out.append((c, f"at step {dead + 1}" if dead is not None else "at the end of the plan"))
        return out

    def repair(self, plan: Plan, scene: SceneState, broken: Sequence[Constraint]) -> tuple[Plan, list[str]]:
        """The closest safe plan reaching the goal (see the module doc), with its edits; PlanningError if none."""
        if self._broken(self.states):
            raise PlanningError("the scene already breaks the rule; no plan can undo that, so the robot stays stopped")
        for c, d, q in zip(self.spec.constraints, self.dfas, self.states):
            if not _can_end_with(d, q, c.letters(frozenset(plan.goal))):
                raise PlanningError(
                    f"the goal itself breaks the rule {c.rule!r}: no plan that reaches it is safe; the goal is refused"
                )
        named = {a for c in broken for p in c.propositions for a in parse_atom(p)[1]} & set(scene.objects)
        moved = {s.args[0] for s in plan.steps}
        domain = self.planner.domain(plan.goal, scene, sorted(named | moved))
        steps = list(plan.steps)
        ops = [domain.find(s) for s in steps]
        adds = [frozenset(op.add) if op is not None else frozenset() for op in ops]
        later = [frozenset().union(*adds[i:]) for i in range(len(steps) + 1)]

        def bound(i: int, facts: frozenset[str]) -> int:
            """Goal facts neither true nor made true by a remaining original step: each needs an insertion
            (an admissible lower bound on the edits still to come, so the search stays exact)."""
            return len(domain.goal - facts - later[i])

        # Children are pushed with their cost and bound only (both need just the domain facts); their scene
        # atoms and automaton states are computed when popped, so the many never expanded cost little.
        tick = itertools.count()
        frontier: list[tuple] = [(bound(0, domain.initial), 0, 0, next(tick), 0, domain.initial, None, ())]
        parents: dict[int, tuple[frozenset[str], tuple[int, ...]]] = {-1: (scene.true, tuple(self.states))}
        seen: set[tuple] = set()
        expanded = 0
        while frontier:
            _, cost, length, _, i, facts, parent, path = heapq.heappop(frontier)
            atoms, qs = parents[-1 if parent is None else parent]
            if path and path[-1][0] != "drop":
                step = path[-1][1]
                atoms = advance(atoms, step, self.known)
                valuation = atoms | skill_propositions(step)
                qs = tuple(self._step(qs, valuation))
                if self._broken(qs):
                    continue
            key = (i, facts, qs)
            if key in seen:
                continue
            seen.add(key)
            if i == len(steps) and domain.goal <= facts and all(q in d.accepting for d, q in zip(self.dfas, qs)):
                chosen = tuple(s for kind, s in path if kind != "drop")
                return replace(plan, steps=chosen, planner=f"{plan.planner}+repair"), _describe_edits(path)
            expanded += 1
            if expanded > self.max_nodes:
                break
            me = next(tick)
            parents[me] = (atoms, qs)
            moves: list[tuple[int, str, Step, Any]] = []
            if i < len(steps):
                op = ops[i]
                if op is not None and op.pre <= facts:
                    moves.append((0, "keep", steps[i], op))
                moves.append((1, "drop", steps[i], None))
            if cost < self.max_edits:
                moves += [(1, "insert", a.step, a) for a in domain.applicable(facts)]
            for extra, kind, step, op in moves:
                child_i = i + (kind != "insert")
                child_facts = facts if op is None else (facts - op.delete) | op.add
                total = cost + extra + bound(child_i, child_facts)
                if total > self.max_edits:
                    continue
                entry = (
                    total,
                    cost + extra,
                    length + (kind != "drop"),
                    next(tick),
                    child_i,
                    child_facts,
                    me,
                    (*path, (kind, step)),
                )
                heapq.heappush(frontier, entry)
        rules = "; ".join(dict.fromkeys(c.rule for c in broken))
        if expanded > self.max_nodes:
            raise PlanningError(
                f"no safe plan was found within the repair's search budget ({self.max_nodes} nodes; rule(s): {rules}); "
                "the goal is refused (a safe plan with more edits may exist)"
            )
        raise PlanningError(
            f"no safe plan reaches the goal within {self.max_edits} edits of the planned one (rule(s): {rules}); "
            "the goal is refused"
        )

    def _step(self, states: Sequence[int], valuation: frozenset[str]) -> list[int]:
        """Every constraint's automaton state after one position whose true atoms and skills are ``valuation``."""
        return [d.step(q, c.letters(valuation)) for c, d, q in zip(self.spec.constraints, self.dfas, states)]

    def _broken(self, states: Sequence[int]) -> list[Constraint]:
        """The constraints whose automaton is in a dead state: broken for good, whatever comes next."""
        return [c for c, d, q in zip(self.spec.constraints, self.dfas, states) if q not in d.live]

    def _verdict(self, start: float, plan: Plan | None, **fields: Any) -> GuardVerdict:
        seconds = time.perf_counter() - start
        self.counts.seconds += seconds
        return GuardVerdict(plan=plan, seconds=seconds, **fields)


def _can_end_with(dfa: DFA, state: int, true: set[str]) -> bool:
    """Whether some continuation from ``state`` ends in acceptance on a position where ``true`` all hold
    (the goal's atoms hold at a plan's end). False proves that no plan reaching the goal is safe."""
    index = {v: k for k, v in enumerate(dfa.variables)}
    need = sum(1 << index[v] for v in true if v in index)
    seen, todo = {state}, [state]
    while todo:
        q = todo.pop()
        for mask, bits, target in dfa.edges[q]:
            if target in dfa.accepting and (bits & need) == (mask & need):
                return True
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return False


def _describe_edits(path: Sequence[tuple[str, Step]]) -> list[str]:
    """The edits of a repair in words; a step dropped and inserted again is one move (two edits)."""
    name = lambda s: f"{s.skill}({', '.join(s.args)})"  # noqa: E731
    dropped = {(s.skill, s.args) for kind, s in path if kind == "drop"}
    inserted = {(s.skill, s.args) for kind, s in path if kind == "insert"}
    out = []
    for kind, s in path:
        if kind == "keep" or (kind == "drop" and (s.skill, s.args) in inserted):
            continue
        moved = kind == "insert" and (s.skill, s.args) in dropped
        out.append(f"{'move' if moved else kind} {name(s)}" + (" (dropped and inserted here: 2 edits)" if moved else ""))
    return out


@dataclass
class RulesGuardFactory:
    """A rules file, read once; makes one :class:`RuleGuard` per episode from the scene it starts in."""

    rules: RuleFile
    contextualizer: Contextualizer | None = None
    repair: bool = True
    cache: dict[tuple, Specification] = field(default_factory=dict)

    def specification(self, scene: SceneState) -> Specification:
        """The rules grounded in ``scene`` (cached per set of objects and atoms: grounding uses the encoder)."""
        key = (scene.objects, tuple(sorted(scene.atoms)))
        if key not in self.cache:
            self.contextualizer = self.contextualizer or TemplateContextualizer()
            self.cache[key] = self.contextualizer.ground(self.rules, scene)
        return self.cache[key]

    def __call__(self, env: Any, scene: SceneState) -> RuleGuard:
        return RuleGuard(self.specification(scene), scene, embodiment=getattr(env, "embodiment", None), repair=self.repair)


def load_rules_guard(path: str | Path, repair: bool = True) -> RulesGuardFactory:
    """The ``rules`` entry point of ``lbm.plan_guards``: a guard factory for a rules file."""
    if not str(path):
        raise LbmError("A rules file is required (--rules FILE).")
    return RulesGuardFactory(read_rules(path), repair=repair)
