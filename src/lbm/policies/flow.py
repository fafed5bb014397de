"""Flow-matching action expert (the pi0 recipe): rectified flow, Euler sampling.

Convention (pi0): ``x_t = t * noise + (1 - t) * actions``, the network predicts the velocity
``u = noise - actions``; sampling integrates from t = 1 (noise) to t = 0 in ``flow_steps`` Euler steps.
"""

from __future__ import annotations

import torch
from torch import nn

from lbm.policies.common import ChunkPolicy, _per_embodiment_linear, pool_features, sinusoidal


class ContinuousHead(nn.Module):
    """Action tokens in (per-embodiment projection + chunk position + noise level), velocity out.

    The layout is pi0's: the observation tokens attend only to each other, the action tokens to the
    observations and to each other. The noise level is added to every action token rather than
    given a token of its own, so a denoising step runs the action stream on exactly ``horizon``
    tokens against the cached observation keys/values.
    """

    def __init__(self, E: int, A: int, D: int, T: int):
        super().__init__()
        self.action_in_w, self.action_in_b = _per_embodiment_linear(E, A, D)
        self.action_out_w, self.action_out_b = _per_embodiment_linear(E, D, A)
        nn.init.zeros_(self.action_out_w)  # start by predicting 0: stable first steps
        self.chunk_pos = nn.Parameter(torch.randn(T, D) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, D))
        self.D = D

    def forward(self, expert, cond, x, level, e):
        """``x`` (B, T, Amax) noisy actions, ``level`` (B,) in [0, 1000] -> (prediction (B, T, Amax), features (B, T, Da))."""
        t = self.time_mlp(sinusoidal(level, self.D).to(cond.dtype))[:, None]
        a = torch.einsum("bta,bad->btd", x, self.action_in_w[e]) + self.action_in_b[e][:, None] + self.chunk_pos + t
        h = expert(cond, a)
        return torch.einsum("btd,bda->bta", h, self.action_out_w[e]) + self.action_out_b[e][:, None], h

    def sampler(self, expert, cond, levels, e):
        """``predict(x, i) -> (prediction, features)``: :meth:`forward` at noise level ``levels[i]`` for a sampling loop.

        Everything that does not depend on the noisy actions is computed once per chunk: the keys and
        values of the observation prefix (it never attends to the actions), the per-embodiment
        projections and the noise-level embeddings of every step (one batched MLP call).
        """
        T = self.chunk_pos.shape[0]
        w_in, b_in = self.action_in_w[e], self.action_in_b[e][:, None] + self.chunk_pos  # (B, Amax, Da), (B, T, Da)
        w_out, b_out = self.action_out_w[e], self.action_out_b[e][:, None]
        times = self.time_mlp(sinusoidal(levels, self.D).to(cond.dtype))[:, None]  # (steps, 1, Da)
        cache = expert.prefix_cache(cond, T)

        def predict(x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            a = torch.baddbmm(b_in + times[i], x.to(w_in.dtype), w_in)
            if cache is None:  # training mode or unmerged adapters: the plain forward
                h = expert(cond, a)
            else:
                h = expert.infer(a, cache, advance=False)  # (B, T, Da)
            return torch.baddbmm(b_out, h, w_out), h

        return predict


class FlowPolicy(ChunkPolicy):
    """Rectified-flow action chunks conditioned on the shared observation tokens."""

    family = "flow"

    def __init__(self, config, embodiments, stats, instructions=None):
        super().__init__(config, embodiments, stats, instructions)
        self.head = ContinuousHead(len(self.embodiments), self.A, config.action_d_model, config.horizon)

    def _loss(self, p, cond):
        a, w, e = p["action"], p["action_weight"], p["embodiment"]
        B = a.shape[0]
        # pi0 samples t from Beta(1.5, 1): more weight on noisy levels, where sampling starts.
        t = torch.distributions.Beta(1.5, 1.0).sample((B,)).to(a.device) * 0.999 + 0.001
        noise = torch.randn_like(a)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
        pred, _ = self.head(self.expert, cond, x_t, t * 1000, e)
        err = ((pred.float() - (noise - a)) ** 2 * w).sum() / w.sum().clamp_min(1)
        return err, {}

    def _sample(self, p, cond, noise):
        """Euler integration through :meth:`ContinuousHead.sampler` (same math as :meth:`_sample_reference`)."""
        e = p["embodiment"]
        N = self.config.flow_steps
        levels = torch.tensor([1.0 - i / N for i in range(N)], device=cond.device) * 1000
        velocity = self.head.sampler(self.expert, cond, levels, e)
        x = noise
        h: torch.Tensor | None = None
        for i in range(N):
            v, h = velocity(x, i)
            x = x - v.float() / N
        return x * self.action_mask[e, None], pool_features(h)

    def _sample_reference(self, p, cond, noise):
        """The plain sampling loop (one full expert forward per step); the fast path must equal it."""
        e = p["embodiment"]
        B, N = cond.shape[0], self.config.flow_steps
        x = noise
        h: torch.Tensor | None = None
        for i in range(N):
            t = torch.full((B,), 1.0 - i / N, device=cond.device)
            v, h = self.head(self.expert, cond, x, t * 1000, e)
            x = x - v.float() / N
        return x * self.action_mask[e, None], pool_features(h)
