"""The policy server: the openpi websocket protocol, batched across clients, safe to expose.

Protocol (openpi-compatible, see ``lbm.serve.wire`` for the array encoding):

1. The client opens a websocket (``ws://HOST:PORT``; header ``Authorization: Api-Key TOKEN`` when
   the server has a token). The server sends its metadata as one msgpack frame.
2. Each request is one binary msgpack frame holding an observation dict::

       {"state": float32 (state_dim,), "prompt": str,
        "images": {camera: uint8 (H, W, 3)},      # only when the policy looks at cameras
        "embodiment": str,                         # optional when the policy knows one embodiment
        "reset": bool,                             # optional: start a new episode (forget the history) first
        "seed": int}                               # optional, with reset: seed of the episode's sampling noise

   The reply is one binary frame ``{"actions": float32 (T, action_dim), "embodiment": str,
   "server_timing": {"infer_ms", "queue_ms", "total_ms", "batch_size"}}`` with actions in the
   embodiment's units. A bad request gets one *text* frame ``"error: ..."`` (what openpi's client
   raises as an error) and the connection stays open. ``{"reset": True}`` alone only resets and is
   answered ``{"reset": True}``; openpi's ``{"__ctrl__": "episode_start"}`` also resets.
3. Every connection is one robot with its own policy state (observation history, noise seed:
   :mod:`lbm.policies.base`), kept beside the connection and freed when it closes.

Failing safe. Every outgoing chunk is checked: an action that is not finite or leaves the
embodiment's bounds is never sent; the client gets an error and its episode state is reset. Inputs
are validated after their conversion to float32 (a float64 beyond float32's range becomes inf and
is refused). Limits bound what one client can cost the others: connections, idle time, prompt
length, new instructions per minute (each needs the sentence encoder), image size, message size;
memory taken by large frames is given back to the operating system.

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
import ctypes
import ctypes.util
import gc
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

import lbm
from lbm.errors import LbmError, did_you_mean
from lbm.policies.base import Policy, PolicyState, PrivilegedPolicy
from lbm.schema import Embodiment, Observation
from lbm_client.wire import WireError, packb, unpackb

log = logging.getLogger("lbm.serve")

REQUEST_KEYS = ("state", "images", "prompt", "embodiment", "reset", "seed")
MIN_TOKEN_LENGTH = 16
"""Shortest accepted token: 16 characters of a random token are ~95 bits; shorter ones can be guessed."""
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
    max_message_mb: float = 8.0
    """Largest accepted request in MiB; bigger ones close the connection with code 1009."""
    max_connections: int = 64
    """Most connections open at once; more are answered 503 at the handshake."""
    idle_timeout_s: float = 300.0
    """A connection that sends nothing for this long is closed (0 = never)."""
    max_prompt_chars: int = 1000
    """Longest accepted instruction."""
    max_new_prompts_per_minute: int = 30
    """Instructions the policy has not seen before cost a sentence-encoder pass each: per connection, at most this
    many new ones per minute (the rest are refused until the minute passes)."""
    max_image_side: int = 512
    """Largest accepted image height or width in pixels (policies resize to their own image size)."""
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
    if config.token:
        if config.token != config.token.strip() or any(c.isspace() for c in config.token):
            raise LbmError(
                "The server token contains whitespace; clients could never send it back identically. Use a "
                "token without spaces, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`."
            )
        if len(config.token) < MIN_TOKEN_LENGTH:
            raise LbmError(
                f"The server token has {len(config.token)} characters; use at least {MIN_TOKEN_LENGTH} random ones "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)."
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
    for name in ("max_connections", "max_prompt_chars", "max_new_prompts_per_minute", "max_image_side"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be >= 1 (got {getattr(config, name)})")
    if config.idle_timeout_s < 0:
        problems.append(f"idle_timeout_s must be >= 0 (got {config.idle_timeout_s})")
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
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
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
    key: tuple
    t_recv: float
    future: asyncio.Future
    t_batch: float = 0.0


@dataclass
class _Slot:
    """One connection: its robot's policy state and what its history was built from."""

    state: PolicyState
    embodiment: str = ""
    image_shapes: dict[str, tuple] = field(default_factory=dict)
    new_prompts: deque[float] = field(default_factory=deque)
    """Times of the instructions this connection introduced in the last minute."""


