"""Fixed-length training windows over an episode dataset: observation history + future actions.

One item per frame ``t`` of the selected episodes. With history ``H`` and horizon ``T``:

* ``observation.state (H, S)``: states ``t-H+1 .. t``; steps before the episode start repeat the
  first frame and are marked ``True`` in ``observation.state_is_pad (H,)``;
* ``action (T, A)``: actions ``t .. t+T-1``; steps past the episode end repeat the last action
  and are marked in ``action_is_pad (T,)``;
* ``observation.images.<cam> (H, h, w, 3)`` uint8 for each requested camera (same steps as state);
* ``instruction``: the episode's instruction or, for a fixed ``subtask_instructions`` fraction of
  the windows of a dataset with subtask labels, the instruction of the subtask frame ``t`` is in.

Values are raw (unnormalized): the policy normalizes with the stats stored in its checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lbm.data.dataset import EpisodeDataset
from lbm.errors import LbmError, did_you_mean
from lbm.schema import (
    ACTION,
    ACTION_PAD,
    EMBODIMENT,
    EPISODE_INDEX,
    FRAME_INDEX,
    INSTRUCTION,
    PAD_SUFFIX,
    STATE,
    STATE_PAD,
    image_key,
)

DATASET_INDEX = "dataset_index"
"""Key :class:`~lbm.data.mixture.Mixture` adds to each item: which member dataset it came from."""


class WindowDataset:
    """Map-style dataset of training windows (see the module docstring for the item layout)."""

    def __init__(
        self,
        dataset: EpisodeDataset,
        *,
        history: int = 1,
        horizon: int = 16,
        episodes: Sequence[int] | None = None,
        cameras: Sequence[str] = (),
        subtask_instructions: float = 0.0,
    ) -> None:
        if history < 1 or horizon < 1:
            raise LbmError(f"history and horizon must be >= 1, got history={history}, horizon={horizon}.")
        self.dataset = dataset
        self.history, self.horizon = int(history), int(horizon)
        self.cameras = tuple(cameras)
        for cam in self.cameras:
            if cam not in dataset.cameras:
                if not dataset.cameras:
                    raise LbmError(
                        f"{dataset.root} has no camera images; drop cameras={list(self.cameras)} or "
                        "regenerate the dataset with --cameras."
                    )
                raise did_you_mean(cam, dataset.cameras, "camera")
        eps = list(range(dataset.num_episodes)) if episodes is None else [int(e) for e in episodes]
        bad = [e for e in eps if not 0 <= e < dataset.num_episodes]
        if bad:
            raise LbmError(
                f"Episodes {bad[:5]} do not exist; {dataset.root} has {dataset.num_episodes} (0..{dataset.num_episodes - 1})."
            )
        self.episodes = eps
        bounds = np.array([dataset.episode_bounds(e) for e in eps], np.int64).reshape(-1, 2)
        lengths = bounds[:, 1] - bounds[:, 0]
        # Per item: its episode (position in self.episodes), its global row, and its episode's rows.
        self._ep_pos = np.repeat(np.arange(len(eps)), lengths)
        self._row = np.concatenate([np.arange(s, e) for s, e in bounds]) if len(eps) else np.zeros(0, np.int64)
        self._start = bounds[self._ep_pos, 0] if len(eps) else self._row
        self._end = bounds[self._ep_pos, 1] if len(eps) else self._row
        self._instruction = [dataset.episode_task(e) for e in eps]
        if not 0.0 <= subtask_instructions <= 1.0:
            raise LbmError(f"subtask_instructions is a fraction of windows in [0, 1], got {subtask_instructions}.")
        # A fixed, seed-free choice per window (Knuth's multiplicative hash of its row): the same
        # windows always get their subtask's instruction, so runs stay reproducible.
        self._subtask_rows = np.zeros(len(self._row), bool)
        if subtask_instructions > 0 and dataset.has_subtasks:
            self._subtask_rows = (self._row * 2654435761 % 2**32) < subtask_instructions * 2**32
            self._subtask = dataset.frame_subtasks()
        self._embodiment = dataset.embodiment.name
        self._state = dataset.frames(STATE)
        self._action = dataset.frames(ACTION)
        self._h_offsets = np.arange(-self.history + 1, 1)
        self._t_offsets = np.arange(self.horizon)

    def __len__(self) -> int:
        return len(self._row)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        i = int(i) % len(self)
        row, start, end = int(self._row[i]), int(self._start[i]), int(self._end[i])
        h_rows = row + self._h_offsets
        t_rows = row + self._t_offsets
        state_pad = h_rows < start
        action_pad = t_rows >= end
        h_rows = np.maximum(h_rows, start)
        t_rows = np.minimum(t_rows, end - 1)
        ep = self.episodes[self._ep_pos[i]]
        item: dict[str, Any] = {
            STATE: self._state[h_rows],
            STATE_PAD: state_pad,
            ACTION: self._action[t_rows],
            ACTION_PAD: action_pad,
            INSTRUCTION: self.dataset.tasks[int(self._subtask[row])]
            if self._subtask_rows[i]
            else self._instruction[self._ep_pos[i]],
            EMBODIMENT: self._embodiment,
            EPISODE_INDEX: ep,
            FRAME_INDEX: row - start,
        }
        for cam in self.cameras:
            item[image_key(cam)] = self.dataset.images(ep, cam)[h_rows - start]
        return item


def collate_windows(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack window items into a batch: arrays -> torch tensors ``(B, ...)``, strings -> ``list[str]``.

    When items come from embodiments of different widths, ``observation.state`` and ``action`` are
    zero-padded along the last (feature) dim to the batch maximum; ``observation.state_dim_is_pad
    (B, S)`` and ``action_dim_is_pad (B, A)`` mark the padded dims (always present, all False when
    nothing was padded).
    """
    import torch

    if not items:
        raise LbmError("collate_windows got an empty list of items.")
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        first = values[0]
        if isinstance(first, str):
            batch[key] = list(values)
        elif isinstance(first, (bool, int, np.integer)):
            batch[key] = torch.as_tensor(np.asarray(values, np.int64))
        elif isinstance(first, (float, np.floating)):
            batch[key] = torch.as_tensor(np.asarray(values, np.float32))
        elif key in (STATE, ACTION):
            width = max(v.shape[-1] for v in values)
            out = np.zeros((len(values), *first.shape[:-1], width), np.float32)
            dim_pad = np.ones((len(values), width), bool)
            for b, v in enumerate(values):
                out[b, ..., : v.shape[-1]] = v
                dim_pad[b, : v.shape[-1]] = False
            batch[key] = torch.from_numpy(out)
            batch[key + "_dim" + PAD_SUFFIX] = torch.from_numpy(dim_pad)
        else:
            shapes = {np.shape(v) for v in values}
            if len(shapes) > 1:
                raise LbmError(f"Cannot batch {key!r}: items have shapes {sorted(shapes)}; use one image size per batch.")
            batch[key] = torch.from_numpy(np.stack(values))
    return batch
