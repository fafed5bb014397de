"""Failure detection with calibrated alerts, in the spirit of SAFE (Gu et al., NeurIPS 2025).

Reimplemented from the paper's description (SAFE's repository has no licence; nothing is copied).

Inputs are per-rollout sequences of policy features ``(T_i, D)`` with a success label. Pieces:

- :func:`cut_to_shortest_success` — guard against the length leak: failures run to the time limit
  while successes stop early, so every rollout is cut at the shortest successful length of its task
  before anything is scored (a detector could otherwise just count steps).
- Detectors producing a failure score per step ``(T,)``: :class:`MLPDetector` (SAFE-MLP: a per-step
  MLP whose sigmoid outputs are accumulated over steps), :class:`LSTMDetector` (SAFE-LSTM),
  and baselines :class:`MahalanobisDetector`, :class:`KNNDetector` (distance to successful
  training features), :class:`TimeoutDetector` (the step index) and :class:`ActionVarianceDetector`
  (accumulated variance of K action chunks sampled for the same observation; flow/diffusion).
- :class:`ConformalBand` — a time-varying alert threshold by split conformal prediction on
  successful rollouts: per-step centre and scale from one half, the finite-sample-corrected
  ``ceil((n + 1)(1 - alpha))``-th order statistic of the normalized max-over-time scores of the
  other half. For a new successful rollout exchangeable with them, P(alarm) <= alpha.
- :func:`evaluate_detector` — ROC-AUC of the max-so-far score, false-alarm rate at alpha with a
  Clopper-Pearson interval, detection rate, and detection lead time.

Policy features are what ``predict_chunk`` returns when a caller requests them
(:class:`lbm.policies.base.ChunkRequest`): the action expert's final hidden states at the last
denoising step, pooled over the action tokens, at every chunk, and optionally the variance of extra
action samples; ``lbm eval --features`` stores them per step (:mod:`lbm.safety.monitor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lbm.errors import LbmError
from lbm.stats import proportion_interval

# ---- data preparation -----------------------------------------------------------------------------


def cut_to_shortest_success(features: Sequence[np.ndarray], success: Sequence[bool], tasks: Sequence[str]) -> list[np.ndarray]:
    """Cut each ``(T_i, D)`` sequence at the shortest successful length of its task.

    Tasks without a successful rollout use the shortest successful length over all tasks. Raises
    :class:`LbmError` when no rollout succeeded (there is then no length to cut at).
    """
    _check_lengths(features, success, tasks)
    lengths = [len(f) for f in features]
    ok = [n for n, s in zip(lengths, success) if s]
    if not ok:
        raise LbmError(
            "No successful rollout: the length-leak cut needs at least one success. Collect rollouts of a "
            "policy that succeeds sometimes."
        )
    per_task: dict[str, int] = {}
    for n, s, t in zip(lengths, success, tasks):
        if s:
            per_task[t] = min(per_task.get(t, n), n)
    fallback = min(ok)
    return [np.asarray(f)[: per_task.get(t, fallback)] for f, t in zip(features, tasks)]


def _check_lengths(*arrays) -> None:
    n = {len(a) for a in arrays}
    if len(n) != 1 or 0 in n:
        raise LbmError(f"Rollout lists must be non-empty and of equal length; got lengths {sorted(n)}.")


# ---- detectors ----------------------------------------------------------------------------------


class TimeoutDetector:
    """Baseline: the score is the step index (alarms when a rollout runs long)."""

    def fit(self, features, success) -> TimeoutDetector:
        return self

    def score(self, seq: np.ndarray) -> np.ndarray:
        """``(T,)`` scores."""
        return np.arange(1, len(seq) + 1, dtype=np.float64)


class ActionVarianceDetector:
    """Baseline for generative policies: accumulated action-sample variance.

    Input per step is the variance across K action chunks sampled for the same observation (column
    0 of a ``(T, 1)`` array or a ``(T,)`` array; :class:`FeatureRecorder` with ``action_samples``);
    the score is its running sum, accumulated like the SAFE-MLP score (uncertain policies fail more).
    """

    def fit(self, features, success) -> ActionVarianceDetector:
        return self

    def score(self, seq: np.ndarray) -> np.ndarray:
        """``(T,)`` running sum of the per-step action-sample variance."""
        x = np.asarray(seq, np.float64)
        if x.ndim == 2:
            x = x[:, 0]
        if x.ndim != 1 or not np.all(np.isfinite(x)):
            raise LbmError(f"Action-variance scores need a finite (T,) or (T, 1) sequence; got shape {np.shape(seq)}.")
        return np.cumsum(x)


class MahalanobisDetector:
    """Baseline: Mahalanobis distance of each step's features to those of successful training rollouts."""

    def fit(self, features, success) -> MahalanobisDetector:
        x = np.concatenate([f for f, s in zip(features, success) if s]).astype(np.float64)
        self.mean = x.mean(0)
        cov = np.cov(x, rowvar=False) + 1e-3 * np.eye(x.shape[1])  # ridge: features are often low-rank
        self.precision = np.linalg.inv(cov)
        return self

    def score(self, seq: np.ndarray) -> np.ndarray:
        d = np.asarray(seq, np.float64) - self.mean
        return np.sqrt(np.einsum("td,de,te->t", d, self.precision, d))


