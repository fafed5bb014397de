"""Environments reused across waves: building a simulator costs far more than resetting one."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from lbm import sim
from lbm.eval.runner.config import EvalConfig


def sim_shift(condition: str) -> str:
    """A condition of ``--shifts`` in the simulator's syntax (``+`` composes shifts -> ``,``)."""
    return "none" if condition == "none" else condition.replace("+", ",")


class EnvPool:
    """Up to ``capacity`` idle environments, keyed by (task, shift), least recently used evicted first."""

    def __init__(self, config: EvalConfig, capacity: int) -> None:
        self.config = config
        self.capacity = capacity
        self._free: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()
        self.build_s = 0.0
        """Seconds spent constructing environments (reported so benchmarks can separate setup)."""

    def take(self, task: str, shift: str) -> Any:
        """An environment for (task, shift): an idle one, or a new one."""
        key = (task, shift)
        free = self._free.get(key)
        if free:
            self._free.move_to_end(key)
            return free.pop()
        t0 = time.perf_counter()
        env = sim.make_env(
            task,
            cameras=self.config.camera_names,
            image_size=self.config.image_size,
            shifts=sim_shift(shift),
            max_steps=self.config.max_steps,
        )
        self.build_s += time.perf_counter() - t0
        return env

    def give(self, task: str, shift: str, env: Any) -> None:
        """Return an environment for reuse."""
        self._free.setdefault((task, shift), []).append(env)
        self._free.move_to_end((task, shift))
        while sum(len(v) for v in self._free.values()) > self.capacity:
            _, envs = self._free.popitem(last=False)
            for e in envs:
                close_quietly(e)

    def close(self) -> None:
        """Close every idle environment."""
        for envs in self._free.values():
            for e in envs:
                close_quietly(e)
        self._free.clear()


def close_quietly(env: Any) -> None:
    """Close an environment; closing is best effort and a broken env must not take the run down."""
    try:
        env.close()
    except Exception:  # noqa: BLE001 - any failure to close is irrelevant to the results
        pass
