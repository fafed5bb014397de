"""The schemas of a dataset's metadata files: ``meta/info.json`` and ``meta/stats.json``.

LeRobot v3 writes more than lbm reads; unknown fields are kept (``extra="allow"``). What lbm does
read is typed here, so a file with wrong types or shapes fails at open with the file and field
named, instead of as a ``KeyError`` (or a silently wrong width) deep inside training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lbm.data.normalize import FeatureStats
from lbm.errors import LbmError
from lbm.files import read_model
from lbm.schema import ACTION, STATE


class FeatureSpec(BaseModel):
    """One entry of ``info.json``'s ``features``: dtype and shape (LeRobot's layout)."""

    model_config = ConfigDict(extra="allow")
    dtype: str
    shape: list[int] = Field(min_length=1)
    names: Any = None

    @field_validator("shape")
    @classmethod
    def _positive(cls, shape: list[int]) -> list[int]:
        if any(d < 1 for d in shape):
            raise ValueError(f"every dimension must be at least 1, got {shape}")
        return shape

    @property
    def width(self) -> int:
        """Values per frame (the product of the shape)."""
        return math.prod(self.shape)


class DatasetInfo(BaseModel):
    """``meta/info.json``: the fields lbm reads, typed; everything else passes through."""

    model_config = ConfigDict(extra="allow")
    codebase_version: str
    fps: float = Field(gt=0, allow_inf_nan=False)
    features: dict[str, FeatureSpec]
    total_episodes: int = Field(default=0, ge=0)
    total_frames: int = Field(default=0, ge=0)
    total_tasks: int = Field(default=0, ge=0)
    data_path: str | None = None
    video_path: str | None = None
    robot_type: str | None = None
    lbm: dict[str, Any] | None = None


def read_info(path: Path) -> DatasetInfo:
    """Validate ``meta/info.json``; it must declare float state and action features."""
    info = read_model(path, DatasetInfo, "Regenerate the dataset, or fix the named field.")
    for key in (STATE, ACTION):
        if key not in info.features:
            raise LbmError(f"{path} declares no {key!r} feature; lbm needs state and action per frame.")
        if info.features[key].dtype not in ("float32", "float64", "float16"):
            raise LbmError(f"{path}: feature {key!r} has dtype {info.features[key].dtype!r}; lbm needs float values.")
    return info


def read_stats(path: Path, widths: dict[str, int]) -> dict[str, FeatureStats]:
    """``meta/stats.json``: the stats of the features in ``widths`` (feature -> width), validated.

    Other entries (e.g. a foreign dataset's image stats) are skipped. A listed feature whose stats
    lack a field, hold non-numbers, disagree in length with each other or with the feature's width,
    have a negative std or a min above its max is an error naming the file, feature and field.
    """
    fix = "Regenerate the dataset, or delete the file to have the statistics recomputed."
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LbmError(f"{path} is not readable JSON ({error}). {fix}") from None
    if not isinstance(raw, dict):
        raise LbmError(f"{path} must hold an object of feature -> statistics, got {type(raw).__name__}. {fix}")
    out = {}
    for key, width in widths.items():
        if key not in raw:
            continue
        try:
            stats = _FeatureStatsFile.model_validate(raw[key])
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
            raise LbmError(f"{path}: the statistics of {key!r} are invalid ({problems}). {fix}") from None
        lengths = {f: len(getattr(stats, f)) for f in FeatureStats.FIELDS}
        if set(lengths.values()) != {width}:
            raise LbmError(f"{path}: the statistics of {key!r} have lengths {lengths} but the feature has width {width}. {fix}")
        s = FeatureStats.from_json(raw[key])
        bad = [d for d in range(width) if s.std[d] < 0 or s.min[d] > s.max[d]]
        if bad:
            raise LbmError(
                f"{path}: the statistics of {key!r} are inconsistent at dimension(s) {bad} (std < 0 or min > max). {fix}"
            )
        out[key] = s
    return out


class _FeatureStatsFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    q01: list[float]
    q99: list[float]
    count: int | list[int] = 0
