"""Long-horizon goals: grounding, the symbolic planner, skill execution with verification and replanning.

``goal (language) -> ground -> goal atoms -> plan -> [subtask 1 ... N] -> skill -> verify -> replan``
(seed 003, Algorithm 1). See :mod:`lbm.plan.symbolic`, :mod:`lbm.plan.ground` and :mod:`lbm.plan.execute`.
"""

from lbm.plan.execute import (
    ExecuteConfig,
    GoalResult,
    GroundTruthVerifier,
    PolicySkills,
    ScriptedSkills,
    Skills,
    Verifier,
    execute,
    scene_state,
)
from lbm.plan.ground import Grounder, Grounding
from lbm.plan.symbolic import Plan, Planner, PlanningError, SceneState, Step, SymbolicPlanner
from lbm.plan.verifier import LearnedVerifier

__all__ = [
    "ExecuteConfig",
    "GoalResult",
    "Grounder",
    "Grounding",
    "GroundTruthVerifier",
    "LearnedVerifier",
    "Plan",
    "Planner",
    "PlanningError",
    "PolicySkills",
    "SceneState",
    "ScriptedSkills",
    "Skills",
    "Step",
    "SymbolicPlanner",
    "Verifier",
    "execute",
    "scene_state",
]
