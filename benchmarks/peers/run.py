"""lbm against LeRobot, side by side: the same demonstrations, the same budget, one blind paired evaluation.

    make bench-peers                          # the full table (about 2 hours on a 2-core CPU)
    python benchmarks/peers/run.py --quick    # a small version of every step (about 30 minutes)

Per setting (``mt10``: the ten MT10 tasks with their instructions, 30 demos each; ``single``: one task
outside MT10, from scratch):

1. ``lbm data generate`` writes the demonstrations; ``lerobot_side.py prepare`` makes the copy LeRobot's
   ACT and Diffusion can train on (an ``observation.environment_state`` equal to the state).
2. Each policy trains with its toolkit's own entry point and defaults: ``lbm train mt10-flow-small`` /
   ``mt10-diffusion-small`` (batch 64) and ``lerobot-train --policy.type=act`` / ``diffusion`` (batch 8).
   One deviation, for Diffusion: its defaults (252M parameters, 100 DDPM steps) cost 7.6 s per chunk on
   this CPU, so it runs with ``down_dims=[128,256,512]`` and 10 DDIM steps (17M parameters).
   *Equal time*: a short calibration run measures each policy's steps/s, and the real run gets the
   steps that fill ``--minutes`` (lbm's also stops at that time). *Equal samples*: every policy gets the
   gradient samples the slowest one (LeRobot's ACT) managed in that time.
3. LeRobot checkpoints are served by ``lbm serve --lerobot`` (LeRobot's own ``select_action`` every
   control step) and everything is evaluated by one ``lbm eval`` per condition: the same initial
   states, blinded, paired, compared with lbm's exact tests (``lbm.eval.compare``).
4. Latency per chunk at batch 1, actions/s delivered, parameters and peak training memory.

Every finished step is kept under ``--work`` and reused when the run is started again. Results go to
``benchmarks/results/peers.json`` and ``peers.md`` (``peers_quick.*`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the LeRobot environment builder the interop tests share

import lerobot_env  # noqa: E402

LBM = str(Path(sys.executable).with_name("lbm"))
LEROBOT_BATCH = 8  # lerobot-train's default batch size
LEROBOT_ARGS = {
    "act": [
        '--policy.normalization_mapping={"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ENV": "MEAN_STD", "ACTION": "MEAN_STD"}'
    ],
    "diffusion": [
        '--policy.normalization_mapping={"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ENV": "MIN_MAX", "ACTION": "MIN_MAX"}',
        "--policy.down_dims=[128,256,512]",
        "--policy.noise_scheduler_type=DDIM",
        "--policy.num_inference_steps=10",
    ],
}
"""Beyond the defaults: the added environment-state feature normalized like the state (each policy's own default
mode), and Diffusion's smaller size (see the module docstring)."""


@dataclass(frozen=True)
class Setting:
    name: str
    tasks: str
    demos: int
    trials: int


@dataclass(frozen=True)
class Arm:
    name: str
    toolkit: str  # "lbm" | "lerobot"
    policy: str  # lbm preset, or LeRobot policy type

    @property
    def batch(self) -> int:
        """Each toolkit's own default batch size: the lbm preset's, or lerobot-train's."""
        from lbm.train import get_preset

        return get_preset(self.policy).batch_size if self.toolkit == "lbm" else LEROBOT_BATCH


ARMS = (
    Arm("lbm_flow", "lbm", "mt10-flow-small"),
    Arm("lbm_diffusion", "lbm", "mt10-diffusion-small"),
    Arm("lerobot_act", "lerobot", "act"),
    Arm("lerobot_diffusion", "lerobot", "diffusion"),
)


def sh(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None, check: bool = True) -> tuple[float, float]:
    """Run ``cmd`` with its output in ``log``; (wall seconds, peak RSS MB). A failure stops the benchmark, saying where
    (with ``check=False`` it returns a peak of -1 instead)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) and not check:
        return time.perf_counter() - t0, -1.0
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}\n{log.read_text()[-3000:]}\n(full log: {log})")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


def lerobot_env_vars(work: Path) -> dict[str, str]:
    return {**lerobot_env.offline_env(work / "lerobot-home"), "PYTHONPATH": str(ROOT / "client" / "src")}


REUSED: list[str] = []
"""Steps this invocation took from an earlier one's cache (the report says so beside its wall time)."""


