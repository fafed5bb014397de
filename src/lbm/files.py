"""Reading and writing the small metadata files every package keeps (one schema per file).

Each JSON file lbm writes or reads (``manifest.json``, ``blinding.json``, ``meta/info.json``,
``meta/stats.json``, ``trainer/state.json``) has a pydantic model; :func:`read_model` turns every
way it can be bad (missing, unreadable, not JSON, wrong types or shapes) into one
:class:`~lbm.errors.LbmError` naming the file and the fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from lbm.errors import LbmError

M = TypeVar("M", bound=BaseModel)


def read_model(path: Path, model: type[M], what: str) -> M:
    """Read ``path`` as JSON and validate it with the pydantic ``model``; errors name the file and the fields.

    ``what`` says what the file is for and what to do about a bad one (appended to every error).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LbmError(f"{path} is missing: {what}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LbmError(f"{path} cannot be read ({error}): {what}") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in error.errors()[:5])
        raise LbmError(f"{path} is not a valid {path.name} ({problems}). {what}") from None


def write_json_atomic(path: Path, payload: dict) -> str:
    """Write ``payload`` as JSON to ``path`` atomically (temporary file, fsync, rename); return its SHA-256."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise LbmError(
            f"Cannot write {path} ({error.strerror or error}). Choose a writable --out folder with free space."
        ) from None
    return hashlib.sha256(text.encode()).hexdigest()


def os_error(error: OSError, what: str, where: Path | str) -> LbmError:
    """An :class:`LbmError` for a failed read or write: what, where, why, and what to do."""
    reason = error.strerror or str(error)
    culprit = f" ({error.filename})" if error.filename and str(error.filename) != str(where) else ""
    hint = {
        27: "the disk (or the process's file-size limit) is full",
        28: "the disk is full",
        20: "a part of the path is a file, not a folder",
        21: "the path is a folder where a file was expected",
        13: "permission denied",
        1: "the location is not writable",
        30: "the file system is read-only",
    }.get(error.errno or -1, reason)
    return LbmError(f"Cannot write {what} at {where}: {hint}{culprit}. Choose another location, or free space, and rerun.")


@contextlib.contextmanager
def writing(what: str, where: Path | str) -> Iterator[None]:
    """Turn any ``OSError`` inside the block into :func:`os_error` (the writer's boundary)."""
    try:
        yield
    except OSError as error:
        raise os_error(error, what, where) from None
