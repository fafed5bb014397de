"""Per-feature statistics and the normalizers built from them.

Statistics are computed once per dataset (per embodiment) and then *travel with the checkpoint*:
a policy normalizes with the stats it was trained with, never with whatever dataset happens to be
on disk at evaluation time (DESIGN.md rule 3).

Constant dimensions. Meta-World's 39-D state has dimensions that are exactly constant for some
tasks (the zero padding of a missing second object, for example). They carry no information and
their spread is exactly zero, so no normalizer can rescale them. The policy here is:

* ``FeatureStats.constant_dims`` lists the dimensions whose ``min == max`` *exactly* (detected at
  stats time, from the data itself);
* a :class:`Normalizer` passes those dimensions through unchanged when the caller lists them in
  ``constant_dims`` (``Normalizer.from_stats`` does that from the stats);
* any other dimension whose spread is below ``eps`` (a *near*-constant dimension, typically a bug or
  a sensor stuck at a few values), or whose stats are NaN/inf, is a loud
  :class:`DegenerateStatsError` naming the feature and the dimension — never a silent clamp.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lbm.errors import LbmError
from lbm.schema import ACTION, STATE

MODES = ("mean_std", "min_max", "quantile")
"""Normalization modes: ``(x-mean)/std``; ``[min,max] -> [-1,1]``; ``[q01,q99] -> [-1,1]``."""


class DegenerateStatsError(LbmError):
    """Feature dimensions that cannot be normalized: their spread is ~0 or a statistic is NaN/inf.

    ``feature`` and ``dims`` say which, so a caller can add context (the embodiment, the flag that
    marks the dimensions constant) without parsing the message.
    """

    def __init__(self, message: str, feature: str = "", dims: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.feature = feature
        self.dims = tuple(dims)


@dataclass(frozen=True)
class FeatureStats:
    """Statistics of one feature over a dataset; every array has shape ``(D,)``, float64."""

    mean: np.ndarray
    """Per-dimension mean."""
    std: np.ndarray
    """Per-dimension population standard deviation (ddof=0, as LeRobot)."""
    min: np.ndarray
    """Per-dimension minimum."""
    max: np.ndarray
    """Per-dimension maximum."""
    q01: np.ndarray
    """Per-dimension 1st percentile (linear interpolation, numpy's default)."""
    q99: np.ndarray
    """Per-dimension 99th percentile."""
    count: int
    """Number of rows (frames) the statistics were computed from."""

    FIELDS = ("mean", "std", "min", "max", "q01", "q99")

    @property
    def dim(self) -> int:
        """Feature width D."""
        return int(np.asarray(self.mean).shape[-1])

    @property
    def constant_dims(self) -> tuple[int, ...]:
        """Dimensions that were exactly constant in the data (``min == max``, bit for bit, and finite).

        An infinite value is never "constant": a dimension that is inf in every frame is broken data.
        """
        lo, hi = np.asarray(self.min), np.asarray(self.max)
        return tuple(int(i) for i in np.flatnonzero((lo == hi) & np.isfinite(lo)))

    @classmethod
    def unit(cls, dim: int, spread: float = 1.0, count: int = 100) -> FeatureStats:
        """Stats centred at 0 with half-width ``spread`` in every mode: for synthetic data, benchmarks and tests."""
        z, o = np.zeros(dim), np.full(dim, float(spread))
        return cls(mean=z, std=o, min=-o, max=o, q01=-o, q99=o, count=count)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form, LeRobot's ``stats.json`` layout (``count`` as a one-element list)."""
        out: dict[str, Any] = {k: np.asarray(getattr(self, k), np.float64).tolist() for k in self.FIELDS}
        out["count"] = [int(self.count)]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FeatureStats:
        """Inverse of :meth:`to_json`; accepts ``count`` as an int or a one-element list."""
        try:
            arrays = {k: np.asarray(d[k], np.float64).reshape(-1) for k in cls.FIELDS}
            count = d.get("count", 0)
            count = int(np.asarray(count).reshape(-1)[0]) if np.size(count) else 0
        except KeyError as missing:
            raise LbmError(
                f"Feature statistics lack the field {missing}; they need {', '.join(cls.FIELDS)} and count. "
                "Recompute them with lbm.data.compute_dataset_stats."
            ) from None
        return cls(count=count, **arrays)


class StatsAccumulator:
    """Streaming statistics of rows ``x (N, D)``: feed batches with :meth:`update`, then finalize.

    Mean and std use Chan et al.'s parallel update in float64 (numerically stable, order
    independent up to rounding); min/max are exact. Quantiles are **exact** (numpy's linear
    interpolation over all rows) as long as at most ``max_exact_rows`` rows were seen: the rows are
    kept. Past that the accumulator keeps a uniform reservoir sample of ``max_exact_rows`` rows
    (seeded, reproducible), and by the Dvoretzky–Kiefer–Wolfowitz inequality each reported
    quantile's *rank* is then off by at most ``sqrt(ln(2/δ) / (2·max_exact_rows))`` with probability
    1-δ (≈0.0014 for the default 10^6 rows and δ=0.01). :attr:`exact_quantiles` says which case
    applies.
    """

    def __init__(self, max_exact_rows: int = 1_000_000, seed: int = 0) -> None:
        self.max_exact_rows = int(max_exact_rows)
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._rows: list[np.ndarray] = []
        self._kept = 0
        self._reservoir: np.ndarray | None = None
        self._rng = np.random.default_rng(seed)

    @property
    def exact_quantiles(self) -> bool:
        """True while every row seen is kept, so the quantiles are exact."""
        return self.count <= self.max_exact_rows

    def update(self, x: np.ndarray) -> StatsAccumulator:
        """Add rows ``x (N, D)`` (a ``(D,)`` vector counts as one row). Returns self."""
        x = np.asarray(x, np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"StatsAccumulator.update expects (N, D) rows, got shape {x.shape}")
        n = x.shape[0]
        if n == 0:
            return self
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"feature width changed from {self._mean.shape[0]} to {x.shape[1]}")
        batch_mean = x.mean(axis=0)
        batch_m2 = ((x - batch_mean) ** 2).sum(axis=0)
        self._combine(n, batch_mean, batch_m2, x.min(axis=0), x.max(axis=0))
        self._keep(x)
        return self

    def _combine(self, n, mean, m2, mn, mx) -> None:
        if self._mean is None or self._m2 is None or self._min is None or self._max is None:
            self._mean, self._m2, self._min, self._max = mean.copy(), m2.copy(), mn.copy(), mx.copy()
            self.count = n
            return
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * n / total)
        self._min = np.minimum(self._min, mn)
        self._max = np.maximum(self._max, mx)
        self.count = total

    def _keep(self, x: np.ndarray) -> None:
        seen_before = self.count - x.shape[0]
        if self._reservoir is None and seen_before + x.shape[0] <= self.max_exact_rows:
            self._rows.append(x)
            self._kept += x.shape[0]
            return
        if self._reservoir is None:  # switch from exact to reservoir (algorithm R from here on)
            self._reservoir = np.concatenate([*self._rows, x], axis=0)[: self.max_exact_rows].copy()
            self._rows = []
            first_new = self.max_exact_rows - seen_before
            x, seen_before = x[first_new:], self.max_exact_rows
        t = seen_before + np.arange(x.shape[0])  # global 0-based index of each new row
        slot = (self._rng.random(x.shape[0]) * (t + 1)).astype(np.int64)
        accept = slot < self.max_exact_rows
        if self._reservoir is not None:  # (set above)
            self._reservoir[slot[accept]] = x[accept]

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """Fold another accumulator (e.g. from another worker) into this one. Returns self."""
        if other._mean is None:
            return self
        if other._reservoir is None and self._reservoir is None:
            rows = np.concatenate(other._rows, axis=0)
            return self.update(rows)
        # At least one side is already a sample: combine moments exactly, quantile rows as samples.
        self._combine(other.count, other._mean, other._m2, other._min, other._max)
        kept = other._reservoir if other._reservoir is not None else np.concatenate(other._rows, axis=0)
        mine = self._reservoir if self._reservoir is not None else np.concatenate(self._rows, axis=0)
        pool = np.concatenate([mine, kept], axis=0)
        pick = self._rng.choice(pool.shape[0], size=min(self.max_exact_rows, pool.shape[0]), replace=False)
        self._reservoir, self._rows = pool[pick], []
        return self

    def finalize(self) -> FeatureStats:
        """The statistics of every row seen so far."""
        mean0, m2, lo, hi = self._mean, self._m2, self._min, self._max
        if mean0 is None or m2 is None or lo is None or hi is None:
            raise LbmError("No rows were given to StatsAccumulator; a feature needs at least one frame for statistics.")
        rows = self._reservoir if self._reservoir is not None else np.concatenate(self._rows, axis=0)
        q01, q99 = np.quantile(rows, [0.01, 0.99], axis=0)
        std = np.sqrt(np.maximum(m2 / self.count, 0.0))
        # A constant column must report exactly zero spread (rounding in m2 could leave ~1e-17).
        std = np.where(lo == hi, 0.0, std)
        mean = np.where(lo == hi, lo, mean0)
        return FeatureStats(mean=mean, std=std, min=lo.copy(), max=hi.copy(), q01=q01, q99=q99, count=int(self.count))


