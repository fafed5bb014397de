"""The one training loop: every policy family, every mode, one process or many (torchrun DDP).

Read it top to bottom: setup, data, model, optimizer, (resume), loop, final save. It knows nothing
about which policy it trains: it calls ``compute_loss`` (through ``forward``) and nothing else.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from lbm.data.dataset import EpisodeDataset
from lbm.data.mixture import Mixture
from lbm.data.windows import WindowDataset, collate_windows
from lbm.errors import LbmError, did_you_mean
from lbm.files import writing
from lbm.policies import ChunkPolicy, InstructionCache, build_policy, config_from_json
from lbm.schema import Embodiment
from lbm.train import checkpoint as ckpt
from lbm.train.config import TrainConfig


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at the last step."""
    o = config.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, config.steps - o.warmup_steps)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def bf16_supported(device: torch.device) -> bool:
    """Whether 'auto' precision picks bf16 autocast: on CUDA with bf16 support.

    Not on CPUs, even with avx512_bf16/AMX: there the casts cost more than the small matmuls save
    (benchmarks/train_throughput.py, small flow with state: ~600 samples/s fp32 vs ~380 bf16).
    """
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


class StepBatches(torch.utils.data.Sampler):
    """Batch indices as a pure function of (seed, step): resume needs no sampler state, and every
    DDP rank draws the same global batch and keeps its own slice."""

    def __init__(self, weights: np.ndarray, batch: int, start: int, stop: int, seed: int, rank: int, world: int):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.batch, self.start, self.stop, self.seed, self.rank, self.world = batch, start, stop, seed, rank, world

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for step in range(self.start, self.stop):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            idx = torch.multinomial(self.weights, self.batch * self.world, replacement=True, generator=g)
            yield idx[self.rank * self.batch : (self.rank + 1) * self.batch].tolist()


def _all_agree(flag: bool, world: int, device: torch.device) -> bool:
    """True if ``flag`` holds on any rank: every DDP rank must leave the loop at the same step."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)  # NCCL reduces CUDA tensors only
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def episode_subset(n_episodes: int, fraction: float, seed: int) -> list[int]:
    """The first ceil(fraction * n) episodes of a seeded permutation of range(n), sorted.

    One permutation per seed makes the subsets nested (10 % is inside 25 % is inside 100 %), as in
    the LBM study's data-efficiency sweep, so a larger fraction only ever adds demonstrations.
    """
    if not 0 < fraction <= 1:
        raise LbmError(f"--data.fraction must be in (0, 1], got {fraction}.")
    order = np.random.default_rng(seed).permutation(n_episodes)
    # 1e-9: a fraction such as 3/20 is 0.15000000000000002 * 20 in floating point, whose ceiling is 4, not 3.
    return sorted(int(i) for i in order[: max(1, math.ceil(fraction * n_episodes - 1e-9))])


def selected_episodes(datasets: Sequence[EpisodeDataset], tasks: Sequence[str]) -> list[list[int]]:
    """Per dataset, the episodes ``--data.tasks`` selects (all of them when it is empty); refuses a task no dataset
    holds and a dataset left with no episode."""
    selected = [ds.episodes_of_tasks(tasks) for ds in datasets]
    if tasks:
        held = {ds.episode_sim_task(i) for ds, eps in zip(datasets, selected) for i in eps}
        missing = [t for t in tasks if t not in held]
        if missing:
            known = {ds.episode_sim_task(i) for ds in datasets for i in range(ds.num_episodes)}
            raise did_you_mean(missing[0], known, "task")  # in --data.tasks, not in any of --data.roots
        empty = [str(ds.root) for ds, eps in zip(datasets, selected) if not eps]
        if empty:
            raise LbmError(
                f"--data.tasks selects no episode of {', '.join(empty)}; drop that dataset from --data.roots or add one "
                "of its tasks."
            )
    return selected


def _start_wandb(config: TrainConfig, out_dir: Path) -> Any:
    """A Weights & Biases run logging the same scalars as metrics.jsonl (resumed runs continue it)."""
    try:
        import wandb  # pyright: ignore[reportMissingImports] - the optional lbm[wandb] extra
    except ImportError:
        raise LbmError(
            "--wandb needs the wandb package: pip install 'lbm[wandb]' (or drop --wandb; metrics.jsonl and TensorBoard "
            "are always written)."
        ) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    id_file = out_dir / "wandb_run_id.txt"
    run_id = id_file.read_text().strip() if config.resume and id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=config.wandb, name=config.name, id=run_id, resume="allow", dir=str(out_dir), config=dataclasses.asdict(config)
    )


FINETUNE_TRAINING_FIELDS = ("dropout", "crop_fraction")
"""Policy fields a finetuning run sets itself; every other field (architecture, normalization,
sampling) is the pretrained checkpoint's."""


