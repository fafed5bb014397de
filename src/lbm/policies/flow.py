"""Flow-matching action expert (the pi0 recipe): rectified flow, Euler sampling.

Convention (pi0): ``x_t = t * noise + (1 - t) * actions``, the network predicts the velocity
``u = noise - actions``; sampling integrates from t = 1 (noise) to t = 0 in ``flow_steps`` Euler steps.
"""

from __future__ import annotations

import torch
from torch import nn

from lbm.policies.common import ChunkPolicy, _per_embodiment_linear, sinusoidal


class ContinuousHead(nn.Module):
    """Action tokens in (per-embodiment projection + chunk position), a noise-level token, velocity out."""

    def __init__(self, E: int, A: int, D: int, T: int):
        super().__init__()
        self.action_in_w, self.action_in_b = _per_embodiment_linear(E, A, D)
        self.action_out_w, self.action_out_b = _per_embodiment_linear(E, D, A)
        nn.init.zeros_(self.action_out_w)  # start by predicting 0: stable first steps
        self.chunk_pos = nn.Parameter(torch.randn(T, D) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, D))
        self.D = D

    def forward(self, expert, cond, x, level, e):
        """``x`` (B, T, Amax) noisy actions, ``level`` (B,) in [0, 1000] -> prediction (B, T, Amax)."""
        a = torch.einsum("bta,bad->btd", x, self.action_in_w[e]) + self.action_in_b[e][:, None] + self.chunk_pos
        t = self.time_mlp(sinusoidal(level, self.D).to(a.dtype))[:, None]
        h = expert(torch.cat([cond, t, a], dim=1))[:, cond.shape[1] + 1 :]
        return torch.einsum("btd,bda->bta", h, self.action_out_w[e]) + self.action_out_b[e][:, None]

    def sampler(self, policy, cond, levels, e):
        """``predict(x, i)``: :meth:`forward` at noise level ``levels[i]`` for a whole sampling loop.

        Everything that does not depend on the noisy actions is computed once per chunk: the
        per-embodiment projections, the noise-level tokens of every step (one batched MLP call), and
        the token buffer holding the conditioning tokens. The conditioning tokens still go through the
        expert at every step: attention is bidirectional, so their hidden states depend on the action
        tokens and cannot be cached without changing the model. With ``policy.keep_features`` it sets
        ``policy.last_features`` at every step (the last one remains), as the reference hook does.
        """
        expert = policy.expert
        B, C, D = cond.shape
        w_in, b_in = self.action_in_w[e], self.action_in_b[e][:, None] + self.chunk_pos  # (B, Amax, D), (B, T, D)
        w_out, b_out = self.action_out_w[e], self.action_out_b[e][:, None]
        times = self.time_mlp(sinusoidal(levels, self.D).to(cond.dtype))  # (steps, D)
        tokens = torch.cat([cond, cond.new_zeros(B, 1 + b_in.shape[1], D)], dim=1)
        keep = bool(getattr(policy, "keep_features", False))

        def predict(x: torch.Tensor, i: int) -> torch.Tensor:
            tokens[:, C] = times[i]
            tokens[:, C + 1 :] = torch.baddbmm(b_in, x.to(w_in.dtype), w_in)
            h = expert.infer(tokens, keep=C)  # (B, 1 + T, D): the noise-level token and the actions
            if keep:
                policy.last_features = h.float().mean(1)
            return torch.baddbmm(b_out, h[:, 1:], w_out)

        return predict


class FlowPolicy(ChunkPolicy):
    """Rectified-flow action chunks conditioned on the shared observation tokens."""

    family = "flow"

    def __init__(self, config, embodiments, stats, instructions=None):
        super().__init__(config, embodiments, stats, instructions)
        self.head = ContinuousHead(len(self.embodiments), self.A, config.d_model, config.horizon)

    def _loss(self, p, cond):
        a, w, e = p["action"], p["action_weight"], p["embodiment"]
        B = a.shape[0]
        # pi0 samples t from Beta(1.5, 1): more weight on noisy levels, where sampling starts.
        t = torch.distributions.Beta(1.5, 1.0).sample((B,)).to(a.device) * 0.999 + 0.001
        noise = torch.randn_like(a)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
        pred = self.head(self.expert, cond, x_t, t * 1000, e)
        err = ((pred.float() - (noise - a)) ** 2 * w).sum() / w.sum().clamp_min(1)
        return err, {}

    def _sample(self, p, cond):
        """Euler integration through :meth:`ContinuousHead.sampler` (same math as :meth:`_sample_reference`)."""
        e = p["embodiment"]
        B, N = cond.shape[0], self.config.flow_steps
        x = torch.randn(B, self.config.horizon, self.A, device=cond.device)
        levels = torch.tensor([1.0 - i / N for i in range(N)], device=cond.device) * 1000
        velocity = self.head.sampler(self, cond, levels, e)
        for i in range(N):
            x = x - velocity(x, i).float() / N
        return x * self.action_mask[e, None]

    def _sample_reference(self, p, cond):
        """The plain sampling loop (one full expert forward per step); the fast path must equal it."""
        e = p["embodiment"]
        B, N = cond.shape[0], self.config.flow_steps
        x = torch.randn(B, self.config.horizon, self.A, device=cond.device)
        for i in range(N):
            t = torch.full((B,), 1.0 - i / N, device=cond.device)
            x = x - self.head(self.expert, cond, x, t * 1000, e).float() / N
        return x * self.action_mask[e, None]
