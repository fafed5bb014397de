"""The policy server: the openpi websocket protocol, batched across clients, safe to expose.

Protocol (openpi-compatible, see ``lbm.serve.wire`` for the array encoding):

1. The client opens a websocket (``ws://HOST:PORT``; header ``Authorization: Api-Key TOKEN`` when
   the server has a token). The server sends its metadata as one msgpack frame.
2. Each request is one binary msgpack frame holding an observation dict::

       {"state": float32 (state_dim,), "prompt": str,
        "images": {camera: uint8 (H, W, 3)},      # only when the policy looks at cameras
        "embodiment": str,                         # optional when the policy knows one embodiment
        "reset": bool}                             # optional: forget this connection's history first

   The reply is one binary frame ``{"actions": float32 (T, action_dim), "embodiment": str,
   "server_timing": {"infer_ms", "queue_ms", "total_ms", "batch_size"}}`` with actions in the
   embodiment's units. A bad request gets one *text* frame ``"error: ..."`` (what openpi's client
   raises as an error) and the connection stays open. ``{"reset": True}`` alone only resets and is
   answered ``{"reset": True}``; openpi's ``{"__ctrl__": "episode_start"}`` also resets.
3. Every connection is one policy *slot* with its own observation history; it is freed when the
   connection closes, whatever state the request it had in flight was in.

Requests that arrive together from several connections are answered by one ``predict_chunk``
call: the batcher takes what is queued, waits at most ``max_wait_ms`` for the other connected
clients (never when only one is connected, so a lone client pays no batching delay) and runs at
most ``max_batch`` observations at once on a single inference thread, so the event loop keeps
reading, validating and answering while the model runs.

HTTP on the same port: ``GET /healthz`` (200 "OK", never needs the token) and ``GET /metrics``
(JSON: requests, errors, batch sizes, latency p50/p95/p99; needs the token when one is set).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import http
import ipaddress
import itertools
import json
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lbm.errors import LbmError, did_you_mean
from lbm.schema import Observation
from lbm.serve.wire import WireError, packb, unpackb

log = logging.getLogger("lbm.serve")

REQUEST_KEYS = ("state", "images", "prompt", "embodiment", "reset")
PROTOCOL = "openpi-websocket/msgpack-numpy"


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the policy server listens."""

    host: str = "127.0.0.1"
    """Address to bind; loopback by default. Any other address requires a token."""
    port: int = 8000
    """TCP port (0 = any free port; the chosen one is in ``PolicyServer.port``)."""
    token: str = ""
    """Shared secret clients send as ``Authorization: Api-Key TOKEN`` (empty = no check)."""
    max_batch: int = 8
    """Most observations answered by one predict_chunk call."""
    max_wait_ms: float = 2.0
    """Longest a request waits for requests of other clients to batch with (0 = never wait)."""
    max_message_mb: float = 16.0
    """Largest accepted request in MiB; bigger ones close the connection with code 1009."""
    metrics_every_s: float = 60.0
    """Seconds between metrics lines in the log (0 = never)."""
    latency_window: int = 10_000
    """Latest requests over which the latency percentiles are computed."""

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 2**20)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost`` or a loopback IP literal)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname could resolve anywhere: treat it as exposed


def validate_config(config: ServerConfig) -> None:
    """Raise :class:`LbmError` for settings the server must refuse."""
    if not is_loopback(config.host) and not config.token:
        raise LbmError(
            f"Refusing to serve on {config.host!r} without a token: anyone who can reach that address could drive "
            "the robot. Pass --token SECRET (or set LBM_SERVE_TOKEN) and give clients the same token, or bind to "
            "127.0.0.1 and tunnel (e.g. ssh -L 8000:127.0.0.1:8000 server)."
        )
    problems = []
    if not 0 <= config.port <= 65535:
        problems.append(f"port {config.port} is not in 0..65535")
    if config.max_batch < 1:
        problems.append(f"max_batch must be >= 1 (got {config.max_batch})")
    if config.max_wait_ms < 0:
        problems.append(f"max_wait_ms must be >= 0 (got {config.max_wait_ms})")
    if config.max_message_mb <= 0:
        problems.append(f"max_message_mb must be > 0 (got {config.max_message_mb})")
    if config.latency_window < 1:
        problems.append("latency_window must be >= 1")
    if problems:
        raise LbmError("Invalid server settings: " + "; ".join(problems) + ".")


