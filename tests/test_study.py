"""A miniature `lbm study` end to end: real demos, real training, real blind paired evaluation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lbm.errors import LbmError
from lbm.study import PROFILES, analyze, run_study
from lbm.study.pipeline import json_default

MINI = replace(
    PROFILES["quick"],
    name="mini",
    pretrain_tasks="reach-v3,drawer-close-v3,button-press-topdown-v3",
    heldout_tasks="drawer-open-v3,window-close-v3",
    pretrain_episodes_per_task=3,
    heldout_episodes_per_task=4,
    fractions=(0.5, 1.0),
    size="tiny",
    pretrain_steps=60,
    task_steps=30,
    shifts=("obs_noise:low",),
    trials=4,
    eval_workers=1,
    demo_workers=1,
    max_steps=60,
    bootstrap_reps=200,
)


@pytest.fixture(scope="module")
def mini_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    config = replace(MINI, out=str(out))
    return config, run_study(config)


def test_study_writes_report_and_records(mini_study):
    config, result = mini_study
    records = pd.read_parquet(result["records"])
    # Every held-out task has pretrained (zero-shot) + finetuned and scratch at each fraction.
    names = {"pretrained", "finetuned-50pct", "finetuned-100pct", "scratch-50pct", "scratch-100pct"}
    for task in ("drawer-open-v3", "window-close-v3"):
        sub = records[records.task == task]
        assert set(sub.policy) == names
        assert set(sub["shift"]) == {"none", "obs_noise:low"}
        assert sub.groupby(["policy", "shift"]).size().eq(config.trials).all()
        # Paired: every policy saw the same seeds in every condition.
        seeds = sub.groupby(["policy", "shift"])["seed"].apply(lambda s: tuple(sorted(s)))
        assert seeds.nunique() == 1
    html = result["report_html"].read_text()
    for heading in (
        "Study verdicts",
        "Findings of the careful LBM study",
        "Data efficiency",
        "Robustness gap",
        "per task",
        "<img",
    ):
        assert heading in html
    forest = result["root"] / "report" / "forest.png"  # one interval per row of the per-task table
    assert forest.is_file() and "finetuned and zero-shot minus from-scratch" in result["report_md"].read_text()
    assert not (result["root"] / "report" / "scaling.png").exists()  # no scaling arm in this study
    openings = [v.split("] ", 1)[1].split(":")[0].split(",")[0] for v in result["analysis"]["verdicts"]]
    tags = [v.split("] ", 1)[0] + "]" for v in result["analysis"]["verdicts"]]
    plan = json.loads((result["root"] / "analysis_plan.json").read_text())
    registered = {plan["primary"]["id"], *(h["id"] for h in plan["secondary"]), "exploratory"}
    assert tags[0] == "[H1, primary]" and {t.strip("[]").split(",")[0] for t in tags} <= registered  # each in the plan
    assert (result["root"] / "analysis_plan.json").is_file() and len(result["analysis"]["analysis_plan_sha256"]) == 64
    for expected in (
        "Under nominal conditions",
        "Under shift obs_noise",
        "Data efficiency",
        "Robustness (obs_noise",
        "Zero-shot",
    ):
        assert any(o.startswith(expected) for o in openings), (expected, openings)


def test_every_reported_number_is_recomputable_from_records(mini_study):
    config, result = mini_study
    records = pd.read_parquet(result["records"])
    saved = json.loads((result["root"] / "analysis.json").read_text())
    saved.pop("wall_s"), saved.pop("stage_seconds"), saved.pop("compute_s"), saved.pop("analysis_plan_sha256")
    again = analyze(records, config, trials=saved["trials_per_cell"], mdd=saved["mdd"])

    def canonical(analysis):
        return json.dumps(analysis, sort_keys=True, default=json_default)

    assert canonical(again) == canonical(saved)
    # The per-task counts are the records' counts.
    for row in saved["per_task"]:
        sub = records[(records.task == row["task"]) & (records["shift"] == row["shift"])]
        mine = sub[sub.policy == ("finetuned-100pct" if row["arm"] == "finetuned" else "pretrained")]
        scratch = sub[sub.policy == "scratch-100pct"]
        assert (row["s"], row["n"]) == (int(mine.success.sum()), len(mine))
        assert (row["s_scratch"], row["n_scratch"]) == (int(scratch.success.sum()), len(scratch))


def test_rerun_is_fully_cached(mini_study, capsys):
    config, result = mini_study
    again = run_study(config)
    err = capsys.readouterr().err
    assert "[run]" not in err and err.count("[cached]") == 3 + 1 + 8 + 2
    pd.testing.assert_frame_equal(pd.read_parquet(again["records"]), pd.read_parquet(result["records"]))


def test_failed_stage_leaves_no_complete_looking_cache(tmp_path, monkeypatch):
    import lbm.study.pipeline

    def broken(config):
        raise FloatingPointError("loss is nan")

    monkeypatch.setattr(lbm.study.pipeline, "train", broken)
    config = replace(MINI, out=str(tmp_path), pretrain_tasks="reach-v3", heldout_tasks="drawer-open-v3")
    with pytest.raises(LbmError, match="pretrain"):
        run_study(config)
    folders = [p.name for p in (tmp_path / "cache").iterdir()]
    assert any(f.startswith("train-") and f.endswith(".partial") for f in folders)
    assert not any(f.startswith("train-") and not f.endswith(".partial") for f in folders)


def test_incompatible_study_folder_is_refused(tmp_path):
    (tmp_path / "study.json").write_text(json.dumps({"format": 0}))
    with pytest.raises(LbmError, match="format"):
        run_study(replace(MINI, out=str(tmp_path)))


def test_overlapping_task_sets_are_refused(tmp_path):
    with pytest.raises(LbmError, match="must not be pretraining tasks"):
        run_study(replace(MINI, out=str(tmp_path), heldout_tasks="reach-v3"))


def test_libero_tasks_can_be_held_out_after_pretraining_on_another_suite():
    pytest.importorskip("libero", reason="LIBERO is an optional extra")
    from lbm.study.pipeline import validate

    config = replace(
        MINI, pretrain_tasks="mt10,libero-goal/put-the-bowl-on-the-plate", heldout_tasks="libero-goal/put-the-bowl-on-the-stove"
    )
    pretrain, heldout, _ = validate(config)
    assert pretrain[-1].startswith("libero-goal/") and heldout == ["libero-goal/put-the-bowl-on-the-stove"]
    with pytest.raises(LbmError, match="not registered"):
        validate(replace(MINI, heldout_tasks="libero-goal/turn-on-the-stove"))


def test_heldout_robot_study_adds_the_own_robot_arm(tmp_path):
    """Pretrained on another robot vs on the held-out robot's own other task vs from scratch: same demos, same trials."""
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    config = replace(
        PROFILES["heldout-robot"],
        out=str(tmp_path),
        pretrain_tasks="robosuite-lift@panda",
        pretrain_weights=(),
        own_pretrain_tasks="robosuite-stack@kinova3",
        pretrain_episodes_per_task=2,
        heldout_episodes_per_task=2,
        fractions=(0.5, 1.0),
        size="tiny",
        pretrain_steps=40,
        task_steps=20,
        batch_size=16,
        trials=2,
        max_steps=30,
        eval_workers=1,
        demo_workers=1,
        bootstrap_reps=100,
        train_seeds=(0,),
    )
    result = run_study(config)
    records = pd.read_parquet(result["records"])
    assert set(records.arm) == {"finetuned", "scratch", "own_robot"}
    assert set(records.policy) == {f"{a}-{f}pct" for a in ("finetuned", "scratch", "own_robot") for f in (50, 100)}
    assert records.groupby("policy")["seed"].apply(lambda s: tuple(sorted(s))).nunique() == 1  # paired
    own = result["analysis"]["own_robot"]
    assert [r["fraction"] for r in own] == [0.5, 1.0]
    for r in own:  # recomputable from the records
        rate = records[records.data_fraction == r["fraction"]].groupby("arm").success.mean()
        assert r["cross_vs_own"]["diff"] == pytest.approx(rate["finetuned"] - rate["own_robot"])
        assert r["own_vs_scratch"]["diff"] == pytest.approx(rate["own_robot"] - rate["scratch"])
    assert any(
        v.startswith("[H6, secondary] Other robots' data vs the held-out robot's own") for v in result["analysis"]["verdicts"]
    )
    assert "held-out robot" in result["report_md"].read_text()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(own_pretrain_tasks="robosuite-lift@kinova3"), "must not be pretraining tasks"),
        (dict(own_pretrain_tasks="robosuite-stack@ur5e"), "must all be on one body"),
        (dict(heldout_tasks="robosuite-lift@kinova3,robosuite-lift@kinova3-joint"), "must all be on one body"),
        (
            dict(pretrain_tasks="robosuite-lift@ur5e,robosuite-stack@kinova3", pretrain_weights=()),
            "already contain the held-out robot",
        ),
        (dict(pretrain_tasks="robosuite-lift@ur5e"), "--pretrain-weights has 5 values, but pretraining has 1 datasets"),
    ],
)
def test_own_robot_arm_refuses_a_study_that_would_not_compare_robots(changes, message):
    pytest.importorskip("robosuite", reason="robosuite comes with the libero extra")
    from lbm.study.pipeline import validate

    with pytest.raises(LbmError, match=message):
        validate(replace(PROFILES["heldout-robot"], **changes))


