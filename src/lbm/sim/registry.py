"""The task registry, one across suites: every task with its instructions, embodiment and step limit.

Meta-World task names are Meta-World's own (``drawer-open-v3``; the ``-v3`` suffix may be left
off), and its task sets come straight from Meta-World's benchmark definitions in their order, so
``mt10`` here is exactly Meta-World's MT10. LIBERO tasks are named ``SUITE/TASK``
(``libero-goal/put-the-bowl-on-the-plate``) and their suites are task sets (``libero-goal``); they
are registered when the ``libero`` extra is installed (:mod:`lbm.sim.libero`). robosuite's arms are
``robosuite-TASK@ROBOT`` (``robosuite-lift@ur5e``, :mod:`lbm.sim.arms`), in sets ``robosuite``,
``robosuite-lift`` and ``robosuite@ur5e``. Task sets compose across suites: ``mt10,libero-goal``.
Tasks that exist but are not registered (no reliable expert) are refused with their reason.
"""

from __future__ import annotations

import json
import re
from importlib import resources

from lbm.errors import LbmError, did_you_mean
from lbm.sim.base import TaskSpec

SUITE = "metaworld"
EMBODIMENT_NAME = "metaworld-sawyer"
BACKENDS: dict[str, str] = {"metaworld": "lbm.sim.metaworld", "libero": "lbm.sim.libero", "robosuite": "lbm.sim.arms"}
"""Suite -> the module that builds its envs (``build(spec, ...)``) and names its embodiments (``EMBODIMENTS``)."""
DEFAULT_MAX_STEPS = 200
__all__ = ["TASKS", "TASK_SETS", "TaskSpec", "get_task", "resolve_tasks", "task_for_instruction"]
# Tasks whose scripted expert needs more than DEFAULT_MAX_STEPS on some initial conditions
# (measured with benchmarks/sim_expert_success.py --max-steps 500, 10 eval seeds per task: every
# other task's slowest successful expert episode took at most 143 steps; Meta-World's own hard
# limit is 500).
_LONG_TASKS: dict[str, int] = {
    "push-back-v3": 400,  # slowest of 10: 354 steps (mean 143)
    "stick-pull-v3": 320,  # slowest of 10: 247
    "disassemble-v3": 250,  # slowest of 10: 157
}


def _load_tasks() -> dict[str, TaskSpec]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    text = resources.files("lbm.sim").joinpath("instructions.json").read_text(encoding="utf-8")
    table = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
    missing = set(ALL_V3_ENVIRONMENTS) - set(table)
    if missing:  # a packaging bug, not user error: fail loudly at import
        raise RuntimeError(f"instructions.json lacks tasks {sorted(missing)}")
    return {
        name: TaskSpec(
            name=name,
            suite=SUITE,
            instruction=table[name][0],
            paraphrases=tuple(table[name][1:]),
            embodiment=EMBODIMENT_NAME,
            max_steps=_LONG_TASKS.get(name, DEFAULT_MAX_STEPS),
        )
        for name in ALL_V3_ENVIRONMENTS  # Meta-World's order
    }


def _load_sets() -> dict[str, tuple[str, ...]]:
    from metaworld.env_dict import ML45_V3, MT10_V3, MT50_V3

    return {
        "mt10": tuple(MT10_V3),
        "mt50": tuple(MT50_V3),
        "ml45-train": tuple(ML45_V3["train"]),
        "ml45-test": tuple(ML45_V3["test"]),
    }


def _load_other_suites() -> tuple[dict[str, TaskSpec], dict[str, tuple[str, ...]], dict[str, str]]:
    # Both read their task lists only (LIBERO's BDDL files); robosuite is imported when an env is built.
    from lbm.sim import arms, libero

    tasks, sets, unavailable = {}, {}, {}
    for backend in (libero, arms):
        tasks.update(backend.task_specs())
        sets.update(backend.task_sets())
        unavailable.update(backend.unavailable())
    return tasks, sets, unavailable


TASKS: dict[str, TaskSpec] = _load_tasks()
"""Every registered task, by name: the 50 Meta-World v3 tasks in Meta-World's order, then the other suites'."""
TASK_SETS: dict[str, tuple[str, ...]] = _load_sets()
"""Named task sets (Meta-World's MT10, MT50, ML45 train and test; LIBERO's suites)."""
_other_tasks, _other_sets, _unavailable = _load_other_suites()
TASKS.update(_other_tasks)
TASK_SETS.update(_other_sets)
UNAVAILABLE: dict[str, str] = _unavailable
"""Task sets and tasks that exist but cannot be used here -> why (a suite not installed; a task with no expert)."""

_INSTRUCTION_TO_TASK: dict[str, str] = {}
for _spec in TASKS.values():
    for _sentence in _spec.instructions:
        # One instruction can name a task on several robots (robosuite-lift@panda, @ur5e, ...): the first wins.
        _INSTRUCTION_TO_TASK.setdefault(_sentence.lower(), _spec.name)


def _canonical_name(name: str) -> str:
    name = name.strip().lower().replace("_", "-")
    if name in TASKS:
        return name
    if f"{name}-v3" in TASKS:
        return f"{name}-v3"
    for key in (name, name.split("/")[0]):
        if key in UNAVAILABLE:
            raise LbmError(UNAVAILABLE[key])
    if "/" in name:  # SUITE/TASK: first the suite, then the task within it
        suite = name.split("/")[0]
        suites = sorted({t.split("/")[0] for t in TASKS if "/" in t})
        if suite not in suites:
            raise did_you_mean(suite, suites, "suite")
        raise did_you_mean(name, [t for t in TASKS if t.startswith(suite + "/")], f"task of {suite}")
    aliases = list(TASKS) + [t.removesuffix("-v3") for t in TASKS]
    raise did_you_mean(name, aliases, "task")


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of a task, by Meta-World name (``-v3`` optional)."""
    return TASKS[_canonical_name(name)]


def resolve_tasks(spec: str) -> list[str]:
    """Expand a task spec into task names, in order, without duplicates.

    ``spec`` is a comma-separated list of task-set names (``mt10``, ``mt50``, ``ml45-train``,
    ``ml45-test``) and task names (``reach-v3`` or just ``reach``), e.g. ``"mt10,hammer"``.
    """
    out: list[str] = []
    parts = [p.strip() for p in re.split(r"[,\s]+", spec or "") if p.strip()]
    if not parts:
        raise LbmError(
            f"Empty task spec {spec!r}. Give a task set ({', '.join(TASK_SETS)}) or task names "
            "separated by commas, e.g. 'mt10' or 'reach-v3,push-v3'. `lbm tasks` lists them all."
        )
    for part in parts:
        key = part.lower()
        if key in TASK_SETS:
            names = TASK_SETS[key]
        elif key in UNAVAILABLE:
            raise LbmError(UNAVAILABLE[key])
        else:
            try:
                names = (_canonical_name(key),)
            except LbmError as error:
                close = did_you_mean(key, [*TASK_SETS, *TASKS, *(t.removesuffix("-v3") for t in TASKS)], "task")
                raise LbmError(f"{close} (`lbm tasks` lists all tasks and task sets.)") from error
        for name in names:
            if name not in out:
                out.append(name)
    return out


def task_for_instruction(text: str) -> str:
    """The task whose canonical instruction or a paraphrase is ``text`` (case and spacing ignored); for an
    instruction several robots share, the first such task in registry order."""
    key = " ".join(text.lower().split()).rstrip(".")
    if key in _INSTRUCTION_TO_TASK:
        return _INSTRUCTION_TO_TASK[key]
    raise did_you_mean(key, _INSTRUCTION_TO_TASK, "instruction")
