"""Shared by the benchmarks that report peak memory: each measurement runs in a fresh process.

``ru_maxrss`` only ever grows within a process, so a figure measured after another one would be
the maximum of both. A spawned process per measurement makes every peak its own; the peak of a
process that only imported the runtime (python, torch, lbm) is reported beside them.
"""

from __future__ import annotations

import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new spawned process (``fn`` must be importable: module level)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def runtime_peak_rss_mb() -> float:
    """Peak RSS of a fresh process that ran nothing: the floor under every measured peak."""
    return in_fresh_process(peak_rss_mb)
