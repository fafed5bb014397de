"""The planner: goal grounding, symbolic planning (pyperplan), execution with verification and replanning.

Pure planning and grounding run on hand-made scenes; execution runs the real LIBERO and robosuite
scenes with the scripted skills, including a subtask undone behind the planner's back."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyperplan", reason="the symbolic planner is the optional extra lbm[plan]")

from lbm.plan import (  # noqa: E402
    ExecuteConfig,
    Grounder,
    GroundTruthVerifier,
    PlanningError,
    PolicySkills,
    SceneState,
    ScriptedSkills,
    SymbolicPlanner,
    execute,
    scene_state,
)
from stub_policies import StubPolicy  # noqa: E402

CUBES = ("cubeA", "cubeB", "cubeC")


def cube_scene(true: set[str]) -> SceneState:
    """Three cubes and a bin region; every on/in/lifted atom defined, ``true`` the ones that hold."""
    atoms = {}
    for o in CUBES:
        atoms[f"lifted({o})"] = False
        atoms[f"in({o},bin_region)"] = False
        for t in CUBES:
            if t != o:
                atoms[f"on({o},{t})"] = False
    atoms.update(dict.fromkeys(true, True))
    words = {"cubeA": "red cube", "cubeB": "green cube", "cubeC": "blue cube"}
    return SceneState(CUBES, atoms, words)


def test_a_blocked_stack_is_unblocked_first():
    plan = SymbolicPlanner().plan(["on(cubeA,cubeB)"], cube_scene({"on(cubeC,cubeB)"}))
    assert [(s.skill, s.args[0], s.args[-1]) for s in plan.steps] == [
        ("pick-place", "cubeC", "bin_region"),
        ("stack", "cubeA", "cubeB"),
    ]
    assert (
        plan.steps[0].effect == ("in(cubeC,bin_region)",)
        and plan.steps[1].instruction == "pick up the red cube and place it on the green cube"
    )
    assert "clear(cubeB)" in plan.steps[1].precondition


def test_a_tower_is_built_bottom_up():
    plan = SymbolicPlanner().plan(["on(cubeA,cubeB)", "on(cubeB,cubeC)"], cube_scene(set()))
    assert [s.goal_atom for s in plan.steps] == ["on(cubeB,cubeC)", "on(cubeA,cubeB)"]


def test_closed_world_valuation_and_satisfied_goals():
    # An atom not reported true is false: nothing is on cubeB, so stacking needs no clearing.
    scene = cube_scene({"on(cubeA,cubeB)"})
    plan = SymbolicPlanner().plan(["on(cubeA,cubeB)", "lifted(cubeC)"], scene)
    assert plan.satisfied == ("on(cubeA,cubeB)",)
    assert [(s.skill, s.goal_atom) for s in plan.steps] == [("pick-lift", "lifted(cubeC)")]
    assert SymbolicPlanner().plan(["on(cubeA,cubeB)"], scene).steps == ()


@pytest.mark.parametrize(
    ("goal", "says"),
    [
        (["on(cubeA,cubeB)", "on(cubeA,cubeC)"], "contradictory"),
        (["on(cubeA,cubeB)", "on(cubeB,cubeA)"], "No plan exists"),
        (["open(drawer_1)"], "beyond the skill library"),
        (["on(cubeZ,cubeB)"], "cubeZ that is not in the scene"),
        (["lifted(cubeA)", "on(cubeA,cubeB)"], "contradictory"),
    ],
)
def test_bad_goals_are_refused_with_the_reason(goal, says):
    with pytest.raises(PlanningError, match=says):
        SymbolicPlanner().plan(goal, cube_scene(set()))


def test_a_planner_time_out_is_a_failure_with_its_reason():
    with pytest.raises(PlanningError, match="time limit of 0 s"):
        SymbolicPlanner().plan(["on(cubeA,cubeB)", "on(cubeB,cubeC)"], cube_scene(set()), timeout_s=0.0)


def positions(name: str) -> np.ndarray:
    return {"plate_1": np.array([0.0, -0.3, 0.9]), "plate_2": np.array([0.0, 0.3, 0.9])}.get(name, np.zeros(3))


def kitchen() -> SceneState:
    objects = ("porcelain_mug_1", "white_yellow_mug_1", "alphabet_soup_1", "plate_1", "plate_2", "basket_1")
    places = ("plate_1", "plate_2", "basket_1_contain_region", "living_room_table_plate_right_region")
    atoms = {f"on({o},{p})": False for o in objects for p in places if p != o}
    atoms |= {f"in({o},basket_1_contain_region)": False for o in objects}
    return SceneState(objects, atoms)


@pytest.mark.parametrize(
    ("sentence", "atoms"),
    [
        ("Put the white mug on the left plate and put the yellow and white mug on the right plate.",
         ("on(porcelain_mug_1,plate_1)", "on(white_yellow_mug_1,plate_2)")),
        ("put both the alphabet soup and the white mug in the basket",
         ("in(alphabet_soup_1,basket_1_contain_region)", "in(porcelain_mug_1,basket_1_contain_region)")),
        ("pick up the alphabet soup and place it to the right of the plate",
         ("on(alphabet_soup_1,living_room_table_plate_right_region)",)),
        ("lift the alphabet soup", ("lifted(alphabet_soup_1)",)),
    ],
)  # fmt: skip
def test_instructions_ground_to_scene_atoms(sentence, atoms):
    scene = kitchen()
    scene = SceneState(scene.objects, {**scene.atoms, **{f"lifted({o})": False for o in scene.objects}})
    assert Grounder(scene, positions).ground(sentence).atoms == atoms


@pytest.mark.parametrize(
    ("sentence", "says"),
    [
        ("put the banana in the basket", "No object in the scene matches 'banana'"),
        ("put the white mug on the plate", "ambiguous: it fits plate_1 .* plate_2"),
        ("open the drawer and put the soup in it", "beyond the skill library"),
        ("dance for me", "Cannot read 'dance for me'"),
    ],
)
def test_ungroundable_goals_are_refused_never_guessed(sentence, says):
    with pytest.raises(PlanningError, match=says):
        Grounder(kitchen(), positions).ground(sentence)


# ---- execution in the real scenes ----------------------------------------------------------------
def teleport_back(env, obj: str, where: np.ndarray) -> None:
    """Undo a finished subtask behind the planner's back: put ``obj`` back where it started (it "fell out")."""
    import mujoco

    joint = env.model.body_jntadr[env.body_of(obj)]
    address = env.model.jnt_qposadr[joint]
    env.data.qpos[address : address + 3] = where
    env.data.qvel[env.model.jnt_dofadr[joint] : env.model.jnt_dofadr[joint] + 6] = 0
    mujoco.mj_forward(env.model, env.data)


