"""Training configuration: frozen dataclasses, one doc line per field, parsed by tyro."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lbm.policies.config import PolicyConfig


@dataclass(frozen=True)
class DataConfig:
    """Which datasets to train on and how to mix them."""

    roots: tuple[str, ...] = ("data/mt10",)
    """Dataset folders (written by `lbm data generate`); several form a weighted mixture."""
    weights: tuple[float, ...] = ()
    """Mixture weight per dataset (empty = equal)."""
    balance_by_size: bool = False
    """If true a dataset's share is its weight alone; otherwise weight x number of windows."""
    val_episodes: int = 2
    """Episodes held out of each dataset (its last ones) for the validation loss; 0 = none."""
    fraction: float = 1.0
    """Train on this fraction of each dataset's training episodes (rounded up, at least one)."""
    subset_seed: int = 0
    """Seed of the episode order the fraction is taken from: subsets of one seed are nested."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process)."""
    tasks: tuple[str, ...] = ()
    """Train only on the episodes of these simulator tasks (empty = every episode). Normalization statistics then
    come from those episodes alone: a run that leaves tasks out (a leave-tasks-out study fold, a fraction of the
    pretraining tasks) never sees their data."""
    subtask_instructions: float = 0.0
    """Fraction of training windows conditioned on their subtask's instruction instead of the whole
    task's, for datasets that carry subtask labels (LIBERO); the rest keep the whole-task instruction."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and cosine decay, gradient clipping and an EMA of the weights."""

    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay (not applied to norms, biases and embeddings)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    warmup_steps: int = 200
    """Linear warmup from 0 to lr."""
    min_lr_ratio: float = 0.1
    """Cosine decays to lr * this at the last step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    ema_decay: float = 0.999
    """EMA decay of the evaluation weights (warmed up as min(decay, (1+s)/(10+s)))."""


@dataclass(frozen=True)
class FinetuneConfig:
    """How to start from a pretrained checkpoint (mode 'finetune')."""

    init_from: str = ""
    """Checkpoint folder to start from (required for mode 'finetune')."""
    variant: Literal["full", "head_only", "lora"] = "full"
    """'full': train everything; 'head_only': freeze encoders and trunk; 'lora': LoRA adapters (peft) + heads, merged on save."""
    lora_rank: int = 16
    """LoRA rank r."""
    lora_alpha: int = 16
    """LoRA scaling alpha (update scaled by alpha / r)."""
    stats: Literal["checkpoint", "dataset"] = "checkpoint"
    """Normalization stats for embodiments the checkpoint knows: keep the pretraining ones, or use the new data's."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run: pretrain, finetune or scratch, for any policy family."""

    name: str = "run"
    """Run name (the default output folder is runs/NAME)."""
    mode: Literal["pretrain", "finetune", "scratch"] = "pretrain"
    """'pretrain' (many tasks), 'finetune' (from --finetune.init-from), 'scratch' (random init, any data)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Policy architecture. In mode 'finetune' the checkpoint's config is used, except the training-time
    fields dropout and crop_fraction, which come from this run (differing fields are listed at start)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Finetuning settings."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 64
    """Global batch size (split across DDP processes)."""
    seed: int = 0
    """Seed of initialization, batch sampling and noise: same seed, same run."""
    out_dir: str = ""
    """Output folder (default runs/NAME); the checkpoint is OUT_DIR/checkpoint."""
    log_every: int = 25
    """Steps between logged training scalars."""
    val_every: int = 250
    """Steps between validation losses (0 = only at the end)."""
    val_batches: int = 4
    """Batches in one validation pass (fixed windows, fixed noise)."""
    save_every: int = 500
    """Steps between checkpoints (always one at the end)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """'auto': bf16 autocast on CUDA with bf16 support, else fp32 (on CPUs bf16 autocast is slower here)."""
    resume: bool = False
    """Continue OUT_DIR/checkpoint bit-for-bit (same schedule, data order and noise)."""
    overwrite: bool = False
    """Replace an existing OUT_DIR/checkpoint instead of refusing to start (without --resume)."""
    tensorboard: bool = True
    """Write TensorBoard scalars to OUT_DIR/tb (metrics.jsonl is always written)."""
    wandb: str = ""
    """Also log the scalars to this Weights & Biases project (needs `pip install wandb`; without a network set
    WANDB_MODE=offline and `wandb sync` the OUT_DIR/wandb folder later). Empty: off."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    max_minutes: float = 0.0
    """Stop early (saving a checkpoint) after this much wall-clock time; 0 = no limit. The schedule stays that of --steps."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda'."""
