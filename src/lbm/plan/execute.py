"""Executing a plan with verification and replanning (seed 003, Algorithm 1, steps 2-4).

For each subtask the skill runs until its expected effect has held for ``settle_steps`` consecutive
checks, or its step budget is spent; then the effect and the guards are checked on the *observed*
symbolic state. A failed subtask, or an earlier effect that no longer holds, re-plans from the
state now (bounded by ``max_replans`` and the episode's step budget). The goal is verified at the
end. Without verification (``verify=False``, open loop) each subtask runs for its whole budget and
execution moves on regardless. Every decision is an event of the trial's log.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lbm.plan.symbolic import Plan, Planner, PlanningError, SceneState, Step
from lbm.policies.base import ChunkRequest, Policy
from lbm.schema import Observation
from lbm.sim.base import SimEnv, SymbolicScene


class Verifier(Protocol):
    """Does each atom hold now? The privileged verifier reads the simulator; a learned one reads observations."""

    name: str

    def check(self, env: SymbolicScene, obs: Observation, atoms: Sequence[str]) -> dict[str, bool]: ...


class GroundTruthVerifier:
    """The simulator's own symbolic state (privileged: available in simulation only)."""

    name = "privileged"

    def check(self, env: SymbolicScene, obs: Observation, atoms: Sequence[str]) -> dict[str, bool]:
        return {a: env.holds(a) for a in atoms}


class Skills(Protocol):
    """Low-level skill execution: the next action for one subtask."""

    name: str

    def start(self, step: Step, seed: int) -> None: ...

    def act(self, env: SymbolicScene, obs: Observation, step: Step) -> np.ndarray: ...


class ScriptedSkills:
    """The backend's waypoint skills (privileged poses): the ceiling of skill execution."""

    name = "scripted"
    fresh = True

    def start(self, step: Step, seed: int) -> None:
        self.fresh = True  # every attempt starts the skill over, from wherever the scene is now

    def act(self, env: SymbolicScene, obs: Observation, step: Step) -> np.ndarray:
        action, self.fresh = env.skill_action(step.goal_atom, restart=self.fresh), False
        return action


class PolicySkills:
    """One lbm policy conditioned on each subtask's instruction (trained on subtask-labelled demos)."""

    def __init__(self, policy: Policy, execute_steps: int | None = None) -> None:
        self.policy = policy
        self.execute_steps = execute_steps or policy.execute_steps or policy.horizon
        self.name = f"policy:{policy.describe().get('family', 'policy')}"
        self.queue: list[np.ndarray] = []
        self.state: Any = None

    def start(self, step: Step, seed: int) -> None:
        self.state, self.queue = self.policy.reset(seed), []  # a new subtask: history of the last one is not its context

    def act(self, env: SymbolicScene, obs: Observation, step: Step) -> np.ndarray:
        if not self.queue:
            conditioned = dataclasses.replace(obs, instruction=step.instruction)
            chunk = self.policy.predict_chunk([conditioned], [self.state], ChunkRequest())
            self.state = chunk.states[0]
            self.queue = list(np.asarray(chunk.actions)[0, : self.execute_steps])
        return self.queue.pop(0)


@dataclass(frozen=True)
class ExecuteConfig:
    """How a plan is run and checked."""

    verify: bool = True
    """Check each subtask's effect and re-plan on failure (False: open loop, no checks until the end)."""
    subtask_steps: int = 200
    """Step budget of one attempt at one subtask."""
    settle_steps: int = 5
    """Consecutive checks the effect must hold before a subtask counts as done (a carried object can
    pass through its target on the way)."""
    max_replans: int = 3
    """Re-plans allowed per goal."""
    planner_timeout_s: float = 5.0
    """Planner time limit per call; a time-out is a failure with its reason."""


@dataclass
class GoalResult:
    """What happened to one goal: success (ground truth), the verifier's view, and every decision."""

    goal: tuple[str, ...]
    success: bool
    verified: bool | None
    """The verifier's goal check at the end (None when the plan never started)."""
    subtasks_planned: int = 0
    subtasks_succeeded: int = 0
    replans: int = 0
    retries: int = 0
    """Re-plans whose first step repeats the step that failed."""
    verifier_disagreements: int = 0
    """Checks where the verifier and the simulator's ground truth disagreed."""
    steps: int = 0
    planner_seconds: float = 0.0
    reason: str = ""
    """Why execution stopped (goal verified, budget spent, no plan, guard, ...)."""
    events: list[dict] = field(default_factory=list)


Guard = Callable[[dict[str, bool], Step | None], str | None]
"""A rule check on the observed symbolic state after a subtask: None, or the violated rule and why."""


