"""lbm.serve: serve a checkpoint over the openpi websocket protocol, and drive it from anywhere.

    lbm serve runs/mt10-flow-small/checkpoint --port 8000          # the server (lbm.serve.commands)

    from lbm.serve import Client, ChunkBroker                      # on the robot: no torch needed
    with Client("ws://127.0.0.1:8000") as client:
        broker = ChunkBroker(client, execute_steps=8, prefetch_at=4)
        action = broker.act({"state": state, "prompt": "open the drawer"})

Names are imported lazily so that ``import lbm.serve`` on a robot never pulls in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Client": "lbm.serve.client",
    "ServerError": "lbm.serve.client",
    "health": "lbm.serve.client",
    "fetch_metrics": "lbm.serve.client",
    "ChunkBroker": "lbm.serve.broker",
    "RemotePolicy": "lbm.serve.remote",
    "PolicyServer": "lbm.serve.server",
    "ServerConfig": "lbm.serve.server",
    "packb": "lbm.serve.wire",
    "unpackb": "lbm.serve.wire",
    "WireError": "lbm.serve.wire",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lbm.serve' has no attribute {name!r}")