class KNNDetector:
    """Baseline: mean cosine distance to the k nearest step features of successful training rollouts."""

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def fit(self, features, success) -> KNNDetector:
        x = np.concatenate([f for f, s in zip(features, success) if s]).astype(np.float32)
        self.bank = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
        return self

    def score(self, seq: np.ndarray) -> np.ndarray:
        q = np.asarray(seq, np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-8)
        sim = q @ self.bank.T
        k = min(self.k, sim.shape[1])
        top = -np.partition(-sim, k - 1, axis=1)[:, :k]
        return (1.0 - top.mean(1)).astype(np.float64)


@dataclass(frozen=True)
class DetectorConfig:
    """Training settings of the learned (SAFE-style) detectors."""

    hidden: int = 64
    """Width of the MLP hidden layer / LSTM state."""
    epochs: int = 60
    """Passes over the training rollouts."""
    lr: float = 3e-3
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """Adam weight decay."""
    seed: int = 0
    """Seed of initialization and shuffling."""


class _TorchDetector:
    """Shared training loop: BCE between the per-step score and the rollout's failure label, at every step."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()

    def build(self, d: int):
        raise NotImplementedError

    def _forward(self, x):  # (B, T, D) -> (B, T) probabilities
        raise NotImplementedError

    def fit(self, features: Sequence[np.ndarray], success: Sequence[bool]):
        """Train on rollouts ``(T_i, D)`` (already length-cut) labelled by success."""
        import torch

        _check_lengths(features, success)
        if all(success) or not any(success):
            raise LbmError("Training a failure detector needs both successful and failed rollouts; got only one kind.")
        c = self.config
        torch.manual_seed(c.seed)
        x = [torch.as_tensor(np.asarray(f, np.float32)) for f in features]
        allx = torch.cat(x)
        self.mu, self.sd = allx.mean(0), allx.std(0).clamp_min(1e-6)  # feature standardization travels with the model
        self.net = self.build(allx.shape[1])
        opt = torch.optim.Adam(self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        y = torch.tensor([0.0 if s else 1.0 for s in success])
        pos = float(y.mean())
        w = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos))  # balance classes
        T = max(len(f) for f in x)
        pad = torch.zeros(len(x), T, allx.shape[1])
        mask = torch.zeros(len(x), T, dtype=torch.bool)
        for i, f in enumerate(x):
            pad[i, : len(f)], mask[i, : len(f)] = (f - self.mu) / self.sd, True
        g = torch.Generator().manual_seed(c.seed)
        for _ in range(c.epochs):
            for idx in torch.randperm(len(x), generator=g).split(32):
                p = self._forward(pad[idx]).clamp(1e-6, 1 - 1e-6)
                yy = y[idx, None].expand_as(p)
                loss = -(yy * p.log() + (1 - yy) * (1 - p).log())
                loss = (loss * mask[idx] * w[idx, None]).sum() / mask[idx].sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        return self

    def score(self, seq: np.ndarray) -> np.ndarray:
        """``(T,)`` failure scores in (0, 1) of one rollout's features ``(T, D)``."""
        import torch

        with torch.no_grad():
            x = (torch.as_tensor(np.asarray(seq, np.float32)) - self.mu) / self.sd
            return self._forward(x[None])[0].double().numpy()


