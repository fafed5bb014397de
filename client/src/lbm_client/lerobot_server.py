"""Serve a LeRobot checkpoint over the openpi websocket protocol, so ``lbm eval`` can evaluate it.

Runs in LeRobot's own environment (``lerobot`` 0.4.x pins its own torch); it needs only this file's
package (numpy, msgpack, websockets) beside LeRobot. Usually started by ``lbm serve --lerobot CKPT``,
which checks the checkpoint against an lbm embodiment first; directly::

    python -m lbm_client.lerobot_server OUT/checkpoints/last/pretrained_model --embodiment-json EMB.json

The policy runs exactly as ``lerobot-eval`` runs it: every control step the observation goes
through the checkpoint's own pre-processor, ``policy.select_action`` (which keeps LeRobot's action
queue and observation history) and the post-processor. So the server answers one action per
request (``action_horizon`` 1, ``execute_steps`` 1) and LeRobot decides when to compute a new
chunk. Each connection is one robot with its own copy of the policy's episode state; the weights
are shared and one inference runs at a time. A request with ``reset`` starts a new episode
(``policy.reset()``) and its ``seed`` seeds that episode's sampling noise.

Checked before serving (:func:`check_checkpoint`, usable without torch): the state and action
sizes match the embodiment, every normalized feature has its statistics, every camera exists. A
checkpoint that also reads ``observation.environment_state`` (how LeRobot's ACT and Diffusion
train on state-only data) is refused unless ``--env-state-from-state`` says that feature was made
as a copy of the state. Actions are clipped to the embodiment's bounds, as the simulator would,
and the count of clipped actions is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lbm_client.wire import WireError, packb, unpackb

STATE, ENV_STATE, ACTION = "observation.state", "observation.environment_state", "action"
IMAGE_PREFIX = "observation.images."
STAT_KEYS = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}


class CheckpointError(ValueError):
    """The checkpoint cannot be served for this embodiment; the message says why and what to do."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`check_checkpoint` found: where the model is and what it reads."""

    path: Path
    policy_type: str
    state_dim: int
    action_dim: int
    cameras: tuple[str, ...]
    env_state: bool
    n_action_steps: int | None
    config: dict = field(repr=False)


def pretrained_dir(path: str | Path) -> Path:
    """The ``pretrained_model`` folder of ``path``: itself, or inside a ``lerobot-train`` output or checkpoint folder."""
    path = Path(path)
    for candidate in (path, path / "pretrained_model", path / "checkpoints" / "last" / "pretrained_model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointError(
        f"{path} is not a LeRobot checkpoint: no config.json in it, in pretrained_model/ or in "
        "checkpoints/last/pretrained_model/. Pass the folder lerobot-train wrote (or its pretrained_model)."
    )


def _shape(features: dict, key: str) -> tuple[int, ...]:
    return tuple(int(n) for n in features[key]["shape"])