def validate_config(config: TrainConfig, world: int = 1) -> None:
    """Refuse settings that cannot train, naming the option (before any data is read)."""
    o, d = config.optim, config.data
    problems = []
    if config.steps < 1:
        problems.append(f"--steps must be >= 1 (got {config.steps})")
    if config.batch_size < 1:
        problems.append(f"--batch-size must be >= 1 (got {config.batch_size})")
    elif config.batch_size % world:
        problems.append(f"--batch-size {config.batch_size} is not divisible by the {world} processes")
    for name, value, low in (
        ("--optim.lr", o.lr, "> 0"),
        ("--optim.weight-decay", o.weight_decay, ">= 0"),
        ("--optim.grad-clip", o.grad_clip, ">= 0"),
        ("--optim.min-lr-ratio", o.min_lr_ratio, ">= 0"),
    ):
        if not math.isfinite(value) or (value <= 0 if low == "> 0" else value < 0):
            problems.append(f"{name} must be a finite number {low} (got {value})")
    for name, value in (("--optim.beta1", o.beta1), ("--optim.beta2", o.beta2), ("--optim.ema-decay", o.ema_decay)):
        if not 0 <= value < 1:
            problems.append(f"{name} must be in [0, 1) (got {value})")
    for name, value in (
        ("--optim.warmup-steps", o.warmup_steps),
        ("--data.val-episodes", d.val_episodes),
        ("--data.num-workers", d.num_workers),
        ("--val-every", config.val_every),
        ("--val-batches", config.val_batches),
        ("--threads", config.threads),
    ):
        if value < 0:
            problems.append(f"{name} must be >= 0 (got {value})")
    for name, value in (("--log-every", config.log_every), ("--save-every", config.save_every)):
        if value < 1:
            problems.append(f"{name} must be >= 1 (got {value})")
    if not 0 < d.fraction <= 1:
        problems.append(f"--data.fraction must be in (0, 1] (got {d.fraction})")
    if not math.isfinite(config.max_minutes) or config.max_minutes < 0:
        problems.append(f"--max-minutes must be >= 0 (got {config.max_minutes})")
    if not d.roots:
        problems.append("no training data: pass --data.roots DIR [DIR ...] (folders written by `lbm data generate`)")
    resolved = [str(Path(r).resolve()) for r in d.roots]
    repeated = sorted({r for r, full in zip(d.roots, resolved) if resolved.count(full) > 1})
    if repeated:
        problems.append(
            f"--data.roots lists {', '.join(repeated)} more than once, which would count its data twice; list "
            "each dataset once and use --data.weights to weigh one more"
        )
    if d.weights and len(d.weights) != len(d.roots):
        problems.append(f"--data.weights has {len(d.weights)} values for {len(d.roots)} datasets")
    if any(not math.isfinite(w) or w < 0 for w in d.weights) or (d.weights and sum(d.weights) <= 0):
        problems.append(f"--data.weights must be non-negative finite numbers with a positive sum (got {list(d.weights)})")
    if problems:
        raise LbmError("Invalid training settings: " + "; ".join(problems) + ".")


