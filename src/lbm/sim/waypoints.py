"""A waypoint pick-and-place expert for tabletop scenes with privileged object poses (LIBERO).

The expert decomposes a task's goal into subtasks, one per ``on(obj,target)`` / ``in(obj,target)``
goal atom in goal order, and runs each as a fixed sequence of phases: move above the object, descend,
close the gripper, lift, carry above the target, lower until the object rests, release, retreat.
Each subtask is verified by its own atom after the retreat; a failed grasp or a missed placement is
retried from the top (at most :data:`ATTEMPTS` times), so a demonstration contains the recovery.
Actions are OSC end-effector deltas in [-1, 1] (xyz, rotation, gripper with +1 closing): a clipped
proportional controller toward each waypoint that also holds the hand's starting orientation.

Hollow objects (bowls, mugs, baskets) are grasped by their rim, everything else at its center. The
fingers close along the world y axis; the expert never turns the hand, so objects longer than the
finger opening along y cannot be grasped: those tasks have a low expert success and are not
registered (see ``docs`` and :data:`lbm.sim.libero.EXPERT_TASKS`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.spatial.transform import Rotation

from lbm.errors import LbmError
from lbm.sim.base import parse_atom

ATTEMPTS = 3
"""Tries per subtask before the expert gives up on it (and idles)."""
GAIN = 15.0
"""Proportional gain: an error of 1/GAIN metres or more moves the hand at full speed."""
CARRY_SPEED = 0.6
"""Largest move (norm of the xyz action) while holding an object: faster moves saturate the arm's
torques, and the hand then drifts off its straight line."""
INTEGRAL_GAIN = 0.8
"""Integral gain (per metre-step of accumulated error): removes the steady offset the OSC controller
leaves under load (a held bowl pulls the hand off its target by centimetres)."""
ROTATION_GAIN = 2.0
"""Proportional gain on the orientation error (radians) that holds the hand's starting orientation."""
FINGER_TIP_BELOW_EEF = 0.011
"""The fingertips sit this far (m) below the end-effector site of LIBERO's Panda gripper."""
LIFT = 0.15
"""How high (m) a ``lifted(obj)`` subtask raises the object above where it was grasped."""
HOLLOW = ("bowl", "mug", "basket", "caddy", "cup")
"""Objects grasped by their rim."""


class Scene(Protocol):
    """What the expert reads from the environment (privileged, true state)."""

    @property
    def objects(self) -> tuple[str, ...]: ...

    @property
    def goal(self) -> tuple[str, ...]: ...

    def position(self, name: str) -> np.ndarray: ...

    def object_extent(self, name: str) -> tuple[np.ndarray, np.ndarray]: ...

    def eef(self) -> tuple[np.ndarray, np.ndarray, float]: ...

    def grasping(self, name: str) -> bool: ...

    @property
    def words(self) -> Mapping[str, str]: ...

    def holds(self, text: str) -> bool: ...


@dataclass(frozen=True)
class Subtask:
    """One pick-and-place: move ``obj`` onto/into ``target`` until ``atom`` holds."""

    atom: str
    obj: str
    target: str
    relation: str
    instruction: str


def _object_words(name: str) -> str:
    return " ".join(w for w in name.split("_") if not w.isdigit())


def target_words(name: str) -> str:
    """A region or object name in words: ``basket_1_contain_region`` -> ``basket``,
    ``wooden_cabinet_1_top_side`` -> ``top of the wooden cabinet``,
    ``living_room_table_plate_right_region`` -> ``right of the plate``."""
    fixture = re.match(r"^(.*?)_\d+_(.*)$", name)  # OWNER_N_PART: a region of a fixture or object
    if fixture:
        owner, part = _object_words(fixture.group(1)), fixture.group(2)
        if part.endswith("_side"):  # a surface: "top of the wooden cabinet"
            return f"{part.removesuffix('_side').replace('_', ' ')} of the {owner}"
        compartment = re.match(r"^(.+)_contain_region$", part)  # "back compartment of the desk caddy"
        return f"{compartment.group(1).replace('_', ' ')} compartment of the {owner}" if compartment else owner
    table = re.match(r"^(?:main|living_room|kitchen|study|floor)_?(?:table|floor)?_(.*)_(left|right|front|back)_region$", name)
    if table:
        return f"{table.group(2)} of the {_object_words(table.group(1))}"
    return _object_words(name.removesuffix("_region"))


