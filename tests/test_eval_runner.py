"""Runner mechanics on a tiny fake simulator (fast): blinding, schedule, batching, resume, crashes.

The fake env replaces ``lbm.sim``'s entry points with monkeypatch, so these tests check the
runner's bookkeeping without MuJoCo. ``test_eval_sim.py`` runs the same runner on Meta-World.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import lbm.sim
from lbm.errors import LbmError
from lbm.eval import records as rec_mod
from lbm.eval.manifest import audit_blinding, read_blinding
from lbm.eval.runner import EvalConfig, run_evaluation
from lbm.eval.runner.sources import PolicySpec, parse_policy_specs
from lbm.eval.schedule import blind_ids, make_schedule, split_shift_conditions
from lbm.policies.base import Chunk, ChunkRequest, Policy
from lbm.schema import Embodiment, Observation

EMB = Embodiment("fake-1d", state_dim=2, action_dim=1, action_low=(-0.2,), action_high=(0.2,))
FAKE_TASKS = {"line-v0": 1.0, "line-far-v0": 2.0}


@dataclass
class FakeStep:
    observation: Observation
    reward: float
    success: bool
    done: bool
    info: dict = field(default_factory=dict)


class FakeEnv:
    """1-D point that must reach a goal; the initial position is a function of the seed only."""

    embodiment = EMB
    spec = SimpleNamespace(goal=(), fixed_init_states=0)  # no symbolic goal, no fixed initial states

    def __init__(self, task: str, shifts: str = "none", max_steps: int | None = None, **_) -> None:
        self.task, self.goal, self.max_steps = task, FAKE_TASKS[task], max_steps or 40
        self.noise = 0.05 if shifts != "none" else 0.0
        self.resets: list[tuple[int, float]] = []

    def _obs(self) -> Observation:
        return Observation(state=np.array([self.x, self.goal], np.float32), instruction=self.task, embodiment=EMB.name)

    def reset(self, seed: int) -> Observation:
        rng = np.random.default_rng(seed)
        self.x, self.t = float(rng.uniform(-1, 0)) - self.noise, 0
        self.resets.append((seed, self.x))
        RESETS.append((self.task, seed, self.x))
        return self._obs()

    def step(self, action) -> FakeStep:
        self.x += float(np.asarray(action).reshape(-1)[0])
        self.t += 1
        success = abs(self.x - self.goal) < 0.1
        return FakeStep(self._obs(), -abs(self.x - self.goal), success, success or self.t >= self.max_steps)

    def expert_action(self) -> np.ndarray:
        return np.clip([self.goal - self.x], -0.2, 0.2).astype(np.float32)

    def close(self) -> None:
        pass


RESETS: list[tuple[str, int, float]] = []


@pytest.fixture(autouse=True)
def fake_sim(monkeypatch):
    RESETS.clear()

    def resolve_tasks(spec: str) -> list[str]:
        out = [t.strip() for t in spec.split(",")]
        for t in out:
            if t not in FAKE_TASKS:
                raise LbmError(f"Unknown task {t!r}")
        return out

    def parse_shifts(spec: str):
        for part in spec.split(","):
            if part not in ("none", "obs_noise:low"):
                raise LbmError(f"Unknown shift {part!r}")
        return () if spec == "none" else tuple(SimpleNamespace(spec=p) for p in spec.split(","))

    monkeypatch.setattr(lbm.sim, "make_env", lambda task, **kw: FakeEnv(task, **kw), raising=False)
    monkeypatch.setattr(lbm.sim, "resolve_tasks", resolve_tasks, raising=False)
    monkeypatch.setattr(lbm.sim, "parse_shifts", parse_shifts, raising=False)
    monkeypatch.setattr(lbm.sim, "eval_seed", lambda task, trial: 2**30 + trial, raising=False)
    monkeypatch.setattr(lbm.sim, "get_task", lambda task: FakeEnv.spec, raising=False)


class NamedSpy:
    """A trained-policy stand-in (the Policy contract) that records the batches and seeds it is called with."""

    embodiments = {EMB.name: EMB}
    horizon, history, execute_steps = 4, 1, None

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.seeds: list[int | None] = []

    def describe(self) -> dict:
        return {"family": type(self).__name__, "cameras": []}

    def reset(self, seed=None):
        self.seeds.append(seed)
        return seed

    def actions(self, observations) -> np.ndarray:
        goal_minus_x = np.array([o.state[1] - o.state[0] for o in observations], np.float32)
        return np.clip(goal_minus_x, -0.2, 0.2)[:, None, None].repeat(4, axis=1)

    def predict_chunk(self, observations, states, request=ChunkRequest()):
        self.batch_sizes.append(len(observations))
        return Chunk(self.actions(observations), tuple(states))


class Crashing(NamedSpy):
    def actions(self, observations):
        raise RuntimeError("CUDA out of memory (simulated)")


class Sleepy(NamedSpy):
    def actions(self, observations):
        time.sleep(0.05)
        return np.zeros((len(observations), 4, 1), np.float32)  # never reaches the goal: only the clock ends it


class NaNPolicy(NamedSpy):
    def actions(self, observations):
        return np.full((len(observations), 2, 1), np.nan, np.float32)


SPIES: dict[str, object] = {}


def loader(spec: PolicySpec, seed: int):
    from lbm.eval.runner import load_policy_spec

    if spec.builtin:
        return load_policy_spec(spec, seed)
    return SPIES[Path(spec.source).name]


@pytest.fixture()
def ckpts(tmp_path):
    SPIES.clear()
    made = {}
    for name, cls in (("spy", NamedSpy), ("crash", Crashing), ("sleepy", Sleepy), ("nan", NaNPolicy)):
        d = tmp_path / "ckpt" / name
        d.mkdir(parents=True)
        SPIES[name] = cls()
        made[name] = str(d)
    return made


def cfg(tmp_path, policy=("expert",), **kw) -> EvalConfig:
    base = dict(
        policy=tuple(policy), tasks="line-v0,line-far-v0", trials=3, out=tmp_path / "ev", envs_per_worker=4, progress=False
    )
    base.update(kw)
    return EvalConfig(**base)


def test_the_spies_honour_the_policy_contract():
    assert isinstance(NamedSpy(), Policy)


def test_schedule_is_seeded_interleaved_and_complete():
    ids = blind_ids(["a", "b", "c"], seed=0)
    assert ids == blind_ids(["a", "b", "c"], seed=0)
    assert ids != blind_ids(["a", "b", "c"], seed=1)
    assert all(v.startswith("p-") and len(v) == 6 for v in ids.values()) and len(set(ids.values())) == 3
    seeds = {(t, i): 100 + i for t in ("t1", "t2") for i in range(5)}
    s0 = make_schedule(list(ids.values()), ["t1", "t2"], ["none", "x"], 5, seeds, seed=0)
    assert s0 == make_schedule(list(ids.values()), ["t1", "t2"], ["none", "x"], 5, seeds, seed=0)
    assert s0 != make_schedule(list(ids.values()), ["t1", "t2"], ["none", "x"], 5, seeds, seed=1)
    keys = [it.key for it in s0]
    assert len(keys) == len(set(keys)) == 3 * 2 * 2 * 5
    assert keys != sorted(keys)
    # Paired: every policy sees the same seed for the same (task, trial).
    for it in s0:
        assert it.seed == 100 + it.trial


def test_policy_specs_and_shift_conditions(tmp_path):
    assert parse_policy_specs(["expert"]) == [PolicySpec("expert", "expert")]
    assert parse_policy_specs(["o=random"])[0].source == "random"
    for bad in (["mine=/no/such/ckpt"], ["mine=expret"], ["a=expert", "a=random"], ["noequals"], [], ["bad name=expert"]):
        with pytest.raises(LbmError):
            parse_policy_specs(bad)
    with pytest.raises(LbmError, match="expert"):  # suggests the built-in
        parse_policy_specs(["mine=expret"])
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(LbmError, match="folder"):
        parse_policy_specs([f"m={f}"])
    assert split_shift_conditions("none, friction:high+mass:low") == ["none", "friction:high+mass:low"]
    with pytest.raises(LbmError):
        split_shift_conditions("none,none")


def test_blind_run_pairs_batches_and_records(tmp_path, ckpts):
    config = cfg(tmp_path, [f"mine={ckpts['spy']}", "oracle=expert", "chance=random"], shifts="none,obs_noise:low")
    summary = run_evaluation(config, loader=loader)
    out = config.out
    assert summary.ran == summary.total == 3 * 2 * 2 * 3
    raw = rec_mod.records_frame(rec_mod.read_journal(out / rec_mod.JOURNAL_FILE))
    # The raw records and the manifest never contain policy names.
    assert set(raw["policy"]) == set(read_blinding(out))
    for text in ((out / "manifest.json").read_text(), (out / rec_mod.JOURNAL_FILE).read_text()):
        assert "mine" not in text and "oracle" not in text and "chance" not in text
    # The journal order is the seeded schedule order, not grouped by policy.
    assert list(raw["policy"]) != sorted(raw["policy"])
    audit = audit_blinding(out)
    assert audit["ok"] and audit["recorded_sha256"] == json.loads((out / "manifest.json").read_text())["blinding_sha256"]

    df = rec_mod.load_records(out)
    assert set(df["policy"]) == {"mine", "oracle", "chance"}
    assert set(df.columns) >= {
        "policy_id",
        "task",
        "shift",
        "trial",
        "seed",
        "success",
        "steps",
        "return",
        "duration_s",
        "failure_reason",
        "latency_ms",
        "execute_steps",
        "worker",
        "timestamp",
    }
    # Paired: same seeds and identical initial states for every policy.
    seeds = df.pivot_table(index=["task", "shift", "trial"], columns="policy", values="seed")
    assert (seeds.nunique(axis=1) == 1).all()
    starts = {}
    for task, seed, x in RESETS:
        starts.setdefault((task, seed), set()).add(round(x, 12))
    assert all(len(v) <= 2 for v in starts.values())  # two shift conditions, nothing else varies
    by = df.groupby("policy")["success"].mean()
    assert by["oracle"] == 1.0 and by["mine"] == 1.0 and by["chance"] < 0.5
    assert (df.loc[~df["success"], "failure_reason"] == "max_steps").all()
    assert df.loc[df["success"], "failure_reason"].eq("").all()
    # Batched inference: the trained policy got batches wider than one env, and executed its whole 4-step chunk.
    assert max(SPIES["spy"].batch_sizes) > 1
    assert (df.loc[df["policy"] == "mine", "execute_steps"] == 4).all()
    assert (df.loc[df["policy"] == "oracle", "execute_steps"] == 1).all()
    assert df["latency_ms"].notna().all()
    assert (out / "records.parquet").exists()
    # Each trial's policy noise is seeded from (task, shift, seed): the same for every policy, recorded.
    assert df.groupby(["task", "shift", "trial"])["policy_seed"].nunique().eq(1).all()
    assert set(SPIES["spy"].seeds) == set(df.loc[df["policy"] == "mine", "policy_seed"])


def test_execute_steps_override_changes_requery_rate(tmp_path, ckpts):
    run_evaluation(cfg(tmp_path, [f"mine={ckpts['spy']}"], execute_steps=1), loader=loader)
    df = rec_mod.load_records(tmp_path / "ev")
    assert (df["execute_steps"] == 1).all()
    assert (df["chunk_calls"] == df["steps"]).all()


def test_resume_runs_exactly_the_missing_trials(tmp_path, ckpts):
    specs = (f"mine={ckpts['spy']}", "oracle=expert")
    config = cfg(tmp_path, specs)
    run_evaluation(config, loader=loader)
    journal = config.out / rec_mod.JOURNAL_FILE
    full = rec_mod.read_journal(journal)
    lines = journal.read_bytes().split(b"\n")
    # Simulate a kill mid-run: keep 5 complete records plus half of the sixth line.
    journal.write_bytes(b"\n".join(lines[:5]) + b"\n" + lines[5][: len(lines[5]) // 2])
    (config.out / "records.parquet").unlink()
    summary = run_evaluation(config, loader=loader)
    assert summary.skipped == 5 and summary.ran == len(full) - 5
    again = rec_mod.read_journal(journal)
    assert len(again) == len(full)
    key = lambda r: (r["policy"], r["task"], r["shift"], r["trial"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, full))
    assert [r["success"] for r in sorted(again, key=key)] == [r["success"] for r in sorted(full, key=key)]
    # Nothing left: a third run (policies given in another order) runs nothing.
    assert run_evaluation(replace(config, policy=specs[::-1]), loader=loader).ran == 0
    # Different settings are refused, naming what differs.
    with pytest.raises(LbmError, match="trials"):
        run_evaluation(replace(config, trials=4), loader=loader)
    with pytest.raises(LbmError, match="policies"):
        run_evaluation(replace(config, policy=("oracle=expert",)), loader=loader)
    # A tampered mapping is detected.
    (config.out / "blinding.json").write_text((config.out / "blinding.json").read_text().replace("oracle", "mine2"))
    assert not audit_blinding(config.out)["ok"]
    with pytest.raises(LbmError, match="blinding"):
        run_evaluation(config, loader=loader)


def test_crash_timeout_and_bad_actions_are_recorded_failures(tmp_path, ckpts):
    specs = [f"crash={ckpts['crash']}", f"nan={ckpts['nan']}", "oracle=expert"]
    run_evaluation(cfg(tmp_path, specs), loader=loader)
    df = rec_mod.load_records(tmp_path / "ev")
    assert len(df) == 3 * 2 * 3  # nothing dropped
    crash = df[df["policy"] == "crash"]
    assert (~crash["success"]).all() and crash["failure_reason"].str.startswith("policy_error: RuntimeError").all()
    assert df.loc[df["policy"] == "nan", "failure_reason"].str.startswith("bad_actions").all()
    assert df.loc[df["policy"] == "oracle", "success"].all()  # other policies in the same waves are unaffected
    assert math.isnan(crash["latency_ms"].iloc[0])

    run_evaluation(cfg(tmp_path, [f"slow={ckpts['sleepy']}"], out=tmp_path / "t", trial_timeout_s=0.12), loader=loader)
    df = rec_mod.load_records(tmp_path / "t")
    assert (~df["success"]).all() and df["failure_reason"].str.startswith("timeout").all()
    assert (df["steps"] < 40).all()


def test_bad_input_is_an_lbm_error(tmp_path, ckpts):
    with pytest.raises(LbmError, match="task"):
        run_evaluation(cfg(tmp_path, tasks="line-v0,nope"))
    with pytest.raises(LbmError, match="shift"):
        run_evaluation(cfg(tmp_path, shifts="none,bogus:high"))
    with pytest.raises(LbmError, match="trials"):
        run_evaluation(cfg(tmp_path, trials=0))
    with pytest.raises(LbmError, match="cameras"):
        run_evaluation(cfg(tmp_path, video=True))
    with pytest.raises(LbmError, match="does not exist"):
        run_evaluation(cfg(tmp_path, ["mine=./no/such/ckpt"]))
    with pytest.raises(LbmError):  # records with no manifest: refuse rather than mix runs
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / rec_mod.JOURNAL_FILE).write_text("")
        run_evaluation(cfg(tmp_path, out=tmp_path / "x"))