class RequestError(Exception):
    """A request the server refuses; the text is sent to the client."""


# ---- metrics ---------------------------------------------------------------------------------------


class Metrics:
    """Counters and a latency window; all updates happen on the event-loop thread."""

    def __init__(self, window: int):
        self.started = time.time()
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.batches = 0
        self.batch_sizes: Counter[int] = Counter()
        self.connections_open = 0
        self.connections_total = 0
        self.latencies_ms: deque[float] = deque(maxlen=window)
        self.infer_ms: deque[float] = deque(maxlen=window)

    def snapshot(self) -> dict[str, Any]:
        """Plain-JSON view of the metrics (what ``GET /metrics`` returns)."""
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        inf = np.asarray(self.infer_ms, dtype=np.float64)

        def pct(a: np.ndarray) -> dict[str, float | None]:
            if a.size == 0:
                return {"p50": None, "p95": None, "p99": None, "mean": None, "n": 0}
            p50, p95, p99 = np.percentile(a, [50, 95, 99])
            return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()), "n": int(a.size)}

        n_batched = sum(k * v for k, v in self.batch_sizes.items())
        return {
            "uptime_s": time.time() - self.started,
            "requests": self.requests,
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "batches": self.batches,
            "mean_batch_size": n_batched / self.batches if self.batches else None,
            "max_batch_size": max(self.batch_sizes, default=0),
            "batch_size_counts": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "latency_ms": pct(lat),
            "infer_ms": pct(inf),
        }

    def line(self) -> str:
        """One log line summarizing the metrics."""
        s = self.snapshot()
        lat = s["latency_ms"]
        fmt = (lambda v: "-" if v is None else f"{v:.2f}")  # noqa: E731
        return (
            f"requests={s['requests']} errors={s['errors']} connections={s['connections_open']} "
            f"batches={s['batches']} mean_batch={fmt(s['mean_batch_size'])} "
            f"latency_ms p50={fmt(lat['p50'])} p95={fmt(lat['p95'])} p99={fmt(lat['p99'])}"
        )


# ---- requests --------------------------------------------------------------------------------------


@dataclass
class _Pending:
    conn: int
    obs: Observation
    reset: bool
    key: tuple
    t_recv: float
    future: asyncio.Future
    t_batch: float = 0.0


@dataclass
class _Slot:
    history: Any = None  # the policy's per-slot history object (a deque for ChunkPolicy); None = fresh
    embodiment: str = ""
    image_shapes: dict[str, tuple] = field(default_factory=dict)


def _describe(policy: Any) -> dict[str, Any]:
    config = getattr(policy, "config", None)
    return {
        "family": getattr(config, "family", type(policy).__name__),
        "horizon": int(getattr(policy, "horizon", getattr(config, "horizon", 0)) or 0),
        "history": int(getattr(policy, "history", getattr(config, "history", 1)) or 1),
        "cameras": list(getattr(config, "cameras", ()) or ()),
        "image_size": getattr(config, "image_size", None),
    }


