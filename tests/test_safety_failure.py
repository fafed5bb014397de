"""Failure detector: conformal false-alarm rate on held-out successes, length cut, learned detectors."""

from __future__ import annotations

import numpy as np
import pytest

from lbm.errors import LbmError
from lbm.safety.failure import (
    ConformalBand,
    DetectorConfig,
    KNNDetector,
    LSTMDetector,
    MahalanobisDetector,
    MLPDetector,
    TimeoutDetector,
    cut_to_shortest_success,
    evaluate_detector,
    roc_auc,
)
from lbm.schema import Observation


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
    from lbm.sim import METAWORLD_EMBODIMENT as E
    from lbm.sim import get_task
    from stub_policies import unit_stats

    torch.manual_seed(0)
    stats = unit_stats(E)
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


def test_features_are_the_expert_output_and_action_samples_leave_actions_unchanged():
    """Requested features and action-sample variance come with the chunk (a declared request, no hook)."""
    import torch

    from lbm.policies import ChunkRequest

    policy, obs = _tiny_policy()
    states = [policy.reset(seed=i) for i in range(3)]
    plain = policy.predict_chunk(obs, states)
    assert plain.features is None and plain.action_variance is None  # nothing extra unless asked
    rich = policy.predict_chunk(obs, states, ChunkRequest(features=True, action_samples=4))
    # The extra draws use their own seeds: the executed actions are exactly those without them.
    np.testing.assert_array_equal(rich.actions, plain.actions)
    assert rich.action_variance.shape == (3,) and np.all(rich.action_variance > 0)
    # Features: the expert's final output at the last denoising pass of the executed chunk, pooled over the
    # action tokens. The fast path bypasses forward hooks, so compare with the plain loop's last expert forward.
    outputs = []
    handle = policy.expert.register_forward_hook(lambda m, a, out: outputs.append(out))
    batch = {
        "observation.state": torch.from_numpy(np.stack([np.stack([o.state] * 2) for o in obs])),
        "observation.state_is_pad": torch.tensor([[True, False]] * 3),
        "task": [o.instruction for o in obs],
        "embodiment": [o.embodiment for o in obs],
    }
    noise = policy.initial_noise(states)
    policy.sample_actions(batch, noise, reference=True)
    handle.remove()
    assert len(outputs) == policy.config.flow_steps
    np.testing.assert_allclose(rich.features, outputs[-1].mean(1).numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(rich.features)) and not np.allclose(rich.features[0], rich.features[1])
    assert rich.features.shape == (3, policy.config.action_d_model)


def test_feature_requests_refuse_what_they_cannot_do():
    from lbm.eval.commands import evaluate
    from lbm.eval.runner import EvalConfig
    from lbm.policies import ChunkRequest

    policy, obs = _tiny_policy()
    with pytest.raises(LbmError, match="at least 2"):
        policy.predict_chunk(obs, [policy.reset()] * 3, ChunkRequest(action_samples=1))
    discrete, _ = _tiny_policy("discrete")
    with pytest.raises(LbmError, match="generative"):
        discrete.predict_chunk(obs, [discrete.reset()] * 3, ChunkRequest(action_samples=4))
    with pytest.raises(LbmError, match="--features"):
        evaluate(EvalConfig(policy=("x=expert",), action_samples=4))
