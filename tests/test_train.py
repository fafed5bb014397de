"""The training loop, checkpoints, finetune variants, resume, DDP and their error messages."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lbm.errors import LbmError
from lbm.policies import POLICIES
from lbm.schema import Observation
from lbm.train import PRESETS, get_preset, load_policy, train
from test_policies_helpers import INSTRUCTIONS, tiny_embodiment, write_tiny_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    # A private embedding cache: the first training run embeds with the real encoder, later ones reuse it.
    os.environ["LBM_CACHE_DIR"] = str(root / "cache")
    write_tiny_dataset(root / "data")
    write_tiny_dataset(root / "new-task", episodes=4, seed=1)
    return root


def _cfg(workdir, family="flow", steps=30, name="run", **kw):
    base = get_preset(f"tiny-{family}")
    settings = {
        "name": name,
        "out_dir": str(workdir / name),
        "steps": steps,
        "batch_size": 8,
        "precision": "fp32",
        "tensorboard": False,
        "threads": 1,
        "val_every": 10,
        "save_every": 10,
        "log_every": 5,
        "data": dataclasses.replace(base.data, roots=(str(workdir / "data"),)),
    }
    return dataclasses.replace(base, **{**settings, **kw})


def _obs(emb=None):
    e = emb or tiny_embodiment()
    return [Observation(np.linspace(-1, 1, e.state_dim), {}, INSTRUCTIONS[1], e.name)]


def _act(policy, seed=3):
    """One chunk for the test observation, in an episode seeded ``seed``."""
    return policy.predict_chunk(_obs(), [policy.reset(seed)]).actions


def test_real_sentence_encoder_embeds_instructions():
    from lbm.policies.language import encode

    v = encode(["open the drawer", "close the drawer", "open the window"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]  # related instructions embed close


@pytest.mark.parametrize("family", sorted(POLICIES))
def test_train_save_load_round_trip(family, workdir):
    path = train(_cfg(workdir, family, name=f"rt-{family}"))
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "stats.json", "instructions.safetensors", "trainer", "COMPLETE"} <= files
    lines = [json.loads(x) for x in (path.parent / "metrics.jsonl").read_text().splitlines()]
    assert any("val/loss" in x for x in lines) and all(np.isfinite(x.get("train/loss", 0)) for x in lines)
    a, b = load_policy(path), load_policy(path)
    assert not a.training
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    out_a, out_b = _act(a), _act(b)  # the same episode seed: the same noise, the same actions
    assert out_a.shape == (1, 16, 3) and np.array_equal(out_a, out_b)
    assert np.all(np.abs(out_a) <= 1)
    # the checkpoint's model weights are the EMA ones, not the raw training weights
    raw = load_file(str(path / "trainer" / "model.safetensors"))
    ema = load_file(str(path / "model.safetensors"))
    assert any(not torch.equal(raw[k], ema[k]) for k in ema if k.startswith("expert."))
    # inference on a known instruction never needs the encoder: it comes from the checkpoint's cache
    assert INSTRUCTIONS[1] in a.instructions


def test_resume_is_bit_for_bit(workdir, monkeypatch):
    straight = train(_cfg(workdir, steps=20, name="straight"))
    # Interrupt a 20-step run after its step-10 checkpoint, then resume it.
    calls = {"n": 0}
    original = POLICIES["flow"].compute_loss

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] > 10 and self.training:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(POLICIES["flow"], "compute_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(workdir, steps=20, name="split"))
    monkeypatch.undo()
    resumed = train(_cfg(workdir, steps=20, name="split", resume=True))
    for f in ("trainer/model.safetensors", "trainer/ema.safetensors", "model.safetensors"):
        x, y = load_file(str(straight / f)), load_file(str(resumed / f))
        assert all(torch.equal(x[k], y[k]) for k in x), f


@pytest.mark.parametrize("variant", ["full", "head_only", "lora"])
def test_finetune_variants(variant, workdir):
    pre = workdir / "rt-flow" / "checkpoint"
    if not pre.exists():
        pre = train(_cfg(workdir, "flow", name="rt-flow"))
    cfg = _cfg(
        workdir,
        name=f"ft-{variant}",
        steps=15,
        mode="finetune",
        finetune=dataclasses.replace(get_preset("finetune-flow-small-full").finetune, init_from=str(pre), variant=variant),
    )
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, roots=(str(workdir / "new-task"),)))
    path = train(cfg)
    before, after = load_file(str(pre / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert set(before) == set(after), "LoRA must be merged into plain weights"
    trunk = [k for k in before if k.startswith("expert.blocks.0.obs.qkv.weight")]
    changed = not torch.equal(before[trunk[0]], after[trunk[0]])
    assert changed == (variant != "head_only")
    assert not torch.equal(before["head.action_out_w"], after["head.action_out_w"])
    assert _act(load_policy(path)).shape == (1, 16, 3)


def test_finetune_keeps_checkpoint_architecture_and_says_what_it_ignores(workdir, capsys):
    pre = workdir / "rt-flow" / "checkpoint"
    if not pre.exists():
        pre = train(_cfg(workdir, "flow", name="rt-flow"))
    pre_policy = json.loads((pre / "config.json").read_text())["policy"]
    policy = dataclasses.replace(get_preset("tiny-flow").policy, dropout=0.1, d_model=96, flow_steps=3)
    cfg = _cfg(
        workdir,
        name="ft-overrides",
        steps=2,
        mode="finetune",
        policy=policy,
        finetune=dataclasses.replace(get_preset("finetune-flow-small-full").finetune, init_from=str(pre)),
    )
    out = json.loads((train(cfg) / "config.json").read_text())["policy"]
    assert out == {**pre_policy, "dropout": 0.1}  # a training-time field applies; architecture and sampling do not
    said = capsys.readouterr().out
    assert "not applied" in said and "d_model=96 (checkpoint: 64)" in said and "flow_steps=3 (checkpoint: 10)" in said


def test_wandb_logging_offline_or_a_clear_error(workdir, monkeypatch):
    cfg = _cfg(workdir, name="wb", steps=10, wandb="lbm-test")
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(LbmError, match=r"pip install 'lbm\[wandb\]'"):
            train(cfg)
        return
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(cfg)
    logged = list((workdir / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert logged and logged[0].stat().st_size > 0


def _torchrun_train(workdir, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "lbm.cli",
        "train",
        "tiny-flow",
        "--data.roots",
        str(workdir / "data"),
        "--out-dir",
        str(out),
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--no-tensorboard",
        "--val-every",
        "0",
        *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "checkpoint" / "trainer" / "state.json").read_text())


def test_ddp_two_processes_end_identical_and_resume_exactly(workdir):
    state = _torchrun_train(workdir, workdir / "ddp", "--steps", "4")
    assert state["world_size"] == 2 and len(state["rank_weight_digests"]) == 2
    assert state["rank_weight_digests"][0] == state["rank_weight_digests"][1]
    # Stopped by the time limit after its first step, then resumed: every rank restores its own
    # noise stream, so the weights equal the uninterrupted run's (rank 0's stream on both would not).
    assert _torchrun_train(workdir, workdir / "ddp-resumed", "--steps", "4", "--max-minutes", "1e-9")["step"] == 1
    resumed = _torchrun_train(workdir, workdir / "ddp-resumed", "--steps", "4", "--resume")
    assert resumed["rank_weight_digests"] == state["rank_weight_digests"]
    a = load_file(str(workdir / "ddp" / "checkpoint" / "trainer" / "model.safetensors"))
    b = load_file(str(workdir / "ddp-resumed" / "checkpoint" / "trainer" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_last_good_checkpoint(workdir, monkeypatch):
    cfg = _cfg(workdir, name="nan", steps=20)
    calls = {"n": 0}
    original = POLICIES["flow"].compute_loss

    def poisoned(self, batch):
        calls["n"] += 1
        loss, metrics = original(self, batch)
        return (loss * float("nan") if calls["n"] > 12 else loss), metrics

    monkeypatch.setattr(POLICIES["flow"], "compute_loss", poisoned)
    with pytest.raises(LbmError, match="last good checkpoint"):
        train(cfg)
    good = json.loads((workdir / "nan" / "checkpoint" / "config.json").read_text())
    assert good["step"] == 10
    monkeypatch.undo()
    assert _act(load_policy(workdir / "nan" / "checkpoint")).shape == (1, 16, 3)


def test_bad_checkpoints_and_mismatches(workdir):
    src = workdir / "rt-flow" / "checkpoint"
    if not src.exists():
        src = train(_cfg(workdir, "flow", name="rt-flow"))
    import shutil

    bad = workdir / "corrupt"
    shutil.copytree(src, bad, dirs_exist_ok=True)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LbmError, match="corrupt"):
        load_policy(bad)
    (bad / "stats.json").unlink()
    with pytest.raises(LbmError, match="stats"):
        load_policy(bad)
    with pytest.raises(LbmError, match="does not exist"):
        load_policy(workdir / "nowhere")
    with pytest.raises(LbmError, match="Did you mean 'tiny-flow'"):
        get_preset("tiny-flw")
    # finetuning a checkpoint on data of the same-named embodiment with other dims
    other = write_tiny_dataset(workdir / "wide", episodes=3, embodiment=tiny_embodiment(state_dim=9))
    cfg = _cfg(
        workdir,
        name="mismatch",
        steps=5,
        mode="finetune",
        finetune=dataclasses.replace(get_preset("finetune-flow-small-full").finetune, init_from=str(src)),
    )
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, roots=(str(other),)))
    with pytest.raises(LbmError, match="state/action dims"):
        train(cfg)


def test_policy_info_cli_and_presets(workdir, capsys):
    from lbm.cli import main

    src = workdir / "rt-flow" / "checkpoint"
    if not src.exists():
        src = train(_cfg(workdir, "flow", name="rt-flow"))
    assert main(["policy", "info", str(src)]) == 0
    out = capsys.readouterr().out
    assert "flow" in out and "toy-arm" in out and "instructions cached" in out
    assert main(["policy", "info", str(workdir / "nowhere")]) == 2
    assert {"tiny-flow", "mt10-flow-small", "mt10-diffusion-small", "mt10-discrete-small", "finetune-flow-small-lora"} <= set(
        PRESETS
    )
    assert all(name == cfg.name for name, cfg in PRESETS.items())


def test_episode_subsets_are_nested_and_seeded():
    from lbm.train.loop import episode_subset

    small, mid, full = (episode_subset(20, f, seed=3) for f in (0.1, 0.25, 1.0))
    assert len(small) == 2 and len(mid) == 5 and full == list(range(20))
    assert set(small) <= set(mid) <= set(full)
    assert episode_subset(20, 0.25, seed=4) != mid  # another seed draws another subset
    assert episode_subset(3, 0.01, seed=0) and len(episode_subset(3, 0.01, seed=0)) == 1
    with pytest.raises(LbmError):
        episode_subset(10, 0.0, seed=0)


def test_a_task_filter_trains_on_those_tasks_alone_and_normalizes_with_their_statistics(workdir):
    from lbm.data.dataset import EpisodeDataset
    from lbm.schema import ACTION, STATE
    from lbm.train.checkpoint import load_stats_of

    ds = EpisodeDataset(workdir / "data")
    only = ds.episodes_of_tasks(["tiny0"])
    assert only and len(only) < ds.num_episodes and {ds.episode_sim_task(i) for i in only} == {"tiny0"}
    everything = ds.stats_of(list(range(ds.num_episodes)))  # the same computation as the stats the writer stored
    np.testing.assert_allclose(everything[STATE].mean, ds.stats[STATE].mean, rtol=1e-5, atol=1e-6)
    cfg = _cfg(workdir, name="tiny0-only", steps=10, val_every=0)
    ckpt = train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tasks=("tiny0",))))
    stored, expected = load_stats_of(ckpt)[ds.embodiment.name], ds.stats_of(only)
    for key in (STATE, ACTION):
        np.testing.assert_allclose(stored[key].mean, expected[key].mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stored[key].max, expected[key].max, rtol=1e-5, atol=1e-6)
    assert not np.allclose(stored[STATE].mean, ds.stats[STATE].mean)  # not the whole dataset's statistics


def test_a_task_filter_that_selects_nothing_is_refused(workdir, tmp_path):
    other = write_tiny_dataset(tmp_path / "other", episodes=2, sim_task="other")
    cfg = _cfg(workdir, name="never")
    with pytest.raises(LbmError, match=r"Unknown task 'tiny7'.*tiny0"):
        train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tasks=("tiny7",))))
    both = dataclasses.replace(cfg.data, roots=(*cfg.data.roots, str(other)), tasks=("tiny0",))
    with pytest.raises(LbmError, match="selects no episode of .*other"):
        train(dataclasses.replace(cfg, data=both))
    assert not (workdir / "never").exists()


def _save_args(workdir):
    from lbm.data.dataset import EpisodeDataset
    from lbm.policies import InstructionCache, build_policy, policy_config

    ds = EpisodeDataset(workdir / "data")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cache = InstructionCache({s: rng.normal(size=384).astype(np.float32) for s in INSTRUCTIONS}, use_user_cache=False)
    model = build_policy(policy_config("flow", "tiny"), [ds.embodiment], {ds.embodiment.name: ds.stats}, cache)
    optimizer = torch.optim.AdamW(model.parameters())
    return {"model": model, "ema": model, "stats": {ds.embodiment.name: ds.stats}, "train_config": {}, "optimizer": optimizer}


class _Killed(BaseException):
    """Stands for SIGKILL: not an OSError, so nothing in the save path handles it."""


class _KillAt:
    """Wraps the file-system calls of a save and 'kills' the process at call number ``at`` (0-based)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def wrap(self, real):
        def step(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at + 1:
                raise _Killed
            return real(*args, **kwargs)

        return step


def test_checkpoint_save_killed_at_any_step_loses_nothing(workdir, monkeypatch, tmp_path):
    """Kill the save at each of its file-system steps (fsync, rename, delete); recover() always finds a complete checkpoint."""
    from lbm.train import checkpoint as ckpt

    args = _save_args(workdir)
    k, outcomes, killed = 0, [], True
    while killed:
        path = tmp_path / f"k{k}" / "checkpoint"
        ckpt.save_checkpoint(path, step=1, **args)
        kill = _KillAt(k)
        for module, name in ((ckpt.os, "replace"), (ckpt.os, "fsync"), (ckpt.shutil, "rmtree")):
            monkeypatch.setattr(module, name, kill.wrap(getattr(module, name)))
        try:
            ckpt.save_checkpoint(path, step=2, **args)
            killed = False
        except _Killed:
            pass
        monkeypatch.undo()
        ckpt.recover(path)
        assert ckpt.is_complete(path), f"killed at step {k}: no complete checkpoint after recover()"
        outcomes.append(int((path / ckpt.COMPLETE).read_text()))
        assert not path.with_name("checkpoint.new").exists() and not path.with_name("checkpoint.old").exists()
        assert load_policy(path).horizon == args["model"].horizon
        k += 1
    assert k > 5, f"the save has only {k} file-system steps"
    assert outcomes[0] == 1 and outcomes[-1] == 2 and outcomes == sorted(outcomes), outcomes


def test_train_refuses_to_replace_a_finished_run(workdir):
    first = train(_cfg(workdir, steps=2, name="twice", save_every=2, val_every=0))
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(LbmError, match="already holds a checkpoint.*--resume.*--overwrite"):
        train(_cfg(workdir, steps=2, name="twice", save_every=2, val_every=0))
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    again = train(_cfg(workdir, steps=2, name="twice", save_every=2, val_every=0, overwrite=True))
    assert again == first and ckpt_step(again) == 2


def ckpt_step(path):
    return json.loads((path / "config.json").read_text())["step"]


# (field path, bad value, words the error must contain)
BAD_TRAIN_SETTINGS = [
    ("steps", 0, "--steps must be >= 1"),
    ("batch_size", 0, "--batch-size must be >= 1"),
    ("optim.lr", 0.0, "--optim.lr must be a finite number > 0"),
    ("optim.lr", float("nan"), "--optim.lr must be a finite number"),
    ("optim.weight_decay", -1.0, "--optim.weight-decay"),
    ("optim.beta2", 1.0, "--optim.beta2 must be in [0, 1)"),
    ("optim.ema_decay", -0.1, "--optim.ema-decay"),
    ("optim.warmup_steps", -1, "--optim.warmup-steps must be >= 0"),
    ("save_every", 0, "--save-every must be >= 1"),
    ("data.fraction", 0.0, "--data.fraction must be in (0, 1]"),
    ("data.fraction", 1.5, "--data.fraction"),
    ("data.roots", (), "no training data"),
    ("data.weights", (1.0, 2.0), "--data.weights has 2 values for 1 datasets"),
    ("data.weights", (-1.0,), "non-negative finite"),
    ("max_minutes", float("inf"), "--max-minutes"),
]


@pytest.mark.parametrize(("field", "value", "words"), BAD_TRAIN_SETTINGS, ids=[f"{f}={v}" for f, v, _ in BAD_TRAIN_SETTINGS])
def test_bad_training_settings_are_refused_before_any_work(workdir, field, value, words):
    cfg = _cfg(workdir, name="never")
    if "." in field:
        group, name = field.split(".")
        cfg = dataclasses.replace(cfg, **{group: dataclasses.replace(getattr(cfg, group), **{name: value})})
    else:
        cfg = dataclasses.replace(cfg, **{field: value})
    with pytest.raises(LbmError) as info:
        train(cfg)
    assert words in str(info.value)
    assert not (workdir / "never").exists(), "a refused run must not leave an output folder"


def test_duplicate_roots_are_refused(workdir):
    cfg = _cfg(workdir, name="never")
    root = cfg.data.roots[0]
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, roots=(root, root + "/.")))
    with pytest.raises(LbmError, match="more than once"):
        train(cfg)


# (file under the checkpoint, how it is damaged, words the error must contain)
DAMAGED_RESUME = [
    ("trainer/state.json", b"{not json", "state.json"),
    ("trainer/state.json", b'{"step": "ten"}', "state.json"),
    ("trainer/optimizer.safetensors", b"truncated", "optimizer.safetensors"),
    ("trainer/model.safetensors", None, "model.safetensors"),
]


@pytest.mark.parametrize(
    ("name", "content", "words"), DAMAGED_RESUME, ids=[f"{n}:{'missing' if c is None else c[:8]}" for n, c, _ in DAMAGED_RESUME]
)
def test_damaged_resume_files_are_named(workdir, name, content, words):
    import shutil

    src = workdir / "resumable" / "checkpoint"
    if not src.exists():
        train(_cfg(workdir, steps=2, name="resumable", save_every=2, val_every=0))
    run = workdir / f"damaged-{abs(hash((name, content)))}"
    shutil.copytree(src.parent, run)
    target = run / "checkpoint" / name
    if content is None:
        target.unlink()
    else:
        target.write_bytes(content)
    with pytest.raises(LbmError) as info:
        train(_cfg(workdir, steps=4, name=run.name, save_every=2, val_every=0, resume=True))
    assert words in str(info.value)
