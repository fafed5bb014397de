"""Seed spaces: demonstrations and evaluations never share an initial condition.

A seed, together with the task name (and the shifts), fully determines an episode's initial
condition (see :meth:`lbm.sim.SimEnv.reset`). Demonstration seeds live in ``[0, 2**30)`` and
evaluation seeds in ``[2**30, 2**31)``, so no policy is ever evaluated on a start state it was
trained on. Evaluation seeds depend only on ``(task, trial)``: every policy in a comparison meets
the same initial conditions (a paired design).
"""

from __future__ import annotations

from lbm.errors import LbmError

DEMO_SEED_RANGE = range(0, 2**30)
"""Seeds used for demonstration (training) episodes."""
EVAL_SEED_RANGE = range(2**30, 2**31)
"""Seeds used for evaluation trials; disjoint from :data:`DEMO_SEED_RANGE`."""


def _seed(space: range, index: int, what: str) -> int:
    if not isinstance(index, int) or index < 0 or index >= len(space):
        raise LbmError(f"{what} index must be an integer in [0, {len(space)}), got {index!r}.")
    return space.start + index


def demo_seed(task: str, episode: int) -> int:
    """Seed of demonstration episode ``episode`` (0, 1, ...) of ``task``; in :data:`DEMO_SEED_RANGE`.

    The task name is mixed into the initial condition at reset, so the same index gives different
    start states on different tasks.
    """
    del task  # the env mixes the task name in; kept in the signature so callers stay explicit
    return _seed(DEMO_SEED_RANGE, episode, "demonstration episode")


def eval_seed(task: str, trial: int) -> int:
    """Seed of evaluation trial ``trial`` (0, 1, ...) of ``task``; in :data:`EVAL_SEED_RANGE`.

    Identical for every policy, which makes comparisons paired.
    """
    del task
    return _seed(EVAL_SEED_RANGE, trial, "evaluation trial")


def seed_kind(seed: int) -> str:
    """``"demo"`` or ``"eval"``: which seed space ``seed`` belongs to."""
    if seed in DEMO_SEED_RANGE:
        return "demo"
    if seed in EVAL_SEED_RANGE:
        return "eval"
    raise LbmError(f"Seed {seed} is outside both seed spaces [0, 2**31); use demo_seed() or eval_seed().")
