"""lbm.sim: simulator suites (Meta-World v3, LIBERO, robosuite arms) behind one contract, with instructions,
experts, shifts and symbolic state.

Quick use::

    from lbm.sim import make_env, eval_seed
    env = make_env("drawer-open", cameras=["front"], image_size=96, shifts="friction:high")
    obs = env.reset(seed=eval_seed("drawer-open-v3", 0))
    while True:
        result = env.step(env.expert_action())
        if result.done:
            break
"""

from lbm.sim.base import RenderConfig, SimEnv, StepResult, TaskSpec, atom, goal_reached, parse_atom
from lbm.sim.make import embodiment_named, embodiment_of, make_env
from lbm.sim.metaworld import METAWORLD_EMBODIMENT, METAWORLD_WORKSPACE, MetaWorldEnv, MocapActuation
from lbm.sim.registry import TASK_SETS, TASKS, get_task, resolve_tasks, task_for_instruction
from lbm.sim.seeds import DEMO_SEED_RANGE, EVAL_SEED_RANGE, demo_seed, eval_seed
from lbm.sim.shifts import LEVELS, SHIFTS, Shift, ShiftContext, parse_shifts

__all__ = [
    "DEMO_SEED_RANGE",
    "EVAL_SEED_RANGE",
    "LEVELS",
    "METAWORLD_EMBODIMENT",
    "METAWORLD_WORKSPACE",
    "MetaWorldEnv",
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
    "atom",
    "demo_seed",
    "embodiment_named",
    "embodiment_of",
    "eval_seed",
    "get_task",
    "goal_reached",
    "make_env",
    "parse_atom",
    "parse_shifts",
    "resolve_tasks",
    "task_for_instruction",
]
