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

    from lbm.policies import InstructionCache, build_policy, policy_config
    from lbm.sim import METAWORLD_EMBODIMENT as emb
    from lbm.train import save_checkpoint
    from stub_policies import unit_stats

    rng = np.random.default_rng(seed)
    stats = unit_stats(emb, state_spread=1.0, action_spread=0.5)
    vec = rng.standard_normal(384).astype(np.float32)
    cache = InstructionCache({INSTRUCTION: vec / np.linalg.norm(vec)}, use_user_cache=False)
    torch.manual_seed(seed)
    policy = build_policy(policy_config(family, size, **overrides), [emb], stats, cache)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name.endswith("_w") and not torch.any(p):
                p.normal_(0.0, 0.05)
    return save_checkpoint(
        path, model=policy, ema=policy, stats=stats, train_config={"note": "fresh, untrained (tests/serve_helpers.py)"}, step=0
    )