def test_the_analysis_plan_is_preregistered_and_a_changed_or_tampered_plan_is_refused(tmp_path):
    from lbm.study.preregister import PLAN_FILE, TrialPlan, analysis_plan, check_plan, preregister

    config = PROFILES["quick"]
    plan = analysis_plan(config, TrialPlan(trials=23, h1_power=0.85, needed=23, mdd=0.4))
    digest = preregister(tmp_path, plan)
    assert check_plan(tmp_path) == digest == preregister(tmp_path, plan)  # a resumed run under the same plan
    assert plan["primary"]["id"] == "H1" and plan["alpha"] == config.alpha and plan["planned_trials_per_cell"] == 23
    with pytest.raises(LbmError, match="planned_trials_per_cell"):
        preregister(tmp_path, analysis_plan(config, TrialPlan(trials=30, h1_power=0.9, needed=23, mdd=0.4)))
    (tmp_path / PLAN_FILE).write_text((tmp_path / PLAN_FILE).read_text().replace('"alpha": 0.05', '"alpha": 0.1'))
    with pytest.raises(LbmError, match="changed after it was pre-registered"):
        check_plan(tmp_path)


@pytest.mark.parametrize("seeds, seed_sd", [(1, 0.0), (3, 1.0)])
def test_the_whole_study_keeps_its_error_rate_on_null_studies(seeds, seed_sd):
    """The whole analysis on studies where pretraining does nothing: any headline verdict (primary or
    secondary: shifts, per task, robustness, zero-shot) claims a difference at most alpha of the time (plus
    Monte Carlo error), with and without training runs that differ by seed."""
    from dataclasses import replace

    from lbm.study.analysis import analyze
    from lbm.study.simulate import null_records

    rng = np.random.default_rng(11)
    config = replace(PROFILES["quick"], train_seeds=tuple(range(seeds)), shifts=(), bootstrap_reps=50)
    config = replace(config, shifts=("obs_noise:low",))
    sims, primary, anything = 60, 0, 0
    for _ in range(sims):
        a = analyze(null_records(rng, config, seed_sd, trials=10), config, trials=10, mdd=0.4)
        said = a["verdicts"][0]
        assert said.startswith("[H1, primary]")
        primary += said.endswith(" significant.") and not said.endswith("not significant.")
        anything += bool(a["headline"]["claims"])  # any headline claim of a difference, secondary ones included
        assert primary == anything  # serial gatekeeping: no secondary claim without the primary one
    bound = config.alpha + 3 * np.sqrt(config.alpha * (1 - config.alpha) / sims)
    assert anything / sims <= bound


