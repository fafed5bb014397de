"""Worker processes and their supervisor: waves fed one at a time, dead or hung workers replaced.

Workers only ever see blind ids and policy *sources*. A worker that dies or stops answering is
replaced, and the trials it held are recorded as failures with the reason, never dropped. A worker
whose parent dies exits at once (it watches its parent's pid), without a BrokenPipe traceback.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from lbm.eval.runner.config import EvalConfig
from lbm.eval.runner.envpool import EnvPool
from lbm.eval.runner.sources import AnyPolicy, PolicyLoader, PolicySpec
from lbm.eval.runner.wave import failure_record, run_wave, short
from lbm.eval.schedule import TrialItem
from lbm.processes import exit_with_parent

STARTUP_ALLOWANCE_S = 300.0
"""Extra time a worker may take before its first wave starts (imports, policy loading, env building)."""


def worker_main(
    worker: int, parent_pid: int, config: EvalConfig, sources: dict[str, PolicySpec], loader: PolicyLoader, tasks_q, results_q
) -> None:
    """Worker process: build policies lazily, run the waves the parent sends, report every record."""
    exit_with_parent(parent_pid)
    os.environ.setdefault("LP_NUM_THREADS", "1")  # software rendering: one thread per worker
    if not all(spec.builtin for spec in sources.values()):
        import torch  # only checkpoint policies need torch; built-ins run without it

        torch.set_num_threads(1)  # the workers are the parallelism; threads would oversubscribe
    policies: dict[str, AnyPolicy] = {}
    pool = EnvPool(config, capacity=4 * config.envs_per_worker)

    def put(message: tuple) -> None:
        try:
            results_q.put(message)
        except (BrokenPipeError, EOFError, OSError):  # the parent is gone: nobody to report to
            os._exit(0)

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
                put(("wave_start", worker, wave_id))
                steps = run_wave(items, policies, pool, config, worker, lambda r: put(("record", worker, r)))
            except Exception as e:  # noqa: BLE001 - loading failed: every trial of the wave fails with the reason
                steps = 0
                for it in items:
                    put(("record", worker, failure_record(it, f"policy_error: {short(e)}", worker)))
            put(("wave_done", worker, (wave_id, steps)))
    except (KeyboardInterrupt, BrokenPipeError, EOFError):
        pass
    finally:
        pool.close()


def run_parallel(
    waves: Sequence[list[TrialItem]],
    by_id: dict[str, PolicySpec],
    config: EvalConfig,
    handle: Callable[[dict], None],
    loader: PolicyLoader,
) -> int:
    """Feed waves to worker processes one at a time; replace dead or hung workers, failing their trials."""
    ctx = mp.get_context("spawn")  # fork would copy MuJoCo/EGL and torch thread state
    results_q = ctx.Queue()
    pending = deque(enumerate(waves))
    workers: dict[int, dict[str, Any]] = {}
    next_index = 0
    env_steps = 0
    # A worker busy for this long past the wave limit is hung inside a call that never returns.
    grace_s = config.trial_timeout_s + min(60.0, max(5.0, config.trial_timeout_s))

    def spawn() -> None:
        nonlocal next_index
        idx = next_index
        next_index += 1
        tq = ctx.Queue()
        p = ctx.Process(target=worker_main, args=(idx, os.getpid(), config, by_id, loader, tq, results_q), daemon=True)
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
                    handle(failure_record(it, reason, idx))
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
                        if w["wave"] is None:
                            workers.pop(idx)
                            continue
                        bury(idx, f"worker_crashed: exit code {w['proc'].exitcode}")
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


def _hung(w: dict[str, Any], grace_s: float) -> bool:
    """Hung: the wave outlives the grace, or it never starts (startup gets a generous fixed allowance)."""
    now = time.perf_counter()
    if w["since"] is not None:
        return now - w["since"] > grace_s
    return now - w["fed"] > grace_s + STARTUP_ALLOWANCE_S
