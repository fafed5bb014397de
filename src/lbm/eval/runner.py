"""The closed-loop rollout runner: blind, paired, randomized, batched, parallel, resumable.

How a run flows (``run_evaluation``):

1. Validate everything up front (policies, tasks, shifts, cameras) so a typo fails in a second, not
   after an hour of rollouts.
2. Write ``blinding.json`` (id -> policy) and ``manifest.json`` (settings, their hash, the mapping's
   SHA-256) before the first trial. On a rerun into the same folder, refuse if the settings hash
   differs, else skip every (policy, task, shift, trial) already in the journal.
3. Cut the seeded schedule (:mod:`lbm.eval.schedule`) into *waves* of ``envs_per_worker`` items in
   schedule order. A worker runs one wave at a time: it resets every env of the wave, then steps
   them in lockstep. All slots of one policy in a wave form one batch for that policy, so a trained
   policy gets one ``predict_chunk`` call over all its envs whenever they need a new chunk
   (receding-horizon chunking: execute ``execute_steps`` actions, then re-query). The batch width
   stays fixed for the whole wave (finished slots keep passing their last observation and their
   actions are discarded) so that slot ``i`` always means the same env — the Policy contract.
   Policies that declare ``stateless = True`` (the built-in expert and random) are asked only for
   the slots that need actions.
4. Workers send records back; the parent appends each to the journal (fsynced) and updates the
   progress bar. A worker that dies or stops answering is replaced; the trials it held are
   recorded as failures with the reason, never dropped.

Workers only ever see blind ids and policy *sources* (checkpoint paths or built-in names).
"""

from __future__ import annotations

import math
import os
import queue
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lbm.errors import LbmError
from lbm.eval import records as rec_mod
from lbm.eval.schedule import (
    MANIFEST_FILE,
    PolicySpec,
    TrialItem,
    audit_blinding,
    blind_ids,
    make_schedule,
    parse_policy_specs,
    settings_hash,
    split_shift_conditions,
    write_blinding,
)


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation (everything except which policies run)."""

    tasks: str = "mt10"
    """Task set name or comma-separated task names (see ``lbm tasks``)."""
    shifts: str = "none"
    """Comma-separated shift conditions; ``+`` composes shifts within one condition."""
    trials: int = 10
    """Trials per policy, task and shift condition (paired across policies)."""
    out: Path = Path("runs/eval")
    """Evaluation folder (records, manifest, blinding, videos)."""
    workers: int = 1
    """Worker processes; 1 runs in this process."""
    envs_per_worker: int = 8
    """Environments a worker steps together (batched inference width across policies)."""
    cameras: tuple[str, ...] = ()
    """Cameras to render (empty: state observations only)."""
    image_size: int = 96
    """Rendered image height and width in pixels."""
    execute_steps: int | None = None
    """Actions executed per chunk before re-querying; None: the policy's default or its whole chunk."""
    max_steps: int | None = None
    """Step limit per trial; None: the simulator's default."""
    seed: int = 0
    """Seed of the schedule order, blind ids and random baselines (not of the initial conditions)."""
    jsonl: bool = False
    """Also write the final table as records.jsonl."""
    video: bool = False
    """Write an mp4 per trial of the first camera (needs --cameras)."""
    trial_timeout_s: float = 600.0
    """Wall-clock limit per wave of trials; exceeding it fails the trials with reason 'timeout'."""
    progress: bool = True
    """Show a progress bar."""
    shield: bool = False
    """Filter every action through the embodiment's default action shield (lbm.safety) before env.step."""
    monitor: Path | None = None
    """Failure-monitor folder (lbm.safety.monitor); records the step of its first alert per trial."""
    features: bool = False
    """Store per-step policy features under OUT/features (to train a failure monitor)."""
    action_samples: int = 0
    """With features: also store the variance of this many extra action chunks per chunk (flow/diffusion; 0: off)."""

    def settings(self, specs: Sequence[PolicySpec], task_names: list[str], shift_list: list[str]) -> dict:
        """What defines the results (hashed for resume); operational knobs such as workers are excluded."""
        return {
            "policies": sorted([s.name, s.source] for s in specs),
            "tasks": task_names,
            "shifts": shift_list,
            "trials": self.trials,
            "seed": self.seed,
            "cameras": list(self.cameras),
            "image_size": self.image_size,
            "execute_steps": self.execute_steps,
            "max_steps": self.max_steps,
            **({"shield": True} if self.shield else {}),  # absent when off: older manifests keep their hash
            **({"monitor": str(self.monitor)} if self.monitor else {}),
        }


