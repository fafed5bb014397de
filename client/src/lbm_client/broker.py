"""Execute action chunks one step at a time, fetching the next chunk ahead of time.

A robot loop calls :meth:`ChunkBroker.act` once per control step with its newest observation and
gets one action back. The broker holds the current chunk and asks for a new one either when the
executed part runs out (synchronous, ``prefetch_at=None``: what openpi's ``ActionChunkBroker``
does) or, with ``prefetch_at=k``, *while* the robot keeps executing: after ``k`` of the
``execute_steps`` actions, the current observation goes to the server on a background thread.

The latency / horizon trade-off (asynchronous inference):

* Synchronous: every ``execute_steps`` steps the robot stands still for one round trip (network
  + inference). The actions it then runs were planned from the observation it just sent.
* Prefetching at ``k``: the request has ``d = execute_steps - k`` control periods to come back,
  so a round trip shorter than ``d / control_hz`` seconds is fully hidden and the robot never
  waits. The price: the new chunk was planned from an observation ``d`` steps old, so the broker
  skips its first ``d`` actions (they belong to steps already executed with the old chunk) and
  executes actions ``d .. d + execute_steps - 1``. The policy must therefore predict at least
  ``execute_steps + d`` actions (``horizon`` T), and a larger ``d`` hides more latency but reacts
  later to what happens (a disturbance is seen ``d`` steps after it enters an observation, on top
  of the ``execute_steps`` open-loop steps). Rule of thumb: pick the smallest ``d`` with
  ``d / control_hz`` above your p99 round trip, then ``execute_steps <= T - d``.

If a prefetched chunk is late anyway, :meth:`act` waits for it (counted in ``stats['stalls']``).
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lbm_client.client import ClientError


@runtime_checkable
class ChunkSource(Protocol):
    """Where chunks come from: a :class:`lbm_client.Client`, or an in-process policy behind
    ``lbm.serve.LocalSource``. ``infer`` returns ``{"actions": (T, action_dim)}``."""

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...

    def reset(self, seed: int | None = None) -> None: ...


class ChunkBroker:
    """Turn chunk predictions into one action per control step, optionally prefetching (see module doc).

    ``source``: a :class:`ChunkSource` (a Client, or ``lbm.serve.LocalSource``). ``execute_steps``: actions run
    from each chunk. ``prefetch_at``: after this many of them, request the next chunk in the
    background (``1 <= prefetch_at < execute_steps``); ``None`` requests synchronously.
    """

    def __init__(self, source: ChunkSource, execute_steps: int, prefetch_at: int | None = None):
        if execute_steps < 1:
            raise ClientError(f"execute_steps must be >= 1 (got {execute_steps}).")
        if prefetch_at is not None and not 1 <= prefetch_at < execute_steps:
            raise ClientError(
                f"prefetch_at must be between 1 and execute_steps - 1 = {execute_steps - 1} (got {prefetch_at}); use None "
                "for synchronous requests."
            )
        self.source = source
        self.execute_steps = execute_steps
        self.prefetch_at = prefetch_at
        if not isinstance(source, ChunkSource):
            raise ClientError(
                f"ChunkBroker needs a chunk source with infer() and reset() (an lbm_client.Client, or "
                f"lbm.serve.LocalSource(policy) in process), got {type(source).__name__}."
            )
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lbm-broker") if prefetch_at else None
        self._chunk: np.ndarray | None = None
        self._index = 0
        self._executed = 0
        self._pending: concurrent.futures.Future | None = None
        self.stats: dict[str, float] = {"requests": 0, "prefetched": 0, "stalls": 0, "stall_s": 0.0}
        """requests sent, of which prefetched; stalls = times act() had to wait for a late chunk."""

    @property
    def offset(self) -> int:
        """``d``: actions of a prefetched chunk skipped because they are already in the past."""
        return 0 if self.prefetch_at is None else self.execute_steps - self.prefetch_at

    def _accept(self, chunk: np.ndarray, start: int) -> None:
        if chunk.ndim != 2 or chunk.shape[0] < start + self.execute_steps:
            raise ClientError(
                f"The policy returned a chunk of shape {chunk.shape}, but executing {self.execute_steps} actions after "
                f"skipping {start} needs at least {start + self.execute_steps}. Lower execute_steps or raise prefetch_at."
            )
        self._chunk, self._index, self._executed = chunk, start, 0

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The action ``(action_dim,)`` to execute now, given the newest observation dict."""
        if self._chunk is None or self._executed >= self.execute_steps:
            if self._pending is not None:
                t0 = time.perf_counter()
                if not self._pending.done():
                    self.stats["stalls"] += 1
                chunk = self._pending.result()
                self.stats["stall_s"] += time.perf_counter() - t0
                self._pending = None
                self._accept(chunk, self.offset)
            else:
                self.stats["requests"] += 1
                self._accept(self._fetch(obs), 0)
        if self._pool is not None and self._executed == self.prefetch_at and self._pending is None:
            self.stats["requests"] += 1
            self.stats["prefetched"] += 1
            self._pending = self._pool.submit(self._fetch, obs)
        chunk = self._chunk
        if chunk is None:  # _accept ran above whenever no chunk was held
            raise ClientError("no action chunk to execute; the source returned nothing")
        action = chunk[self._index]
        self._index += 1
        self._executed += 1
        return action

    def _fetch(self, obs: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.source.infer(obs)["actions"], dtype=np.float32)

    def reset(self, seed: int | None = None) -> None:
        """Drop the current and any pending chunk and start a new episode at the source (call at episode start)."""
        if self._pending is not None:
            try:
                self._pending.result()  # a request in flight must finish before the reset is sent
            except Exception:  # noqa: BLE001 - the failed request already surfaced in act(); reset must not raise it again
                pass
            self._pending = None
        self._chunk = None
        self.source.reset(seed)

    def close(self) -> None:
        """Stop the background thread (the source stays open)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
