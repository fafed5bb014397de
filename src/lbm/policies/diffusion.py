"""Diffusion action expert (Diffusion Policy / TRI LBM recipe): DDPM training, DDIM sampling.

Same transformer and action head as flow matching; the noise level is the DDPM step. The network
predicts the noise (``epsilon``) or the clean chunk (``sample``).
"""

from __future__ import annotations

import math

import torch

from lbm.policies.common import ChunkPolicy, pool_features
from lbm.policies.flow import ContinuousHead


def cosine_alphas_cumprod(steps: int) -> torch.Tensor:
    """``alpha_bar`` (steps,) of the squared-cosine schedule (Nichol & Dhariwal), betas capped at 0.999."""
    f = lambda t: math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


class DiffusionPolicy(ChunkPolicy):
    """DDPM-trained, DDIM-sampled action chunks."""

    family = "diffusion"
    alphas_cumprod: torch.Tensor
    """(diffusion_train_steps,) cumulative products of the noise schedule (a buffer)."""

    def __init__(self, config, embodiments, stats, instructions=None):
        super().__init__(config, embodiments, stats, instructions)
        self.head = ContinuousHead(len(self.embodiments), self.A, config.action_d_model, config.horizon)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(config.diffusion_train_steps), persistent=False)

    def _loss(self, p, cond):
        a, w, e = p["action"], p["action_weight"], p["embodiment"]
        B = a.shape[0]
        k = torch.randint(0, self.config.diffusion_train_steps, (B,), device=a.device)
        ab = self.alphas_cumprod[k][:, None, None]
        noise = torch.randn_like(a)
        x_k = ab.sqrt() * a + (1 - ab).sqrt() * noise
        pred = self.head(self.expert, cond, x_k, k.float(), e)[0].float()
        target = noise if self.config.diffusion_prediction == "epsilon" else a
        return ((pred - target) ** 2 * w).sum() / w.sum().clamp_min(1), {}

    def _sample(self, p, cond, noise):
        """DDIM through :meth:`ContinuousHead.sampler` (same math as :meth:`_sample_reference`)."""
        return self._ddim(p, cond, noise, fast=True)

    def _sample_reference(self, p, cond, noise):
        """The plain DDIM loop (one full expert forward per step); the fast path must equal it."""
        return self._ddim(p, cond, noise, fast=False)

    def _ddim(self, p, cond, noise, fast):
        e = p["embodiment"]
        cfg = self.config
        B = cond.shape[0]
        x = noise
        h: torch.Tensor | None = None
        steps = torch.linspace(cfg.diffusion_train_steps - 1, 0, cfg.diffusion_sample_steps).round().long().tolist()
        predict = (
            self.head.sampler(self.expert, cond, torch.tensor(steps, dtype=torch.float32, device=cond.device), e)
            if fast
            else None
        )
        for i, k in enumerate(steps):
            ab = self.alphas_cumprod[k]
            ab_prev = self.alphas_cumprod[steps[i + 1]] if i + 1 < len(steps) else torch.tensor(1.0, device=x.device)
            if predict is not None:
                pred, h = predict(x, i)
            else:
                pred, h = self.head(self.expert, cond, x, torch.full((B,), float(k), device=x.device), e)
            pred = pred.float()
            if cfg.diffusion_prediction == "epsilon":
                x0 = (x - (1 - ab).sqrt() * pred) / ab.sqrt()
            else:
                x0 = pred
            x0 = x0.clamp(-cfg.diffusion_clip_sample, cfg.diffusion_clip_sample)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps  # DDIM, eta = 0 (deterministic)
        return x * self.action_mask[e, None], pool_features(h)
