"""Trial schedule and blinding for paired, blind, randomized evaluation.

Three ideas from the careful LBM study (seed 001; ``reference/evaluation-methods.md`` §1.2):

* **Paired**: trial ``i`` of a task under a shift starts from ``lbm.sim.eval_seed(task, i)`` for
  every policy, so all policies face identical initial conditions and per-trial outcomes can be
  compared pairwise. Evaluation seeds live in a space disjoint from demonstration seeds (the sim
  package owns both spaces).
* **Blind**: the runner, its workers, the progress bar and the records file see only opaque policy
  ids such as ``p-3f9a``. The id -> name/spec mapping lives in ``blinding.json``, written before the
  first trial runs; its SHA-256 is recorded in ``manifest.json`` so that anyone can check the
  mapping was not edited after the results were known (:func:`lbm.eval.manifest.audit_blinding`).
  Names are joined back only at analysis (:func:`lbm.eval.records.load_records`).
* **Randomized**: all ``(policy, task, shift, trial)`` items are interleaved in a seeded random
  order, so slow drifts of the machine (thermal throttling, other jobs) cannot favour one policy.

What blinding protects here: in simulation nobody scores trials by hand, so blinding guards the
*procedure* — no code path of the runner can treat a policy differently by its name, and an
operator watching the run sees only ids. The ids are derived from the evaluation seed so that a
rerun with the same settings is bit-for-bit the same schedule (needed for resume and audit).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from lbm.errors import LbmError
from lbm.policies.base import noise_seed


@dataclass(frozen=True)
class TrialItem:
    """One rollout to run: a blind policy id on one task under one shift with one seed."""

    policy: str
    """Opaque policy id (``p-xxxx``); never a name."""
    task: str
    """Simulation task name."""
    shift: str
    """Shift condition (``none`` or e.g. ``obs_noise:low+friction:high``)."""
    trial: int
    """Trial index within (task, shift): the pairing key."""
    seed: int
    """``lbm.sim.eval_seed(task, trial)``; identical for every policy."""
    init_state: int | None = None
    """The task's fixed initial state this trial starts from (LIBERO's evaluation protocol), or None."""

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What identifies a completed item when resuming."""
        return (self.policy, self.task, self.shift, self.trial)

    @property
    def policy_seed(self) -> int:
        """Seed of the policy's sampling noise in this trial: a function of (task, shift, seed) only.

        Every policy of a comparison gets the same noise seed on the same trial (common random
        numbers, like the shared initial condition), and a rerun draws exactly the same noise.
        """
        return noise_seed(self.seed, zlib.crc32(self.task.encode()), zlib.crc32(self.shift.encode())) % 2**31


def blind_ids(names: list[str], seed: int) -> dict[str, str]:
    """Map each policy name to an opaque id ``p-xxxx`` (4 hex digits), reproducibly from ``seed``.

    Ids are drawn independently of the names' order or content, so the id says nothing about which
    policy it is (sorting ids does not sort names).
    """
    rng = np.random.default_rng([seed, 0xB1D])
    codes = rng.choice(16**4, size=len(names), replace=False)
    order = rng.permutation(len(names))
    return {names[i]: f"p-{int(codes[k]):04x}" for k, i in enumerate(order)}


def make_schedule(
    policy_ids: list[str],
    tasks: list[str],
    shifts: list[str],
    trials: int,
    seeds: dict[tuple[str, int], int],
    seed: int,
    init_states: dict[str, int] | None = None,
) -> list[TrialItem]:
    """All ``(policy, task, shift, trial)`` items, interleaved in a random order fixed by ``seed``.

    ``seeds[(task, trial)]`` is the simulator seed of that trial, shared by every policy (pairing).
    ``init_states[task]``: the number of fixed initial states of a task that ships them; trial ``i``
    then starts from state ``i`` mod that number.
    """
    fixed = init_states or {}
    items = [
        TrialItem(p, t, s, i, int(seeds[(t, i)]), i % fixed[t] if fixed.get(t) else None)
        for p in sorted(policy_ids)
        for t in tasks
        for s in shifts
        for i in range(trials)
    ]
    order = np.random.default_rng([seed, 0x5C4ED]).permutation(len(items))
    return [items[k] for k in order]


def split_shift_conditions(shifts: str) -> list[str]:
    """Split ``--shifts`` into conditions: ``,`` separates conditions, ``+`` composes shifts within one.

    ``"none,obs_noise:low,friction:high+mass:low"`` -> ``["none", "obs_noise:low", "friction:high+mass:low"]``.
    """
    conditions = [c.strip() for c in shifts.split(",") if c.strip()]
    if not conditions:
        raise LbmError("--shifts is empty. Use none, or a comma-separated list such as none,obs_noise:low.")
    dupes = sorted({c for c in conditions if conditions.count(c) > 1})
    if dupes:
        raise LbmError(f"Shift condition(s) {', '.join(dupes)} listed twice in --shifts; list each once.")
    return conditions
