"""Where the policies of an evaluation come from: ``--policy NAME=SOURCE`` and one registry of loaders.

A source is a built-in pseudo-policy (``expert``, ``random``), a checkpoint folder, or an address
``SCHEME://...`` served by a package above this one. Those packages register their loader as a
Python entry point in the group :data:`ENTRY_POINT_GROUP` (``lbm.serve`` registers ``ws`` and
``wss`` in ``pyproject.toml``), so the runner never imports them, and a third-party package can add
a scheme the same way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from lbm.errors import LbmError, did_you_mean
from lbm.eval.baselines import BUILTINS, make_builtin
from lbm.policies.base import Policy, PrivilegedPolicy

ENTRY_POINT_GROUP = "lbm.policy_sources"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

AnyPolicy = Policy | PrivilegedPolicy
PolicyLoader = Callable[["PolicySpec", int], AnyPolicy]
"""``loader(spec, seed) -> policy``; ``seed`` seeds what the loader itself randomizes (the random baseline)."""


@dataclass(frozen=True)
class PolicySpec:
    """One ``--policy NAME=SOURCE`` argument."""

    name: str
    """Name used in reports (unique within an evaluation)."""
    source: str
    """``expert``, ``random``, the path of a checkpoint folder, or ``SCHEME://...`` (e.g. ``ws://host:port``)."""

    @property
    def builtin(self) -> bool:
        """Whether ``source`` names a built-in pseudo-policy."""
        return self.source in BUILTINS

    @property
    def scheme(self) -> str | None:
        """The ``SCHEME`` of a ``SCHEME://...`` source, else None."""
        head, sep, _ = self.source.partition("://")
        return head.lower() if sep else None


@functools.cache
def schemes() -> dict[str, PolicyLoader]:
    """Registered address schemes -> loader (entry points of :data:`ENTRY_POINT_GROUP`, loaded lazily)."""
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name.lower()] = _lazy(ep)
    return found


def _lazy(ep) -> PolicyLoader:
    def load(spec: PolicySpec, seed: int) -> AnyPolicy:
        return ep.load()(spec, seed)

    return load


def parse_policy_specs(specs: list[str] | tuple[str, ...]) -> list[PolicySpec]:
    """Parse ``NAME=SOURCE`` (or a bare ``expert`` / ``random``) arguments; names must be unique.

    A checkpoint path must exist and be a folder; whether it loads is checked when it is loaded.
    """
    if not specs:
        raise LbmError(
            "No policy to evaluate. Pass at least one --policy NAME=SOURCE, where SOURCE is a checkpoint folder, a served "
            f"policy (ws://HOST:PORT) or a built-in ({', '.join(BUILTINS)}), e.g. --policy oracle=expert."
        )
    out: list[PolicySpec] = []
    for raw in specs:
        name, sep, source = raw.partition("=")
        if not sep:
            if raw in BUILTINS:
                name, source = raw, raw
            else:
                raise LbmError(
                    f"Policy spec {raw!r} has no '='. Write NAME=SOURCE, where SOURCE is a checkpoint folder, ws://HOST:PORT "
                    f"or one of {', '.join(BUILTINS)}, e.g. --policy mine=runs/pretrain/checkpoint --policy oracle=expert."
                )
        name, source = name.strip(), source.strip()
        if not _NAME_RE.match(name):
            raise LbmError(
                f"Policy name {name!r} in {raw!r} is not usable: use letters, digits, '_', '-' or '.', starting "
                "with a letter or digit."
            )
        if not source:
            raise LbmError(
                f"Policy spec {raw!r} names no source after '='. Give a checkpoint folder, ws://HOST:PORT, expert or random."
            )
        spec = PolicySpec(name, source)
        if spec.scheme is not None:
            if spec.scheme not in schemes():
                raise LbmError(
                    f"Policy {name!r}: no installed package serves {spec.scheme}:// sources (known: "
                    f"{', '.join(sorted(schemes())) or 'none'}). `lbm serve` provides ws:// (pip install 'lbm[serve]')."
                )
        elif not spec.builtin:
            path = Path(source)
            if not path.exists():
                if "/" not in source and "\\" not in source:
                    raise did_you_mean(source, BUILTINS, "built-in policy (or an existing checkpoint folder)")
                raise LbmError(
                    f"Checkpoint folder {source!r} of policy {name!r} does not exist. Check the path (it is "
                    "relative to the current directory), or use a built-in pseudo-policy: expert, random."
                )
            if not path.is_dir():
                raise LbmError(
                    f"Checkpoint {source!r} of policy {name!r} is a file; a checkpoint is a folder with "
                    "config.json and model.safetensors. Pass the folder."
                )
            spec = PolicySpec(name, str(path.resolve()))
        out.append(spec)
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LbmError(f"Policy names must be unique; {', '.join(dupes)} given more than once. Rename one (NAME=SOURCE).")
    return out


def load_policy_spec(spec: PolicySpec, seed: int = 0) -> AnyPolicy:
    """The policy a spec names: a built-in, a registered scheme's loader, or a checkpoint folder."""
    if spec.builtin:
        return make_builtin(spec.source, seed=seed)
    if spec.scheme is not None:
        if spec.scheme not in schemes():
            raise LbmError(f"No installed package serves {spec.scheme}:// sources; `lbm serve` provides ws://.")
        return schemes()[spec.scheme](spec, seed)
    from lbm.train import load_policy  # imports torch: only when a checkpoint is evaluated

    try:
        return load_policy(spec.source)
    except LbmError:
        raise
    except Exception as error:  # a corrupt checkpoint should read as a user error, not a crash
        raise LbmError(
            f"Could not load policy {spec.name!r} from {spec.source!r}: {type(error).__name__}: {error}. Check "
            "that the folder is a complete lbm checkpoint (`lbm policy info` prints what it contains)."
        ) from error
