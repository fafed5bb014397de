"""Action shield: each limit, idempotence, minimality, bad actions, and a real simulator behind it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbm.errors import LbmError
from lbm.safety import ActionShield, ShieldConfig, ShieldedEnv, default_shield_config
from lbm.sim import METAWORLD_EMBODIMENT

CFG = default_shield_config(METAWORLD_EMBODIMENT)
LOW, HIGH = np.array(CFG.workspace_low), np.array(CFG.workspace_high)


def state_at(xyz) -> np.ndarray:
    s = np.zeros(39, np.float32)
    s[:3] = xyz
    return s


CENTRE = state_at([0.0, 0.65, 0.2])

finite = st.floats(-3, 3, allow_nan=False, width=32)
actions = st.lists(finite, min_size=4, max_size=4).map(lambda v: np.array(v, np.float32))
positions = st.tuples(st.floats(-0.6, 0.6), st.floats(0.3, 1.05), st.floats(-0.05, 0.55)).map(state_at)


def test_safe_action_passes_unchanged_and_is_not_logged():
    sh = ActionShield(CFG)
    a = np.array([0.3, -0.2, 0.1, 0.7], np.float32)
    out = sh.filter(a, CENTRE)
    np.testing.assert_array_equal(out, a)
    assert sh.log == [] and sh.stats.interventions == 0 and sh.stats.steps == 1


def test_bounds_limit_clips_each_dimension_and_records_how_much():
    sh = ActionShield(CFG)
    out = sh.filter([0.2, 0.0, 0.0, 5.0], CENTRE)
    np.testing.assert_allclose(out, [0.2, 0.0, 0.0, 1.0])
    (iv,) = sh.log
    assert iv.limits == ("bounds",) and iv.magnitude == pytest.approx(4.0)
    assert sh.stats.by_limit == {"bounds": 1}


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("side", [-1, 1])
def test_workspace_limit_stops_the_hand_at_each_face(axis, side):
    sh = ActionShield(CFG)
    xyz = np.array([0.0, 0.65, 0.2])
    xyz[axis] = (HIGH if side > 0 else LOW)[axis] - side * 0.003  # 3 mm inside the face
    state = state_at(xyz)
    a = np.zeros(4, np.float32)
    a[axis] = side * 1.0  # would move 1 cm: out through the face
    out = sh.filter(a, state)
    predicted = xyz[axis] + CFG.action_scale * out[axis]
    assert "workspace" in sh.log[-1].limits
    assert predicted == pytest.approx((HIGH if side > 0 else LOW)[axis], abs=1e-6)
    # Moving away from the face is never limited.
    sh.reset()
    b = np.zeros(4, np.float32)
    b[axis] = -side * 1.0
    np.testing.assert_array_equal(sh.filter(b, state), b)


def test_outside_the_workspace_the_shield_only_allows_moving_back():
    sh = ActionShield(CFG)
    state = state_at([0.6, 0.65, 0.2])  # 10 cm beyond +x
    out = sh.filter([0.5, 0.0, 0.0, 0.0], state)
    assert out[0] == -1.0  # back toward the box at full speed: the bounds win over the barrier


def test_barrier_gamma_slows_the_approach():
    cfg = dataclasses.replace(CFG, barrier_gamma=0.5)
    sh = ActionShield(cfg)
    state = state_at([HIGH[0] - 0.004, 0.65, 0.2])
    out = sh.filter([1.0, 0, 0, 0], state)
    assert out[0] == pytest.approx(0.5 * 0.004 / cfg.action_scale, rel=1e-5)


def test_rate_limit_caps_the_change_between_steps():
    sh = ActionShield(CFG)  # xyz rate 1.0, gripper unlimited
    sh.filter([-1.0, 0, 0, -1.0], CENTRE)
    out = sh.filter([1.0, 0, 0, 1.0], CENTRE)
    np.testing.assert_allclose(out, [0.0, 0, 0, 1.0])
    assert sh.log[-1].limits == ("rate",) and sh.log[-1].magnitude == pytest.approx(1.0)


def test_accel_limit_caps_the_second_difference():
    cfg = dataclasses.replace(CFG, max_rate=(), max_accel=(0.1, 0.1, 0.1, None))
    sh = ActionShield(cfg)
    sh.filter([0.0, 0, 0, 0], CENTRE)
    sh.filter([0.2, 0, 0, 0], CENTRE)  # velocity 0.2 set by the first two steps (no accel limit yet)
    out = sh.filter([1.0, 0, 0, 0], CENTRE)  # constant velocity predicts 0.4; accel allows 0.5
    assert out[0] == pytest.approx(0.5, abs=1e-6) and sh.log[-1].limits == ("accel",)


@pytest.mark.parametrize(
    "bad, limit",
    [
        ([np.nan, 0, 0, 0], "nonfinite"),
        ([0, np.inf, 0, 0], "nonfinite"),
        ([0, 0, -np.inf, 0], "nonfinite"),
        ([0.1, 0.2, 0.3], "shape"),
        (np.zeros((2, 4)), "shape"),
        ("left", "shape"),
        (None, "shape"),
        ([1e9, -1e9, 1e9, 0], "bounds"),
    ],
)
def test_bad_actions_become_a_hold_with_a_reason(bad, limit):
    sh = ActionShield(CFG)
    sh.filter([0.0, 0.0, 0.0, 0.8], CENTRE)  # last gripper command 0.8
    out = sh.filter(bad, CENTRE)
    assert out.shape == (4,) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert limit in sh.log[-1].limits
    if limit != "bounds":
        np.testing.assert_array_equal(out, np.float32([0, 0, 0, 0.8]))  # hold: no motion, gripper kept
        assert sh.log[-1].reason and sh.stats.holds == 1


def test_stop_latches_hold_until_resume_and_stop_after_triggers_it():
    sh = ActionShield(CFG)
    sh.stop("monitor alarm")
    np.testing.assert_array_equal(sh.filter([0.5, 0.5, 0.5, 1.0], CENTRE), [0, 0, 0, 0])
    assert sh.log[-1].limits == ("stop",) and sh.log[-1].reason == "monitor alarm"
    sh.resume()
    np.testing.assert_array_equal(sh.filter([0.5, 0.5, 0.5, 1.0], CENTRE), [0.5, 0.5, 0.5, 1.0])

    sh = ActionShield(dataclasses.replace(CFG, stop_after=3))
    for _ in range(3):
        sh.filter([np.nan] * 4, CENTRE)
    assert sh.stopped and "3 consecutive" in sh.stop_reason
    sh.filter([0.1, 0, 0, 0], CENTRE)
    assert sh.log[-1].limits == ("stop",)


@settings(max_examples=300, deadline=None)
@given(a=actions, prev=actions, prev2=actions, state=positions)
def test_idempotent_and_minimal_for_any_history(a, prev, prev2, state):
    cfg = dataclasses.replace(CFG, max_accel=(0.7, 0.7, 0.7, None))
    sh = ActionShield(cfg)
    sh.prev2, sh.prev = np.clip(prev2, -1, 1).astype(np.float64), np.clip(prev, -1, 1).astype(np.float64)
    once, limits = sh.project(a, state)
    twice, limits2 = sh.project(once, state)
    np.testing.assert_array_equal(once, twice)  # shield(shield(a)) == shield(a)
    assert limits2 == ()
    lo, hi = sh.admissible_box(state)
    # Within the float64 box up to one float32 step: a box that shrinks to one point float32 cannot
    # represent (e.g. -0.3 where a workspace wall meets an acceleration limit) holds no float32 value.
    ulp = np.spacing(np.abs(once).astype(np.float32))
    assert np.all(once >= lo - ulp) and np.all(once <= hi + ulp)
    if np.all(a >= lo) and np.all(a <= hi):  # admissible requests pass bit-for-bit
        np.testing.assert_array_equal(once, a)
        assert limits == ()
    # Hard limits always hold: bounds, and the hand never ends further outside the box than now.
    assert np.all(np.abs(once) <= 1.0)
    p = state[:3].astype(np.float64)
    nxt = p + cfg.action_scale * once[:3]
    assert np.all((nxt >= LOW - 1e-6) | (nxt >= p)) and np.all((nxt <= HIGH + 1e-6) | (nxt <= p))


def test_config_is_validated_with_an_actionable_message():
    with pytest.raises(LbmError, match="workspace_low must be below"):
        dataclasses.replace(CFG, workspace_low=(0.0, 0.0, 0.0), workspace_high=(0.0, 1.0, 1.0))
    with pytest.raises(LbmError, match="max_rate needs 4"):
        dataclasses.replace(CFG, max_rate=(1.0,))
    with pytest.raises(LbmError, match="barrier_gamma"):
        ShieldConfig(embodiment="x", action_low=(-1,), action_high=(1,), barrier_gamma=0.0)
    with pytest.raises(LbmError, match="needs the current state"):
        ActionShield(CFG).filter([2.0, 0, 0, 0], None)


# ---- a real simulator behind the shield ---------------------------------------------------------


class SpyEnv:
    """Records every action that reaches the simulator and the state it was applied at."""

    def __init__(self, env):
        self.env, self.embodiment, self.received = env, env.embodiment, []
        self._state = None

    def reset(self, *a, **k):
        obs = self.env.reset(*a, **k)
        self._state = obs.state
        return obs

    def step(self, action):
        self.received.append((np.array(action, copy=True), self._state.copy()))
        r = self.env.step(action)
        self._state = r.observation.state
        return r

    def close(self):
        self.env.close()


ADVERSARIES = {
    "uniform_huge": lambda rng, t, s: rng.uniform(-1e9, 1e9, 4),
    "nan_inf_mix": lambda rng, t, s: rng.choice([np.nan, np.inf, -np.inf, 0.5, -3.0], size=4),
    "sign_flip": lambda rng, t, s: np.array([1, -1, 1, -1]) * (-1) ** t * 50.0,
    "drift_to_face": lambda rng, t, s: np.array([3.0, -3.0, -3.0, 1.0]),
    "wrong_shape": lambda rng, t, s: rng.normal(size=int(rng.integers(0, 7))),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIES))
def test_adversarial_policies_never_get_an_unsafe_action_to_the_simulator(name):
    from lbm.sim import make_env

    spy = SpyEnv(make_env("reach-v3", max_steps=120))
    env = ShieldedEnv(spy)
    rng = np.random.default_rng(0)
    env.reset(seed=3)
    checker = ActionShield(env.shield.config)
    for t in range(120):
        r = env.step(ADVERSARIES[name](rng, t, None))
        if r.done:
            break
    assert spy.received, "nothing was executed"
    for action, state in spy.received:
        assert action.shape == (4,) and np.all(np.isfinite(action))
        assert checker.violations(action, state) == (), (action, state[:3])
    # The hand itself stayed in the box (closed loop, with 1 cm for the hand lagging its target).
    hand = np.array([s[:3] for _, s in spy.received])
    assert np.all(hand >= LOW - 0.01) and np.all(hand <= HIGH + 0.01)
    assert env.shield.stats.interventions > 0 and env.shield.stats.steps == len(spy.received)
    env.close()


def test_expert_succeeds_under_the_default_shield():
    from lbm.sim import make_env

    for task in ("reach-v3", "drawer-open-v3"):
        env = ShieldedEnv(make_env(task))
        env.reset(seed=0)
        for _ in range(env.max_steps):
            r = env.step(env.expert_action())
            if r.done:
                break
        assert r.success, f"the default shield broke the expert on {task}: {env.shield.stats}"
        env.close()