def check_checkpoint(path: str | Path, embodiment: dict, env_state_from_state: bool = False) -> CheckpointInfo:
    """Check a LeRobot checkpoint against an lbm embodiment (its ``to_json`` dict); raise :class:`CheckpointError`."""
    folder = pretrained_dir(path)
    try:
        config = json.loads((folder / "config.json").read_text())
        inputs, outputs = dict(config["input_features"]), dict(config["output_features"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{folder / 'config.json'} is not a LeRobot policy config ({error}).") from None
    name, state_dim, action_dim = embodiment["name"], int(embodiment["state_dim"]), int(embodiment["action_dim"])
    if STATE not in inputs:
        raise CheckpointError(f"{folder} reads no {STATE!r}; lbm sends the robot state as {STATE} ({state_dim} values).")
    if _shape(inputs, STATE) != (state_dim,):
        raise CheckpointError(
            f"{folder} expects a state of {list(_shape(inputs, STATE))} values but embodiment {name!r} has {state_dim}. "
            "Serve it for the embodiment its dataset was recorded with (--embodiment)."
        )
    if ACTION not in outputs or _shape(outputs, ACTION) != (action_dim,):
        got = list(_shape(outputs, ACTION)) if ACTION in outputs else "no action"
        raise CheckpointError(f"{folder} predicts {got} actions but embodiment {name!r} takes {action_dim} values per action.")
    env_state = ENV_STATE in inputs
    if env_state and not env_state_from_state:
        raise CheckpointError(
            f"{folder} also reads {ENV_STATE!r}, which lbm's observations do not carry. If that feature was made as a "
            "copy of the state (benchmarks/peers prepares lbm datasets so), pass --env-state-from-state."
        )
    if env_state and _shape(inputs, ENV_STATE) != (state_dim,):
        raise CheckpointError(
            f"{folder}: {ENV_STATE} has shape {list(_shape(inputs, ENV_STATE))}, not the state's ({state_dim},)."
        )
    cameras = tuple(k.removeprefix(IMAGE_PREFIX) for k, v in inputs.items() if v.get("type") == "VISUAL")
    missing = [c for c in cameras if c not in embodiment.get("cameras", ())]
    if missing:
        raise CheckpointError(
            f"{folder} reads cameras {missing} that embodiment {name!r} lacks (it has {list(embodiment.get('cameras', ()))})."
        )
    _check_stats(folder, "policy_preprocessor.json", inputs)
    _check_stats(folder, "policy_postprocessor.json", outputs)
    return CheckpointInfo(
        folder, str(config.get("type")), state_dim, action_dim, cameras, env_state, config.get("n_action_steps"), config
    )


def _check_stats(folder: Path, pipeline_file: str, features: dict) -> None:
    """Every non-image feature the pipeline (un)normalizes has its statistics in the step's state file."""
    from safetensors.numpy import load_file

    try:
        steps = json.loads((folder / pipeline_file).read_text())["steps"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{folder} has no readable {pipeline_file} ({error}); it was not saved by LeRobot 0.4's lerobot-train."
        ) from None
    norm = [step for step in steps if step.get("registry_name") in ("normalizer_processor", "unnormalizer_processor")]
    stats: dict[str, Any] = {}
    for step in norm:
        if step.get("state_file"):
            stats.update(load_file(str(folder / step["state_file"])))
    norm_map = {k: v for step in norm for k, v in (step.get("config", {}).get("norm_map") or {}).items()}
    for key, feature in features.items():
        mode = norm_map.get(feature.get("type"), "IDENTITY")
        if feature.get("type") == "VISUAL" or mode == "IDENTITY":
            continue  # images: LeRobot's own choice (ImageNet statistics or identity) is inside the processor
        if not norm:
            raise CheckpointError(f"{folder}: {pipeline_file} has no normalization step, but {key} is normalized with {mode}.")
        for stat in STAT_KEYS.get(mode, ()):
            if f"{key}.{stat}" not in stats:
                raise CheckpointError(
                    f"{folder} normalizes {key} with {mode} but {pipeline_file}'s statistics have no {stat!r} for it. "
                    "Train with the dataset's statistics, or copy them into the checkpoint."
                )


class LeRobotAdapter:
    """One LeRobot policy and its processors; :meth:`act` is one control step of one robot."""

    def __init__(self, info: CheckpointInfo, embodiment: dict, device: str = "cpu"):
        import torch
        from lerobot.configs.policies import PreTrainedConfig  # pyright: ignore[reportMissingImports]
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors  # pyright: ignore[reportMissingImports]

        self.torch, self.info, self.embodiment = torch, info, embodiment
        config = PreTrainedConfig.from_pretrained(str(info.path))
        config.device = device
        self.policy = get_policy_class(config.type).from_pretrained(str(info.path), config=config).eval()
        self.pre, self.post = make_pre_post_processors(
            config, pretrained_path=str(info.path), preprocessor_overrides={"device_processor": {"device": device}}
        )
        self.low = np.asarray(embodiment["action_low"], np.float32)
        self.high = np.asarray(embodiment["action_high"], np.float32)
        self.lock = threading.Lock()
        self.clipped = 0
        self.parameters = sum(p.numel() for p in self.policy.parameters())

    def new_episode(self, seed: int | None) -> dict:
        """Per-robot episode state: a shallow copy of the policy (shared weights; ``reset`` gives it its own queues)."""
        policy = copy.copy(self.policy)
        policy.reset()
        generator = self.torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**63))
        return {"policy": policy, "rng": generator.get_state()}

    def act(self, episode: dict, request: dict) -> np.ndarray:
        """The next action ``(1, action_dim)`` for ``request`` (a validated lbm observation)."""
        torch = self.torch
        state = torch.from_numpy(request["state"]).unsqueeze(0)
        batch: dict[str, Any] = {STATE: state, "task": [request.get("prompt", "")]}
        if self.info.env_state:
            batch[ENV_STATE] = state.clone()
        for camera in self.info.cameras:
            image = request["images"][camera]
            batch[IMAGE_PREFIX + camera] = (
                torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
            )
        with self.lock, torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.set_rng_state(episode["rng"])
            action = self.post(episode["policy"].select_action(self.pre(batch)))
            episode["rng"] = torch.get_rng_state()
        action = np.asarray(action.detach().cpu().numpy(), np.float32).reshape(1, -1)
        if not np.isfinite(action).all():
            raise ValueError("the policy produced a non-finite action; the episode was reset")
        clipped = np.clip(action, self.low, self.high)
        self.clipped += int((clipped != action).any())
        return clipped


def _validate(request: Any, info: CheckpointInfo, max_side: int) -> dict:
    if not isinstance(request, dict):
        raise ValueError(f"a request must be a msgpack map (dict), got {type(request).__name__}.")
    state = request.get("state")
    if state is None:
        raise ValueError("the request has no 'state'.")
    state = np.array(state, dtype=np.float32).reshape(-1)  # a writable copy for torch.from_numpy
    if state.shape != (info.state_dim,) or not np.isfinite(state).all():
        raise ValueError(f"'state' must be {info.state_dim} finite float32 values, got shape {list(state.shape)}.")
    images = request.get("images") or {}
    for camera in info.cameras:
        image = images.get(camera) if isinstance(images, dict) else None
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"this policy needs images[{camera!r}] as uint8 (H, W, 3).")
        if max(image.shape[:2]) > max_side:
            raise ValueError(f"images[{camera!r}] is {image.shape[1]}x{image.shape[0]}; the limit is {max_side} px per side.")
    prompt = request.get("prompt", "")
    if not isinstance(prompt, str):
        raise ValueError("'prompt' must be a string.")
    return {**request, "state": state, "prompt": prompt}


