"""lbm_client: drive an lbm policy server from a robot (numpy + msgpack + websockets, no torch).

from lbm_client import Client, ChunkBroker
with Client("ws://127.0.0.1:8000") as client:
    broker = ChunkBroker(client, execute_steps=8, prefetch_at=4)
    action = broker.act({"state": state, "prompt": "open the drawer"})
"""

from lbm_client.broker import ChunkBroker, ChunkSource
from lbm_client.client import Client, ClientError, ServerError, fetch_metrics, health
from lbm_client.wire import WireError, packb, unpackb

__version__ = "0.1.0"

__all__ = [
    "ChunkBroker",
    "ChunkSource",
    "Client",
    "ClientError",
    "ServerError",
    "WireError",
    "fetch_metrics",
    "health",
    "packb",
    "unpackb",
]
