"""A freshly initialized checkpoint for the serving tests and benchmarks (no data, no training).

Serving measures transport, batching and bookkeeping, not skill, so a checkpoint with random
weights is enough there, and building it takes a second instead of generating demos and training.
It is still a real checkpoint folder written by :func:`lbm.train.save_checkpoint` and read by
:func:`lbm.train.load_policy`, for Meta-World's embodiment. The output layers (zero-initialized for
stable training) get small random values so that actions really depend on the observation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INSTRUCTION = "reach the goal position"


def fresh_checkpoint(path: str | Path, family: str = "flow", size: str = "tiny", seed: int = 0, **overrides) -> Path:
    """Write a random-weight ``family``/``size`` checkpoint for Meta-World at ``path``; return it.

    Normalization stats are unit-scale; the instruction cache holds :data:`INSTRUCTION` only (with
    a random unit embedding, so the sentence encoder is never loaded).
    """
    import torch

    from lbm.data.normalize import FeatureStats
    from lbm.policies import InstructionCache, build_policy, policy_config
    from lbm.schema import ACTION, STATE
    from lbm.sim import METAWORLD_EMBODIMENT as emb
    from lbm.train import save_checkpoint

    rng = np.random.default_rng(seed)

    def unit(d: int, spread: float) -> FeatureStats:
        z, o = np.zeros(d), np.ones(d)
        return FeatureStats(mean=z, std=o * spread, min=-o * spread, max=o * spread, q01=-o * spread, q99=o * spread, count=100)

    stats = {emb.name: {STATE: unit(emb.state_dim, 1.0), ACTION: unit(emb.action_dim, 0.5)}}
    vec = rng.standard_normal(384).astype(np.float32)
    cache = InstructionCache({INSTRUCTION: vec / np.linalg.norm(vec)}, use_user_cache=False)
    torch.manual_seed(seed)
    policy = build_policy(policy_config(family, size, **overrides), [emb], stats, cache)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name.endswith("_w") and not torch.any(p):
                p.normal_(0.0, 0.05)
    return save_checkpoint(
        path, model=policy, ema=policy, stats=stats, train_config={"note": "fresh, untrained (lbm.serve.testing)"}, step=0
    )
