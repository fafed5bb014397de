"""robosuite's arms behind the simulator contract: one task per robot resets, steps and reports atoms,
one expert episode per task, each robot its own body, and one policy trained on three bodies.

Every registered task x robot's expert runs under the ``slow`` marker (``make test-slow``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("robosuite", reason="robosuite comes with the optional LIBERO extra: pip install 'lbm[libero]'")

from lbm.errors import LbmError  # noqa: E402
from lbm.sim import TASK_SETS, TASKS, SimEnv, demo_seed, embodiment_of, eval_seed, get_task, goal_reached, make_env  # noqa: E402
from lbm.sim.arms import BODIES, ROBOTS  # noqa: E402


def run_expert(env, seed: int):
    env.reset(seed=seed)
    while True:
        result = env.step(env.expert_action())
        if result.done:
            return result


def test_tasks_times_robots_are_registered_with_bodies_that_differ():
    assert set(TASK_SETS["robosuite-lift"]) == {f"robosuite-lift@{b}" for b in BODIES}
    sizes = {r: embodiment_of(f"robosuite-lift@{r}").state_dim for r in ROBOTS}
    assert sizes == {"panda": 30, "ur5e": 33, "kinova3": 34, "iiwa": 34}
    # Each robot x controller is its own body: OSC end-effector deltas (7) or one delta per arm joint + gripper.
    actions = {b: embodiment_of(f"robosuite-lift@{b}").action_dim for b in BODIES}
    assert actions == {
        "panda": 7,
        "ur5e": 7,
        "kinova3": 7,
        "iiwa": 7,
        "panda-joint": 8,
        "ur5e-joint": 7,
        "kinova3-joint": 8,
        "iiwa-joint": 8,
    }
    assert len({embodiment_of(f"robosuite-stack@{b}").name for b in BODIES}) == 8
    assert embodiment_of("robosuite-lift@ur5e").workspace is not None
    assert embodiment_of("robosuite-lift@ur5e-joint").workspace is None  # joint deltas do not move the hand linearly
    assert get_task("robosuite-stack@ur5e").goal == ("on(cubeA,cubeB)",)
    assert TASK_SETS["robosuite@iiwa"] == ("robosuite-lift@iiwa", "robosuite-stack@iiwa")


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("robosuite-lift@sawyer", "mesh volume is too small"),
        ("robosuite-lift@jaco", "three-finger"),
        ("robosuite-lift@ur5", "did you mean 'robosuite-lift@ur5e'"),
        ("robosuite-lfit@panda", "did you mean 'robosuite-lift@panda'"),
    ],
)
def test_bad_names_are_clear_errors(name, says):
    with pytest.raises(LbmError, match="(?i)" + says):
        get_task(name)


@pytest.mark.parametrize("robot", list(ROBOTS))
def test_one_task_per_robot_resets_steps_and_reports_atoms(robot):
    name = f"robosuite-lift@{robot}"
    with make_env(name) as env:
        assert isinstance(env, SimEnv)
        obs = env.reset(seed=eval_seed(name, 0))
        body = embodiment_of(name)
        assert obs.state.shape == (body.state_dim,) and obs.embodiment == body.name and np.all(np.isfinite(obs.state))
        first = env.initial_condition.copy()
        result = env.step(np.zeros(7))
        assert result.observation.state.shape == (body.state_dim,) and not result.done
        truth = env.predicates()
        assert truth == {"grasped(cube)": False, "lifted(cube)": False}
        env.reset(seed=eval_seed(name, 0))
        np.testing.assert_array_equal(first, env.initial_condition)  # seeded
        with pytest.raises(LbmError, match="Did you mean 'cube'"):
            env.holds("lifted(cub)")


@pytest.mark.parametrize("name", ["robosuite-lift@ur5e", "robosuite-stack@panda", "robosuite-lift@kinova3-joint"])
def test_one_expert_episode(name):
    with make_env(name) as env:
        result = run_expert(env, demo_seed(name, 0))
        assert result.success and goal_reached(env.predicates(), env.goal)
        assert env.expert_subtask()[1].startswith("pick up the red cube")


def test_shifts_apply_to_the_arms():
    name, seed = "robosuite-stack@kinova3", eval_seed("robosuite-stack@kinova3", 3)
    with make_env(name) as plain, make_env(name, shifts="object_pose:high") as moved, make_env(name, shifts="none") as none:
        a, b, c = plain.reset(seed=seed), moved.reset(seed=seed), none.reset(seed=seed)
        np.testing.assert_array_equal(a.state, c.state)
        assert not np.allclose(a.state[-14:], b.state[-14:])  # the cubes start elsewhere


def test_a_dataset_of_an_arm_passes_the_audit(tmp_path):
    from lbm.data import EpisodeDataset, generate_demos
    from lbm.data.audit import audit_dataset

    out = tmp_path / "ur5e"
    generate_demos(["robosuite-lift@ur5e"], 2, out, workers=1, progress=False)
    ds = EpisodeDataset(out)
    assert ds.embodiment.name == "robosuite-ur5e" and ds.embodiment.state_dim == 33 and ds.has_subtasks
    names, atoms = ds.atoms(0)
    assert names == ("grasped(cube)", "lifted(cube)") and atoms[:, 0].any()  # the cube is grasped on the way
    assert audit_dataset(out).ok


def test_one_policy_trains_on_three_bodies_with_different_state_and_action_sizes(tmp_path):
    import dataclasses
    from pathlib import Path

    from lbm.data import generate_demos
    from lbm.policies.base import ChunkRequest
    from lbm.study.pipeline import constant_marks
    from lbm.train import train
    from lbm.train.checkpoint import load_policy
    from lbm.train.presets import get_preset

    roots = []
    bodies = ("reach-v3", "robosuite-lift@panda-joint", "robosuite-lift@ur5e")  # (state, action): (39, 4), (30, 8), (33, 7)
    for task in bodies:
        roots.append(str(generate_demos([task], 2, tmp_path / task.replace("@", "-"), workers=1, progress=False).root))
    base = get_preset("tiny-flow")
    config = dataclasses.replace(
        base,
        name="three-bodies",
        out_dir=str(tmp_path / "run"),
        steps=10,
        batch_size=12,
        precision="fp32",
        tensorboard=False,
        threads=1,
        val_every=0,
        save_every=10,
        data=dataclasses.replace(base.data, roots=tuple(roots), val_episodes=0, balance_by_size=True),
    )
    # Objects that never turn leave dimensions constant up to float noise: mark them, as the study does.
    marks = tuple(m for root in roots for m in constant_marks(Path(root), config.policy))
    pretrained = train(dataclasses.replace(config, policy=dataclasses.replace(config.policy, constant_dims=marks)))
    policy = load_policy(pretrained)
    assert set(policy.embodiments) == {"metaworld-sawyer", "robosuite-panda-joint", "robosuite-ur5e"}
    for task in bodies:
        with make_env(task) as env:
            obs = env.reset(seed=eval_seed(task, 0))
            chunk = policy.predict_chunk([obs], [policy.reset(0)], ChunkRequest())
            assert np.asarray(chunk.actions).shape[-1] == env.embodiment.action_dim
            assert np.all(np.isfinite(chunk.actions))

    # Finetuning onto a robot the checkpoint never saw (IIWA): its own constant dims are marked by this run.
    iiwa = generate_demos(["robosuite-stack@iiwa"], 2, tmp_path / "iiwa", workers=1, progress=False).root
    new_marks = constant_marks(iiwa, config.policy)
    assert new_marks  # the cubes never tilt: their quaternion x, y are constant up to float noise
    finetune = dataclasses.replace(
        config,
        name="held-out-robot",
        mode="finetune",
        out_dir=str(tmp_path / "finetune"),
        finetune=dataclasses.replace(config.finetune, init_from=str(pretrained)),
        data=dataclasses.replace(config.data, roots=(str(iiwa),)),
        policy=dataclasses.replace(config.policy, constant_dims=new_marks),
    )
    tuned = load_policy(train(finetune))  # without the marks the normalizer refuses the new body's constant dims
    assert set(tuned.embodiments) == {"robosuite-iiwa"}  # a finetuned checkpoint serves the bodies of its data
    with make_env("robosuite-stack@iiwa") as env:
        chunk = tuned.predict_chunk([env.reset(seed=eval_seed("robosuite-stack@iiwa", 0))], [tuned.reset(0)], ChunkRequest())
        assert np.asarray(chunk.actions).shape[-1] == 7 and np.all(np.isfinite(chunk.actions))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, s in TASKS.items() if s.suite == "robosuite"])
def test_expert_succeeds_every_registered_combination(name):
    with make_env(name) as env:
        wins = sum(run_expert(env, demo_seed(name, i)).success for i in range(4))
    assert wins >= 2, f"{name}: the expert succeeded on {wins}/4 seeds"
