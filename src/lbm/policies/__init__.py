"""Policies: one registry of families sharing a conditioning stack and a transformer action expert.

policy = build_policy(policy_config("flow", "small"), embodiments, stats)
loss, metrics = policy.compute_loss(batch)                     # training
state = policy.reset(seed)                                     # the runtime contract (lbm.policies.base)
chunk = policy.predict_chunk([observation], [state])           # chunk.actions: (B, T, A), embodiment units
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lbm.data.normalize import FeatureStats
from lbm.errors import did_you_mean
from lbm.policies.base import Chunk, ChunkRequest, Policy, PolicyState, PrivilegedPolicy
from lbm.policies.common import ChunkPolicy, ChunkState
from lbm.policies.config import SIZES, PolicyConfig, config_from_json, config_to_json, policy_config
from lbm.policies.diffusion import DiffusionPolicy
from lbm.policies.discrete import DiscretePolicy
from lbm.policies.flow import FlowPolicy
from lbm.policies.language import InstructionCache
from lbm.schema import Embodiment

POLICIES: dict[str, type[ChunkPolicy]] = {
    "flow": FlowPolicy,
    "diffusion": DiffusionPolicy,
    "discrete": DiscretePolicy,
}
"""family name -> policy class."""


def build_policy(
    config: PolicyConfig,
    embodiments: Sequence[Embodiment],
    stats: Mapping[str, Mapping[str, FeatureStats]],
    instructions: InstructionCache | None = None,
) -> ChunkPolicy:
    """Build a freshly initialized policy of ``config.family``.

    ``stats[embodiment_name][feature_key]`` are the normalization statistics (lbm.data FeatureStats);
    ``instructions`` is the instruction-embedding cache (a new empty one when None).
    """
    if config.family not in POLICIES:
        raise did_you_mean(config.family, POLICIES, "policy family")
    return POLICIES[config.family](config, embodiments, stats, instructions)


__all__ = [
    "POLICIES",
    "SIZES",
    "Chunk",
    "ChunkPolicy",
    "ChunkRequest",
    "ChunkState",
    "Policy",
    "PolicyState",
    "PrivilegedPolicy",
    "InstructionCache",
    "PolicyConfig",
    "build_policy",
    "config_from_json",
    "config_to_json",
    "policy_config",
]
