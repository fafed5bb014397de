"""Bad input anywhere on the command line ends in one clear error, never a traceback (`lbm` as a subprocess).

One table per class of defect: output folders that cannot be written, metadata that is damaged or
foreign, and arguments that are wrong. Each case runs ``python -m lbm.cli`` in a fresh process, as a
user would, and checks the exit code, that the message names what was wrong, and that no Python
traceback reached the user.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from test_policies_helpers import write_tiny_dataset

NO_WRITE = Path("/sys/lbm-cannot-write") if os.geteuid() == 0 else None  # root ignores permission bits, not a read-only mount


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_tiny_dataset(root / "data")
    evaluation = root / "ev"
    done = _lbm("eval", "--policy", "expert", "--tasks", "reach-v3", "--trials", "2", "--out", str(evaluation), "--no-progress")
    assert done.returncode == 0, done.stderr
    (root / "a-file").write_text("not a folder\n")
    (root / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    (root / "foreign.json").write_text(json.dumps({"hello": "world"}))
    (root / "records-empty.jsonl").write_text("")
    if NO_WRITE is None:
        (root / "read-only").mkdir()
        (root / "read-only").chmod(0o500)
    return {
        "data": str(data),
        "eval": str(evaluation),
        "file": str(root / "a-file"),
        "readonly": str((NO_WRITE or root / "read-only") / "out"),
        "tmp": str(root),
    }


def _lbm(*args: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # a "full disk": writes beyond the limit fail with EFBIG (Python ignores SIGXFSZ)
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "lbm.cli", *args], capture_output=True, text=True, timeout=600, preexec_fn=limit, env=env
    )


def _check(done: subprocess.CompletedProcess, code: int, words: tuple[str, ...]) -> None:
    message = done.stderr + done.stdout
    assert "Traceback" not in message, message[-3000:]
    assert done.returncode == code, (done.returncode, message[-3000:])
    for w in words:
        assert w in message, (w, message[-3000:])


WRITERS = {
    "data-generate": ["data", "generate", "--tasks", "reach-v3", "--episodes-per-task", "1", "--workers", "1", "--out", "{out}"],
    "train": ["train", "tiny-flow", "--data.roots", "{data}", "--steps", "2", "--out-dir", "{out}", "--no-tensorboard"],
    "eval": ["eval", "--policy", "expert", "--tasks", "reach-v3", "--trials", "1", "--no-progress", "--out", "{out}"],
    "report": ["report", "{eval}", "--out", "{out}"],
    "study": ["study", "quick", "--out", "{out}"],
}
# (where the output goes, words the error must contain)
PLACES = {
    "is-a-file": ("{file}/sub", ("error:",)),
    "not-writable": ("{readonly}", ("error:",)),
    "disk-full": ("{tmp}/full-{writer}", ("error:",)),
}


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_unwritable_output_is_a_clear_error(world, writer, place):
    template, words = PLACES[place]
    out = template.format(**world, writer=writer)
    args = [a.format(**world, out=out) for a in WRITERS[writer]]
    done = _lbm(*args, file_limit=1024 if place == "disk-full" else None)
    _check(done, 2, (*words, Path(out).name if place != "is-a-file" else "a-file"))


def _damaged_eval(world, name: str, damage) -> str:
    import shutil

    copy = Path(world["tmp"]) / f"ev-{name}"
    if not copy.exists():
        shutil.copytree(world["eval"], copy)
        damage(copy)
    return str(copy)


def _foreign_parquet(world) -> str:
    import pandas as pd

    path = Path(world["tmp"]) / "foreign.parquet"
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_parquet(path)
    return str(path)


# (case, argv builder, words the error must contain)
METADATA = [
    ("compare-garbage-parquet", lambda w: ["stats", "compare", f"{w['tmp']}/garbage.parquet"], ("garbage.parquet",)),
    ("compare-foreign-parquet", lambda w: ["stats", "compare", _foreign_parquet(w)], ("foreign.parquet", "column")),
    ("compare-foreign-json", lambda w: ["stats", "compare", f"{w['tmp']}/foreign.json"], ("foreign.json",)),
    ("compare-empty-jsonl", lambda w: ["stats", "compare", f"{w['tmp']}/records-empty.jsonl"], ("records-empty.jsonl",)),
    (
        "report-garbage-manifest",
        lambda w: ["report", _damaged_eval(w, "gm", lambda d: (d / "manifest.json").write_text("{oops"))],
        ("manifest.json",),
    ),
    (
        "report-empty-manifest",
        lambda w: ["report", _damaged_eval(w, "em", lambda d: (d / "manifest.json").write_text(""))],
        ("manifest.json",),
    ),
    (
        "report-missing-blinding",
        lambda w: ["report", _damaged_eval(w, "mb", lambda d: (d / "blinding.json").unlink())],
        ("blinding.json",),
    ),
    (
        "report-garbage-blinding",
        lambda w: ["report", _damaged_eval(w, "gb", lambda d: (d / "blinding.json").write_text('{"policies": 3}'))],
        ("blinding.json",),
    ),
    ("policy-info-not-a-checkpoint", lambda w: ["policy", "info", w["data"]], ("checkpoint",)),
    ("data-info-a-file", lambda w: ["data", "info", w["file"]], ("a-file",)),
    ("data-audit-a-file", lambda w: ["data", "audit", w["file"]], ("a-file",)),
    ("serve-missing-checkpoint", lambda w: ["serve", f"{w['tmp']}/no-such-ckpt"], ("no-such-ckpt",)),
]


@pytest.mark.parametrize(("case", "argv", "words"), METADATA, ids=[c for c, _, _ in METADATA])
def test_damaged_or_foreign_files_are_named(world, case, argv, words):
    _check(_lbm(*argv(world)), 2, words)


TRAIN = ["train", "tiny-flow", "--steps", "2", "--no-tensorboard"]
# (case, argv builder, words the error must contain)
ARGUMENTS = [
    ("unknown-command", lambda w: ["nonsense"], ("Unknown command 'nonsense'",)),
    ("unknown-subcommand", lambda w: ["safety", "nonsense"], ("Unknown subcommand 'nonsense'", "check")),
    ("close-subcommand", lambda w: ["data", "genrate"], ("Did you mean 'generate'",)),
    ("eval-without-policy", lambda w: ["eval", "--tasks", "reach-v3"], ("--policy",)),
    ("eval-unknown-task", lambda w: ["eval", "--policy", "expert", "--tasks", "reach-v9"], ("reach-v3",)),
    ("eval-zero-trials", lambda w: ["eval", "--policy", "expert", "--trials", "0", "--out", f"{w['tmp']}/z"], ("trials",)),
    ("lr-nan", lambda w: [*TRAIN, "--data.roots", w["data"], "--optim.lr", "nan", "--out-dir", f"{w['tmp']}/t"], ("--optim.lr",)),
    (
        "lr-negative",
        lambda w: [*TRAIN, "--data.roots", w["data"], "--optim.lr", "-1", "--out-dir", f"{w['tmp']}/t"],
        ("--optim.lr",),
    ),
    (
        "batch-zero",
        lambda w: [*TRAIN, "--data.roots", w["data"], "--batch-size", "0", "--out-dir", f"{w['tmp']}/t"],
        ("--batch-size",),
    ),
    (
        "val-episodes-negative",
        lambda w: [*TRAIN, "--data.roots", w["data"], "--data.val-episodes", "-1", "--out-dir", f"{w['tmp']}/t"],
        ("--data.val-episodes",),
    ),
    ("roots-twice", lambda w: [*TRAIN, "--data.roots", w["data"], w["data"], "--out-dir", f"{w['tmp']}/t"], ("more than once",)),
    (
        "train-missing-data",
        lambda w: [*TRAIN, "--data.roots", f"{w['tmp']}/nowhere", "--out-dir", f"{w['tmp']}/t"],
        ("nowhere", "does not exist"),
    ),
    ("plan-bad-rate", lambda w: ["stats", "plan", "--p1", "1.5", "--p2", "0.9"], ("1.5",)),
    (
        "generate-zero-episodes",
        lambda w: ["data", "generate", "--tasks", "reach-v3", "--episodes-per-task", "0"],
        ("at least 1",),
    ),
]


@pytest.mark.parametrize(("case", "argv", "words"), ARGUMENTS, ids=[c for c, _, _ in ARGUMENTS])
def test_bad_arguments_name_the_option(world, case, argv, words):
    _check(_lbm(*argv(world)), 2, words)


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [("websockets", ["serve", "some-checkpoint"], "serve"), ("peft", ["train", "finetune-flow-small-lora", "--help"], None)],
)
def test_a_missing_optional_package_names_its_extra(blocked, argv, extra):
    """`lbm serve` on an install without the serve extra says which extra to install (simulated by blocking the import)."""
    code = f"import sys; sys.modules[{blocked!r}] = None; from lbm.cli import main; sys.exit(main({argv!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if extra is None:  # help never needs the optional package
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        return
    _check(done, 2, (f"pip install 'lbm[{extra}]'",))