class PolicyServer:
    """Serve one policy (:class:`lbm.policies.base.Policy`) over the openpi websocket protocol.

    Each connection owns its robot's policy state; a batch of requests from several connections is
    one ``predict_chunk`` call with each connection's state, and each gets its next state back.
    """

    def __init__(self, policy: Policy, config: ServerConfig = ServerConfig(), extra_metadata: dict | None = None):
        validate_config(config)
        if isinstance(policy, PrivilegedPolicy) or not isinstance(policy, Policy):
            raise LbmError(
                f"{type(policy).__name__} cannot be served: the server needs a policy that acts from observations "
                "alone (lbm.policies.base.Policy), e.g. one loaded with lbm.train.load_policy."
            )
        if not policy.embodiments:
            raise LbmError("The policy to serve declares no embodiments; the server needs them to validate requests.")
        self.policy = policy
        self.config = config
        self.embodiments: dict[str, Embodiment] = dict(policy.embodiments)
        self.info = policy.describe()
        self.known_prompts = set(self.info.get("instructions", ()))
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
        self._large_frames = 0

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._slots)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until a server started with :meth:`start` stops; False if ``timeout_s`` passed first."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # ---- description ----
    def _metadata(self, extra: dict) -> dict[str, Any]:

        single = next(iter(self.embodiments.values())) if len(self.embodiments) == 1 else None
        return {
            "server": "lbm",
            "lbm_version": lbm.__version__,
            "protocol": PROTOCOL,
            "policy": {k: v for k, v in self.info.items() if k != "instructions"},
            "action_horizon": self.policy.horizon,
            "action_dim": single.action_dim if single else None,
            "state_dim": single.state_dim if single else None,
            "embodiments": {n: e.to_json() for n, e in self.embodiments.items()},
            "instructions": sorted(self.known_prompts)[:500],
            "request_keys": list(REQUEST_KEYS),
            "max_message_bytes": self.config.max_message_bytes,
            "max_batch": self.config.max_batch,
            "max_prompt_chars": self.config.max_prompt_chars,
            "max_image_side": self.config.max_image_side,
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
        tasks = [asyncio.create_task(self._batcher(executor)), asyncio.create_task(self._give_back_memory())]
        if self.config.metrics_every_s > 0:
            tasks.append(asyncio.create_task(self._log_metrics()))
        self._ready.set()
        log.info(
            "serving %s at %s (max_batch=%d, max_wait_ms=%g)",
            self.info["family"],
            self.url,
            self.config.max_batch,
            self.config.max_wait_ms,
        )
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

    async def _give_back_memory(self) -> None:
        """After large frames, return the freed heap to the operating system (glibc keeps it otherwise)."""
        trim = _malloc_trim()
        while True:
            await asyncio.sleep(1.0)
            if self._large_frames:
                self._large_frames = 0
                gc.collect()
                if trim is not None:
                    trim(0)

    # ---- HTTP endpoints and the token ----
    def _authorized(self, headers) -> bool:
        if not self.config.token:
            return True
        scheme, _, given = headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() not in ("api-key", "bearer"):
            return False
        return hmac.compare_digest(given.strip().encode(), self.config.token.encode())

    def _process_request(self, connection, request):
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if len(request.headers.get_all("Authorization")) > 1:
            self.metrics.errors["bad_handshake"] += 1
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "Send exactly one Authorization header.\n")
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
        if len(self._slots) >= self.config.max_connections:
            self.metrics.errors["too_many_connections"] += 1
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"The server holds its maximum of {self.config.max_connections} connections; retry later.\n",
            )
        return None  # carry on with the websocket handshake

    # ---- one connection = one slot ----
    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        conn = next(self._ids)
        self._slots[conn] = _Slot(self.policy.reset())
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1
        idle = self.config.idle_timeout_s or None
        try:
            await ws.send(packb(self.metadata))
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), idle)
                except TimeoutError:
                    self.metrics.errors["idle"] += 1
                    await ws.close(1000, f"idle for {self.config.idle_timeout_s:g} s")
                    break
                t_recv = time.perf_counter()
                if len(message) > 2**20:
                    self._large_frames += 1
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
                except Exception as error:  # noqa: BLE001 - a bug: tell the client, log it, keep serving
                    log.exception("inference failed")
                    self.metrics.errors["internal"] += 1
                    await ws.send(f"error: internal server error ({type(error).__name__}: {error}); see the server log.")
                    continue
                finally:
                    del message
                await ws.send(packb(reply))
                if "actions" in reply:
                    self.metrics.requests += 1
                    self.metrics.latencies_ms.append(1000.0 * (time.perf_counter() - t_recv))
        except ConnectionClosed as closed:
            if closed.sent is not None and closed.sent.code == 1009:
                self.metrics.errors["too_big"] += 1
                self._large_frames += 1
        finally:
            # The slot goes whatever happened; a batch still running for it writes nothing back.
            self._slots.pop(conn, None)
            self.metrics.connections_open -= 1

    async def _answer(self, conn: int, message: Any, t_recv: float) -> dict[str, Any]:
        if isinstance(message, str):
            raise RequestError(
                "expected a binary msgpack frame, got a text frame. Encode requests with msgpack-numpy (lbm_client.packb)."
            )
        try:
            request = unpackb(message)
        except WireError as error:
            raise RequestError(str(error)) from None
        if not isinstance(request, dict):
            raise RequestError(f"a request must be a msgpack map (dict), got {type(request).__name__}.")
        if not request:
            raise RequestError("the request is empty; send an observation {'state', 'prompt', ...} or {'reset': true}.")
        slot = self._slots[conn]
        if "__ctrl__" in request:  # openpi's episode markers
            if request["__ctrl__"] == "episode_start":
                slot = self._slots[conn] = _Slot(self.policy.reset(), new_prompts=slot.new_prompts)
            return {"__ack__": request["__ctrl__"] if request["__ctrl__"] in ("episode_start", "episode_end") else "ignored"}
        reset = request.get("reset", False)
        if not isinstance(reset, (bool, np.bool_)):
            raise RequestError(f"'reset' must be a bool, got {type(reset).__name__}.")
        seed = request.get("seed")
        if seed is not None:
            if not reset:
                raise RequestError("'seed' seeds a new episode: send it together with 'reset': true.")
            if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
                raise RequestError(f"'seed' must be a non-negative integer, got {seed!r}.")
        if reset:
            slot = self._slots[conn] = _Slot(self.policy.reset(None if seed is None else int(seed)), new_prompts=slot.new_prompts)
        if "state" not in request and set(request) <= {"reset", "seed"}:
            return {"reset": True}
        obs, key = self._observation(request, slot)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(conn, obs, key, t_recv, future))
        return await future

    def _observation(self, request: dict, slot: _Slot) -> tuple[Observation, tuple]:
        unknown = [k for k in request if k not in REQUEST_KEYS]
        if unknown:
            hint = did_you_mean(str(unknown[0]), REQUEST_KEYS, "key")
            raise RequestError(
                f"{hint} An observation is {{'state', 'prompt', optional 'images', 'embodiment', 'reset', 'seed'}}."
            )
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
            state = np.asarray(state, dtype=np.float64)
        if not isinstance(state, np.ndarray) or state.dtype.kind != "f":
            what = f"{state.dtype} array" if isinstance(state, np.ndarray) else type(state).__name__
            raise RequestError(f"'state' must be a float32 numpy array (or a list of numbers), got {what}.")
        if state.shape != (emb.state_dim,):
            raise RequestError(f"'state' has shape {state.shape} but embodiment {name!r} needs ({emb.state_dim},).")
        with np.errstate(over="ignore", invalid="ignore"):
            state32 = state.astype(np.float32)  # validated after the cast: 1e39 becomes inf here
        if not np.all(np.isfinite(state32)):
            bad = np.flatnonzero(~np.isfinite(state32)).tolist()
            raise RequestError(
                f"'state' holds values that are NaN, infinite or beyond float32's range at indices {bad[:10]}; "
                "send finite float32 values (check the robot's sensors)."
            )
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("'prompt' (the instruction, a non-empty string) is missing or not a string.")
        if len(prompt) > self.config.max_prompt_chars:
            raise RequestError(
                f"'prompt' has {len(prompt)} characters; this server accepts at most "
                f"{self.config.max_prompt_chars} (lbm serve --max-prompt-chars)."
            )
        if prompt not in self.known_prompts:
            now = time.monotonic()
            while slot.new_prompts and now - slot.new_prompts[0] > 60.0:
                slot.new_prompts.popleft()
            if len(slot.new_prompts) >= self.config.max_new_prompts_per_minute:
                raise RequestError(
                    f"this connection introduced {len(slot.new_prompts)} new instructions within a minute, the "
                    "most this server embeds per connection (lbm serve --max-new-prompts-per-minute); reuse "
                    "instructions or wait."
                )
            slot.new_prompts.append(now)
        images_in = request.get("images", {})
        if not isinstance(images_in, dict):
            raise RequestError(f"'images' must be a map camera -> uint8 (H, W, 3) array, got {type(images_in).__name__}.")
        images = {}
        for cam in self.info.get("cameras", ()):
            img = images_in.get(cam)
            if img is None:
                raise RequestError(f"the policy looks at camera {cam!r} but 'images' has {sorted(map(str, images_in))}.")
            if (
                not isinstance(img, np.ndarray)
                or img.dtype != np.uint8
                or img.ndim != 3
                or img.shape[2] != 3
                or min(img.shape) == 0
            ):
                what = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise RequestError(f"image {cam!r} must be a uint8 (H, W, 3) array, got {what}.")
            if max(img.shape[:2]) > self.config.max_image_side:
                raise RequestError(
                    f"image {cam!r} is {img.shape[1]}x{img.shape[0]} pixels; this server accepts at most "
                    f"{self.config.max_image_side} per side (lbm serve --max-image-side). Downscale it first."
                )
            images[cam] = img
        shapes = {cam: img.shape for cam, img in images.items()}
        if slot.embodiment and (slot.embodiment != name or slot.image_shapes != shapes):
            raise RequestError(
                f"this connection's history was built from embodiment {slot.embodiment!r} with images {slot.image_shapes}, "
                f"but this request has {name!r} with {shapes}; send 'reset': true when the robot or cameras change."
            )
        slot.embodiment, slot.image_shapes = name, shapes
        obs = Observation(state=state32, images=images, instruction=prompt, embodiment=name)
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
                except TimeoutError:
                    break
            groups: dict[tuple, list[_Pending]] = {}
            for p in batch:
                groups.setdefault(p.key, []).append(p)
            for group in groups.values():
                await self._run_group(loop, executor, group)

    async def _run_group(self, loop, executor, group: list[_Pending]) -> None:
        t0 = time.perf_counter()
        live = [p for p in group if p.conn in self._slots]
        for p in live:
            p.t_batch = t0
        if not live:
            return
        states = [self._slots[p.conn].state for p in live]
        try:
            actions, new_states = await loop.run_in_executor(executor, self._infer, [p.obs for p in live], states)
        except Exception as error:  # noqa: BLE001 - reported to the clients below
            if len(live) > 1:  # one bad observation must not fail the others: retry one by one
                for p in live:
                    await self._run_group(loop, executor, [p])
                return
            if not live[0].future.done():
                live[0].future.set_exception(error)
            return
        infer_ms = 1000.0 * (time.perf_counter() - t0)
        self.metrics.batches += 1
        self.metrics.batch_sizes[len(live)] += 1
        self.metrics.infer_ms.append(infer_ms)
        now = time.perf_counter()
        for i, p in enumerate(live):
            problem = self._unsafe(actions[i], p.obs.embodiment)
            slot = self._slots.get(p.conn)
            if problem:  # never sent; the episode starts over so no bad history feeds the next chunk
                self.metrics.errors["unsafe_actions"] += 1
                if slot is not None:
                    slot.state = self.policy.reset()
                    slot.embodiment, slot.image_shapes = "", {}
                if not p.future.done():
                    p.future.set_exception(
                        LbmError(
                            f"the policy produced an unsafe chunk ({problem}); it was not sent and "
                            "this connection's episode state was reset. Stop the robot and check "
                            "the observation."
                        )
                    )
                continue
            if slot is not None:  # closed connections get nothing written back: no leak
                slot.state = new_states[i]
                self.known_prompts.add(p.obs.instruction)
            if not p.future.done():
                p.future.set_result(
                    {
                        "actions": np.ascontiguousarray(actions[i], dtype=np.float32),
                        "embodiment": p.obs.embodiment,
                        "server_timing": {
                            "infer_ms": infer_ms,
                            "queue_ms": 1000.0 * (p.t_batch - p.t_recv),
                            "total_ms": 1000.0 * (now - p.t_recv),
                            "batch_size": len(live),
                        },
                    }
                )

    def _unsafe(self, actions: np.ndarray, embodiment: str) -> str:
        """Why an outgoing chunk must not be sent ("" when it may): non-finite values or values out of bounds."""
        emb = self.embodiments[embodiment]
        if actions.ndim != 2 or actions.shape[1] != emb.action_dim:
            return f"shape {actions.shape}, expected (T, {emb.action_dim})"
        if not np.all(np.isfinite(actions)):
            return "non-finite values"
        lo, hi = np.asarray(emb.action_low, np.float32), np.asarray(emb.action_high, np.float32)
        if np.any(actions < lo) or np.any(actions > hi):
            return "values outside the embodiment's action bounds"
        return ""

    def _infer(self, observations: list[Observation], states: list[PolicyState]) -> tuple[np.ndarray, tuple[PolicyState, ...]]:
        """Runs on the inference thread: one batched call with every connection's own state."""
        chunk = self.policy.predict_chunk(observations, states)
        actions = np.asarray(chunk.actions)
        if actions.ndim != 3 or actions.shape[0] != len(observations):
            raise RuntimeError(f"policy returned actions of shape {actions.shape}, expected ({len(observations)}, T, A)")
        return actions, chunk.states


def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere): gives freed heap pages back to the operating system."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