def cached(path: Path, make) -> dict:
    """The JSON at ``path``, made by ``make()`` only when it is not there yet (a rerun resumes)."""
    if path.is_file():
        REUSED.append(path.stem)
        return json.loads(path.read_text())
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def train_lbm(arm: Arm, data: Path, out: Path, steps: int, minutes: float, log: Path) -> dict:
    cmd = [LBM, "train", arm.policy, "--data.roots", str(data), "--out-dir", str(out), "--steps", str(steps), "--overwrite"]
    cmd += ["--no-tensorboard", "--val-every", "0", "--save-every", str(steps), "--log-every", "10", "--seed", "0"]
    if minutes:
        cmd += ["--max-minutes", f"{minutes:g}"]
    wall, rss = sh(cmd, log, check=False)
    hint = re.search(r"--policy\.constant-dims (\S+)\.?$", log.read_text(), re.MULTILINE)
    if rss < 0 and hint:  # lbm refuses to normalize dimensions constant up to float noise: take its own suggestion
        cmd += ["--policy.constant-dims", hint.group(1).rstrip(".")]
        wall, rss = sh(cmd, log)
    elif rss < 0:
        sh(cmd, log)  # fails again, reporting the log
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    done = max(m["step"] for m in metrics)
    rates = [m["train/samples_per_s"] for m in metrics if "train/samples_per_s" in m]
    return {
        "command": " ".join(cmd),
        "steps": done,
        "batch": arm.batch,
        "samples": done * arm.batch,
        "wall_s": wall,
        "samples_per_s": float(np.median(rates[1:] or rates)),
        "peak_rss_mb": rss,
        "checkpoint": str(out / "checkpoint"),
    }


def train_lerobot(arm: Arm, python: str, data: Path, out: Path, steps: int, work: Path, log: Path) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # lerobot-train refuses an existing output folder
    cmd = [
        str(Path(python).with_name("lerobot-train")),
        "--dataset.repo_id=local/lbm-peers",
        f"--dataset.root={data}",
        "--dataset.video_backend=pyav",
        f"--policy.type={arm.policy}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        f"--steps={steps}",
        f"--batch_size={LEROBOT_BATCH}",
        "--num_workers=0",
        "--eval_freq=0",
        f"--save_freq={steps}",
        f"--log_freq={max(1, min(50, steps // 4))}",
        "--seed=1000",
        f"--output_dir={out}",
        *LEROBOT_ARGS[arm.policy],
    ]
    wall, rss = sh(cmd, log, env=lerobot_env_vars(work), cwd=work)
    per_step = [float(u) + float(d) for u, d in re.findall(r"updt_s:([\d.]+) data_s:([\d.]+)", log.read_text())]
    return {
        "command": " ".join(cmd),
        "steps": steps,
        "batch": LEROBOT_BATCH,
        "samples": steps * LEROBOT_BATCH,
        "wall_s": wall,
        "samples_per_s": LEROBOT_BATCH / float(np.median(per_step[1:] or per_step)),
        "peak_rss_mb": rss,
        "checkpoint": str(out / "checkpoints" / "last" / "pretrained_model"),
    }


def train(arm: Arm, setting_dir: Path, python: str, steps: int, minutes: float, tag: str, work: Path) -> dict:
    out = setting_dir / "train" / f"{arm.name}-{tag}"
    log = setting_dir / "logs" / f"train-{arm.name}-{tag}.log"
    if arm.toolkit == "lbm":
        return train_lbm(arm, setting_dir / "data", out, steps, minutes, log)
    return train_lerobot(arm, python, setting_dir / "data-lerobot", out, steps, work, log)


def calibrate(arm: Arm, setting_dir: Path, python: str, work: Path) -> float:
    """Samples/s of ``arm``'s training loop, from a short run (start-up excluded)."""
    steps = {"lbm": 60, "lerobot": 12 if arm.policy == "act" else 40}[arm.toolkit]
    return train(arm, setting_dir, python, steps, 0, "calibration", work)["samples_per_s"]