def subtasks(goal: tuple[str, ...], objects: tuple[str, ...], words: Mapping[str, str] | None = None) -> list[Subtask]:
    """The pick-and-places (and pick-and-lifts) of ``goal`` in order; an atom that is neither is an error naming it.

    ``words`` names objects in language where their scene names do not (``cubeA`` -> ``red cube``)."""
    words = dict(words or {})
    out = []
    for text in goal:
        relation, args = parse_atom(text)
        if relation == "lifted" and len(args) == 1 and args[0] in objects:
            out.append(
                Subtask(text, args[0], "", relation, f"pick up the {words.get(args[0]) or _object_words(args[0])} and lift it")
            )
            continue
        if relation not in ("on", "in") or len(args) != 2 or args[0] not in objects:
            raise LbmError(
                f"The waypoint expert only does pick-and-place (on/in of a movable object); the goal atom {text} is not one. "
                f"Movable objects here: {', '.join(objects)}."
            )
        obj, target = args
        where = words.get(target) or target_words(target)
        prep = (
            "to the" if re.search(r"_(left|right|front|back)_region$", target) else ("in the" if relation == "in" else "on the")
        )
        what = words.get(obj) or _object_words(obj)
        out.append(Subtask(text, obj, target, relation, f"pick up the {what} and place it {prep} {where}"))
    return out


PHASES = ("rise", "above", "descend", "close", "lift", "carry", "lower", "release", "retreat", "verify")
LIMITS = {"rise": 15, "above": 80, "descend": 40, "close": 12, "lift": 40, "carry": 90, "lower": 80, "release": 8, "retreat": 15}
"""Step limit of each phase: a phase that does not converge in time moves on (and the atom check decides)."""
RISE = 0.1
"""How far (m) a skill started by a planner first lifts the open hand: the previous skill may have been
stopped right after its release, with the hand still down among the objects it just placed."""


