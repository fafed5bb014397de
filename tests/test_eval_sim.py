"""The rollout runner on real Meta-World: pairing, expert vs random, video, workers, end to end."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from lbm.cli import main as lbm_main
from lbm.errors import LbmError
from lbm.eval import records as rec_mod
from lbm.eval.runner import EvalConfig, run_evaluation
from lbm.eval.runner.sources import PolicySpec
from stub_policies import StubPolicy

# Two tasks the scripted expert solves every time and uniform random actions essentially never
# (measured: reach 0/5, drawer-open 0/5 at 200 steps).
EASY = "reach-v3,drawer-open-v3"


def test_pairing_same_seeds_and_initial_conditions_under_shift(tmp_path):
    config = EvalConfig(tasks=EASY, shifts="none,obs_noise:low", trials=2, max_steps=15, out=tmp_path / "ev", progress=False)
    run_evaluation(
        replace(
            config,
            policy=(
                "oracle=expert",
                "chance=random",
            ),
        )
    )
    df = rec_mod.load_records(tmp_path / "ev")
    assert len(df) == 2 * 2 * 2 * 2
    per_cell = df.groupby(["task", "shift", "trial"]).agg(seeds=("seed", "nunique"), inits=("init_hash", "nunique"))
    assert (per_cell["seeds"] == 1).all() and (per_cell["inits"] == 1).all()
    # Different trials really start from different initial conditions, and seeds are evaluation seeds.
    assert df.groupby(["task", "shift"])["init_hash"].nunique().min() == 2
    from lbm.sim import EVAL_SEED_RANGE

    assert df["seed"].map(lambda s: s in EVAL_SEED_RANGE).all()


def test_expert_near_perfect_random_near_zero(tmp_path):
    config = EvalConfig(tasks=EASY, trials=4, out=tmp_path / "ev", progress=False)
    summary = run_evaluation(
        replace(
            config,
            policy=(
                "oracle=expert",
                "chance=random",
            ),
        )
    )
    df = rec_mod.load_records(tmp_path / "ev")
    rate = df.groupby("policy")["success"].mean()
    assert rate["oracle"] == 1.0
    assert rate["chance"] <= 0.125
    assert summary.env_steps == int(df["steps"].sum())
    assert (df.loc[(df.policy == "chance") & ~df.success, "failure_reason"] == "max_steps").all()


def test_cli_end_to_end_expert_significantly_better(tmp_path, capsys):
    out = tmp_path / "ev"
    code = lbm_main(
        [
            "eval",
            "--policy",
            "oracle=expert",
            "--policy",
            "chance=random",
            "--tasks",
            EASY,
            "--trials",
            "8",
            "--out",
            str(out),
            "--jsonl",
            "--envs-per-worker",
            "16",
        ]
    )
    assert code == 0
    assert (out / "records.parquet").exists() and (out / "records.jsonl").exists()
    printed = capsys.readouterr().out
    assert "oracle" not in printed and "chance" not in printed  # the run's output stays blind
    from lbm.eval.compare import compare_records

    result = compare_records(rec_mod.load_records(out), bootstrap_reps=200)
    assert any(v.startswith("oracle > chance on 2/2 tasks") for v in result["verdicts"]), result["verdicts"]
    agg = {p["a"]: p for p in result["aggregate"]["pairs"]}
    assert agg["oracle"]["significant"] and agg["oracle"]["b"] == "chance"
    # Rerunning the identical command resumes: nothing left to run.
    assert (
        lbm_main(
            [
                "eval",
                "--policy",
                "oracle=expert",
                "--policy",
                "chance=random",
                "--tasks",
                EASY,
                "--trials",
                "8",
                "--out",
                str(out),
                "--jsonl",
                "--envs-per-worker",
                "16",
            ]
        )
        == 0
    )
    assert "0 run now" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--tasks", "reach-v3,drawr-open"], "drawer-open"),
        (["--shifts", "none,frction:high"], "friction"),
        (["--shifts", "friction:extreme"], "level"),
        (["--cameras", "nosuchcam"], "camera"),
        (["--policy", "x=/definitely/missing/ckpt"], "does not exist"),
        (["--policy", "x=expret"], "expert"),
    ],
)
def test_cli_bad_input_is_one_clear_error(tmp_path, capsys, args, needle):
    base = {"--policy": "oracle=expert", "--tasks": "reach-v3", "--trials": "1"}
    argv = ["eval", "--out", str(tmp_path / "ev"), "--max-steps", "2"]
    given = dict(zip(args[::2], args[1::2]))
    for k, v in {**base, **given}.items():
        argv += [k, v]
    assert lbm_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err and "Traceback" not in err


def test_video_written_for_camera_trials(tmp_path):
    import av

    from lbm.sim import METAWORLD_EMBODIMENT

    cam = METAWORLD_EMBODIMENT.cameras[0]
    config = EvalConfig(
        tasks="reach-v3", trials=1, max_steps=6, cameras=(cam,), image_size=32, video=True, out=tmp_path / "ev", progress=False
    )
    run_evaluation(replace(config, policy=("oracle=expert",)))
    videos = list((tmp_path / "ev" / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].name.startswith("p-")  # blind file names
    with av.open(str(videos[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (32, 32, 3) and np.std(frames[0]) > 1


class _ExitOnPredict(StubPolicy):
    """A policy whose process dies mid-rollout (a segfault stand-in)."""

    def actions(self, observations):
        os._exit(3)


def exit_loader(spec: PolicySpec, seed: int):
    from lbm.eval.runner import load_policy_spec

    return load_policy_spec(spec, seed) if spec.builtin else _ExitOnPredict()


def test_two_workers_and_a_crashing_worker(tmp_path):
    ckpt = tmp_path / "boom"
    ckpt.mkdir()
    config = EvalConfig(
        tasks="reach-v3", trials=2, max_steps=120, workers=2, envs_per_worker=1, out=tmp_path / "ev", progress=False
    )
    summary = run_evaluation(
        replace(
            config,
            policy=(
                "oracle=expert",
                f"boom={ckpt}",
            ),
        ),
        loader=exit_loader,
    )
    assert summary.ran == 4
    df = rec_mod.load_records(tmp_path / "ev")
    assert len(df) == 4  # nothing dropped
    boom = df[df.policy == "boom"]
    assert (~boom.success).all() and boom.failure_reason.str.startswith("worker_crashed").all()
    assert df[df.policy == "oracle"].success.all()
    manifest = json.loads((tmp_path / "ev" / "manifest.json").read_text())
    assert manifest["status"] == "complete"


def test_unknown_records_id_is_refused(tmp_path):
    config = EvalConfig(tasks="reach-v3", trials=1, max_steps=3, out=tmp_path / "ev", progress=False)
    run_evaluation(replace(config, policy=("oracle=expert",)))
    path = tmp_path / "ev" / "blinding.json"
    data = json.loads(path.read_text())
    data["policies"] = {"p-0000": next(iter(data["policies"].values()))}
    path.write_text(json.dumps(data))
    with pytest.raises(LbmError, match="changed after the evaluation started"):  # the manifest recorded its hash
        rec_mod.load_records(tmp_path / "ev")


def _tiny_checkpoint(path, tasks):
    """An untrained `tiny` flow checkpoint for the Meta-World embodiment (no text-encoder load)."""
    from lbm.data.normalize import StatsAccumulator
    from lbm.policies import InstructionCache, build_policy, policy_config
    from lbm.schema import ACTION, STATE
    from lbm.sim import METAWORLD_EMBODIMENT, get_task
    from lbm.train import save_checkpoint

    rng = np.random.default_rng(0)
    emb = METAWORLD_EMBODIMENT
    stats = {
        emb.name: {
            STATE: StatsAccumulator().update(rng.normal(size=(256, emb.state_dim))).finalize(),
            ACTION: StatsAccumulator().update(rng.uniform(-1, 1, size=(256, emb.action_dim))).finalize(),
        }
    }
    cache = InstructionCache(
        {get_task(t).instruction: rng.normal(size=384).astype(np.float32) for t in tasks}, use_user_cache=False
    )
    policy = build_policy(policy_config("flow", "tiny", horizon=8), [emb], stats, cache)
    save_checkpoint(path, model=policy, ema=policy, stats=stats, train_config={"note": "untrained"}, step=0)
    return path


def test_checkpoint_policy_is_batched_and_chunked(tmp_path):
    pytest.importorskip("lbm.train")
    ckpt = _tiny_checkpoint(tmp_path / "tiny", ["reach-v3", "drawer-open-v3"])
    config = EvalConfig(tasks=EASY, trials=3, max_steps=20, envs_per_worker=6, out=tmp_path / "ev", progress=False)
    run_evaluation(
        replace(
            config,
            policy=(
                f"net={ckpt}",
                "oracle=expert",
            ),
        )
    )
    df = rec_mod.load_records(tmp_path / "ev")
    net = df[df.policy == "net"]
    assert len(net) == 6 and (net.failure_reason == "max_steps").all()
    assert (net.execute_steps == 8).all()  # the whole chunk by default
    assert (net.chunk_calls == 3).all()  # 20 steps / 8 per chunk, rounded up
    assert (net.batch_size > 1).any() and net.latency_ms.gt(0).all()
    with pytest.raises(LbmError, match="does not exist"):
        run_evaluation(replace(config, policy=(f"net={tmp_path / 'nope'}",)))
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(LbmError):
        run_evaluation(EvalConfig(policy=(f"net={broken}",), tasks="reach-v3", trials=1, out=tmp_path / "ev2", progress=False))
    assert not (tmp_path / "ev2" / "manifest.json").exists()  # nothing written for a run that cannot start


class _Hang(StubPolicy):
    def actions(self, observations):
        import time

        time.sleep(10_000)  # a call that never returns: only the parent's watchdog can end it


def hang_loader(spec: PolicySpec, seed: int):
    from lbm.eval.runner import load_policy_spec

    return load_policy_spec(spec, seed) if spec.builtin else _Hang()


@pytest.mark.slow
def test_hung_worker_is_killed_and_its_trials_time_out(tmp_path):
    ckpt = tmp_path / "hang"
    ckpt.mkdir()
    config = EvalConfig(
        tasks="reach-v3",
        trials=1,
        max_steps=50,
        workers=2,
        envs_per_worker=1,
        trial_timeout_s=1.0,
        out=tmp_path / "ev",
        progress=False,
    )
    run_evaluation(
        replace(
            config,
            policy=(
                "oracle=expert",
                f"hang={ckpt}",
            ),
        ),
        loader=hang_loader,
    )
    df = rec_mod.load_records(tmp_path / "ev")
    hang = df[df.policy == "hang"]
    assert len(df) == 2 and hang.failure_reason.str.startswith("timeout: worker unresponsive").all()
    assert df[df.policy == "oracle"].success.all()


def test_first_trial_moves_the_trial_seeds_and_a_negative_one_is_refused(tmp_path):
    from lbm.errors import LbmError
    from lbm.eval.records import load_records
    from lbm.eval.runner import EvalConfig, run_evaluation
    from lbm.sim import eval_seed

    run_evaluation(
        EvalConfig(policy=("e=expert",), tasks="reach-v3", trials=2, first_trial=7, out=tmp_path / "e", progress=False)
    )
    records = load_records(tmp_path / "e")
    assert sorted(records["seed"]) == [eval_seed("reach-v3", 7), eval_seed("reach-v3", 8)]
    with pytest.raises(LbmError, match="first-trial"):
        run_evaluation(EvalConfig(policy=("e=expert",), tasks="reach-v3", trials=1, first_trial=-1, out=tmp_path / "f"))
