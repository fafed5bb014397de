"""Per-rollout records: the one schema every evaluation writes and every analysis reads.

An evaluation folder (``lbm eval --out DIR``) holds::

    manifest.json            settings, their hash, blind ids, SHA-256 of blinding.json, status
    blinding.json            blind id -> policy name and source (written before the first trial)
    records.journal.jsonl    append-only, one line per finished trial, flushed per trial
    records.parquet          the final table (written when the run completes)
    records.jsonl            the same table as JSON lines (with ``--jsonl``)
    videos/                  ``{policy_id}_{task}_{shift}_{trial}.mp4`` (with ``--video``)

:class:`TrialRecord` is the schema (one row per rollout; raw files hold the *blind* policy id).
Runner hooks (e.g. the safety columns of :mod:`lbm.safety.rollout`) and the study add columns of
their own; :func:`load_records` keeps them. A crashed or timed-out rollout is a failure
(``success=False``) with its reason; it is never dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lbm.errors import LbmError
from lbm.eval.manifest import BLINDING_FILE, MANIFEST_FILE, audit_blinding, read_blinding, read_manifest

JOURNAL_FILE = "records.journal.jsonl"
PARQUET_FILE = "records.parquet"
JSONL_FILE = "records.jsonl"


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One rollout. Field order is the column order of ``records.parquet``."""

    policy: str
    """Blind policy id ``p-xxxx`` in raw files; the policy *name* after :func:`load_records` un-blinds
    (the id is then kept in ``policy_id``)."""
    task: str
    """Simulation task name."""
    shift: str
    """Shift condition, ``none`` or e.g. ``obs_noise:low+friction:high``."""
    trial: int
    """Trial index within (task, shift): the pairing key."""
    seed: int
    """Simulator seed, ``lbm.sim.eval_seed(task, trial)``: the same for every policy."""
    success: bool
    """The task's success predicate held at some step."""
    steps: int
    """Environment steps executed."""
    return_: float
    """Sum of rewards (column ``return``)."""
    duration_s: float
    """Wall-clock seconds from the wave's first step (after env setup) to this rollout's end; the
    rollouts of one wave step interleaved, so this includes the other envs' steps."""
    failure_reason: str | None
    """None on success; otherwise ``max_steps``, ``timeout: ...``, ``policy_error: ...``,
    ``env_error: ...``, ``bad_actions: ...`` or ``worker_crashed: ...``."""
    latency_ms: float
    """Mean wall time of the (batched) ``predict_chunk`` calls this rollout took part in; NaN if none."""
    chunk_calls: int
    """Number of ``predict_chunk`` calls this rollout took part in."""
    execute_steps: int
    """Actions executed from each chunk before re-querying."""
    batch_size: int
    """Envs in this rollout's wave (the batched inference width)."""
    init_hash: str
    """16-hex digest of the initial condition: equal for every policy on one (task, shift, trial)."""
    policy_seed: int
    """Seed of the policy's sampling noise for this trial (derived from ``seed``): a rerun draws the
    same noise, so generative policies reproduce every trial."""
    worker: int
    """Worker process index (0 when in-process)."""
    timestamp: float
    """Unix time the rollout finished."""

    def to_row(self) -> dict[str, Any]:
        """The record as a JSON-able dict with the file's column names."""
        row = dataclasses.asdict(self)
        row["return"] = row.pop("return_")
        return {column: row[column] for column in COLUMNS}


def _column(field: dataclasses.Field) -> str:
    return "return" if field.name == "return_" else field.name


COLUMNS: tuple[str, ...] = tuple(_column(f) for f in dataclasses.fields(TrialRecord))
"""Record columns, in file order."""
_KINDS = {"str": "str", "str | None": "str?", "int": "int", "float": "float", "bool": "bool"}
KINDS: dict[str, str] = {_column(f): _KINDS[str(f.type)] for f in dataclasses.fields(TrialRecord)}
"""Column -> kind (``str``, ``str?`` nullable in files and "" once loaded, ``int``, ``float``, ``bool``)."""
TRIAL_KEY: tuple[str, ...] = ("policy", "task", "shift", "trial")
"""The columns that identify one trial; a duplicate is a bookkeeping error upstream."""
PAIRING_KEY: tuple[str, ...] = ("task", "shift", "trial", "seed")
"""What must be identical across policies for a comparison to be paired."""
CELL: tuple[str, ...] = ("task", "shift")
"""One table row of a comparison: a (task, shift) combination."""
REQUIRED: tuple[str, ...] = ("policy", "task", "shift", "trial", "seed", "success")
"""Columns an analysis cannot do without; the others are filled with their missing value."""


# ---- writing -----------------------------------------------------------------------------------


