"""Safety bookkeeping of one rollout inside the eval runner (``lbm eval --shield``).

This module implements the runner's trial hooks (:mod:`lbm.eval.runner.hooks`): :data:`PROVIDER`
is registered as the ``lbm.trial_hooks`` entry point ``safety``. The runner creates one
:class:`SlotSafety` per trial and passes every action through :meth:`SlotSafety.filter` right
before ``env.step``. With the shield on, the action is replaced by
the shield's safe action; with it off, the action is executed as the runner prepared it. Either
way the *executed* action is audited against the hard limits (bounds, workspace), so records of
shielded and unshielded runs report violations on the same scale.

Record columns added to every trial (see :meth:`SlotSafety.record`):

=====================  =====  ===================================================================
column                 type   meaning
=====================  =====  ===================================================================
shield                 bool   the action shield was on
shield_interventions   int    steps whose action the shield changed
shield_holds           int    steps replaced by the hold command (NaN/inf, wrong shape, stop)
shield_limits          str    ``limit:count`` pairs, e.g. ``rate:12,workspace:3`` ("" if none)
violations             int    executed actions that broke a hard limit (0 whenever the shield is on)
proposed_violations    int    actions *proposed* by the policy that would have broken a hard limit
alert_step             int    (with ``--monitor``) first step the failure monitor alarmed; -1: never
=====================  =====  ===================================================================

With ``--features`` (or ``--monitor``) the runner also hands over the policy feature of every
chunk (:meth:`SlotSafety.on_chunk`); ``--features`` stores them per trial (see
:mod:`lbm.safety.monitor`), with ``--action-samples K`` also the per-step action-sample
variance. The monitor only records alerts; it does not stop the rollout, so that success with and
without monitoring stays comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lbm.eval.records import PARQUET_FILE, load_records
from lbm.eval.runner.config import EvalConfig
from lbm.eval.schedule import TrialItem
from lbm.policies.base import ChunkRequest
from lbm.safety.monitor import action_var_path, features_path, load_monitor
from lbm.safety.report import print_safety_table, safety_table
from lbm.safety.shield import ActionShield, default_shield_config
from lbm.schema import Embodiment


class SlotSafety:
    """Shield (optional) and violation audit of one rollout."""

    def __init__(
        self, embodiment: Embodiment, shield: bool = False, monitor: str | None = None, features_file: Path | None = None
    ) -> None:
        config = default_shield_config(embodiment)
        self.monitor = None if monitor is None else load_monitor(str(monitor))
        self.features_file = features_file
        self.keep_features = monitor is not None or features_file is not None
        self.feature: np.ndarray | None = None  # feature of the chunk being executed
        self.features: list[np.ndarray] = []
        self.action_var: float | None = None  # action-sample variance of that chunk (if recorded)
        self.action_vars: list[float] = []
        self.shield = ActionShield(config, keep_log=False) if shield else None
        self._audit = ActionShield(config, keep_log=False)  # only its pure violations() is used
        self.violations = 0
        self.proposed_violations = 0

    def filter(self, action: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The action to execute for ``action`` at ``state`` (shielded if on); audit both."""
        proposed = bool(self._audit.violations(action, state))
        self.proposed_violations += proposed
        if self.shield is None:  # what is executed is what was proposed: audit it once
            executed, broke = action, proposed
        else:
            executed = self.shield.filter(action, state)
            broke = bool(self._audit.violations(executed, state))
        self.violations += broke
        if self.keep_features and self.feature is not None:
            self.features.append(self.feature)
            if self.action_var is not None:
                self.action_vars.append(self.action_var)
        return executed

    def on_chunk(self, features: np.ndarray | None, action_variance: float | None) -> None:
        """The policy feature ``(D,)`` of the chunk whose actions come next (and its action-sample variance)."""
        if features is not None:
            self.feature = np.asarray(features, np.float32)
            self.action_var = None if action_variance is None else float(action_variance)

    def alert_step(self) -> int | None:
        """First step at which the failure monitor alarmed (0-based), None if it never did or is off."""
        if self.monitor is None or not self.features:
            return None
        return self.monitor.alarm_step(np.stack(self.features))

    def record(self) -> dict[str, Any]:
        """The safety columns of this rollout's record."""
        stats = self.shield.stats if self.shield is not None else None
        extra = {}
        if self.monitor is not None:
            alert = self.alert_step()
            extra["alert_step"] = -1 if alert is None else alert
        if self.features_file is not None and self.features:
            self.features_file.parent.mkdir(parents=True, exist_ok=True)
            np.save(self.features_file, np.stack(self.features))
            if len(self.action_vars) == len(self.features):
                np.save(action_var_path(self.features_file), np.asarray(self.action_vars, np.float32))
        return {
            **extra,
            "shield": self.shield is not None,
            "shield_interventions": stats.interventions if stats else 0,
            "shield_holds": stats.holds if stats else 0,
            "shield_limits": ",".join(f"{k}:{v}" for k, v in sorted(stats.by_limit.items())) if stats else "",
            "violations": self.violations,
            "proposed_violations": self.proposed_violations,
        }


class SafetyHooks:
    """The runner's hook provider for shields, failure monitors and feature recording (see :mod:`lbm.eval.runner.hooks`)."""

    def check(self, config: EvalConfig) -> None:
        """A wrong monitor path fails before any trial, not inside every one."""
        if config.monitor is not None:
            load_monitor(str(config.monitor))

    def request(self, config: EvalConfig) -> ChunkRequest:
        """Features for the monitor and for --features; extra action samples with --action-samples."""
        wants = config.features or config.monitor is not None
        return ChunkRequest(features=wants, action_samples=config.action_samples if config.features else 0)

    def replaces_actions(self, config: EvalConfig) -> bool:
        """With --shield every raw action (NaN included) goes to the shield, which turns bad ones into holds."""
        return config.shield

    def trial(self, config: EvalConfig, item: TrialItem, embodiment: Embodiment) -> SlotSafety:
        """The safety bookkeeping of one trial."""
        feats = features_path(config.out, item.policy, item.task, item.shift, item.trial) if config.features else None
        return SlotSafety(
            embodiment, shield=config.shield, monitor=None if config.monitor is None else str(config.monitor), features_file=feats
        )

    def summary(self, config: EvalConfig, out: Path) -> None:
        """With --shield, print interventions and violations per 1000 steps by blind policy id."""
        if not config.shield:
            return

        blind = load_records(Path(out) / PARQUET_FILE, blind=True, require_pairing=False)
        print_safety_table(safety_table(blind), "safety by blind policy id (shield on)")


PROVIDER = SafetyHooks()
"""The instance registered as the ``lbm.trial_hooks`` entry point."""
