"""Policy configuration: one frozen dataclass for every family, plus named sizes.

A config holds numbers and names only (DESIGN.md rule 1); :func:`lbm.policies.build_policy` turns it
into a model. The three families share the conditioning stack and the transformer, so their
fields live side by side; the few family-specific ones are grouped and prefixed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from lbm.errors import LbmError, did_you_mean
from lbm.schema import ACTION, STATE

Family = Literal["flow", "diffusion", "discrete"]


@dataclass(frozen=True)
class PolicyConfig:
    """Architecture and sampling settings of a policy (all three families)."""

    family: Family = "flow"
    """Policy family: 'flow' (rectified flow, pi0), 'diffusion' (DDPM/DDIM), 'discrete' (256-bin tokens)."""
    horizon: int = 16
    """T: actions predicted per chunk."""
    history: int = 2
    """H: observation steps fed to the policy (the newest last)."""
    d_model: int = 256
    """D: width of the observation tokens, and of attention in both streams (heads x head width)."""
    num_layers: int = 4
    """Transformer blocks of the action expert (each has an observation and an action stream)."""
    num_heads: int = 4
    """Attention heads per block."""
    ff_dim: int = 1024
    """Hidden width of the observation stream's MLP."""
    action_d_model: int = 128
    """Da: width of the action tokens' stream (pi0's smaller action expert). The observation tokens
    go through the network once per chunk at width ``d_model``; the action tokens go through it at
    every denoising or decoding step, so their width sets the sampling cost."""
    action_ff_dim: int = 512
    """Hidden width of the action stream's MLP."""
    dropout: float = 0.0
    """Dropout inside the transformer (0 for small data is usually best)."""
    cameras: tuple[str, ...] = ()
    """Cameras the policy looks at; empty means state-only."""
    image_size: int = 96
    """Side of the square images the encoder receives (after the crop during training)."""
    crop_fraction: float = 0.9
    """Random-crop side as a fraction of the image during training (center crop at inference)."""
    cnn_widths: tuple[int, ...] = (32, 64, 128, 128)
    """Channels of the CNN stages (stride-2 each after a stride-2 stem)."""
    image_tokens: Literal["spatial_softmax", "pooled"] = "spatial_softmax"
    """How a feature map becomes tokens: keypoints (one token) or a 2x2 pooled grid (four tokens)."""
    state_norm: Literal["mean_std", "min_max", "quantile"] = "mean_std"
    """Normalization of the state."""
    state_min_spread: float = 0.0
    """Floor on the state's normalization spread (its std under mean_std, half its range otherwise), in the
    state's units; 0: none. Scripted demonstrations hold some dimensions almost fixed (the hand's orientation:
    std ~1e-4), so a policy's own small drift there becomes an input 10+ stds out (measured on LIBERO) and
    it acts on inputs it never saw; a floor of 0.01 keeps such a drift within a few units."""
    action_norm: Literal["mean_std", "min_max", "quantile"] = "quantile"
    """Normalization of actions; 'quantile' maps q01..q99 to [-1, 1] (the discrete bins' range)."""
    constant_dims: tuple[str, ...] = ()
    """Dimensions to pass through unnormalized although the data is not exactly constant there, as
    'EMBODIMENT/FEATURE:DIMS' (e.g. 'metaworld-sawyer/observation.state:8-10,26'); 'FEATURE:DIMS'
    applies to every embodiment. Exactly constant dimensions always pass through."""
    execute_steps: int | None = None
    """Actions a deployment executes from each chunk before asking again (None: the whole chunk)."""
    language_dim: int = 384
    """Width of the frozen sentence embedding (all-MiniLM-L6-v2)."""
    # ---- flow matching ----
    flow_steps: int = 10
    """Euler steps when sampling a flow-matching chunk."""
    # ---- diffusion ----
    diffusion_train_steps: int = 100
    """DDPM noise levels used in training."""
    diffusion_sample_steps: int = 10
    """DDIM steps when sampling."""
    diffusion_prediction: Literal["epsilon", "sample"] = "epsilon"
    """What the diffusion network predicts."""
    diffusion_clip_sample: float = 1.5
    """Clip predicted clean actions to +-this (normalized units) during DDIM."""
    # ---- discrete tokens ----
    discrete_bins: int = 256
    """Bins per action dimension over the normalized [-1, 1] (= q01..q99 with quantile norm)."""
    discrete_decoding: Literal["autoregressive", "parallel"] = "autoregressive"
    """Token order: one token at a time (RT-2/OpenVLA) or all at once (OpenVLA-OFT)."""


