"""The conditioning stack and action-expert transformer shared by every policy family.

Glossary: B batch, H observation history, T horizon (chunk length), E embodiments, S state width,
A action width (``S``/``A`` are padded to the widest embodiment: ``Smax``/``Amax``), D token width,
C conditioning tokens.

A family subclasses :class:`ChunkPolicy` and implements ``_loss`` (training math) and ``_sample``
(sampling math) on *normalized* actions; normalization, the runtime contract (caller-owned
per-robot state, seeded noise, features), unnormalization and clipping live here, once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lbm.data.normalize import DegenerateStatsError, FeatureStats, Normalizer
from lbm.errors import LbmError
from lbm.policies.base import Chunk, ChunkRequest, noise_seed
from lbm.policies.config import ALL_EMBODIMENTS, PolicyConfig, constant_dims_by_embodiment, validate_config
from lbm.policies.language import InstructionCache
from lbm.schema import ACTION, ACTION_PAD, STATE, STATE_PAD, Embodiment, Observation, image_key

# Parameters whose first axis is the embodiment (copied row by row, by name, when finetuning).
PER_EMBODIMENT_SUFFIXES = ("state_w", "state_b", "embodiment_token", "action_in_w", "action_in_b", "action_out_w", "action_out_b")


# ---- building blocks -------------------------------------------------------------------------------


class Stream(nn.Module):
    """One token type's weights inside a block (pi0's "experts"): norms, attention projections, SiLU MLP.

    Tokens have the stream's own ``width``; attention runs at the shared ``inner`` width so that
    both streams' queries, keys and values meet in one attention. ``kv_only`` keeps just what makes
    keys and values: the observation stream of the last block, whose outputs nobody reads. Explicit
    Linear layers so LoRA can target qkv/kv/proj/fc1/fc2.
    """

    def __init__(self, width: int, inner: int, ff: int, kv_only: bool = False):
        super().__init__()
        self.kv_only = kv_only
        self.norm1 = nn.LayerNorm(width)
        if kv_only:
            self.kv = nn.Linear(width, 2 * inner)
            return
        self.qkv = nn.Linear(width, 3 * inner)
        self.proj = nn.Linear(inner, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, ff)
        self.fc2 = nn.Linear(ff, width)

    def heads(self, x: torch.Tensor, heads: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``(q, k, v)``, each (B, heads, N, inner / heads); ``q`` is None for a kv-only stream."""
        B, N, _ = x.shape
        h = self.norm1(x)
        if self.kv_only:
            k, v = self.kv(h).view(B, N, 2, heads, -1).permute(2, 0, 3, 1, 4)
            return None, k, v
        q, k, v = self.qkv(h).view(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
        return q, k, v

    def update(self, x: torch.Tensor, attended: torch.Tensor, dropout: float) -> torch.Tensor:
        """Residual attention output (``attended`` (B, N, inner)) and MLP."""
        x = x + self.proj(attended)
        return x + F.dropout(self.fc2(F.silu(self.fc1(self.norm2(x)))), dropout, self.training)


class Block(nn.Module):
    """Pre-LN block over two token streams (observations, actions) with one joint attention."""

    def __init__(self, config: PolicyConfig, last: bool):
        super().__init__()
        self.heads = config.num_heads
        self.dropout = config.dropout
        self.obs = Stream(config.d_model, config.d_model, config.ff_dim, kv_only=last)
        self.act = Stream(config.action_d_model, config.d_model, config.action_ff_dim)

    def forward(self, obs: torch.Tensor, act: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``obs`` (B, C, D), ``act`` (B, T, Da), ``mask`` (C+T, C+T) -> (obs or None after the last block, act)."""
        B, C, D = obs.shape
        T = act.shape[1]
        q_obs, k_obs, v_obs = self.obs.heads(obs, self.heads)
        q_act, k_act, v_act = self.act.heads(act, self.heads)
        q_act = cast(torch.Tensor, q_act)  # the action stream is never kv-only
        k, v = torch.cat([k_obs, k_act], dim=2), torch.cat([v_obs, v_act], dim=2)
        q = q_act if q_obs is None else torch.cat([q_obs, q_act], dim=2)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[-q.shape[2] :], dropout_p=p)
        a = a.transpose(1, 2).reshape(B, -1, D)
        act = self.act.update(act, a[:, -T:], p)
        return (None if q_obs is None else self.obs.update(obs, a[:, :C], p)), act


def _stream_weights(stream: Stream) -> tuple[torch.Tensor, ...] | None:
    """Inference weights of a stream (Linear weights transposed for addmm), None if not plain layers."""
    names = ("norm1", "kv") if stream.kv_only else ("norm1", "qkv", "proj", "norm2", "fc1", "fc2")
    modules = [getattr(stream, n) for n in names]
    if not all(type(m) in (nn.Linear, nn.LayerNorm) for m in modules):  # e.g. an unmerged LoRA adapter
        return None
    with torch.no_grad():
        return tuple(
            t
            for m in modules
            for t in (
                (m.weight.detach().t().contiguous(), m.bias.detach())
                if type(m) is nn.Linear
                else (m.weight.detach(), m.bias.detach())
            )
        )


def _fast_stream(
    x: torch.Tensor, w: tuple[torch.Tensor, ...], heads: int, views: tuple[torch.Tensor, ...]
) -> torch.Tensor | None:
    """One stream through one block on the inference fast path (same math as Stream/Block forward).

    ``views`` (from :meth:`Transformer._cache_views`): where the rows of ``x`` write their keys and
    values in the cache, and the cached keys and values they attend to. Returns None for a kv-only
    stream.
    """
    B, N, width = x.shape
    written, keys, values = views
    h = F.layer_norm(x, (width,), w[0], w[1]).view(-1, width)
    qkv = torch.addmm(w[3], h, w[2]).view(B, N, -1, heads, keys.shape[-1]).permute(2, 0, 3, 1, 4)
    written.copy_(qkv[-2:])  # keys and values in one copy
    if len(w) == 4:  # kv-only
        return None
    n1w, n1b, qkvw, qkvb, pw, pb, n2w, n2b, f1w, f1b, f2w, f2b = w
    a = F.scaled_dot_product_attention(qkv[0], keys, values).transpose(1, 2).reshape(B * N, -1)
    x = x + torch.addmm(pb, a, pw).view(B, N, width)
    h = F.silu(torch.addmm(f1b, F.layer_norm(x, (width,), n2w, n2b).view(-1, width), f1w))
    return x + torch.addmm(f2b, h, f2w).view(B, N, width)


class Transformer(nn.Module):
    """The action expert: pi0's layout of two token streams sharing attention in every block.

    Observation tokens (width ``d_model``) attend only to each other; action tokens (width
    ``action_d_model``, narrower: they go through the network at every denoising step) attend to
    the observations and to each other (optionally causally). Each stream has its own weights.
    """

    def __init__(self, config: PolicyConfig):
        super().__init__()
        L = config.num_layers
        self.blocks = nn.ModuleList(Block(config, last=i == L - 1) for i in range(L))
        self.norm = nn.LayerNorm(config.action_d_model)
        self.heads = config.num_heads
        self.inner = config.d_model
        self._fast: tuple | None = None  # (key, per-block inference weights), see _inference_weights
        self.register_load_state_dict_post_hook(lambda module, keys: module.invalidate())

    @property
    def block_list(self) -> list[Block]:
        """The blocks, typed."""
        return [cast(Block, b) for b in self.blocks]

    def forward(self, obs: torch.Tensor, act: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """``obs`` (B, C, D), ``act`` (B, T, Da) -> action features (B, T, Da)."""
        mask = prefix_mask(obs.shape[1], act.shape[1], causal, obs.device)
        state: torch.Tensor | None = obs
        for block in self.block_list:
            if state is None:  # only the last block returns no observation tokens
                break
            state, act = block(state, act, mask)
        return self.norm(act)

    # ---- inference fast path: the same math as forward, fewer and cheaper ops ----------------------
    # Sampling calls the expert 10-64 times per chunk on a few tokens, where per-op overhead and
    # MKL's handling of transposed weights dominate (see benchmarks/policy_latency.py). The
    # observation stream runs once per chunk and leaves its keys/values in a cache; each denoising
    # or decoding step then runs only the action stream, with pre-transposed contiguous weights
    # (addmm). tests/test_policies.py checks this path against forward.

    def train(self, mode: bool = True) -> Transformer:
        """Switch mode; the inference weights are rebuilt on the next use (training changes the weights)."""
        self.invalidate()
        return super().train(mode)

    def invalidate(self) -> None:
        """Drop the inference copies of the weights (mode switches and ``load_state_dict`` do it themselves)."""
        self._fast = None

    def _fingerprint(self) -> tuple:
        """What identifies the current weights: storage, dtype and device of every parameter, and a sample of
        its values (about 9 elements each), so in-place updates (an optimizer or EMA step in eval mode,
        ``p.mul_``) are seen. One gather per parameter, once per chunk: ~0.1 ms."""
        params = [p.detach() for p in self.parameters()]
        sample = torch.cat([p.reshape(-1)[:: max(1, p.numel() // 8)].float() for p in params])
        return tuple((p.data_ptr(), p.dtype, p.device) for p in params), tuple(sample.tolist())

    def _inference_weights(self) -> list[tuple] | None:
        """Per block ``(observation stream weights, action stream weights)`` for :func:`_fast_stream`.

        Rebuilt when the weights change (see :meth:`_fingerprint`), the mode changes, or weights are
        loaded; None in training mode or when a layer is not plain (an unmerged LoRA adapter), where
        callers use :meth:`forward`.
        """
        if self.training:
            return None
        key = self._fingerprint()
        if self._fast is not None and self._fast[0] == key:
            return self._fast[1]
        layers = [(_stream_weights(b.obs), _stream_weights(b.act)) for b in self.block_list]
        if any(w is None for pair in layers for w in pair):
            return None
        self._fast = (key, layers)
        return layers

    def prefix_cache(self, obs: torch.Tensor, extra: int) -> dict | None:
        """A key/value cache of the observation tokens ``obs`` (B, C, D), with room for ``extra`` action tokens.

        None where the fast path is unavailable (training mode, unmerged LoRA adapters): callers
        then run :meth:`forward`, the same math.
        """
        weights = self._inference_weights()
        if weights is None:
            return None
        B, C, _ = obs.shape
        shape = (2, B, self.heads, C + extra, self.inner // self.heads)  # keys and values
        cache = {"n": 0, "weights": weights, "kv": [obs.new_empty(shape) for _ in weights], "views": {}}
        x: torch.Tensor | None = obs
        for w_obs, views in zip((w for w, _ in weights), self._cache_views(cache, C)):
            if x is None:  # only the last block's observation stream is kv-only (returns None)
                break
            x = _fast_stream(x, w_obs, self.heads, views)
        cache["n"] = C
        return cache

    @staticmethod
    def _cache_views(cache: dict, rows: int) -> list[tuple[torch.Tensor, ...]]:
        """Per block: where ``rows`` new tokens write their keys/values, and all keys/values they see.

        Memoized per (position, rows): every denoising step writes the same slots, and slicing
        tensors costs as much as a small kernel at these sizes.
        """
        n0 = cache["n"]
        views = cache["views"].get((n0, rows))
        if views is None:
            n1 = n0 + rows
            views = cache["views"][(n0, rows)] = [(kv[:, :, :, n0:n1], kv[0, :, :, :n1], kv[1, :, :, :n1]) for kv in cache["kv"]]
        return views

    def infer(self, act: torch.Tensor, cache: dict, advance: bool = True) -> torch.Tensor:
        """Action features (B, N, Da) of action tokens ``act`` (B, N, Da) against a :meth:`prefix_cache`.

        The tokens attend to everything cached and to each other. ``advance=True`` keeps their
        keys/values (causal decoding: the next call's tokens see them, never the reverse);
        ``advance=False`` lets the next call overwrite them (the chunk of one denoising step).
        """
        x = act
        for (_, w_act), views in zip(cache["weights"], self._cache_views(cache, act.shape[1])):
            x = cast(torch.Tensor, _fast_stream(x, w_act, self.heads, views))  # action streams are never kv-only
        if advance:
            cache["n"] += act.shape[1]
        return F.layer_norm(x, (x.shape[-1],), self.norm.weight, self.norm.bias)


def prefix_mask(prefix: int, n: int, causal: bool, device: torch.device) -> torch.Tensor:
    """Attention mask (True = may attend) over ``[prefix tokens, n action tokens]`` (the pi0 layout).

    The observation prefix attends only to itself, so its keys/values do not depend on the actions
    and are computed once per chunk (:meth:`Transformer.prefix_cache`). Action tokens see the
    whole prefix and each other (``causal``: only earlier ones and themselves).
    """
    mask = torch.ones(prefix + n, prefix + n, dtype=torch.bool, device=device)
    mask[:prefix, prefix:] = False
    if causal:
        mask[prefix:, prefix:] = torch.tril(mask[prefix:, prefix:])
    return mask


class ConvEncoder(nn.Module):
    """Small CNN (GroupNorm, residual stages) -> spatial-softmax keypoint token or 2x2 pooled tokens."""

    def __init__(self, widths: Sequence[int], d: int, tokens: str, keypoints: int = 32):
        super().__init__()
        w0 = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(3, w0, 3, 2, 1), nn.GroupNorm(min(8, w0), w0), nn.GELU()]
        c = w0
        for w in widths:
            layers += [_ResStage(c, w)]
            c = w
        self.body = nn.Sequential(*layers)
        self.tokens = tokens
        if tokens == "spatial_softmax":
            self.keypoints = nn.Conv2d(c, keypoints, 1)
            self.out = nn.Linear(2 * keypoints, d)
            self.num_tokens = 1
        else:
            self.out = nn.Linear(c, d)
            self.num_tokens = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float (N, 3, h, w) -> tokens (N, k, D)."""
        f = self.body(x)
        if self.tokens == "spatial_softmax":
            heat = self.keypoints(f)
            N, K, h, w = heat.shape
            attn = heat.flatten(2).softmax(-1).view(N, K, h, w)
            ys = torch.linspace(-1, 1, h, device=x.device, dtype=attn.dtype)
            xs = torch.linspace(-1, 1, w, device=x.device, dtype=attn.dtype)
            kp = torch.cat([(attn.sum(3) * ys).sum(-1), (attn.sum(2) * xs).sum(-1)], dim=-1)  # (N, 2K)
            return self.out(kp).unsqueeze(1)
        pooled = F.adaptive_avg_pool2d(f, 2).flatten(2).transpose(1, 2)  # (N, 4, c)
        return self.out(pooled)


class _ResStage(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(y + self.norm2(self.conv2(y)))


def sinusoidal(t: torch.Tensor, d: int) -> torch.Tensor:
    """Embedding (B, d) of scalars ``t`` (B,) in [0, 1000]."""
    half = d // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


def _per_embodiment_linear(E: int, din: int, dout: int) -> tuple[nn.Parameter, nn.Parameter]:
    bound = 1 / math.sqrt(din)
    return nn.Parameter(torch.empty(E, din, dout).uniform_(-bound, bound)), nn.Parameter(torch.zeros(E, dout))


# ---- the policy base class -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkState:
    """One robot's episode state for a :class:`ChunkPolicy` (owned by the caller, see ``lbm.policies.base``)."""

    history: tuple[Observation, ...] = ()
    """The latest ``history`` observations, oldest first (empty at episode start)."""
    seed: int | None = None
    """Seed of the episode's sampling noise; None draws from the process's random stream."""
    calls: int = 0
    """Chunks predicted so far in this episode (the noise of chunk k is seeded by (seed, k))."""


class ChunkPolicy(nn.Module):
    """Base of every family: conditioning stack, transformer, normalization, the runtime contract.

    Build through :func:`lbm.policies.build_policy`. ``stats[embodiment][feature]`` are the dataset
    statistics (:class:`lbm.data.FeatureStats`); normalization is :class:`lbm.data.Normalizer`'s,
    with its constants stored as buffers so that they travel in ``model.safetensors``.
    """

    family = ""
    # Buffers (E, Smax) / (E, Amax): normalization per embodiment, and which action dims it has.
    state_shift: torch.Tensor
    state_scale: torch.Tensor
    action_shift: torch.Tensor
    action_scale: torch.Tensor
    action_mask: torch.Tensor

    def __init__(
        self,
        config: PolicyConfig,
        embodiments: Sequence[Embodiment],
        stats: Mapping[str, Mapping[str, FeatureStats]],
        instructions: InstructionCache | None = None,
    ):
        super().__init__()
        validate_config(config)
        if not embodiments:
            raise LbmError("A policy needs at least one embodiment (none were given by the dataset).")
        self.config = config
        self.embodiments: dict[str, Embodiment] = {e.name: e for e in embodiments}
        self.instructions = instructions if instructions is not None else InstructionCache()
        E = len(self.embodiments)
        self.S = max(e.state_dim for e in embodiments)
        self.A = max(e.action_dim for e in embodiments)
        D, H = config.d_model, config.history

        # Normalization constants are buffers: they travel in model.safetensors with the weights.
        names = ("state_shift", "state_scale", "action_shift", "action_scale", "action_mask")
        bufs = {n: torch.zeros(E, self.S if n.startswith("state") else self.A) for n in names}
        bufs["state_scale"].fill_(1.0)
        bufs["action_scale"].fill_(1.0)
        marked = constant_dims_by_embodiment(config.constant_dims)
        for i, e in enumerate(embodiments):
            normalizer = embodiment_normalizer(e, stats, config, marked)
            for feature, dim, prefix in ((STATE, e.state_dim, "state"), (ACTION, e.action_dim, "action")):
                shift, scale = normalizer.affine(feature)
                if shift.shape != (dim,):
                    raise LbmError(
                        f"Stats of {feature!r} for {e.name!r} have {shift.shape[0]} dims but the embodiment has "
                        f"{dim}. The stats belong to another dataset; recompute them."
                    )
                bufs[f"{prefix}_shift"][i, :dim] = torch.from_numpy(shift.astype(np.float32))
                bufs[f"{prefix}_scale"][i, :dim] = torch.from_numpy(scale.astype(np.float32))
            bufs["action_mask"][i, : e.action_dim] = 1.0
        for n, b in bufs.items():
            self.register_buffer(n, b)

        # Conditioning stack: per-embodiment state projection (padded dims meet zero rows), history
        # position, padding token, language token, embodiment token, optional camera tokens.
        self.state_w, self.state_b = _per_embodiment_linear(E, self.S, D)
        self.history_pos = nn.Parameter(torch.randn(H, D) * 0.02)
        self.state_pad_token = nn.Parameter(torch.randn(D) * 0.02)
        self.language_proj = nn.Linear(config.language_dim, D)
        self.embodiment_token = nn.Parameter(torch.randn(E, D) * 0.02)
        if config.cameras:
            self.image_encoder = ConvEncoder(config.cnn_widths, D, config.image_tokens)
            self.camera_token = nn.Parameter(torch.randn(len(config.cameras), D) * 0.02)
        self.expert = Transformer(config)

    # ---- the declared properties of the runtime contract ----
    @property
    def horizon(self) -> int:
        """T: actions per chunk."""
        return self.config.horizon

    @property
    def history(self) -> int:
        """H: observations per robot the policy conditions on."""
        return self.config.history

    @property
    def execute_steps(self) -> int | None:
        """Actions to execute per chunk by default (None: the whole chunk)."""
        return self.config.execute_steps

    def describe(self) -> dict[str, Any]:
        """Family, sizes, cameras and the instructions cached in the policy (their embeddings are known)."""
        c = self.config
        return {
            "family": c.family,
            "horizon": c.horizon,
            "history": c.history,
            "cameras": list(c.cameras),
            "image_size": c.image_size,
            "execute_steps": c.execute_steps,
            "instructions": sorted(self.instructions.table),
        }

    def head_parameter_names(self) -> list[str]:
        """Parameters trained in 'head_only' finetuning (everything outside the encoders and trunk)."""
        trunk = ("state_", "history_pos", "language_proj", "embodiment_token", "image_encoder", "camera_token", "expert.")
        return [n for n, _ in self.named_parameters() if not n.startswith(trunk)]

    # ---- batch preparation ----
    def embodiment_index(self, names: Sequence[str]) -> torch.Tensor:
        """Row of each embodiment name in the per-embodiment parameters and buffers: (B,) long."""
        idx = []
        for n in names:
            if n not in self.embodiments:
                raise LbmError(
                    f"Embodiment {n!r} is unknown to this policy (it knows {sorted(self.embodiments)}). Finetune "
                    f"the policy on data of {n!r} first."
                )
            idx.append(list(self.embodiments).index(n))
        return torch.tensor(idx, dtype=torch.long, device=self.state_shift.device)

    def prepare(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Normalize a collated batch: raw values in, model tensors out (all on the model's device)."""
        dev = self.state_shift.device
        e = self.embodiment_index(batch["embodiment"])
        state = _pad_last(batch[STATE].to(dev, torch.float32), self.S)  # (B, H, Smax)
        state = (state - self.state_shift[e, None]) / self.state_scale[e, None]
        # Dims beyond an embodiment's own state width stay exactly 0 (they meet zero weights anyway).
        out = {"embodiment": e, "state": torch.where(self._state_valid(e)[:, None], state, 0.0)}
        if STATE_PAD in batch:
            out["state_is_pad"] = batch[STATE_PAD].to(dev, torch.bool)
        else:
            out["state_is_pad"] = torch.zeros(state.shape[:2], dtype=torch.bool, device=dev)
        out["language"] = torch.from_numpy(self.instructions.lookup(list(batch["task"]))).to(dev)
        for cam in self.config.cameras:
            key = image_key(cam)
            if key not in batch:
                raise LbmError(
                    f"The policy looks at camera {cam!r} but the batch has no {key!r}. Generate data with "
                    f"--cameras {cam} or train a state-only policy."
                )
            out[key] = batch[key].to(dev)
        if ACTION in batch:
            action = _pad_last(batch[ACTION].to(dev, torch.float32), self.A)
            out["action"] = (action - self.action_shift[e, None]) / self.action_scale[e, None] * self.action_mask[e, None]
            pad = batch.get(ACTION_PAD)
            valid_t = ~pad.to(dev, torch.bool) if pad is not None else torch.ones(action.shape[:2], dtype=torch.bool, device=dev)
            out["action_weight"] = valid_t[..., None].float() * self.action_mask[e, None]  # (B, T, Amax)
        return out

    def _state_valid(self, e: torch.Tensor) -> torch.Tensor:
        dims = torch.tensor([emb.state_dim for emb in self.embodiments.values()], device=e.device)
        return torch.arange(self.S, device=e.device)[None] < dims[e][:, None]  # (B, Smax)

    def encode(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Conditioning tokens (B, C, D) from a prepared batch."""
        e = p["embodiment"]
        tok = torch.einsum("bhs,bsd->bhd", p["state"], self.state_w[e]) + self.state_b[e][:, None]
        tok = torch.where(p["state_is_pad"][..., None], self.state_pad_token, tok) + self.history_pos
        parts = [tok, self.language_proj(p["language"])[:, None], self.embodiment_token[e][:, None]]
        for c, cam in enumerate(self.config.cameras):
            img = p[image_key(cam)]  # (B, H, h, w, 3) uint8
            B, H = img.shape[:2]
            x = self._augment(img.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0)
            t = self.image_encoder((x - 0.5) / 0.25)  # (B*H, k, D)
            t = t.view(B, H, -1, t.shape[-1]) + self.history_pos[:, None] + self.camera_token[c]
            parts.append(t.flatten(1, 2))
        return torch.cat(parts, dim=1)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to ``image_size``; random crop in training, center crop otherwise."""
        size = self.config.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        c = max(8, round(size * self.config.crop_fraction))
        if c == size:
            return x
        if self.training:
            ox = torch.randint(0, size - c + 1, (x.shape[0],)).tolist()
            oy = torch.randint(0, size - c + 1, (x.shape[0],)).tolist()
            return torch.stack([x[i, :, oy[i] : oy[i] + c, ox[i] : ox[i] + c] for i in range(x.shape[0])])
        o = (size - c) // 2
        return x[:, :, o : o + c, o : o + c]

    # ---- training ----
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Same as :meth:`compute_loss` (DDP hooks run on ``forward``)."""
        return self.compute_loss(batch)

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """``(scalar loss, metrics)`` for a collated batch of raw windows (see lbm.data.collate_windows)."""
        if ACTION not in batch:
            raise LbmError("compute_loss needs actions in the batch (key 'action').")
        p = self.prepare(batch)
        loss, metrics = self._loss(p, self.encode(p))
        return loss, {"loss": float(loss.detach()), **metrics}

    # ---- sampling ----
    @torch.no_grad()
    def sample_actions(
        self, batch: dict[str, Any], noise: torch.Tensor | None = None, reference: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(normalized chunks (B, T, Amax), features (B, Da))`` for a collated observation batch.

        ``noise`` (B, T, Amax): the initial noise of flow / diffusion sampling (None: drawn from the
        global stream); the discrete family ignores it. ``features``: the action expert's final
        (normed) hidden states of the action tokens at its last pass (the last denoising step for
        flow/diffusion; averaged over decoding steps for discrete), averaged over the tokens.
        ``reference=True`` runs the plain loop (one full expert forward per step) instead of the
        cached fast path; the two agree (tests/test_policies.py) and benchmarks compare them.
        """
        p = self.prepare(batch)
        cond = self.encode(p)
        if noise is None:
            noise = torch.randn(cond.shape[0], self.config.horizon, self.A, device=cond.device)
        noise = noise.to(cond.device)
        return self._sample_reference(p, cond, noise) if reference else self._sample(p, cond, noise)

    def unnormalize(self, actions: torch.Tensor, embodiment: torch.Tensor) -> torch.Tensor:
        """(B, T, Amax) normalized -> raw units."""
        return actions * self.action_scale[embodiment, None] + self.action_shift[embodiment, None]

    def _loss(self, p, cond) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def _sample(self, p, cond, noise) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _sample_reference(self, p, cond, noise) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # ---- the runtime contract (lbm.policies.base.Policy) ----
    def reset(self, seed: int | None = None) -> ChunkState:
        """A fresh state for one robot's episode; ``seed`` fixes the episode's sampling noise."""
        return ChunkState(seed=None if seed is None else int(seed))

    @torch.inference_mode()
    def predict_chunk(
        self, observations: Sequence[Observation], states: Sequence[ChunkState], request: ChunkRequest = ChunkRequest()
    ) -> Chunk:
        """Actions (B, T, action_dim) float32 in embodiment units, clipped to the bounds, and each slot's next state.

        ``observations[i]`` is slot i's newest observation and ``states[i]`` its state (from
        :meth:`reset` at episode start, then from the previous call's ``Chunk.states``).
        """
        if len(observations) == 0:
            raise LbmError("predict_chunk needs at least one observation.")
        if len(states) != len(observations):
            raise LbmError(
                f"predict_chunk got {len(observations)} observations but {len(states)} states; pass one state per "
                "slot (policy.reset() at episode start)."
            )
        names = [self._check_observation(obs) for obs in observations]
        dims = {self.embodiments[n].action_dim for n in names}
        if len(dims) > 1:
            raise LbmError(
                f"One predict_chunk call mixes embodiments with different action sizes {sorted(dims)}; call once per embodiment."
            )
        if request.action_samples and (request.action_samples < 2 or self.family not in ("flow", "diffusion")):
            raise LbmError(
                f"action_samples={request.action_samples}: the variance of extra action samples needs at least "
                f"2 samples of a generative (flow/diffusion) policy; this one is {self.family!r}."
            )
        H = self.config.history
        new_states, windows, pads = [], [], []
        for obs, state in zip(observations, states):
            if not isinstance(state, ChunkState):
                raise LbmError(
                    f"predict_chunk got a state of type {type(state).__name__}; pass the states returned by this "
                    "policy's reset() and predict_chunk()."
                )
            history = (*state.history, obs)[-H:]
            new_states.append(ChunkState(history, state.seed, state.calls + 1))
            windows.append([history[0]] * (H - len(history)) + list(history))  # repeat the oldest, marked as padding
            pads.append([j < H - len(history) for j in range(H)])
        batch: dict[str, Any] = {
            STATE: torch.from_numpy(np.stack([np.stack([_pad_np(o.state, self.S) for o in w]) for w in windows])),
            STATE_PAD: torch.tensor(pads),
            "task": [o.instruction for o in observations],
            "embodiment": names,
        }
        for cam in self.config.cameras:
            batch[image_key(cam)] = torch.from_numpy(np.stack([np.stack([o.images[cam] for o in w]) for w in windows]))
        was_training = self.training
        if was_training:  # (toggling walks every module: skipped when already in eval mode)
            self.eval()
        try:
            p = self.prepare(batch)
            cond = self.encode(p)
            actions, features = self._sample(p, cond, self.initial_noise(states, 0, cond.device))
            variance = None
            if request.action_samples:
                variance = self._sample_variance(p, cond, states, request.action_samples)
        finally:
            if was_training:
                self.train()
        e = p["embodiment"]
        raw = self.unnormalize(actions.float(), e).cpu().numpy()
        emb = self.embodiments[names[0]]
        return Chunk(
            actions=emb.clip_actions(raw[..., : emb.action_dim]).astype(np.float32),
            states=tuple(new_states),
            features=features.float().cpu().numpy() if request.features else None,
            action_variance=variance,
        )

    def _check_observation(self, obs: Observation) -> str:
        name = obs.embodiment or (next(iter(self.embodiments)) if len(self.embodiments) == 1 else "")
        if name not in self.embodiments:
            raise LbmError(
                f"Observation embodiment {obs.embodiment!r} is unknown to this policy (it knows "
                f"{sorted(self.embodiments)}); set Observation.embodiment."
            )
        if obs.state.shape != (self.embodiments[name].state_dim,):
            raise LbmError(
                f"Observation state has shape {obs.state.shape} but embodiment {name!r} expects "
                f"({self.embodiments[name].state_dim},)."
            )
        for cam in self.config.cameras:
            if cam not in obs.images:
                raise LbmError(
                    f"The policy needs camera {cam!r} but the observation has {sorted(obs.images)}. Render that camera."
                )
        return name

    def initial_noise(self, states: Sequence[ChunkState], sample: int = 0, device: torch.device | None = None) -> torch.Tensor:
        """The initial sampling noise (B, T, Amax) ``predict_chunk`` draws for these states: per slot from its
        episode seed and chunk count (``sample`` > 0: the extra action samples), or from the global stream if
        the slot is unseeded. Reproduces a chunk with ``sample_actions(batch, noise)``."""
        shape = (self.config.horizon, self.A)
        rows = []
        for s in states:
            if s.seed is None:
                rows.append(torch.randn(shape))
            else:
                g = torch.Generator().manual_seed(noise_seed(s.seed, s.calls, sample))
                rows.append(torch.randn(shape, generator=g))
        return torch.stack(rows).to(device or self.state_shift.device)

    def _sample_variance(
        self, p: dict[str, torch.Tensor], cond: torch.Tensor, states: Sequence[ChunkState], k: int
    ) -> np.ndarray:
        """(B,) variance across ``k`` extra chunks per slot (normalized units, mean over steps and valid dims)."""
        B = cond.shape[0]
        noise = torch.stack([self.initial_noise(states, j + 1, cond.device) for j in range(k)], 1).flatten(0, 1)  # (B*k, T, A)
        e = p["embodiment"]
        extra, _ = self._sample({**p, "embodiment": e.repeat_interleave(k)}, cond.repeat_interleave(k, 0), noise)
        a = extra.float().view(B, k, *extra.shape[1:])
        mask = self.action_mask[e][:, None]  # (B, 1, Amax)
        var = a.var(1, unbiased=True)  # (B, T, Amax)
        return ((var * mask).sum((1, 2)) / (mask.sum((1, 2)) * var.shape[1])).cpu().numpy().astype(np.float64)


def embodiment_normalizer(
    embodiment: Embodiment,
    stats: Mapping[str, Mapping[str, FeatureStats]],
    config: PolicyConfig,
    marked: Mapping[str, Mapping[str, tuple[int, ...]]] | None = None,
) -> Normalizer:
    """The :class:`lbm.data.Normalizer` of one embodiment's state and actions under ``config``.

    Exactly constant dimensions (the stats say so) and the dimensions ``config.constant_dims`` marks
    pass through; a nearly constant, NaN or inf dimension is a :class:`DegenerateStatsError` naming
    the feature, the embodiment and the dimension, with the flag that marks it.
    """
    name = embodiment.name
    if name not in stats:
        raise LbmError(f"No normalization stats for embodiment {name!r} (have {sorted(stats)}). Recompute the dataset stats.")
    modes = {STATE: config.state_norm, ACTION: config.action_norm}
    for feature in modes:
        if feature not in stats[name]:
            raise LbmError(f"Stats of embodiment {name!r} lack feature {feature!r}. Recompute the dataset stats.")
    marked = constant_dims_by_embodiment(config.constant_dims) if marked is None else marked
    mine = marked.get(name, marked.get(ALL_EMBODIMENTS, {}))
    constant = {f: tuple(sorted(set(stats[name][f].constant_dims) | set(mine.get(f, ())))) for f in modes}
    try:
        return Normalizer({f: stats[name][f] for f in modes}, modes, constant, min_spread={STATE: config.state_min_spread})
    except DegenerateStatsError as error:
        feature, dims = error.feature, error.dims
        flag = f"--policy.constant-dims {name}/{feature}:{','.join(map(str, dims))}"
        raise DegenerateStatsError(
            f"Embodiment {name!r}: {error} If these dimensions carry no information (e.g. the orientation of an object "
            f"that never turns, constant up to float noise), mark them constant: {flag}.",
            feature,
            dims,
        ) from None


def pool_features(h: torch.Tensor | None) -> torch.Tensor:
    """Features (B, Da) of the last expert pass: its action-token outputs (B, N, Da), averaged over the tokens."""
    if h is None:
        raise LbmError("No sampling step ran; flow_steps and diffusion_sample_steps must be at least 1.")
    return h.float().mean(1)


def _pad_last(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.shape[-1] == width:
        return x
    if x.shape[-1] > width:
        raise LbmError(
            f"Batch feature width {x.shape[-1]} exceeds the policy's {width}; the data has an embodiment the "
            "policy was not built for."
        )
    return F.pad(x, (0, width - x.shape[-1]))


def _pad_np(x: np.ndarray, width: int) -> np.ndarray:
    return np.pad(x.astype(np.float32), (0, width - x.shape[0]))
