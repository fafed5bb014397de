"""Discrete-token baseline (RT-2 / OpenVLA; parallel decoding as in OpenVLA-OFT).

Each normalized action dimension is cut into ``discrete_bins`` uniform bins over [-1, 1], which is
q01..q99 of the data under the default quantile normalization (values outside are clipped, as
OpenVLA does). Tokens are ordered time-major ``(t, dim)``; autoregressive decoding predicts token i
from the observation and tokens < i (greedy at inference), parallel decoding predicts all at once.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from lbm.policies.common import ChunkPolicy, pool_features


class DiscretePolicy(ChunkPolicy):
    """Cross-entropy over binned action tokens."""

    family = "discrete"

    def __init__(self, config, embodiments, stats, instructions=None):
        super().__init__(config, embodiments, stats, instructions)
        D, N, K = config.action_d_model, config.horizon * self.A, config.discrete_bins
        self.head = nn.ModuleDict(
            {
                "token": nn.Embedding(K + 1, D),  # index K = begin-of-chunk / query placeholder
                "position": nn.Embedding(N, D),
                "logits": nn.Linear(D, K),
            }
        )
        self.position_embedding.weight.data.mul_(0.02)
        self.autoregressive = config.discrete_decoding == "autoregressive"

    # Typed views of the head's modules (kept in one ModuleDict: its names are the checkpoint's keys).
    @property
    def token_embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.head["token"])

    @property
    def position_embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.head["position"])

    @property
    def logit_layer(self) -> nn.Linear:
        return cast(nn.Linear, self.head["logits"])

    def tokenize(self, a: torch.Tensor) -> torch.Tensor:
        """Normalized actions (B, T, Amax) -> bin indices (B, T*Amax)."""
        K = self.config.discrete_bins
        return ((a.clamp(-1, 1) + 1) / 2 * K).long().clamp(0, K - 1).flatten(1)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bin indices (B, T*Amax) -> bin centres (B, T, Amax)."""
        K = self.config.discrete_bins
        return (-1 + (tokens.float() + 0.5) * 2 / K).view(tokens.shape[0], self.config.horizon, self.A)

    def _logits(self, cond: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs`` (B, n) token ids -> (logits (B, n, K), features (B, n, Da)) for positions 0..n-1."""
        n = inputs.shape[1]
        x = self.token_embedding(inputs) + self.position_embedding.weight[:n]
        # Observation tokens see each other; action token i sees all of them and tokens <= i.
        h = self.expert(cond, x.to(cond.dtype), causal=self.autoregressive)
        return self.logit_layer(h), h

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        K = self.config.discrete_bins
        placeholder = torch.full_like(tokens[:, :1], K)
        if self.autoregressive:
            return torch.cat([placeholder, tokens[:, :-1]], dim=1)  # teacher forcing, shifted by one
        return placeholder.expand_as(tokens)

    def _loss(self, p, cond):
        tokens = self.tokenize(p["action"])
        w = p["action_weight"].flatten(1)
        logits = self._logits(cond, self._inputs(tokens))[0].float()
        ce = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
        loss = (ce * w).sum() / w.sum().clamp_min(1)
        acc = ((logits.argmax(-1) == tokens).float() * w).sum() / w.sum().clamp_min(1)
        return loss, {"token_accuracy": float(acc)}

    def _sample(self, p, cond, noise):
        """Greedy decoding with the expert's key/value cache (same tokens as :meth:`_sample_reference`).

        The observation tokens never attend to action tokens and action token i only to tokens <= i,
        so the keys/values of earlier tokens do not change as decoding proceeds: each step runs the
        expert on one new token per row instead of on the whole prefix. Decoding is deterministic:
        ``noise`` is unused. Features: the expert's outputs averaged over the decoded tokens.
        """
        e = p["embodiment"]
        B = cond.shape[0]
        N, K = self.config.horizon * self.A, self.config.discrete_bins
        token, position, logits = self.token_embedding, self.position_embedding.weight, self.logit_layer
        cache = self.expert.prefix_cache(cond, N)  # observation tokens: keys/values only
        if cache is None:  # training mode or unmerged adapters
            return self._sample_reference(p, cond, noise)
        if not self.autoregressive:
            x = (token(torch.full((B, N), K, device=cond.device)) + position[:N]).to(cond.dtype)
            h = self.expert.infer(x, cache)  # (B, N, Da)
            return self.detokenize(logits(h).argmax(-1)) * self.action_mask[e, None], h.float().mean(1)
        tokens = torch.empty(B, N, dtype=torch.long, device=cond.device)
        prev = torch.full((B,), K, dtype=torch.long, device=cond.device)
        feature_sum = torch.zeros(B, self.config.action_d_model, device=cond.device)
        for i in range(N):
            x = (token(prev) + position[i]).to(cond.dtype)[:, None]  # (B, 1, Da)
            h = self.expert.infer(x, cache)[:, 0]
            feature_sum += h.float()
            prev = logits(h).argmax(-1)
            tokens[:, i] = prev
        return self.detokenize(tokens) * self.action_mask[e, None], feature_sum / N

    def _sample_reference(self, p, cond, noise):
        """Greedy decoding by full expert passes over the growing prefix; the fast path must equal it."""
        e = p["embodiment"]
        B, N, K = cond.shape[0], self.config.horizon * self.A, self.config.discrete_bins
        if not self.autoregressive:
            lg, h = self._logits(cond, torch.full((B, N), K, device=cond.device))
            return self.detokenize(lg.argmax(-1)) * self.action_mask[e, None], h.float().mean(1)
        tokens = torch.full((B, 1), K, device=cond.device, dtype=torch.long)
        h: torch.Tensor | None = None
        for _ in range(N):
            lg, h = self._logits(cond, tokens)
            tokens = torch.cat([tokens, lg[:, -1].argmax(-1, keepdim=True)], dim=1)
        # With causal attention, the last pass's outputs at positions 0..N-1 are those of every decoding step.
        return self.detokenize(tokens[:, 1:]) * self.action_mask[e, None], pool_features(None if h is None else h[:, :N])
