"""Reading and writing the small metadata files every package keeps (one schema per file).

Each JSON file lbm writes or reads (``manifest.json``, ``blinding.json``, ``meta/info.json``,
``meta/stats.json``, ``trainer/state.json``) has a pydantic model; :func:`read_model` turns every
way it can be bad (missing, unreadable, not JSON, wrong types or shapes) into one
:class:`~lbm.errors.LbmError` naming the file and the fields.
"""

from __future__ import annotations

import hashlib
import json
import os
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
