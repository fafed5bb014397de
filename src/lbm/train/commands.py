"""`lbm train` and `lbm policy info`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from lbm.train.checkpoint import load_policy, load_stats_of, read_checkpoint_config
from lbm.train.loop import train as run
from lbm.train.presets import PRESETS

TrainPreset = tyro.extras.subcommand_type_from_defaults(PRESETS)


def train(config: Annotated[TrainPreset, tyro.conf.arg(name=""), tyro.conf.OmitSubcommandPrefixes]) -> int:  # type: ignore[valid-type]
    """Pretrain, finetune or train from scratch: `lbm train PRESET [--field value ...]`.

    Example: lbm train mt10-flow-small --data.roots data/mt10 --steps 3000. Under
    `torchrun --nproc-per-node N -m lbm.cli train ...` it trains data-parallel.
    """

    run(config)
    return 0


@dataclass(frozen=True)
class PolicyInfoConfig:
    """Print what a checkpoint folder contains: policy, embodiments, stats, instructions, training.

    The checkpoint is loaded the way evaluation and serving load it, so weights that do not match
    the architecture its config describes are reported here too.
    """

    checkpoint: Annotated[Path, tyro.conf.Positional]
    """Checkpoint folder written by `lbm train`."""


def policy_info(config: Annotated[PolicyInfoConfig, tyro.conf.arg(name="")]) -> int:
    """Print what a checkpoint folder contains (see PolicyInfoConfig)."""
    from rich.console import Console
    from rich.table import Table

    checkpoint = config.checkpoint
    policy = load_policy(checkpoint)  # checks the weights against the architecture
    stats = load_stats_of(checkpoint)
    instructions = policy.instructions
    params = sum(p.numel() for p in policy.parameters())
    saved = read_checkpoint_config(checkpoint)
    pol, train_cfg = saved["policy"], saved.get("train", {})
    table = Table(title=f"checkpoint {checkpoint}", show_header=False)
    rows = [
        ("family", pol["family"]),
        ("parameters", f"{params:,}"),
        (
            "size",
            f"layers={pol['num_layers']} heads={pol['num_heads']}; observations D={pol['d_model']} ff={pol['ff_dim']}; "
            f"actions D={pol['action_d_model']} ff={pol['action_ff_dim']}",
        ),
        ("horizon / history", f"{pol['horizon']} / {pol['history']}"),
        ("cameras", ", ".join(pol["cameras"]) or "none (state only)"),
        ("normalization", f"state {pol['state_norm']}, action {pol['action_norm']}"),
        ("step", str(saved["step"])),
        (
            "training",
            f"{train_cfg.get('name', '?')} mode={train_cfg.get('mode', '?')} "
            f"data={', '.join(train_cfg.get('data', {}).get('roots', []))}",
        ),
        ("instructions cached", str(len(instructions))),
        ("resumable", "yes" if (checkpoint / "trainer" / "state.json").is_file() else "no"),
    ]
    for e in saved["embodiments"]:
        rows.append(
            (
                f"embodiment {e['name']}",
                f"state {e['state_dim']}, action {e['action_dim']}, stats: "
                f"{', '.join(sorted(stats.get(e['name'], {}))) or 'MISSING'}",
            )
        )
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
    for s in sorted(instructions.table)[:20]:
        print(f"  instruction: {s}")
    return 0
