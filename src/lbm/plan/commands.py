"""Command-line verbs of the planner: `lbm plan` (print a plan) and `lbm run` (execute one goal, live log).

The logic lives in :mod:`lbm.plan.ground`, :mod:`lbm.plan.symbolic` and :mod:`lbm.plan.execute`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated

import tyro

from lbm.errors import LbmError
from lbm.plan.execute import (
    ExecuteConfig,
    GroundTruthVerifier,
    PolicySkills,
    ScriptedSkills,
    Skills,
    execute,
    load_guard,
    scene_state,
)
from lbm.plan.ground import Grounder
from lbm.plan.symbolic import PlanningError, SymbolicPlanner
from lbm.sim import eval_seed, get_task, make_env
from lbm.sim.base import SymbolicScene


@dataclass(frozen=True)
class PlanConfig:
    """Ground a goal in a task's scene and print the plan, without executing it.

    Example: lbm plan "put the cream cheese in the bowl" --task libero-goal/put-the-cream-cheese-in-the-bowl
    """

    goal: Annotated[str, tyro.conf.Positional] = ""
    """The goal in words (empty: the task's own instruction)."""
    task: str = ""
    """The task whose scene the goal is about (LIBERO or robosuite)."""
    seed: int = 0
    """Evaluation seed index of the scene (its initial state)."""
    timeout_s: float = 5.0
    """Planner time limit."""
    json: bool = False
    """Print the grounding and plan as JSON."""
    rules: str = ""
    """A safety rules file: check the plan against it and print the repair or the refusal."""


def _scene(task: str, seed: int):
    if not task:
        raise LbmError("--task is required: a goal is grounded in one task's scene (e.g. --task libero-10/...).")
    get_task(task)
    env = make_env(task)
    obs = env.reset(eval_seed(task, seed))
    if not isinstance(env, SymbolicScene):
        env.close()
        raise LbmError(
            f"{task}: planning needs a scene with named objects and atoms (LIBERO or robosuite tasks), not {env.spec.suite}."
        )
    return env, obs


def plan(config: Annotated[PlanConfig, tyro.conf.arg(name="")]) -> int:
    """Print the grounding and the plan of one goal (see PlanConfig); exit 1 when it is refused."""
    env, _ = _scene(config.task, config.seed)
    try:
        sentence = config.goal or env.spec.instruction
        state = scene_state(env)
        start = time.perf_counter()
        grounding = Grounder(state, env.position).ground(sentence)
        ground_s = time.perf_counter() - start
        result = SymbolicPlanner().plan(grounding.atoms, state, timeout_s=config.timeout_s)
        verdict = load_guard(config.rules)(env, state).check(result, state) if config.rules else None
    except PlanningError as error:
        print(f"refused: {error}")
        return 1
    finally:
        env.close()
    if verdict is not None and not verdict.allowed:
        print(f"refused by the plan guard: {verdict.reason}")
        return 1
    if config.json:
        guard = None if verdict is None else dict(repaired=verdict.repaired, edits=list(verdict.edits), reason=verdict.reason,
                                                   steps=verdict.plan.describe() if verdict.plan else [])  # fmt: skip
        print(json.dumps(dict(goal=sentence, atoms=grounding.atoms, matches=grounding.matches, steps=result.describe(),
                              ground_s=ground_s, plan_s=result.seconds, guard=guard), indent=2))  # fmt: skip
        return 0
    print(f"goal: {sentence}")
    for phrase, entity, sim in grounding.matches:
        print(f"  '{phrase}' -> {entity} (similarity {sim:.2f})")
    print(
        f"goal atoms: {', '.join(grounding.atoms)}"
        + (f" (already true: {', '.join(result.satisfied)})" if result.satisfied else "")
    )
    print(
        f"plan ({len(result.steps)} steps, {result.planner}, {result.seconds * 1000:.1f} ms; grounding {ground_s * 1000:.0f} ms):"
    )
    for line in result.describe() or ["(nothing to do: the goal holds)"]:
        print(f"  {line}")
    if verdict is not None and verdict.repaired and verdict.plan is not None:
        print(f"plan guard: {verdict.reason}\nrepaired plan ({', '.join(verdict.edits)}; {verdict.seconds * 1000:.0f} ms):")
        for line in verdict.plan.describe():
            print(f"  {line}")
    elif verdict is not None:
        print(f"plan guard: safe ({verdict.seconds * 1000:.1f} ms)")
    return 0


@dataclass(frozen=True)
class RunConfig:
    """Ground, plan and execute one goal with verification and replanning, printing every decision.

    Example: lbm run "put the bowl on the plate" --task libero-goal/put-the-bowl-on-the-plate --policy expert
    """

    goal: Annotated[str, tyro.conf.Positional] = ""
    """The goal in words (empty: the task's own instruction)."""
    task: str = ""
    """The task whose scene the goal is about (LIBERO or robosuite)."""
    policy: str = "expert"
    """Skill policy: 'expert' (the scripted skills) or a checkpoint folder conditioned on subtask instructions."""
    seed: int = 0
    """Evaluation seed index of the scene."""
    verify: bool = True
    """Verify each subtask and re-plan on failure (--no-verify: open loop)."""
    subtask_steps: int = 200
    """Step budget of one attempt at one subtask."""
    max_replans: int = 3
    """Re-plans allowed."""
    rules: str = ""
    """A safety rules file: every plan is checked (repaired or refused) and the observed scene checked after
    each subtask; a broken rule stops the robot through the action shield's hold."""


def run(config: Annotated[RunConfig, tyro.conf.arg(name="")]) -> int:
    """Execute one goal (see RunConfig); exit 0 when it is reached."""
    skills: Skills
    if config.policy == "expert":
        skills = ScriptedSkills()
    else:
        from lbm.train import load_policy

        skills = PolicySkills(load_policy(config.policy))
    env, obs = _scene(config.task, config.seed)
    try:
        sentence = config.goal or env.spec.instruction
        grounding = Grounder(scene_state(env), env.position).ground(sentence)
        print(f"goal: {sentence} -> {', '.join(grounding.atoms)}", flush=True)

        def show(event: dict) -> None:
            kind = event["kind"]
            if kind in ("plan", "repair"):
                edits = f"; {', '.join(event['edits'])}" if kind == "repair" else ""
                print(f"[{event['step']:4d}] {kind} ({event['why']}{edits}, {event['seconds'] * 1000:.1f} ms):", flush=True)
                for line in event["steps"]:
                    print(f"         {line}", flush=True)
            elif kind == "subtask":
                print(f"[{event['step']:4d}] {event['outcome']:>9}: {event['subtask']} ({event['steps']} steps)", flush=True)
            else:
                print(
                    f"[{event['step']:4d}] {kind}: "
                    + ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("kind", "step")),
                    flush=True,
                )

        result = execute(
            env, obs, grounding.atoms, SymbolicPlanner(), skills, GroundTruthVerifier(),
            ExecuteConfig(verify=config.verify, subtask_steps=config.subtask_steps, max_replans=config.max_replans),
            seed=config.seed, on_event=show, guard=load_guard(config.rules) if config.rules else None,
        )  # fmt: skip
    except PlanningError as error:
        print(f"refused: {error}")
        return 1
    finally:
        env.close()
    print(
        f"{'reached' if result.success else 'not reached'}: {result.subtasks_succeeded}/{result.subtasks_planned} subtasks, "
        f"{result.replans} replans, {result.steps} steps ({result.reason})"
    )
    return 0 if result.success else 1
