"""Weighted mixtures of several window datasets (e.g. many tasks, or sim + real data).

A :class:`Mixture` is the concatenation of its members (index ``i`` walks member 0, then member
1, ...); *how often* each item is drawn is decided by :meth:`Mixture.sample_weights`, fed to
``torch.utils.data.WeightedRandomSampler``. Semantics of the two knobs:

* ``weights=None, balance_by_size=False``: every item equally likely, so a member's share of the
  batches is proportional to its size (plain concatenation);
* ``weights=[w_0, w_1, ...]``: item weights are multiplied by their member's ``w_k``, so a member's
  share is proportional to ``w_k * size_k``;
* ``balance_by_size=True``: sizes are divided out, so a member's share is ``w_k / sum(w)`` exactly
  (equal shares when ``weights`` is None), however many frames it has. Small members are then
  revisited more often — the usual choice when a few finetuning demos must not drown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lbm.data.windows import DATASET_INDEX, WindowDataset
from lbm.errors import LbmError


class Mixture:
    """Map-style concatenation of :class:`WindowDataset` members with per-item sampling weights.

    Each item is the member's item plus ``dataset_index`` (which member it came from).
    """

    def __init__(
        self,
        datasets: Sequence[WindowDataset],
        weights: Sequence[float] | None = None,
        balance_by_size: bool = False,
    ) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise LbmError("A Mixture needs at least one dataset.")
        if weights is None:
            weights = [1.0] * len(self.datasets)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.datasets):
            raise LbmError(f"Mixture got {len(weights)} weights for {len(self.datasets)} datasets; give one weight per dataset.")
        if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise LbmError(f"Mixture weights must be finite, non-negative and not all zero, got {weights}.")
        self.weights = weights
        self.balance_by_size = bool(balance_by_size)
        self.sizes = [len(d) for d in self.datasets]
        empty = [k for k, (n, w) in enumerate(zip(self.sizes, weights)) if n == 0 and w > 0]
        if empty:
            raise LbmError(f"Mixture members {empty} are empty but have positive weight; drop them or give them weight 0.")
        self._offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for a mixture of {len(self)} items")
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        item = self.datasets[k][int(i - self._offsets[k])]
        item[DATASET_INDEX] = k
        return item

    def shares(self) -> np.ndarray:
        """Probability ``(K,)`` that a draw comes from each member."""
        per_member = np.array([w * (1.0 if self.balance_by_size else n) for w, n in zip(self.weights, self.sizes)])
        per_member[np.array(self.sizes) == 0] = 0.0
        return per_member / per_member.sum()

    def sample_weights(self) -> np.ndarray:
        """Per-item sampling probability ``(N,)`` (sums to 1), for ``WeightedRandomSampler``."""
        out = np.empty(len(self), np.float64)
        for k, share in enumerate(self.shares()):
            lo, hi = self._offsets[k], self._offsets[k + 1]
            if hi > lo:
                out[lo:hi] = share / (hi - lo)
        return out

    def sampler(self, num_samples: int | None = None, seed: int = 0):
        """A seeded ``torch.utils.data.WeightedRandomSampler`` drawing ``num_samples`` (default len) items."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.WeightedRandomSampler(
            self.sample_weights().tolist(), num_samples or len(self), replacement=True, generator=generator
        )
