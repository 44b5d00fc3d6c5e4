"""`ops/runs`: one row per stage run, with row counts and the Delta versions read and written."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Iterator

from lakemine.core.errors import InputError, StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What a stage fills in while it runs; written to ops/runs when it ends."""

    stage: str
    as_of: date | None
    params: dict
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    status: str = "running"
    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    # data files each output's commit added and removed (filled in from Delta when the run is written)
    files_added: dict[str, int] = field(default_factory=dict)
    files_removed: dict[str, int] = field(default_factory=dict)
    message: str | None = None
    finished_at: datetime | None = None
    # what the stage hands back to its caller besides the counts (not written to ops/runs)
    result: Any = None

    def row(self) -> tuple:
        return (
            self.run_id,
            self.stage,
            self.as_of,
            self.status,
            self.started_at.replace(tzinfo=None),
            (self.finished_at or datetime.now(timezone.utc)).replace(tzinfo=None),
            self.rows_in,
            self.rows_out,
            self.rows_quarantined,
            self.rows_duplicate,
            dict(self.quarantine_reasons),
            dict(self.inputs),
            dict(self.outputs),
            json.dumps(self.params, sort_keys=True, default=str),
            self.message,
            dict(self.files_added),
            dict(self.files_removed),
        )


def write_run(lake: Lake, run: Run) -> None:
    """Append `run` to ops/runs, with the files each of its output commits touched (a table
    from before those columns gains them)."""
    for table, version in run.outputs.items():
        if table not in run.files_added and version is not None:
            try:
                run.files_added[table], run.files_removed[table] = lake.files_touched(table, version)
            except Exception:  # bookkeeping must not fail the run
                log.warning("no file metrics for %s version %s", table, version)
    df = lake.spark.createDataFrame([run.row()], schemas.RUNS_SCHEMA)
    lake.append(df, schemas.OPS_RUNS, merge_schema=True)


@contextmanager
def record_run(lake: Lake, stage: str, as_of: date | None, params: dict) -> Iterator[Run]:
    """Yield a Run; on exit append it to ops/runs as succeeded, skipped or failed.

    Unusable input (InputError) writes nothing, as the contract asks; every other failure,
    a run the stage refuses (UsageError, e.g. too few customers for k) included, is recorded
    with its message and re-raised.
    """
    run = Run(stage=stage, as_of=as_of, params=params)
    try:
        yield run
    except InputError:
        raise
    except Exception as exc:
        run.status = "failed"
        run.message = f"{type(exc).__name__}: {str(exc)[:500]}"
        run.finished_at = datetime.now(timezone.utc)
        try:
            write_run(lake, run)
        except Exception:  # the original error matters more than the bookkeeping
            log.exception("could not record the failed run in %s", schemas.OPS_RUNS)
        raise
    if run.status == "running":
        run.status = "succeeded"
    run.finished_at = datetime.now(timezone.utc)
    write_run(lake, run)


def conservation_check(run: Run) -> None:
    """Every input row is in the output, the quarantine, or counted as a duplicate."""
    accounted = run.rows_out + run.rows_quarantined + run.rows_duplicate
    if accounted != run.rows_in:
        raise StageError(
            f"{run.stage}: conservation broken: {run.rows_in} rows in, {run.rows_out} out + "
            f"{run.rows_quarantined} quarantined + {run.rows_duplicate} duplicates = {accounted}"
        )


def deterministic_run_id(stage: str, as_of: date, params: dict, inputs: dict) -> str:
    """Same stage, date, parameters and input versions -> same run_id, so re-runs write equal rows."""
    key = json.dumps([stage, as_of.isoformat(), params, inputs], sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:16]