@pytest.mark.parametrize(
    "rates, anchor, counts, inside, says",
    [
        ({1: (0, 20), 2: (2, 20), 5: (8, 20), 10: (14, 20), 20: (20, 20)}, 10, (1, 2, 5, 10), True, "largest count inside"),
        ({5: (19, 20), 10: (20, 20)}, 5, (5,), False, "ceiling"),
        ({5: (0, 20), 10: (1, 20)}, 10, (5, 10), False, "floor"),
        ({2: (1, 20), 5: (19, 20)}, 2, (2,), False, "jumps over the band"),
    ],
)
def test_the_pilot_picks_the_anchor_away_from_floor_and_ceiling(rates, anchor, counts, inside, says):
    from lbm.study.pilot import choose_design

    choice = choose_design(rates, band=(0.2, 0.8))
    assert (choice.anchor, choice.counts, choice.inside) == (anchor, counts, inside) and says in choice.reason
    assert choice.fractions[-1] == 1.0 and 0.2 <= choice.target_p1 <= 0.8


def test_the_pilot_lands_inside_the_band_on_noisy_synthetic_curves():
    """True from-scratch success rises with demos (a logistic curve in log demos); with 20 pilot rollouts per
    count the chosen anchor's *true* rate is inside the band in most pilots."""
    from scipy.special import expit

    from lbm.study.pilot import choose_design

    rng = np.random.default_rng(5)
    counts = (1, 2, 5, 10, 20)
    true = {c: float(expit(2.0 * (np.log(c) - np.log(6)))) for c in counts}  # 0.03 ... 0.92
    hits = 0
    for _ in range(200):
        choice = choose_design({c: (int(rng.binomial(20, true[c])), 20) for c in counts}, band=(0.2, 0.8))
        hits += 0.2 <= true[choice.anchor] <= 0.8
    assert hits / 200 >= 0.9


