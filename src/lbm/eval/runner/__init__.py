"""The closed-loop rollout runner: blind, paired, randomized, batched, parallel, resumable.

How a run flows (:func:`run_evaluation`):

1. Validate everything up front (policies, tasks, shifts, cameras, hook settings) so a typo fails in
   a second, not after an hour of rollouts.
2. Write ``blinding.json`` (id -> policy) and ``manifest.json`` (settings, their hash, the mapping's
   SHA-256) before the first trial (:mod:`lbm.eval.manifest`). On a rerun into the same folder,
   refuse if the settings hash differs, else skip every (policy, task, shift, trial) already in the
   journal.
3. Cut the seeded schedule (:mod:`lbm.eval.schedule`) into waves of ``envs_per_worker`` items and
   run them (:mod:`lbm.eval.runner.wave`) in this process or in worker processes
   (:mod:`lbm.eval.runner.workers`).
4. Append each record to the journal as it arrives (:mod:`lbm.eval.records`), update the progress
   bar, and write ``records.parquet`` once every trial is done.

Modules: ``config`` (EvalConfig), ``sources`` (where policies come from), ``hooks`` (what watches a
trial), ``envpool``, ``wave`` (the rollout loop), ``workers`` (processes and their supervisor).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from lbm import sim
from lbm.errors import LbmError
from lbm.eval import manifest as manifest_mod
from lbm.eval import records as rec_mod
from lbm.eval.runner import hooks
from lbm.eval.runner.config import EvalConfig
from lbm.eval.runner.envpool import EnvPool, sim_shift
from lbm.eval.runner.sources import AnyPolicy, PolicyLoader, PolicySpec, load_policy_spec, parse_policy_specs
from lbm.eval.runner.wave import run_wave
from lbm.eval.runner.workers import run_parallel
from lbm.eval.schedule import TrialItem, blind_ids, make_schedule, split_shift_conditions

__all__ = ["EvalConfig", "EvalSummary", "PolicySpec", "load_policy_spec", "parse_policy_specs", "run_evaluation"]


@dataclass
class EvalSummary:
    """What :func:`run_evaluation` did."""

    out: Path
    total: int
    ran: int
    skipped: int
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    success_by_policy_id: dict[str, tuple[int, int]] = field(default_factory=dict)
    wall_s: float = 0.0
    env_steps: int = 0
    env_build_s: float = 0.0
    """Seconds this process spent constructing environments (workers' construction not included)."""
    files: list[Path] = field(default_factory=list)


def resolve(config: EvalConfig) -> tuple[list[str], list[str]]:
    """Validate the settings against the simulator's registries: ``(task names, canonical shift conditions)``."""
    config.validate()
    task_names = list(sim.resolve_tasks(config.tasks))
    shift_list = []
    for cond in split_shift_conditions(config.shifts):
        # Canonical labels ("friction" -> "friction:medium") so records of equal conditions match.
        label = "+".join(shift.spec for shift in sim.parse_shifts(sim_shift(cond))) or "none"
        if label in shift_list:
            raise LbmError(f"Shift condition {cond!r} repeats {label!r} in --shifts; list each condition once.")
        shift_list.append(label)
    for provider in hooks.providers():
        provider.check(config)
    return task_names, shift_list


def run_evaluation(config: EvalConfig, loader: PolicyLoader | None = None) -> EvalSummary:
    """Run (or resume) a blind, paired, randomized evaluation of ``config.policy``; return a summary.

    ``loader(spec, seed)`` builds a policy from a spec (default :func:`load_policy_spec`; with
    ``workers > 1`` it is sent to the worker processes, so it must be a module-level function).
    Records go to ``config.out`` (see :mod:`lbm.eval.records`).
    """
    specs = parse_policy_specs(config.policy)
    loader = loader or load_policy_spec
    task_names, shift_list = resolve(config)

    # Load every non-built-in policy once here, so a broken checkpoint fails before any rollout (and is reused in-process).
    parent_policies: dict[str, AnyPolicy] = {
        s.name: loader(s, config.seed) for s in specs if not s.builtin or loader is not load_policy_spec
    }

    # Sorted: the ids must not depend on the order of --policy flags, or a resumed run would re-map them.
    ids = blind_ids(sorted(s.name for s in specs), config.seed)
    by_id = {ids[s.name]: s for s in specs}
    seeds = {(t, i): int(sim.eval_seed(t, config.first_trial + i)) for t in task_names for i in range(config.trials)}
    fixed = {t: sim.get_task(t).fixed_init_states for t in task_names} if config.init_states == "fixed" else {}
    schedule = make_schedule(list(by_id), task_names, shift_list, config.trials, seeds, config.seed, fixed)
    settings = config.settings([[s.name, s.source] for s in specs], task_names, shift_list)
    digest = manifest_mod.settings_hash(settings)

    # Build the first env before touching the folder: bad cameras, image sizes or step limits fail
    # here with the simulator's own message rather than in every trial. In-process, it is reused.
    pool = EnvPool(config, capacity=4 * config.envs_per_worker)
    try:
        pool.give(schedule[0].task, schedule[0].shift, pool.take(schedule[0].task, schedule[0].shift))
        out = Path(config.out)
        done = _open_folder(out, specs, by_id, schedule, settings, digest)
        return _run(config, by_id, schedule, done, pool, parent_policies, loader)
    finally:
        pool.close()


def _open_folder(
    out: Path, specs: list[PolicySpec], by_id: dict[str, PolicySpec], schedule: list[TrialItem], settings: dict, digest: str
) -> dict[tuple, dict]:
    """Start the folder (blinding, manifest) or check it for resuming; return the records already done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LbmError(
            f"Cannot create the evaluation folder {out} ({error.strerror or error}). Choose a writable --out."
        ) from None
    if not out.is_dir():
        raise LbmError(f"--out {out} is a file; an evaluation writes a folder. Choose another --out.")
    journal = out / rec_mod.JOURNAL_FILE
    if (out / manifest_mod.MANIFEST_FILE).exists():
        manifest = manifest_mod.read_manifest(out)
        if manifest.settings_hash != digest:
            public = {k: v for k, v in settings.items() if k != "policies"}
            diffs = [k for k in public if manifest.settings.get(k) != public[k]]
            what = ", ".join(diffs) if diffs else "the policies (names or sources)"
            raise LbmError(
                f"{out} already holds an evaluation with different settings ({what} differ), so resuming would "
                "mix incomparable trials. Rerun with the original settings to resume it, or choose a new --out folder."
            )
        if not manifest_mod.audit_blinding(out)["ok"]:
            raise LbmError(
                f"{out / manifest_mod.BLINDING_FILE} changed after the evaluation started (SHA-256 differs from "
                "manifest.json), so the blinding can no longer be audited. Restore the original file or start a "
                "new --out folder."
            )
    else:
        if journal.exists() or (out / rec_mod.PARQUET_FILE).exists():
            raise LbmError(
                f"{out} holds records but no manifest.json, so it is unknown which settings produced them. "
                "Choose a new --out folder."
            )
        ids = {spec.name: pid for pid, spec in by_id.items()}
        blinding_sha = manifest_mod.write_blinding(out, {ids[s.name]: (s.name, s.source) for s in specs})
        manifest_mod.write_manifest(out, manifest_mod.new_manifest(settings, digest, list(by_id), blinding_sha, len(schedule)))

    valid_keys = {it.key for it in schedule}
    done: dict[tuple, dict] = {}
    for r in rec_mod.read_journal(journal, repair=True):
        try:
            key = (r["policy"], r["task"], r["shift"], int(r["trial"]))
        except (KeyError, TypeError, ValueError):
            raise LbmError(
                f"{journal} holds a line that is not a trial record ({str(r)[:120]}); the file was edited or "
                "mixed with another. Choose a new --out folder."
            ) from None
        if key not in valid_keys:
            raise LbmError(
                f"{journal} holds a trial {key} that this evaluation's schedule does not contain; the folder was "
                "mixed with another run. Choose a new --out folder."
            )
        done[key] = r  # a later duplicate (should not happen) overwrites, keeping one row per key
    return done


def _run(
    config: EvalConfig,
    by_id: dict[str, PolicySpec],
    schedule: list[TrialItem],
    done: dict[tuple, dict],
    pool: EnvPool,
    parent_policies: dict[str, AnyPolicy],
    loader: PolicyLoader,
) -> EvalSummary:
    out = Path(config.out)
    remaining = [it for it in schedule if it.key not in done]
    summary = EvalSummary(out=out, total=len(schedule), ran=0, skipped=len(done))
    for r in done.values():
        s, n = summary.success_by_policy_id.get(r["policy"], (0, 0))
        summary.success_by_policy_id[r["policy"]] = (s + int(bool(r["success"])), n + 1)

    t_start = time.perf_counter()
    writer = rec_mod.JournalWriter(out / rec_mod.JOURNAL_FILE)
    progress = _Progress(len(schedule), len(done), summary, enabled=config.progress)

    def handle(record: dict) -> None:
        key = (record["policy"], record["task"], record["shift"], int(record["trial"]))
        if key in done:
            return
        writer.write(record)
        done[key] = record
        summary.ran += 1
        s, n = summary.success_by_policy_id.get(record["policy"], (0, 0))
        summary.success_by_policy_id[record["policy"]] = (s + int(record["success"]), n + 1)
        if record["failure_reason"] and record["failure_reason"] != "max_steps":
            reason = record["failure_reason"].split(":")[0]
            summary.failures_by_reason[reason] = summary.failures_by_reason.get(reason, 0) + 1
        progress.advance()

    waves = [remaining[i : i + config.envs_per_worker] for i in range(0, len(remaining), config.envs_per_worker)]
    try:
        with progress:
            if config.workers == 1:
                policies = {
                    pid: parent_policies[spec.name] if spec.name in parent_policies else loader(spec, config.seed)
                    for pid, spec in by_id.items()
                }
                for wave in waves:
                    summary.env_steps += run_wave(wave, policies, pool, config, 0, handle)
            else:
                pool.close()  # workers build their own envs
                summary.env_steps += run_parallel(waves, by_id, config, handle, loader)
    finally:
        summary.env_build_s = pool.build_s
        writer.close()
        summary.wall_s = time.perf_counter() - t_start

    if len(done) == len(schedule):
        summary.files = rec_mod.write_table(out, list(done.values()), jsonl=config.jsonl)
        manifest = manifest_mod.read_manifest(out)
        manifest.status = "complete"
        manifest_mod.write_manifest(out, manifest)
    return summary


class _Progress:
    """Progress bar: trials done, running success per blind policy id, ETA."""

    def __init__(self, total: int, done: int, summary: EvalSummary, enabled: bool = True) -> None:
        self.total, self.summary, self.enabled = total, summary, enabled
        self._bar = None
        self._task = None
        self._done0 = done

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.description}")
            )
            self._bar.start()
            self._task = self._bar.add_task(self._text(), total=self.total, completed=self._done0)
        return self

    def _text(self) -> str:
        parts = [f"{pid} {s}/{n}" for pid, (s, n) in sorted(self.summary.success_by_policy_id.items())]
        return "success " + "  ".join(parts) if parts else ""

    def advance(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=1, description=self._text())

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
