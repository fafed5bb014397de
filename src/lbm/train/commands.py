"""`lbm train` and `lbm policy info`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tyro

from lbm.train.presets import PRESETS

TrainPreset = tyro.extras.subcommand_type_from_defaults(PRESETS)


def train(config: Annotated[TrainPreset, tyro.conf.arg(name=""), tyro.conf.OmitSubcommandPrefixes]) -> int:  # type: ignore[valid-type]
    """Pretrain, finetune or train from scratch: `lbm train PRESET [--field value ...]`.

    Example: lbm train mt10-flow-small --data.roots data/mt10 --steps 3000. Under
    `torchrun --nproc-per-node N -m lbm.cli train ...` it trains data-parallel.
    """
    from lbm.train.loop import train as run

    run(config)
    return 0


def policy_info(checkpoint: Annotated[Path, tyro.conf.Positional]) -> int:
    """Print what a checkpoint folder contains: policy, embodiments, stats, instructions, training."""
    from rich.console import Console
    from rich.table import Table

    from lbm.train.checkpoint import _load_tensors, load_instructions, load_stats_of, read_checkpoint_config

    config = read_checkpoint_config(checkpoint)
    weights = _load_tensors(checkpoint / "model.safetensors")
    stats = load_stats_of(checkpoint)
    instructions = load_instructions(checkpoint)
    params = sum(v.numel() for k, v in weights.items() if not k.endswith(("_shift", "_scale", "_mask")))
    pol, train_cfg = config["policy"], config.get("train", {})
    table = Table(title=f"checkpoint {checkpoint}", show_header=False)
    rows = [
        ("family", pol["family"]),
        ("parameters", f"{params:,}"),
        ("size", f"layers={pol['num_layers']} heads={pol['num_heads']}; observations D={pol['d_model']} ff={pol['ff_dim']}; "
                 f"actions D={pol['action_d_model']} ff={pol['action_ff_dim']}"),
        ("horizon / history", f"{pol['horizon']} / {pol['history']}"),
        ("cameras", ", ".join(pol["cameras"]) or "none (state only)"),
        ("normalization", f"state {pol['state_norm']}, action {pol['action_norm']}"),
        ("step", str(config["step"])),
        ("training", f"{train_cfg.get('name', '?')} mode={train_cfg.get('mode', '?')} data={', '.join(train_cfg.get('data', {}).get('roots', []))}"),
        ("instructions cached", str(len(instructions))),
        ("resumable", "yes" if (checkpoint / "trainer" / "state.json").is_file() else "no"),
    ]
    for e in config["embodiments"]:
        rows.append((f"embodiment {e['name']}", f"state {e['state_dim']}, action {e['action_dim']}, stats: {', '.join(sorted(stats.get(e['name'], {}))) or 'MISSING'}"))
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
    for s in sorted(instructions.table)[:20]:
        print(f"  instruction: {s}")
    return 0