def test_a_pilot_chooses_the_design_on_its_own_trial_seeds_before_the_plan_is_registered(tmp_path):
    from lbm.sim import eval_seed
    from lbm.study.pilot import PILOT_FIRST_TRIAL

    config = replace(MINI, out=str(tmp_path / "s"), heldout_tasks="drawer-open-v3", heldout_episodes_per_task=4,
                     pilot_demos=(1, 2, 4), pilot_trials=2, fractions=(1.0,), shifts=(), zero_shot=False)  # fmt: skip
    result = run_study(config)
    pilot = result["analysis"]["pilot"]
    assert pilot["counts"][-1] == pilot["anchor"] and set(pilot["rates"]) == {"1", "2", "4"}
    plan = json.loads((result["root"] / "analysis_plan.json").read_text())
    assert plan["pilot"]["anchor"] == pilot["anchor"] and plan["fractions"] == [c / pilot["anchor"] for c in pilot["counts"]]
    records = pd.read_parquet(result["records"])
    assert not records["policy"].str.startswith("pilot").any()  # the pilot's rollouts are not confirmatory
    assert sorted(records["data_fraction"].unique()) == sorted(plan["fractions"])
    pilot_evals = [d for d in (result["root"] / "cache").glob("eval-*") if "pilot-" in (d / "settings.json").read_text()]
    assert pilot_evals
    pilot_seeds = set(pd.read_parquet(pilot_evals[0] / "records.parquet")["seed"])
    assert min(pilot_seeds) >= eval_seed("drawer-open-v3", PILOT_FIRST_TRIAL) > max(records["seed"])
    assert "Pilot" in result["report_html"].read_text()
    # A pilot run can be a confirmatory run (same settings, one stage): the compute time counts each stage once.
    stages = [float((d / "DONE").read_text()) for d in (result["root"] / "cache").iterdir() if (d / "DONE").exists()]
    assert result["analysis"]["compute_s"] == pytest.approx(sum(stages), abs=0.5)