class Servers:
    """``lbm serve --lerobot`` for each LeRobot checkpoint, on free ports, for one evaluation."""

    def __init__(self, checkpoints: dict[str, str], python: str, logs: Path):
        self.procs: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}
        self.logs = logs
        for name, ckpt in checkpoints.items():
            log = open(logs / f"serve-{name}.log", "w")
            cmd = [LBM, "serve", ckpt, "--lerobot", "--lerobot-python", python, "--env-state-from-state", "--port", "0"]
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for name, proc in self.procs.items():
            deadline = time.monotonic() + 300
            while name not in self.urls:
                text = (logs / f"serve-{name}.log").read_text()
                found = re.search(r"listening on (ws://\S+)", text)
                if found:
                    self.urls[name] = found.group(1)
                elif proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    sys.exit(f"lbm serve --lerobot for {name} did not start:\n{text[-2000:]}")
                else:
                    time.sleep(0.5)

    def stop(self) -> dict[str, dict]:
        """Stop every server; their closing summaries (requests, errors, clipped actions)."""
        summaries = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.terminate()  # lbm serve passes it on; the LeRobot server prints its summary
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # the server and LeRobot's process with it
            lines = [
                line for line in (self.logs / f"serve-{name}.log").read_text().splitlines() if line.startswith('{"requests"')
            ]
            summaries[name] = json.loads(lines[-1]) if lines else {}
        return summaries


def evaluate(setting: Setting, setting_dir: Path, policies: dict[str, str], python: str, shift: str, tag: str) -> dict:
    """One blind, paired ``lbm eval`` of ``policies`` (name -> lbm checkpoint or LeRobot checkpoint) and its comparison."""
    from lbm.eval.compare import compare_records
    from lbm.eval.records import load_records

    out = setting_dir / "eval" / tag
    lerobot = {n: c for n, c in policies.items() if n.startswith("lerobot")}
    servers = Servers(lerobot, python, setting_dir / "logs")
    try:
        sources = {n: servers.urls.get(n, c) for n, c in policies.items()}
        cmd = [LBM, "eval", "--tasks", setting.tasks, "--trials", str(setting.trials), "--shifts", shift, "--out", str(out)]
        for name, source in sources.items():
            cmd += ["--policy", f"{name}={source}"]
        wall, _ = sh(cmd, setting_dir / "logs" / f"eval-{tag}.log")
    finally:
        served = servers.stop()
    df = load_records(out)
    result = compare_records(df, seed=0)
    steps = df.groupby("policy")["execute_steps"].median().to_dict()
    return {"shift": shift, "wall_s": wall, "compare": result, "served": served, "execute_steps": steps}


def lbm_latency(checkpoint: str, repeats: int = 50) -> dict:
    """Median and p90 of one chunk at batch 1 for an lbm checkpoint (the first call's warm-up excluded)."""
    from lbm.schema import Observation
    from lbm.train import load_policy

    policy = load_policy(checkpoint)
    body = next(iter(policy.embodiments.values()))
    instruction = (policy.describe().get("instructions") or [""])[0]
    obs = Observation(state=np.zeros(body.state_dim, np.float32), instruction=instruction, embodiment=body.name)
    times = []
    for i in range(repeats + 3):
        state = policy.reset(i)
        t0 = time.perf_counter()
        policy.predict_chunk([obs], [state])
        if i >= 3:
            times.append(1000.0 * (time.perf_counter() - t0))
    return {
        "chunk_ms_median": float(np.median(times)),
        "chunk_ms_p90": float(np.percentile(times, 90)),
        "chunk_length": policy.horizon,
        "parameters": sum(p.numel() for p in policy.parameters()),
    }  # type: ignore[attr-defined]


