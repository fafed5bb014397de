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
=====================  =====  ===================================================================
"""

from __future__ import annotations

import numpy as np

from lbm.safety.shield import ActionShield, default_shield_config
from lbm.schema import Embodiment


class SlotSafety:
    """Shield (optional) and violation audit of one rollout."""

    def __init__(self, embodiment: Embodiment, shield: bool = False) -> None:
        config = default_shield_config(embodiment)
        self.shield = ActionShield(config, keep_log=False) if shield else None
        self._audit = ActionShield(config, keep_log=False)  # only its pure violations() is used
        self.violations = 0
        self.proposed_violations = 0

    def filter(self, action: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The action to execute for ``action`` at ``state`` (shielded if on); audit both."""
        if self._audit.violations(action, state):
            self.proposed_violations += 1
        executed = self.shield.filter(action, state) if self.shield is not None else action
        if self._audit.violations(executed, state):
            self.violations += 1
        return executed

    def record(self) -> dict:
        """The safety columns of this rollout's record."""
        stats = self.shield.stats if self.shield is not None else None
        return {
            "shield": self.shield is not None,
            "shield_interventions": stats.interventions if stats else 0,
            "shield_holds": stats.holds if stats else 0,
            "shield_limits": ",".join(f"{k}:{v}" for k, v in sorted(stats.by_limit.items())) if stats else "",
            "violations": self.violations,
            "proposed_violations": self.proposed_violations,
        }
