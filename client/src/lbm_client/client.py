"""The thin client: numpy + websockets + msgpack, no torch, safe to run on a robot's computer.

    from lbm_client import Client
    with Client("ws://127.0.0.1:8000") as client:
        print(client.metadata["action_horizon"], client.metadata["embodiments"])
        reply = client.infer({"state": state_f32, "prompt": "open the drawer"})
        actions = reply["actions"]          # float32 (T, action_dim), embodiment units

One ``Client`` is one connection and therefore one policy slot on the server: its observation
history belongs to this client alone. Call :meth:`Client.reset` at the start of every episode.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from lbm_client.wire import packb, unpackb


class ClientError(Exception):
    """A connection or protocol problem, with a message that says what to do (no torch-side types here)."""


class ServerError(ClientError):
    """The server refused a request (bad observation, unknown embodiment, ...); the text says why."""


def _http_url(url: str, path: str) -> str:
    base = url.rstrip("/")
    if base.startswith("ws://"):
        base = "http://" + base[5:]
    elif base.startswith("wss://"):
        base = "https://" + base[6:]
    return base + path


def _check_url(url: str) -> str:
    if not url.startswith(("ws://", "wss://")):
        raise ClientError(
            f"Server address {url!r} must start with ws:// (or wss:// behind a TLS proxy), e.g. ws://127.0.0.1:8000."
        )
    return url


class Client:
    """One websocket connection to ``lbm serve`` (or any openpi-protocol policy server).

    ``token`` is sent as ``Authorization: Api-Key TOKEN`` (openpi's header). ``timeout_s`` bounds
    each reply; ``connect_timeout_s`` bounds the handshake (retrying while the server is starting).
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0, connect_timeout_s: float = 10.0):
        import inspect

        from websockets.sync.client import connect

        # websockets >= 16 warns unless a directly used connection is declared as such.
        params = inspect.signature(connect).parameters
        direct: dict[str, Any] = {"legacy": True} if "legacy" in params else {}
        if "proxy" in params:  # robot-to-server traffic must not detour through an HTTP proxy from the env
            direct["proxy"] = None
        self.url = _check_url(url)
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Api-Key {token}"} if token else None
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                self._ws = connect(
                    url,
                    additional_headers=headers,
                    compression=None,
                    max_size=None,
                    open_timeout=max(0.1, deadline - time.monotonic()),
                    **direct,
                )
                break
            except (ConnectionRefusedError, TimeoutError, OSError) as error:
                if time.monotonic() >= deadline:
                    raise ClientError(
                        f"Cannot connect to {url} ({error}). Is `lbm serve` running there, and is the address right?"
                    ) from None
                time.sleep(0.1)
            except Exception as error:  # noqa: BLE001 - e.g. InvalidStatus 401 (wrong token): every kind becomes a clear error
                status = getattr(getattr(error, "response", None), "status_code", None)
                if status == 401:
                    raise ClientError(
                        f"{url} refused the connection: missing or wrong token. Pass the server's token (Client(url, "
                        "token=...), or LBM_SERVE_TOKEN for lbm eval)."
                    ) from None
                raise ClientError(f"Cannot open a websocket to {url}: {type(error).__name__}: {error}") from None
        self.metadata: dict[str, Any] = self._recv()
        """What the server sent on connect: policy, embodiments, action_horizon, limits."""
        self._max_bytes = self.metadata.get("max_message_bytes") if isinstance(self.metadata, dict) else None

    # ---- the request/reply cycle, split so a caller can have several connections in flight ----
    def send(self, obs: dict[str, Any]) -> None:
        """Send one observation without waiting for the reply (pair with :meth:`receive`)."""
        data = packb(obs)
        if self._max_bytes and len(data) > self._max_bytes:
            raise ClientError(
                f"This request is {len(data) / 2**20:.2f} MiB but the server accepts at most "
                f"{self._max_bytes / 2**20:.2f} MiB (lbm serve --max-message-mb). Send smaller images or raise the limit."
            )
        self._ws.send(data)

    def receive(self) -> dict[str, Any]:
        """The reply to the last :meth:`send`; a refused request raises :class:`ServerError`."""
        return self._recv()

    def _recv(self) -> Any:
        from websockets.exceptions import ConnectionClosed

        try:
            message = self._ws.recv(timeout=self.timeout_s)
        except TimeoutError:
            raise ClientError(
                f"{self.url} sent no reply within {self.timeout_s:g} s. The server may be overloaded; raise timeout_s "
                "or check its log."
            ) from None
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            if code == 1009:
                raise ClientError(
                    f"{self.url} closed the connection: the request exceeded its size limit (lbm serve --max-message-mb)."
                ) from None
            raise ClientError(f"{self.url} closed the connection ({closed}). Reconnect with a new Client.") from None
        if isinstance(message, str):  # the protocol's error reply
            raise ServerError(f"{self.url} refused the request: {message.removeprefix('error: ')}")
        return unpackb(message)

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Send an observation dict, return the reply (``actions`` float32 ``(T, action_dim)``, ``server_timing``)."""
        self.send(obs)
        return self.receive()

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode on this connection: the server forgets its history (call at episode start).

        ``seed`` fixes the episode's sampling noise on the server (a rerun then gets the same actions).
        """
        request: dict[str, Any] = {"reset": True}
        if seed is not None:
            request["seed"] = int(seed)
        reply = self.infer(request)
        if reply != {"reset": True}:
            raise ClientError(f"{self.url} did not acknowledge the reset (got {reply!r}); is it an lbm server?")

    def close(self) -> None:
        """Close the connection (frees this client's slot on the server)."""
        self._ws.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def health(url: str, timeout_s: float = 5.0) -> bool:
    """Whether ``GET /healthz`` of the server at ``url`` (ws:// or http://) answers 200."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(_http_url(url, "/healthz"), timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def fetch_metrics(url: str, token: str | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
    """The server's ``GET /metrics`` JSON (requests, errors, batch sizes, latency percentiles)."""
    request = urllib.request.Request(_http_url(url, "/metrics"), headers={"Authorization": f"Api-Key {token}"} if token else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback must not go through a proxy
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise ClientError(
            f"{url} answered /metrics with HTTP {error.code}: {error.read().decode(errors='replace').strip()}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        raise ClientError(f"Cannot reach {url}/metrics ({error}). Is the server running?") from None