class JournalWriter:
    """Append-only JSON-lines journal; every record is flushed before ``write`` returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as error:
            raise LbmError(
                f"Cannot write the evaluation journal {self.path} ({error.strerror or error}). Choose a "
                "writable --out folder with free space."
            ) from None

    def write(self, record: dict) -> None:
        """Append one record (a :meth:`TrialRecord.to_row` plus hook columns) and flush it."""
        # flush, not fsync: a SIGKILL or crash of this process keeps every flushed line; only a power
        # cut could lose the last ones, and a torn last line is cut off on resume. fsync per trial
        # cost ~5% of evaluation time on a loaded CPU.
        try:
            self._file.write(json.dumps(_jsonable(record), allow_nan=True) + "\n")
            self._file.flush()
        except OSError as error:
            raise LbmError(
                f"Writing {self.path} failed ({error.strerror or error}); every finished trial before this one "
                "is kept. Free disk space and rerun the same command to resume."
            ) from None

    def close(self) -> None:
        """Flush to disk and close the file."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()


def _jsonable(record: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in record.items()}


def read_journal(path: Path, repair: bool = False) -> list[dict]:
    """Read a journal; a torn final line (process killed mid-write) is ignored, or cut off with ``repair``."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records, good_bytes = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + (1 if i < len(lines) - 1 else 0)
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise json.JSONDecodeError("not an object", line.decode(errors="replace"), 0)
            records.append(record)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i < len(lines) - 1 and any(x.strip() for x in lines[i + 1 :]):
                raise LbmError(
                    f"{path} line {i + 1} is corrupt (not a JSON record) and is followed by more records, so it is not "
                    "just an interrupted write. Inspect or delete the file; the evaluation can be rerun."
                ) from None
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(good_bytes)
            break
        good_bytes += len(line) + 1
    return records


def records_frame(records: list[dict]) -> pd.DataFrame:
    """The typed record table (pandas) from record dicts: schema columns first, in order."""
    df = pd.DataFrame.from_records(records)
    for col in COLUMNS:
        if col not in df:
            df[col] = pd.Series([None] * len(df), dtype="object")
    return _typed(df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]], "records")


def write_table(out_dir: Path, records: list[dict], jsonl: bool = False) -> list[Path]:
    """Write the final record table: ``records.parquet`` (and ``records.jsonl`` if asked). Returns paths."""
    out_dir = Path(out_dir)
    df = records_frame(records).sort_values(["task", "shift", "trial", "policy"], kind="stable")
    written = []
    try:
        tmp = out_dir / (PARQUET_FILE + ".tmp")
        df.to_parquet(tmp, index=False)
        tmp.replace(out_dir / PARQUET_FILE)  # atomic: never a half-written table that looks complete
        written.append(out_dir / PARQUET_FILE)
        if jsonl:
            tmp = out_dir / (JSONL_FILE + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for rec in df.to_dict(orient="records"):
                    f.write(json.dumps(_jsonable(rec)) + "\n")
            tmp.replace(out_dir / JSONL_FILE)
            written.append(out_dir / JSONL_FILE)
    except OSError as error:
        raise LbmError(
            f"Writing the record table into {out_dir} failed ({error.strerror or error}); the journal "
            f"{JOURNAL_FILE} holds every trial. Free disk space and rerun the command to write it."
        ) from None
    return written


def nan_mean(values: list[float]) -> float:
    """Mean of a list, NaN when empty."""
    return float(sum(values) / len(values)) if values else math.nan


# ---- reading and validating --------------------------------------------------------------------


def load_records(path: str | Path, blind: bool = False, require_pairing: bool = True) -> pd.DataFrame:
    """Load an evaluation's records, validated; un-blinded unless ``blind``.

    ``path`` is an ``lbm eval --out`` folder, a records file (``.parquet`` / ``.jsonl``) beside its
    ``blinding.json``, or a folder of records files from other tools (concatenated). Validation
    (:func:`validate_records`): required columns, value types (``success`` must be a boolean),
    at least one trial, no duplicate trials and, with ``require_pairing``, the same (task, shift,
    trial, seed) set for every policy. With ``blind=False`` the blind ids are joined to policy
    names through ``blinding.json`` (names in ``policy``, ids in ``policy_id``).
    """
    path = Path(path)
    if not path.exists():
        raise LbmError(
            f"Rollout records not found at {str(path)!r}. Pass the records file (.parquet/.jsonl) or the "
            "evaluation folder written by `lbm eval --out DIR`."
        )
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        if (path / PARQUET_FILE).exists():
            files = [path / PARQUET_FILE]
        elif (path / JOURNAL_FILE).exists():
            raise LbmError(
                f"{path} holds an unfinished evaluation (a journal but no {PARQUET_FILE}). Rerun the same "
                "`lbm eval` command to complete it; it resumes where it stopped."
            )
        else:
            files = sorted(path.rglob("*.parquet")) or sorted(path.rglob("*.jsonl"))
        if not files:
            raise LbmError(
                f"No *.parquet or *.jsonl rollout records under {str(path)!r}. Run `lbm eval --out {path}` "
                "first, or point at the records file."
            )
    else:
        files = [path]
    df = pd.concat([_read(f) for f in files], ignore_index=True) if len(files) > 1 else _read(files[0])
    df = validate_records(df, require_pairing=require_pairing, source=str(path))
    ids = set(df["policy"].astype(str))
    looks_blind = all(re.fullmatch(r"p-[0-9a-f]{4}", i) for i in ids)  # the ids lbm eval writes
    if not blind and looks_blind and not (folder / BLINDING_FILE).exists():
        raise LbmError(
            f"The records at {path} name policies only by blind ids ({', '.join(sorted(ids)[:4])}) and "
            f"{folder / BLINDING_FILE}, which maps them to policies, is missing. Copy it along with the records "
            "(or analyse blind, e.g. load_records(..., blind=True))."
        )
    if any((folder / f).exists() for f in (MANIFEST_FILE, BLINDING_FILE)):
        # An evaluation folder is read whole: a missing, empty or damaged manifest or blinding file
        # is an error naming it, never a report that silently shows blind ids or unchecked records.
        read_manifest(folder)
        if not blind:
            if not audit_blinding(folder)["ok"]:
                raise LbmError(
                    f"{folder / BLINDING_FILE} changed after the evaluation started (its SHA-256 differs from the one "
                    "manifest.json recorded), so the un-blinding cannot be trusted. Restore the original file."
                )
            df = unblind(df, folder)
    return df.reset_index(drop=True)


def _read(file: Path) -> pd.DataFrame:
    try:
        if file.suffix == ".parquet":
            return pd.read_parquet(file)
        if file.suffix in (".jsonl", ".json"):
            return pd.read_json(file, lines=True)
    except Exception as error:  # noqa: BLE001 - pyarrow / pandas raise many kinds on garbage; all mean "not a table"
        raise LbmError(
            f"{file} is not a readable records table ({type(error).__name__}: {str(error)[:200]}). Pass the "
            "records.parquet written by `lbm eval`."
        ) from None
    raise LbmError(f"Unsupported records format {file.suffix!r} ({file}); use .parquet or .jsonl.")


def validate_records(df: pd.DataFrame, require_pairing: bool = True, source: str = "records") -> pd.DataFrame:
    """Check a records table and return a typed copy (raises :class:`LbmError` naming every defect).

    Missing optional columns are added with their missing value. With ``require_pairing=False`` a
    broken pairing is a :class:`UserWarning` naming the cells instead.
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise LbmError(
            f"{source} lacks required column(s) {missing}; rollout records need at least {list(REQUIRED)} "
            f"(the full schema is lbm.eval.records.TrialRecord). Were they written by `lbm eval`?"
        )
    if len(df) == 0:
        raise LbmError(f"{source} holds zero trials; there is nothing to compare. Run the evaluation first.")
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype="object")
    df = _typed(df, source)
    dup = df.duplicated(list(TRIAL_KEY), keep=False)
    if dup.any():
        cells = df.loc[dup, list(TRIAL_KEY)].drop_duplicates().head(5).to_dict("records")
        raise LbmError(
            f"{source} has {int(dup.sum())} rows with a duplicate (policy, task, shift, trial), e.g. {cells}. "
            "Each trial must be recorded once; remove the duplicates (an interrupted run resumed into the same "
            "file?) and re-run."
        )
    problems = check_pairing(df)
    if problems:
        msg = (
            f"{source}: policies were not evaluated on the same (task, shift, trial, seed) sets, which breaks the paired "
            f"design: {'; '.join(problems[:5])}"
            + (f"; ... ({len(problems)} cells)" if len(problems) > 5 else "")
            + ". Re-run the missing trials with `lbm eval` (it resumes), or compare only complete cells."
        )
        if require_pairing:
            raise LbmError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return df


