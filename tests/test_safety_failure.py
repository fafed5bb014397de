"""Failure detector: conformal false-alarm rate on held-out successes, length cut, learned detectors."""

from __future__ import annotations

import numpy as np
import pytest

from lbm.errors import LbmError
from lbm.schema import Observation
from lbm.safety.failure import (
    ConformalBand,
    KNNDetector,
    LSTMDetector,
    MahalanobisDetector,
    MLPDetector,
    DetectorConfig,
    TimeoutDetector,
    cut_to_shortest_success,
    evaluate_detector,
    roc_auc,
)


def success_stream(rng, T):
    """A successful rollout's score: noisy, slowly varying, with a time-dependent mean."""
    return 0.3 + 0.001 * np.arange(T) + np.cumsum(rng.normal(0, 0.02, T)) + rng.normal(0, 0.05, T)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_conformal_band_achieves_nominal_false_alarm_on_held_out_successes(alpha):
    rng = np.random.default_rng(int(alpha * 100))
    rates = []
    for rep in range(30):
        calib = [success_stream(rng, int(rng.integers(60, 120))) for _ in range(200)]
        test = [success_stream(rng, int(rng.integers(60, 120))) for _ in range(400)]
        band = ConformalBand.fit(calib, alpha=alpha, seed=rep)
        rates.append(np.mean([band.alarm_step(s) is not None for s in test]))
    rates = np.array(rates)
    n = 100  # calibration half
    # Split conformal: alpha - 1/(n+1) <= E[false alarm] <= alpha. 30 x 400 test rollouts: SE ~ 0.01 (with
    # the calibration-draw spread), so allow 0.02 below and above.
    assert alpha - 1 / (n + 1) - 0.02 <= rates.mean() <= alpha + 0.02, rates.mean()


def test_band_is_infinite_with_too_few_rollouts_and_validates_input():
    rng = np.random.default_rng(0)
    band = ConformalBand.fit([success_stream(rng, 20) for _ in range(8)], alpha=0.05)
    assert band.q == np.inf and band.alarm_step(np.full(20, 1e9)) is None
    with pytest.raises(LbmError, match="alpha"):
        ConformalBand.fit([np.ones(3)] * 10, alpha=1.5)
    with pytest.raises(LbmError, match="at least 4"):
        ConformalBand.fit([np.ones(3)] * 2)


def test_length_cut_removes_the_length_leak():
    feats = [np.zeros((n, 2)) for n in (30, 50, 100, 100, 40, 100)]
    success = [True, True, False, False, True, False]
    tasks = ["a", "a", "a", "b", "b", "c"]
    cut = cut_to_shortest_success(feats, success, tasks)
    assert [len(c) for c in cut] == [30, 30, 30, 40, 40, 30]  # task c has no success: global shortest
    scores = [TimeoutDetector().score(c) for c in cut]
    band = ConformalBand.fit([s for s, ok in zip(scores, success) if ok] * 3, alpha=0.2)
    # After the cut, counting steps says nothing about failure.
    assert evaluate_detector(scores, success, band)["roc_auc"] < 0.75
    with pytest.raises(LbmError, match="No successful"):
        cut_to_shortest_success(feats, [False] * 6, tasks)


def test_roc_auc_matches_definition():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


def synthetic_rollouts(rng, n, task_offset, T=40, D=8):
    """Features drift along a failure direction after a random onset in failed rollouts."""
    feats, success = [], []
    direction = np.eye(D)[0]
    for i in range(n):
        ok = i % 2 == 0
        x = rng.normal(0, 1, (T, D)) + task_offset
        if not ok:
            onset = int(rng.integers(5, 20))
            x[onset:] += np.linspace(0, 3, T - onset)[:, None] * direction
        feats.append(x)
        success.append(ok)
    return feats, success


@pytest.mark.parametrize(
    "make, min_auc",
    [
        (lambda: MLPDetector(DetectorConfig(epochs=20)), 0.8),
        pytest.param(lambda: LSTMDetector(DetectorConfig(epochs=20, hidden=16)), 0.8, marks=pytest.mark.slow),
        (MahalanobisDetector, 0.8),
        (KNNDetector, 0.55),  # per-step noise dominates its max-so-far: weaker, as in SAFE's tables
    ],
    ids=["safe-mlp", "safe-lstm", "mahalanobis", "knn"],
)
def test_detectors_generalize_to_unseen_tasks_with_calibrated_alarms(make, min_auc):
    rng = np.random.default_rng(0)
    train_f, train_s = synthetic_rollouts(rng, 80, task_offset=0.0)
    det = make().fit(train_f, train_s)
    calib_f, _ = synthetic_rollouts(rng, 160, task_offset=0.0)  # held-out successes of the seen task
    band = ConformalBand.fit([det.score(f) for f in calib_f[::2]], alpha=0.1)
    test_f, test_s = synthetic_rollouts(rng, 80, task_offset=0.3)  # an "unseen" task: shifted features
    result = evaluate_detector([det.score(f) for f in test_f], test_s, band)
    assert result["roc_auc"] > min_auc, result
    if min_auc >= 0.8:  # a useful detector also alarms on failures more often than on successes
        assert result["detection_rate"] > result["false_alarm_rate"] and result["lead_time_steps"] > 0
    assert result["false_alarm_low"] <= result["false_alarm_rate"] <= result["false_alarm_high"]


