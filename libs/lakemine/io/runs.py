"""`ops/runs`: one row per stage run, with row counts and the Delta versions read and written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterator

from lakemine.core import storage
from lakemine.core.errors import InputError, StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake

log = logging.getLogger(__name__)

ATTEMPTS = "_attempts"  # <lake>/_attempts/<run_id>.json: one marker per stage run in progress
# a marker from another host (whose processes this one cannot see) counts as abandoned after
STALE_AFTER = timedelta(hours=24)
# in the message of a run that ended after its sealed last commit and was recorded by the next
RECORDED_LATE = "recorded by the next run on the lake"


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
    # its attempt marker under <lake>/_attempts/ while it runs (see record_run, seal)
    marker: str | None = field(default=None, repr=False, compare=False)

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


    def record(self) -> dict:
        """The fields ops/runs gets, as JSON (see `seal`)."""
        return {"stage": self.stage, "as_of": self.as_of.isoformat() if self.as_of else None, "params": self.params,
                "run_id": self.run_id, "started_at": self.started_at.isoformat(), "status": self.status,
                "rows_in": self.rows_in, "rows_out": self.rows_out, "rows_quarantined": self.rows_quarantined,
                "rows_duplicate": self.rows_duplicate, "quarantine_reasons": dict(self.quarantine_reasons),
                "inputs": dict(self.inputs), "outputs": dict(self.outputs), "message": self.message}

    @classmethod
    def from_record(cls, record: dict) -> Run:
        """A Run from `record()`'s fields (or a marker's: keys that are not fields are left aside)."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in record.items() if k in known}
        fields["as_of"] = date.fromisoformat(record["as_of"]) if record.get("as_of") else None
        fields["started_at"] = datetime.fromisoformat(record["started_at"])
        return cls(**fields)


def write_run(lake: Lake, run: Run) -> None:
    """Append `run` to ops/runs (`write_runs`)."""
    write_runs(lake, [run])


def write_runs(lake: Lake, runs: list[Run]) -> None:
    """Append `runs` to ops/runs in one commit, with the files each of their output commits
    touched (a table from before those columns gains them)."""
    for run in runs:
        for table, version in run.outputs.items():
            if table not in run.files_added and version is not None:
                try:
                    run.files_added[table], run.files_removed[table] = lake.files_touched(table, version)
                except Exception:  # bookkeeping must not fail the run
                    log.warning("no file metrics for %s version %s", table, version)
    df = lake.spark.createDataFrame([run.row() for run in runs], schemas.RUNS_SCHEMA)
    lake.append(df, schemas.OPS_RUNS, merge_schema=True)


def _attempts(lake: Lake) -> str:
    return f"{lake.root}/{ATTEMPTS}"