class MLPDetector(_TorchDetector):
    """SAFE-MLP: per-step MLP probability, accumulated as the running mean over steps so far."""

    def build(self, d: int):
        from torch import nn

        h = self.config.hidden
        self.mlp = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
        return self.mlp

    def _forward(self, x):
        import torch

        p = torch.sigmoid(self.mlp(x)[..., 0])  # (B, T)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device)
        return p.cumsum(1) / steps  # trained as a running mean: a probability at every step

    def score(self, seq: np.ndarray) -> np.ndarray:
        """``(T,)`` accumulated score: the running sum of per-step failure probabilities.

        At a fixed step it orders rollouts exactly as the running mean does, but it never falls, so
        its max-so-far is not dominated by the noisy first steps. Comparable across rollouts only
        at equal steps, which the length cut and the time-varying band provide.
        """
        return super().score(seq) * np.arange(1, len(seq) + 1)


class LSTMDetector(_TorchDetector):
    """SAFE-LSTM: one-layer LSTM over the features so far, sigmoid head at every step."""

    def build(self, d: int):
        from torch import nn

        self.lstm = nn.LSTM(d, self.config.hidden, batch_first=True)
        self.head = nn.Linear(self.config.hidden, 1)
        return nn.ModuleList([self.lstm, self.head])

    def _forward(self, x):
        import torch

        h, _ = self.lstm(x)
        return torch.sigmoid(self.head(h)[..., 0])


# ---- conformal alert threshold ------------------------------------------------------------------


