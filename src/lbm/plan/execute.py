"""Executing a plan with verification and replanning (seed 003, Algorithm 1, steps 2-4).

For each subtask the skill runs until its expected effect has held for ``settle_steps`` consecutive
checks (for a placing skill, with the gripper commanded open all that time: an object that touches
its target while still held is not placed, and the next skill would carry it off), or its step
budget is spent; then the effect and the guards are checked on the *observed* symbolic state. A
failed subtask, or an earlier effect that no longer holds, re-plans from the state now (bounded by
``max_replans`` and the episode's step budget). The goal is verified at the end. Without
verification (``verify=False``, open loop) each subtask runs for its whole budget and execution
moves on regardless. Every decision is an event of the trial's log.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lbm.errors import LbmError
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
        self.restart(seed)  # a new subtask: history of the last one is not its context

    def restart(self, seed: int) -> None:
        """Forget the episode so far (its history and queued actions)."""
        self.state, self.queue = self.policy.reset(seed), []

    def act(self, env: SymbolicScene, obs: Observation, step: Step) -> np.ndarray:
        return self.next_action(obs, step.instruction)

    def next_action(self, obs: Observation, instruction: str) -> np.ndarray:
        """The next action toward ``instruction``: from the queued chunk, or a new chunk when it is spent."""
        if not self.queue:
            conditioned = dataclasses.replace(obs, instruction=instruction)
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
    settle_steps: int = 8
    """Consecutive checks the effect must hold (and, for placing skills, the gripper be commanded open)
    before a subtask counts as done: a carried object can pass through or touch its target on the way."""
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
    verifier_confusion: dict[str, int] = field(default_factory=lambda: dict(tp=0, fp=0, fn=0, tn=0))
    """The verifier's checks against the simulator's truth ("positive": the atom holds), for a learned verifier."""
    steps: int = 0
    planner_seconds: float = 0.0
    reason: str = ""
    """Why execution stopped (goal verified, budget spent, no plan, guard, ...)."""
    events: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class GuardVerdict:
    """A plan guard's answer on one plan: run it (maybe repaired), or refuse it, and why."""

    allowed: bool
    plan: Plan | None
    """The plan to run (the one checked, or its repair); None when refused."""
    repaired: bool = False
    edits: Sequence[str] = ()
    reason: str = ""
    seconds: float = 0.0


class PlanGuard(Protocol):
    """Safety rules on plans and states (Algorithm 1, step 2.1). :mod:`lbm.safety.plan_guard` implements it;
    the planner only calls it, so the rules stay in the safety layer."""

    def check(self, plan: Plan, scene: SceneState) -> GuardVerdict: ...

    def observe(self, scene: SceneState, step: Step | None) -> str | None: ...

    def hold_action(self, obs: Observation) -> np.ndarray | None: ...

    def record(self) -> dict[str, Any]: ...


GuardFactory = Callable[[Any, SceneState], PlanGuard]
"""Builds one episode's guard from its environment and the scene it starts in."""


def load_guard(rules: str) -> GuardFactory:
    """The plan guard for a rules file, from the ``lbm.plan_guards`` entry point (the safety layer provides it)."""
    from importlib.metadata import entry_points

    found = [e for e in entry_points(group="lbm.plan_guards") if e.name == "rules"]
    if not found:
        raise LbmError("No plan guard is installed (entry point lbm.plan_guards:rules); reinstall lbm.")
    return found[0].load()(rules)


def scene_state(env: SymbolicScene) -> SceneState:
    """What the planner sees of a scene now."""
    return SceneState(env.objects, env.predicates(), dict(env.words))