class PolicyServer:
    """Serve one policy object over the openpi websocket protocol (see the module docstring).

    ``policy`` honours ``lbm.policies.base.Policy`` and has ``.embodiments`` (name -> Embodiment).
    Per-connection histories rely on the policy keeping its slot histories in ``policy._slots``
    (``lbm.policies.ChunkPolicy`` does): before each batch the server installs the histories of the
    batch's connections as slots ``0..B-1`` and reads them back afterwards, so a connection keeps
    its history whatever batch it lands in. A policy without ``_slots`` is served statelessly
    (reset before every call) and a warning says so.
    """

    def __init__(self, policy: Any, config: ServerConfig = ServerConfig(), extra_metadata: dict | None = None):
        validate_config(config)
        embodiments = getattr(policy, "embodiments", None)
        if not embodiments:
            raise LbmError("The policy to serve has no .embodiments; the server needs them to validate requests. Serve a policy loaded with lbm.train.load_policy.")
        self.policy = policy
        self.config = config
        self.embodiments = dict(embodiments)
        self.info = _describe(policy)
        self.stateful = isinstance(getattr(policy, "_slots", None), dict)
        if not self.stateful:
            log.warning("policy %s keeps no per-slot history (_slots); every request is served without history", type(policy).__name__)
        self.metrics = Metrics(config.latency_window)
        self.metadata = self._metadata(extra_metadata or {})
        self.port: int | None = None
        self._slots: dict[int, _Slot] = {}
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # ---- description ----
    def _metadata(self, extra: dict) -> dict[str, Any]:
        import lbm

        known = sorted(getattr(getattr(self.policy, "instructions", None), "table", {}) or {})
        single = next(iter(self.embodiments.values())) if len(self.embodiments) == 1 else None
        return {
            "server": "lbm",
            "lbm_version": lbm.__version__,
            "protocol": PROTOCOL,
            "policy": self.info,
            "action_horizon": self.info["horizon"],
            "action_dim": single.action_dim if single else None,
            "state_dim": single.state_dim if single else None,
            "embodiments": {n: e.to_json() for n, e in self.embodiments.items()},
            "instructions": known[:500],
            "request_keys": list(REQUEST_KEYS),
            "max_message_bytes": self.config.max_message_bytes,
            "max_batch": self.config.max_batch,
            "requires_token": bool(self.config.token),
            **extra,
        }

    @property
    def url(self) -> str:
        """``ws://host:port`` of the running server."""
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"ws://{host}:{self.port}"

    # ---- running ----
    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C)."""
        asyncio.run(self._main())

    def start(self, timeout_s: float = 30.0) -> PolicyServer:
        """Serve from a background thread; returns once listening (``self.port`` is set)."""
        self._thread = threading.Thread(target=self.serve_forever, name="lbm-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._start_error is not None:
            raise self._start_error or LbmError(f"The policy server did not start within {timeout_s:g} s.")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop a server started with :meth:`start` (closes every connection)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> PolicyServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lbm-infer")
        try:
            server = await serve(
                self._handle,
                self.config.host,
                self.config.port,
                process_request=self._process_request,
                max_size=self.config.max_message_bytes,
                compression=None,  # arrays do not compress and deflate costs milliseconds
            )
        except OSError as error:
            self._start_error = LbmError(
                f"Cannot listen on {self.config.host}:{self.config.port} ({error.strerror or error}). Choose another "
                "--port (0 picks a free one) or stop the process using it."
            )
            self._ready.set()
            if self._thread is None:
                raise self._start_error from None
            return
        self.port = server.sockets[0].getsockname()[1]
        tasks = [asyncio.create_task(self._batcher(executor))]
        if self.config.metrics_every_s > 0:
            tasks.append(asyncio.create_task(self._log_metrics()))
        self._ready.set()
        log.info("serving %s at %s (max_batch=%d, max_wait_ms=%g)", self.info["family"], self.url, self.config.max_batch, self.config.max_wait_ms)
        try:
            await self._stop.wait()
        finally:
            server.close()
            await server.wait_closed()
            for t in tasks:
                t.cancel()
            executor.shutdown(wait=True)

    async def _log_metrics(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_every_s)
            log.info("metrics: %s", self.metrics.line())

    # ---- HTTP endpoints and the token ----
    def _authorized(self, headers) -> bool:
        if not self.config.token:
            return True
        value = headers.get("Authorization", "")
        scheme, _, given = value.partition(" ")
        if scheme.lower() not in ("api-key", "bearer"):
            return False
        return hmac.compare_digest(given.strip().encode(), self.config.token.encode())

    def _process_request(self, connection, request):
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if not self._authorized(request.headers):
            self.metrics.errors["unauthorized"] += 1
            return connection.respond(
                http.HTTPStatus.UNAUTHORIZED, "Missing or wrong token: send the header 'Authorization: Api-Key TOKEN'.\n"
            )
        if path == "/metrics":
            response = connection.respond(http.HTTPStatus.OK, json.dumps(self.metrics.snapshot()) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        return None  # carry on with the websocket handshake

    # ---- one connection = one slot ----
    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        conn = next(self._ids)
        self._slots[conn] = _Slot()
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1
        try:
            await ws.send(packb(self.metadata))
            async for message in ws:
                t_recv = time.perf_counter()
                try:
                    reply = await self._answer(conn, message, t_recv)
                except RequestError as error:
                    self.metrics.errors["bad_request"] += 1
                    await ws.send(f"error: {error}")
                    continue
                except LbmError as error:
                    self.metrics.errors["policy"] += 1
                    await ws.send(f"error: {error}")
                    continue
                except Exception as error:  # a bug: tell the client, log it, keep serving
                    log.exception("inference failed")
                    self.metrics.errors["internal"] += 1
                    await ws.send(f"error: internal server error ({type(error).__name__}: {error}); see the server log.")
                    continue
                await ws.send(packb(reply))
                if "actions" in reply:
                    self.metrics.requests += 1
                    self.metrics.latencies_ms.append(1000.0 * (time.perf_counter() - t_recv))
        except ConnectionClosed as closed:
            if closed.sent is not None and closed.sent.code == 1009:
                self.metrics.errors["too_big"] += 1
        finally:
            # The slot goes whatever happened; a batch still running for it writes nothing back.
            self._slots.pop(conn, None)
            self.metrics.connections_open -= 1

    async def _answer(self, conn: int, message: Any, t_recv: float) -> dict[str, Any]:
        if isinstance(message, str):
            raise RequestError("expected a binary msgpack frame, got a text frame. Encode requests with msgpack-numpy (lbm.serve.wire.packb).")
        try:
            request = unpackb(message)
        except WireError as error:
            raise RequestError(str(error)) from None
        if not isinstance(request, dict):
            raise RequestError(f"a request must be a msgpack map (dict), got {type(request).__name__}.")
        slot = self._slots[conn]
        if "__ctrl__" in request:  # openpi's episode markers
            if request["__ctrl__"] == "episode_start":
                self._slots[conn] = _Slot()
            return {"__ack__": request["__ctrl__"] if request["__ctrl__"] in ("episode_start", "episode_end") else "ignored"}
        reset = request.get("reset", False)
        if not isinstance(reset, (bool, np.bool_)):
            raise RequestError(f"'reset' must be a bool, got {type(reset).__name__}.")
        if reset:
            slot = self._slots[conn] = _Slot()
        if "state" not in request and set(request) <= {"reset"}:
            return {"reset": bool(reset)}
        obs, key = self._observation(request, slot)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(conn, obs, bool(reset), key, t_recv, future))
        return await future

    def _observation(self, request: dict, slot: _Slot) -> tuple[Observation, tuple]:
        unknown = [k for k in request if k not in REQUEST_KEYS]
        if unknown:
            k = str(unknown[0])
            hint = did_you_mean(k, REQUEST_KEYS, "key")
            raise RequestError(f"{hint} An observation is {{'state', 'prompt', optional 'images', 'embodiment', 'reset'}}.")
        if "state" not in request:
            raise RequestError("the request has no 'state' (float32 vector of the robot state).")
        name = request.get("embodiment")
        if name is None:
            if len(self.embodiments) != 1:
                raise RequestError(f"this policy serves several embodiments {sorted(self.embodiments)}; set 'embodiment'.")
            name = next(iter(self.embodiments))
        if not isinstance(name, str) or name not in self.embodiments:
            raise RequestError(str(did_you_mean(str(name), self.embodiments, "embodiment")))
        emb = self.embodiments[name]
        state = request["state"]
        if isinstance(state, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in state):
            state = np.asarray(state, dtype=np.float32)
        if not isinstance(state, np.ndarray) or state.dtype.kind != "f":
            what = f"{state.dtype} array" if isinstance(state, np.ndarray) else type(state).__name__
            raise RequestError(f"'state' must be a float32 numpy array (or a list of numbers), got {what}.")
        if state.shape != (emb.state_dim,):
            raise RequestError(f"'state' has shape {state.shape} but embodiment {name!r} needs ({emb.state_dim},).")
        if not np.all(np.isfinite(state)):
            bad = np.flatnonzero(~np.isfinite(state)).tolist()
            raise RequestError(f"'state' holds NaN or inf at indices {bad[:10]}; send finite values (check the robot's sensors).")
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("'prompt' (the instruction, a non-empty string) is missing or not a string.")
        images_in = request.get("images", {})
        if not isinstance(images_in, dict):
            raise RequestError(f"'images' must be a map camera -> uint8 (H, W, 3) array, got {type(images_in).__name__}.")
        images = {}
        for cam in self.info["cameras"]:
            img = images_in.get(cam)
            if img is None:
                raise RequestError(f"the policy looks at camera {cam!r} but 'images' has {sorted(map(str, images_in))}.")
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or min(img.shape) == 0:
                what = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise RequestError(f"image {cam!r} must be a uint8 (H, W, 3) array, got {what}.")
            images[cam] = img
        shapes = {cam: img.shape for cam, img in images.items()}
        if slot.history is not None and (slot.embodiment != name or slot.image_shapes != shapes):
            raise RequestError(
                f"this connection's history was built from embodiment {slot.embodiment!r} with images {slot.image_shapes}, "
                f"but this request has {name!r} with {shapes}; send 'reset': true when the robot or cameras change."
            )
        slot.embodiment, slot.image_shapes = name, shapes
        obs = Observation(state=state.astype(np.float32), images=images, instruction=prompt, embodiment=name)
        return obs, (emb.action_dim, tuple(sorted(shapes.items())))

    # ---- batching ----
    async def _batcher(self, executor) -> None:
        loop = asyncio.get_running_loop()
        wait_s = self.config.max_wait_ms / 1000.0
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + wait_s
            while len(batch) < self.config.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                # Wait only while other connected clients may still send: a lone client never waits.
                if len(batch) >= len(self._slots) or loop.time() >= deadline:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), deadline - loop.time()))
                except (asyncio.TimeoutError, TimeoutError):
                    break
            groups: dict[tuple, list[_Pending]] = {}
            for p in batch:
                groups.setdefault(p.key, []).append(p)
            for group in groups.values():
                await self._run_group(loop, executor, group)

    async def _run_group(self, loop, executor, group: list[_Pending]) -> None:
        t0 = time.perf_counter()
        for p in group:
            p.t_batch = t0
        histories = [None if p.reset or p.conn not in self._slots else self._slots[p.conn].history for p in group]
        try:
            actions, new_histories = await loop.run_in_executor(executor, self._infer, [p.obs for p in group], histories)
        except Exception as error:
            if len(group) > 1:  # one bad observation must not fail the others: retry one by one
                for p in group:
                    await self._run_group(loop, executor, [p])
                return
            if not group[0].future.done():
                group[0].future.set_exception(error)
            return
        infer_ms = 1000.0 * (time.perf_counter() - t0)
        self.metrics.batches += 1
        self.metrics.batch_sizes[len(group)] += 1
        self.metrics.infer_ms.append(infer_ms)
        now = time.perf_counter()
        for i, p in enumerate(group):
            if p.conn in self._slots:  # closed connections get nothing written back: no leak
                self._slots[p.conn].history = new_histories[i]
            if not p.future.done():
                p.future.set_result(
                    {
                        "actions": np.ascontiguousarray(actions[i], dtype=np.float32),
                        "embodiment": p.obs.embodiment,
                        "server_timing": {
                            "infer_ms": infer_ms,
                            "queue_ms": 1000.0 * (p.t_batch - p.t_recv),
                            "total_ms": 1000.0 * (now - p.t_recv),
                            "batch_size": len(group),
                        },
                    }
                )

    def _infer(self, observations: list[Observation], histories: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """Runs on the inference thread: install the slots' histories, predict, hand them back."""
        import copy

        policy = self.policy
        if not self.stateful:
            policy.reset(None)
            return np.asarray(policy.predict_chunk(observations)), [None] * len(observations)
        # Copies, so that a failed call leaves every connection's history as it was.
        policy._slots = {i: copy.copy(h) for i, h in enumerate(histories) if h is not None}
        try:
            actions = np.asarray(policy.predict_chunk(observations))
            new = [policy._slots.get(i) for i in range(len(observations))]
        finally:
            policy._slots = {}
        if actions.ndim != 3 or actions.shape[0] != len(observations):
            raise RuntimeError(f"policy returned actions of shape {actions.shape}, expected ({len(observations)}, T, A)")
        return actions, new

