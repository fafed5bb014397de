"""Guardrails: action shield, instruction guard, failure monitor, twin check, and their evaluation reports.

The shield sits between every policy and every simulator or robot (:class:`ShieldedEnv`, and the
eval runner with ``--shield``); the instruction guard checks language before it reaches a policy;
the failure monitor (:mod:`lbm.safety.failure`, :mod:`lbm.safety.monitor`) raises calibrated
alerts during rollouts; :mod:`lbm.safety.twin` checks chunks on a copy of the simulator state.
Heavy parts (torch, MuJoCo) are imported only by the modules that need them.
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
