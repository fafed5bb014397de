"""The planner as a policy of the evaluation runner: ``lbm eval --policy planned=plan://SKILLS?verify=1``.

``SKILLS`` is ``expert`` (the scripted skills, the ceiling) or a checkpoint folder of a skill policy
conditioned on subtask instructions. Query options: ``verify`` (1: verify and re-plan, 0: open
loop), ``replans``, ``subtask_steps``, ``settle``, ``verifier`` (a learned verifier's folder; default:
the simulator's privileged symbolic state), ``rules`` (a safety rules file: every plan is checked,
repaired or refused, and the observed scene checked after each subtask, by the plan guard).
Each episode grounds the observed instruction in
the scene, plans with the symbolic planner and runs a :class:`~lbm.plan.execute.PlanController`;
its counts (subtasks planned and done, replans, retries, planner time, why it stopped, every
decision) become columns of the trial's record, so the runner's blinding, pairing and statistics
apply unchanged. It reads the simulator (the scene's atoms, privileged verification), hence a
:class:`~lbm.policies.base.PrivilegedPolicy`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from lbm.errors import LbmError
from lbm.plan.execute import (
    ExecuteConfig,
    GroundTruthVerifier,
    GuardFactory,
    PlanController,
    PolicySkills,
    ScriptedSkills,
    Skills,
    Verifier,
    load_guard,
    scene_state,
)
from lbm.plan.ground import Grounder
from lbm.plan.symbolic import PlanningError, SymbolicPlanner
from lbm.plan.verifier import LearnedVerifier
from lbm.policies.base import Chunk, ChunkRequest, EpisodeSource, Policy, PolicyState, PrivilegedPolicy
from lbm.policies.language import InstructionCache
from lbm.schema import Observation

OPTIONS = {"verify": int, "replans": int, "subtask_steps": int, "settle": int, "verifier": str, "rules": str}


class PlannedEpisode:
    """One episode's planner state: the controller (built at the first observation, which carries the goal)."""

    def __init__(
        self,
        env: Any,
        skills: Skills,
        verifier: Verifier,
        config: ExecuteConfig,
        seed: int,
        encode: InstructionCache,
        guard: GuardFactory | None = None,
    ) -> None:
        self.env, self.skills, self.verifier, self.config, self.seed, self.guard = env, skills, verifier, config, seed, guard
        self.embeddings = encode
        self.controller: PlanController | None = None
        self.refused = ""
        self.last: np.ndarray | None = None

    def act(self, obs: Observation) -> np.ndarray:
        if self.controller is None and not self.refused:
            try:
                grounder = Grounder(scene_state(self.env), self.env.position, self.embeddings.lookup)
                goal = grounder.ground(obs.instruction).atoms
                self.controller = PlanController(
                    self.env, goal, SymbolicPlanner(), self.skills, self.verifier, self.config, seed=self.seed, guard=self.guard
                )
            except PlanningError as error:
                self.refused = str(error)
        action = self.controller.act(obs) if self.controller is not None else None
        if action is None and self.controller is not None:  # stopped by the plan guard: the shield's hold
            action = self.controller.hold_action(obs)
        if action is None:  # execution is over: hold still, keeping the gripper as it was
            action = np.zeros(self.env.embodiment.action_dim, np.float32)
            if self.last is not None:
                action[-1] = self.last[-1]
        self.last = np.asarray(action, np.float32)
        return self.last

    def record(self) -> dict[str, Any]:
        if self.controller is None:
            return dict(plan_reason=f"refused: {self.refused}" if self.refused else "not started", plan_subtasks_planned=0)
        r = self.controller.finish()
        return dict(
            plan_subtasks_planned=r.subtasks_planned,
            plan_subtasks_succeeded=r.subtasks_succeeded,
            plan_replans=r.replans,
            plan_retries=r.retries,
            plan_verifier_disagreements=r.verifier_disagreements,
            **{f"plan_verifier_{k}": v for k, v in r.verifier_confusion.items()},
            plan_verified=bool(r.verified),
            plan_seconds=round(r.planner_seconds, 4),
            plan_reason=r.reason,
            plan_events=json.dumps(r.events, default=str),
            **self.controller.record(),
        )


class PlannedPolicy(PrivilegedPolicy):
    """Planner + skills + verification behind the runner's policy contract (one action per call)."""

    def __init__(self, skills: str, config: ExecuteConfig, verifier: str = "", rules: str = "") -> None:
        self.source, self.config, self.rules = skills, config, rules
        self.guard = load_guard(rules) if rules else None
        self.verifier: Verifier = LearnedVerifier.load(verifier) if verifier else GroundTruthVerifier()
        # One cache for every episode: the same scenes' entity words are embedded once per process.
        self.embeddings = InstructionCache(use_user_cache=False, max_added=10_000)
        self.skill_policy: Policy | None = None
        if skills != "expert":
            from lbm.train import load_policy

            self.skill_policy = load_policy(skills)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "skills": self.source, "verify": self.config.verify, "verifier": self.verifier.name,
                "rules": self.rules}  # fmt: skip

    def reset(self, seed: int | None = None, *, env: EpisodeSource) -> PolicyState:
        skills: Skills = ScriptedSkills() if self.skill_policy is None else PolicySkills(self.skill_policy)
        return PlannedEpisode(env, skills, self.verifier, self.config, int(seed or 0), self.embeddings, self.guard)

    def predict_chunk(
        self, observations: Sequence[Observation], states: Sequence[PolicyState], request: ChunkRequest = ChunkRequest()
    ) -> Chunk:
        actions = np.stack([state.act(obs) for obs, state in zip(observations, states)])[:, None]
        return Chunk(actions.astype(np.float32), tuple(states))


def load_planned(spec: Any, seed: int) -> PlannedPolicy:
    """The ``plan://`` loader of the runner's policy registry (entry point ``lbm.policy_sources``)."""
    parts = urlsplit(spec.source)
    skills = (parts.netloc + parts.path) or "expert"
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(OPTIONS))
    if unknown:
        raise LbmError(f"Policy {spec.name!r}: unknown plan:// option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}.")
    try:
        values: dict[str, Any] = {k: OPTIONS[k](v) for k, v in query.items()}
    except ValueError:
        raise LbmError(
            f"Policy {spec.name!r}: plan:// options verify, replans, subtask_steps and settle are integers, got {query}."
        ) from None
    config = ExecuteConfig()
    config = replace(
        config,
        verify=bool(values.get("verify", 1)),
        max_replans=values.get("replans", config.max_replans),
        subtask_steps=values.get("subtask_steps", config.subtask_steps),
        settle_steps=values.get("settle", config.settle_steps),
    )
    return PlannedPolicy(skills, config, values.get("verifier", ""), values.get("rules", ""))
