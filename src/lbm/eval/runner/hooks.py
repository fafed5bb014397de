"""Extension points of the rollout loop: what watches each trial (the safety package implements them).

The runner calls, for every trial, a :class:`TrialHook` from every installed :class:`HookProvider`:
``on_chunk`` with the extras of each chunk (features, action-sample variance), ``filter`` on every
action right before ``env.step`` (a shield may replace it), and ``record`` once at the end for the
columns it adds to the trial's record. Providers are Python entry points of the group
:data:`ENTRY_POINT_GROUP` (``lbm.safety`` registers one in ``pyproject.toml``), so ``lbm.eval`` never
imports the packages above it.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lbm.policies.base import ChunkRequest
from lbm.schema import Embodiment

if TYPE_CHECKING:  # only for annotations: the config module imports nothing from here
    from lbm.eval.runner.config import EvalConfig
    from lbm.eval.schedule import TrialItem

ENTRY_POINT_GROUP = "lbm.trial_hooks"


class TrialHook(Protocol):
    """Watches one trial."""

    def on_chunk(self, features: np.ndarray | None, action_variance: float | None) -> None:
        """The extras of the chunk whose actions come next (None where not requested or not available)."""
        ...

    def filter(self, action: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The action to execute for ``action`` proposed at ``state`` (the unchanged action if this hook only watches)."""
        ...

    def record(self) -> dict[str, Any]:
        """Columns this hook adds to the trial's record."""
        ...


class HookProvider(Protocol):
    """Builds the hooks of every trial from the evaluation's settings."""

    def check(self, config: EvalConfig) -> None:
        """Refuse bad settings before any trial runs (raise :class:`lbm.errors.LbmError`)."""
        ...

    def request(self, config: EvalConfig) -> ChunkRequest:
        """What the hooks need from each ``predict_chunk`` call besides the actions."""
        ...

    def replaces_actions(self, config: EvalConfig) -> bool:
        """True when the hooks filter actions themselves (a shield): the runner then passes raw actions,
        non-finite ones included, instead of clipping them and failing the trial on NaN."""
        ...

    def trial(self, config: EvalConfig, item: TrialItem, embodiment: Embodiment) -> TrialHook:
        """The hook of one trial."""
        ...

    def summary(self, config: EvalConfig, out: Path) -> None:
        """Print what the hooks measured over a completed evaluation (e.g. a safety table)."""
        ...


@functools.cache
def providers() -> tuple[HookProvider, ...]:
    """Every installed hook provider (loaded once per process)."""
    return tuple(ep.load() for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name))


def merged_request(config: EvalConfig) -> ChunkRequest:
    """The union of what every provider requests."""
    wants = [p.request(config) for p in providers()]
    return ChunkRequest(features=any(r.features for r in wants), action_samples=max((r.action_samples for r in wants), default=0))