def test_a_subtask_undone_later_is_replanned_and_the_goal_recovered():
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    from lbm.sim import eval_seed, make_env

    task = "robosuite-stack@iiwa"
    with make_env(task, max_steps=500) as env:  # room for a second stack
        obs = env.reset(eval_seed(task, 0))
        goal = Grounder(scene_state(env), env.position).ground("put the red cube on top of the green cube").atoms
        assert goal == env.goal
        start = env.position("cubeA").copy()
        undone: list[str] = []

        def knock_off(env, step, ok):  # the stacked cube is knocked back to where it started, once
            if ok and not undone:
                undone.append(step.goal_atom)
                teleport_back(env, "cubeA", start)

        events = []
        result = execute(env, obs, goal, SymbolicPlanner(), ScriptedSkills(), GroundTruthVerifier(),
                         after_subtask=knock_off, on_event=events.append)  # fmt: skip
    assert undone == ["on(cubeA,cubeB)"]
    assert result.success and result.verified and result.reason == "goal verified"
    assert result.replans == 1 and result.subtasks_succeeded == 2  # the stack, then the stack again
    assert [e["why"] for e in events if e["kind"] == "plan"] == ["start", "on(cubeA,cubeB) no longer hold(s)"]


def test_a_failed_skill_attempt_is_retried_and_open_loop_is_unchecked():
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    from lbm.sim import eval_seed, make_env

    class Stalls(ScriptedSkills):  # the first attempt does nothing at all
        attempts = 0

        def start(self, step, seed):
            super().start(step, seed)
            self.attempts += 1

        def act(self, env, obs, step):
            return np.zeros(7, np.float32) if self.attempts == 1 else super().act(env, obs, step)

    task = "robosuite-stack@panda"
    with make_env(task, max_steps=500) as env:
        obs = env.reset(eval_seed(task, 0))
        result = execute(env, obs, env.goal, SymbolicPlanner(), Stalls(), GroundTruthVerifier(), ExecuteConfig(subtask_steps=20))
        assert not result.success and result.reason == "replan budget (3) spent"  # 3 x 20 steps are too few for a stack
        obs = env.reset(eval_seed(task, 0))
        result = execute(env, obs, env.goal, SymbolicPlanner(), Stalls(), GroundTruthVerifier(), ExecuteConfig(subtask_steps=240))
        assert result.success and result.retries == 1 and result.replans == 1
        obs = env.reset(eval_seed(task, 0))
        open_loop = execute(env, obs, env.goal, SymbolicPlanner(), ScriptedSkills(), GroundTruthVerifier(),
                            ExecuteConfig(verify=False, subtask_steps=240))  # fmt: skip
        assert open_loop.replans == 0 and [e["outcome"] for e in open_loop.events if e["kind"] == "subtask"] == ["unchecked"]