SIZES: dict[str, dict[str, object]] = {
    # tests: a forward pass in milliseconds, overfits in a few hundred steps
    "tiny": dict(
        d_model=64, num_layers=2, num_heads=2, ff_dim=128, action_d_model=32, action_ff_dim=64, cnn_widths=(8, 16), image_size=32
    ),
    # CPU default: a few million parameters
    "small": dict(
        d_model=256, num_layers=4, num_heads=4, ff_dim=1024, action_d_model=128, action_ff_dim=512, cnn_widths=(32, 64, 128, 128)
    ),
    # GPU
    "base": dict(
        d_model=512,
        num_layers=8,
        num_heads=8,
        ff_dim=2048,
        action_d_model=256,
        action_ff_dim=1024,
        cnn_widths=(64, 128, 256, 256),
    ),
}
"""Named model sizes, applied by :func:`policy_config`."""


def policy_config(family: str, size: str = "small", **overrides) -> PolicyConfig:
    """A :class:`PolicyConfig` for ``family`` at a named ``size`` with field overrides."""
    if family not in ("flow", "diffusion", "discrete"):
        raise did_you_mean(family, ("flow", "diffusion", "discrete"), "policy family")
    if size not in SIZES:
        raise did_you_mean(size, SIZES, "policy size")
    return dataclasses.replace(PolicyConfig(family=family), **{**SIZES[size], **overrides})  # type: ignore[arg-type]


def validate_config(config: PolicyConfig) -> None:
    """Raise :class:`LbmError` for settings that cannot build a model."""
    problems = []
    if config.d_model % config.num_heads:
        problems.append(f"d_model={config.d_model} is not divisible by num_heads={config.num_heads}")
    for name in (
        "horizon",
        "history",
        "d_model",
        "action_d_model",
        "action_ff_dim",
        "ff_dim",
        "num_layers",
        "num_heads",
        "flow_steps",
        "diffusion_sample_steps",
    ):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be >= 1 (got {getattr(config, name)})")
    if config.diffusion_sample_steps > config.diffusion_train_steps:
        problems.append("diffusion_sample_steps must not exceed diffusion_train_steps")
    if not 0.1 <= config.crop_fraction <= 1.0:
        problems.append(f"crop_fraction must be in [0.1, 1] (got {config.crop_fraction})")
    if config.discrete_bins < 2:
        problems.append("discrete_bins must be >= 2")
    if config.execute_steps is not None and not 1 <= config.execute_steps <= config.horizon:
        problems.append(f"execute_steps must be between 1 and horizon={config.horizon} (got {config.execute_steps})")
    try:
        constant_dims_by_embodiment(config.constant_dims)
    except LbmError as error:
        problems.append(str(error).rstrip("."))
    if problems:
        raise LbmError("Invalid policy config: " + "; ".join(problems) + ". Fix these fields (e.g. --policy.d-model).")


ALL_EMBODIMENTS = "*"


def constant_dims_by_embodiment(entries: tuple[str, ...]) -> dict[str, dict[str, tuple[int, ...]]]:
    """Parse :attr:`PolicyConfig.constant_dims`: ``{embodiment or '*': {feature: dims}}``, '*' merged into each."""

    parsed: dict[str, dict[str, set[int]]] = {}
    for entry in entries:
        who, _, rest = entry.rpartition("/")
        feature, sep, dims_text = rest.partition(":")
        if not sep or feature not in (STATE, ACTION):
            raise LbmError(
                f"constant_dims entry {entry!r} must read '[EMBODIMENT/]FEATURE:DIMS' with FEATURE "
                f"{STATE!r} or {ACTION!r}, e.g. '{STATE}:8-10,26'."
            )
        dims: set[int] = set()
        for part in dims_text.split(","):
            lo, dash, hi = part.strip().partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()):
                raise LbmError(f"constant_dims entry {entry!r}: {part.strip()!r} is not a dimension or a range such as 8-10.")
            dims.update(range(int(lo), int(hi) + 1) if dash else {int(lo)})
        parsed.setdefault(who or ALL_EMBODIMENTS, {}).setdefault(feature, set()).update(dims)
    everyone = parsed.pop(ALL_EMBODIMENTS, {})
    out: dict[str, dict[str, tuple[int, ...]]] = {ALL_EMBODIMENTS: {f: tuple(sorted(d)) for f, d in everyone.items()}}
    for who, feats in parsed.items():
        out[who] = {f: tuple(sorted(feats.get(f, set()) | everyone.get(f, set()))) for f in {*feats, *everyone}}
    return out


def config_to_json(config: PolicyConfig) -> dict:
    """Plain-JSON form of a config (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_json(d: dict) -> PolicyConfig:
    """Inverse of :func:`config_to_json`; unknown keys are an error naming them."""
    fields = {f.name: f for f in dataclasses.fields(PolicyConfig)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise LbmError(f"Checkpoint policy config has unknown fields {unknown}; it was written by a newer lbm. Upgrade lbm.")
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return PolicyConfig(**kw)