def serve(adapter: LeRobotAdapter, host: str, port: int, token: str = "", max_image_side: int = 512) -> None:
    """Answer the openpi protocol until interrupted; prints ``listening on ws://HOST:PORT`` once ready."""
    import hmac

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.server import serve as ws_serve

    info, lerobot_version = adapter.info, _lerobot_version()
    metadata = {
        "server": "lbm_client.lerobot_server",
        "protocol": "openpi-websocket/msgpack-numpy",
        "policy": {
            "family": f"lerobot/{info.policy_type}",
            "lerobot_version": lerobot_version,
            "checkpoint": str(info.path),
            "parameters": adapter.parameters,
            "cameras": list(info.cameras),
            "history": 1,
            "execute_steps": 1,
            "lerobot_n_action_steps": info.n_action_steps,
        },
        "action_horizon": 1,
        "action_dim": info.action_dim,
        "state_dim": info.state_dim,
        "embodiments": {adapter.embodiment["name"]: adapter.embodiment},
        "instructions": [],
        "requires_token": bool(token),
    }
    counts = {"requests": 0, "errors": 0}

    def check_auth(connection, request):
        if request.path in ("/healthz", "/healthz/"):
            return connection.respond(200, "OK\n")
        if token and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Api-Key {token}"):
            return connection.respond(401, "missing or wrong token\n")
        return None

    def handle(ws) -> None:
        episode = adapter.new_episode(None)
        ws.send(packb(metadata))
        try:
            for message in ws:
                try:
                    if isinstance(message, str):
                        raise ValueError("expected a binary msgpack frame, got a text frame.")
                    request = unpackb(message)
                    if isinstance(request, dict) and "__ctrl__" in request:
                        if request["__ctrl__"] == "episode_start":
                            episode = adapter.new_episode(None)
                        ws.send(packb({"__ack__": request["__ctrl__"]}))
                        continue
                    if isinstance(request, dict) and request.get("reset"):
                        seed = request.get("seed")
                        episode = adapter.new_episode(None if seed is None else int(seed))
                        if set(request) <= {"reset", "seed"}:
                            ws.send(packb({"reset": True}))
                            continue
                    request = _validate(request, info, max_image_side)
                    t0 = time.perf_counter()
                    actions = adapter.act(episode, request)
                    ms = 1000.0 * (time.perf_counter() - t0)
                    counts["requests"] += 1
                    ws.send(
                        packb(
                            {
                                "actions": actions,
                                "embodiment": adapter.embodiment["name"],
                                "server_timing": {"infer_ms": ms, "queue_ms": 0.0, "total_ms": ms, "batch_size": 1},
                            }
                        )
                    )
                except (ValueError, WireError, KeyError, TypeError) as error:
                    counts["errors"] += 1
                    episode = adapter.new_episode(None)
                    ws.send(f"error: {error}")
        except ConnectionClosed:
            pass

    with ws_serve(handle, host, port, process_request=check_auth, compression=None, max_size=2**26) as server:
        bound = server.socket.getsockname()[1]
        print(
            f"listening on ws://{host}:{bound} (lerobot {lerobot_version}, {info.policy_type}, "
            f"{adapter.parameters / 1e6:.1f}M parameters)",
            flush=True,
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    print(
        json.dumps({"requests": counts["requests"], "errors": counts["errors"], "clipped_actions": adapter.clipped}), flush=True
    )


def _lerobot_version() -> str:
    from importlib.metadata import version

    return version("lerobot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lbm_client.lerobot_server", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("checkpoint", help="lerobot-train output folder, a checkpoint folder or its pretrained_model")
    parser.add_argument("--embodiment-json", required=True, help="the lbm embodiment (Embodiment.to_json) as JSON text or a file")
    parser.add_argument("--env-state-from-state", action="store_true", help="fill observation.environment_state with the state")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    text = args.embodiment_json
    embodiment = json.loads(Path(text).read_text() if not text.lstrip().startswith("{") else text)
    try:
        info = check_checkpoint(args.checkpoint, embodiment, args.env_state_from_state)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import os

    import torch

    def stop(signum, frame):  # SIGTERM (how supervisors stop servers) and SIGINT, even where an inherited SIGINT is ignored
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        serve(LeRobotAdapter(info, embodiment, args.device), args.host, args.port, os.environ.get("LBM_SERVE_TOKEN", ""))
    except KeyboardInterrupt:  # stopped while LeRobot was still loading
        print("stopped before serving", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