def run_setting(setting: Setting, work: Path, python: str, minutes: float, shift: str) -> dict:
    from lbm.sim import embodiment_of, resolve_tasks

    sdir = work / f"{setting.name}-{minutes:g}min"  # the budget is part of every cached result
    env = lerobot_env_vars(work)
    if not (sdir / "data" / "meta" / "info.json").is_file():
        sh(
            [
                LBM,
                "data",
                "generate",
                "--tasks",
                setting.tasks,
                "--episodes-per-task",
                str(setting.demos),
                "--out",
                str(sdir / "data"),
                "--overwrite",
            ],
            sdir / "logs" / "data.log",
        )
    if not (sdir / "data-lerobot" / "meta" / "info.json").is_file():
        sh(
            [python, str(HERE / "lerobot_side.py"), "prepare", str(sdir / "data"), str(sdir / "data-lerobot")],
            sdir / "logs" / "prepare.log",
            env=env,
            cwd=work,
        )
    trained: dict[str, dict] = {}
    for arm in ARMS:  # equal wall time: the steps each loop fits in `minutes`, from its calibrated rate

        def fill(arm: Arm = arm) -> dict:
            rate = calibrate(arm, sdir, python, work)
            steps = max(1, int(rate * minutes * 60 / arm.batch))
            return {**train(arm, sdir, python, steps, minutes * 1.1, "time", work), "calibrated_samples_per_s": rate}

        trained[f"{arm.name}"] = cached(sdir / "results" / f"train-{arm.name}-time.json", fill)
    budget = min(t["samples"] for t in trained.values())
    slowest = min(trained, key=lambda n: trained[n]["samples"])
    for arm in ARMS:  # equal gradient samples: what the slowest loop saw
        if arm.name == slowest:
            trained[f"{arm.name}@samples"] = trained[arm.name]
            continue
        steps = max(1, math.ceil(budget / arm.batch))
        trained[f"{arm.name}@samples"] = cached(
            sdir / "results" / f"train-{arm.name}-samples.json",
            lambda arm=arm, steps=steps: train(arm, sdir, python, steps, 0, "samples", work),
        )
    time_arms = {a.name: trained[a.name]["checkpoint"] for a in ARMS}
    sample_arms = {f"{a.name}_eqs": trained[f"{a.name}@samples"]["checkpoint"] for a in ARMS}
    evals = {
        "time/none": cached(
            sdir / "results" / "eval-time-none.json", lambda: evaluate(setting, sdir, time_arms, python, "none", "time-none")
        ),
        f"time/{shift}": cached(
            sdir / "results" / "eval-time-shift.json", lambda: evaluate(setting, sdir, time_arms, python, shift, "time-shift")
        ),
        "samples/none": cached(
            sdir / "results" / "eval-samples-none.json",
            lambda: evaluate(setting, sdir, sample_arms, python, "none", "samples-none"),
        ),
    }
    emb_file = sdir / "embodiment.json"
    emb_file.write_text(json.dumps(embodiment_of(resolve_tasks(setting.tasks)[0]).to_json()))
    latency = {}
    for arm in ARMS:
        ckpt = trained[arm.name]["checkpoint"]
        if arm.toolkit == "lbm":
            latency[arm.name] = lbm_latency(ckpt)
        else:
            r = subprocess.run(
                [python, str(HERE / "lerobot_side.py"), "latency", ckpt, str(emb_file)],
                capture_output=True,
                text=True,
                env=env,
                cwd=work,
            )
            if r.returncode:
                sys.exit(f"LeRobot latency of {arm.name} failed:\n{r.stderr[-2000:]}")
            latency[arm.name] = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        "setting": setting.__dict__,
        "minutes": minutes,
        "samples_budget": budget,
        "slowest": slowest,
        "training": trained,
        "evaluations": evals,
        "latency": latency,
    }


def _rate(row: dict) -> str:
    return f"{row['successes']}/{row['n']}"


