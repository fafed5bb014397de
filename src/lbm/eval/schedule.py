"""Trial schedule and blinding for paired, blind, randomized evaluation.

Three ideas from the careful LBM study (seed 001; ``reference/evaluation-methods.md`` §1.2):

* **Paired**: trial ``i`` of a task under a shift starts from ``lbm.sim.eval_seed(task, i)`` for
  every policy, so all policies face identical initial conditions and per-trial outcomes can be
  compared pairwise. Evaluation seeds live in a space disjoint from demonstration seeds (the sim
  package owns both spaces).
* **Blind**: the runner, its workers, the progress bar and the records file see only opaque policy
  ids such as ``p-3f9a``. The id -> name/spec mapping lives in ``blinding.json``, written before the
  first trial runs; its SHA-256 is recorded in ``manifest.json`` so that anyone can check the
  mapping was not edited after the results were known (:func:`audit_blinding`). Names are joined
  back only at analysis (:func:`lbm.eval.records.load_records`).
* **Randomized**: all ``(policy, task, shift, trial)`` items are interleaved in a seeded random
  order, so slow drifts of the machine (thermal throttling, other jobs) cannot favour one policy.

What blinding protects here: in simulation nobody scores trials by hand, so blinding guards the
*procedure* — no code path of the runner can treat a policy differently by its name, and an
operator watching the run sees only ids. The ids are derived from the evaluation seed so that a
rerun with the same settings is bit-for-bit the same schedule (needed for resume and audit).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lbm.errors import LbmError

BLINDING_FILE = "blinding.json"
MANIFEST_FILE = "manifest.json"
BUILTIN_POLICIES = ("expert", "random")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class PolicySpec:
    """One ``--policy NAME=SOURCE`` argument."""

    name: str
    """Name used in reports (unique within an evaluation)."""
    source: str
    """``expert``, ``random``, the path of a checkpoint folder, or ``ws://host:port`` of `lbm serve`."""

    @property
    def builtin(self) -> bool:
        """Whether ``source`` names a built-in pseudo-policy rather than a checkpoint."""
        return self.source in BUILTIN_POLICIES


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

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What identifies a completed item when resuming."""
        return (self.policy, self.task, self.shift, self.trial)


def parse_policy_specs(specs: list[str]) -> list[PolicySpec]:
    """Parse ``NAME=SOURCE`` (or a bare ``expert`` / ``random``) arguments; names must be unique.

    A checkpoint path must exist and be a folder; whether it loads is checked by the runner.
    """
    if not specs:
        raise LbmError(
            "No policy to evaluate. Pass at least one --policy NAME=SOURCE, where SOURCE is a checkpoint "
            f"folder or one of the built-ins {', '.join(BUILTIN_POLICIES)} (e.g. --policy oracle=expert)."
        )
    out: list[PolicySpec] = []
    for raw in specs:
        name, sep, source = raw.partition("=")
        if not sep:
            if raw in BUILTIN_POLICIES:
                name, source = raw, raw
            else:
                raise LbmError(
                    f"Policy spec {raw!r} has no '='. Write NAME=SOURCE, where SOURCE is a checkpoint folder or "
                    f"one of {', '.join(BUILTIN_POLICIES)}, e.g. --policy mine=runs/pretrain/ckpt --policy oracle=expert."
                )
        name, source = name.strip(), source.strip()
        if not _NAME_RE.match(name):
            raise LbmError(
                f"Policy name {name!r} in {raw!r} is not usable: use letters, digits, '_', '-' or '.', starting "
                "with a letter or digit."
            )
        if not source:
            raise LbmError(f"Policy spec {raw!r} names no source after '='. Give a checkpoint folder, expert or random.")
        if source not in BUILTIN_POLICIES and not source.startswith(("ws://", "wss://")):  # ws: lbm serve
            path = Path(source)
            if not path.exists():
                from lbm.errors import did_you_mean

                if "/" not in source and "\\" not in source:
                    raise did_you_mean(source, BUILTIN_POLICIES, "built-in policy (or an existing checkpoint folder)")
                raise LbmError(
                    f"Checkpoint folder {source!r} of policy {name!r} does not exist. Check the path (it is relative "
                    "to the current directory), or use a built-in pseudo-policy: expert, random."
                )
            if not path.is_dir():
                raise LbmError(
                    f"Checkpoint {source!r} of policy {name!r} is a file; a checkpoint is a folder with config.json "
                    "and model.safetensors. Pass the folder."
                )
            source = str(path.resolve())
        out.append(PolicySpec(name, source))
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LbmError(f"Policy names must be unique; {', '.join(dupes)} given more than once. Rename one (NAME=SOURCE).")
    return out


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
    policy_ids: list[str], tasks: list[str], shifts: list[str], trials: int, seeds: dict[tuple[str, int], int], seed: int
) -> list[TrialItem]:
    """All ``(policy, task, shift, trial)`` items, interleaved in a random order fixed by ``seed``.

    ``seeds[(task, trial)]`` is the simulator seed of that trial, shared by every policy (pairing).
    """
    items = [
        TrialItem(p, t, s, i, int(seeds[(t, i)]))
        for p in sorted(policy_ids)
        for t in tasks
        for s in shifts
        for i in range(trials)
    ]
    order = np.random.default_rng([seed, 0x5C4ED]).permutation(len(items))
    return [items[k] for k in order]


def settings_hash(settings: dict) -> str:
    """SHA-256 of a canonical JSON rendering of the settings that define an evaluation."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_blinding(out_dir: Path, specs: list[PolicySpec], ids: dict[str, str]) -> str:
    """Write ``blinding.json`` (id -> name and source) and return its SHA-256."""
    mapping = {
        "about": "Blind policy id -> policy. Join with the records only at analysis (lbm.eval.records.load_records).",
        "policies": {ids[s.name]: asdict(s) for s in specs},
    }
    text = json.dumps(mapping, indent=2, sort_keys=True) + "\n"
    (out_dir / BLINDING_FILE).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def read_blinding(out_dir: Path) -> dict[str, PolicySpec]:
    """Read ``blinding.json``: blind id -> :class:`PolicySpec`."""
    path = Path(out_dir) / BLINDING_FILE
    if not path.exists():
        raise LbmError(
            f"{path} is missing, so the blind policy ids in the records cannot be joined to policy names. It is "
            "written by `lbm eval` before the first trial; copy it along with the records."
        )
    data = json.loads(path.read_text())
    return {pid: PolicySpec(**d) for pid, d in data["policies"].items()}


def audit_blinding(out_dir: Path) -> dict:
    """Check that ``blinding.json`` is the file recorded in ``manifest.json`` before the run.

    Returns ``{"ok": bool, "recorded_sha256", "actual_sha256", "ids"}``; ``ok`` is False if the mapping
    was edited after the evaluation started.
    """
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    actual = hashlib.sha256((out_dir / BLINDING_FILE).read_bytes()).hexdigest()
    recorded = manifest["blinding_sha256"]
    return {
        "ok": actual == recorded,
        "recorded_sha256": recorded,
        "actual_sha256": actual,
        "ids": sorted(read_blinding(out_dir)),
    }


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