class PickPlaceExpert:
    """The scripted expert for one env; :meth:`reset` at every episode start."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.plan: list[Subtask] = []
        self.unsupported: LbmError | None = None
        self.index = 0

    def reset(self) -> None:
        """Start the plan from the first subtask; the hand's orientation now is held throughout."""
        try:
            self.plan, self.unsupported = subtasks(self.scene.goal, self.scene.objects, self.scene.words), None
        except LbmError as error:  # raised when the expert is asked for an action, not at reset
            self.plan, self.unsupported = [], error
        self.index, self.attempt = 0, 0
        self.last: np.ndarray | None = None
        _, rotation, _ = self.scene.eef()
        self.hold = Rotation.from_matrix(rotation)
        self._start("above")

    def follow(self, sub: Subtask, restart: bool = False) -> None:
        """Run this one subtask from now on (a planner's step): from its first phase when it is new or ``restart``."""
        if self.plan == [sub] and not self.unsupported and not restart:
            return
        self.plan, self.unsupported = [sub], None
        self.index, self.attempt = 0, 0
        self._start("rise")
        self.rise_to = float(self.scene.eef()[0][2] + RISE)

    def subtask(self) -> tuple[int, str]:
        """The current subtask's index and instruction (the last one once all are done)."""
        if self.unsupported:
            raise self.unsupported
        k = min(self.index, len(self.plan) - 1)
        return k, self.plan[k].instruction

    def _start(self, phase: str) -> None:
        self.phase, self.ticks = phase, 0
        self.stall = 0
        self.integral = np.zeros(3)

    def _next(self) -> None:
        self._start(PHASES[PHASES.index(self.phase) + 1])

    def action(self) -> np.ndarray:
        """The next ``(7,)`` float32 action."""
        if self.unsupported:
            raise self.unsupported
        pos, rotation, _ = self.scene.eef()
        self.speed = float(np.linalg.norm(pos - self.last)) if self.last is not None else 0.0
        self.last = pos
        rot = self._hold_orientation(rotation)
        if self.index >= len(self.plan):  # all done: hold still (keeping hold of a lifted object)
            return self._act(pos, pos, rot, 1.0 if self.plan and self.plan[-1].relation == "lifted" else -1.0)
        sub = self.plan[self.index]
        self.ticks += 1
        if self.phase == "rise":  # only when a planner starts a skill (follow), never in a scripted demo
            goal = np.array([pos[0], pos[1], self.rise_to])
            if abs(pos[2] - self.rise_to) < 0.02 or self.ticks > LIMITS["rise"]:
                self._next()
            return self._act(pos, goal, rot, -1.0)
        if self.phase == "above":
            self._plan_grasp(sub)
            goal = np.array([*self.grasp[:2], self.grasp[2] + 0.09])
            if (self._reached(pos[:2], goal[:2], 0.005) and abs(pos[2] - goal[2]) < 0.02) or self.ticks > LIMITS["above"]:
                self._next()
            return self._act(pos, goal, rot, -1.0)
        if self.phase == "descend":
            if self._reached(pos, self.grasp, 0.008) or self._stalled(pos) or self.ticks > LIMITS["descend"]:
                self._next()
            return self._act(pos, self.grasp, rot, -1.0)
        if self.phase == "close":
            if self.ticks > LIMITS["close"]:
                self._next()
                low, _ = self.scene.object_extent(sub.obj)
                self.hang = pos[2] - low[2]  # hand height above the object's bottom, kept while carrying
            return self._act(pos, self.grasp, rot, 1.0)
        if self.phase == "lift":
            goal = np.array([*self.grasp[:2], self._carry_height(sub)])
            if not self.scene.grasping(sub.obj):  # nothing in the hand: try again from the top
                return self._retry(pos, rot)
            if self._reached(pos, goal, 0.02) or self.ticks > LIMITS["lift"]:
                if sub.relation == "lifted":
                    self._start("verify")
                else:
                    self._next()
            return self._act(pos, goal, rot, 1.0)
        if self.phase == "carry":
            place = self._place_point(sub)
            goal = np.array([*place[:2], self._carry_height(sub)])
            if not self.scene.grasping(sub.obj):
                return self._retry(pos, rot)
            if self._reached(pos[:2], goal[:2], 0.012) or self.ticks > LIMITS["carry"]:
                self._next()
            return self._act(pos, goal, rot, 1.0)
        if self.phase == "lower":
            place = self._place_point(sub)
            goal = np.array([*place[:2], place[2] + self.hang + 0.01])
            if self._reached(pos, goal, 0.008) or self._stalled(pos) or self.ticks > LIMITS["lower"]:
                self._next()
            return self._act(pos, goal, rot, 1.0)
        if self.phase == "release":
            if self.ticks > LIMITS["release"]:
                self._next()
            return self._act(pos, pos, rot, -1.0)
        if self.phase == "retreat":
            goal = np.array([pos[0], pos[1], max(pos[2], self.grasp[2] + 0.12)])
            if self.ticks > LIMITS["retreat"]:
                self._next()
            return self._act(pos, goal, rot, -1.0)
        # verify
        if self.scene.holds(sub.atom):
            self.index, self.attempt = self.index + 1, 0
            self._start("above")
            return self._act(pos, pos, rot, 1.0 if sub.relation == "lifted" else -1.0)
        return self._retry(pos, rot)

    def _retry(self, pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
        self.attempt += 1
        if self.attempt >= ATTEMPTS:  # give up on this subtask, go on with the next
            self.index, self.attempt = self.index + 1, 0
        self._start("above")
        up = np.array([pos[0], pos[1], pos[2] + 0.05])
        return self._act(pos, up, rot, -1.0)

    # ---- geometry ----------------------------------------------------------------------------
    def _plan_grasp(self, sub: Subtask) -> None:
        low, high = self.scene.object_extent(sub.obj)
        center = (low + high) / 2
        if any(h in sub.obj for h in HOLLOW):
            # The fingers straddle the near rim wall: they close along y, so grasp at the wall
            # facing the robot's side (-y half of the rim), just below its top edge.
            wall = min(0.012, (high[1] - low[1]) / 4)
            self.grasp = np.array([center[0], low[1] + wall, high[2] - 0.02])
            self.offset = self.grasp[:2] - center[:2]
        else:
            height = high[2] - low[2]
            z = max(low[2] + FINGER_TIP_BELOW_EEF + 0.006, high[2] - min(0.035, height / 2))
            self.grasp = np.array([center[0], center[1], z])
            self.offset = np.zeros(2)

    def _place_point(self, sub: Subtask) -> np.ndarray:
        """Where the object's bottom goes: above the target's center (object) or region site."""
        if sub.target in self.scene.objects:
            low, high = self.scene.object_extent(sub.target)
            point = np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, high[2]])
        else:
            point = self.scene.position(sub.target).copy()
        point[:2] += self.offset  # where the hand goes so that the object's center lands there (rim grasps)
        return point

    def _carry_height(self, sub: Subtask) -> float:
        """High enough to clear the object's own support and the target, relative to the scene (tables differ in height)."""
        if sub.relation == "lifted":
            return float(self.grasp[2] + LIFT)
        return float(max(self.grasp[2], self._place_point(sub)[2] + self.hang) + 0.12)

    # ---- control -----------------------------------------------------------------------------
    def _reached(self, pos: np.ndarray, goal: np.ndarray, tol: float) -> bool:
        """Within ``tol`` of the goal and nearly at rest (a hand that sweeps through it would overshoot)."""
        return bool(np.linalg.norm(pos - goal) < tol) and self.speed < 0.003

    def _stalled(self, pos: np.ndarray) -> bool:
        """Three steps without moving 1 mm: the hand (or what it carries) rests on something."""
        self.stall = self.stall + 1 if self.speed < 0.001 else 0
        return self.stall >= 3 and self.ticks > 5

    def _hold_orientation(self, rotation: np.ndarray) -> np.ndarray:
        error = (self.hold * Rotation.from_matrix(rotation).inv()).as_rotvec()
        return np.clip(ROTATION_GAIN * error, -1.0, 1.0)

    def _act(self, pos: np.ndarray, goal: np.ndarray, rot: np.ndarray, gripper: float) -> np.ndarray:
        error = goal - pos
        # Integrate only near the goal (conditional integration: no wind-up, so no overshoot after long moves).
        self.integral = np.where(np.abs(error) < 0.03, self.integral + error, 0.0)
        move = GAIN * error + INTEGRAL_GAIN * self.integral
        speed = CARRY_SPEED if gripper > 0 else 1.0
        norm = float(np.linalg.norm(move))
        if norm > speed:  # scale, not clip per axis: the hand keeps its straight line to the goal
            move *= speed / norm
        return np.concatenate([move, rot, [gripper]]).astype(np.float32)
