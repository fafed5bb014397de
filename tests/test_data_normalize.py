"""Statistics and normalizers: streaming == batch, exact inverses, loud degenerate stats."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lbm.data import DegenerateStatsError, FeatureStats, Normalizer, StatsAccumulator, load_stats, save_stats
from lbm.errors import LbmError

MODES = ("mean_std", "min_max", "quantile")
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


def _rows(min_rows=2):
    return st.integers(1, 5).flatmap(
        lambda d: arrays(np.float64, st.tuples(st.integers(min_rows, 60), st.just(d)), elements=finite)
    )


def _batch_stats(x):
    return dict(
        mean=x.mean(0),
        std=x.std(0),
        min=x.min(0),
        max=x.max(0),
        q01=np.quantile(x, 0.01, axis=0),
        q99=np.quantile(x, 0.99, axis=0),
    )


@settings(max_examples=60, deadline=None)
@given(_rows(1), st.lists(st.integers(0, 60), max_size=4))
def test_streaming_stats_equal_batch_stats(x, cuts):
    acc = StatsAccumulator()
    bounds = sorted({0, len(x), *[c % (len(x) + 1) for c in cuts]})
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        acc.update(x[lo:hi])
    s = acc.finalize()
    assert s.count == len(x) and acc.exact_quantiles
    for k, v in _batch_stats(x).items():
        np.testing.assert_allclose(getattr(s, k), v, rtol=1e-9, atol=1e-9 * (1 + np.abs(x).max()), err_msg=k)


@settings(max_examples=40, deadline=None)
@given(_rows(1), _rows(1))
def test_merging_accumulators_equals_one_pass(a, b):
    if a.shape[1] != b.shape[1]:
        b = np.resize(b, (b.shape[0], a.shape[1]))
    merged = StatsAccumulator().update(a).merge(StatsAccumulator().update(b)).finalize()
    whole = StatsAccumulator().update(np.concatenate([a, b])).finalize()
    for k in FeatureStats.FIELDS:
        np.testing.assert_allclose(getattr(merged, k), getattr(whole, k), rtol=1e-9, atol=1e-6, err_msg=k)
    assert merged.count == whole.count


def test_reservoir_quantiles_are_close_past_the_exact_limit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 2))
    acc = StatsAccumulator(max_exact_rows=4000)
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    s = acc.finalize()
    assert not acc.exact_quantiles and s.count == 20_000
    np.testing.assert_allclose(s.mean, x.mean(0), atol=1e-12)  # moments stay exact
    # DKW bound at 4000 samples, delta=1e-6: rank error <= 0.042 -> check the rank of the estimate
    for q, est in ((0.01, s.q01), (0.99, s.q99)):
        ranks = (x <= est).mean(0)
        assert np.all(np.abs(ranks - q) < 0.042)


@settings(max_examples=60, deadline=None)
@given(_rows(2), st.sampled_from(MODES), st.integers(0, 3))
def test_normalize_unnormalize_inverse_numpy_and_torch(x, mode, extra_dims):
    stats = StatsAccumulator().update(x).finalize()
    spread = {"mean_std": stats.std, "min_max": stats.max - stats.min, "quantile": stats.q99 - stats.q01}[mode]
    constant = [d for d in range(x.shape[1]) if spread[d] < 1e-3]
    norm = Normalizer({"f": stats}, {"f": mode}, constant_dims={"f": constant}, eps=1e-3)
    batch = x.reshape((1,) * extra_dims + x.shape)
    y = norm.normalize("f", batch)
    np.testing.assert_allclose(norm.unnormalize("f", y), batch, rtol=1e-9, atol=1e-9 * (1 + np.abs(x).max()))
    t = torch.as_tensor(batch)
    np.testing.assert_allclose(norm.unnormalize("f", norm.normalize("f", t)).numpy(), batch, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(norm.normalize("f", t).numpy(), y, rtol=1e-9, atol=1e-9)
    if constant:  # constant dims pass through unchanged
        np.testing.assert_array_equal(y[..., constant], batch[..., constant])


def test_modes_map_to_expected_ranges_without_clipping():
    x = np.linspace(-2.0, 6.0, 101)[:, None] * np.array([[1.0, 3.0]])
    s = StatsAccumulator().update(x).finalize()
    mm = Normalizer({"a": s}, {"a": "min_max"}).normalize("a", x)
    np.testing.assert_allclose(mm.min(0), -1) and np.testing.assert_allclose(mm.max(0), 1)
    q = Normalizer({"a": s}, {"a": "quantile"}).normalize("a", x)
    np.testing.assert_allclose(
        Normalizer({"a": s}, {"a": "quantile"}).normalize("a", np.stack([s.q01, s.q99])), [[-1, -1], [1, 1]]
    )
    assert q.min() < -1 and q.max() > 1  # outside [q01, q99] is not clipped
    z = Normalizer({"a": s}, {"a": "mean_std"}).normalize("a", x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12) and np.testing.assert_allclose(z.std(0), 1)
    t32 = Normalizer({"a": s}, {"a": "mean_std"}).normalize("a", torch.tensor(x, dtype=torch.float32))
    assert t32.dtype == torch.float32


def test_degenerate_stats_name_feature_and_dimension():
    x = np.random.default_rng(0).normal(size=(50, 4))
    x[:, 2] = 0.5  # exactly constant
    x[:, 3] = 1.0 + np.arange(50) * 1e-9  # near constant, not exactly: an error even with from_stats
    s = StatsAccumulator().update(x).finalize()
    assert s.constant_dims == (2,)
    with pytest.raises(DegenerateStatsError, match=r"'observation.state' dimension\(s\) 2"):
        Normalizer({"observation.state": s}, {"observation.state": "mean_std"})
    with pytest.raises(DegenerateStatsError, match=r"'observation.state' dimension\(s\) 3") as err:
        Normalizer.from_stats({"observation.state": s}, {"observation.state": "min_max"})
    assert isinstance(err.value, LbmError)
    nan = FeatureStats(**{k: np.array([np.nan]) for k in FeatureStats.FIELDS}, count=3)
    with pytest.raises(DegenerateStatsError, match=r"'action' dimension\(s\) 0.*not finite"):
        Normalizer({"action": nan}, {"action": "quantile"})
    ok = Normalizer({"f": s}, {"f": "mean_std"}, constant_dims={"f": [2, 3]})
    np.testing.assert_array_equal(ok.normalize("f", x)[:, 2:], x[:, 2:])


def test_a_declared_spread_floor_keeps_a_nearly_fixed_dimension_from_blowing_up():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(size=200), 0.7 + 1e-4 * rng.normal(size=200), np.full(200, 2.0)], 1)
    s = StatsAccumulator().update(x).finalize()  # dim 1: std 1e-4 (a held orientation); dim 2 exactly constant
    drift = np.array([[0.0, 0.7 + 0.01, 2.0]])  # a deployed policy's small drift in dim 1
    plain = Normalizer.from_stats({"f": s}, {"f": "mean_std"}).normalize("f", drift)
    floored = Normalizer({"f": s}, {"f": "mean_std"}, {"f": s.constant_dims}, min_spread={"f": 0.01})
    z = floored.normalize("f", drift)
    assert abs(plain[0, 1]) > 50 and abs(z[0, 1]) < 1.5  # 100 stds without the floor, about one with it
    assert z[0, 2] == 2.0 and abs(z[0, 0] - plain[0, 0]) < 1e-9  # constant dims pass through; wide ones are unchanged
    np.testing.assert_allclose(floored.unnormalize("f", z), drift, atol=1e-12)
    with pytest.raises(LbmError, match="min_spread must be positive"):
        Normalizer({"f": s}, {"f": "mean_std"}, {"f": (2,)}, min_spread={"f": -1.0})


def test_bad_normalizer_inputs_are_lbm_errors():
    s = StatsAccumulator().update(np.random.default_rng(0).normal(size=(10, 3))).finalize()
    with pytest.raises(LbmError, match="Unknown normalization mode"):
        Normalizer({"f": s}, {"f": "zscore"})
    with pytest.raises(LbmError, match="No statistics for feature 'g'"):
        Normalizer({"f": s}, {"g": "mean_std"})
    norm = Normalizer({"f": s}, {"f": "mean_std"})
    with pytest.raises(LbmError, match="width 3"):
        norm.normalize("f", np.zeros((2, 4)))
    with pytest.raises(LbmError, match="no feature 'h'"):
        norm.normalize("h", np.zeros((2, 3)))


def test_json_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    stats = {
        "observation.state": StatsAccumulator().update(rng.normal(size=(30, 5))).finalize(),
        "action": StatsAccumulator().update(rng.uniform(-1, 1, size=(30, 4))).finalize(),
    }
    path = save_stats(tmp_path / "stats.json", {"metaworld-sawyer": stats, "other": {"action": stats["action"]}})
    json.loads(path.read_text())  # plain JSON
    back = load_stats(path)
    assert set(back) == {"metaworld-sawyer", "other"}
    for k, s in stats.items():
        for f in FeatureStats.FIELDS:
            np.testing.assert_array_equal(getattr(back["metaworld-sawyer"][k], f), getattr(s, f))
        assert back["metaworld-sawyer"][k].count == 30
    norm = Normalizer(stats, {"observation.state": "mean_std", "action": "min_max"})
    again = Normalizer.from_json(json.loads(json.dumps(norm.to_json())))
    x = rng.normal(size=(7, 4))
    np.testing.assert_array_equal(again.normalize("action", x), norm.normalize("action", x))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LbmError, match="corrupt"):
        load_stats(tmp_path / "bad.json")
    with pytest.raises(LbmError, match="does not exist"):
        load_stats(tmp_path / "missing.json")
