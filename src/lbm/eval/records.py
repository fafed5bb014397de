"""Per-rollout records: the one table every evaluation writes and every analysis reads.

An evaluation folder (``lbm eval --out DIR``) holds::

    manifest.json            settings, their hash, blind ids, SHA-256 of blinding.json, status
    blinding.json            blind id -> policy name and source (written before the first trial)
    records.journal.jsonl    append-only, one line per finished trial, flushed per trial
    records.parquet          the final table (written when the run completes)
    records.jsonl            the same table as JSON lines (with ``--jsonl``)
    videos/                  ``{policy_id}_{task}_{shift}_{trial}.mp4`` (with ``--video``)

Record schema (one row per rollout; the raw files hold the *blind* id in ``policy``):

=================  =======  ======================================================================
column             type     meaning
=================  =======  ======================================================================
policy             str      blind policy id ``p-xxxx`` (raw files); the policy name after
                            :func:`load_records` joins ``blinding.json`` (id kept in ``policy_id``)
task               str      simulation task name
shift              str      shift condition, ``none`` or e.g. ``obs_noise:low+friction:high``
trial              int      trial index within (task, shift) — the pairing key
seed               int      simulator seed, ``lbm.sim.eval_seed(task, trial)``, same for all policies
success            bool     the task's success predicate held at some step
steps              int      environment steps executed
return             float    sum of rewards
duration_s         float    wall-clock seconds from the wave's first step (after env setup) to this
                            rollout's end; rollouts of one wave step interleaved, so this includes
                            the other envs' steps
failure_reason     str|null null on success; otherwise ``max_steps`` (ran out of steps),
                            ``timeout: ...`` (exceeded ``--trial-timeout-s``), ``policy_error: ...``,
                            ``env_error: ...``, ``bad_actions: ...`` or ``worker_crashed: ...``
latency_ms         float    mean wall time of the (batched) ``predict_chunk`` calls this rollout took
                            part in; NaN if none completed
chunk_calls        int      number of ``predict_chunk`` calls this rollout took part in
execute_steps      int      actions executed from each chunk before re-querying
batch_size         int      number of envs in this rollout's wave (batched inference width)
init_hash          str      16-hex digest of the initial condition (object/goal positions): equal for
                            every policy on the same (task, shift, trial) — an audit of the pairing
worker             int      worker process index (0 when in-process)
timestamp          float    Unix time the rollout finished
=================  =======  ======================================================================

A crashed or timed-out rollout is a failure (``success=False``) with its reason; it is never dropped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from lbm.errors import LbmError

JOURNAL_FILE = "records.journal.jsonl"
PARQUET_FILE = "records.parquet"
JSONL_FILE = "records.jsonl"

COLUMNS: dict[str, str] = {
    "policy": "str",
    "task": "str",
    "shift": "str",
    "trial": "int64",
    "seed": "int64",
    "success": "bool",
    "steps": "int64",
    "return": "float64",
    "duration_s": "float64",
    "failure_reason": "object",
    "latency_ms": "float64",
    "chunk_calls": "int64",
    "execute_steps": "int64",
    "batch_size": "int64",
    "init_hash": "str",
    "worker": "int64",
    "timestamp": "float64",
}
"""Record columns and their pandas dtypes, in file order."""


class JournalWriter:
    """Append-only JSON-lines journal; every record is flushed and fsynced before ``write`` returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict) -> None:
        """Append one record and flush it to the OS (a killed process loses nothing already written)."""
        self._file.write(json.dumps(_jsonable(record), allow_nan=True) + "\n")
        # flush, not fsync: a SIGKILL or crash of this process keeps every flushed line; only a power
        # cut could lose the last ones, and a torn last line is cut off on resume. fsync per trial
        # cost ~5% of evaluation time on a loaded CPU.
        self._file.flush()

    def close(self) -> None:
        """Flush to disk and close the file."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _jsonable(record: dict) -> dict:
    out = {}
    for k, v in record.items():
        if hasattr(v, "item"):  # numpy scalars
            v = v.item()
        out[k] = v
    return out


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
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 and any(x.strip() for x in lines[i + 1 :]):
                raise LbmError(
                    f"{path} line {i + 1} is corrupt (not JSON) and is followed by more records, so it is not "
                    "just an interrupted write. Inspect or delete the file; the evaluation can be rerun."
                ) from None
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(good_bytes)
            break
        good_bytes += len(line) + 1
    return records


def records_frame(records: list[dict]):
    """Build the typed record table (pandas) from record dicts, columns in schema order."""
    import pandas as pd

    df = pd.DataFrame.from_records(records)
    for col, dtype in COLUMNS.items():
        if col not in df:
            df[col] = pd.Series([None] * len(df), dtype="object" if dtype in ("str", "object") else dtype)
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[list(COLUMNS) + extra]
    for col, dtype in COLUMNS.items():
        if dtype not in ("str", "object") and len(df):
            df[col] = df[col].astype(dtype)
    return df


def write_table(out_dir: Path, records: list[dict], jsonl: bool = False) -> list[Path]:
    """Write the final record table: ``records.parquet`` (and ``records.jsonl`` if asked). Returns paths."""
    out_dir = Path(out_dir)
    df = records_frame(records).sort_values(["task", "shift", "trial", "policy"], kind="stable")
    written = []
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
    return written


def unblind(df, folder: Path):
    """Join blind policy ids to policy names using ``folder/blinding.json``: the analysis-time join.

    Returns a copy where ``policy`` holds the policy *name* and ``policy_id`` the blind id. A table
    that is already un-blinded (has ``policy_id``) is returned unchanged. Raises :class:`LbmError`
    if the records name ids the mapping does not know (records and mapping from different runs).
    """
    from lbm.eval.schedule import read_blinding

    if "policy_id" in df.columns:
        return df
    mapping = read_blinding(Path(folder))
    unknown = sorted(set(df["policy"].astype(str)) - set(mapping))
    if unknown:
        raise LbmError(
            f"Records name blind policy id(s) {', '.join(unknown)} that {Path(folder) / 'blinding.json'} does not "
            "map. The records and the mapping come from different evaluations; keep each run's files together."
        )
    df = df.rename(columns={"policy": "policy_id"})
    df.insert(0, "policy", df["policy_id"].astype(str).map({k: v.name for k, v in mapping.items()}))
    return df


def load_records(path: Path, require_pairing: bool = True):
    """Load an evaluation's records, validated and **un-blinded** (policy names in ``policy``).

    ``path`` is an ``lbm eval --out`` folder or a records file beside its ``blinding.json``. Loading
    and validation are :func:`lbm.eval.stats.load_records` (the one loader: missing columns, zero
    trials, duplicates, broken pairing); this adds the join of blind ids to names. Records without a
    ``blinding.json`` (written by other tools) are returned as they are.
    """
    from lbm.eval import stats

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir() and not (path / PARQUET_FILE).exists() and (path / JOURNAL_FILE).exists():
        raise LbmError(
            f"{path} holds an unfinished evaluation (a journal but no {PARQUET_FILE}). Rerun the same `lbm eval` "
            "command to complete it; it resumes where it stopped."
        )
    df = stats.load_records(path / PARQUET_FILE if path.is_dir() and (path / PARQUET_FILE).exists() else path,
                            require_pairing=require_pairing)
    if (folder / "blinding.json").exists():
        df = unblind(df, folder)
    return df.reset_index(drop=True)


def nan_mean(values: list[float]) -> float:
    """Mean of a list, NaN when empty."""
    return float(sum(values) / len(values)) if values else math.nan
