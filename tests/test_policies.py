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
