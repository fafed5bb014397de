"""Guardrails: action shield, instruction guard, failure monitor, and their evaluation reports.

The shield sits between every policy and every simulator or robot (:class:`ShieldedEnv`, and the
eval runner with ``--shield``); the instruction guard checks language before it reaches a policy.
"""

from lbm.safety.guard import GuardConfig, GuardDecision, InstructionGuard, calibrate_guard, evaluate_guard, load_redteam
from lbm.safety.shield import (
    LIMITS,
    ActionShield,
    Intervention,
    ShieldConfig,
    ShieldedEnv,
    ShieldStats,
    default_shield_config,
)

__all__ = [
    "GuardConfig",
    "GuardDecision",
    "InstructionGuard",
    "calibrate_guard",
    "evaluate_guard",
    "load_redteam",
    "LIMITS",
    "ActionShield",
    "Intervention",
    "ShieldConfig",
    "ShieldStats",
    "ShieldedEnv",
    "default_shield_config",
]
