"""The checked-in registry of named training presets (`lbm train PRESET --overrides`).

Names are unique; every preset is a complete :class:`TrainConfig` and the command line overrides
its fields, e.g. ``lbm train mt10-flow-small --optim.lr 1e-4 --data.roots data/mt10``.
"""

from __future__ import annotations

from dataclasses import replace

from lbm.errors import did_you_mean
from lbm.policies.config import policy_config
from lbm.train.config import DataConfig, FinetuneConfig, OptimConfig, TrainConfig

_MT10 = DataConfig(roots=("data/mt10",), val_episodes=5, num_workers=0)


def _preset(name: str, family: str, size: str, **kw) -> TrainConfig:
    cfg = TrainConfig(name=name, policy=policy_config(family, size))
    return replace(cfg, **kw)


_PRESETS = [
    # Tests and smoke runs: a tiny model for a few hundred steps on whatever data is given.
    *(
        _preset(
            f"tiny-{f}",
            f,
            "tiny",
            data=DataConfig(roots=("data/tiny",), val_episodes=1),
            steps=200,
            batch_size=32,
            log_every=20,
            val_every=100,
            save_every=200,
            val_batches=2,
            optim=OptimConfig(lr=1e-3, warmup_steps=20, ema_decay=0.99),
        )
        for f in ("flow", "diffusion", "discrete")
    ),
    # Multitask pretraining on MT10 state data, sized for a 2-core CPU (~20 min).
    *(
        _preset(
            f"mt10-{f}-small",
            f,
            "small",
            mode="pretrain",
            data=_MT10,
            steps=3000,
            batch_size=64,
            optim=OptimConfig(lr=3e-4, warmup_steps=200),
        )
        for f in ("flow", "diffusion", "discrete")
    ),
    # LIBERO-Goal's registered pick-and-place tasks, state data with subtask labels (lbm data generate
    # --tasks libero-goal --out data/libero-goal); 30% of windows see their subtask's instruction.
    _preset(
        "libero-goal-flow-small",
        "flow",
        "small",
        mode="pretrain",
        data=DataConfig(roots=("data/libero-goal",), val_episodes=2, subtask_instructions=0.3),
        steps=3000,
        batch_size=64,
        optim=OptimConfig(lr=3e-4, warmup_steps=200),
    ),
    # Cross-embodiment pretraining: five bodies with different state and action sizes in one model
    # (Meta-World's Sawyer, LIBERO's Panda, robosuite's Panda, UR5e and IIWA), one dataset per body
    # (`lbm data generate --tasks robosuite@ur5e --out data/robosuite-ur5e`, ...). Each body's share of
    # the batches is its weight, whatever its frame count; Meta-World and LIBERO get the larger shares
    # for their task counts (10 and 6 vs 2 per robosuite arm).
    _preset(
        "cross-embodiment-flow-small",
        "flow",
        "small",
        mode="pretrain",
        data=DataConfig(
            roots=("data/mt10", "data/libero-goal", "data/robosuite-panda", "data/robosuite-ur5e", "data/robosuite-iiwa"),
            weights=(0.3, 0.25, 0.15, 0.15, 0.15),
            balance_by_size=True,
            val_episodes=1,
            subtask_instructions=0.3,
        ),
        steps=3000,
        batch_size=64,
        optim=OptimConfig(lr=3e-4, warmup_steps=200),
    ),
    # MT10 with the corner camera at 96 px: GPU-sized.
    _preset(
        "mt10-flow-image-base",
        "flow",
        "base",
        data=_MT10,
        steps=30000,
        batch_size=128,
        policy=policy_config("flow", "base", cameras=("corner",)),
    ),
    # Finetune a pretrained checkpoint on a new task's demos (set --finetune.init-from).
    *(
        _preset(
            f"finetune-flow-small-{v.replace('_', '-')}",
            "flow",
            "small",
            mode="finetune",
            data=DataConfig(roots=("data/new-task",), val_episodes=2),
            steps=1000,
            batch_size=64,
            finetune=FinetuneConfig(init_from="runs/mt10-flow-small/checkpoint", variant=v),
            optim=OptimConfig(lr=1e-4 if v == "full" else 3e-4, warmup_steps=50),
        )
        for v in ("full", "head_only", "lora")
    ),
    # Single-task from-scratch baseline with the same data as a finetune (the LBM study's control).
    _preset(
        "scratch-flow-small",
        "flow",
        "small",
        mode="scratch",
        data=DataConfig(roots=("data/new-task",), val_episodes=2),
        steps=1000,
        batch_size=64,
    ),
]

PRESETS: dict[str, TrainConfig] = {}
for _p in _PRESETS:
    if _p.name in PRESETS:
        raise RuntimeError(f"duplicate training preset {_p.name!r}")
    PRESETS[_p.name] = _p


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name`` (an LbmError with suggestions if there is none)."""
    if name not in PRESETS:
        raise did_you_mean(name, PRESETS, "training preset")
    return PRESETS[name]
