"""Safety inside lbm eval: --shield on real Meta-World, records, violation audit, the safety table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lbm.eval import records as rec_mod
from lbm.eval.runner import EvalConfig, run_evaluation
from lbm.safety.report import per_1000_steps, safety_table, shield_comparison
from stub_policies import StubPolicy


class AdversarialPolicy(StubPolicy):
    """NaN, inf, 1e9 and drift to a workspace face, in turns: what a broken policy might emit."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.t = 0

    def actions(self, observations):
        self.t += 1
        chunk = np.tile(np.array([3.0, -3.0, 3.0, 1.0], np.float32), (len(observations), 4, 1))
        kind = self.t % 4
        if kind == 1:
            chunk[:, 1, 0] = np.nan
        elif kind == 2:
            chunk[:, :, :] = self.rng.uniform(-1e9, 1e9, size=chunk.shape)
        elif kind == 3:
            chunk[:, 2, 2] = np.inf
        return chunk


def load(spec, seed):  # module-level so that it could also go to worker processes
    if Path(spec.source).name == "adversary":
        return AdversarialPolicy(seed)
    from lbm.eval.runner import load_policy_spec

    return load_policy_spec(spec, seed)


def test_shielded_eval_lets_no_violation_through_and_records_interventions(tmp_path):
    (tmp_path / "adversary").mkdir()
    specs = [f"bad={tmp_path / 'adversary'}", "oracle=expert"]
    on = EvalConfig(tasks="reach-v3", trials=2, max_steps=60, out=tmp_path / "on", progress=False, shield=True)
    run_evaluation(replace(on, policy=tuple(specs)), loader=load)
    df = rec_mod.load_records(tmp_path / "on")
    bad, oracle = df[df.policy == "bad"], df[df.policy == "oracle"]
    # NaN/inf no longer end the trial: the shield holds and the rollout runs to its limit.
    assert (bad["failure_reason"] == "max_steps").all() and (bad["steps"] == 60).all()
    assert (df["violations"] == 0).all()  # nothing unsafe reached the simulator
    assert (bad["proposed_violations"] > 0).all() and (bad["shield_holds"] > 0).all()
    assert bad["shield_limits"].str.contains("nonfinite").all() and bad["shield_limits"].str.contains("workspace").all()
    assert oracle["success"].all() and (oracle["shield"]).all()

    off = EvalConfig(tasks="reach-v3", trials=2, max_steps=60, out=tmp_path / "off", progress=False)
    run_evaluation(replace(off, policy=tuple(specs)), loader=load)
    df_off = rec_mod.load_records(tmp_path / "off")
    assert (df_off.loc[df_off.policy == "bad", "failure_reason"].str.startswith("bad_actions")).all()
    assert (~df_off["shield"]).all() and (df_off["shield_interventions"] == 0).all()

    table = safety_table(df).set_index("policy")
    assert table.loc["bad", "interventions_per_1000"] > 100 and table.loc["bad", "violations_per_1000"] == 0
    assert table.loc["oracle", "success"] == 1.0
    cmp = shield_comparison(df_off, df).set_index("policy")
    assert cmp.loc["oracle", "success_on"] == cmp.loc["oracle", "success_off"] == 1.0
    assert cmp.loc["oracle", "n_pairs"] == 2


def test_unshielded_eval_counts_workspace_violations_reaching_the_sim(tmp_path):
    class Drift(StubPolicy):
        def actions(self, observations):
            return np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (len(observations), 8, 1))  # out through +x

    (tmp_path / "drift").mkdir()
    cfg = EvalConfig(tasks="reach-v3", trials=1, max_steps=120, out=tmp_path / "ev", progress=False)
    run_evaluation(replace(cfg, policy=(f"drift={tmp_path / 'drift'}",)), loader=lambda spec, seed: Drift())
    df = rec_mod.load_records(tmp_path / "ev")
    assert df["violations"].iloc[0] > 0 and df["violations"].iloc[0] == df["proposed_violations"].iloc[0]


