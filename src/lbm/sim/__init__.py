"""lbm.sim: Meta-World v3 tasks behind the lbm schema, with instructions, experts and shifts.

Quick use::

    from lbm.sim import make_env, eval_seed
    env = make_env("drawer-open", cameras=["front"], image_size=96, shifts="friction:high")
    obs = env.reset(seed=eval_seed("drawer-open-v3", 0))
    while True:
        result = env.step(env.expert_action())
        if result.done:
            break
"""

from lbm.sim.env import METAWORLD_EMBODIMENT, METAWORLD_WORKSPACE, MocapActuation, RenderConfig, SimEnv, StepResult, make_env
from lbm.sim.registry import TASK_SETS, TASKS, TaskSpec, get_task, resolve_tasks, task_for_instruction
from lbm.sim.seeds import DEMO_SEED_RANGE, EVAL_SEED_RANGE, demo_seed, eval_seed
from lbm.sim.shifts import LEVELS, SHIFTS, Shift, ShiftContext, parse_shifts

__all__ = [
    "DEMO_SEED_RANGE",
    "EVAL_SEED_RANGE",
    "LEVELS",
    "METAWORLD_EMBODIMENT",
    "METAWORLD_WORKSPACE",
    "MocapActuation",
    "SHIFTS",
    "TASKS",
    "TASK_SETS",
    "RenderConfig",
    "Shift",
    "ShiftContext",
    "SimEnv",
    "StepResult",
    "TaskSpec",
    "demo_seed",
    "eval_seed",
    "get_task",
    "make_env",
    "parse_shifts",
    "resolve_tasks",
    "task_for_instruction",
]
