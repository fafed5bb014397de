"""Safety bookkeeping of one rollout inside the eval runner (``lbm eval --shield``).

The runner creates one :class:`SlotSafety` per trial and passes every action through
:meth:`SlotSafety.filter` right before ``env.step``. With the shield on, the action is replaced by
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
chunk (:meth:`SlotSafety.set_feature`); ``--features`` stores them per trial (see
:mod:`lbm.safety.monitor`), with ``--action-samples K`` also the per-step action-sample variance. The monitor only records alerts; it does not stop the rollout, so that
success with and without monitoring stays comparable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lbm.safety.shield import ActionShield, default_shield_config
from lbm.schema import Embodiment


class SlotSafety:
    """Shield (optional) and violation audit of one rollout."""

    def __init__(self, embodiment: Embodiment, shield: bool = False, monitor: str | None = None,
                 features_file: Path | None = None) -> None:
        config = default_shield_config(embodiment)
        self.monitor = None
        if monitor is not None:
            from lbm.safety.monitor import load_monitor

            self.monitor = load_monitor(str(monitor))
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

    def set_feature(self, feature: np.ndarray, action_var: float | None = None) -> None:
        """The policy feature ``(D,)`` of the chunk whose actions come next (and its action-sample variance)."""
        self.feature = np.asarray(feature, np.float32)
        self.action_var = None if action_var is None else float(action_var)

    def alert_step(self) -> int | None:
        """First step at which the failure monitor alarmed (0-based), None if it never did or is off."""
        if self.monitor is None or not self.features:
            return None
        return self.monitor.alarm_step(np.stack(self.features))

    def record(self) -> dict:
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
                from lbm.safety.monitor import action_var_path

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
