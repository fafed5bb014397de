"""The ``lbm`` command: one subcommand per verb, each a typed function parsed by tyro.

This file holds no logic. Each entry names the function that implements a verb; the function's
signature and docstring are its command line and help text. Modules are imported only when their
command runs, so ``lbm --help`` stays instant.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback

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
    ("study",): ("lbm.study:study_command", "The careful LBM study, end to end."),
    ("serve",): ("lbm.serve.commands:serve", "Serve a checkpoint over the openpi websocket protocol."),
    ("safety", "check"): ("lbm.safety.commands:check", "Run the instruction guard on one instruction."),
    ("safety", "redteam"): ("lbm.safety.commands:redteam", "Instruction-guard refusal rates on the red-team set."),
    ("safety", "train-monitor"): ("lbm.safety.commands:train_monitor", "Train and calibrate a failure monitor."),
}


def _available() -> dict[tuple[str, ...], tuple[str, str]]:
    """Commands whose implementing module exists in this installation."""
    out = {}
    for words, (target, summary) in COMMANDS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out[words] = (target, summary)
    return out


def _usage(commands: dict[tuple[str, ...], tuple[str, str]], prefix: tuple[str, ...] = ()) -> str:
    rows = [(" ".join(w), s) for w, (_, s) in commands.items() if w[: len(prefix)] == prefix]
    width = max((len(r[0]) for r in rows), default=0) + 2
    lines = [
        "usage: lbm [--debug] COMMAND [ARGS...]",
        "",
        "Pretrain, finetune, rigorously evaluate and safely deploy Large Behavior Models.",
        "",
        "commands:",
        *(f"  {name:<{width}}{summary}" for name, summary in rows),
        "",
        "Run `lbm COMMAND --help` for the options of a command. --debug shows full tracebacks.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lbm`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    commands = _available()

    words: tuple[str, ...] = ()
    for arg in argv:
        candidate = (*words, arg)
        if any(w[: len(candidate)] == candidate for w in commands):
            words = candidate
        else:
            break
    if words not in commands:
        print(_usage(commands, words), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") or words else 2

    target, summary = commands[words]
    module_name, function_name = target.split(":")
    rest = argv[len(words) :]
    from lbm.errors import LbmError

    try:
        import tyro

        function = getattr(importlib.import_module(module_name), function_name)
        if getattr(function, "raw_args", False):  # a command that parses its own arguments (e.g. profiles)
            result = function(rest)
        else:
            result = tyro.cli(function, args=rest, prog="lbm " + " ".join(words), description=function.__doc__ or summary)
    except LbmError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        if not debug:
            print("(run with --debug for the full traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
