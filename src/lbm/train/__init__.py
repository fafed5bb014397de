"""Training: one loop for every policy and mode, plain-format checkpoints, named presets.

from lbm.train import load_policy
policy = load_policy("runs/mt10-flow-small/checkpoint")
actions = policy.predict_chunk([observation])[0]   # (T, A) in the embodiment's units
"""

from lbm.train.checkpoint import load_policy, save_checkpoint
from lbm.train.config import DataConfig, FinetuneConfig, OptimConfig, TrainConfig
from lbm.train.loop import train
from lbm.train.presets import PRESETS, get_preset

__all__ = [
    "PRESETS",
    "DataConfig",
    "FinetuneConfig",
    "OptimConfig",
    "TrainConfig",
    "get_preset",
    "load_policy",
    "save_checkpoint",
    "train",
]
