"""``lbm tasks``: what the simulation suite offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from lbm.errors import LbmError
from lbm.sim import LEVELS, SHIFTS, TASK_SETS, embodiment_of, get_task, resolve_tasks
from lbm.sim.metaworld import FREE_CAMERAS
from lbm.sim.registry import UNAVAILABLE


@dataclass(frozen=True)
class TasksConfig:
    """List the simulation tasks, task sets, cameras and distribution shifts."""

    set: str = "mt50"
    """Which tasks to list: a task set (mt10, mt50, ml45-train, ml45-test, libero-goal, libero-10, libero-spatial,
    libero-object), task names separated by commas, or a mix such as "mt10,hammer"."""
    show_instructions: bool = False
    """Also print every paraphrase of each task's instruction."""


def tasks(config: Annotated[TasksConfig, tyro.conf.arg(name="")]) -> int:
    """List the simulation tasks (see TasksConfig)."""
    set = config.set  # noqa: A001 - the option's name
    show_instructions = config.show_instructions
    from rich.console import Console
    from rich.table import Table

    names = resolve_tasks(set)
    if not names:  # pragma: no cover - resolve_tasks raises on empty input
        raise LbmError(f"No tasks match {set!r}.")
    console = Console()
    table = Table(title=f"Tasks in {set!r} ({len(names)})")
    table.add_column("task", style="bold", overflow="fold")
    table.add_column("instruction")
    table.add_column("sets")
    table.add_column("robot")
    table.add_column("max steps", justify="right")
    for name in names:
        spec = get_task(name)
        member = ", ".join(s for s, members in TASK_SETS.items() if name in members)
        text = spec.instruction
        if show_instructions:
            text = "\n".join([spec.instruction, *(f"  - {p}" for p in spec.paraphrases)])
        table.add_row(name, text, member, spec.embodiment, str(spec.max_steps))
    console.print(table)
    listed = {n.split("/")[0] for n in names}
    gaps = {n: why for n, why in UNAVAILABLE.items() if n.split("/")[0] in listed and "/" in n}
    if gaps:
        gap_table = Table(title=f"Known gaps: tasks of these suites that are not registered ({len(gaps)})")
        gap_table.add_column("task", style="bold", overflow="fold")
        gap_table.add_column("why")
        for n, why in gaps.items():
            gap_table.add_row(n, why.split(": ", 1)[-1].split(". Registered")[0])
        console.print(gap_table)

    sets = Table(title="Task sets")
    sets.add_column("set", style="bold")
    sets.add_column("tasks", justify="right")
    sets.add_column("first tasks")
    for set_name, members in TASK_SETS.items():
        sets.add_row(set_name, str(len(members)), ", ".join(members[:4]) + (", ..." if len(members) > 4 else ""))
    console.print(sets)

    bodies = {}
    for name in names:
        bodies.setdefault(get_task(name).embodiment, embodiment_of(name))
    for body in bodies.values():
        cams = Table(title=f"Robot {body.name}: state {body.state_dim}, action {body.action_dim}, control {body.control_hz:g} Hz")
        cams.add_column("camera", style="bold")
        cams.add_column("kind")
        for cam in body.cameras:
            cams.add_row(cam, "free camera (lbm)" if cam in FREE_CAMERAS else "model camera")
        console.print(cams)

    shifts = Table(title=f"Distribution shifts (levels: {', '.join(LEVELS)}; syntax 'obs_noise:low,friction:high')")
    shifts.add_column("shift", style="bold")
    shifts.add_column("kind")
    shifts.add_column("what it changes")
    for name, cls in SHIFTS.items():
        shifts.add_row(name, cls.kind + (" (cameras)" if cls.needs_cameras else ""), cls.about())
    console.print(shifts)
    return 0
