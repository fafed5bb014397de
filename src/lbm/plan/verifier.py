"""A learned success detector: does an atom hold, judged from the observation alone (no simulator).

For settings with no ground-truth symbolic state (a real robot), the executor's verifier must be
learned. This one is a small MLP over the observed (normalized) state with one logit per atom it
knows, trained on the per-frame atoms that demonstration datasets of symbolic tasks carry (labels
for free: every frame of a LIBERO or robosuite demo records its true atoms). Frames of a task that
does not define an atom are masked out of that atom's loss. Its precision and recall are measured
on held-out episodes, and during execution against the simulator's truth (the executor counts
every check where the two disagree).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lbm.errors import LbmError
from lbm.plan.symbolic import PlanningError
from lbm.schema import STATE, Observation

FILES = ("verifier.json", "verifier.safetensors")


def _mlp(inputs: int, hidden: int, outputs: int):
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, outputs),
    )  # fmt: skip


def _labels(dataset: Any, episodes: Sequence[int], vocabulary: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """States ``(N, D)``, labels ``(N, K)`` and label masks ``(N, K)`` of the frames of ``episodes``."""
    states = dataset.frames(STATE)
    xs, ys, ms = [], [], []
    column = {a: k for k, a in enumerate(vocabulary)}
    for i in episodes:
        names, atoms = dataset.atoms(i)
        lo, hi = dataset.episode_bounds(i)
        y = np.zeros((hi - lo, len(vocabulary)), np.float32)
        m = np.zeros_like(y)
        for j, name in enumerate(names):
            if name in column:
                y[:, column[name]], m[:, column[name]] = atoms[:, j], 1.0
        xs.append(states[lo:hi])
        ys.append(y)
        ms.append(m)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys), np.concatenate(ms)


class LearnedVerifier:
    """``check(env, obs, atoms)`` from ``obs.state`` only; the simulator is never read."""

    name = "learned"

    def __init__(self, model: Any, atoms: Sequence[str], mean: np.ndarray, std: np.ndarray, embodiment: str) -> None:
        self.model, self.atoms = model.eval(), tuple(atoms)
        self.mean, self.std, self.embodiment = mean.astype(np.float32), std.astype(np.float32), embodiment
        self.column = {a: k for k, a in enumerate(self.atoms)}

    def probabilities(self, states: np.ndarray) -> np.ndarray:
        """P(atom holds) ``(N, K)`` for observed states ``(N, D)``."""
        import torch

        with torch.no_grad():
            x = torch.from_numpy(((np.asarray(states, np.float32) - self.mean) / self.std).reshape(len(states), -1))
            return torch.sigmoid(self.model(x)).numpy()

    def check(self, env: Any, obs: Observation, atoms: Sequence[str]) -> dict[str, bool]:
        unknown = [a for a in atoms if a not in self.column]
        if unknown:
            raise PlanningError(
                f"The learned verifier was not trained on {', '.join(unknown)} (it knows {len(self.atoms)} atoms of its "
                "training tasks); train it on demonstrations of this task or use the privileged verifier."
            )
        if obs.embodiment != self.embodiment:
            raise PlanningError(f"The learned verifier reads {self.embodiment} states, not {obs.embodiment}.")
        p = self.probabilities(obs.state[None])[0]
        return {a: bool(p[self.column[a]] > 0.5) for a in atoms}

    # ---- training and files --------------------------------------------------------------------
    @classmethod
    def train(
        cls, dataset_root: str | Path, *, steps: int = 1500, hidden: int = 128, holdout: float = 0.2, seed: int = 0
    ) -> tuple[LearnedVerifier, dict]:
        """Fit on a symbolic dataset's frames (the last ``holdout`` of each task's episodes held out); returns
        the verifier and its held-out precision / recall / accuracy per atom and overall."""
        import torch

        from lbm.data import EpisodeDataset
        from lbm.sim import get_task

        ds = EpisodeDataset(dataset_root)
        by_task: dict[str, list[int]] = {}
        for i in range(ds.num_episodes):
            by_task.setdefault(ds.episode_sim_task(i), []).append(i)
        vocabulary = sorted({a for task in by_task for a in get_task(task).goal})
        train_eps, test_eps = [], []
        for eps in by_task.values():
            cut = max(1, round(len(eps) * (1 - holdout))) if len(eps) > 1 else len(eps)
            train_eps += eps[:cut]
            test_eps += eps[cut:]
        x, y, m = _labels(ds, train_eps, vocabulary)
        mean, std = x.mean(0), x.std(0) + 1e-3  # near-constant dims (object orientations) stay finite
        torch.manual_seed(seed)
        model = _mlp(x.shape[1], hidden, len(vocabulary))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        xt, yt, mt = (torch.from_numpy(a) for a in ((x - mean) / std, y, m))
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            idx = torch.from_numpy(rng.integers(0, len(xt), size=min(256, len(xt))))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt[idx]), yt[idx], weight=mt[idx], reduction="sum")
            loss = loss / mt[idx].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        verifier = cls(model, vocabulary, mean, std, ds.embodiment.name)
        metrics = verifier.score(ds, test_eps or train_eps)
        metrics.update(train_episodes=len(train_eps), test_episodes=len(test_eps), atoms=len(vocabulary))
        return verifier, metrics

    def score(self, dataset: Any, episodes: Sequence[int]) -> dict:
        """Precision, recall and accuracy against the recorded truth of ``episodes``' frames."""
        x, y, m = _labels(dataset, episodes, self.atoms)
        pred = self.probabilities(x) > 0.5
        truth, mask = y > 0.5, m > 0
        tp, fp = int((pred & truth & mask).sum()), int((pred & ~truth & mask).sum())
        fn, tn = int((~pred & truth & mask).sum()), int((~pred & ~truth & mask).sum())
        return dict(
            tp=tp, fp=fp, fn=fn, tn=tn, frames=int(len(x)),
            precision=tp / (tp + fp) if tp + fp else float("nan"),
            recall=tp / (tp + fn) if tp + fn else float("nan"),
            accuracy=(tp + tn) / max(1, tp + fp + fn + tn),
        )  # fmt: skip

    def save(self, folder: str | Path) -> Path:
        """``verifier.json`` (atoms, normalization, sizes) and ``verifier.safetensors`` (weights)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        hidden = int(self.model[0].out_features)
        meta = dict(
            atoms=list(self.atoms), mean=self.mean.tolist(), std=self.std.tolist(), embodiment=self.embodiment, hidden=hidden
        )
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(folder / FILES[1]))
        (folder / FILES[0]).write_text(json.dumps(meta) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> LearnedVerifier:
        """A verifier saved by :meth:`save`; a folder without its files is a clear error."""
        from safetensors.torch import load_file

        folder = Path(folder)
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise LbmError(
                f"{folder} is not a learned verifier (missing {', '.join(missing)}); write one with LearnedVerifier.save."
            )
        meta = json.loads((folder / FILES[0]).read_text())
        mean, std = np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32)
        model = _mlp(len(mean), int(meta["hidden"]), len(meta["atoms"]))
        model.load_state_dict(load_file(str(folder / FILES[1])))
        return cls(model, meta["atoms"], mean, std, meta["embodiment"])