class PlanController:
    """One goal's execution as a step-wise controller: :meth:`act` gives the next action for the scene as
    observed, whoever steps the simulator (:func:`execute`, or the evaluation runner through
    :class:`lbm.plan.policy.PlannedPolicy`); :meth:`finish` verifies the goal. See the module doc."""

    def __init__(
        self,
        env: SimEnv,
        goal: Sequence[str],
        planner: Planner,
        skills: Skills,
        verifier: Verifier,
        config: ExecuteConfig = ExecuteConfig(),
        *,
        seed: int = 0,
        guard: GuardFactory | None = None,
        on_event: Callable[[dict], None] | None = None,
        after_subtask: Callable[[SimEnv, Step, bool], None] | None = None,
    ) -> None:
        if not isinstance(env, SymbolicScene):
            raise PlanningError(f"{env.task}: planning needs a scene with named objects and atoms (LIBERO, robosuite arms).")
        self.env, self.scene = env, env
        self.goal = tuple(goal)
        self.planner, self.skills, self.verifier, self.config = planner, skills, verifier, config
        self.seed, self.on_event, self.after_subtask = seed, on_event, after_subtask
        self.result = GoalResult(self.goal, success=False, verified=None)
        self.guard = guard(env, scene_state(env)) if guard is not None else None
        self.stopped = False
        """The guard saw the observed scene break a rule: the robot holds (the shield's hold) from then on."""
        self.achieved: list[Step] = []
        self.queue: list[Step] = []
        self.obs: Observation | None = None
        self.ticks = self.held = 0
        self.last: np.ndarray | None = None
        self.started = time.perf_counter()
        self.planned = self._plan("start")
        if self.planned:
            self.result.subtasks_planned = len(self.queue)
            self._begin()

    @property
    def finished(self) -> bool:
        """No subtask left to run (the plan is done, refused, stopped or out of re-plans)."""
        return not self.queue or bool(self.result.reason)

    def act(self, obs: Observation) -> np.ndarray | None:
        """The next action for ``obs`` (the scene now), or None once execution is over."""
        self.obs = obs
        if self.finished:
            return None
        step = self.queue[0]
        if self.ticks and self.config.verify:
            # The last action dimension is the gripper (negative opens) on every scene lbm plans in.
            released = step.skill == "pick-lift" or (self.last is not None and float(self.last[-1]) < 0)
            self.held = self.held + 1 if released and all(self._check(step.effect).values()) else 0
        if self.ticks >= self.config.subtask_steps or (self.config.verify and self.held >= self.config.settle_steps):
            self._end(step)
            if self.finished:
                return None
            step = self.queue[0]
        self.ticks += 1
        self.result.steps += 1
        self.last = np.asarray(self.skills.act(self.scene, obs, step))
        return self.last

    def finish(self, obs: Observation | None = None) -> GoalResult:
        """Verify the goal now; the result, with every decision in its events."""
        if obs is not None:
            self.obs = obs
        r = self.result
        if self.queue and self.ticks and not r.reason:  # the episode ended mid-subtask (e.g. the goal was reached)
            r.subtasks_succeeded += bool(self._close(self.queue[0]))
            if self.guard is not None and (violated := self.guard.observe(scene_state(self.scene), self.queue[0])):
                self._log("guard", why=violated)  # too late to stop the robot, never too late to record
            self.ticks = 0
        r.verified = all(self._check(self.goal).values()) if self.planned else None
        r.success = all(self.scene.holds(a) for a in self.goal)
        if not r.reason:
            r.reason = "goal verified" if r.verified else "plan ended, goal not verified"
        self._log("goal", verified=r.verified, success=r.success, reason=r.reason)
        return r

    # ---- internals ---------------------------------------------------------------------------
    def _log(self, kind: str, **info: Any) -> None:
        event = dict(kind=kind, step=self.result.steps, **info)
        self.result.events.append(event)
        if self.on_event:
            self.on_event(event)

    def _plan(self, why: str) -> bool:
        try:
            plan = self.planner.plan(self.goal, scene_state(self.scene), timeout_s=self.config.planner_timeout_s)
        except PlanningError as error:
            self.result.reason = f"no plan ({why}): {error}"
            self._log("refused", why=str(error))
            return False
        self.result.planner_seconds += plan.seconds
        self._log("plan", why=why, steps=plan.describe(), satisfied=list(plan.satisfied), seconds=round(plan.seconds, 4))
        if self.guard is not None:
            verdict = self.guard.check(plan, scene_state(self.scene))
            if not verdict.allowed or verdict.plan is None:
                self.result.reason = f"refused by the plan guard: {verdict.reason}"
                self._log("guard", why=verdict.reason, seconds=round(verdict.seconds, 4))
                return False
            if verdict.repaired:
                plan = verdict.plan
                self._log("repair", why=verdict.reason, edits=list(verdict.edits), steps=plan.describe(),
                          seconds=round(verdict.seconds, 4))  # fmt: skip
        self.queue = list(plan.steps)
        return True

    def hold_action(self, obs: Observation) -> np.ndarray | None:
        """After execution: the guard's (shield's) hold once it stopped the robot, else None (the caller holds)."""
        return self.guard.hold_action(obs) if self.stopped and self.guard is not None else None

    def record(self) -> dict[str, Any]:
        """The guard's counts for the trial's record (empty without a guard)."""
        return self.guard.record() if self.guard is not None else {}

    def _check(self, atoms: Sequence[str]) -> dict[str, bool]:
        assert self.obs is not None
        seen = self.verifier.check(self.scene, self.obs, atoms)
        if self.verifier.name != "privileged":  # how often a learned verifier disagrees with the ground truth
            confusion = self.result.verifier_confusion
            for a in atoms:
                truth = self.scene.holds(a)
                confusion[("t" if seen[a] == truth else "f") + ("p" if seen[a] else "n")] += 1
                self.result.verifier_disagreements += seen[a] != truth
        return seen

    def _begin(self) -> None:
        self.ticks = self.held = 0
        self.started = time.perf_counter()
        if self.queue:
            self.skills.start(self.queue[0], self.seed + self.result.steps)

    def _close(self, step: Step) -> bool | None:
        """Check a finished attempt's effect (None: open loop, unchecked) and log it."""
        ok = all(self._check(step.effect).values()) if self.config.verify else None
        outcome = {True: "done", False: "failed", None: "unchecked"}[ok]
        self._log("subtask", subtask=step.instruction, effect=list(step.effect), outcome=outcome, steps=self.ticks,
                  seconds=round(time.perf_counter() - self.started, 3))  # fmt: skip
        return ok

    def _end(self, step: Step) -> None:
        """A subtask attempt is over: check its effect and the guards, move on or re-plan."""
        r, config = self.result, self.config
        ok = self._close(step)
        if self.after_subtask:
            self.after_subtask(self.env, step, bool(ok))
        if ok or not config.verify:
            r.subtasks_succeeded += bool(ok)
            self.achieved.append(self.queue.pop(0))
        if self.guard is not None:  # the observed scene, verified or not: a broken rule stops the robot
            violated = self.guard.observe(scene_state(self.scene), step)
            if violated:
                r.reason, self.stopped = f"stopped by the plan guard: {violated}", True
                self._log("guard", why=violated)
                return
        if config.verify:
            lost = [e for s in self.achieved for e in s.effect if e in self.goal and not self._check([e])[e]]
            if not ok or lost:
                if r.replans >= config.max_replans:
                    r.reason = f"replan budget ({config.max_replans}) spent"
                    return
                r.replans += 1
                if not self._plan(f"{step.goal_atom} not achieved" if not ok else f"{', '.join(lost)} no longer hold(s)"):
                    return
                r.retries += bool(self.queue) and self.queue[0].goal_atom == step.goal_atom
                r.subtasks_planned += len(self.queue)
        self._begin()


def execute(
    env: SimEnv,
    obs: Observation,
    goal: Sequence[str],
    planner: Planner,
    skills: Skills,
    verifier: Verifier,
    config: ExecuteConfig = ExecuteConfig(),
    **options: Any,
) -> GoalResult:
    """Plan ``goal`` in ``env`` (already reset, ``obs`` its observation) and execute it until the plan is over or the
    episode's step limit; ``options`` are :class:`PlanController`'s (seed, guard, on_event, after_subtask)."""
    controller = PlanController(env, goal, planner, skills, verifier, config, **options)
    while (action := controller.act(obs)) is not None:
        out = env.step(action)
        obs = out.observation
        if out.done and not out.success:  # the episode's step limit
            controller.result.reason = "step budget spent"
            break
    return controller.finish(obs)
