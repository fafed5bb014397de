"""One wave of trials stepped in lockstep: the rollout loop every evaluation runs.

A wave is ``envs_per_worker`` schedule items. Every env of the wave is reset from its trial's seed,
then all are stepped together: whenever some slots of one policy need actions, they form one
batched ``predict_chunk`` call (receding-horizon chunking: execute ``execute_steps`` actions, then
ask again). Each slot keeps its own policy state (history, noise seed), so batch composition never
changes what a slot's policy sees. Every action passes through the trial hooks (e.g. the shield)
right before ``env.step``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lbm.eval.records import TrialRecord, nan_mean
from lbm.eval.runner import hooks as hook_mod
from lbm.eval.runner.config import EvalConfig
from lbm.eval.runner.envpool import EnvPool
from lbm.eval.runner.sources import AnyPolicy
from lbm.eval.schedule import TrialItem
from lbm.policies.base import PrivilegedPolicy, ReportingState


class Slot:
    """One env in a wave: the trial it runs, its policy state and its running tallies."""

    def __init__(self, item: TrialItem, env: Any) -> None:
        self.item = item
        self.env = env
        self.obs: Any = None
        self.state: Any = None
        self.active = True
        self.queue: deque[np.ndarray] = deque()
        self.steps = 0
        self.ret = 0.0
        self.success = False
        self.failure: str | None = None
        self.latencies: list[float] = []
        self.frames: list[np.ndarray] = []
        self.t_end = 0.0
        self.init_hash = ""
        self.hooks: list[hook_mod.TrialHook] = []


def run_wave(
    items: Sequence[TrialItem],
    policies: Mapping[str, AnyPolicy],
    pool: EnvPool,
    config: EvalConfig,
    worker: int,
    emit: Callable[[dict], None],
) -> int:
    """Run one wave of trials in lockstep, emitting one record per trial. Returns env steps taken."""
    providers = hook_mod.providers()
    request = hook_mod.merged_request(config)
    raw_actions = any(p.replaces_actions(config) for p in providers)
    slots = [_start(item, policies[item.policy], pool, config, providers) for item in items]
    groups: dict[str, list[Slot]] = {}
    for s in slots:
        if s.active:
            groups.setdefault(s.item.policy, []).append(s)
    exec_steps = {pid: config.execute_steps or policies[pid].execute_steps for pid in groups}
    exec_used: dict[str, int] = {}
    env_steps = 0
    # The clock starts after env construction and resets: the timeout limits rollouts, not setup.
    t0 = time.perf_counter()
    while any(s.active for s in slots):
        if time.perf_counter() - t0 > config.trial_timeout_s:
            fail([s for s in slots if s.active], f"timeout: wave exceeded trial_timeout_s={config.trial_timeout_s:g}")
            break
        for pid, group in groups.items():
            need = [s for s in group if s.active and not s.queue]
            if need:
                n_exec = _refill(need, policies[pid], request, exec_steps[pid], raw_actions)
                if n_exec:
                    exec_used[pid] = n_exec
        for s in slots:
            if s.active and s.queue:
                env_steps += _step(s, config)

    for s in slots:
        if s.env is not None:
            pool.give(s.item.task, s.item.shift, s.env)
        emit(_record(s, t0, exec_used.get(s.item.policy, 0), len(items), worker, config))
    return env_steps


def _start(item: TrialItem, policy: AnyPolicy, pool: EnvPool, config: EvalConfig, providers) -> Slot:
    try:
        env = pool.take(item.task, item.shift)
    except Exception as e:  # noqa: BLE001 - any failure to build is recorded as this trial's failure
        s = Slot(item, None)
        fail([s], f"env_error: {short(e)}")
        return s
    s = Slot(item, env)
    try:
        s.obs = env.reset(seed=item.seed) if item.init_state is None else env.reset(seed=item.seed, init_state=item.init_state)
        s.init_hash = initial_state_hash(env, s.obs)
    except Exception as e:  # noqa: BLE001
        fail([s], f"env_error: {short(e)}")
        return s
    try:
        s.hooks = [p.trial(config, item, env.embodiment) for p in providers]
        if isinstance(policy, PrivilegedPolicy):
            s.state = policy.reset(item.policy_seed, env=env)
        else:
            s.state = policy.reset(item.policy_seed)
    except Exception as e:  # noqa: BLE001
        fail([s], f"policy_error: reset: {short(e)}")
    return s


def _refill(need: list[Slot], policy: AnyPolicy, request, execute: int | None, raw_actions: bool) -> int:
    """Ask ``policy`` for the next chunk of every slot in ``need``; queue the actions. Returns actions per chunk."""
    t_call = time.perf_counter()
    try:
        chunk = policy.predict_chunk([s.obs for s in need], [s.state for s in need], request)
    except Exception as e:  # noqa: BLE001 - a policy failure fails its trials, never the run
        fail(need, f"policy_error: {short(e)}")
        return 0
    latency_ms = 1000.0 * (time.perf_counter() - t_call)
    actions = np.asarray(chunk.actions)
    if actions.ndim != 3 or actions.shape[0] != len(need) or actions.shape[1] < 1 or len(chunk.states) != len(need):
        fail(
            need,
            f"bad_actions: predict_chunk returned actions of shape {actions.shape} and {len(chunk.states)} states, "
            f"expected ({len(need)}, T, A) and {len(need)}",
        )
        return 0
    if request.features and chunk.features is None:
        fail(
            need, "policy_error: this policy returns no features, which --features/--monitor need (use an lbm checkpoint policy)"
        )
        return 0
    n_exec = min(execute or actions.shape[1], actions.shape[1])
    for i, s in enumerate(need):
        s.state = chunk.states[i]
        a = actions[i, :n_exec].astype(np.float32)
        emb = s.env.embodiment
        if a.shape[-1] != emb.action_dim:
            fail([s], f"bad_actions: action_dim {a.shape[-1]} != {emb.action_dim}")
            continue
        if not raw_actions:  # hooks that replace actions (a shield) see them raw and record what they do
            if not np.all(np.isfinite(a)):
                fail([s], "bad_actions: non-finite action")
                continue
            a = emb.clip_actions(a)  # clip rather than trust
        s.queue.extend(a)
        feature = None if chunk.features is None else chunk.features[i]
        variance = None if chunk.action_variance is None else float(chunk.action_variance[i])
        for h in s.hooks:
            h.on_chunk(feature, variance)
        s.latencies.append(latency_ms)
    return n_exec


def _step(s: Slot, config: EvalConfig) -> int:
    try:
        action = s.queue.popleft()
        for h in s.hooks:  # the runner applies the hooks: no policy can bypass a shield
            action = h.filter(action, s.obs.state)
        r = s.env.step(action)
    except Exception as e:  # noqa: BLE001
        fail([s], f"env_error: {short(e)}")
        return 0
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
    return 1


def _record(s: Slot, t0: float, execute_steps: int, batch_size: int, worker: int, config: EvalConfig) -> dict:
    extra: dict[str, Any] = {}
    if config.video and s.frames and s.env is not None:
        extra["video"] = write_video(config.out, s.item, s.frames, s.env.embodiment.control_hz)
    for h in s.hooks:
        extra.update(h.record())
    if isinstance(s.state, ReportingState):  # e.g. a planned policy's subtasks, replans and verifier disagreements
        try:
            extra.update(s.state.record())
        except Exception as e:  # noqa: BLE001 - a state that cannot report loses its columns, never the trial
            extra["state_record_error"] = short(e)
    if s.item.init_state is not None:
        extra["init_state"] = s.item.init_state
    if s.env is not None and s.env.spec.goal and s.steps:
        # The symbolic state the trial ended in: the true atoms, and how many goal atoms held.
        truth = s.env.predicates()
        extra["final_atoms"] = json.dumps(sorted(a for a, v in truth.items() if v))
        extra["goal_atoms_met"] = sum(bool(truth.get(a)) for a in s.env.spec.goal)
    record = TrialRecord(
        policy=s.item.policy,
        task=s.item.task,
        shift=s.item.shift,
        trial=s.item.trial,
        seed=s.item.seed,
        success=bool(s.success),
        steps=s.steps,
        return_=s.ret,
        duration_s=max(0.0, (s.t_end or time.perf_counter()) - t0),
        failure_reason=None if s.success else (s.failure or "max_steps"),
        latency_ms=nan_mean(s.latencies),
        chunk_calls=len(s.latencies),
        execute_steps=execute_steps,
        batch_size=batch_size,
        init_hash=s.init_hash,
        policy_seed=s.item.policy_seed,
        worker=worker,
        timestamp=time.time(),
    )
    return {**record.to_row(), **extra}


def failure_record(item: TrialItem, reason: str, worker: int) -> dict:
    """The record of a trial that never ran (its worker died or hung)."""
    return TrialRecord(
        policy=item.policy,
        task=item.task,
        shift=item.shift,
        trial=item.trial,
        seed=item.seed,
        success=False,
        steps=0,
        return_=0.0,
        duration_s=0.0,
        failure_reason=reason,
        latency_ms=math.nan,
        chunk_calls=0,
        execute_steps=0,
        batch_size=0,
        init_hash="",
        policy_seed=item.policy_seed,
        worker=worker,
        timestamp=time.time(),
    ).to_row()


def initial_state_hash(env: Any, obs: Any) -> str:
    """Short digest of the initial condition: equal across policies iff the pairing held."""
    init = getattr(env, "initial_condition", None)
    data = np.asarray(init if init is not None else obs.state, np.float64)
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


def fail(slots: Sequence[Slot], reason: str) -> None:
    """End the still-active ``slots`` as failures with ``reason``."""
    now = time.perf_counter()
    for s in slots:
        if s.active:
            s.active, s.failure, s.t_end = False, reason, now
            s.success = False


def short(e: BaseException) -> str:
    """One line naming an exception, for a record's failure_reason."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:300]


def write_video(out: Path, item: TrialItem, frames: list[np.ndarray], fps: float) -> str:
    """Encode a trial's frames as ``OUT/videos/...mp4``; returns the path relative to OUT."""
    import av  # the video encoder: only when --video asks for it

    folder = Path(out) / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{item.policy}_{item.task.replace('/', '--')}_{item.shift.replace(':', '-').replace('+', '_')}_{item.trial:04d}.mp4"
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