def test_the_scaling_arm_pretrains_on_nested_fractions_and_reports_a_trend(tmp_path):
    config = replace(MINI, out=str(tmp_path / "s"), heldout_tasks="drawer-open-v3", fractions=(1.0,), shifts=(),
                     zero_shot=False, pretrain_data_fractions=(0.5, 1.0))  # fmt: skip
    result = run_study(config)
    records = pd.read_parquet(result["records"])
    assert set(records[records.arm == "scaling"]["pretrain_fraction"]) == {0.5}
    assert set(records[records.arm == "finetuned"]["pretrain_fraction"]) == {1.0}
    scaling = result["analysis"]["scaling"]
    assert [lv["fraction"] for lv in scaling["levels"]] == [0.5, 1.0] and all(
        lv["n"] == config.trials for lv in scaling["levels"]
    )
    assert any(v.startswith("[H7, secondary] Pretraining-data scaling") for v in result["analysis"]["verdicts"])
    assert (result["root"] / "report" / "scaling.png").is_file() and "Pretraining-data scaling" in result["report_md"].read_text()
    plan = json.loads((result["root"] / "analysis_plan.json").read_text())
    assert "H7" in {h["id"] for h in plan["secondary"]}


def test_folds_hold_every_task_out_once_and_task_subsets_are_nested():
    from lbm.sim import resolve_tasks
    from lbm.study.pipeline import task_folds, task_subset

    tasks = resolve_tasks("mt50")
    folds = task_folds(tasks, 10, seed=0)
    assert sorted(t for f in folds for t in f) == sorted(tasks) and {len(f) for f in folds} == {5}
    assert task_folds(tasks, 10, seed=0) == folds != task_folds(tasks, 10, seed=1)  # seeded
    assert {len(f) for f in task_folds(tasks[:7], 3, seed=0)} == {2, 3}
    quarter, half, full = (task_subset(tasks, f, seed=0) for f in (0.25, 0.5, 1.0))
    assert set(quarter) <= set(half) <= set(full) == set(tasks) and (len(quarter), len(half)) == (13, 25)
    assert quarter == [t for t in tasks if t in quarter]  # in the pool's order
    assert len(task_subset(tasks[:3], 0.01, seed=0)) == 1  # never an empty body


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(folds=1), "--folds splits the 2 held-out tasks"),
        (dict(folds=3), "must be from 2 to 2"),
        (dict(folds=2, own_pretrain_tasks="reach-v3"), "cannot be combined"),
        (dict(pretrain_task_fractions=(0.5,)), "--pretrain-task-fractions must be at least two"),
        (dict(pretrain_task_fractions=(0.0, 1.0)), "--pretrain-task-fractions must be"),
        (dict(pretrain_tasks=""), "Empty task spec"),  # only folds may leave the pretraining tasks empty
    ],
)
def test_bad_fold_and_task_scaling_settings_are_refused(changes, message):
    from lbm.study.pipeline import validate

    with pytest.raises(LbmError, match=message):
        validate(replace(MINI, **changes))


