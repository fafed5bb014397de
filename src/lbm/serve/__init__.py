"""lbm.serve: serve a checkpoint over the openpi websocket protocol, and drive it from anywhere.

    lbm serve runs/mt10-flow-small/checkpoint --port 8000          # the server (lbm.serve.commands)

    from lbm_client import Client, ChunkBroker                     # on the robot: the thin lbm-client package
    with Client("ws://127.0.0.1:8000") as client:
        broker = ChunkBroker(client, execute_steps=8, prefetch_at=4)
        action = broker.act({"state": state, "prompt": "open the drawer"})

The client side is the separate ``lbm-client`` distribution (numpy, msgpack and websockets only,
no torch), re-exported here for convenience.
"""

from lbm.serve.local import LocalSource
from lbm.serve.remote import RemotePolicy
from lbm.serve.server import PolicyServer, ServerConfig
from lbm_client import ChunkBroker, Client, ClientError, ServerError, WireError, fetch_metrics, health, packb, unpackb

__all__ = [
    "ChunkBroker",
    "Client",
    "ClientError",
    "LocalSource",
    "PolicyServer",
    "RemotePolicy",
    "ServerConfig",
    "ServerError",
    "WireError",
    "fetch_metrics",
    "health",
    "packb",
    "unpackb",
]
