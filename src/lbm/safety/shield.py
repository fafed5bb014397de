"""The action shield: the last check between any policy and any simulator or robot.

Every action goes through :meth:`ActionShield.filter` before ``env.step``; the *runner* (or the
server) applies it, never the policy, so a policy cannot bypass it. The shield is a projection onto
a per-step box of admissible actions, built from four constraints:

1. **contract** — shape ``(action_dim,)`` and finite values; otherwise the action is replaced by the
   *hold* command (zero end-effector motion, gripper unchanged) and the reason is recorded;
2. **bounds** — per-dimension action limits from the :class:`~lbm.schema.Embodiment`;
3. **workspace** — for delta end-effector control the next hand position is predicted as
   ``p + action_scale * a`` and kept inside the box ``[low, high]``; the discrete-time barrier
   condition ``h(t+1) >= (1 - gamma) h(t)`` gives per-axis action bounds in closed form (box
   constraints decouple, so the CBF-QP reduces to a clip — no solver);
4. **rate** — ``|a_t - a_{t-1}| <= max_rate`` (velocity of the command) and
   ``|(a_t - a_{t-1}) - (a_{t-1} - a_{t-2})| <= max_accel`` (its acceleration).

Bounds and workspace are *hard*: where a rate limit conflicts with them (e.g. the hand is already
outside the box and must move back faster than the rate limit allows) the hard constraint wins.
Because the admissible set is a box that depends only on ``(state, previous actions)``, the shield
is idempotent (``filter(filter(a)) == filter(a)``) and leaves admissible actions bit-for-bit
unchanged.

A **stop** latches the hold command until :meth:`ActionShield.resume` or :meth:`ActionShield.reset`
(e.g. after a failure-monitor alarm, or after ``stop_after`` consecutive interventions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from lbm.errors import LbmError
from lbm.schema import Embodiment

# Names of the limits an intervention can cite (column values of the intervention log).
LIMITS = ("nonfinite", "shape", "bounds", "workspace", "rate", "accel", "stop")


@dataclass(frozen=True)
class ShieldConfig:
    """Limits of one embodiment's action shield (build defaults with :func:`default_shield_config`)."""

    embodiment: str
    """Name of the embodiment the limits belong to."""
    action_low: tuple[float, ...]
    """Per-dimension lower action bound (hard)."""
    action_high: tuple[float, ...]
    """Per-dimension upper action bound (hard)."""
    position_dims: tuple[int, ...] = ()
    """Action dimensions that move the end effector (delta position); empty: no workspace check."""
    state_position_dims: tuple[int, ...] = ()
    """State dimensions holding the end-effector position, in the same order as ``position_dims``."""
    action_scale: float = 1.0
    """Metres of end-effector motion per unit of a position action dimension per step."""
    workspace_low: tuple[float, ...] = ()
    """Lower corner of the end-effector workspace box (hard), one value per position dimension."""
    workspace_high: tuple[float, ...] = ()
    """Upper corner of the end-effector workspace box (hard)."""
    barrier_gamma: float = 1.0
    """Barrier rate in (0, 1]: 1 clamps at the wall; smaller values slow the approach to it."""
    max_rate: tuple[float | None, ...] = ()
    """Per-dimension limit on ``|a_t - a_{t-1}|`` (None: unlimited); empty: no rate limit."""
    max_accel: tuple[float | None, ...] = ()
    """Per-dimension limit on the second difference of actions (None: unlimited); empty: none."""
    hold_action: tuple[float | None, ...] = ()
    """The hold command per dimension; None keeps the previous value (e.g. the gripper). Empty: zeros."""
    stop_after: int | None = None
    """Latch a stop after this many consecutive intervention steps (None: never)."""
    tolerance: float = 1e-6
    """Changes smaller than this are not counted as interventions (float32 round-off)."""

    def __post_init__(self) -> None:
        a = len(self.action_low)
        problems = []
        if len(self.action_high) != a or a == 0:
            problems.append("action_low and action_high must be non-empty and of equal length")
        elif any(lo > hi for lo, hi in zip(self.action_low, self.action_high)):
            problems.append("action_low exceeds action_high in some dimension")
        p = len(self.position_dims)
        if len(self.state_position_dims) != p:
            problems.append("state_position_dims must pair one-to-one with position_dims")
        if p and (len(self.workspace_low) != p or len(self.workspace_high) != p):
            problems.append(f"workspace_low/high need {p} values (one per position dimension)")
        if p and any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            problems.append("workspace_low must be below workspace_high on every axis")
        if any(not 0 <= d < a for d in self.position_dims):
            problems.append(f"position_dims must index the {a} action dimensions")
        if p and self.action_scale <= 0:
            problems.append("action_scale must be positive")
        if not 0 < self.barrier_gamma <= 1:
            problems.append("barrier_gamma must be in (0, 1]")
        for name in ("max_rate", "max_accel", "hold_action"):
            value = getattr(self, name)
            if value and len(value) != a:
                problems.append(f"{name} needs {a} entries (or none)")
        for name in ("max_rate", "max_accel"):
            if any(v is not None and v <= 0 for v in getattr(self, name)):
                problems.append(f"{name} entries must be positive or None")
        if self.stop_after is not None and self.stop_after < 1:
            problems.append("stop_after must be at least 1 or None")
        if problems:
            raise LbmError(
                f"Invalid shield config for {self.embodiment!r}: " + "; ".join(problems) + ". Fix the config "
                "or start from lbm.safety.default_shield_config(embodiment)."
            )

    @property
    def action_dim(self) -> int:
        return len(self.action_low)


