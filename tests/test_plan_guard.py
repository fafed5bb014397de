"""The plan guard: rules in words -> LTLf (ltlf2dfa + MONA) -> plan checks, minimal repair, observed-state stops.

Automata and repairs run on hand-made scenes (the grounding uses the real sentence encoder); the
red-team command runs on the real LIBERO kitchen scene."""

from __future__ import annotations

import itertools
import json
import random
import shutil

import numpy as np
import pytest

pytest.importorskip("pyperplan", reason="the symbolic planner is the optional extra lbm[plan]")
pytest.importorskip("ltlf2dfa", reason="plan checking is the optional extra lbm[safety]")
if shutil.which("mona") is None:
    pytest.skip("MONA is missing (Debian package mona; `make install` installs it as root)", allow_module_level=True)

from lbm.errors import LbmError  # noqa: E402
from lbm.plan import ExecuteConfig, GroundTruthVerifier, SceneState, ScriptedSkills, SymbolicPlanner, execute  # noqa: E402
from lbm.plan.execute import load_guard  # noqa: E402
from lbm.safety.ltlf import SpecificationError, translate  # noqa: E402
from lbm.safety.plan_guard import RuleGuard, RulesGuardFactory, advance, predicted_trace  # noqa: E402
from lbm.safety.rules import TemplateContextualizer, parse_rules  # noqa: E402
from lbm.sim import METAWORLD_EMBODIMENT, atom, parse_atom  # noqa: E402

# ---- LTLf -> DFA -------------------------------------------------------------------------------
SEMANTICS = {  # formula -> its meaning on a finite trace of sets, written directly
    "G(!(p0 | p1))": lambda t: all(not ({"p0", "p1"} & v) for v in t),
    "G((p1) -> !(p0))": lambda t: all("p0" not in v for v in t if "p1" in v),
    "((!(p0)) U (p1)) | G(!(p0))": lambda t: (
        all("p0" not in v for v in t[: next((k for k, v in enumerate(t) if "p1" in v), len(t))])
        and (next((k for k, v in enumerate(t) if "p1" in v), None) is not None or all("p0" not in v for v in t))
    ),
    "F(last & !(p0))": lambda t: "p0" not in t[-1],
}


@pytest.mark.parametrize("formula", list(SEMANTICS))
def test_automata_agree_with_the_finite_trace_semantics(formula):
    dfa = translate(formula)
    rng = random.Random(0)
    letters = [set(c) for k in range(3) for c in itertools.combinations(["p0", "p1"], k)]
    for _ in range(300):
        trace = [rng.choice(letters) for _ in range(rng.randint(1, 6))]
        assert dfa.accepts(trace) == SEMANTICS[formula](trace), (formula, trace)


def test_a_prefix_violates_only_in_a_dead_state():
    """The finite-trace pitfall: an unmet end-of-plan obligation is not a violation yet; a broken invariant is."""
    obligation, invariant = translate("F(last & !(p0))"), translate("G(!(p0))")
    q = obligation.run([{"p0"}])[-1]
    assert q not in obligation.accepting and q in obligation.live  # not accepted, but it can still be met
    assert invariant.run([{"p0"}])[-1] not in invariant.live  # broken for good


@pytest.mark.parametrize(
    "formula, says",
    [("G(p0 &", "Cannot parse"), (" | ".join(f"p{k}" for k in range(41)), "propositions")],
)
def test_bad_or_too_large_formulas_are_refused(formula, says):
    with pytest.raises(SpecificationError, match=says):
        translate(formula)


def test_unsatisfiable_specifications_are_detected():
    assert not translate("G(p0) & G(!(p0))").satisfiable and translate("G(!(p0))").satisfiable


# ---- rules files -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, says",
    [
        ([1, 2], "a mapping with a 'rules:' list"),
        ({"rules": []}, "non-empty list"),
        ({"rules": ["keep liquids off the stove"], "rulez": 1}, "unknown key"),
        ({"rules": ["be careful"]}, "no form the contextualizer reads"),
        ({"rules": ["stay out of the region marked keep-out"], "marks": {"keep-out": "a"}}, "maps names to lists"),
    ],
)
def test_bad_rules_files_get_clear_errors(data, says):
    with pytest.raises(LbmError, match=says):
        parse_rules(data)


