"""Killing a command that runs worker processes takes the workers with it, and loses no finished work."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbm.eval.records import JOURNAL_FILE, load_records


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (read from /proc: Linux only)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def _kill_once_workers_run(args: list[str], ready, workers: int = 2) -> tuple[set[int], str]:
    """Start ``lbm ARGS``, wait until ``workers`` children run and ``ready()`` holds, SIGKILL it; return the children."""
    proc = subprocess.Popen([sys.executable, "-m", "lbm.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, children = time.time() + 240, set()
    while time.time() < deadline and proc.poll() is None:
        children = _children(proc.pid)
        if len(children) >= workers and ready():
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the command ended before it could be killed: {proc.communicate()[1][-2000:]}"
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    gone_by = time.time() + 30
    while time.time() < gone_by and any(_alive(c) for c in children):
        time.sleep(0.2)
    return {c for c in children if _alive(c)}, err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_killed_generation_takes_its_workers_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "demos"
    args = ["data", "generate", "--tasks", "mt10", "--episodes-per-task", "50", "--workers", "2", "--out", str(out)]
    left, err = _kill_once_workers_run(args, lambda: bool(list(tmp_path.glob(".demos.partial-*"))))
    assert not left, f"workers {left} outlived their killed parent"
    assert "BrokenPipe" not in err and "Traceback" not in err, err[-2000:]
    assert not out.exists() and list(tmp_path.glob(".demos.partial-*"))
    done = subprocess.run(
        [sys.executable, "-m", "lbm.cli", *args[:3], "reach-v3", "--episodes-per-task", "1", "--workers", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "left by an interrupted write" in done.stdout and not list(tmp_path.glob(".demos.partial-*"))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_killed_evaluation_takes_its_workers_and_resumes_without_redoing_trials(tmp_path):
    out = tmp_path / "ev"
    args = ["eval", "--policy", "expert", "--tasks", "reach-v3,push-v3", "--trials", "12", "--workers", "2", "--out", str(out)]
    args += ["--envs-per-worker", "1", "--no-progress"]
    journal = out / JOURNAL_FILE

    def some_trials_done() -> bool:
        return journal.exists() and journal.stat().st_size > 0

    left, err = _kill_once_workers_run(args, some_trials_done)
    assert not left, f"workers {left} outlived their killed parent"
    assert "BrokenPipe" not in err and "Traceback" not in err, err[-2000:]
    finished = [line for line in journal.read_text().splitlines() if line.endswith("}")]
    assert 0 < len(finished) < 24
    done = subprocess.run([sys.executable, "-m", "lbm.cli", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert journal.read_text().splitlines()[: len(finished)] == finished, "finished trials were rewritten"
    records = load_records(out)
    assert len(records) == 24 and records["success"].all()