def train(config: TrainConfig) -> Path:
    """Train a policy as ``config`` says; returns the checkpoint folder (OUT_DIR/checkpoint)."""

    # ---- processes, devices, seeds -------------------------------------------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(
        "cuda" if config.device == "auto" and torch.cuda.is_available() else ("cpu" if config.device == "auto" else config.device)
    )
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if config.threads:
        torch.set_num_threads(config.threads)
    validate_config(config, world)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_supported(device))
    out_dir = Path(config.out_dir or f"runs/{config.name}")
    ckpt_dir = out_dir / "checkpoint"
    torch.manual_seed(config.seed)
    main = rank == 0
    if main:
        for line in ckpt.recover(ckpt_dir):
            print(f"[lbm train] {ckpt_dir}: {line}")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank sees the recovered folder
    if ckpt.is_complete(ckpt_dir) and not config.resume and not config.overwrite:
        raise LbmError(
            f"{ckpt_dir} already holds a checkpoint. Pass --resume to continue it, --overwrite to replace it, or "
            "choose another --out-dir."
        )

    # ---- data ----------------------------------------------------------------------------------
    datasets = [EpisodeDataset(r) for r in config.data.roots]
    selected = selected_episodes(datasets, config.data.tasks)
    init = None
    if config.mode == "finetune":
        if not config.finetune.init_from:
            raise LbmError("Mode 'finetune' needs a pretrained checkpoint: pass --finetune.init-from runs/NAME/checkpoint.")
        init = ckpt.read_checkpoint_config(config.finetune.init_from)
    policy_cfg = config.policy
    if init:
        policy_cfg = dataclasses.replace(
            config_from_json(init["policy"]), **{f: getattr(config.policy, f) for f in FINETUNE_TRAINING_FIELDS}
        )
        # A robot the checkpoint never saw brings its own constant dimensions (this run's marks for it).
        known = {d["name"] for d in init["embodiments"]}
        new_body_marks = tuple(m for m in config.policy.constant_dims if m.split("/")[0] not in known)
        policy_cfg = dataclasses.replace(policy_cfg, constant_dims=(*policy_cfg.constant_dims, *new_body_marks))
        ignored = [
            f"{f.name}={getattr(config.policy, f.name)!r} (checkpoint: {getattr(policy_cfg, f.name)!r})"
            for f in dataclasses.fields(policy_cfg)
            if getattr(config.policy, f.name) != getattr(policy_cfg, f.name)
        ]
        if ignored and main:
            print(f"[lbm train] finetuning keeps the checkpoint's policy config; not applied: {', '.join(ignored)}")
    embodiments: dict[str, Embodiment] = {}
    stats: dict[str, dict[str, Any]] = {}
    for ds, episodes in zip(datasets, selected):
        e = ds.embodiment
        if e.name in embodiments and embodiments[e.name] != e:
            raise LbmError(f"Two datasets call different embodiments {e.name!r}; give them distinct names.")
        embodiments[e.name] = e
        # Several datasets of one body: the first one's stats. A task filter: the stats of the selected episodes.
        stats.setdefault(e.name, ds.stats_of(episodes) if config.data.tasks else ds.stats)
    if init:
        pre_embodiments = {d["name"]: Embodiment.from_json(d) for d in init["embodiments"]}
        for e in embodiments.values():
            ckpt.check_compatible(pre_embodiments, e, f"checkpoint {config.finetune.init_from}")
        if config.finetune.stats == "checkpoint":
            pre_stats = ckpt.load_stats_of(config.finetune.init_from)
            stats.update({n: pre_stats[n] for n in embodiments if n in pre_stats})
    train_sets, val_sets = [], []
    for ds, episodes in zip(datasets, selected):
        n_val = config.data.val_episodes if len(episodes) > config.data.val_episodes else 0
        split = len(episodes) - n_val
        H, T, cams = policy_cfg.history, policy_cfg.horizon, policy_cfg.cameras
        subset = [episodes[i] for i in episode_subset(split, config.data.fraction, config.data.subset_seed)]
        sub = config.data.subtask_instructions
        train_sets.append(WindowDataset(ds, history=H, horizon=T, episodes=subset, cameras=cams, subtask_instructions=sub))
        if n_val:
            val_sets.append(WindowDataset(ds, history=H, horizon=T, episodes=episodes[split:], cameras=cams))
    train_data = Mixture(train_sets, weights=config.data.weights or None, balance_by_size=config.data.balance_by_size)
    val_data = Mixture(val_sets) if val_sets else None
    instructions = ckpt.load_instructions(config.finetune.init_from) if init else InstructionCache()
    instructions.ensure({ds.episode_task(i) for ds in datasets for i in range(ds.num_episodes)})
    if config.data.subtask_instructions > 0:
        instructions.ensure({ds.tasks[int(k)] for ds in datasets if ds.has_subtasks for k in np.unique(ds.frame_subtasks())})

    # ---- model, EMA, finetune variant ------------------------------------------------------------
    model = build_policy(policy_cfg, list(embodiments.values()), stats, instructions)
    if init:
        pre = ckpt.load_tensors(Path(config.finetune.init_from) / "model.safetensors")
        ckpt.transfer_weights(model, pre, [d["name"] for d in init["embodiments"]])
        variant = config.finetune.variant
        if variant == "head_only":
            heads = set(model.head_parameter_names())
            for n, p in model.named_parameters():
                p.requires_grad_(n in heads)
        elif variant == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            heads = set(model.head_parameter_names())
            lora = LoraConfig(
                r=config.finetune.lora_rank,
                lora_alpha=config.finetune.lora_alpha,
                target_modules=["qkv", "kv", "proj", "fc1", "fc2"],
            )
            model = cast(ChunkPolicy, inject_adapter_in_model(lora, model))
            for n, p in model.named_parameters():
                p.requires_grad_("lora_" in n or n in heads)
    model.to(device)
    ema: ChunkPolicy = copy.deepcopy(model).requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "token" not in n and "pos" not in n]
    no_decay = [p for p in trainable if all(p is not q for q in decay)]
    o = config.optim
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
    )

    # ---- resume ----------------------------------------------------------------------------------
    start = 0
    if config.resume and ckpt.is_complete(ckpt_dir) and not (ckpt_dir / "trainer").is_dir():
        raise LbmError(
            f"{ckpt_dir} holds no trainer state (it was saved for inference only), so it cannot be resumed. "
            "Finetune from it with --mode finetune --finetune.init-from, or train again without --resume."
        )
    if config.resume and ckpt_dir.exists() and not ckpt.is_complete(ckpt_dir) and main:  # a new folder is no news
        print(f"[lbm train] --resume: {ckpt_dir} holds no complete checkpoint; starting at step 0.")
    if config.resume and ckpt.is_complete(ckpt_dir):
        state = ckpt.read_trainer_state(ckpt_dir)
        saved = ckpt.read_checkpoint_config(ckpt_dir)
        saved_emb = {d["name"]: Embodiment.from_json(d) for d in saved["embodiments"]}
        for e in embodiments.values():
            ckpt.check_compatible(saved_emb, e, f"the checkpoint being resumed ({ckpt_dir})")
        if set(saved_emb) != set(embodiments):
            raise LbmError(
                f"Resuming {ckpt_dir} (embodiments {sorted(saved_emb)}) with data of embodiments {sorted(embodiments)}; "
                "resume with the same --data.roots."
            )
        ckpt.load_weights(model, ckpt.load_tensors(ckpt_dir / "trainer" / "model.safetensors"), "trainer/model.safetensors")
        ckpt.load_weights(ema, ckpt.load_tensors(ckpt_dir / "trainer" / "ema.safetensors"), "trainer/ema.safetensors")
        ckpt.load_optimizer(optimizer, ckpt_dir)
        if state.world_size != world:
            raise LbmError(
                f"{ckpt_dir} was trained by {state.world_size} process(es) and is resumed by {world}; resume with "
                f"the same number (each process's batch slice and noise stream are part of the schedule)."
            )
        ckpt.restore_rng(ckpt_dir, rank)
        start = state.step
        if start >= config.steps:
            if main:
                print(f"{ckpt_dir} is already at step {start} >= steps={config.steps}; nothing to do.")
            return ckpt_dir
    elif world > 1:
        torch.manual_seed(config.seed + 7919 * rank)  # different noise per rank, same initial weights (built above)

    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = torch.utils.data.DataLoader(
        cast(torch.utils.data.Dataset[Any], train_data),  # a map-style dataset (__getitem__/__len__)
        batch_sampler=StepBatches(
            train_data.sample_weights(), config.batch_size // world, start, config.steps, config.seed, rank, world
        ),
        collate_fn=collate_windows,
        num_workers=config.data.num_workers,
        # Its own generator: the loader must not draw from the global RNG that drives the noise,
        # or a resumed run would see a shifted noise stream.
        generator=torch.Generator().manual_seed(config.seed),
    )

    # ---- logging -----------------------------------------------------------------------------------
    writer = None
    metrics_file = None
    if main:
        with writing("the training run", out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
            metrics_file = (out_dir / "metrics.jsonl").open("a")
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(out_dir / "tb"), purge_step=start)
            except ImportError:
                writer = None
    wandb_run = _start_wandb(config, out_dir) if main and config.wandb else None

    def log(step: int, scalars: dict[str, float]) -> None:
        if metrics_file is None:  # only rank 0 logs
            return
        metrics_file.write(json.dumps({"step": step, **scalars}) + "\n")
        metrics_file.flush()
        if writer is not None:
            for k, v in scalars.items():
                writer.add_scalar(k, v, step)
        if wandb_run is not None:
            wandb_run.log(scalars, step=step)

    val_batches = None
    if val_data is not None and len(val_data):
        g = torch.Generator().manual_seed(config.seed + 1)
        picks = torch.randint(0, len(val_data), (config.val_batches, min(config.batch_size, len(val_data))), generator=g)
        val_batches = [collate_windows([val_data[int(i)] for i in row]) for row in picks]

    def validate() -> float | None:
        if val_batches is None:
            return None
        # Fixed noise, and the training RNG stream left untouched so resume stays bit-for-bit.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(config.seed + 2)
            ema.eval()
            losses = [float(ema.compute_loss(b)[0]) for b in val_batches]
        return float(np.mean(losses))

    def save(step: int) -> None:
        """Checkpoint (a collective under DDP: every rank's RNG state goes into it; only rank 0 writes)."""
        rank_rng = [ckpt.rng_state()]
        if world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, ckpt.rng_state())
            rank_rng = [cast(dict[str, torch.Tensor], r) for r in gathered]
        if main:
            ckpt.save_checkpoint(
                ckpt_dir,
                model=model,
                ema=ema,
                stats=stats,
                train_config=config,
                step=step,
                optimizer=optimizer,
                extra_state={"world_size": world},
                rank_rng=rank_rng,
            )

    # ---- the loop ------------------------------------------------------------------------------------
    from tqdm import tqdm

    params = sum(p.numel() for p in model.parameters())
    if main:
        print(
            f"[lbm train] {config.name}: {policy_cfg.family} policy, {params / 1e6:.2f}M params "
            f"({sum(p.numel() for p in trainable) / 1e6:.2f}M trained), mode={config.mode}"
            f"{'/' + config.finetune.variant if init else ''}, {len(train_data)} windows, "
            f"{world} process(es), {'bf16' if use_bf16 else 'fp32'}, steps {start}->{config.steps}"
        )
    bar = tqdm(total=config.steps, initial=start, disable=not main, dynamic_ncols=True, desc="train")
    model.train()
    t0, seen, last_val, loss_value = time.perf_counter(), 0, None, float("nan")
    step = start
    for batch in loader:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, metrics = net(batch)
        if not torch.isfinite(loss):
            bar.close()
            raise LbmError(
                f"Training loss became {float(loss.detach())} at step {step}; training stopped. The last good checkpoint "
                f"({ckpt_dir if ckpt_dir.exists() else 'none written yet'}) is intact. Lower --optim.lr, keep "
                "--optim.grad-clip on, or audit the data (`lbm data audit`) for NaN or huge values."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, o.grad_clip if o.grad_clip > 0 else float("inf"))
        if not torch.isfinite(grad_norm):
            bar.close()
            raise LbmError(
                f"Gradient norm became {float(grad_norm)} at step {step}; training stopped with the last good "
                "checkpoint intact. Lower --optim.lr."
            )
        optimizer.step()
        d = min(o.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm.detach(), 1 - d)
        step += 1
        seen += config.batch_size
        loss_value = metrics["loss"]
        if step % config.log_every == 0 or step == config.steps:
            rate = seen / (time.perf_counter() - t0)
            log(
                step,
                {
                    "train/loss": loss_value,
                    "train/lr": lr_at(step - 1, config),
                    "train/grad_norm": float(grad_norm),
                    "train/samples_per_s": rate,
                    **{f"train/{k}": v for k, v in metrics.items() if k != "loss"},
                },
            )
            bar.set_postfix(loss=f"{loss_value:.4f}", val=f"{last_val:.4f}" if last_val is not None else "-", sps=f"{rate:.0f}")
        if main and (config.val_every and step % config.val_every == 0 or step == config.steps):
            last_val = validate()
            if last_val is not None:
                log(step, {"val/loss": last_val})
        if step % config.save_every == 0 or step == config.steps:
            save(step)
        bar.update(1)
        if (
            config.max_minutes
            and step < config.steps
            and _all_agree(time.perf_counter() - t0 > 60 * config.max_minutes, world, device)
        ):
            save(step)
            if main:
                print(
                    f"[lbm train] time limit of {config.max_minutes} min reached at step {step}; saved. Continue with --resume."
                )
            break
    bar.close()
    if world > 1:
        import torch.distributed as dist

        # DDP must keep replicas identical; check it instead of trusting it, and record the proof.
        digest = float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters())))
        digests: list[Any] = [None] * world
        dist.all_gather_object(digests, digest)
        if main:
            state_file = ckpt_dir / "trainer" / "state.json"
            state = json.loads(state_file.read_text())
            state_file.write_text(json.dumps({**state, "rank_weight_digests": digests}, indent=1))
        dist.barrier()
        if len(set(digests)) != 1:
            raise LbmError(f"DDP replicas diverged (weight digests {digests}); this is a bug, please report it.")
    if main:
        elapsed = time.perf_counter() - t0
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"lbm train {config.name}", show_header=False)
        for k, v in [
            ("policy", f"{policy_cfg.family} ({params / 1e6:.2f}M params)"),
            ("steps", f"{start} -> {step}"),
            ("final train loss", f"{loss_value:.4f}"),
            ("final val loss (EMA)", "-" if last_val is None else f"{last_val:.4f}"),
            ("samples/s", f"{seen / max(elapsed, 1e-9):.0f}"),
            ("wall time", f"{elapsed:.1f} s"),
            ("checkpoint", str(ckpt_dir)),
        ]:
            table.add_row(k, v)
        Console().print(table)
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()
        if wandb_run is not None:
            wandb_run.finish()
    return ckpt_dir
