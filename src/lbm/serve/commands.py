"""The ``lbm serve`` command."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import tyro

from lbm.errors import LbmError


def serve(
    checkpoint: Annotated[Path, tyro.conf.Positional],
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str = "",
    max_batch: int = 8,
    max_wait_ms: float = 2.0,
    max_message_mb: float = 16.0,
    device: str = "cpu",
    metrics_every_s: float = 60.0,
    threads: int = 0,
) -> int:
    """Serve a checkpoint over the openpi websocket protocol until Ctrl-C.

    Clients (``lbm.serve.Client``, openpi's ``WebsocketClientPolicy``, ``lbm eval --policy
    NAME=ws://HOST:PORT``) send ``{"state", "prompt", "images"?, "embodiment"?, "reset"?}`` and get
    ``{"actions": float32 (T, action_dim), "server_timing": ...}``. Each connection is one robot with
    its own observation history; requests arriving together are batched. ``GET /healthz`` and
    ``GET /metrics`` (JSON latency percentiles) answer on the same port.

    Args:
        checkpoint: Checkpoint folder written by `lbm train`.
        host: Address to bind. Loopback by default; any other address requires --token.
        port: TCP port (0 picks a free one and prints it).
        token: Shared secret clients must send as 'Authorization: Api-Key TOKEN' (default: $LBM_SERVE_TOKEN).
        max_batch: Most observations answered by one batched model call.
        max_wait_ms: Longest a request waits for other clients' requests to batch with.
        max_message_mb: Largest accepted request, in MiB.
        device: torch device for the model ('cpu', 'cuda').
        metrics_every_s: Seconds between metrics lines in the log (0 = never).
        threads: torch CPU threads (0 = torch's default).
    """
    from rich.console import Console
    from rich.table import Table

    from lbm.serve.server import PolicyServer, ServerConfig, validate_config

    token = token or os.environ.get("LBM_SERVE_TOKEN", "")
    config = ServerConfig(host=host, port=port, token=token, max_batch=max_batch, max_wait_ms=max_wait_ms,
                          max_message_mb=max_message_mb, metrics_every_s=metrics_every_s)
    validate_config(config)  # refuse an exposed bind before spending seconds loading the model
    import torch

    from lbm.train import load_policy
    from lbm.train.checkpoint import read_checkpoint_config

    if threads > 0:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LbmError(f"--device {device} was requested but CUDA is not available here. Use --device cpu.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per connection drowns the metrics lines
    ckpt = read_checkpoint_config(checkpoint)
    policy = load_policy(checkpoint, device=device)
    server = PolicyServer(policy, config, extra_metadata={"checkpoint": Path(checkpoint).name, "step": ckpt.get("step")})
    console = Console(stderr=True)
    server.start()
    console.print(f"[bold]lbm serve[/bold] {checkpoint} ({server.info['family']}, T={server.info['horizon']}, "
                  f"embodiments {', '.join(server.embodiments)}) at [cyan]{server.url}[/cyan]"
                  f"{' (token required)' if token else ''}; health: {server.url.replace('ws', 'http', 1)}/healthz. Ctrl-C stops.")
    try:
        while server._thread is not None and server._thread.is_alive():
            server._thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    snap = server.metrics.snapshot()
    table = Table(title="lbm serve: summary")
    for col in ("requests", "errors", "batches", "mean batch", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="right")
    lat = snap["latency_ms"]
    f = (lambda v: "-" if v is None else f"{v:.2f}")  # noqa: E731
    table.add_row(str(snap["requests"]), str(snap["errors"]), str(snap["batches"]), f(snap["mean_batch_size"]),
                  f(lat["p50"]), f(lat["p95"]), f(lat["p99"]))
    console.print(table)
    return 0