def test_folds_pretrain_without_their_own_tasks_and_the_task_scaling_arm_reports_a_trend(tmp_path):
    """Two folds over two held-out tasks: each task is finetuned (and evaluated zero-shot) from a pretraining that
    never saw it but saw the other held-out task; the task-scaling arm pretrains on half of each fold's tasks."""
    config = replace(MINI, out=str(tmp_path / "s"), pretrain_tasks="reach-v3,button-press-topdown-v3", folds=2,
                     fractions=(1.0,), shifts=(), pretrain_task_fractions=(0.5, 1.0))  # fmt: skip
    result = run_study(config)
    records = pd.read_parquet(result["records"])
    assert set(records.arm) == {"finetuned", "scratch", "pretrained", "task_scaling"}
    assert set(records[records.arm == "task_scaling"]["pretrain_fraction"]) == {0.5}
    cache = result["root"] / "cache"
    pool = {"reach-v3", "button-press-topdown-v3", "drawer-open-v3", "window-close-v3"}
    for task in ("drawer-open-v3", "window-close-v3"):
        evaluation = json.loads(next(d for d in cache.glob("eval-*") if f'"task": "{task}"' in (d / "settings.json").read_text())
                                .joinpath("settings.json").read_text())  # fmt: skip
        for spec in evaluation["policies"]:
            name, path = spec.split("=", 1)
            if name in ("pretrained", "task-scaling-50pct"):
                stage = json.loads((Path(path).parent / "settings.json").read_text())
                if name != "pretrained":  # a finetuned policy: the pretraining it started from
                    stage = json.loads((Path(stage["finetune"]["init_from"]).parent / "settings.json").read_text())
                seen = set(stage["data"]["tasks"])
                assert task not in seen, (name, seen)  # the fold's own task is never pretrained on
                assert seen == pool - {task} if name == "pretrained" else (len(seen) == 2 and seen < pool - {task})
    task_scaling = result["analysis"]["task_scaling"]
    assert [lv["fraction"] for lv in task_scaling["levels"]] == [0.5, 1.0]
    assert any(v.startswith("[H8, secondary] Pretraining-task scaling") for v in result["analysis"]["verdicts"])
    assert (result["root"] / "report" / "task_scaling.png").is_file()
    plan = json.loads((result["root"] / "analysis_plan.json").read_text())
    assert "H8" in {h["id"] for h in plan["secondary"]} and plan["folds"] == 2


def test_the_planner_sizes_trials_for_the_primary_comparison():
    """H1's simulated power: about alpha under the null, rising with trials and with tasks; the planner's n reaches
    the declared power, and a design that cannot is reported with what it has."""
    from lbm.study.pipeline import plan_trials
    from lbm.study.simulate import h1_power

    rng = np.random.default_rng
    null = h1_power(0.5, 0.5, tasks=4, seeds=1, trials=20, alpha=0.05, reps=400, rng=rng(1))
    assert null <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400)
    few, many = (h1_power(0.4, 0.7, tasks=2, seeds=1, trials=n, alpha=0.05, rng=rng(2)) for n in (5, 30))
    assert few < many and many > 0.7
    assert h1_power(0.4, 0.7, tasks=5, seeds=1, trials=10, alpha=0.05, rng=rng(3)) > h1_power(
        0.4, 0.7, tasks=1, seeds=1, trials=10, alpha=0.05, rng=rng(3)
    )
    seeded_null = h1_power(0.5, 0.5, tasks=3, seeds=3, trials=10, alpha=0.05, seed_sd=1.0, reps=200, rng=rng(4))
    assert seeded_null <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 200)  # the seed-aware test under seed variation
    config = replace(PROFILES["quick"], trials=0, max_trials=50, target_p1=0.4, target_p2=0.8)
    planned = plan_trials(config, tasks=2)
    assert planned.needed == planned.trials and planned.h1_power >= config.power
    assert plan_trials(config, tasks=5).trials < planned.trials  # more tasks, fewer trials per cell
    capped = plan_trials(replace(config, max_trials=3), tasks=2)
    assert capped.needed is None and capped.trials == 3 and capped.h1_power < config.power


def test_every_profile_validates_and_only_quick_has_one_seed():
    from lbm.study.pipeline import validate

    for name, config in PROFILES.items():
        if name in ("heldout-robot", "libero-heldout"):
            pytest.importorskip("libero", reason="LIBERO is an optional extra")
        validate(config)
        assert len(config.train_seeds) >= 3 or name == "quick", name


