"""Argument checks shared by the statistics modules: every bad input is an :class:`InputError`."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lbm.errors import InputError, did_you_mean


def counts(successes: ArrayLike, n: ArrayLike, what: str = "counts") -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(successes, n)`` as int64 arrays of one shape, with ``n >= 1`` and ``0 <= successes <= n``.

    Fractional, NaN, infinite or negative values and ``successes > n`` are refused: a count that is
    silently rounded or clipped gives an interval or test of data that does not exist.
    """
    s_raw, n_raw = np.asarray(successes), np.asarray(n)
    for name, raw in (("successes", s_raw), ("trials", n_raw)):
        if raw.dtype.kind not in "biuf":
            raise InputError(f"{what}: {name} must be numbers, got {raw.dtype} values {raw.ravel()[:5].tolist()}.")
        values = raw.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise InputError(f"{what}: {name} contain NaN or infinite values {values.ravel()[:5].tolist()}.")
        if np.any(values != np.round(values)):
            bad = values[values != np.round(values)].ravel()[:5].tolist()
            raise InputError(f"{what}: {name} must be whole numbers, got {bad}.")
        if np.any(values < 0):
            raise InputError(f"{what}: {name} must not be negative, got {values[values < 0].ravel()[:5].tolist()}.")
    try:
        s, t = np.broadcast_arrays(s_raw.astype(np.int64), n_raw.astype(np.int64))
    except ValueError:
        raise InputError(f"{what}: successes of shape {s_raw.shape} and trials of shape {n_raw.shape} do not match.") from None
    if np.any(t < 1):
        raise InputError(f"{what}: every rate needs at least one trial (n >= 1); got n = {t[t < 1].ravel()[:5].tolist()}.")
    if np.any(s > t):
        i = np.flatnonzero((s > t).ravel())[:5]
        pairs = [f"{int(a)}/{int(b)}" for a, b in zip(s.ravel()[i], t.ravel()[i])]
        raise InputError(f"{what}: successes exceed trials in {pairs}.")
    return s, t


def count(successes: ArrayLike, n: ArrayLike, what: str = "counts") -> tuple[int, int]:
    """One ``(successes, n)`` pair as Python ints (see :func:`counts`)."""
    s, t = counts(successes, n, what)
    if s.size != 1:
        raise InputError(f"{what}: expected one count, got {s.size}.")
    return int(s.ravel()[0]), int(t.ravel()[0])


def alpha(value: float, name: str = "alpha") -> float:
    """A level strictly between 0 and 1."""
    try:
        ok = 0 < float(value) < 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name}={value!r} must be strictly between 0 and 1 (e.g. 0.05).")
    return float(value)


def confidence(value: float) -> float:
    """A confidence level strictly between 0 and 1."""
    return alpha(value, "confidence")


def probability(value: float, name: str) -> float:
    """A success rate strictly between 0 and 1 (planning inputs)."""
    return alpha(value, name)


def choice(value: str, options: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``options``, else a did-you-mean error."""
    if value not in options:
        error = did_you_mean(str(value), options, what)
        raise InputError(str(error))
    return value