def test_a_rules_file_that_is_not_yaml_is_refused(tmp_path):
    from lbm.safety.rules import read_rules

    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: [unclosed\n")
    with pytest.raises(LbmError, match="not valid YAML"):
        read_rules(bad)
    with pytest.raises(LbmError, match="not found"):
        read_rules(tmp_path / "missing.yaml")


# ---- a kitchen scene, by hand ------------------------------------------------------------------
OBJECTS = ("akita_black_bowl_1", "cream_cheese_1", "wine_bottle_1", "tomato_sauce_1", "alphabet_soup_1")
PLACES = ("plate_1", "flat_stove_1", "flat_stove_1_cook_region", "basket_1_contain_region", "table_left_region",
          "table_right_region", "akita_black_bowl_1")  # fmt: skip


def kitchen(true: set[str] = frozenset(), extra: set[str] = frozenset()) -> SceneState:
    atoms = {atom(rel, o, p): False for o in OBJECTS for p in PLACES for rel in ("on", "in") if o != p}
    atoms.update({atom("turnon", "flat_stove_1"): False, **dict.fromkeys(extra, False)})
    atoms.update(dict.fromkeys(true, True))
    return SceneState(OBJECTS, atoms, {})


@pytest.fixture(scope="module")
def contextualizer():
    return TemplateContextualizer()


def guard_for(rules: list[str], scene: SceneState, contextualizer, marks=None) -> RuleGuard:
    spec = contextualizer.ground(parse_rules({"rules": rules, "marks": marks or {}}), scene)
    return RuleGuard(spec, scene)


def plan_for(goal: list[str], scene: SceneState):
    return SymbolicPlanner().plan(goal, scene)


# Every rule form: a plan known to break it is caught and one known to be safe passes.
FORMS = [
    ("keep liquids off the stove", ["on(wine_bottle_1,flat_stove_1_cook_region)"], ["on(wine_bottle_1,plate_1)"]),
    ("never put anything on the plate", ["on(cream_cheese_1,plate_1)"], ["on(cream_cheese_1,table_left_region)"]),
    ("stay out of the region marked keep-out", ["on(akita_black_bowl_1,table_right_region)"], ["on(akita_black_bowl_1,plate_1)"]),
    ("never touch the wine bottle", ["on(wine_bottle_1,plate_1)"], ["on(cream_cheese_1,plate_1)"]),
    ("do not leave food on the stove", ["on(cream_cheese_1,flat_stove_1_cook_region)"], ["on(cream_cheese_1,plate_1)"]),
    (
        "do not put anything in the bowl while it is on the stove",
        ["on(akita_black_bowl_1,flat_stove_1_cook_region)", "on(cream_cheese_1,akita_black_bowl_1)"],
        ["on(cream_cheese_1,akita_black_bowl_1)"],
    ),
    (
        "do not put the tomato sauce in the basket before the alphabet soup is in the basket",
        ["in(tomato_sauce_1,basket_1_contain_region)"],
        ["in(alphabet_soup_1,basket_1_contain_region)", "in(tomato_sauce_1,basket_1_contain_region)"],
    ),
]


@pytest.mark.parametrize("rule, unsafe, safe", FORMS)
def test_every_rule_form_grounds_translates_and_checks_plans(rule, unsafe, safe, contextualizer):
    scene = kitchen()
    guard = guard_for([rule], scene, contextualizer, marks={"keep-out": ["table_right_region"]})
    (constraint,) = guard.spec.constraints
    assert constraint.dfa.satisfiable and constraint.reason.endswith(f"(rule: {rule!r})")
    assert guard.violations(plan_for(unsafe, scene).steps, scene.true), f"{rule}: an unsafe plan passed"
    assert not guard.violations(plan_for(safe, scene).steps, scene.true), f"{rule}: a safe plan was flagged"


def test_the_turn_on_rule_reads_the_stove_state(contextualizer):
    rule = ["do not turn on the stove while something is on it"]
    on = kitchen({"turnon(flat_stove_1)"})
    assert guard_for(rule, on, contextualizer).violations(
        plan_for(["on(cream_cheese_1,flat_stove_1_cook_region)"], on).steps, on.true
    )
    off = kitchen()
    assert not guard_for(rule, off, contextualizer).violations(
        plan_for(["on(cream_cheese_1,flat_stove_1_cook_region)"], off).steps, off.true
    )


@pytest.mark.parametrize(
    "rules, marks, says",
    [
        (["keep liquids upright"], {}, "needs the predicate upright"),
        (["stay out of the region marked danger"], {}, "region marked 'danger', which <rules> does not mark"),
        (["never put the bowl near the plate"], {}, "'near' is not a relation"),
        (["keep the bowl on the plate", "never put the bowl on the plate"], {}, "contradict each other"),
    ],
)
def test_rules_the_scene_cannot_check_or_that_contradict_are_errors(rules, marks, says, contextualizer):
    with pytest.raises(LbmError, match=says):
        contextualizer.ground(parse_rules({"rules": rules, "marks": marks}), kitchen())


def test_rules_about_things_the_scene_lacks_are_reported_as_vacuous(contextualizer):
    spec = contextualizer.ground(
        parse_rules({"rules": ["never put anything sharp on the plate", "never touch the microwave"]}), kitchen()
    )
    assert spec.constraints == () and [r for r, _ in spec.vacuous] == [
        "never put anything sharp on the plate",
        "never touch the microwave",
    ]
    assert "no object of this scene is sharp" in spec.vacuous[0][1]


def test_the_closed_world_valuation_moves_what_rides_along():
    """The planner never carries a loaded bowl (its domain says a loaded place is not clear), but another planner
    behind the Planner protocol may propose it: the guard's prediction must move the contents too."""
    from lbm.plan.symbolic import Step

    scene = kitchen({"on(akita_black_bowl_1,plate_1)", "on(cream_cheese_1,akita_black_bowl_1)"})
    planned = plan_for(["on(akita_black_bowl_1,flat_stove_1_cook_region)"], scene).steps
    assert planned[0].args[0] == "cream_cheese_1"  # the symbolic planner first empties the bowl
    target = "on(akita_black_bowl_1,flat_stove_1_cook_region)"
    step = Step("pick-place", ("akita_black_bowl_1", "plate_1", "flat_stove_1_cook_region"), "", target, (), (target,))
    after = advance(scene.true, step, scene.atoms)
    assert "on(akita_black_bowl_1,plate_1)" not in after and "on(akita_black_bowl_1,flat_stove_1_cook_region)" in after
    assert {"on(cream_cheese_1,akita_black_bowl_1)", "on(cream_cheese_1,flat_stove_1_cook_region)"} <= after
    trace = predicted_trace(scene.true, [step], scene.atoms)
    assert (
        trace[0] == scene.true and {"pick(akita_black_bowl_1)", "place(akita_black_bowl_1,flat_stove_1_cook_region)"} <= trace[1]
    )
    assert "on(wine_bottle_1,plate_1)" not in trace[1]  # never predicted, so false (closed world)


# ---- repair ------------------------------------------------------------------------------------
ORDER = ["do not put the tomato sauce in the basket before the alphabet soup is in the basket"]


def test_repair_reorders_the_steps(contextualizer):
    scene = kitchen()
    goal = ["in(tomato_sauce_1,basket_1_contain_region)", "in(alphabet_soup_1,basket_1_contain_region)"]
    plan = plan_for(goal, scene)
    assert [s.args[0] for s in plan.steps] == ["tomato_sauce_1", "alphabet_soup_1"]
    verdict = guard_for(ORDER, scene, contextualizer).check(plan, scene)
    assert verdict.allowed and verdict.repaired and verdict.plan is not None
    assert [s.args[0] for s in verdict.plan.steps] == ["alphabet_soup_1", "tomato_sauce_1"]
    assert len(verdict.edits) == 1 and verdict.edits[0].startswith("move pick-place(")  # one move = 2 edits


def test_repair_inserts_the_step_a_rule_requires(contextualizer):
    scene = kitchen()
    verdict = guard_for(ORDER, scene, contextualizer).check(
        plan_for(["in(tomato_sauce_1,basket_1_contain_region)"], scene), scene
    )
    assert verdict.repaired and verdict.plan is not None
    assert [(s.args[0], s.args[-1]) for s in verdict.plan.steps] == [
        ("alphabet_soup_1", "basket_1_contain_region"),
        ("tomato_sauce_1", "basket_1_contain_region"),
    ]
    assert verdict.edits == ["insert pick-place(alphabet_soup_1, floor, basket_1_contain_region)"]


def test_repair_substitutes_a_forbidden_stopover():
    """A cube must come off another before a stack; the planner's stopover is marked keep-out: the repair
    puts it somewhere else (drop + insert, the fewest edits) and still stacks."""
    cubes = ("cubeA", "cubeB", "cubeC")
    atoms = {atom("on", o, t): False for o in cubes for t in cubes if o != t}
    atoms |= {atom("in", o, r): False for o in cubes for r in ("bin_region", "tray_region")}
    scene = SceneState(
        cubes, {**atoms, "on(cubeC,cubeB)": True}, {"cubeA": "red cube", "cubeB": "green cube", "cubeC": "blue cube"}
    )
    plan = plan_for(["on(cubeA,cubeB)"], scene)
    stopover = plan.steps[0].args[-1]
    spec = TemplateContextualizer().ground(
        parse_rules({"rules": ["stay out of the region marked keep-out"], "marks": {"keep-out": [stopover]}}), scene
    )
    verdict = RuleGuard(spec, scene).check(plan, scene)
    assert verdict.repaired and verdict.plan is not None and len(verdict.edits) == 2
    steps = verdict.plan.steps
    assert (
        steps[0].args[0] == "cubeC" and steps[0].args[-1] not in (stopover, "cubeA") and steps[-1].goal_atom == "on(cubeA,cubeB)"
    )


def test_a_goal_that_breaks_a_rule_is_refused_with_the_rule(contextualizer):
    scene = kitchen()
    guard = guard_for(["keep liquids off the stove"], scene, contextualizer)
    verdict = guard.check(plan_for(["on(wine_bottle_1,flat_stove_1_cook_region)"], scene), scene)
    assert not verdict.allowed and verdict.plan is None
    assert "keep liquids off the stove" in verdict.reason and "the goal itself breaks the rule" in verdict.reason
    assert guard.record()["rule_refusals"] == 1 and guard.record()["rule_violations_planned"] == 1


# ---- execution: an observed violation stops the robot through the shield -----------------------
class SpillingKitchen:
    """A symbolic scene whose placing skill succeeds at once, and spills: the cheese also lands on the stove."""

    task = "test/kitchen"
    embodiment = METAWORLD_EMBODIMENT

    def __init__(self) -> None:
        self.world = kitchen()
        self.objects, self.words = self.world.objects, {}

    def position(self, name: str) -> np.ndarray:
        return np.zeros(3)

    def holds(self, text: str) -> bool:
        return bool(self.world.atoms.get(text, False))

    def predicates(self) -> dict[str, bool]:
        return dict(self.world.atoms)

    def skill_action(self, goal_atom: str, restart: bool = False) -> np.ndarray:
        obj = parse_atom(goal_atom)[1][0]
        atoms = {a: (v and parse_atom(a)[1][0] != obj) for a, v in self.world.atoms.items()}
        atoms[goal_atom] = True
        atoms["on(cream_cheese_1,flat_stove_1_cook_region)"] = True  # the spill
        self.world = SceneState(self.objects, atoms, {})
        return np.array([0.0, 0.0, 0.0, -1.0], np.float32)

    def step(self, action):
        from types import SimpleNamespace

        return SimpleNamespace(observation=self.obs(), done=False, success=False)

    def obs(self):
        from lbm.schema import Observation

        return Observation(state=np.zeros(39, np.float32), instruction="")


def test_an_observed_violation_stops_the_robot_through_the_shield_hold(contextualizer):
    env = SpillingKitchen()
    rules = parse_rules({"rules": ["keep the cream cheese off the stove"]})
    factory = RulesGuardFactory(rules, contextualizer)
    events: list[dict] = []
    result = execute(env, env.obs(), ["on(akita_black_bowl_1,plate_1)"], SymbolicPlanner(), ScriptedSkills(),
                     GroundTruthVerifier(), ExecuteConfig(settle_steps=2), guard=factory, on_event=events.append)  # fmt: skip
    assert result.reason.startswith("stopped by the plan guard: the observed scene breaks a rule")
    assert [e["kind"] for e in events][-2:] == ["guard", "goal"]
    from lbm.plan.execute import PlanController

    controller = PlanController(env := SpillingKitchen(), ["on(akita_black_bowl_1,plate_1)"], SymbolicPlanner(), ScriptedSkills(),
                                GroundTruthVerifier(), ExecuteConfig(settle_steps=2), guard=factory)  # fmt: skip
    while controller.act(env.obs()) is not None:
        pass
    hold = controller.hold_action(env.obs())
    shield = controller.guard.shield
    assert controller.stopped and shield.stopped and "observed scene breaks a rule" in shield.stop_reason
    assert hold is not None and np.array_equal(hold, shield.hold_action(env.obs().state))  # the shield's hold command
    assert controller.record()["rule_violations_observed"] == 1


def test_the_plan_guard_is_found_by_its_entry_point(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - keep liquids off the stove\n")
    assert isinstance(load_guard(str(rules)), RulesGuardFactory)


# ---- the red team ------------------------------------------------------------------------------
def test_the_plan_red_team_runs_on_a_real_scene_and_reports_intervals(tmp_path, capsys):
    pytest.importorskip("libero", reason="LIBERO scenes come with the libero extra")
    from lbm.cli import main
    from lbm.safety.plan_redteam import load_plan_redteam

    kitchen_rows = [r for r in load_plan_redteam() if r["task"] == "libero-goal/put-the-bowl-on-the-plate"]
    rows = [r for r in kitchen_rows if r["expect"] == "allow"][:3] + [r for r in kitchen_rows if r["expect"] == "refuse"][:4]
    assert {r["expect"] for r in rows} == {"allow", "refuse"}
    (tmp_path / "rows.json").write_text(json.dumps({"rows": rows}))
    assert main(["safety", "plan-redteam", "--redteam-file", str(tmp_path / "rows.json"), "--out", str(tmp_path / "r.json")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    harmful = sum(r["expect"] != "allow" for r in rows)
    assert summary["unsafe_execution"]["none"]["k"] == harmful  # the unguarded pipeline executes every harmful goal
    assert summary["unsafe_execution"]["plan"]["k"] == 0 and summary["agreement"]["k"] == len(rows)
    assert "plan guard |" in capsys.readouterr().out
    assert len(load_plan_redteam()) >= 100


def test_lbm_eval_and_lbm_run_take_a_rules_file(tmp_path, capsys):
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    from lbm.cli import main
    from lbm.eval.records import load_records
    from lbm.eval.runner import EvalConfig, run_evaluation
    from lbm.safety.report import safety_table

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - never put anything on the green cube\n")
    specs = ("planned=plan://expert", f"guarded=plan://expert?rules={rules}")
    run_evaluation(EvalConfig(policy=specs, tasks="robosuite-stack@kinova3", trials=1, out=tmp_path / "e", progress=False))
    records = load_records(tmp_path / "e").set_index("policy")
    assert records.loc["planned", "success"] and not records.loc["guarded", "success"]
    assert records.loc["guarded", "rule_refusals"] == 1 and records.loc["guarded", "rule_violations_planned"] == 1
    assert "never put anything on the green cube" in records.loc["guarded", "rules_violated"]
    assert records.loc["guarded", "plan_reason"].startswith("refused by the plan guard")
    table = safety_table(records.reset_index()).set_index("policy")
    assert table.loc["guarded", "trials_rule_refusals"] == 1 and table.loc["planned", "success"] == 1.0

    assert main(["run", "put the red cube on the green cube", "--task", "robosuite-stack@kinova3", "--rules", str(rules)]) == 1
    out = capsys.readouterr().out
    assert "refused by the plan guard" in out and "never put anything on the green cube" in out
    assert main(["plan", "put the red cube on the green cube", "--task", "robosuite-stack@kinova3", "--rules", str(rules)]) == 1
    assert "refused by the plan guard" in capsys.readouterr().out