def default_shield_config(embodiment: Embodiment, **overrides) -> ShieldConfig:
    """The default shield of an embodiment: its action bounds, and its workspace and rate limits when it has one.

    For an embodiment with a :class:`~lbm.schema.Workspace` (delta end-effector control, e.g. the
    Meta-World Sawyer) the hand is kept inside the workspace box, each position command may change
    by at most half its action range per step, and the hold command is zero motion with every other
    dimension (the gripper) kept as it was. Other embodiments get bounds only. ``overrides`` replace
    fields (e.g. ``max_rate=(0.5, 0.5, 0.5, None)``).
    """
    base = ShieldConfig(
        embodiment=embodiment.name, action_low=tuple(embodiment.action_low), action_high=tuple(embodiment.action_high)
    )
    ws = embodiment.workspace
    if ws is not None:
        position = set(ws.action_dims)
        base = replace(
            base,
            position_dims=ws.action_dims,
            state_position_dims=ws.state_dims,
            action_scale=ws.action_scale,
            workspace_low=ws.low,
            workspace_high=ws.high,
            max_rate=tuple(
                (hi - lo) / 2 if d in position else None
                for d, (lo, hi) in enumerate(zip(embodiment.action_low, embodiment.action_high))
            ),
            hold_action=tuple(0.0 if d in position else None for d in range(embodiment.action_dim)),
        )
    return replace(base, **overrides) if overrides else base


@dataclass
class Intervention:
    """One change the shield made to one action."""

    step: int
    """Shield step index (actions filtered since reset)."""
    limits: tuple[str, ...]
    """Which limits acted, from :data:`LIMITS`."""
    requested: np.ndarray | None
    """The action as proposed (None when it was not even an array of numbers)."""
    applied: np.ndarray
    """The action forwarded to the simulator or robot."""
    magnitude: float
    """Largest absolute change over dimensions (inf for a non-finite or wrong-shaped request)."""
    reason: str = ""
    """Human-readable detail for contract failures."""


@dataclass
class ShieldStats:
    """Running tallies of one episode (what the eval records store)."""

    steps: int = 0
    """Actions filtered."""
    interventions: int = 0
    """Steps whose action the shield changed."""
    holds: int = 0
    """Steps replaced by the hold command (contract failures and stops)."""
    by_limit: dict[str, int] = field(default_factory=dict)
    """Steps on which each limit acted."""
    max_magnitude: float = 0.0
    """Largest finite change made to any action."""