@dataclass
class EvalSummary:
    """What ``run_evaluation`` did."""

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


# ---- policies ----------------------------------------------------------------------------------


def load_policy_spec(spec: PolicySpec, seed: int = 0):
    """Build the policy a spec names: a built-in pseudo-policy or a checkpoint via ``lbm.train``."""
    if spec.source.startswith(("ws://", "wss://")):  # served by `lbm serve`: same rollouts, remote inference
        from lbm.serve.remote import RemotePolicy

        return RemotePolicy(spec.source)
    if spec.builtin:
        from lbm.eval.baselines import make_builtin

        return make_builtin(spec.source, seed=seed)
    try:
        from lbm.train import load_policy
    except ImportError as e:
        raise LbmError(
            f"Cannot load checkpoint {spec.source!r}: lbm.train.load_policy is unavailable ({e}). Install lbm "
            "with its training extras, or evaluate the built-ins expert/random."
        ) from e
    try:
        return load_policy(spec.source)
    except LbmError:
        raise
    except Exception as e:  # a corrupt checkpoint should read as a user error, not a crash
        raise LbmError(
            f"Could not load policy {spec.name!r} from {spec.source!r}: {type(e).__name__}: {e}. Check that the folder "
            "is a complete lbm checkpoint (`lbm policy info` prints what it contains)."
        ) from e


# ---- the worker side ---------------------------------------------------------------------------


class _EnvPool:
    """Reuses environments across waves (building a Meta-World env costs far more than a reset)."""

    def __init__(self, config: EvalConfig, capacity: int) -> None:
        self.config = config
        self.capacity = capacity
        self._free: OrderedDict[tuple[str, str], list] = OrderedDict()
        self.build_s = 0.0
        """Seconds spent constructing environments (reported so benchmarks can separate setup)."""

    def take(self, task: str, shift: str):
        from lbm.sim import make_env

        key = (task, shift)
        free = self._free.get(key)
        if free:
            self._free.move_to_end(key)
            return free.pop()
        t0 = time.perf_counter()
        env = make_env(
            task,
            cameras=self.config.cameras,
            image_size=self.config.image_size,
            shifts=_sim_shift(shift),
            max_steps=self.config.max_steps,
        )
        self.build_s += time.perf_counter() - t0
        return env

    def give(self, task: str, shift: str, env) -> None:
        self._free.setdefault((task, shift), []).append(env)
        self._free.move_to_end((task, shift))
        while sum(len(v) for v in self._free.values()) > self.capacity:
            _, envs = self._free.popitem(last=False)
            for e in envs:
                _close(e)

    def close(self) -> None:
        for envs in self._free.values():
            for e in envs:
                _close(e)
        self._free.clear()


def _close(env) -> None:
    try:
        env.close()
    except Exception:  # closing is best effort; a broken env must not take the run down
        pass


def _sim_shift(condition: str) -> str:
    """A condition of ``--shifts`` in the simulator's syntax (``+`` -> ``,``)."""
    return "none" if condition == "none" else condition.replace("+", ",")


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:300]


class _Slot:
    """One env in a wave: the trial it runs and its running tallies."""

    def __init__(self, item: TrialItem, env) -> None:
        self.item = item
        self.env = env
        self.obs = None
        self.active = True
        self.queue: deque = deque()
        self.steps = 0
        self.ret = 0.0
        self.success = False
        self.failure: str | None = None
        self.latencies: list[float] = []
        self.frames: list[np.ndarray] = []
        self.t_end = 0.0
        self.init_hash = ""
        self.safety = None  # lbm.safety.rollout.SlotSafety: shield (with --shield) and violation audit