@dataclass
class ConformalBand:
    """Time-varying alert threshold ``b_t = centre_t + q * scale_t`` with per-rollout false-alarm <= alpha."""

    centre: np.ndarray
    """``(T,)`` per-step centre of successful scores (the last value is used beyond T)."""
    scale: np.ndarray
    """``(T,)`` per-step spread of successful scores (positive)."""
    q: float
    """Conformal quantile of the normalized max-over-time score (inf: never alarm)."""
    alpha: float
    """Nominal per-rollout false-alarm rate."""
    n_calibration: int
    """Successful rollouts behind ``q``."""

    @classmethod
    def fit(cls, scores: Sequence[np.ndarray], alpha: float = 0.1, seed: int = 0, shape_fraction: float = 0.5) -> ConformalBand:
        """Calibrate on score sequences of *successful* rollouts (each ``(T_i,)``).

        A ``shape_fraction`` of them (random, seeded) fixes centre and scale per step; the rest give
        the nonconformity ``max_t (s_t - centre_t) / scale_t`` whose finite-sample-corrected
        quantile is ``q``. With n rollouts in that half, ``q`` is the ``ceil((n + 1)(1 - alpha))``-th
        smallest value (infinite when that exceeds n: too few rollouts for this alpha).
        """
        if not 0 < alpha < 1:
            raise LbmError(f"alpha must be in (0, 1), got {alpha}.")
        scores = [np.asarray(s, np.float64) for s in scores if len(s)]
        if len(scores) < 4:
            raise LbmError(f"Conformal calibration needs at least 4 successful rollouts with scores; got {len(scores)}.")
        order = np.random.default_rng(seed).permutation(len(scores))
        m = max(1, int(round(shape_fraction * len(scores))))
        shape, calib = [scores[i] for i in order[:m]], [scores[i] for i in order[m:]]
        T = max(len(s) for s in scores)
        padded = np.full((len(shape), T), np.nan)
        for i, s in enumerate(shape):
            padded[i, : len(s)] = s
            padded[i, len(s) :] = s[-1]  # a finished rollout keeps its last score (max-so-far view)
        centre = np.nanmean(padded, 0)
        scale = np.nanstd(padded, 0)
        scale = np.maximum(scale, max(1e-6, 0.05 * float(np.nanmean(scale)) if np.any(scale > 0) else 1e-6))
        band = cls(centre, scale, math.inf, alpha, len(calib))
        r = np.sort([band.normalized(s).max() for s in calib])
        n = len(r)
        k = math.ceil((n + 1) * (1 - alpha))
        band.q = float(r[k - 1]) if k <= n else math.inf
        return band

    def _at(self, arr: np.ndarray, T: int) -> np.ndarray:
        return arr[:T] if T <= len(arr) else np.concatenate([arr, np.full(T - len(arr), arr[-1])])

    def normalized(self, scores: np.ndarray) -> np.ndarray:
        """``(s_t - centre_t) / scale_t`` for a score sequence ``(T,)``."""
        s = np.asarray(scores, np.float64)
        return (s - self._at(self.centre, len(s))) / self._at(self.scale, len(s))

    def threshold(self, T: int) -> np.ndarray:
        """The alert threshold ``(T,)`` on raw scores."""
        return self._at(self.centre, T) + self.q * self._at(self.scale, T)

    def alarm_step(self, scores: np.ndarray) -> int | None:
        """First step (0-based) whose score exceeds the threshold, or None."""
        above = np.flatnonzero(self.normalized(scores) > self.q)
        return int(above[0]) if above.size else None


# ---- evaluation ---------------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC of ``scores`` for binary ``labels`` (1 = failure), ties counted half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    n1, n0 = labels.sum(), (~labels).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def evaluate_detector(
    scores: Sequence[np.ndarray], success: Sequence[bool], band: ConformalBand, confidence: float = 0.95
) -> dict:
    """Figures of a detector on held-out rollouts (already length-cut): see module doc.

    ``lead_time_steps`` (``lead_time_median_steps``): mean (median) over detected failures of the steps
    between the alarm and the end of the (cut) rollout — how long before the point where a success
    would already have finished.
    """

    _check_lengths(scores, success)
    succeeded = np.asarray(success, bool)
    final = np.array([np.max(s) if len(s) else -np.inf for s in scores])  # max-so-far at the end
    alarms = [band.alarm_step(s) for s in scores]
    fired = np.array([a is not None for a in alarms])
    out: dict = {
        "n_success": int(succeeded.sum()),
        "n_failure": int((~succeeded).sum()),
        "roc_auc": roc_auc(final, ~succeeded),
        "alpha": band.alpha,
    }
    if succeeded.any():
        fa = int(fired[succeeded].sum())
        lo, hi = proportion_interval(fa, int(succeeded.sum()), confidence, method="clopper-pearson")
        out.update(false_alarm_rate=fa / succeeded.sum(), false_alarm_low=float(lo), false_alarm_high=float(hi))
    if (~succeeded).any():
        det = int(fired[~succeeded].sum())
        lo, hi = proportion_interval(det, int((~succeeded).sum()), confidence, method="clopper-pearson")
        out.update(detection_rate=det / (~succeeded).sum(), detection_low=float(lo), detection_high=float(hi))
        leads = [len(s) - a for s, a, ok in zip(scores, alarms, success) if not ok and a is not None]
        out["lead_time_steps"] = float(np.mean(leads)) if leads else float("nan")
        out["lead_time_median_steps"] = float(np.median(leads)) if leads else float("nan")
    return out


# ---- features from a policy ---------------------------------------------------------------------
