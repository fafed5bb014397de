"""The ``lbm serve`` command."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import tyro

from lbm.errors import LbmError
from lbm.serve.server import PolicyServer, ServerConfig, validate_config
from lbm.train import load_policy
from lbm.train.checkpoint import read_checkpoint_config


@dataclass(frozen=True)
class ServeConfig:
    """Serve a checkpoint over the openpi websocket protocol until Ctrl-C.

    Clients (``lbm_client.Client``, openpi's ``WebsocketClientPolicy``, ``lbm eval --policy
    NAME=ws://HOST:PORT``) send ``{"state", "prompt", "images"?, "embodiment"?, "reset"?, "seed"?}``
    and get ``{"actions": float32 (T, action_dim), "server_timing": ...}``. Each connection is one
    robot with its own policy state; requests arriving together are batched. ``GET /healthz`` and
    ``GET /metrics`` (JSON latency percentiles) answer on the same port.
    """

    checkpoint: Annotated[Path, tyro.conf.Positional]
    """Checkpoint folder written by `lbm train` (with --lerobot: by `lerobot-train`)."""
    host: str = "127.0.0.1"
    """Address to bind. Loopback by default; any other address requires --token."""
    port: int = 8000
    """TCP port (0 picks a free one and prints it)."""
    token: str = ""
    """Shared secret (16+ characters, no spaces) clients send as 'Authorization: Api-Key TOKEN' (default: $LBM_SERVE_TOKEN)."""
    max_batch: int = 8
    """Most observations answered by one batched model call."""
    max_wait_ms: float = 2.0
    """Longest a request waits for other clients' requests to batch with."""
    max_message_mb: float = 8.0
    """Largest accepted request, in MiB."""
    max_connections: int = 64
    """Most connections open at once."""
    idle_timeout_s: float = 300.0
    """Close a connection that sends nothing for this long (0 = never)."""
    max_prompt_chars: int = 1000
    """Longest accepted instruction."""
    max_new_prompts_per_minute: int = 30
    """New instructions (each costs a sentence-encoder pass) one connection may introduce per minute."""
    max_image_side: int = 512
    """Largest accepted image side in pixels."""
    device: str = "cpu"
    """torch device for the model ('cpu', 'cuda')."""
    metrics_every_s: float = 60.0
    """Seconds between metrics lines in the log (0 = never)."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    lerobot: bool = False
    """CHECKPOINT is a LeRobot checkpoint: serve it in LeRobot's own environment (lbm_client.lerobot_server), one
    action per request, exactly as lerobot-eval steps it."""
    lerobot_python: str = ""
    """With --lerobot: the Python of an environment with LeRobot (default: $LBM_LEROBOT_PYTHON)."""
    embodiment: str = ""
    """With --lerobot: the lbm embodiment the policy acts for (default: the robot_type of its training dataset)."""
    env_state_from_state: bool = False
    """With --lerobot: fill observation.environment_state with the state (how LeRobot's ACT and Diffusion train on
    lbm's state-only datasets; see benchmarks/peers)."""

    def server_config(self) -> ServerConfig:
        """The :class:`ServerConfig` part of these settings (the token from $LBM_SERVE_TOKEN when not given)."""
        shared = {f.name for f in fields(ServerConfig)} & {f.name for f in fields(self)}
        values = {name: getattr(self, name) for name in shared}
        values["token"] = self.token or os.environ.get("LBM_SERVE_TOKEN", "")
        return ServerConfig(**values)


def _serve_lerobot(config: ServeConfig, token: str) -> int:
    from rich.console import Console

    from lbm.serve import lerobot

    info, body = lerobot.resolve(config.checkpoint, config.embodiment, config.env_state_from_state)
    python = lerobot.lerobot_python(config.lerobot_python)
    Console(stderr=True).print(
        f"[bold]lbm serve --lerobot[/bold] {info.path} (LeRobot {info.policy_type}, state {info.state_dim}, action "
        f"{info.action_dim}, cameras {list(info.cameras) or 'none'}) for {body.name}, in {python}"
    )
    return lerobot.run(lerobot.command(python, info, body, config.host, config.port, config.threads, config.device), token)


def serve(config: Annotated[ServeConfig, tyro.conf.arg(name="")]) -> int:
    """Serve a checkpoint over the openpi websocket protocol (see ServeConfig)."""
    from rich.console import Console
    from rich.table import Table

    try:
        import websockets  # noqa: F401 - checked before the model is loaded
    except ImportError:
        raise LbmError(
            "lbm serve needs the websocket server: pip install 'lbm[serve]' (or the lbm-client package, which "
            "brings websockets and msgpack)."
        ) from None
    server_config = config.server_config()
    validate_config(server_config)  # refuse an exposed bind before spending seconds loading the model
    if config.lerobot:
        return _serve_lerobot(config, server_config.token)
    if config.embodiment or config.lerobot_python or config.env_state_from_state:
        raise LbmError(
            "--embodiment, --lerobot-python and --env-state-from-state apply to LeRobot checkpoints only: add --lerobot."
        )
    import torch  # the model: only after the settings are known to be usable

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise LbmError(f"--device {config.device} was requested but CUDA is not available here. Use --device cpu.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per connection drowns the metrics lines
    ckpt = read_checkpoint_config(config.checkpoint)
    policy = load_policy(config.checkpoint, device=config.device, serving=True)
    server = PolicyServer(
        policy, server_config, extra_metadata={"checkpoint": Path(config.checkpoint).name, "step": ckpt.get("step")}
    )
    console = Console(stderr=True)
    server.start()
    console.print(
        f"[bold]lbm serve[/bold] {config.checkpoint} ({server.info['family']}, T={policy.horizon}, "
        f"embodiments {', '.join(server.embodiments)}) at [cyan]{server.url}[/cyan]"
        f"{' (token required)' if server_config.token else ''}; health: "
        f"{server.url.replace('ws', 'http', 1)}/healthz. Ctrl-C stops."
    )
    try:
        while not server.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    snap = server.metrics.snapshot()
    table = Table(title="lbm serve: summary")
    for col in ("requests", "errors", "batches", "mean batch", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="right")
    lat = snap["latency_ms"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    table.add_row(
        str(snap["requests"]),
        str(snap["errors"]),
        str(snap["batches"]),
        fmt(snap["mean_batch_size"]),
        fmt(lat["p50"]),
        fmt(lat["p95"]),
        fmt(lat["p99"]),
    )
    console.print(table)
    return 0
