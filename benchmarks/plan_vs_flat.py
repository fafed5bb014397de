"""Long-horizon goals: a flat policy vs planner + skill policy (open loop, and verified with replanning),
with the scripted expert (flat and planned) as the ceiling; blind and paired on LIBERO-10's fixed states.

One skill policy serves every learned arm: a flow policy trained on subtask-labelled LIBERO-10 demos
with --subtask-instructions of the windows conditioned on their subtask and the rest on the whole
goal, so (a) gives it the whole goal, (b) and (c) give it the planner's subtask instructions:

  (a) flat        the checkpoint, whole-goal instruction (the usual VLA baseline)
  (b) open_loop   plan://CKPT?verify=0    planner + skill policy, no verification
  (c) replan      plan://CKPT             planner + skill policy + verification and replanning (privileged verifier)
  ceiling         expert (flat) and plan://expert (the scripted skills, planned and verified)

  (d) learned     plan://CKPT?verifier=DIR as (c) with a learned success detector (an MLP over the observed
                  state, trained on scripted rollouts labelled with the true atoms) instead of the simulator's truth

Prints goal success and goal-atom ("subtask") success with
exact intervals, replans and planner time per arm, then lbm's comparison (Boschloo + Holm per task,
letters, CMH across tasks); writes benchmarks/results/plan_vs_flat.{json,md}.

    python benchmarks/plan_vs_flat.py --episodes 15 --steps 1500 --trials 5
    python benchmarks/plan_vs_flat.py --tasks T1,T2,T3 --episodes 50 --steps 8000 --trials 8
      (the README's run 2026-12-02; T1-T3: the three two-subtask LIBERO-10 tasks, named in results/plan_vs_flat.md;
      the earlier runs there executed whole chunks: --execute-steps 16)
    python benchmarks/plan_vs_flat.py --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PART = 25
"""Demonstrations per task in one generated part."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="libero-10")
    ap.add_argument("--episodes", type=int, default=15, help="demonstrations per task")
    ap.add_argument("--steps", type=int, default=1500, help="training steps of the skill policy")
    ap.add_argument("--subtask-instructions", type=float, default=0.5)
    ap.add_argument("--trials", type=int, default=5, help="trials per policy and task (fixed initial states 0..N-1)")
    ap.add_argument(
        "--verifier-policy-episodes", type=int, default=4,
        help="rollouts per task of the skill policy (whole goal) among the learned verifier's training data",
    )  # fmt: skip
    ap.add_argument(
        "--state-min-spread", type=float, default=0.0,
        help="floor on the state's normalization std (0: none; the demos hold the hand's orientation almost fixed)",
    )  # fmt: skip
    ap.add_argument(
        "--execute-steps", type=int, default=2,
        help="actions the skill policy executes from each chunk (the preset predicts 16) before asking again",
    )  # fmt: skip
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="/tmp/lbm-plan-vs-flat", help="scratch folder (data, checkpoint, evaluation)")
    ap.add_argument("--quick", action="store_true", help="2 tasks, 4 demos, 100 steps, 2 trials")
    ap.add_argument("--out", default="benchmarks/results/plan_vs_flat.json")
    args = ap.parse_args()

    from dataclasses import replace

    from lbm import stats
    from lbm.data import generate_demos
    from lbm.eval.compare import compare_records, render
    from lbm.eval.records import load_records
    from lbm.eval.runner import EvalConfig, run_evaluation
    from lbm.sim import get_task, resolve_tasks
    from lbm.study.pipeline import constant_marks, json_default
    from lbm.train import train
    from lbm.train.presets import get_preset

    tasks = resolve_tasks(args.tasks)
    if args.quick:
        tasks, args.episodes, args.steps, args.trials, args.verifier_policy_episodes = tasks[:2], 4, 100, 2, 2
    work = Path(args.work)
    start = time.perf_counter()
    # Demos in parts of PART episodes per task (part k from demo seeds PART*k on): a larger run reuses a smaller
    # run's parts, and an interrupted generation keeps its finished parts.
    parts = []
    for k, first in enumerate(range(0, args.episodes, PART)):
        parts.append(work / f"data-{k}")
        if not parts[-1].exists():
            generate_demos(tasks, min(PART, args.episodes - first), parts[-1], workers=args.workers, seed_offset=first)
    base = get_preset("libero-goal-flow-small")
    config = replace(
        base,
        name="plan-skills",
        out_dir=str(work / "train"),
        steps=args.steps,
        resume=True,
        tensorboard=False,
        save_every=max(args.steps // 2, 50),
        data=replace(base.data, roots=tuple(map(str, parts)), val_episodes=1, subtask_instructions=args.subtask_instructions),
    )
    policy = replace(config.policy, state_min_spread=args.state_min_spread, execute_steps=args.execute_steps)
    # The trainer normalizes one body's data with its first dataset's stats: mark what is constant there.
    config = replace(config, policy=replace(policy, constant_dims=constant_marks(parts[0], policy)))
    checkpoint = train(config)
    from lbm.plan import LearnedVerifier
    from lbm.train import load_policy

    verifier_episodes = max(2, args.episodes // 3)
    verifier, verifier_metrics = LearnedVerifier.train(
        tasks,
        episodes=verifier_episodes,
        policy=load_policy(checkpoint) if args.verifier_policy_episodes else None,
        policy_episodes=args.verifier_policy_episodes,
    )
    verifier_dir = verifier.save(work / "verifier")
    print(f"learned verifier, held-out rollout frames: {verifier_metrics}")
    trained_s = time.perf_counter() - start
    policies = (
        f"flat={checkpoint}",
        f"open_loop=plan://{checkpoint}?verify=0",
        f"replan=plan://{checkpoint}",
        f"learned=plan://{checkpoint}?verifier={verifier_dir}",
        "expert=expert",
        "planned_expert=plan://expert",
    )
    folder = work / "eval"
    run_evaluation(EvalConfig(policy=policies, tasks=",".join(tasks), trials=args.trials, out=folder, workers=args.workers))
    df = load_records(folder)
    goal_len = {t: len(get_task(t).goal) for t in tasks}
    rows = []
    for name, g in df.groupby("policy", sort=False):
        k, n = int(g.success.sum()), len(g)
        atoms_k, atoms_n = int(g.goal_atoms_met.sum()), int(sum(goal_len[t] for t in g.task))
        (lo, hi), (alo, ahi) = (
            [float(x) for x in stats.proportion_interval(k, n, method="clopper-pearson")],
            [float(x) for x in stats.proportion_interval(atoms_k, atoms_n, method="clopper-pearson")],
        )
        planned = "plan_replans" in g and g["plan_replans"].notna().any()
        rows.append(
            dict(
                policy=str(name), success=k, n=n, lo=lo, hi=hi, atoms=atoms_k, atoms_n=atoms_n, atoms_lo=alo, atoms_hi=ahi,
                replans=float(g["plan_replans"].mean()) if planned else None,
                planner_ms=float(1000 * g["plan_seconds"].median()) if planned else None,
                steps=float(g.steps.mean()), wall_s=float(g.duration_s.mean()),
            )
        )  # fmt: skip
    result = compare_records(df)
    render(result)
    lines = [
        f"Tasks: {', '.join(tasks)}; {args.episodes} demos per task; skill policy trained {args.steps} steps "
        f"({args.subtask_instructions:.0%} subtask instructions, state std floor {args.state_min_spread:g}, "
        f"executing {args.execute_steps} of {config.policy.horizon} actions per chunk); "
        f"{args.trials} trials per policy and task on LIBERO's fixed initial states; "
        f"{time.perf_counter() - start:.0f} s in all ({trained_s:.0f} s data and training).",
        "",
        "| policy | goal success | 95% CI | goal atoms met | 95% CI | mean replans | planner ms (median) | mean steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        replans = "" if r["replans"] is None else f"{r['replans']:.2f}"
        planner = "" if r["planner_ms"] is None else f"{r['planner_ms']:.1f}"
        lines.append(
            f"| {r['policy']} | {r['success']}/{r['n']} | [{r['lo']:.2f}, {r['hi']:.2f}] | {r['atoms']}/{r['atoms_n']} | "
            f"[{r['atoms_lo']:.2f}, {r['atoms_hi']:.2f}] | {replans} | {planner} | {r['steps']:.0f} |"
        )
    learned = df[df.policy == "learned"]
    confusion = {k: int(learned[f"plan_verifier_{k}"].sum()) for k in ("tp", "fp", "fn", "tn")}
    tp, fp, fn = confusion["tp"], confusion["fp"], confusion["fn"]
    lines += [
        "",
        f"Learned verifier (trained on {verifier_episodes} expert and {args.verifier_policy_episodes} skill-policy "
        f"rollouts per task): on held-out labelled rollouts precision {verifier_metrics['precision']:.3f}, recall "
        f"{verifier_metrics['recall']:.3f}, accuracy {verifier_metrics['accuracy']:.3f} ({verifier_metrics['frames']} frames); "
        f"during the (d) rollouts against the simulator's truth: {confusion} -> precision "
        f"{tp / (tp + fp) if tp + fp else float('nan'):.3f}, recall {tp / (tp + fn) if tp + fn else float('nan'):.3f}.",
    ]
    lines += ["", "Verdicts (lbm stats: Boschloo + Holm per task, CMH across tasks):", *(f"- {v}" for v in result["verdicts"])]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(
        rows=rows, comparison=result, tasks=tasks, args=vars(args), verifier=verifier_metrics, verifier_rollouts=confusion
    )
    out.write_text(json.dumps(payload, indent=2, default=json_default))
    out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}; records in {folder}")


if __name__ == "__main__":
    main()
