"""Seed-aware comparisons (lbm.stats.compare_runs): exact small cases, type-I error and coverage when
training runs differ, and the pooled test's failure that motivates it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from lbm import stats
from lbm.errors import InputError


def test_a_perfect_split_of_three_runs_each_on_one_task_is_the_smallest_attainable_p():
    a = {"t": {0: (10, 10), 1: (10, 10), 2: (10, 10)}}
    b = {"t": {0: (0, 10), 1: (0, 10), 2: (0, 10)}}
    r = stats.compare_runs(a, b)
    assert r.exact and r.diff == 1.0 and r.p == pytest.approx(2 / 20) and r.min_p == pytest.approx(2 / 20)
    assert r.runs_a == r.runs_b == 3 and r.spread_a == 0.0


def test_identical_arms_are_not_different_and_bad_cells_are_refused():
    a = {"t": {0: (5, 10), 1: (6, 10)}, "u": {0: (3, 10), 1: (4, 10)}}
    r = stats.compare_runs(a, a)
    assert r.diff == 0.0 and r.p == 1.0 and r.lo <= 0 <= r.hi
    with pytest.raises(InputError, match="share no stratum"):
        stats.compare_runs(a, {"v": {0: (1, 2)}})
    with pytest.raises(InputError, match="successes <= trials"):
        stats.compare_runs({"t": {0: (11, 10)}}, a)


def _simulate(rng, delta: float, sd: float, tasks: int = 2, runs: int = 3, n: int = 20, base: float = 0.5):
    """Two arms whose training runs have true rates expit(logit(base) + arm effect + N(0, sd))."""
    a, b = {}, {}
    for t in range(tasks):
        for arm, shift in ((a, delta), (b, 0.0)):
            rates = expit(logit(base) + shift + rng.normal(0, sd, runs))
            arm[t] = {k: (int(rng.binomial(n, p)), n) for k, p in enumerate(rates)}
    return a, b


def _pooled(arm):
    return {t: (sum(s for s, _ in v.values()), sum(n for _, n in v.values())) for t, v in arm.items()}


def test_type_one_error_holds_when_training_runs_differ_and_pooling_does_not():
    """Equal arms, runs that differ by seed (sd 1.0 on the logit scale): the seed-aware test rejects at
    most alpha (plus Monte Carlo error); the pooled CMH test, which counts rollouts, rejects far more."""
    rng = np.random.default_rng(7)
    sims, alpha = 300, 0.05
    seed_aware = pooled = 0
    for _ in range(sims):
        a, b = _simulate(rng, 0.0, 1.0)
        seed_aware += stats.compare_runs(a, b, reps=200, rng=rng).p <= alpha
        pooled += stats.cmh_over_strata(_pooled(a), _pooled(b)) <= alpha
    bound = alpha + 3 * np.sqrt(alpha * (1 - alpha) / sims)
    assert seed_aware / sims <= bound
    assert pooled / sims > 0.2  # measured 0.33: the reason the study does not pool runs


def test_the_two_stage_interval_covers_and_the_test_finds_a_large_effect():
    rng = np.random.default_rng(3)
    sims, covered, found = 200, 0, 0
    for _ in range(sims):
        a, b = _simulate(rng, 2.0, 0.5, tasks=3, runs=3)
        truth = float(np.mean([expit(logit(0.5) + 2.0) - 0.5]))  # approximately: the seed effect averages out
        r = stats.compare_runs(a, b, reps=400, rng=rng)
        covered += r.lo <= truth <= r.hi
        found += r.p <= 0.05
    assert covered / sims >= 0.85  # two-stage percentile intervals are slightly short with 3 runs per arm
    assert found / sims >= 0.8