class Still(StubPolicy):
    """A policy that never moves (zero 7-D actions), recording the instruction of every chunk it is asked for."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def actions(self, observations) -> np.ndarray:
        self.seen.append(observations[0].instruction)
        return np.zeros((1, self.horizon, 7), np.float32)


def test_a_skill_policy_is_conditioned_on_the_subtask_instruction():
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    from lbm.sim import eval_seed, make_env

    task = "robosuite-lift@ur5e"
    policy = Still()
    with make_env(task) as env:
        obs = env.reset(eval_seed(task, 0))
        result = execute(env, obs, env.goal, SymbolicPlanner(), PolicySkills(policy), GroundTruthVerifier(),
                         ExecuteConfig(subtask_steps=8, max_replans=0))  # fmt: skip
    assert not result.success and set(policy.seen) == {"pick up the red cube and lift it"} and len(policy.seen) == 2


def test_a_learned_verifier_also_trains_on_a_failing_policys_rollouts():
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    from lbm.plan import LearnedVerifier
    from lbm.sim import get_task

    task = "robosuite-lift@panda"
    policy = Still()  # every frame of its rollouts is a state where nothing was lifted
    verifier, metrics = LearnedVerifier.train([task], episodes=3, policy=policy, policy_episodes=3, steps=200)
    assert set(policy.seen) == {get_task(task).instruction}  # rolled out on the task's goal instruction
    assert metrics["test_episodes"] == 2  # one held-out episode of each source
    assert metrics["policy_frames"] > 50 and metrics["policy_tp"] + metrics["policy_fn"] == 0  # it never lifted
    assert metrics["policy_tn"] + metrics["policy_fp"] == metrics["policy_frames"]
    assert metrics["frames"] > metrics["policy_frames"]  # the expert's held-out frames are scored too


def test_lbm_plan_prints_the_plan_and_refuses_bad_goals(capsys):
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    from lbm.plan.commands import PlanConfig, plan

    assert plan(PlanConfig(task="robosuite-stack@iiwa")) == 0
    out = capsys.readouterr().out
    assert (
        "'red cube' -> cubeA" in out
        and "1. stack(cubeA, floor, cubeB): pick up the red cube and place it on the green cube" in out
    )
    assert plan(PlanConfig("stack the purple pyramid on the green cube", task="robosuite-stack@iiwa")) == 1
    assert "refused: No object in the scene matches 'purple pyramid'" in capsys.readouterr().out


@pytest.mark.slow
def test_every_registered_long_horizon_task_grounds_plans_and_reaches_its_goal():
    pytest.importorskip("libero", reason="LIBERO is an optional extra")
    from lbm.sim import TASK_SETS, eval_seed, make_env

    for task in (*TASK_SETS["libero-10"], *TASK_SETS["libero-goal"]):
        with make_env(task) as env:
            obs = env.reset(eval_seed(task, 0))
            goal = Grounder(scene_state(env), env.position).ground(env.spec.instruction).atoms
            assert set(goal) == set(env.goal), task
            result = execute(env, obs, goal, SymbolicPlanner(), ScriptedSkills(), GroundTruthVerifier())
            assert result.success, (task, result.reason, result.events)


def test_the_planner_is_evaluated_blind_and_paired_by_the_runner(tmp_path):
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    from lbm.errors import LbmError
    from lbm.eval.records import load_records
    from lbm.eval.runner import EvalConfig, run_evaluation

    specs = ("flat=expert", "planned=plan://expert", "open_loop=plan://expert?verify=0&subtask_steps=240")
    run_evaluation(EvalConfig(policy=specs, tasks="robosuite-stack@kinova3", trials=2, out=tmp_path / "e", progress=False))
    records = load_records(tmp_path / "e")
    assert len(records) == 6 and records.groupby("trial")["init_hash"].nunique().eq(1).all()  # paired
    planned = records[records.policy == "planned"]
    assert (
        planned.success.all() and (planned.plan_subtasks_succeeded == 1).all() and (planned.plan_reason == "goal verified").all()
    )
    open_loop = records[records.policy == "open_loop"]
    assert (open_loop.plan_subtasks_succeeded == 0).all() and (open_loop.plan_replans == 0).all()  # it checks nothing
    assert records[records.policy == "flat"].plan_reason.isna().all()  # only planned policies report plan columns
    with pytest.raises(LbmError, match="unknown plan:// option"):
        run_evaluation(EvalConfig(policy=("x=plan://expert?verfy=0",), tasks="robosuite-lift@ur5e", trials=1, out=tmp_path / "f"))


def test_a_learned_verifier_trains_on_labelled_rollouts_and_is_scored_against_the_truth(tmp_path):
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    from lbm.errors import LbmError
    from lbm.plan import LearnedVerifier
    from lbm.sim import eval_seed, make_env

    task = "robosuite-lift@panda"
    verifier, metrics = LearnedVerifier.train([task], episodes=4, steps=300)
    assert verifier.atoms == ("lifted(cube)",) and metrics["test_episodes"] == 1 and metrics["frames"] > 50
    assert metrics["tp"] + metrics["fn"] > 0 and metrics["tn"] + metrics["fp"] > 0  # both classes among held-out frames
    assert metrics["accuracy"] > 0.8  # lifting is visible in the cube's height in the observed state
    again = LearnedVerifier.load(verifier.save(tmp_path / "verifier"))
    np.testing.assert_allclose(again.probabilities(np.zeros((1, 30))), verifier.probabilities(np.zeros((1, 30))))
    with pytest.raises(LbmError, match="not a learned verifier"):
        LearnedVerifier.load(tmp_path)
    with make_env(task) as env:
        obs = env.reset(eval_seed(task, 0))
        with pytest.raises(PlanningError, match="not trained on on"):
            verifier.check(env, obs, ["on(cube,cube)"])
        result = execute(env, obs, env.goal, SymbolicPlanner(), ScriptedSkills(), verifier)
    confusion = result.verifier_confusion
    assert sum(confusion.values()) > 10 and result.verifier_disagreements == confusion["fp"] + confusion["fn"]
    assert result.success  # the verifier's judgement ended the lift where the truth says it holds


def test_plans_are_the_same_in_every_process():
    """Grounding iterates sets (hash-seed dependent); the plan must depend on the scene and goal alone."""
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_plan import SymbolicPlanner, cube_scene; "
        "goal = [f'in({c},bin_region)' for c in ('cubeA', 'cubeB', 'cubeC')]; "
        "p = SymbolicPlanner().plan(goal, cube_scene(set())); "
        "print([s.goal_atom for s in p.steps])"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": str(h), **_env()}
        ).stdout
        for h in (1, 2, 3, 4)
    }
    assert len(outs) == 1 and "cubeA" in outs.pop().split(",")[0]  # one plan, in goal order


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