def scene_state(env: SymbolicScene) -> SceneState:
    """What the planner sees of a scene now."""
    return SceneState(env.objects, env.predicates(), dict(env.words))


def execute(
    env: SimEnv,
    obs: Observation,
    goal: Sequence[str],
    planner: Planner,
    skills: Skills,
    verifier: Verifier,
    config: ExecuteConfig = ExecuteConfig(),
    *,
    seed: int = 0,
    guards: Sequence[Guard] = (),
    on_event: Callable[[dict], None] | None = None,
    after_subtask: Callable[[SimEnv, Step, bool], None] | None = None,
) -> GoalResult:
    """Plan ``goal`` in ``env`` (already reset, ``obs`` its observation) and execute it; see the module doc."""
    if not isinstance(env, SymbolicScene):
        raise PlanningError(f"{env.task}: planning needs a scene with named objects and atoms (LIBERO, robosuite arms).")
    goal = tuple(goal)
    result = GoalResult(goal, success=False, verified=None)

    def log(kind: str, **info: Any) -> None:
        event = dict(kind=kind, step=result.steps, **info)
        result.events.append(event)
        if on_event:
            on_event(event)

    def plan_now(why: str) -> Plan | None:
        try:
            plan = planner.plan(goal, scene_state(env), timeout_s=config.planner_timeout_s)
        except PlanningError as error:
            result.reason = f"no plan ({why}): {error}"
            log("refused", why=str(error))
            return None
        result.planner_seconds += plan.seconds
        log("plan", why=why, steps=plan.describe(), satisfied=list(plan.satisfied), seconds=round(plan.seconds, 4))
        return plan

    def check(atoms: Sequence[str]) -> dict[str, bool]:
        seen = verifier.check(env, obs, atoms)
        if verifier.name != "privileged":
            truth = {a: env.holds(a) for a in atoms}
            result.verifier_disagreements += sum(seen[a] != truth[a] for a in atoms)
        return seen

    plan = plan_now("start")
    budget = env.max_steps if isinstance(getattr(env, "max_steps", None), int) else 10**9
    queue = list(plan.steps) if plan else []
    result.subtasks_planned = len(queue)
    achieved: list[Step] = []
    while plan is not None and queue and result.steps < budget:
        step = queue[0]
        skills.start(step, seed + result.steps)
        held = ticks = 0
        start = time.perf_counter()
        done = False
        while ticks < config.subtask_steps and result.steps < budget:
            out = env.step(skills.act(env, obs, step))
            obs, ticks, result.steps = out.observation, ticks + 1, result.steps + 1
            if out.done and out.info.get("truncated"):
                done = True
                break
            if config.verify:
                held = held + 1 if all(check(step.effect).values()) else 0
                if held >= config.settle_steps:
                    break
        ok = all(check(step.effect).values()) if config.verify else None
        outcome = {True: "done", False: "failed", None: "unchecked"}[ok]
        log("subtask", subtask=step.instruction, effect=list(step.effect), outcome=outcome, steps=ticks,
            seconds=round(time.perf_counter() - start, 3))  # fmt: skip
        if after_subtask:
            after_subtask(env, step, bool(ok))
        if ok or not config.verify:
            result.subtasks_succeeded += bool(ok)
            achieved.append(queue.pop(0))
        if config.verify:
            state = env.predicates()
            violated = next((v for g in guards if (v := g(state, step)) is not None), None)
            if violated:
                result.reason = f"stopped by a guard: {violated}"
                log("guard", why=violated)
                break
            lost = [e for s in achieved for e in s.effect if e in goal and not check([e])[e]]
            if not ok or lost:
                if result.replans >= config.max_replans:
                    result.reason = f"replan budget ({config.max_replans}) spent"
                    break
                why = f"{step.goal_atom} not achieved" if not ok else f"{', '.join(lost)} no longer hold(s)"
                plan = plan_now(why)
                result.replans += 1
                if plan is not None:
                    result.retries += bool(plan.steps) and plan.steps[0].goal_atom == step.goal_atom
                    queue = list(plan.steps)
                    result.subtasks_planned += len(queue)
        if done:
            break
    final = check(goal)
    result.verified = all(final.values()) if plan is not None else None
    result.success = all(env.holds(a) for a in goal)
    if not result.reason:
        result.reason = (
            "goal verified"
            if result.verified
            else ("step budget spent" if result.steps >= budget else "plan ended, goal not verified")
        )
    log("goal", verified=result.verified, success=result.success, reason=result.reason)
    return result