def _alive(marker: dict) -> bool:
    """Whether the process that wrote an attempt marker may still run: on this host, its pid
    with the same start time; on another host, until STALE_AFTER has passed."""
    if marker.get("host") != socket.gethostname():
        started = datetime.fromisoformat(marker["started_at"])
        return datetime.now(timezone.utc) - started < STALE_AFTER
    if marker.get("pid_start") is None:  # no /proc here: whether the pid runs at all
        try:
            os.kill(marker["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # runs, as another user
            return True
        return True
    return _process_start(marker["pid"]) == marker["pid_start"]


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (None when it does not run):
    a pid with another start time is a new process that reused the number."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def record_abandoned(lake: Lake) -> list[Run]:
    """Attempts whose process ended without finishing (killed, out of memory, machine lost)
    become rows of ops/runs: failed, with when they started and what ended them unknown; or,
    when the process ended after its sealed last commit (`seal`), succeeded with the counts it
    sealed, since its rerun has nothing left to do and would not record them.

    A marker is claimed by renaming it to `.claimed~HOST~PID~PID_START~EPOCH~ID.json`, so of two
    runs one records it; a claim whose claimer died before recording it is claimed again."""
    found = []
    for name in storage.list_files(_attempts(lake)):
        if not name.endswith(".json") or name.startswith(".tmp"):
            continue
        location = f"{_attempts(lake)}/{name}"
        claimer = _claimer(name)
        if name.startswith(".") and (claimer is None or _alive(claimer)):  # being recorded by another run
            continue
        try:
            marker = storage.read_json(location)
        except (OSError, ValueError):  # written by a newer process, or gone meanwhile
            continue
        if claimer is None and _alive(marker):
            continue
        claimed = f"{_attempts(lake)}/{_claim_name()}"
        if not storage.move(location, claimed):  # another run found it first and records it
            continue
        try:
            run = None if _in_ops_runs(lake, marker) else (_completed(lake, marker.get("sealed")) or _abandoned(marker))
            if run is not None:  # else killed after writing its own row, before removing the marker
                write_run(lake, run)
        except BaseException:  # not recorded: put it back for the next run
            storage.move(claimed, location)
            raise
        storage.delete(claimed)
        if run is not None:
            log.warning("%s for %s: an earlier attempt (run %s) ended without recording itself; recorded as %s",
                        run.stage, run.as_of, run.run_id, "abandoned" if run.status == "failed" else run.status)
            found.append(run)
    return found


def _claim_name() -> str:
    return "~".join((".claimed", socket.gethostname(), str(os.getpid()), str(_process_start(os.getpid())),
                     str(int(datetime.now(timezone.utc).timestamp())), uuid.uuid4().hex)) + ".json"


def _claimer(name: str) -> dict | None:
    """Who claimed a marker (as `_alive` reads a marker), from the claim's name; None for a marker."""
    parts = name[:-len(".json")].split("~")
    if parts[0] != ".claimed" or len(parts) != 6:
        return None
    return {"host": parts[1], "pid": int(parts[2]), "pid_start": None if parts[3] == "None" else parts[3],
            "started_at": datetime.fromtimestamp(int(parts[4]), timezone.utc).isoformat()}


def _abandoned(marker: dict) -> Run:
    return Run.from_record({
        **marker, "params": marker.get("params") or {}, "status": "failed",
        "message": f"abandoned: the process (pid {marker['pid']} on {marker['host']}) ended without finishing "
                   "(killed or lost; finished_at is when this was found); its writes, if any, were committed "
                   "whole or not at all"})


def _in_ops_runs(lake: Lake, marker: dict) -> bool:
    """Whether the marker's run already has its ops/runs row (the pair stage, start time
    finds it even when the stage gave its run a deterministic id after the marker was written)."""
    if not lake.exists(schemas.OPS_RUNS):
        return False
    started = datetime.fromisoformat(marker["started_at"]).replace(tzinfo=None)
    rows = lake.read_table(schemas.OPS_RUNS).where(f"stage = '{marker['stage']}'").select("run_id", "started_at").collect()
    return any(r["run_id"] == marker["run_id"] or r["started_at"] == started for r in rows)


def _completed(lake: Lake, sealed: dict | None, note: str | None = None) -> Run | None:
    """The sealed run, when its last commit is in the lake (its whole history searched); None
    when that commit was never made."""
    if not sealed:
        return None
    table = sealed["table"]
    if not lake.exists(table):
        return None
    try:
        version = lake.version_of_write(table, sealed["tag"], full_history=True)
    except StageError:  # no commit carries the tag
        return None
    run = Run.from_record(sealed["run"])
    run.outputs[table] = version
    if sealed.get("rows_out_of_commit"):
        run.rows_out = lake.rows_written(table, version)
    note = note or (f"{RECORDED_LATE}: the process ended after its last commit, before writing this row "
                    "(finished_at is when this was found)")
    run.message = f"{run.message}; {note}" if run.message else note
    return run


def seal(run: Run, table: str, rows_out_of_commit: bool = False) -> str:
    """Call just before a stage's last data commit, after which a rerun finds nothing to do
    (a noop): the attempt marker gets the run as it will be recorded and the tag that commit
    must carry (returned: pass it to the Lake write as `tag`). A process killed after that
    commit and before its ops/runs row is then recorded by the next run as it would have
    recorded itself, not as abandoned with its counts lost. `rows_out_of_commit`: the run's
    rows_out are the rows that commit writes (read from it)."""
    tag = uuid.uuid4().hex
    if run.marker is not None:
        try:
            marker = storage.read_json(run.marker)
        except FileNotFoundError:  # claimed as stale by a run on another host after STALE_AFTER
            log.warning("%s: attempt marker %s is gone; this run cannot be sealed", run.stage, run.marker)
            return tag
        record = run.record()
        if record["status"] == "running":
            record["status"] = "succeeded"
        marker["sealed"] = {"table": table, "tag": tag, "rows_out_of_commit": rows_out_of_commit, "run": record}
        storage.write_json(run.marker, marker)
    return tag


@contextmanager
def record_run(lake: Lake, stage: str, as_of: date | None, params: dict) -> Iterator[Run]:
    """Yield a Run; on exit append it to ops/runs as succeeded, skipped or failed.

    Unusable input (InputError) writes nothing, as the contract asks; every other failure,
    a run the stage refuses (UsageError, e.g. too few customers for k) included, is recorded
    with its message and re-raised. A process killed mid-run cannot record itself: an attempt
    marker under <lake>/_attempts/ lives while it runs, and the next run on the lake records
    such an attempt (`record_abandoned`); the marker also stays when the run could not write
    its row (interrupted, or ops/runs not writable), for the next run to record.
    """
    with record_runs(lake, stage, [as_of], params) as (run,):
        yield run


@contextmanager
def record_runs(lake: Lake, stage: str, dates: list[date | None], params: dict) -> Iterator[list[Run]]:
    """`record_run` for one run of a stage that covers several logical dates: a Run and an
    attempt marker per date (in the order of `dates`), and on exit their rows in one ops/runs
    commit, not one commit each. A failure records every one of them as failed."""
    record_abandoned(lake)
    runs = []
    for as_of in dates:
        run = Run(stage=stage, as_of=as_of, params=params)
        run.marker = f"{_attempts(lake)}/{run.run_id}.json"
        storage.write_json(run.marker, {
            "stage": stage, "as_of": as_of.isoformat() if as_of else None, "params": params, "run_id": run.run_id,
            "started_at": run.started_at.isoformat(), "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
        })
        runs.append(run)
    recorded: list[Run] = []
    try:
        yield runs
    except InputError:
        recorded = runs  # nothing to record
        raise
    except Exception as exc:
        recorded = [run for run in runs if _record_failure(lake, run, exc)]
        raise
    else:
        for run in runs:
            if run.status == "running":
                run.status = "succeeded"
            run.finished_at = datetime.now(timezone.utc)
        write_runs(lake, runs)
        recorded = runs
    finally:
        for run in recorded:
            storage.delete(run.marker)


def _record_failure(lake: Lake, run: Run, exc: Exception) -> bool:
    """Write the failed run's row; whether it was written. An error after the run's sealed
    last commit records the sealed run, which did finish, with the error in its message."""
    error = f"{type(exc).__name__}: {str(exc)[:500]}"
    try:
        done = _completed(lake, _sealed(run), note=f"failed after its last commit: {error}")
        if done is None:
            run.status, run.message = "failed", error
            done = run
        done.finished_at = datetime.now(timezone.utc)
        write_run(lake, done)
        return True
    except Exception:  # the original error matters more than the bookkeeping
        log.exception("could not record the failed run in %s", schemas.OPS_RUNS)
        return False


def _sealed(run: Run) -> dict | None:
    try:
        return storage.read_json(run.marker).get("sealed") if run.marker else None
    except (OSError, ValueError):
        return None


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
