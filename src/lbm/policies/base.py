"""The tiny contract every policy honours (DESIGN.md rule 4).

Training uses ``compute_loss``; evaluation and serving use ``predict_chunk`` and ``reset``. The
trainer, the rollout runner and the server know nothing else about a policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lbm.schema import Observation


@runtime_checkable
class Policy(Protocol):
    """What the rollout runner and the server need from a policy.

    A policy may be stateful (observation history, a chunk being executed). It serves a batch of
    independent *slots* (one per environment or client): ``predict_chunk`` receives the current
    observation of every slot, in slot order, and ``reset`` clears the state of some slots.
    """

    def predict_chunk(self, observations: Sequence[Observation]) -> np.ndarray:
        """Return float32 actions ``(B, T, action_dim)`` in the embodiment's units, within bounds.

        ``observations[i]`` is the newest observation of slot ``i``; B = ``len(observations)``.
        """
        ...

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Forget the history of the given slots (all slots when ``None``)."""
        ...


class TrainablePolicy(Protocol):
    """What the single training loop needs from a model (a ``torch.nn.Module``)."""

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        """Return ``(scalar loss tensor, metrics)`` for a collated training batch."""
        ...
