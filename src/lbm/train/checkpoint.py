"""Checkpoints: self-describing folders in plain formats (DESIGN.md rule 2).

    CKPT/config.json                 policy config, embodiments, training config, step
    CKPT/model.safetensors           EMA weights (LoRA merged), incl. normalization buffers
    CKPT/stats.json                  {embodiment: {feature: FeatureStats}} (lbm.data.save_stats)
    CKPT/instructions.safetensors    instruction -> all-MiniLM-L6-v2 embedding cache
    CKPT/trainer/                    resume state: raw + EMA weights, AdamW moments, RNG, step

Saving is crash-safe at every moment (:func:`save_checkpoint`): the new checkpoint is written to
``CKPT.new`` and fsynced, marked complete, the old one renamed to ``CKPT.old``, the new one renamed
into place, and the old one deleted. :func:`recover` (run before every load or resume) finishes an
interrupted swap from whichever complete folder exists, so a crash never loses the last good
checkpoint and never makes ``--resume`` start again at step 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lbm.data.normalize import load_stats, save_stats
from lbm.errors import LbmError
from lbm.files import read_model
from lbm.policies import ChunkPolicy, InstructionCache, build_policy, config_from_json, config_to_json
from lbm.policies.common import PER_EMBODIMENT_SUFFIXES
from lbm.schema import Embodiment

FORMAT = "lbm-checkpoint/2"  # 2: two-stream (pi0) expert; 1 had one bidirectional stream
COMPLETE = "COMPLETE"
"""Marker written last into a checkpoint folder: a folder without it was interrupted while being written."""
SERVING_MAX_NEW_INSTRUCTIONS = 10_000
"""Instructions a served policy embeds beyond its checkpoint's before evicting the oldest."""


