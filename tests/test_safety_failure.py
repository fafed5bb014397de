"""Failure detector: conformal false-alarm rate on held-out successes, length cut, learned detectors."""

from __future__ import annotations

import numpy as np
import pytest

from lbm.errors import LbmError
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
