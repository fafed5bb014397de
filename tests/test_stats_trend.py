"""The stratified logistic trend over a dose (lbm.stats.dose_trend): error rates and power by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from lbm import stats
from lbm.errors import InputError

DOSES = (0.125, 0.25, 0.5, 1.0)


def _simulate(rng, slope: float = 0.0, jump: bool = False, n: int = 20, tasks: int = 3):
    dose, success, strata = [], [], []
    for t in range(tasks):
        intercept = rng.normal(0, 0.5)  # tasks differ in difficulty: the strata absorb it
        for d in DOSES:
            eta = intercept + (2.0 if d == 1.0 else -1.0) if jump else intercept + slope * math.log2(d)
            dose += [d] * n
            success += [int(v) for v in rng.random(n) < expit(eta)]
            strata += [t] * n
    return dose, success, strata


def test_no_trend_is_found_at_most_alpha_of_the_time_and_a_real_one_is_found():
    rng = np.random.default_rng(0)
    sims, alpha = 200, 0.05
    null = sum(stats.dose_trend(*_simulate(rng)).p <= alpha for _ in range(sims))
    assert null / sims <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / sims)
    found = [stats.dose_trend(*_simulate(rng, slope=0.8)) for _ in range(50)]
    assert all(t.p <= alpha and t.lo > 0 for t in found) and np.mean([t.slope for t in found]) == pytest.approx(0.8, abs=0.2)


def test_a_jump_is_a_departure_from_the_log_linear_trend_and_a_smooth_curve_rarely_is():
    rng = np.random.default_rng(1)
    assert all(stats.dose_trend(*_simulate(rng, jump=True)).p_departure <= 0.05 for _ in range(20))
    smooth = sum(stats.dose_trend(*_simulate(rng, slope=0.5)).p_departure <= 0.05 for _ in range(200))
    assert smooth / 200 <= 0.1  # a likelihood-ratio test: about alpha (measured 0.065 over 400 runs)


def test_unidentified_trends_say_why_and_bad_input_is_refused():
    t = stats.dose_trend([0.5, 1.0, 0.5, 1.0], [0, 0, 0, 0], ["a", "a", "b", "b"])
    assert math.isnan(t.slope) and "no task varies" in t.note
    with pytest.raises(InputError, match="positive"):
        stats.dose_trend([0.0, 1.0], [0, 1], ["a", "a"])
    with pytest.raises(InputError, match="one entry per rollout"):
        stats.dose_trend([0.5, 1.0], [0, 1], ["a"])
