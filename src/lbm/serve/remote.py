"""A policy that lives behind ``lbm serve``: the Policy contract over websocket connections.

``lbm eval --policy mine=ws://127.0.0.1:8000`` loads this (the ``ws`` / ``wss`` entry points of
``lbm.policy_sources``), so served and in-process evaluation run the same rollout code and differ
only in transport. Each episode leases one connection (its robot's state lives on the server); a
``predict_chunk`` over B slots sends all B requests before reading any reply, so the server can
answer them with one batched call. A connection whose episode state is dropped returns to the pool.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lbm.errors import LbmError
from lbm.policies.base import Chunk, ChunkRequest
from lbm.schema import Embodiment, Observation
from lbm_client import Client, ClientError

TOKEN_ENV = "LBM_SERVE_TOKEN"


class _Lease:
    """One connection held by one episode; returned to the pool when no state refers to it any more."""

    def __init__(self, index: int) -> None:
        self.index = index


@dataclass(frozen=True)
class RemoteState:
    """An episode's state: its leased connection, and whether the server still has to start the episode."""

    lease: _Lease
    seed: int | None
    started: bool = False


class RemotePolicy:
    """:class:`lbm.policies.base.Policy` of a policy served at ``url`` (``ws://host:port``).

    ``token`` defaults to the environment variable ``LBM_SERVE_TOKEN``. The metadata of the first
    connection provides the embodiments, horizon, history and description.
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0, connect_timeout_s: float = 2.0):
        self.url = url
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._clients: list[Client] = [self._connect()]
        self._free: list[int] = [0]
        meta = self._clients[0].metadata
        if not isinstance(meta, dict) or "embodiments" not in meta:
            raise LbmError(
                f"{url} is not an lbm policy server (its metadata has no 'embodiments'); lbm eval can only drive `lbm serve`."
            )
        self.metadata = meta
        self._embodiments = {n: Embodiment.from_json(e) for n, e in meta["embodiments"].items()}
        self._info = {**dict(meta.get("policy", {})), "instructions": list(meta.get("instructions", []))}

    def _connect(self) -> Client:
        try:
            return Client(self.url, self.token, timeout_s=self.timeout_s, connect_timeout_s=self.connect_timeout_s)
        except ClientError as error:
            raise LbmError(str(error)) from None

    @property
    def embodiments(self) -> Mapping[str, Embodiment]:
        """The served policy's embodiments."""
        return self._embodiments

    @property
    def horizon(self) -> int:
        return int(self.metadata.get("action_horizon") or 0)

    @property
    def history(self) -> int:
        return int(self._info.get("history") or 1)

    @property
    def execute_steps(self) -> int | None:
        return self._info.get("execute_steps")

    def describe(self) -> dict[str, Any]:
        """The server's description of its policy."""
        return dict(self._info)

    def reset(self, seed: int | None = None) -> RemoteState:
        """Lease a connection for a new episode (opened if none is free); the server starts it with the first request."""
        if not self._free:
            self._clients.append(self._connect())
            self._free.append(len(self._clients) - 1)
        lease = _Lease(self._free.pop())
        weakref.finalize(lease, self._free.append, lease.index)
        return RemoteState(lease, seed)

    def predict_chunk(
        self, observations: Sequence[Observation], states: Sequence[RemoteState], request: ChunkRequest = ChunkRequest()
    ) -> Chunk:
        """Actions ``(B, T, action_dim)`` float32 from the server, one leased connection per slot."""
        if len(observations) == 0:
            raise LbmError("predict_chunk needs at least one observation.")
        if len(states) != len(observations) or not all(isinstance(s, RemoteState) for s in states):
            raise LbmError("predict_chunk needs one state from this policy's reset() per observation.")
        clients = [self._clients[s.lease.index] for s in states]
        try:
            for client, obs, state in zip(clients, observations, states):
                message: dict[str, Any] = {"state": np.asarray(obs.state, dtype=np.float32), "prompt": obs.instruction}
                if obs.images:
                    message["images"] = dict(obs.images)
                if obs.embodiment:
                    message["embodiment"] = obs.embodiment
                if not state.started:
                    message["reset"] = True
                    if state.seed is not None:
                        message["seed"] = int(state.seed)
                client.send(message)
            # Read every reply even if one fails, so no connection is left with an unread answer.
            replies, first_error = [], None
            for client in clients:
                try:
                    replies.append(client.receive())
                except ClientError as error:
                    first_error = first_error or error
        except ClientError as error:
            raise LbmError(str(error)) from None
        if first_error is not None:
            raise LbmError(str(first_error))
        actions = np.stack([np.asarray(r["actions"], dtype=np.float32) for r in replies])
        return Chunk(actions, tuple(RemoteState(s.lease, s.seed, True) for s in states))

    def close(self) -> None:
        """Close every connection."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._free.clear()


def load_remote(spec: Any, seed: int) -> RemotePolicy:
    """The ``ws`` / ``wss`` loader of ``lbm.policy_sources``: a :class:`RemotePolicy` of ``spec.source``."""
    del seed  # the served policy's noise is seeded per episode by the runner's trial seeds
    return RemotePolicy(spec.source)