class TrainerState(BaseModel):
    """``trainer/state.json``: where a run stands (its schema; a damaged file is refused by name)."""

    model_config = ConfigDict(extra="allow")
    step: int = Field(ge=0)
    world_size: int = Field(default=1, ge=1)


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plain weights of ``model``: LoRA adapters (peft) folded into their base layers."""
    from_lora: dict[str, torch.Tensor] = {}
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft, no LoRA layers
        LoraLayer = ()  # noqa: N806
    for name, module in model.named_modules():
        if LoraLayer and isinstance(module, LoraLayer) and module.active_adapters:
            deltas = [module.get_delta_weight(a) for a in module.active_adapters]  # pyright: ignore[reportAttributeAccessIssue]
            from_lora[name] = torch.stack(deltas).sum(0)
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value.detach().clone()
    for name, delta in from_lora.items():
        out[name + ".weight"] = out[name + ".weight"] + delta.to(out[name + ".weight"].dtype)
    return out


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, with a clear error when it is missing, truncated or not safetensors."""
    if not path.is_file():
        raise LbmError(f"{path} is missing: the checkpoint folder is incomplete. Use a folder written by `lbm train`.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise LbmError(f"{path} is corrupt or not a safetensors file ({error}). Re-train or restore that checkpoint.") from None


def read_json(path: Path, what: str) -> Any:
    """A JSON file of a checkpoint, or an error naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LbmError(f"{path} is missing: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LbmError(f"{path} is damaged ({error}): {what}") from None


def read_trainer_state(ckpt: Path) -> TrainerState:
    """``trainer/state.json`` of a checkpoint, validated."""
    return read_model(
        ckpt / "trainer" / "state.json", TrainerState, "The checkpoint cannot be resumed; train again without --resume."
    )


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """AdamW state as flat tensors + param groups as JSON metadata (no pickles)."""
    sd = optimizer.state_dict()
    tensors = {
        f"state.{i}.{k}": v if torch.is_tensor(v) else torch.tensor(v) for i, s in sd["state"].items() for k, v in s.items()
    }
    return tensors, {"param_groups": json.dumps(sd["param_groups"])}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for key, value in tensors.items():
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = value
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
        raise LbmError(
            f"The optimizer state does not match this model ({error}); the checkpoint was written by a "
            "different run. Train again without --resume."
        ) from None


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Path) -> None:
    """Restore the AdamW state saved in ``ckpt/trainer/optimizer.safetensors``."""
    path = ckpt / "trainer" / "optimizer.safetensors"
    tensors = load_tensors(path)  # a clear error when missing or truncated
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    optimizer_from_tensors(optimizer, tensors, metadata)


def save_checkpoint(
    path: str | Path,
    *,
    model: ChunkPolicy,
    ema: ChunkPolicy,
    stats: dict[str, dict[str, Any]],
    train_config: Any,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    extra_state: dict[str, Any] | None = None,
    rank_rng: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a complete checkpoint folder at ``path``, replacing an older one without a window that loses both.

    ``rank_rng``: the RNG states of every DDP rank (each draws its own noise); without it, this
    process's state is saved. Steps (each leaves a recoverable state, see :func:`recover`): write
    ``path.new`` and fsync it; mark it complete; rename ``path`` to ``path.old``; rename ``path.new``
    to ``path``; delete ``path.old``.
    """
    path = Path(path)
    new, old = _sibling(path, "new"), _sibling(path, "old")
    try:
        recover(path)
        if new.exists():
            shutil.rmtree(new)
        (new / "trainer").mkdir(parents=True)
        config = {
            "format": FORMAT,
            "family": ema.config.family,
            "policy": config_to_json(ema.config),
            "embodiments": [e.to_json() for e in ema.embodiments.values()],
            "step": int(step),
            "train": (
                dataclasses.asdict(train_config)
                if dataclasses.is_dataclass(train_config) and not isinstance(train_config, type)
                else train_config
            ),
        }
        (new / "config.json").write_text(json.dumps(config, indent=1))
        _save_tensors(merged_state_dict(ema), new / "model.safetensors")
        save_stats(new / "stats.json", {e: stats[e] for e in ema.embodiments})
        tensors, meta = ema.instructions.to_tensors()
        _save_tensors(tensors, new / "instructions.safetensors", meta)
        if optimizer is not None:
            _save_tensors(model.state_dict(), new / "trainer" / "model.safetensors")
            _save_tensors(ema.state_dict(), new / "trainer" / "ema.safetensors")
            tensors, meta = optimizer_to_tensors(optimizer)
            _save_tensors(tensors, new / "trainer" / "optimizer.safetensors", meta)
            rng = {f"{name}.rank{r}": t for r, states in enumerate(rank_rng or [rng_state()]) for name, t in states.items()}
            _save_tensors(rng, new / "trainer" / "rng.safetensors")
            (new / "trainer" / "state.json").write_text(json.dumps({"step": int(step), **(extra_state or {})}, indent=1))
        _fsync_tree(new)
        (new / COMPLETE).write_text(f"{int(step)}\n")
        _fsync_tree(new)
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
        _fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except OSError as error:
        raise LbmError(
            f"Saving the checkpoint {path} failed ({error.strerror or error}); the previous checkpoint (if any) "
            f"is intact. Free disk space or choose a writable --out-dir."
        ) from None
    return path


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.name}.{suffix}")


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        _fsync_dir(d)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a checkpoint folder that was completely written.

    Folders from before the completeness marker count as complete when their config is present.
    """
    return path.is_dir() and (
        (path / COMPLETE).is_file() or ((path / "config.json").is_file() and not path.name.endswith((".new", ".old")))
    )


def recover(path: str | Path) -> list[str]:
    """Finish an interrupted checkpoint swap at ``path``; returns what was done (for a log line).

    If ``path`` is missing, a complete ``path.new`` is moved in, else ``path.old`` (the previous
    checkpoint) is restored. Leftovers beside a complete ``path`` are deleted. Nothing complete is
    deleted before a complete replacement is in place, and a folder at ``path`` that is not a
    complete checkpoint is refused rather than deleted.
    """
    path = Path(path)
    new, old = _sibling(path, "new"), _sibling(path, "old")
    done = []
    if path.exists() and not is_complete(path):
        raise LbmError(
            f"{path} exists but is not a complete lbm checkpoint (no {COMPLETE} marker and no config.json). "
            "Move it away or delete it, then rerun."
        )
    if not path.exists():
        if is_complete(new):
            os.replace(new, path)
            done.append(f"moved the complete {new.name} into place (a save was interrupted between its renames)")
        elif old.is_dir():
            os.replace(old, path)
            done.append(f"restored {old.name} (a save was interrupted before the new checkpoint was complete)")
    leftovers = [new, old, _sibling(path, "tmp")]  # .tmp: what older lbm versions wrote
    for leftover in leftovers:
        if leftover.exists() and (path.exists() or not is_complete(leftover)):
            shutil.rmtree(leftover)
            done.append(f"removed the leftover {leftover.name}")
    return done


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states (CPU, and CUDA when present), as saved in ``trainer/rng.safetensors``."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng(path: str | Path, rank: int) -> None:
    """Restore the RNG states ``rank`` had when the checkpoint at ``path`` was saved."""
    rng = load_tensors(Path(path) / "trainer" / "rng.safetensors")
    if f"torch.rank{rank}" not in rng:
        saved = sorted({int(k.rsplit("rank", 1)[1]) for k in rng})
        raise LbmError(
            f"{path} holds the RNG states of ranks {saved}, not of rank {rank}; resume with the number of processes it "
            "was trained with."
        )
    try:
        torch.set_rng_state(rng[f"torch.rank{rank}"])
        if f"cuda.rank{rank}" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng[f"cuda.rank{rank}"])
    except (RuntimeError, TypeError) as error:
        raise LbmError(
            f"{path}/trainer/rng.safetensors holds an unusable RNG state ({error}); the checkpoint cannot be "
            "resumed bit for bit. Train again without --resume."
        ) from None


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint, with clear errors for a wrong or damaged folder."""
    path = Path(path)
    if not path.is_dir() and (_sibling(path, "old").is_dir() or _sibling(path, "new").is_dir()):
        recover(path)  # an interrupted save: finish it first
    if not path.is_dir():
        raise LbmError(
            f"Checkpoint folder {path} does not exist. Pass the folder written by `lbm train` (e.g. runs/NAME/checkpoint)."
        )
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise LbmError(f"{path} is not an lbm checkpoint: config.json is missing.")
    try:
        config = json.loads(cfg_path.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"format {config.get('format')!r}, expected {FORMAT!r}")
        config_from_json(config["policy"])
        [Embodiment.from_json(e) for e in config["embodiments"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise LbmError(
            f"{cfg_path} is corrupt or from an incompatible lbm ({error}). Re-train or re-download the checkpoint."
        ) from None
    return config


def load_stats_of(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per-embodiment normalization stats stored in a checkpoint."""
    return load_stats(Path(path) / "stats.json")


def load_instructions(path: str | Path, serving: bool = False) -> InstructionCache:
    """The instruction-embedding cache stored in a checkpoint (bounded and not persisted when ``serving``)."""
    file = Path(path) / "instructions.safetensors"
    tensors = load_tensors(file)  # clear error if missing or corrupt
    if "embeddings" not in tensors:
        raise LbmError(f"{file} holds no 'embeddings' tensor; the checkpoint is damaged. Re-save it with `lbm train`.")
    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata() or {}
    try:
        return InstructionCache.from_tensors(
            tensors, metadata, use_user_cache=not serving, max_added=SERVING_MAX_NEW_INSTRUCTIONS if serving else None
        )
    except (KeyError, json.JSONDecodeError, TypeError) as error:
        raise LbmError(f"{file} has damaged metadata ({error}); re-save the checkpoint with `lbm train`.") from None


def load_policy(path: str | Path, device: str = "cpu", serving: bool = False) -> ChunkPolicy:
    """Load a checkpoint folder as a ready policy (EMA weights, eval mode) satisfying ``lbm.policies.base.Policy``.

    The weights are checked against the architecture its config describes (names and shapes).
    ``serving``: new instructions are embedded into a bounded in-memory cache only (a server must
    not grow a cache file from what clients send).
    """
    config = read_checkpoint_config(path)
    embodiments = [Embodiment.from_json(e) for e in config["embodiments"]]
    stats = load_stats_of(path)
    missing = [e.name for e in embodiments if e.name not in stats]
    if missing:
        raise LbmError(
            f"{Path(path) / 'stats.json'} lacks normalization stats for {missing}; the checkpoint is incomplete. "
            "Re-save it with `lbm train`."
        )
    policy = build_policy(config_from_json(config["policy"]), embodiments, stats, load_instructions(path, serving))
    weights = load_tensors(Path(path) / "model.safetensors")
    load_weights(policy, weights, what=str(Path(path) / "model.safetensors"))
    return policy.to(device).eval()


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Strict load with an actionable message instead of torch's key dump."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        raise LbmError(
            f"{what} does not match the model described by its config.json (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {wrong[:5]}). The files come from different runs; re-save the checkpoint."
        )
    model.load_state_dict(weights, strict=True)


def transfer_weights(model: ChunkPolicy, weights: dict[str, torch.Tensor], source_embodiments: list[str]) -> dict[str, list[str]]:
    """Initialize ``model`` from pretrained ``weights`` for finetuning.

    Per-embodiment rows are matched by embodiment *name* (an embodiment new to the checkpoint keeps
    its fresh initialization); every other parameter must have the same shape. Normalization
    buffers are not copied: they come from the stats chosen for finetuning. Returns what was done.
    """
    own = model.state_dict()
    targets = list(model.embodiments)
    report: dict[str, list[str]] = {"copied": [], "per_embodiment": [], "fresh": []}
    new = {}
    for key, value in own.items():
        leaf = key.rsplit(".", 1)[-1]
        if key not in weights or leaf in ("state_shift", "state_scale", "action_shift", "action_scale", "action_mask"):
            report["fresh"].append(key)
            continue
        src = weights[key]
        if leaf in PER_EMBODIMENT_SUFFIXES:
            value = value.clone()
            for i, name in enumerate(targets):
                if name in source_embodiments:
                    row = src[source_embodiments.index(name)]
                    sl = tuple(slice(0, min(a, b)) for a, b in zip(value[i].shape, row.shape))
                    value[i][sl] = row[sl]
            new[key] = value
            report["per_embodiment"].append(key)
        elif src.shape == value.shape:
            new[key] = src
            report["copied"].append(key)
        else:
            raise LbmError(
                f"Pretrained weight {key!r} has shape {tuple(src.shape)} but the finetuned model needs {tuple(value.shape)}. "
                "Finetuning keeps the checkpoint's architecture; do not override model sizes in mode 'finetune'."
            )
    model.load_state_dict({**own, **new}, strict=True)
    return report


def check_compatible(checkpoint_embodiments: dict[str, Embodiment], dataset_embodiment: Embodiment, where: str) -> None:
    """Raise if a dataset's embodiment has the name of a checkpoint embodiment but other sizes."""
    known = checkpoint_embodiments.get(dataset_embodiment.name)
    if known is None:
        return
    if (known.state_dim, known.action_dim) != (dataset_embodiment.state_dim, dataset_embodiment.action_dim):
        raise LbmError(
            f"The dataset's embodiment {dataset_embodiment.name!r} has state/action dims "
            f"({dataset_embodiment.state_dim}, {dataset_embodiment.action_dim}) but {where} has "
            f"({known.state_dim}, {known.action_dim}) under the same name. Use the matching dataset, or rename the "
            "embodiment if it is really a different robot."
        )
