"""Digital-twin check: exact prediction of the live simulator, truncation at workspace exits and contacts."""

from __future__ import annotations

import numpy as np
import pytest

from lbm.errors import LbmError
from lbm.safety.twin import TwinCheck, TwinConfig


@pytest.fixture()
def env():
    from lbm.sim import make_env

    e = make_env("reach-v3", max_steps=200)
    e.reset(seed=1)
    yield e
    e.close()


def test_twin_predicts_the_live_simulator_and_leaves_it_untouched(env):
    twin = TwinCheck(env)
    rng = np.random.default_rng(0)
    chunk = rng.uniform(-1, 1, (12, 4)).astype(np.float32)
    qpos = env.data.qpos.copy()
    result = twin.check(chunk)
    np.testing.assert_array_equal(env.data.qpos, qpos)  # the check never moves the real robot
    assert result.safe_steps == 12 and result.violation_step is None
    for t, a in enumerate(chunk):
        obs = env.step(a).observation
        np.testing.assert_allclose(result.hand_path[t], obs.state[:3], atol=1e-5)


def test_twin_truncates_before_a_workspace_exit(env):
    low = list(TwinConfig().workspace_low)
    hand = env.step(np.zeros(4, np.float32)).observation.state[:3]
    low[1] = float(hand[1]) - 0.025  # a wall 2.5 cm behind the hand (y)
    twin = TwinCheck(env, TwinConfig(workspace_low=tuple(low)))
    chunk = np.tile(np.array([0.0, -1.0, 0.0, 0.0], np.float32), (10, 1))
    result = twin.check(chunk)
    assert result.violation_step is not None and 1 <= result.violation_step <= 6
    assert result.safe_steps == result.violation_step and "workspace" in result.reason
    assert TwinCheck(env, TwinConfig(workspace_low=tuple(low), mode="reject")).check(chunk).safe_steps == 0


def test_twin_detects_contact_with_a_forbidden_body(env):
    twin = TwinCheck(env, TwinConfig(forbidden_bodies=("tablelink",)))
    down = np.tile(np.array([0.0, 0.0, -1.0, 0.0], np.float32), (40, 1))
    result = twin.check(down)
    assert result.violation_step is not None and "tablelink" in result.reason
    assert twin.check(np.zeros((5, 4), np.float32)).violation_step is None


def test_twin_rejects_bad_input(env):
    twin = TwinCheck(env)
    assert twin.check(np.array([[np.nan, 0, 0, 0]])).safe_steps == 0
    with pytest.raises(LbmError, match="chunk"):
        twin.check(np.zeros(4))
    with pytest.raises(LbmError, match="not in the"):
        TwinCheck(env, TwinConfig(forbidden_bodies=("person",)))
    with pytest.raises(LbmError, match="mode"):
        TwinCheck(env, TwinConfig(mode="maybe"))
