"""A learned success detector: does an atom hold, judged from the observation alone (no simulator).

For settings with no ground-truth symbolic state (a real robot), the executor's verifier must be
learned. This one is a small MLP over the observed (normalized) state with one logit per goal atom
of its training tasks, trained on rollouts labelled by the simulator's truth at every step (the
labels a real deployment would get from annotated rollouts); frames of a task that does not define
an atom are masked out of that atom's loss. Its precision and recall are measured on held-out
rollouts, and during execution against the simulator's truth (the executor counts every check
where the two disagree).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lbm.errors import LbmError
from lbm.plan.symbolic import PlanningError
from lbm.policies.base import Policy
from lbm.schema import Observation

FILES = ("verifier.json", "verifier.safetensors")


def _mlp(inputs: int, hidden: int, outputs: int):
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, outputs),
    )  # fmt: skip


def collect(
    tasks: Sequence[str], episodes: int, *, after: int = 30, seed_offset: int = 0, policy: Policy | None = None
) -> dict[str, Any]:
    """Rollouts on ``tasks`` with the true goal atoms of every step, continued ``after`` steps past success
    (demonstrations stop at success, so they hold almost no frame where the goal holds).

    The rollouts are the scripted expert's, or ``policy``'s given each task's goal instruction: a policy
    that fails visits states the expert never does (the hand at the target with nothing in it), and a
    verifier that has seen none of them calls them successes.
    Returns ``states (N, D)``, ``labels``/``mask (N, K)`` over the tasks' goal atoms, ``episode (N,)`` and
    the ``atoms`` vocabulary; every task must share one embodiment (the verifier reads its states)."""
    from lbm.plan.execute import PolicySkills
    from lbm.sim import demo_seed, embodiment_of, get_task, make_env
    from lbm.sim.base import SymbolicScene

    bodies = {embodiment_of(t).name for t in tasks}
    if len(bodies) != 1:
        raise LbmError(f"A learned verifier reads one body's states; these tasks are on {', '.join(sorted(bodies))}.")
    vocabulary = sorted({a for t in tasks for a in get_task(t).goal})
    column = {a: k for k, a in enumerate(vocabulary)}
    xs, ys, ms, eps = [], [], [], []
    actor = PolicySkills(policy) if policy is not None else None
    for t in tasks:
        with make_env(t, max_steps=get_task(t).max_steps + after) as env:
            if not isinstance(env, SymbolicScene):
                raise LbmError(
                    f"{t}: a learned verifier is trained on scenes with atoms (LIBERO, robosuite), not {env.spec.suite}."
                )
            goal = get_task(t).goal
            for e in range(episodes):
                seed = demo_seed(t, seed_offset + e)
                obs = env.reset(seed)
                if actor is not None:
                    actor.restart(seed)
                left = None
                while left is None or left > 0:
                    y, m = np.zeros(len(vocabulary), np.float32), np.zeros(len(vocabulary), np.float32)
                    for a in goal:
                        y[column[a]], m[column[a]] = env.holds(a), 1.0
                    xs.append(obs.state)
                    ys.append(y)
                    ms.append(m)
                    eps.append(f"{t}#{e}" if actor is None else f"{t}#policy{e}")
                    out = env.step(env.expert_action() if actor is None else actor.next_action(obs, obs.instruction))
                    obs = out.observation
                    if out.success and left is None:
                        left = after
                    if left is not None:
                        left -= 1
                    if out.done and not out.success:
                        break
    return dict(
        states=np.asarray(xs, np.float32), labels=np.asarray(ys), mask=np.asarray(ms), episode=np.asarray(eps),
        atoms=vocabulary, embodiment=bodies.pop(),
    )  # fmt: skip


def _held_out(episodes: int, holdout: float) -> range:
    """The last ``holdout`` of ``episodes`` (none when there is only one: it is scored on its training frames)."""
    return range(max(1, round(episodes * (1 - holdout))) if episodes > 1 else episodes, episodes)


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
        cls,
        tasks: Sequence[str],
        episodes: int = 6,
        *,
        policy: Policy | None = None,
        policy_episodes: int = 0,
        steps: int = 1500,
        hidden: int = 128,
        holdout: float = 0.25,
        seed: int = 0,
    ) -> tuple[LearnedVerifier, dict]:
        """Fit on :func:`collect` rollouts of ``tasks``: ``episodes`` of the scripted expert per task and, with
        ``policy``, ``policy_episodes`` of that policy (from other scenes). The last ``holdout`` of each task's
        episodes of each source is held out; returns the verifier and its held-out precision / recall /
        accuracy over every labelled check, in all and (``policy_*``) on the policy's frames alone."""
        import torch

        data = collect(tasks, episodes)
        held = {f"{t}#{e}" for t in tasks for e in _held_out(episodes, holdout)}
        if policy is not None and policy_episodes > 0:
            more = collect(tasks, policy_episodes, seed_offset=episodes, policy=policy)
            if more["atoms"] != data["atoms"]:
                raise LbmError("The expert and policy rollouts label different atoms; this is a bug.")
            for key in ("states", "labels", "mask", "episode"):
                data[key] = np.concatenate([data[key], more[key]])
            held |= {f"{t}#policy{e}" for t in tasks for e in _held_out(policy_episodes, holdout)}
        test = np.isin(data["episode"], list(held))
        x, y, m = data["states"][~test], data["labels"][~test], data["mask"][~test]
        mean, std = x.mean(0), x.std(0) + 1e-3  # near-constant dims (object orientations) stay finite
        torch.manual_seed(seed)
        model = _mlp(x.shape[1], hidden, len(data["atoms"]))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        xt, yt, mt = (torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in ((x - mean) / std, y, m))
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            idx = torch.from_numpy(rng.integers(0, len(xt), size=min(256, len(xt))))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt[idx]), yt[idx], weight=mt[idx], reduction="sum")
            loss = loss / mt[idx].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        verifier = cls(model, data["atoms"], mean, std, data["embodiment"])
        which = test if test.any() else ~test
        metrics = verifier.score(data["states"][which], data["labels"][which], data["mask"][which])
        metrics.update(train_frames=int((~test).sum()), test_episodes=len(held), atoms=len(data["atoms"]))
        from_policy = which & np.array(["#policy" in str(e) for e in data["episode"]])
        if from_policy.any():
            scored = verifier.score(data["states"][from_policy], data["labels"][from_policy], data["mask"][from_policy])
            metrics.update({f"policy_{k}": v for k, v in scored.items()})
        return verifier, metrics

    def score(self, states: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
        """Precision, recall and accuracy against true labels ``(N, K)`` where ``mask`` says the atom is defined."""
        pred = self.probabilities(states) > 0.5
        truth, defined = labels > 0.5, mask > 0
        tp, fp = int((pred & truth & defined).sum()), int((pred & ~truth & defined).sum())
        fn, tn = int((~pred & truth & defined).sum()), int((~pred & ~truth & defined).sum())
        return dict(
            tp=tp, fp=fp, fn=fn, tn=tn, frames=int(len(states)),
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
