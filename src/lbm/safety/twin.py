# MuJoCo's Python bindings are a compiled module without type stubs: pyright cannot see its functions.
# pyright: reportAttributeAccessIssue=false
"""Predictive check of an action chunk against a digital twin (a copy of the MuJoCo state).

Before a chunk is executed, :class:`TwinCheck` rolls it out on a scratch ``MjData`` copied from the
live simulator, reproducing Meta-World's actuation (mocap target moved by ``action_scale * a`` and
clipped to the task's mocap box, gripper torque ``(g, -g)``, ``frame_skip`` physics steps), and
stops at the first step where

- the end effector (the ``hand`` body, whose position is ``state[0:3]`` of Meta-World's
  observation, as the action shield uses) leaves the workspace box, or
- an arm link (not the gripper) touches anything outside the robot, or the robot touches a body
  listed as forbidden.

The chunk is then truncated before that step (or rejected as a whole). The live simulator is never
touched. The twin is exact for the simulator itself; on a real robot it is only as good as the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lbm.errors import LbmError
from lbm.sim.metaworld import METAWORLD_WORKSPACE

# Sawyer arm links: touching the world with these (rather than the gripper) is a collision.
SAWYER_ARM_BODIES = (
    "right_arm_base_link",
    "right_l0",
    "right_l1",
    "right_l2",
    "right_l3",
    "right_l4",
    "right_l5",
    "right_l6",
    "right_l1_2",
    "right_l2_2",
    "right_l4_2",
    "head",
    "screen",
    "torso",
    "pedestal",
)


@dataclass(frozen=True)
class TwinConfig:
    """What the twin check forbids."""

    workspace_low: tuple[float, ...] = METAWORLD_WORKSPACE.low
    """Lower corner of the allowed end-effector box (metres)."""
    workspace_high: tuple[float, ...] = METAWORLD_WORKSPACE.high
    """Upper corner of the allowed end-effector box (metres)."""
    arm_bodies: tuple[str, ...] = SAWYER_ARM_BODIES
    """Robot bodies that must not touch anything outside the robot."""
    forbidden_bodies: tuple[str, ...] = ()
    """Bodies the robot must never touch at all (e.g. a 'person' body added to a scene)."""
    mode: str = "truncate"
    """``truncate``: keep the actions before the first violation; ``reject``: drop the whole chunk."""


@dataclass
class TwinResult:
    """Outcome of one chunk check."""

    safe_steps: int
    """How many leading actions of the chunk may be executed."""
    violation_step: int | None
    """Index of the first violating action, None if the whole chunk is safe."""
    reason: str
    """What the violation was ("" if none)."""
    hand_path: np.ndarray
    """``(T_run, 3)`` predicted end-effector positions after each simulated action."""


class TwinCheck:
    """Roll chunks out on a copy of a :class:`lbm.sim.SimEnv`'s MuJoCo state before executing them."""

    def __init__(self, env, config: TwinConfig | None = None) -> None:
        import mujoco

        self.config = config or TwinConfig()
        if self.config.mode not in ("truncate", "reject"):
            raise LbmError(f"TwinConfig.mode must be 'truncate' or 'reject', got {self.config.mode!r}.")
        self.env = env
        self.model = env.model
        actuation = env.actuation  # Meta-World's: how an action moves the mocap target
        self.scale = actuation.action_scale
        self.frame_skip = actuation.frame_skip
        self.mocap_low, self.mocap_high = actuation.mocap_low, actuation.mocap_high
        self.scratch = mujoco.MjData(self.model)
        self._spec = mujoco.mjtState.mjSTATE_INTEGRATION
        self._state = np.empty(mujoco.mj_stateSize(self.model, self._spec))
        names = {self.model.body(i).name: i for i in range(self.model.nbody)}
        unknown = [b for b in (*self.config.arm_bodies, *self.config.forbidden_bodies) if b not in names]
        if unknown:
            raise LbmError(f"Twin check: bodies {unknown} are not in the {env.task} model; choose from {sorted(names)}.")
        robot = _subtree(self.model, names["base"]) | {names["mocap"]}
        self._robot_geom = np.isin(self.model.geom_bodyid, sorted(robot))
        self._arm_geom = np.isin(self.model.geom_bodyid, [names[b] for b in self.config.arm_bodies])
        self._forbidden_geom = np.isin(self.model.geom_bodyid, [names[b] for b in self.config.forbidden_bodies])
        self._hand = names["hand"]
        self._low, self._high = np.asarray(self.config.workspace_low), np.asarray(self.config.workspace_high)

    def check(self, chunk: np.ndarray) -> TwinResult:
        """Simulate ``chunk`` ``(T, 4)`` from the live state; report how many actions are safe."""
        import mujoco

        chunk = np.asarray(chunk, np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != 4:
            raise LbmError(f"Twin check needs a (T, 4) chunk, got shape {chunk.shape}.")
        if not np.all(np.isfinite(chunk)):
            return TwinResult(0, 0, "non-finite action", np.zeros((0, 3)))
        d, m = self.scratch, self.model
        # The full integration state (qpos, qvel, act, warm start, mocap, ctrl, ...) of the live sim.
        mujoco.mj_getState(m, self.env.data, self._state, self._spec)
        mujoco.mj_setState(m, d, self._state, self._spec)
        path = []
        for t, a in enumerate(np.clip(chunk, -1.0, 1.0)):
            d.mocap_pos[:] = np.clip(d.mocap_pos + self.scale * a[None, :3], self.mocap_low, self.mocap_high)
            d.mocap_quat[:] = np.array([1.0, 0.0, 1.0, 0.0])  # Meta-World holds the hand orientation fixed
            d.ctrl[:] = (a[3], -a[3])
            mujoco.mj_step(m, d, nstep=self.frame_skip)
            # mj_step leaves positions of the last substep's start; the env recomputes them before
            # observing, so do the same (contacts stay those of the last substep: 2.5 ms old).
            mujoco.mj_kinematics(m, d)
            hand = d.xpos[self._hand]
            path.append(hand.copy())
            reason = self._violation(hand)
            if reason:
                safe = 0 if self.config.mode == "reject" else t
                return TwinResult(safe, t, reason, np.array(path))
        return TwinResult(len(chunk), None, "", np.array(path))

    def _violation(self, hand: np.ndarray) -> str:
        if np.any(hand < self._low) or np.any(hand > self._high):
            return f"end effector leaves the workspace at {np.round(hand, 3).tolist()}"
        d = self.scratch
        for c in d.contact[: d.ncon]:
            g1, g2 = c.geom1, c.geom2
            r1, r2 = self._robot_geom[g1], self._robot_geom[g2]
            if r1 != r2 and ((self._arm_geom[g1] and not r2) or (self._arm_geom[g2] and not r1)):
                return f"arm link {self._body(g1 if r1 else g2)} touches {self._body(g2 if r1 else g1)}"
            if (r1 and self._forbidden_geom[g2]) or (r2 and self._forbidden_geom[g1]):
                return f"robot touches forbidden body {self._body(g2 if r1 else g1)}"
        return ""

    def _body(self, geom: int) -> str:
        return self.model.body(int(self.model.geom_bodyid[geom])).name


def _subtree(model, root: int) -> set[int]:
    out = {root}
    for b in range(model.nbody):
        p = b
        while p != 0:
            if p == root:
                out.add(b)
                break
            p = int(model.body_parentid[p])
    return out