def markdown(results: dict) -> str:
    lines = [
        f"# lbm vs LeRobot {results['lerobot_version']} (`benchmarks/peers/run.py{' --quick' if results['quick'] else ''}`)",
        "",
        f"{results['date']}, {results['machine']}; {results['wall_min']:.0f} min end to end{results.get('reused', '')}. "
        "Every rate is successes/trials with a 95% Wilson interval; letters: policies sharing a letter are not separated "
        "(Boschloo, Holm within the cell); "
        "aggregate: stratified mean over tasks with the CMH test.",
        "",
    ]
    for s in results["settings"]:
        st = s["setting"]
        lines += [
            f"## Setting `{st['name']}`: {st['tasks']}, {st['demos']} demos per task, {st['trials']} trials per task, "
            f"{s['minutes']:g} min of training per policy",
            "",
        ]
        for key, ev in s["evaluations"].items():
            budget, shift = key.split("/")
            res = ev["compare"]
            tasks = sorted({c["task"] for c in res["cells"]})
            head = "| policy | aggregate [95% CI] | letters | " + " | ".join(t.removesuffix("-v3") for t in tasks) + " |"
            lines += [
                f"### {'equal wall time' if budget == 'time' else 'equal gradient samples'}, shift `{shift}`",
                "",
                head,
                "|" + "---|" * (3 + len(tasks)),
            ]
            cell = {(r["policy"], r["task"]): r for r in res["success"]}
            for p in res["aggregate"]["policies"]:
                row = f"| {p['policy']} | {p['mean']:.2f} [{p['mean_lo']:.2f}, {p['mean_hi']:.2f}] | {p['letters']} | "
                row += " | ".join(f"{_rate(cell[(p['policy'], t)])} {cell[(p['policy'], t)]['letters']}" for t in tasks) + " |"
                lines.append(row)
            aggregate = [v for v in res["verdicts"] if v.startswith("Across")]  # per-task verdicts are the letters above
            served = [f"{n}: {v.get('requests')} control steps, {v.get('errors')} errors, {v.get('clipped_actions')} actions "
                      "clipped to the bounds" for n, v in ev["served"].items() if v]  # fmt: skip
            lines += ["", *[f"- {v}" for v in aggregate], *[f"- served by LeRobot: {v}" for v in served],
                      *[f"- warning: {w}" for w in res["warnings"]], ""]  # fmt: skip
        lines += [
            "### Cost",
            "",
            "| policy | parameters | training samples/s | samples (equal time) | train wall | peak train RSS | "
            "chunk latency median / p90 | actions executed per chunk | actions/s delivered |",
            "|" + "---|" * 9,
        ]
        for name, lat in s["latency"].items():
            t = s["training"][name]
            executed = (
                lat.get("executed_per_chunk") or s["evaluations"]["time/none"]["execute_steps"].get(name) or lat["chunk_length"]
            )
            lines.append(
                f"| {name} | {lat['parameters'] / 1e6:.1f}M | {t['samples_per_s']:.0f} | {t['samples']} ({t['steps']} × "
                f"{t['batch']}) | {t['wall_s'] / 60:.1f} min | {t['peak_rss_mb']:.0f} MB | {lat['chunk_ms_median']:.1f} / "
                f"{lat['chunk_ms_p90']:.1f} ms | {executed:.0f} | {1000 * executed / lat['chunk_ms_median']:.0f} |"
            )
        lines += [
            "",
            f"Equal-samples budget: {s['samples_budget']} samples (what {s['slowest']} reached in {s['minutes']:g} min).",
            "",
            "Commands:",
            "",
            *[f"- `{n}`: `{t['command']}`" for n, t in s["training"].items() if "@" not in n],
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="small version: 1 min per policy, 3 MT10 tasks with 3 trials, 5 single-task trials"
    )
    ap.add_argument("--minutes", type=float, default=6.0, help="training wall time per policy and setting")
    ap.add_argument("--settings", default="mt10,single", help="comma-separated settings to run (mt10, single)")
    ap.add_argument("--single-task", default="hand-insert-v3", help="the single-task setting's task (outside MT10)")
    ap.add_argument("--shift", default="obs_noise:low", help="the shift condition evaluated beside nominal")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "peers", help="working folder (kept: a rerun resumes)")
    args = ap.parse_args()
    t0 = time.time()
    try:
        python = str(lerobot_env.build())
    except lerobot_env.Unavailable as error:
        sys.exit(f"cannot build the LeRobot environment: {error}")
    if args.quick:
        settings = [
            Setting("mt10-quick", "reach-v3,button-press-topdown-v3,drawer-close-v3", 10, 3),
            Setting("single-quick", args.single_task, 10, 5),
        ]
        minutes, work = 1.0, args.work.with_name(args.work.name + "-quick")
    else:
        settings = [Setting("mt10", "mt10", 30, 5), Setting("single", args.single_task, 30, 20)]
        minutes, work = args.minutes, args.work
    wanted = args.settings.split(",")
    unknown = sorted(set(wanted) - {s.name.removesuffix("-quick") for s in settings})
    if unknown:
        sys.exit(f"--settings: unknown {unknown}; choose from mt10, single")
    settings = [s for s in settings if s.name.removesuffix("-quick") in wanted]
    work.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(
        [python, "-c", "import lerobot; print(lerobot.__version__)"], capture_output=True, text=True, env=lerobot_env_vars(work)
    ).stdout.strip()
    results = {
        "lerobot_version": version,
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "lerobot_python": python,
        "settings": [run_setting(s, work, python, minutes, args.shift) for s in settings],
    }
    results["wall_min"] = (time.time() - t0) / 60
    results["reused"] = (
        f" (this invocation; {len(REUSED)} finished steps were reused from an earlier one: latency, parameters and the "
        "tables are recomputed, training and evaluation were not)"
        if REUSED
        else ""
    )
    name = "peers_quick" if args.quick else "peers"
    (HERE.parent / "results" / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    (HERE.parent / "results" / f"{name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
