"""Every registered policy family: builds, finite loss, overfits, predicts in bounds (no trainer here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_policies_helpers import INSTRUCTIONS, write_tiny_dataset

from lbm.errors import LbmError
from lbm.policies import POLICIES, InstructionCache, build_policy, policy_config
from lbm.schema import Observation

torch.set_num_threads(1)  # the CPU is shared; one thread each is fastest under contention


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from lbm.data.dataset import EpisodeDataset

    root = write_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny", cameras=("corner",))
    return EpisodeDataset(root)


@pytest.fixture(scope="module")
def cache():
    # Random stand-in embeddings: these tests are about the policy math, not the sentence encoder
    # (tests/test_train.py embeds with the real one).
    rng = np.random.default_rng(0)
    return InstructionCache({s: rng.normal(size=384).astype(np.float32) for s in INSTRUCTIONS}, use_user_cache=False)


def _batch(data, n=8, cameras=(), start=0):
    from lbm.data.windows import WindowDataset, collate_windows

    w = WindowDataset(data, history=2, horizon=16, cameras=cameras)
    return collate_windows([w[i] for i in range(start, start + n * 5, 5)])


def _policy(family, data, cache, **kw):
    torch.manual_seed(0)
    cfg = policy_config(family, "tiny", **kw)
    return build_policy(cfg, [data.embodiment], {data.embodiment.name: data.stats}, cache)


@pytest.mark.parametrize("cameras", [(), ("corner",)], ids=["state", "image"])
@pytest.mark.parametrize("family", sorted(POLICIES))
def test_builds_finite_loss_and_bounded_chunks(family, cameras, data, cache):
    policy = _policy(family, data, cache, cameras=cameras)
    loss, metrics = policy.compute_loss(_batch(data, cameras=cameras))
    assert loss.ndim == 0 and torch.isfinite(loss) and metrics["loss"] == pytest.approx(float(loss.detach()))
    loss.backward()
    assert all(p.grad is not None for n, p in policy.named_parameters()), "every parameter must get a gradient (DDP)"
    e = data.embodiment
    images = {"corner": np.zeros((32, 32, 3), np.uint8)} if cameras else {}
    obs = [Observation(np.full(e.state_dim, 5.0), images, INSTRUCTIONS[i % 2], e.name) for i in range(3)]
    chunk = policy.predict_chunk(obs)
    assert chunk.shape == (3, 16, e.action_dim) and chunk.dtype == np.float32
    assert np.all(chunk >= np.array(e.action_low)) and np.all(chunk <= np.array(e.action_high))


@pytest.mark.parametrize("family", sorted(POLICIES))
def test_overfits_a_tiny_batch(family, data, cache):
    """Loss drops by an order of magnitude and sampled chunks approach the demonstrated ones."""
    policy = _policy(family, data, cache)
    batch = _batch(data, n=8)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    policy.eval()
    torch.manual_seed(1)
    before_err = float(((torch.from_numpy(_chunks(policy, batch)) - batch["action"]) ** 2).mean())
    policy.train()
    losses = []
    for step in range(300):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 20)
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = np.mean(losses[:10]), np.mean(losses[-20:])
    policy.eval()
    torch.manual_seed(1)
    after_err = float(((torch.from_numpy(_chunks(policy, batch)) - batch["action"]) ** 2).mean())
    assert last < first / 10 or after_err < before_err / 10, (first, last, before_err, after_err)
    assert after_err < before_err / 5, (before_err, after_err)


def _chunks(policy, batch):
    with torch.no_grad():
        out = policy.sample_actions(batch)
        e = policy._embodiment_index(batch["embodiment"])
        return policy.unnormalize(out, e).numpy()


def test_history_slots_and_reset(data, cache):
    policy = _policy("flow", data, cache, history=2).eval()
    e = data.embodiment
    obs = Observation(np.zeros(e.state_dim), {}, INSTRUCTIONS[0], e.name)
    policy.predict_chunk([obs, obs])
    assert set(policy._slots) == {0, 1} and len(policy._slots[0]) == 1
    policy.predict_chunk([obs, obs])
    assert len(policy._slots[0]) == 2
    policy.reset([0])
    assert 0 not in policy._slots and len(policy._slots[1]) == 2
    policy.reset()
    assert not policy._slots


def test_bad_inputs_are_actionable(data, cache):
    policy = _policy("flow", data, cache).eval()
    e = data.embodiment
    with pytest.raises(LbmError, match="expects"):
        policy.predict_chunk([Observation(np.zeros(e.state_dim + 1), {}, INSTRUCTIONS[0], e.name)])
    with pytest.raises(LbmError, match="unknown to this policy"):
        policy.predict_chunk([Observation(np.zeros(e.state_dim), {}, INSTRUCTIONS[0], "other-robot")])
    with pytest.raises(LbmError, match="camera"):
        _policy("flow", data, cache, cameras=("corner",)).predict_chunk([Observation(np.zeros(e.state_dim), {}, INSTRUCTIONS[0], e.name)])
    with pytest.raises(LbmError, match="No normalization stats"):
        build_policy(policy_config("flow", "tiny"), [e], {}, cache)
    with pytest.raises(LbmError, match="divisible"):
        build_policy(policy_config("flow", "tiny", num_heads=3), [e], {e.name: data.stats}, cache)
    with pytest.raises(LbmError, match="Did you mean"):
        policy_config("flw", "tiny")
    bad = dict(data.stats)
    bad["action"] = type(bad["action"])(**{**bad["action"].__dict__, "q01": np.full(e.action_dim, np.nan)})
    with pytest.raises(LbmError, match="NaN"):
        build_policy(policy_config("flow", "tiny"), [e], {e.name: bad}, cache)


def test_discrete_tokens_round_trip(data, cache):
    policy = _policy("discrete", data, cache)
    a = torch.linspace(-1, 1, 16 * policy.A).view(1, 16, policy.A)
    back = policy.detokenize(policy.tokenize(a))
    assert float((back - a).abs().max()) <= 1 / policy.config.discrete_bins + 1e-6


def _perturbed(family, data, cache, scale=0.03, **kw):
    """A tiny policy with every parameter moved off its init (the zero-initialized output layer would
    make any two sampling paths agree trivially)."""
    policy = _policy(family, data, cache, **kw).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return policy


def _both_paths(policy, obs):
    out, feats = [], []
    policy.keep_features = True  # the failure monitor's features must match too
    for sample in (type(policy)._sample, type(policy)._sample_reference):
        policy.reset()
        policy._sample = sample.__get__(policy)
        torch.manual_seed(3)
        out.append(np.concatenate([policy.predict_chunk(obs), policy.predict_chunk(obs)]))  # history filled
        feats.append(policy.last_features.numpy())
    del policy._sample, policy.keep_features
    np.testing.assert_allclose(feats[0], feats[1], atol=1e-5, rtol=0)
    return out


@pytest.mark.parametrize("history", [1, 2])
@pytest.mark.parametrize("family", ["flow", "diffusion", "discrete", "discrete-parallel"])
def test_fast_sampling_equals_reference(family, history, data, cache):
    """The optimized sampling path (cached projections, observation key/value cache) gives the
    actions of the plain loop for the same noise, before and after the weights change."""
    kw = {"discrete_decoding": "parallel"} if family == "discrete-parallel" else {}
    # Discrete needs larger weights to pick varied bins; continuous families keep the end-to-end DDIM
    # comparison away from its rounding amplification (see test_continuous_sampler_matches_head).
    scale = 0.2 if family.startswith("discrete") else 0.03
    policy = _perturbed(family.split("-")[0], data, cache, scale=scale, history=history, **kw)
    e = data.embodiment
    rng = np.random.default_rng(history)
    obs = [Observation(rng.normal(size=e.state_dim), {}, INSTRUCTIONS[i % 2], e.name) for i in range(3)]
    fast, ref = _both_paths(policy, obs)
    assert np.unique(fast).size > 4, "constant outputs would make the comparison vacuous"
    # DDIM's first step divides by sqrt(alpha_bar) ~ 5e-4, magnifying float rounding of the two
    # paths' different op orders (each step agrees to 1e-5: test_continuous_sampler_matches_head).
    tol = 1e-4 if family == "diffusion" else 1e-5
    np.testing.assert_allclose(fast, ref, atol=tol, rtol=0)
    # The fast path caches transposed weights: a weight update must invalidate them.
    with torch.no_grad():
        for p in policy.expert.parameters():
            p.mul_(1.5)
    fast2, ref2 = _both_paths(policy, obs)
    np.testing.assert_allclose(fast2, ref2, atol=tol, rtol=0)
    assert np.abs(fast2 - fast).max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_expert_infer_matches_forward(causal, data, cache):
    """The fast path (observation keys/values cached once, then the action stream alone) == forward."""
    expert = _perturbed("discrete", data, cache).expert
    obs = torch.randn(2, 4, expert.inner)
    act = torch.randn(2, 5, expert.norm.normalized_shape[0])
    with torch.no_grad():
        full = expert(obs, act, causal=causal)
        assert full.abs().max() > 0.1
        kv = expert.prefix_cache(obs, 5)
        if causal:  # decoding one token at a time: earlier tokens stay in the cache
            rows = torch.cat([expert.infer(act[:, i : i + 1], kv) for i in range(5)], 1)
        else:  # one denoising step, twice: the second call overwrites the first one's keys/values
            expert.infer(torch.randn_like(act), kv, advance=False)
            rows = expert.infer(act, kv, advance=False)
        torch.testing.assert_close(rows, full, atol=1e-5, rtol=0)
        # The observation stream never sees the actions, so its cache does not depend on them.
        other = expert(obs, torch.randn_like(act), causal=causal)
        assert (other - full).abs().max() > 1e-3
    expert.train()
    assert expert.prefix_cache(obs, 5) is None  # training mode: callers fall back to forward


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_continuous_sampler_matches_head(family, data, cache):
    """Every denoising step of the fast path == ContinuousHead.forward on the same input.

    Checked per step because end-to-end DDIM amplifies float rounding: at the first step
    alpha_bar = 2.4e-7, so an unclamped x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) scales a 1e-6 difference
    in eps by ~2000 (the reference loop differs from itself that much across batch sizes there).
    """
    policy = _perturbed(family, data, cache, scale=0.1)
    e = data.embodiment
    batch = _batch(data, n=3)
    with torch.no_grad():
        p = policy.prepare(batch)
        cond = policy.encode(p)
        levels = torch.tensor([990.0, 500.0, 3.0])
        predict = policy.head.sampler(policy, cond, levels, p["embodiment"])
        for i, level in enumerate(levels):
            x = torch.randn(3, 16, policy.A)
            ref = policy.head(policy.expert, cond, x, torch.full((3,), float(level)), p["embodiment"])
            torch.testing.assert_close(predict(x, i), ref, atol=1e-5, rtol=0)
            assert ref.abs().max() > 0.1
    assert e.action_dim <= policy.A
