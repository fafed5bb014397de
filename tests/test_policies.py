"""Every registered policy family: builds, finite loss, overfits, predicts in bounds (no trainer here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lbm.errors import LbmError
from lbm.policies import POLICIES, ChunkRequest, InstructionCache, Policy, build_policy, policy_config
from lbm.schema import Observation
from test_policies_helpers import INSTRUCTIONS, write_tiny_dataset

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
    assert isinstance(policy, Policy)
    result = policy.predict_chunk(obs, [policy.reset(i) for i in range(3)], ChunkRequest(features=True))
    chunk = result.actions
    assert chunk.shape == (3, 16, e.action_dim) and chunk.dtype == np.float32
    assert result.features.shape == (3, policy.config.action_d_model) and np.all(np.isfinite(result.features))
    assert [s.calls for s in result.states] == [1, 1, 1] and all(len(s.history) == 1 for s in result.states)
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
        out, _ = policy.sample_actions(batch)
        e = policy.embodiment_index(batch["embodiment"])
        return policy.unnormalize(out, e).numpy()


def test_history_is_state_the_caller_owns(data, cache):
    """History lives in the states predict_chunk returns, per slot: batch composition changes nothing."""
    policy = _perturbed("flow", data, cache, history=2)
    e = data.embodiment
    rng = np.random.default_rng(0)
    obs = [Observation(rng.normal(size=e.state_dim), {}, INSTRUCTIONS[i % 2], e.name) for i in range(3)]
    fresh = policy.reset(seed=5)
    assert fresh.history == () and fresh.seed == 5 and fresh.calls == 0
    first = policy.predict_chunk(obs[:2], [fresh, policy.reset(seed=6)])
    assert [len(s.history) for s in first.states] == [1, 1] and fresh.history == ()  # states are values
    second = policy.predict_chunk(obs[:2], first.states)
    third = policy.predict_chunk(obs[:2], second.states)
    assert [len(s.history) for s in third.states] == [2, 2]  # keeps the last H observations
    assert third.states[0].history == (obs[0], obs[0])
    # Seeded noise: slot 0 alone, or batched with other slots, gets exactly the same chunk.
    alone = policy.predict_chunk(obs[:1], [first.states[0]]).actions[0]
    batched = policy.predict_chunk([obs[2], obs[0]], [policy.reset(seed=9), first.states[0]]).actions[1]
    np.testing.assert_allclose(alone, second.actions[0], atol=1e-6)
    np.testing.assert_allclose(batched, second.actions[0], atol=1e-5)
    # Another seed, or no seed, draws other noise.
    other = policy.predict_chunk(obs[:1], [policy.reset(seed=7)]).actions[0]
    assert np.abs(other - first.actions[0]).max() > 1e-4
    with pytest.raises(LbmError, match="states"):
        policy.predict_chunk(obs[:2], [fresh])
    with pytest.raises(LbmError, match="reset"):
        policy.predict_chunk(obs[:1], [None])


def test_bad_inputs_are_actionable(data, cache):
    policy = _policy("flow", data, cache).eval()
    e = data.embodiment
    one = [policy.reset()]
    with pytest.raises(LbmError, match="expects"):
        policy.predict_chunk([Observation(np.zeros(e.state_dim + 1), {}, INSTRUCTIONS[0], e.name)], one)
    with pytest.raises(LbmError, match="unknown to this policy"):
        policy.predict_chunk([Observation(np.zeros(e.state_dim), {}, INSTRUCTIONS[0], "other-robot")], one)
    with pytest.raises(LbmError, match="camera"):
        _policy("flow", data, cache, cameras=("corner",)).predict_chunk(
            [Observation(np.zeros(e.state_dim), {}, INSTRUCTIONS[0], e.name)], one
        )
    with pytest.raises(LbmError, match="No normalization stats"):
        build_policy(policy_config("flow", "tiny"), [e], {}, cache)
    with pytest.raises(LbmError, match="divisible"):
        build_policy(policy_config("flow", "tiny", num_heads=3), [e], {e.name: data.stats}, cache)
    with pytest.raises(LbmError, match="Did you mean"):
        policy_config("flw", "tiny")
    bad = dict(data.stats)
    bad["action"] = type(bad["action"])(**{**bad["action"].__dict__, "q01": np.full(e.action_dim, np.nan)})
    with pytest.raises(LbmError, match="not finite"):
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
    """Actions of the fast path (predict_chunk, twice: history filled) and of the reference loop for the same noise."""
    states, chunks, last = [policy.reset(seed=i) for i in range(len(obs))], [], None
    for _ in range(2):
        last = policy.predict_chunk(obs, states, ChunkRequest(features=True))
        states = list(last.states)
        chunks.append(last.actions)
    ref, ref_features = _reference_chunks(policy, obs)
    np.testing.assert_allclose(last.features, ref_features, atol=1e-5, rtol=0)  # the failure monitor's features too
    return np.concatenate(chunks), ref


def _reference_chunks(policy, obs):
    """The two chunks of :func:`_both_paths` through ``sample_actions(reference=True)`` with the same noise."""
    from lbm.policies import ChunkState
    from lbm.schema import STATE, STATE_PAD

    H, chunks, features = policy.config.history, [], None
    for call in range(2):
        n = min(call + 1, H)
        windows = [[o] * H for o in obs]  # the history holds the same observation: padding repeats it too
        batch = {
            STATE: torch.from_numpy(
                np.stack(
                    [np.stack([np.pad(o.state.astype(np.float32), (0, policy.S - o.state.shape[0])) for o in w]) for w in windows]
                )
            ),
            STATE_PAD: torch.tensor([[j < H - n for j in range(H)] for _ in obs]),
            "task": [o.instruction for o in obs],
            "embodiment": [o.embodiment for o in obs],
        }
        noise = policy.initial_noise([ChunkState(seed=i, calls=call) for i in range(len(obs))])
        actions, features = policy.sample_actions(batch, noise, reference=True)
        e = policy.embodiment_index(batch["embodiment"])
        emb = policy.embodiments[obs[0].embodiment]
        raw = policy.unnormalize(actions.float(), e).numpy()[..., : emb.action_dim]
        chunks.append(emb.clip_actions(raw))
    return np.concatenate(chunks), features.numpy()


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
    # The fast path caches transposed weights: an in-place weight update must invalidate them.
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
        predict = policy.head.sampler(policy.expert, cond, levels, p["embodiment"])
        for i, level in enumerate(levels):
            x = torch.randn(3, 16, policy.A)
            ref, ref_h = policy.head(policy.expert, cond, x, torch.full((3,), float(level)), p["embodiment"])
            fast, fast_h = predict(x, i)
            torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(fast_h, ref_h, atol=1e-5, rtol=0)
            assert ref.abs().max() > 0.1
    assert e.action_dim <= policy.A


def _random_stats(e, rng, spreads=None):
    from lbm.data.normalize import FeatureStats
    from lbm.schema import ACTION, STATE

    def one(d, spread):
        mean = rng.normal(size=d)
        half = rng.uniform(0.5, 3.0, size=d) if spread is None else np.full(d, spread)
        return FeatureStats(
            mean=mean, std=half, min=mean - 2 * half, max=mean + 2 * half, q01=mean - half, q99=mean + half, count=50
        )

    spreads = spreads or {}
    return {e.name: {STATE: one(e.state_dim, spreads.get(STATE)), ACTION: one(e.action_dim, spreads.get(ACTION))}}


@pytest.mark.parametrize("family", sorted(POLICIES))
def test_policies_normalize_with_the_one_normalizer(family, data, cache):
    """Every family normalizes exactly as lbm.data.Normalizer does, in every mode."""
    from lbm.data import Normalizer
    from lbm.schema import ACTION, STATE

    e = data.embodiment
    stats = _random_stats(e, np.random.default_rng(3))
    for state_norm, action_norm in (("mean_std", "min_max"), ("quantile", "quantile"), ("min_max", "mean_std")):
        cfg = policy_config(family, "tiny", state_norm=state_norm, action_norm=action_norm)
        policy = build_policy(cfg, [e], stats, cache)
        reference = Normalizer(stats[e.name], {STATE: state_norm, ACTION: action_norm})
        batch = _batch(data)
        p = policy.prepare(batch)
        want_state = reference.normalize(STATE, batch[STATE].double()).float()
        want_action = reference.normalize(ACTION, batch[ACTION].double()).float()
        torch.testing.assert_close(p["state"], want_state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p["action"], want_action, rtol=1e-5, atol=1e-5)
        back = policy.unnormalize(p["action"], p["embodiment"])
        torch.testing.assert_close(back, batch[ACTION].float(), rtol=1e-4, atol=1e-4)


# (feature, how the stats of dimension 1 are broken, words the error must contain)
DEGENERATE = [
    ("observation.state", "narrow", "spread below"),
    ("action", "narrow", "spread below"),
    ("observation.state", "nan", "not finite"),
    ("action", "inf", "not finite"),
]


@pytest.mark.parametrize(("feature", "damage", "words"), DEGENERATE)
@pytest.mark.parametrize("family", sorted(POLICIES))
def test_degenerate_stats_fail_at_build_time(family, feature, damage, words, data, cache):
    import dataclasses

    from lbm.data import DegenerateStatsError

    e = data.embodiment
    stats = _random_stats(e, np.random.default_rng(4))
    s = stats[e.name][feature]
    broken = {name: np.array(getattr(s, name), dtype=np.float64) for name in ("mean", "std", "min", "max", "q01", "q99")}
    if damage == "narrow":  # constant up to float noise: not exactly constant, so not passed through
        for name in broken:
            broken[name][1] = 0.25 + (1e-9 if name in ("std", "max", "q99") else 0.0)
        broken["std"][1] = 1e-9
    else:
        for name in broken:
            broken[name][1] = np.nan if damage == "nan" else np.inf
    stats[e.name][feature] = dataclasses.replace(s, **broken)
    cfg = policy_config(family, "tiny", state_norm="mean_std", action_norm="min_max")
    with pytest.raises(DegenerateStatsError) as info:
        build_policy(cfg, [e], stats, cache)
    message = str(info.value)
    assert words in message and repr(feature) in message and repr(e.name) in message and "dimension(s) 1" in message
    assert info.value.feature == feature and info.value.dims == (1,)
    if damage == "narrow":  # the fix the error names works: the marked dimension passes through
        assert f"--policy.constant-dims {e.name}/{feature}:1" in message
        marked = policy_config(
            family, "tiny", state_norm="mean_std", action_norm="min_max", constant_dims=(f"{e.name}/{feature}:1",)
        )
        policy = build_policy(marked, [e], stats, cache)
        prefix = "state" if feature == "observation.state" else "action"
        assert float(getattr(policy, f"{prefix}_scale")[0, 1]) == 1.0 and float(getattr(policy, f"{prefix}_shift")[0, 1]) == 0.0