def test_learned_detector_needs_both_outcomes():
    with pytest.raises(LbmError, match="both successful and failed"):
        MLPDetector().fit([np.zeros((3, 2))] * 4, [True] * 4)


# ---- action-sample variance and the policy's last-layer features ----------------------------------


def test_action_variance_detector_accumulates_and_validates():
    from lbm.safety.failure import ActionVarianceDetector

    det = ActionVarianceDetector().fit(None, None)
    np.testing.assert_allclose(det.score(np.array([0.1, 0.2, 0.3])), [0.1, 0.3, 0.6])
    np.testing.assert_allclose(det.score(np.array([[1.0], [2.0]])), [1.0, 3.0])
    with pytest.raises(LbmError, match="finite"):
        det.score(np.array([0.1, np.nan]))
    rng = np.random.default_rng(0)  # failures: a more uncertain policy -> separable after accumulation
    var = [rng.gamma(2.0, 0.01 if i % 2 == 0 else 0.02, 40) for i in range(60)]
    success = [i % 2 == 0 for i in range(60)]
    band = ConformalBand.fit([det.score(v) for v, ok in zip(var, success) if ok], alpha=0.2)
    result = evaluate_detector([det.score(v) for v in var], success, band)
    assert result["roc_auc"] > 0.9 and result["detection_rate"] > result["false_alarm_rate"]


def _tiny_policy(family="flow"):
    import torch

    from lbm.policies import InstructionCache, build_policy, policy_config
    from lbm.schema import ACTION, STATE
    from lbm.sim import METAWORLD_EMBODIMENT as E, get_task

    torch.manual_seed(0)
    stats = {E.name: {STATE: {"mean": np.zeros(E.state_dim), "std": np.ones(E.state_dim)},
                      ACTION: {"mean": np.zeros(E.action_dim), "std": np.full(E.action_dim, 0.5),
                               "min": -np.ones(E.action_dim), "max": np.ones(E.action_dim),
                               "q01": -np.ones(E.action_dim), "q99": np.ones(E.action_dim)}}}
    rng = np.random.default_rng(0)
    text = get_task("reach-v3").instruction
    cache = InstructionCache({text: rng.normal(size=384).astype(np.float32)}, use_user_cache=False)
    policy = build_policy(policy_config(family, "tiny"), [E], stats, cache)
    with torch.no_grad():  # an untrained head predicts 0 velocity: give it weights so samples depend on noise
        for n, p in policy.named_parameters():
            if "action_out" in n:
                p.normal_(0, 0.2)
    obs = [Observation(rng.normal(size=E.state_dim).astype(np.float32), {}, text, E.name) for _ in range(3)]
    return policy, obs


def test_last_layer_features_are_the_expert_output_and_action_samples_leave_actions_unchanged():
    import torch

    from lbm.safety.failure import FeatureRecorder

    plain, obs = _tiny_policy()
    torch.manual_seed(7)
    expected = plain.predict_chunk(obs)
    assert plain.last_features is None  # the hook is off by default

    policy, _ = _tiny_policy()
    rec = FeatureRecorder.attach(policy, action_samples=4)
    assert FeatureRecorder.attach(policy, action_samples=4) is rec
    torch.manual_seed(7)
    actions = policy.predict_chunk(obs)
    # The extra draws run under a forked RNG: executed actions are exactly those without them.
    np.testing.assert_array_equal(actions, expected)
    # Features: the expert's final output at the last denoising pass of the executed chunk, pooled
    # over the action tokens. The fast sampling path bypasses forward hooks, so it must set the
    # features the plain loop's last expert forward gives.
    reference, _ = _tiny_policy()
    reference._sample = reference._sample_reference
    outputs = []
    reference.expert.register_forward_hook(lambda m, a, out: outputs.append(out))
    torch.manual_seed(7)
    reference.predict_chunk(obs)
    assert len(outputs) == policy.config.flow_steps
    np.testing.assert_allclose(rec.last, outputs[-1].mean(1).numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(rec.last)) and not np.allclose(rec.last[0], rec.last[1])  # depends on the observation
    assert rec.last.shape == (3, policy.config.action_d_model)
    assert rec.last_action_var.shape == (3,) and np.all(rec.last_action_var > 0)
    with pytest.raises(LbmError, match="action_samples=4"):
        FeatureRecorder.attach(policy, action_samples=2)


def test_feature_recorder_refuses_what_it_cannot_do():
    from lbm.safety.failure import FeatureRecorder

    with pytest.raises(LbmError, match="ChunkPolicy"):
        FeatureRecorder(object())
    policy, _ = _tiny_policy()
    with pytest.raises(LbmError, match="at least 2"):
        FeatureRecorder(policy, action_samples=1)
    discrete, _ = _tiny_policy("discrete")
    with pytest.raises(LbmError, match="generative"):
        FeatureRecorder(discrete, action_samples=4)
    from lbm.eval.commands import evaluate

    with pytest.raises(LbmError, match="--features"):
        evaluate(policy=["x=expert"], action_samples=4)
