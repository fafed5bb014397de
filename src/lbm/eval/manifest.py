"""The files that make an evaluation auditable: ``manifest.json`` and ``blinding.json``.

Each file has one schema (pydantic models below: a real schema library gives field-level errors for
free), and a file that does not match is an :class:`LbmError` naming the file and the field, never a
traceback or a silently wrong run.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

import lbm
from lbm.files import read_model, write_json_atomic

MANIFEST_FILE = "manifest.json"
BLINDING_FILE = "blinding.json"


class BlindEntry(BaseModel):
    """One policy of an evaluation, as the blinding file names it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    source: str


class Blinding(BaseModel):
    """``blinding.json``: blind id -> policy."""

    model_config = ConfigDict(extra="forbid")
    about: str = ""
    policies: dict[str, BlindEntry]


class Manifest(BaseModel):
    """``manifest.json``: the settings of an evaluation and the digest of its blinding file."""

    model_config = ConfigDict(extra="allow")
    about: str = ""
    lbm_version: str
    settings: dict[str, Any]
    settings_hash: str
    policy_ids: list[str]
    blinding_sha256: str
    n_items: int
    created: float
    status: Literal["running", "complete"]


def settings_hash(settings: dict) -> str:
    """SHA-256 of a canonical JSON rendering of the settings that define an evaluation (or a study stage)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def write_blinding(out_dir: Path, policies: dict[str, tuple[str, str]]) -> str:
    """Write ``blinding.json`` (blind id -> (name, source)) and return its SHA-256."""
    payload = Blinding(
        about="Blind policy id -> policy. Join with the records only at analysis (lbm.eval.records.load_records).",
        policies={pid: BlindEntry(name=n, source=s) for pid, (n, s) in policies.items()},
    )
    return write_json_atomic(Path(out_dir) / BLINDING_FILE, payload.model_dump())


def read_blinding(out_dir: Path) -> dict[str, BlindEntry]:
    """Read ``blinding.json``: blind id -> :class:`BlindEntry`."""
    blinding = read_model(
        Path(out_dir) / BLINDING_FILE,
        Blinding,
        "It maps the blind policy ids of the records to policy names and is written by `lbm eval` before the "
        "first trial; copy it along with the records.",
    )
    return blinding.policies


def new_manifest(settings: dict, digest: str, policy_ids: list[str], blinding_sha: str, n_items: int) -> Manifest:
    """The manifest of an evaluation that is about to start."""

    return Manifest(
        about="lbm eval: settings of this evaluation. Policies appear only as blind ids; see blinding.json.",
        lbm_version=lbm.__version__,
        settings={k: v for k, v in settings.items() if k != "policies"},
        settings_hash=digest,
        policy_ids=sorted(policy_ids),
        blinding_sha256=blinding_sha,
        n_items=n_items,
        created=time.time(),
        status="running",
    )


def write_manifest(out_dir: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically."""
    write_json_atomic(Path(out_dir) / MANIFEST_FILE, manifest.model_dump())


def read_manifest(out_dir: Path) -> Manifest:
    """Read and validate ``manifest.json``."""
    return read_model(
        Path(out_dir) / MANIFEST_FILE,
        Manifest,
        "It is written by `lbm eval` before the first trial. Rerun the evaluation into a new --out folder.",
    )


def audit_blinding(out_dir: Path) -> dict:
    """Check that ``blinding.json`` is the file recorded in ``manifest.json`` before the run.

    Returns ``{"ok": bool, "recorded_sha256", "actual_sha256", "ids"}``; ``ok`` is False if the mapping
    was edited after the evaluation started.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    ids = sorted(read_blinding(out_dir))
    actual = hashlib.sha256((out_dir / BLINDING_FILE).read_bytes()).hexdigest()
    return {
        "ok": actual == manifest.blinding_sha256,
        "recorded_sha256": manifest.blinding_sha256,
        "actual_sha256": actual,
        "ids": ids,
    }