def _typed(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Cast the schema columns to their kinds, refusing values that are not of that kind.

    Written here rather than with a schema library: records are tables of up to millions of rows,
    checked column by column with vectorized fast paths (a per-row model would cost seconds).
    """
    df = df.copy()
    for col in COLUMNS:
        kind = KINDS[col]
        values = df[col]
        if kind in ("str", "str?"):
            null = values.isna()
            if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
                _refuse(~null & ~values.map(lambda v: isinstance(v, str)), values, col, source, "text")
            df[col] = values.astype(object).where(~null, "").astype(str)  # a missing failure_reason reads as ""
        elif kind == "bool":
            df[col] = _booleans(values, col, source)
        else:
            df[col] = _numbers(values, col, source, integer=kind == "int")
    return df


def _booleans(values: pd.Series, col: str, source: str) -> pd.Series:
    """``success``: booleans, or the documented equivalents 0/1 (integers, or floats exactly 0.0/1.0).

    Anything else (the strings "false" or "no", fractions, -1, missing values) is refused: counting
    it as a success or a failure would silently change every rate.
    """
    if values.dtype == bool:
        return values
    if values.dtype.kind in "iuf":
        bad = ~values.isin((0, 1))
    else:

        def ok(v: Any) -> bool:
            if isinstance(v, (bool, np.bool_)):
                return True
            return isinstance(v, (int, np.integer, float, np.floating)) and float(v) in (0.0, 1.0)

        bad = ~values.map(ok).astype(bool)
    _refuse(bad, values, col, source, "a boolean (true/false, or 1/0)")
    return values.map(bool).astype(bool)


def _numbers(values: pd.Series, col: str, source: str, integer: bool) -> pd.Series:
    """Numeric columns; an optional whole-number column's missing values become -1 (e.g. old records)."""
    missing_ok = values.isna() & (col not in REQUIRED)
    if values.dtype.kind in "iu":
        return values.astype(np.int64) if integer else values.astype(np.float64)
    if values.dtype.kind == "f":
        numeric = values
    else:

        def number(v: Any) -> float:
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                return float(v)
            return math.nan  # marks "not a number" below (values that were missing are told apart)

        numeric = values.map(number).astype(np.float64)
        not_numeric = numeric.isna() & ~values.isna()
        _refuse(not_numeric, values, col, source, "a whole number" if integer else "a number")
    if integer:
        finite = np.isfinite(numeric.to_numpy())
        whole = finite & (numeric.to_numpy() == np.round(numeric.to_numpy()))
        _refuse(pd.Series(~whole, index=values.index) & ~missing_ok, values, col, source, "a whole number")
        return numeric.where(~missing_ok, -1).astype(np.int64)
    return numeric.astype(np.float64)


def _refuse(bad: pd.Series, values: pd.Series, col: str, source: str, want: str) -> None:
    if not bad.any():
        return
    rows = np.flatnonzero(bad.to_numpy())
    shown = sorted({repr(values.iloc[i]) for i in rows[:50]})[:5]
    raise LbmError(
        f"{source}: column {col!r} must hold {want}, but {len(rows)} row(s) hold {', '.join(shown)} (rows "
        f"{', '.join(str(int(r)) for r in rows[:10])}{', ...' if len(rows) > 10 else ''}). Fix the records "
        "at their source; lbm does not guess what such values mean."
    )


def check_pairing(df: pd.DataFrame) -> list[str]:
    """One message per (task, shift) cell whose policies differ in their (trial, seed) sets (empty: paired)."""
    problems = []
    policies = sorted(df["policy"].unique())
    for (task, shift), g in df.groupby(list(CELL), sort=True):
        sets = {p: set(zip(gp["trial"], gp["seed"])) for p, gp in g.groupby("policy")}
        absent = [p for p in policies if p not in sets]
        union = set().union(*sets.values())
        bad = {p: len(union - s) for p, s in sets.items() if s != union}
        if absent or bad:
            parts = []
            if absent:
                parts.append(f"no trials for {absent}")
            if bad:
                parts.append("missing or re-seeded trials: " + ", ".join(f"{p} ({k})" for p, k in bad.items()))
            problems.append(f"task={task!r} shift={shift!r}: " + "; ".join(parts))
    return problems


def cells(df: pd.DataFrame, policy: str, by: tuple[str, ...] = CELL) -> dict[Hashable, tuple[int, int]]:
    """Per-stratum counts of one policy, ``{(task, shift): (successes, trials)}``: what :mod:`lbm.stats` takes."""
    g = df[df["policy"] == policy].groupby(list(by), sort=True)["success"]
    return {(k if isinstance(k, tuple) else (k,)): (int(v.sum()), int(v.size)) for k, v in g}  # pyright: ignore[reportUnknownArgumentType]


def unblind(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Join blind policy ids to policy names using ``folder/blinding.json``: the analysis-time join.

    Returns a copy where ``policy`` holds the policy *name* and ``policy_id`` the blind id. A table
    that is already un-blinded (has ``policy_id``) is returned unchanged.
    """
    if "policy_id" in df.columns:
        return df
    mapping = read_blinding(Path(folder))
    unknown = sorted(set(df["policy"].astype(str)) - set(mapping))
    if unknown:
        raise LbmError(
            f"Records name blind policy id(s) {', '.join(unknown)} that {Path(folder) / BLINDING_FILE} does not "
            "map. The records and the mapping come from different evaluations; keep each run's files together."
        )
    df = df.rename(columns={"policy": "policy_id"})
    df.insert(0, "policy", df["policy_id"].astype(str).map({k: v.name for k, v in mapping.items()}))
    return df