def test_cli_shield_prints_the_safety_table_blind(tmp_path, capsys):
    from lbm.cli import main as lbm_main

    code = lbm_main(
        [
            "eval",
            "--policy",
            "oracle=expert",
            "--tasks",
            "reach-v3",
            "--trials",
            "2",
            "--max-steps",
            "40",
            "--out",
            str(tmp_path / "ev"),
            "--shield",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "safety by blind policy id" in printed and "violations" in printed and "oracle" not in printed


def test_per_1000_steps_interval_covers_the_truth_and_checks_input():
    rng = np.random.default_rng(1)
    steps = np.full(40, 100)
    events = rng.binomial(steps, 0.02)
    rate, lo, hi = per_1000_steps(events, steps)
    assert lo <= rate <= hi and lo < 20 < hi
    with pytest.raises(Exception, match="equal"):
        per_1000_steps(np.ones(3), np.ones(4))


def test_safety_table_rejects_old_records():
    with pytest.raises(Exception, match="safety columns"):
        safety_table(pd.DataFrame({"policy": ["a"], "success": [True], "steps": [3]}))


# ---- failure monitor end to end: features in eval, training, --monitor ------------------------------


def tiny_policy(spec, seed):
    """An untrained tiny flow policy for Meta-World (random weights: it fails, and that is fine)."""
    import torch

    from lbm.policies import InstructionCache, build_policy, policy_config
    from lbm.sim import METAWORLD_EMBODIMENT as E
    from lbm.sim import get_task

    torch.manual_seed(0)
    torch.set_num_threads(1)
    from stub_policies import unit_stats

    stats = unit_stats(E)
    rng = np.random.default_rng(0)
    cache = InstructionCache(
        {s: rng.normal(size=384).astype(np.float32) for s in get_task("reach-v3").instructions}, use_user_cache=False
    )
    return build_policy(policy_config("flow", "tiny"), [E], stats, cache)


def test_eval_with_shield_and_monitor_end_to_end(tmp_path):
    from lbm.safety.monitor import FEATURES_DIR, FailureMonitor, read_rollouts, train_monitor

    (tmp_path / "ckpt").mkdir()
    spec = [f"tiny={tmp_path / 'ckpt'}", "oracle=expert"]
    base = dict(tasks="reach-v3", trials=12, max_steps=30, progress=False, envs_per_worker=24)
    # Built-in policies have no features: asking for them fails those trials with a clear reason.
    run_evaluation(EvalConfig(policy=tuple(spec), out=tmp_path / "train", features=True, shield=True, **base), loader=_loader)
    df = rec_mod.load_records(tmp_path / "train")
    assert df.loc[df.policy == "oracle", "failure_reason"].str.contains("returns no features").all()
    tiny = df[df.policy == "tiny"]
    assert (tiny["violations"] == 0).all()
    feats, success, tasks = read_rollouts([tmp_path / "train"])
    assert len(feats) == 12 and all(f.ndim == 2 and len(f) == 30 for f in feats)
    assert len(list((tmp_path / "train" / FEATURES_DIR).glob("*.npy"))) == 12

    # Untrained policies never succeed, so fabricate labels for the monitor's training from the
    # stored features: the mechanics (cut, fit, calibrate, save, load, alert) are what is tested here.
    import lbm.safety.monitor as mon

    fake = [i % 3 != 0 for i in range(len(feats))]
    mon.read_rollouts = lambda folders: (feats, fake, tasks)  # noqa: ARG005
    try:
        monitor = train_monitor([tmp_path / "train"], tmp_path / "monitor", alpha=0.2, kind="mahalanobis")
    finally:
        mon.read_rollouts = read_rollouts
    loaded = FailureMonitor.load(tmp_path / "monitor")
    np.testing.assert_allclose(loaded.score(feats[0]), monitor.score(feats[0]))

    run_evaluation(
        EvalConfig(policy=(spec[0],), out=tmp_path / "test", monitor=tmp_path / "monitor", shield=True, features=True, **base),
        loader=_loader,
    )
    df = rec_mod.load_records(tmp_path / "test")
    assert "alert_step" in df and df["alert_step"].between(-1, 29).all()
    for r in df.itertuples():  # the recorded alert is the monitor's verdict on that trial's own features
        f = np.load(mon.features_path(tmp_path / "test", r.policy_id, r.task, r.shift, r.trial))
        alarm = loaded.alarm_step(f)
        assert r.alert_step == (-1 if alarm is None else alarm)


def _loader(spec, seed):
    if Path(spec.source).name == "ckpt":
        return tiny_policy(spec, seed)
    from lbm.eval.runner import load_policy_spec

    return load_policy_spec(spec, seed)