class ActionShield:
    """Stateful shield of one episode: remembers the last two applied actions and the stop latch.

    ``filter(action, state)`` returns the safe ``float32 (action_dim,)`` action; every change is
    appended to ``log`` and counted in ``stats``. Call :meth:`reset` at every episode start.
    """

    def __init__(self, config: ShieldConfig, keep_log: bool = True) -> None:
        self.config = config
        self.keep_log = keep_log
        c = config
        self._low = np.asarray(c.action_low, np.float64)
        self._high = np.asarray(c.action_high, np.float64)
        self._pos = np.asarray(c.position_dims, int)
        self._spos = np.asarray(c.state_position_dims, int)
        self._ws_low = np.asarray(c.workspace_low, np.float64)
        self._ws_high = np.asarray(c.workspace_high, np.float64)
        self._inf_lo = np.full(c.action_dim, -np.inf)
        self._inf_hi = np.full(c.action_dim, np.inf)
        self._rate = _limits(c.max_rate, c.action_dim)
        self._low_l, self._high_l = list(c.action_low), list(c.action_high)
        self._pos_l = [
            (a, s, lo, hi) for a, s, lo, hi in zip(c.position_dims, c.state_position_dims, c.workspace_low, c.workspace_high)
        ]
        self._accel = _limits(c.max_accel, c.action_dim)
        self._rate_l = None if self._rate is None else self._rate.tolist()
        self._accel_l = None if self._accel is None else self._accel.tolist()
        hold = c.hold_action or (0.0,) * c.action_dim
        self._hold_keep = np.array([h is None for h in hold])
        self._hold = np.array([0.0 if h is None else h for h in hold], np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget the previous actions, clear the stop latch, the log and the tallies."""
        self._prev: np.ndarray | None = None
        self._prev2: np.ndarray | None = None
        self.stopped = False
        self.stop_reason = ""
        self._consecutive = 0
        self.log: list[Intervention] = []
        self.stats = ShieldStats()

    @property
    def prev(self) -> np.ndarray | None:
        """The last applied action (float64), None at episode start."""
        return self._prev

    @prev.setter
    def prev(self, value) -> None:
        self._prev = value
        self._prev_l = None if value is None else value.tolist()

    @property
    def prev2(self) -> np.ndarray | None:
        """The applied action before :attr:`prev`."""
        return self._prev2

    @prev2.setter
    def prev2(self, value) -> None:
        self._prev2 = value
        self._prev2_l = None if value is None else value.tolist()

    def stop(self, reason: str = "stop requested") -> None:
        """Latch the hold command until :meth:`resume` or :meth:`reset`."""
        self.stopped, self.stop_reason = True, reason

    def resume(self) -> None:
        """Release a stop."""
        self.stopped, self.stop_reason, self._consecutive = False, "", 0

    # ---- the pure part -----------------------------------------------------------------------
    def admissible_box(self, state: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension ``(low, high)`` float64 bounds of the admissible actions now.

        A pure function of ``state`` and the two previous applied actions. ``state`` may be None
        when the embodiment has no workspace check.
        """
        lo, hi = self._low, self._high
        if self._pos.size:
            w_lo, w_hi = self._workspace_box(state)
            # Outside the box the barrier demands motion back at more than the bounds allow: the
            # bounds win, and the best admissible action moves back at full speed.
            lo = np.minimum(np.maximum(lo, w_lo), self._high)
            hi = np.maximum(np.minimum(hi, w_hi), self._low)
        for soft in self._soft_boxes():  # soft: dropped per dimension where they conflict with hard limits
            n_lo, n_hi = np.maximum(lo, soft[0]), np.minimum(hi, soft[1])
            if np.all(n_lo <= n_hi):
                lo, hi = n_lo, n_hi
            else:
                ok = n_lo <= n_hi
                lo, hi = np.where(ok, n_lo, lo), np.where(ok, n_hi, hi)
        return lo, hi

    def _workspace_box(self, state) -> tuple[np.ndarray, np.ndarray]:
        if state is None:
            raise LbmError("This shield checks the end-effector workspace and needs the current state; pass state=obs.state.")
        p = np.asarray(state, np.float64)[self._spos]
        if not np.all(np.isfinite(p)):
            raise LbmError(
                f"The shield got a non-finite end-effector position {p.tolist()}; the state estimate is broken, stop the robot."
            )
        # h_low = p - low >= 0 and h(t+1) >= (1 - g) h(t)  =>  a >= -g (p - low) / k; likewise above.
        g_k = self.config.barrier_gamma / self.config.action_scale
        w_lo, w_hi = self._inf_lo.copy(), self._inf_hi.copy()
        w_lo[self._pos] = -g_k * (p - self._ws_low)
        w_hi[self._pos] = g_k * (self._ws_high - p)
        return w_lo, w_hi

    def _soft_boxes(self) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        if self.prev is not None and self._rate is not None:
            out.append((self.prev - self._rate, self.prev + self._rate))
        if self.prev is not None and self.prev2 is not None and self._accel is not None:
            expected = 2 * self.prev - self.prev2  # constant-velocity continuation
            out.append((expected - self._accel, expected + self._accel))
        return out

    def _attribute(self, a: np.ndarray, safe: np.ndarray, state) -> tuple[str, ...]:
        """Names of the limits that the request violated where the shield changed it (slow path)."""
        tol = self.config.tolerance
        changed = np.abs(safe.astype(np.float64) - a) > tol
        boxes = [("bounds", (self._low, self._high))]
        if self._pos.size:
            boxes.append(("workspace", self._workspace_box(state)))
        soft = self._soft_boxes()
        names = (["rate"] if self.prev is not None and self._rate is not None else []) + (
            ["accel"] if self.prev2 is not None and self._accel is not None else []
        )
        boxes += list(zip(names, soft))
        return tuple(n for n, (b_lo, b_hi) in boxes if np.any(changed & ((a < b_lo - tol) | (a > b_hi + tol))))

    def project(self, action: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
        """Project a *finite, well-shaped* action onto the admissible box; no state change.

        Returns ``(safe float32 (A,), limits that acted)``.
        """
        a = np.asarray(action, np.float64)
        lo, hi = self.admissible_box(state)
        safe = np.clip(a, lo, hi).astype(np.float32)
        if np.array_equal(safe, a):  # the common case: admissible, passed through untouched
            return safe, ()
        # float32 rounding of a clipped value may land just outside the box: step back inside.
        safe = np.where(safe > hi, np.nextafter(safe, np.float32(-np.inf)), safe)
        safe = np.where(safe < lo, np.nextafter(safe, np.float32(np.inf)), safe)
        if np.all(np.abs(safe - a) <= self.config.tolerance):
            return safe, ()
        return safe, self._attribute(a, safe, state)

    def _admissible_fast(self, requested: np.ndarray, state) -> bool:
        """True when a well-shaped request satisfies every limit (plain-float loop: ~20x fewer numpy calls)."""
        v = requested.tolist()
        for x, lo, hi in zip(v, self._low_l, self._high_l):
            if not lo <= x <= hi:  # also False for NaN
                return False
        if self._pos_l:
            if state is None:
                return False
            g_k = self.config.barrier_gamma / self.config.action_scale
            for ai, si, w_lo, w_hi in self._pos_l:
                p = float(state[si])
                if not -g_k * (p - w_lo) <= v[ai] <= g_k * (w_hi - p):
                    return False
        if self.prev is not None and self._rate_l is not None and self._prev_l is not None:
            prev = self._prev_l
            for x, q, r in zip(v, prev, self._rate_l):
                if abs(x - q) > r:
                    return False
            if self.prev2 is not None and self._accel_l is not None and self._prev2_l is not None:
                for x, q, q2, r in zip(v, prev, self._prev2_l, self._accel_l):
                    if abs(x - 2 * q + q2) > r:
                        return False
        elif self.prev2 is not None and self._accel_l is not None:
            return False  # unusual config (accel without rate): let the exact path decide
        return True

    def _inside_fast(self, a: np.ndarray, state) -> bool:
        """True when an action is within the bounds and keeps the hand inside the box (plain floats)."""
        v = a.tolist()
        for x, lo, hi in zip(v, self._low_l, self._high_l):
            if not lo <= x <= hi:
                return False
        if self._pos_l:
            if state is None:
                return True  # no position known: only the bounds can be audited
            k = self.config.action_scale
            for ai, si, w_lo, w_hi in self._pos_l:
                if not w_lo <= float(state[si]) + k * v[ai] <= w_hi:
                    return False
        return True

    def hold_action(self, state: np.ndarray | None = None) -> np.ndarray:
        """The hold command now: zero end-effector motion, kept dimensions (gripper) as last applied."""
        hold = self._hold.copy()
        if self.prev is not None:
            hold[self._hold_keep] = self.prev[self._hold_keep]
        # The hold itself is projected, so it too obeys the bounds and the workspace.
        return self.project(hold, state)[0]

    # ---- the stateful filter -----------------------------------------------------------------
    def filter(self, action, state: np.ndarray | None = None) -> np.ndarray:
        """Return the safe action to execute for a proposed ``action`` at ``state``; record changes."""
        c = self.config
        step = self.stats.steps
        requested = None
        reason = ""
        limits: tuple[str, ...]
        try:
            requested = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            reason = f"not an array of numbers ({type(action).__name__})"
        if self.stopped:
            safe, limits = self.hold_action(state), ("stop",)
            reason = self.stop_reason
        elif requested is None or requested.shape != (c.action_dim,):
            shape = None if requested is None else requested.shape
            reason = reason or f"shape {shape}, expected ({c.action_dim},)"
            safe, limits = self.hold_action(state), ("shape",)
        elif self._admissible_fast(requested, state):
            # Fast path (the common case): every limit holds, so the action passes unchanged.
            safe = requested.astype(np.float32)
            self.stats.steps += 1
            self._consecutive = 0
            self.prev2, self.prev = self.prev, safe.astype(np.float64)
            return safe
        elif not np.all(np.isfinite(requested)):
            bad = np.flatnonzero(~np.isfinite(requested)).tolist()
            safe, limits, reason = self.hold_action(state), ("nonfinite",), f"non-finite values in dims {bad}"
        else:
            safe, limits = self.project(requested, state)

        self.stats.steps += 1
        if limits:
            holding = limits[0] in ("stop", "shape", "nonfinite")
            finite_req = requested is not None and requested.shape == safe.shape and np.all(np.isfinite(requested))
            magnitude = float(np.max(np.abs(safe - requested))) if finite_req else float("inf")
            self.stats.interventions += 1
            self.stats.holds += int(holding)
            for name in limits:
                self.stats.by_limit[name] = self.stats.by_limit.get(name, 0) + 1
            if np.isfinite(magnitude):
                self.stats.max_magnitude = max(self.stats.max_magnitude, magnitude)
            if self.keep_log:
                self.log.append(
                    Intervention(step, limits, None if requested is None else requested.copy(), safe.copy(), magnitude, reason)
                )
            self._consecutive += 1
            if c.stop_after is not None and self._consecutive >= c.stop_after and not self.stopped:
                self.stop(f"{self._consecutive} consecutive interventions")
        else:
            self._consecutive = 0
        self.prev2, self.prev = self.prev, safe.astype(np.float64)
        return safe

    def violations(self, action, state: np.ndarray | None = None) -> tuple[str, ...]:
        """Hard limits (contract, bounds, workspace) an action *would* violate now; no state change.

        Used to audit what reaches a simulator when the shield is off, and to assert that nothing
        unsafe reaches it when the shield is on.
        """
        try:
            a = np.asarray(action, np.float64)
        except (TypeError, ValueError):
            return ("shape",)
        if a.shape != (self.config.action_dim,):
            return ("shape",)
        if self._inside_fast(a, state):
            return ()
        if not np.all(np.isfinite(a)):
            return ("nonfinite",)
        tol = self.config.tolerance
        out = []
        if np.any(a < self._low - tol) or np.any(a > self._high + tol):
            out.append("bounds")
        if self._pos.size and state is not None:
            p = np.asarray(state, np.float64)[self._spos]
            nxt = p + self.config.action_scale * a[self._pos]
            # Only moves that leave the box (or go further out) count; standing still outside does not.
            leaving = ((nxt < self._ws_low - tol) & (nxt < p - tol)) | ((nxt > self._ws_high + tol) & (nxt > p + tol))
            if np.any(leaving):
                out.append("workspace")
        return tuple(out)


def _limits(values: Sequence[float | None], dim: int) -> np.ndarray | None:
    if not values or all(v is None for v in values):
        return None
    return np.array([np.inf if v is None else float(v) for v in values], np.float64)


class ShieldedEnv:
    """An environment whose ``step`` always goes through an :class:`ActionShield`.

    Wraps anything with ``reset(seed, ...) -> Observation`` and ``step(action) -> result`` whose
    result has ``.observation`` (e.g. :class:`lbm.sim.SimEnv`). Attributes not defined here are
    forwarded to the wrapped env. ``step`` adds ``shield_limits`` to the result's ``info``.
    """

    def __init__(self, env, config: ShieldConfig | None = None) -> None:
        self.env = env
        self.shield = ActionShield(config or default_shield_config(env.embodiment))
        self._state: np.ndarray | None = None

    def reset(self, *args, **kwargs):
        """Reset the env and the shield."""
        obs = self.env.reset(*args, **kwargs)
        self.shield.reset()
        self._state = obs.state
        return obs

    def step(self, action):
        """Shield ``action`` at the current state, then step the wrapped env with the safe action."""
        n = len(self.shield.log)
        safe = self.shield.filter(action, self._state)
        result = self.env.step(safe)
        self._state = result.observation.state
        if hasattr(result, "info") and isinstance(result.info, dict):
            result.info["shield_limits"] = self.shield.log[-1].limits if len(self.shield.log) > n else ()
        return result

    def __getattr__(self, name):
        return getattr(self.env, name)