def compute_dataset_stats(dataset: Any, *, keys: Sequence[str] | None = None) -> dict[str, FeatureStats]:
    """Stats of the state and action features of an :class:`~lbm.data.dataset.EpisodeDataset`.

    Returns ``{feature key: FeatureStats}`` for ``observation.state`` and ``action`` (or ``keys``).
    Image stats are not computed: policies here normalize images by the fixed 1/255 scale.
    """

    keys = tuple(keys) if keys is not None else (STATE, ACTION)
    accs = {k: StatsAccumulator() for k in keys}
    for k in keys:
        accs[k].update(dataset.frames(k))
    return {k: acc.finalize() for k, acc in accs.items()}


class Normalizer:
    """Invertible per-feature affine normalization, for numpy arrays and torch tensors.

    Each feature ``key`` is mapped ``y = (x - center) / half_width`` along its last dimension D:

    * ``mean_std``: center = mean, half_width = std;
    * ``min_max``:  [min, max] -> [-1, 1];
    * ``quantile``: [q01, q99] -> [-1, 1]; values outside map outside [-1, 1] (no clipping).

    Dimensions listed in ``constant_dims[key]`` pass through unchanged. Any other dimension whose
    spread is below ``eps`` or whose stats are not finite raises :class:`DegenerateStatsError` at
    construction, naming the feature and dimension. Arrays may have any leading dims ``(..., D)``.
    """

    def __init__(
        self,
        stats: Mapping[str, FeatureStats],
        modes: Mapping[str, str],
        constant_dims: Mapping[str, Sequence[int]] | None = None,
        eps: float = 1e-6,
        min_spread: Mapping[str, float] | None = None,
    ) -> None:
        self.stats = dict(stats)
        self.modes = dict(modes)
        self.constant_dims = {k: tuple(int(i) for i in v) for k, v in (constant_dims or {}).items()}
        self.eps = float(eps)
        self.min_spread = {k: float(v) for k, v in (min_spread or {}).items() if v}
        """A declared floor, per feature and in its units, on the half-width (the std, for mean_std) of every
        dimension that is not marked constant: one the data holds nearly fixed would otherwise turn small
        deviations at deployment into inputs many spreads away."""
        bad = {k: v for k, v in self.min_spread.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise LbmError(f"min_spread must be positive and finite, got {bad}.")
        self._center: dict[str, np.ndarray] = {}
        self._half: dict[str, np.ndarray] = {}
        self._torch_cache: dict[tuple, tuple] = {}
        for key, mode in self.modes.items():
            if mode not in MODES:
                raise LbmError(f"Unknown normalization mode {mode!r} for feature {key!r}; use one of {', '.join(MODES)}.")
            if key not in self.stats:
                raise LbmError(
                    f"No statistics for feature {key!r} (have: {', '.join(sorted(self.stats)) or 'none'}); "
                    "compute them with lbm.data.compute_dataset_stats or drop the feature from the modes."
                )
            self._center[key], self._half[key] = self._affine(key, mode, self.stats[key])

    @classmethod
    def from_stats(cls, stats: Mapping[str, FeatureStats], modes: Mapping[str, str], eps: float = 1e-6) -> Normalizer:
        """Normalizer that passes through every dimension the stats found exactly constant."""
        return cls(stats, modes, {k: stats[k].constant_dims for k in modes if k in stats}, eps)

    def _affine(self, key: str, mode: str, s: FeatureStats) -> tuple[np.ndarray, np.ndarray]:
        if mode == "mean_std":
            center, half, used = np.asarray(s.mean), np.asarray(s.std), ("mean", "std")
        else:
            used = ("min", "max") if mode == "min_max" else ("q01", "q99")
            lo, hi = (np.asarray(getattr(s, name)) for name in used)
            with np.errstate(invalid="ignore"):  # inf stats give NaN here; they are reported below
                center, half = (hi + lo) / 2, (hi - lo) / 2
        center, half = center.astype(np.float64).copy(), half.astype(np.float64).copy()
        constant = set(self.constant_dims.get(key, ()))
        bad_index = [i for i in constant if not 0 <= i < center.shape[0]]
        if bad_index:
            raise LbmError(f"constant_dims for {key!r} lists dimension(s) {bad_index}, but the feature has {center.shape[0]}.")
        nonfinite, narrow = [], []
        for d in range(center.shape[0]):
            if d in constant:
                center[d], half[d] = 0.0, 1.0
                continue
            values = [float(np.asarray(getattr(s, name))[d]) for name in used]
            if not all(math.isfinite(v) for v in values):
                nonfinite.append(d)
            elif half[d] * (2 if mode != "mean_std" else 1) < self.eps:
                narrow.append(d)
        if nonfinite:
            raise DegenerateStatsError(
                f"Feature {key!r} dimension(s) {_ranges(nonfinite)}: statistics are not finite; the data contains NaN or "
                "inf. Run `lbm data audit` on the dataset and fix or drop the bad frames.",
                key,
                tuple(nonfinite),
            )
        if narrow:
            spread = {d: float(2 * half[d] if mode != "mean_std" else half[d]) for d in narrow}
            shown = ", ".join(f"{d}: {v:.2g}" for d, v in list(spread.items())[:6])
            raise DegenerateStatsError(
                f"Feature {key!r} dimension(s) {_ranges(narrow)} have a spread below eps={self.eps:g} in mode {mode!r} "
                f"({shown}) but are not exactly constant, so they cannot be normalized: dividing by that spread would turn "
                "float noise into huge inputs, and clamping it silently would hide a broken sensor or dataset. Mark "
                "dimensions that truly carry no information as constant (they then pass through unchanged), or collect "
                "more varied data, or use another normalization mode.",
                key,
                tuple(narrow),
            )
        floor = self.min_spread.get(key, 0.0)
        if floor:
            free = np.array([d not in constant for d in range(half.shape[0])])
            half[free] = np.maximum(half[free], floor)
        return center, half

    def affine(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(center, half_width)`` float64 ``(D,)`` of feature ``key``: ``y = (x - center) / half_width``."""
        if key not in self._center:
            raise LbmError(f"Normalizer has no feature {key!r}; it knows {', '.join(sorted(self._center))}.")
        return self._center[key].copy(), self._half[key].copy()

    def _params(self, key: str, x: Any) -> tuple[Any, Any]:
        if key not in self._center:
            raise LbmError(f"Normalizer has no feature {key!r}; it knows {', '.join(sorted(self._center))}.")
        center, half = self._center[key], self._half[key]
        if x.shape[-1] != center.shape[0]:
            raise LbmError(f"Feature {key!r} has width {center.shape[0]} but the array's last dim is {x.shape[-1]}.")
        if isinstance(x, np.ndarray):
            dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
            return center.astype(dtype), half.astype(dtype)
        import torch

        dtype = x.dtype if x.is_floating_point() else torch.float32
        cache_key = (key, dtype, x.device)
        if cache_key not in self._torch_cache:
            self._torch_cache[cache_key] = (
                torch.as_tensor(center, dtype=dtype, device=x.device),
                torch.as_tensor(half, dtype=dtype, device=x.device),
            )
        return self._torch_cache[cache_key]

    def normalize(self, key: str, x: Any) -> Any:
        """Normalize ``x (..., D)`` (numpy array or torch tensor) of feature ``key``."""
        center, half = self._params(key, x)
        return (x - center) / half

    def unnormalize(self, key: str, x: Any) -> Any:
        """Inverse of :meth:`normalize`."""
        center, half = self._params(key, x)
        return x * half + center

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (stats, modes, constant dims, eps), for checkpoints."""
        return {
            "modes": self.modes,
            "constant_dims": {k: list(v) for k, v in self.constant_dims.items()},
            "eps": self.eps,
            "stats": {k: s.to_json() for k, s in self.stats.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_json`."""
        return cls(
            {k: FeatureStats.from_json(s) for k, s in d["stats"].items()},
            d["modes"],
            d.get("constant_dims"),
            float(d.get("eps", 1e-6)),
        )


def near_constant_dims(stats: FeatureStats, mode: str, eps: float = 1e-6) -> tuple[int, ...]:
    """Dimensions a :class:`Normalizer` in ``mode`` refuses as nearly constant (spread below ``eps``, not exactly 0).

    They must be marked constant to be passed through (``PolicyConfig.constant_dims``); this lists
    them so that a caller can do that explicitly and say so.
    """
    if mode not in MODES:
        raise LbmError(f"Unknown normalization mode {mode!r}; use one of {', '.join(MODES)}.")
    lo_name, hi_name = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantile": ("q01", "q99")}[mode]
    lo, hi = np.asarray(getattr(stats, lo_name), float), np.asarray(getattr(stats, hi_name), float)
    spread = hi if mode == "mean_std" else hi - lo
    exact = set(stats.constant_dims)
    return tuple(int(d) for d in np.flatnonzero(np.isfinite(spread) & (spread < eps)) if int(d) not in exact)


def _ranges(dims: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out, start = [], None
    for i, d in enumerate(dims):
        if start is None:
            start = d
        if i + 1 == len(dims) or dims[i + 1] != d + 1:
            out.append(str(start) if start == d else f"{start}-{d}")
            start = None
    return ", ".join(out)


def save_stats(path: str | Path, stats: Mapping[str, Mapping[str, FeatureStats]]) -> Path:
    """Write ``{embodiment: {feature: FeatureStats}}`` to a plain JSON file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {emb: {k: s.to_json() for k, s in feats.items()} for emb, feats in stats.items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return path


def load_stats(path: str | Path) -> dict[str, dict[str, FeatureStats]]:
    """Read what :func:`save_stats` wrote."""
    path = Path(path)
    if not path.is_file():
        raise LbmError(f"Statistics file {path} does not exist; write it with lbm.data.save_stats or check the path.")
    try:
        payload = json.loads(path.read_text())
        return {emb: {k: FeatureStats.from_json(s) for k, s in feats.items()} for emb, feats in payload.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise LbmError(f"Statistics file {path} is corrupt ({e}); regenerate it with lbm.data.save_stats.") from None