def run_wave(
    items: Sequence[TrialItem],
    policies: dict[str, object],
    pool: _EnvPool,
    config: EvalConfig,
    worker: int,
    emit: Callable[[dict], None],
) -> int:
    """Run one wave of trials in lockstep, emitting one record per trial. Returns env steps taken."""
    from lbm.safety.monitor import features_path
    from lbm.safety.rollout import SlotSafety

    slots: list[_Slot] = []
    for item in items:
        try:
            env = pool.take(item.task, item.shift)
        except Exception as e:
            s = _Slot(item, None)
            s.active, s.failure, s.t_end = False, f"env_error: {_short(e)}", time.perf_counter()
            slots.append(s)
            continue
        s = _Slot(item, env)
        try:
            s.obs = env.reset(seed=item.seed)
            s.init_hash = _initial_state_hash(env, s.obs)
            feats = features_path(config.out, item.policy, item.task, item.shift, item.trial) if config.features else None
            s.safety = SlotSafety(env.embodiment, shield=config.shield, monitor=config.monitor, features_file=feats)
        except Exception as e:
            s.active, s.failure, s.t_end = False, f"env_error: {_short(e)}", time.perf_counter()
        slots.append(s)

    # One batch per policy; slot order inside a batch is wave order and never changes.
    groups: dict[str, list[_Slot]] = {}
    for s in slots:
        if s.env is not None and s.obs is not None:
            groups.setdefault(s.item.policy, []).append(s)
    exec_steps: dict[str, int | None] = {}
    for pid, group in groups.items():
        policy = policies[pid]
        exec_steps[pid] = config.execute_steps or getattr(policy, "execute_steps", None)
        try:
            policy.reset(None)
            if config.monitor or config.features:  # per-chunk features for the failure monitor
                from lbm.safety.failure import FeatureRecorder

                FeatureRecorder.attach(policy, config.action_samples if config.features else 0)
            if hasattr(policy, "bind_envs"):  # privileged pseudo-policies (expert) read the true state
                policy.bind_envs([s.env for s in group])
        except Exception as e:
            _fail(group, f"policy_error: reset: {_short(e)}")

    exec_used: dict[str, int] = {}
    env_steps = 0
    # The clock starts after env construction and resets: the timeout limits rollouts, not setup.
    t0 = time.perf_counter()
    while any(s.active for s in slots):
        if time.perf_counter() - t0 > config.trial_timeout_s:
            _fail([s for s in slots if s.active], f"timeout: wave exceeded trial_timeout_s={config.trial_timeout_s:g}")
            break
        for pid, group in groups.items():
            if not any(s.active and not s.queue for s in group):
                continue
            policy = policies[pid]
            # A stateful policy keeps per-slot history, so it always gets the full, fixed batch; a
            # stateless one (the built-ins) is asked only for the slots that need actions.
            batch_slots = group
            if getattr(policy, "stateless", False):
                batch_slots = [s for s in group if s.active and not s.queue]
                policy.bind_envs([s.env for s in batch_slots])
            t_call = time.perf_counter()
            try:
                chunk = np.asarray(policy.predict_chunk([s.obs for s in batch_slots]))
            except Exception as e:
                _fail(group, f"policy_error: {_short(e)}")
                continue
            latency_ms = 1000.0 * (time.perf_counter() - t_call)
            if chunk.ndim != 3 or chunk.shape[0] != len(batch_slots) or chunk.shape[1] < 1:
                _fail(group, f"bad_actions: predict_chunk returned shape {chunk.shape}, expected ({len(batch_slots)}, T, A)")
                continue
            n_exec = min(exec_steps[pid] or chunk.shape[1], chunk.shape[1])
            exec_used[pid] = n_exec
            for i, s in enumerate(batch_slots):
                if not s.active or s.queue:
                    continue
                actions = chunk[i, :n_exec]
                if actions.shape[-1] != s.env.embodiment.action_dim:
                    _fail([s], f"bad_actions: action_dim {actions.shape[-1]} != {s.env.embodiment.action_dim}")
                    continue
                if not np.all(np.isfinite(actions)) and not config.shield:  # the shield turns them into holds
                    _fail([s], "bad_actions: non-finite action")
                    continue
                # Clip rather than trust (the shield, when on, does its own bounds and records them).
                raw = actions.astype(np.float32)
                s.queue.extend(raw if config.shield else s.env.embodiment.clip_actions(raw))
                recorder = getattr(policy, "_lbm_feature_recorder", None)
                if recorder is not None and recorder.last is not None and s.safety is not None:
                    av = recorder.last_action_var
                    s.safety.set_feature(recorder.last[i], None if av is None else av[i])
                s.latencies.append(latency_ms)
        for s in slots:
            if not s.active or not s.queue:
                continue
            try:
                action = s.queue.popleft()
                if s.safety is not None:  # the runner applies the shield: no policy can bypass it
                    action = s.safety.filter(action, s.obs.state)
                r = s.env.step(action)
            except Exception as e:
                _fail([s], f"env_error: {_short(e)}")
                continue
            env_steps += 1
            s.steps += 1
            s.ret += float(r.reward)
            s.obs = r.observation
            if config.video and s.obs.images:
                s.frames.append(next(iter(s.obs.images.values())))
            if r.success:
                s.success = True
            if r.done or r.success:
                s.active, s.t_end = False, time.perf_counter()
                if not s.success:
                    s.failure = "max_steps"

    for s in slots:
        if s.env is not None:
            pool.give(s.item.task, s.item.shift, s.env)
        video_path = None
        if config.video and s.frames:
            video_path = _write_video(config.out, s.item, s.frames, s.env.embodiment.control_hz)
        emit(
            {
                **asdict(s.item),
                "success": bool(s.success),
                "steps": s.steps,
                "return": s.ret,
                "duration_s": max(0.0, (s.t_end or time.perf_counter()) - t0),
                "failure_reason": None if s.success else (s.failure or "max_steps"),
                "latency_ms": rec_mod.nan_mean(s.latencies),
                "chunk_calls": len(s.latencies),
                "execute_steps": exec_used.get(s.item.policy, 0),
                "batch_size": len(items),
                "init_hash": s.init_hash,
                "worker": worker,
                "timestamp": time.time(),
                **({"video": video_path} if video_path else {}),
                **(s.safety.record() if s.safety is not None else {}),
            }
        )
    return env_steps


