"""Discrete-token baseline (RT-2 / OpenVLA; parallel decoding as in OpenVLA-OFT).

Each normalized action dimension is cut into ``discrete_bins`` uniform bins over [-1, 1], which is
q01..q99 of the data under the default quantile normalization (values outside are clipped, as
OpenVLA does). Tokens are ordered time-major ``(t, dim)``; autoregressive decoding predicts token i
from the observation and tokens < i (greedy at inference), parallel decoding predicts all at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lbm.policies.common import ChunkPolicy


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
        self.head["position"].weight.data.mul_(0.02)
        self.autoregressive = config.discrete_decoding == "autoregressive"

    def tokenize(self, a: torch.Tensor) -> torch.Tensor:
        """Normalized actions (B, T, Amax) -> bin indices (B, T*Amax)."""
        K = self.config.discrete_bins
        return ((a.clamp(-1, 1) + 1) / 2 * K).long().clamp(0, K - 1).flatten(1)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bin indices (B, T*Amax) -> bin centres (B, T, Amax)."""
        K = self.config.discrete_bins
        return (-1 + (tokens.float() + 0.5) * 2 / K).view(tokens.shape[0], self.config.horizon, self.A)

    def _logits(self, cond: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` (B, n) token ids -> logits (B, n, K) for positions 0..n-1."""
        n = inputs.shape[1]
        x = self.head["token"](inputs) + self.head["position"].weight[:n]
        # Observation tokens see each other; action token i sees all of them and tokens <= i.
        return self.head["logits"](self.expert(cond, x.to(cond.dtype), causal=self.autoregressive))

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        K = self.config.discrete_bins
        placeholder = torch.full_like(tokens[:, :1], K)
        if self.autoregressive:
            return torch.cat([placeholder, tokens[:, :-1]], dim=1)  # teacher forcing, shifted by one
        return placeholder.expand_as(tokens)

    def _loss(self, p, cond):
        tokens = self.tokenize(p["action"])
        w = p["action_weight"].flatten(1)
        logits = self._logits(cond, self._inputs(tokens)).float()
        ce = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
        loss = (ce * w).sum() / w.sum().clamp_min(1)
        acc = ((logits.argmax(-1) == tokens).float() * w).sum() / w.sum().clamp_min(1)
        return loss, {"token_accuracy": float(acc)}

    def _sample(self, p, cond):
        """Greedy decoding with the expert's key/value cache (same tokens as :meth:`_sample_reference`).

        The observation tokens never attend to action tokens and action token i only to tokens <= i,
        so the keys/values of earlier tokens do not change as decoding proceeds: each step runs the
        expert on one new token per row instead of on the whole prefix.
        """
        e = p["embodiment"]
        B, C, D = cond.shape
        N, K = self.config.horizon * self.A, self.config.discrete_bins
        keep = bool(getattr(self, "keep_features", False))
        token, position, logits = self.head["token"], self.head["position"].weight, self.head["logits"]
        cache = self.expert.prefix_cache(cond, N)  # observation tokens: keys/values only
        if cache is None:  # training mode or unmerged adapters
            return self._sample_reference(p, cond)
        if not self.autoregressive:
            x = (token(torch.full((B, N), K, device=cond.device)) + position[:N]).to(cond.dtype)
            h = self.expert.infer(x, cache)  # (B, N, Da)
            if keep:
                self.last_features = h.float().mean(1)
            return self.detokenize(logits(h).argmax(-1)) * self.action_mask[e, None]
        tokens = torch.empty(B, N, dtype=torch.long, device=cond.device)
        prev = torch.full((B,), K, dtype=torch.long, device=cond.device)
        feats = []
        for i in range(N):
            x = (token(prev) + position[i]).to(cond.dtype)[:, None]  # (B, 1, Da)
            h = self.expert.infer(x, cache)[:, 0]
            if keep:
                feats.append(h)
            prev = logits(h).argmax(-1)
            tokens[:, i] = prev
        if keep:
            self.last_features = torch.stack(feats, 1).float().mean(1)
        return self.detokenize(tokens) * self.action_mask[e, None]

    def _sample_reference(self, p, cond):
        """Greedy decoding by full expert passes over the growing prefix; the fast path must equal it."""
        e = p["embodiment"]
        B, N, K = cond.shape[0], self.config.horizon * self.A, self.config.discrete_bins
        if not self.autoregressive:
            tokens = self._logits(cond, torch.full((B, N), K, device=cond.device)).argmax(-1)
        else:
            tokens = torch.full((B, 1), K, device=cond.device, dtype=torch.long)
            for _ in range(N):
                nxt = self._logits(cond, tokens)[:, -1].argmax(-1, keepdim=True)
                tokens = torch.cat([tokens, nxt], dim=1)
            tokens = tokens[:, 1:]
        return self.detokenize(tokens) * self.action_mask[e, None]