def _records(rates: dict[str, float], tasks: int, trials: int, rng: np.random.Generator) -> pd.DataFrame:
    """Nominal records of arms at 100% of the data (pretrained: zero-shot) with these true success rates."""
    rows = [
        dict(
            task=f"task{t}",
            shift="none",
            arm=arm,
            data_fraction=0.0 if arm == "pretrained" else 1.0,
            train_seed=0,
            trial=k,
            success=bool(rng.random() < p),
            pretrain_fraction=1.0,
        )  # fmt: skip
        for t in range(tasks)
        for arm, p in rates.items()
        for k in range(trials)
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("rates", "h1", "h5"),
    [
        (dict(finetuned=0.9, scratch=0.3, pretrained=0.0), "supported", "supported"),  # a large effect, decided
        (dict(finetuned=0.5, scratch=0.5, pretrained=0.5), "not supported", "not tested"),  # none (tight interval): gated
        (dict(finetuned=0.3, scratch=0.9, pretrained=0.9), "contradicted", "not supported"),
    ],
)
def test_each_finding_of_the_careful_study_gets_a_plain_verdict(rates, h1, h5):
    config = replace(PROFILES["quick"], fractions=(1.0,), shifts=(), bootstrap_reps=100, target_p1=0.4, target_p2=0.8)
    a = analyze(_records(rates, tasks=4, trials=60, rng=np.random.default_rng(5)), config, trials=60, mdd=0.2)
    verdicts = {f["id"]: f["verdict"] for f in a["findings"]}
    assert verdicts["H1"] == h1 and verdicts["H5"] == h5
    assert verdicts["H3"] == "not measured (one data fraction)"
    # What this design leaves out is listed, not dropped: no shift, no pretraining-data scaling arm.
    assert verdicts["H4"] == "not measured (no shift condition)"
    assert verdicts["H7"] == "not measured (no pretraining-data scaling arm)"
    for f in a["findings"]:
        if f["value"] is None:  # a finding left out of the design has no measurement
            continue
        assert f["lo"] <= f["value"] <= f["hi"] and f["finding"] and f["test"]


def test_a_finding_the_design_leaves_out_is_listed_as_not_measured():
    config = replace(PROFILES["quick"], fractions=(1.0,), shifts=(), zero_shot=False, bootstrap_reps=100)
    records = _records(dict(finetuned=0.8, scratch=0.4), tasks=3, trials=30, rng=np.random.default_rng(2))
    verdicts = {f["id"]: (f["verdict"], f["value"]) for f in analyze(records, config, trials=30, mdd=0.3)["findings"]}
    assert verdicts["H5"] == ("not measured (no zero-shot evaluation)", None)
    assert verdicts["H4"][1] is None and verdicts["H7"][1] is None and verdicts["H1"][1] is not None
    assert verdicts["H3"] == ("not measured (one data fraction)", None)  # not H1's comparison shown again


def test_a_moved_study_folder_keeps_its_finished_stages(tmp_path):
    from lbm.study.pipeline import StageCache

    def build(work: Path) -> None:
        (work / "out.txt").write_text("built")

    cache = StageCache(tmp_path / "a")
    data = cache.stage("data", {"episodes": 3}, build, "demos")
    train = cache.stage("train", {"roots": [f"{data}/dataset"], "init": f"name={data}/checkpoint"}, build, "train")
    (tmp_path / "a").rename(tmp_path / "b")
    moved = StageCache(tmp_path / "b")

    def fail(work: Path) -> None:
        raise AssertionError("a finished stage was rebuilt after its study folder moved")

    data_b = moved.stage("data", {"episodes": 3}, fail, "demos")
    train_b = moved.stage("train", {"roots": [f"{data_b}/dataset"], "init": f"name={data_b}/checkpoint"}, fail, "train")
    assert (data_b.name, train_b.name) == (data.name, train.name) and (train_b / "out.txt").read_text() == "built"
    other = moved.stage("train", {"roots": [f"{data_b}/other"], "init": f"name={data_b}/checkpoint"}, build, "train 2")
    assert other.name != train.name  # other settings are still another stage
