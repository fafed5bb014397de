"""A policy that lives behind ``lbm serve``: the Policy contract over websocket connections.

``lbm eval --policy mine=ws://127.0.0.1:8000`` loads this instead of a checkpoint, so served and
in-process evaluation run the same rollout code and differ only in transport. Slot ``i`` of the
contract is connection ``i`` (opened on first use), hence its own history on the server. A
``predict_chunk`` over B slots sends all B requests before reading any reply, so the server can
answer them with one batched call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from lbm.errors import LbmError
from lbm.schema import Embodiment, Observation
from lbm.serve.client import Client

TOKEN_ENV = "LBM_SERVE_TOKEN"


class RemotePolicy:
    """``predict_chunk`` / ``reset`` of a policy served at ``url`` (``ws://host:port``).

    ``token`` defaults to the environment variable ``LBM_SERVE_TOKEN``. The metadata of the first
    connection provides ``embodiments``, ``horizon`` and ``history``.
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0, connect_timeout_s: float = 2.0):
        self.url = url
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._clients: list[Client] = [Client(url, self.token, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)]
        self._needs_reset: list[bool] = [False]
        meta = self._clients[0].metadata
        if not isinstance(meta, dict) or "embodiments" not in meta:
            raise LbmError(f"{url} is not an lbm policy server (its metadata has no 'embodiments'); lbm eval can only drive `lbm serve`.")
        self.metadata = meta
        self.embodiments = {n: Embodiment.from_json(e) for n, e in meta["embodiments"].items()}
        self.horizon = int(meta.get("action_horizon") or 0)
        self.history = int(meta.get("policy", {}).get("history") or 1)

    def _client(self, slot: int) -> Client:
        while len(self._clients) <= slot:
            self._clients.append(Client(self.url, self.token, timeout_s=self.timeout_s, connect_timeout_s=self.connect_timeout_s))
            self._needs_reset.append(False)
        return self._clients[slot]

    def predict_chunk(self, observations: Sequence[Observation]) -> np.ndarray:
        """Actions ``(B, T, action_dim)`` float32 from the server, one connection per slot."""
        if len(observations) == 0:
            raise LbmError("predict_chunk needs at least one observation.")
        clients = [self._client(i) for i in range(len(observations))]
        for i, (client, obs) in enumerate(zip(clients, observations)):
            request = {"state": np.asarray(obs.state, dtype=np.float32), "prompt": obs.instruction}
            if obs.images:
                request["images"] = dict(obs.images)
            if obs.embodiment:
                request["embodiment"] = obs.embodiment
            if self._needs_reset[i]:
                request["reset"] = True
            client.send(request)
            self._needs_reset[i] = False
        # Read every reply even if one fails, so no connection is left with an unread answer.
        replies, first_error = [], None
        for client in clients:
            try:
                replies.append(client.receive())
            except LbmError as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error
        return np.stack([np.asarray(r["actions"], dtype=np.float32) for r in replies])

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Forget the history of ``slots`` (all when None); sent along with each slot's next request."""
        for s in range(len(self._clients)) if slots is None else slots:
            if 0 <= int(s) < len(self._needs_reset):
                self._needs_reset[int(s)] = True

    def close(self) -> None:
        """Close every connection."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._needs_reset.clear()