def _initial_state_hash(env, obs) -> str:
    """Short digest of the initial condition: equal across policies iff the pairing held."""
    import hashlib

    init = getattr(env, "initial_condition", None)
    data = np.asarray(init if init is not None else obs.state, np.float64)
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


def _fail(slots: Sequence[_Slot], reason: str) -> None:
    now = time.perf_counter()
    for s in slots:
        if s.active:
            s.active, s.failure, s.t_end = False, reason, now
            s.success = False


def _write_video(out: Path, item: TrialItem, frames: list[np.ndarray], fps: float) -> str:
    import av

    folder = Path(out) / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{item.policy}_{item.task}_{item.shift.replace(':', '-').replace('+', '_')}_{item.trial:04d}.mp4"
    h, w = frames[0].shape[:2]
    with av.open(str(folder / name), mode="w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height = w - w % 2, h - h % 2  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: stream.height, : stream.width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return f"videos/{name}"


def _worker_main(worker: int, config: EvalConfig, sources: dict[str, PolicySpec], loader, tasks_q, results_q) -> None:
    """Worker process: build policies lazily, run the waves the parent sends, report every record."""
    os.environ.setdefault("LP_NUM_THREADS", "1")  # software rendering: one thread per worker
    if not all(spec.builtin for spec in sources.values()):
        import torch

        torch.set_num_threads(1)  # the workers are the parallelism; threads would oversubscribe
    policies: dict[str, object] = {}
    pool = _EnvPool(config, capacity=4 * config.envs_per_worker)
    try:
        while True:
            msg = tasks_q.get()
            if msg is None:
                break
            wave_id, items = msg
            try:
                for it in items:
                    if it.policy not in policies:
                        policies[it.policy] = loader(sources[it.policy], config.seed + 1000 * worker)
                results_q.put(("wave_start", worker, wave_id))
                steps = run_wave(items, policies, pool, config, worker, lambda r: results_q.put(("record", worker, r)))
            except Exception as e:  # loading failed: every trial of the wave fails with the reason
                steps = 0
                for it in items:
                    results_q.put(("record", worker, _failure_record(it, f"policy_error: {_short(e)}", worker)))
            results_q.put(("wave_done", worker, (wave_id, steps)))
    except KeyboardInterrupt:
        pass
    finally:
        pool.close()


def _failure_record(item: TrialItem, reason: str, worker: int) -> dict:
    return {
        **asdict(item),
        "success": False,
        "steps": 0,
        "return": 0.0,
        "duration_s": 0.0,
        "failure_reason": reason,
        "latency_ms": math.nan,
        "chunk_calls": 0,
        "execute_steps": 0,
        "batch_size": 0,
        "worker": worker,
        "timestamp": time.time(),
    }


# ---- the parent side ---------------------------------------------------------------------------


def _resolve(config: EvalConfig, specs: Sequence[PolicySpec]) -> tuple[list[str], list[str]]:
    """Validate tasks, shifts and cameras against the simulator's registries."""
    from lbm import sim

    if config.trials < 1:
        raise LbmError(f"--trials must be at least 1 (got {config.trials}); paired comparisons need trials.")
    if config.workers < 1 or config.envs_per_worker < 1:
        raise LbmError("--workers and --envs-per-worker must be at least 1.")
    if config.execute_steps is not None and config.execute_steps < 1:
        raise LbmError(f"--execute-steps must be at least 1 (got {config.execute_steps}), or omitted for the default.")
    if config.max_steps is not None and config.max_steps < 1:
        raise LbmError(f"--max-steps must be at least 1 (got {config.max_steps}), or omitted for the default.")
    if config.trial_timeout_s <= 0:
        raise LbmError("--trial-timeout-s must be positive.")
    if config.video and not config.cameras:
        raise LbmError("--video records camera frames; also pass --cameras (e.g. --cameras corner).")
    task_names = list(sim.resolve_tasks(config.tasks))
    shift_list = []
    for cond in split_shift_conditions(config.shifts):
        # Canonical labels ("friction" -> "friction:medium") so records of equal conditions match.
        label = "+".join(shift.spec for shift in sim.parse_shifts(_sim_shift(cond))) or "none"
        if label in shift_list:
            raise LbmError(f"Shift condition {cond!r} repeats {label!r} in --shifts; list each condition once.")
        shift_list.append(label)
    return task_names, shift_list


def run_evaluation(
    policy_specs: Sequence[str] | Sequence[PolicySpec],
    config: EvalConfig,
    loader: Callable[[PolicySpec, int], object] | None = None,
) -> EvalSummary:
    """Run (or resume) a blind, paired, randomized evaluation; return a summary.

    ``policy_specs`` are ``NAME=SOURCE`` strings (or parsed specs). ``loader(spec, seed)`` builds a
    policy from a spec (default :func:`load_policy_spec`; with ``workers > 1`` it is sent to the worker
    processes, so it must be a module-level function). Records go to ``config.out`` (see :mod:`lbm.eval.records`).
    """
    from lbm import sim

    specs = [s if isinstance(s, PolicySpec) else None for s in policy_specs]
    if any(s is None for s in specs):
        specs = parse_policy_specs([str(s) for s in policy_specs])
    loader = loader or load_policy_spec
    task_names, shift_list = _resolve(config, specs)

    # Load every checkpoint once here so a broken one fails before any rollout (and reuse in-process).
    parent_policies: dict[str, object] = {}
    for s in specs:
        if not s.builtin or loader is not load_policy_spec:
            parent_policies[s.name] = loader(s, config.seed)

    # Sorted: the ids must not depend on the order of --policy flags, or a resumed run would re-map them.
    ids = blind_ids(sorted(s.name for s in specs), config.seed)
    by_id = {ids[s.name]: s for s in specs}
    seeds = {(t, i): int(sim.eval_seed(t, i)) for t in task_names for i in range(config.trials)}
    schedule = make_schedule(list(by_id), task_names, shift_list, config.trials, seeds, config.seed)
    settings = config.settings(specs, task_names, shift_list)
    digest = settings_hash(settings)

    # Build the first env before touching the folder: bad cameras, image sizes or step limits fail
    # here with the simulator's own message rather than in every trial. In-process, it is reused.
    pool = _EnvPool(config, capacity=4 * config.envs_per_worker)
    try:
        pool.give(schedule[0].task, schedule[0].shift, pool.take(schedule[0].task, schedule[0].shift))
        return _run_with_pool(config, specs, by_id, schedule, settings, digest, pool, parent_policies, loader)
    finally:
        pool.close()


def _run_with_pool(config, specs, by_id, schedule, settings, digest, pool, parent_policies, loader) -> EvalSummary:
    import json

    ids = {spec.name: pid for pid, spec in by_id.items()}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_FILE
    journal_path = out / rec_mod.JOURNAL_FILE
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings_hash") != digest:
            public = {k: v for k, v in settings.items() if k != "policies"}
            diffs = [k for k in public if manifest.get("settings", {}).get(k) != public[k]]
            what = ", ".join(diffs) if diffs else "the policies (names or sources)"
            raise LbmError(
                f"{out} already holds an evaluation with different settings ({what} differ), so resuming would mix "
                "incomparable trials. Rerun with the original settings to resume it, or choose a new --out folder."
            )
        audit = audit_blinding(out)
        if not audit["ok"]:
            raise LbmError(
                f"{out / 'blinding.json'} changed after the evaluation started (SHA-256 differs from manifest.json), "
                "so the blinding can no longer be audited. Restore the original file or start a new --out folder."
            )
    else:
        if journal_path.exists() or (out / rec_mod.PARQUET_FILE).exists():
            raise LbmError(
                f"{out} holds records but no manifest.json, so it is unknown which settings produced them. "
                "Choose a new --out folder."
            )
        blinding_sha = write_blinding(out, specs, ids)
        manifest = {
            "about": "lbm eval: settings of this evaluation. Policies appear only as blind ids; see blinding.json.",
            "lbm_version": __import__("lbm").__version__,
            "settings": {k: v for k, v in settings.items() if k != "policies"},
            "settings_hash": digest,
            "policy_ids": sorted(by_id),
            "blinding_sha256": blinding_sha,
            "n_items": len(schedule),
            "created": time.time(),
            "status": "running",
        }
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")

    done_records = rec_mod.read_journal(journal_path, repair=True)
    valid_keys = {it.key for it in schedule}
    done = {}
    for r in done_records:
        key = (r["policy"], r["task"], r["shift"], int(r["trial"]))
        if key not in valid_keys:
            raise LbmError(f"{journal_path} holds a trial {key} that this evaluation's schedule does not contain; "
                           "the folder was mixed with another run. Choose a new --out folder.")
        done[key] = r  # a later duplicate (should not happen) overwrites, keeping one row per key
    remaining = [it for it in schedule if it.key not in done]

    summary = EvalSummary(out=out, total=len(schedule), ran=0, skipped=len(done))
    for r in done.values():
        s, n = summary.success_by_policy_id.get(r["policy"], (0, 0))
        summary.success_by_policy_id[r["policy"]] = (s + int(bool(r["success"])), n + 1)

    t_start = time.perf_counter()
    writer = rec_mod.JournalWriter(journal_path)
    progress = _Progress(len(schedule), len(done), summary, enabled=config.progress)

    def handle(record: dict) -> None:
        if (record["policy"], record["task"], record["shift"], int(record["trial"])) in done:
            return
        writer.write(record)
        key = (record["policy"], record["task"], record["shift"], int(record["trial"]))
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
                summary.env_steps += _run_parallel(waves, by_id, config, handle, loader)
    finally:
        summary.env_build_s = pool.build_s
        writer.close()
        summary.wall_s = time.perf_counter() - t_start

    all_records = list(done.values())
    if len(all_records) == len(schedule):
        summary.files = rec_mod.write_table(out, all_records, jsonl=config.jsonl)
        manifest = json.loads(manifest_path.read_text())
        manifest["status"] = "complete"
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return summary


def _run_parallel(waves, by_id, config: EvalConfig, handle, loader) -> int:
    """Feed waves to worker processes one at a time; replace dead or hung workers, failing their trials."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork would copy MuJoCo/EGL and torch thread state
    results_q = ctx.Queue()
    pending = deque(enumerate(waves))
    workers: dict[int, dict] = {}
    next_index = 0
    env_steps = 0
    # A worker busy for this long past the wave limit is hung inside a call that never returns.
    grace_s = config.trial_timeout_s + min(60.0, max(5.0, config.trial_timeout_s))

    def spawn() -> None:
        nonlocal next_index
        idx = next_index
        next_index += 1
        tq = ctx.Queue()
        p = ctx.Process(target=_worker_main, args=(idx, config, by_id, loader, tq, results_q), daemon=True)
        p.start()
        workers[idx] = {"proc": p, "q": tq, "wave": None, "since": None, "fed": time.perf_counter(), "got": set()}
        feed(idx)

    def feed(idx: int) -> None:
        w = workers[idx]
        if pending:
            wave_id, items = pending.popleft()
            w["wave"], w["since"], w["got"] = (wave_id, items), None, set()
            w["fed"] = time.perf_counter()
            w["q"].put((wave_id, items))
        else:
            w["wave"] = None
            w["q"].put(None)

    def bury(idx: int, reason: str) -> None:
        w = workers.pop(idx)
        if w["wave"] is not None:
            for it in w["wave"][1]:
                if it.key not in w["got"]:
                    handle(_failure_record(it, reason, idx))
        if w["proc"].is_alive():
            w["proc"].kill()
        w["proc"].join(timeout=5)

    for _ in range(min(config.workers, len(waves))):
        spawn()
    try:
        while workers:
            try:
                kind, idx, payload = results_q.get(timeout=0.5)
            except queue.Empty:
                for idx in list(workers):
                    w = workers[idx]
                    if not w["proc"].is_alive():
                        code = w["proc"].exitcode
                        if w["wave"] is None:
                            workers.pop(idx)
                            continue
                        bury(idx, f"worker_crashed: exit code {code}")
                        if pending:
                            spawn()
                    elif w["wave"] is not None and _hung(w, grace_s):
                        bury(idx, f"timeout: worker unresponsive for {grace_s:g}s")
                        if pending:
                            spawn()
                continue
            if idx not in workers:
                continue  # a message from a worker already declared dead
            if kind == "wave_start":
                workers[idx]["since"] = time.perf_counter()
            elif kind == "record":
                workers[idx]["got"].add((payload["policy"], payload["task"], payload["shift"], int(payload["trial"])))
                handle(payload)
            elif kind == "wave_done":
                env_steps += payload[1]
                feed(idx)
                if workers[idx]["wave"] is None:
                    workers[idx]["proc"].join(timeout=30)
                    workers.pop(idx)
    finally:
        for w in workers.values():
            if w["proc"].is_alive():
                w["proc"].kill()
    return env_steps


def _hung(w: dict, grace_s: float) -> bool:
    """A worker is hung when its wave outlives the grace, or it never starts the wave (startup, policy
    loading and env construction get a generous fixed allowance on top)."""
    now = time.perf_counter()
    if w["since"] is not None:
        return now - w["since"] > grace_s
    return now - w["fed"] > grace_s + _STARTUP_ALLOWANCE_S


_STARTUP_ALLOWANCE_S = 300.0


class _Progress:
    """Progress bar: trials done, running success per blind policy id, ETA."""

    def __init__(self, total: int, done: int, summary: EvalSummary, enabled: bool = True) -> None:
        self.total, self.summary, self.enabled = total, summary, enabled
        self._bar = None
        self._done0 = done

    def __enter__(self):
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
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=self._text())

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
