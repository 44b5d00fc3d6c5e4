"""A stage killed at a random instant (SIGKILL to its whole process group) and rerun leaves
the lake of a run never killed: bench/faults.py's harness, one seeded instant for each of
ingest, clean and features (the bench runs 20 or more per stage, all seven stages)."""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import date

import pytest

from conftest import REPO
from lakemine.cli import main
from lakemine.core import storage

sys.path.insert(0, str(REPO / "bench"))
import faults  # noqa: E402 - bench/faults.py, the harness

# the stages with several commits each (fpgrowth and kmeans, one commit each, get 20 instants in the bench)
SUITE_STAGES = ("ingest", "clean", "features")
TRIALS = dict.fromkeys(SUITE_STAGES, 1)  # ingest and clean are also killed right after their last commit below

pytestmark = pytest.mark.slow


def run_here(argv: list[str]) -> float:
    """`lakemine ARGV` in this process (the suite's Spark session) with the killed runs'
    configuration; its wall time."""
    saved = {k: os.environ.get(k) for k in faults.STAGE_ENV}
    os.environ.update(faults.STAGE_ENV)
    t0 = time.perf_counter()
    try:
        assert main(argv) == 0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The lakes before and after each stage, built in this process (the bench runs every stage
    as its own process). A stage's T is its time here plus the time a stage process takes to
    start Python and Spark, measured once."""
    root = tmp_path_factory.mktemp("faults")
    run_here(faults.generate_argv(root / "raw", customers=40, days=120, seed=5))
    start = faults.subprocess_runner(sys.executable)(["kmeans", "--lake", str(root / "empty"), "--k", "2"], check=False)
    durations = {stage: start + t for stage, t in faults.prepare(root, SUITE_STAGES, run_here).items()}
    return root, durations


@pytest.mark.parametrize("stage", SUITE_STAGES)
def test_a_stage_killed_at_random_instants_and_rerun_equals_a_run_never_killed(spark, prepared, stage):
    root, durations = prepared
    for i, delay in enumerate(faults.delays(stage, durations[stage], TRIALS[stage], seed=5)):
        result = faults.trial(spark, root, sys.executable, stage, i, delay, run_here)
        assert all(v == 0 for v in result["lines"].values()), result
        assert result["problems"] == [], f"{stage} killed at {delay:.1f} s: " + "; ".join(result["problems"])


# ingest killed after each of its commits in turn, the last included: test_ingest.py
@pytest.mark.parametrize("stage", ["clean"])
def test_a_stage_killed_right_after_its_last_data_commit_is_recorded_done_by_its_rerun(spark, prepared, stage):
    """The window random instants seldom hit (bench/faults.py --after-each-commit hits every
    one): killed right after its last data commit, before its ops/runs row. The rerun finds
    nothing to do, and records the killed run as done, with the counts of a run never killed."""
    root, _ = prepared
    made = faults.commits(root / "after" / stage) - faults.commits(root / "before" / stage)
    result = faults.trial(spark, root, sys.executable, stage, 99, None, run_here, after_commit=made - 1)
    assert result["killed"] and result["commits_before_kill"] == made - 1, result
    assert result["recorded_done"] == 1 and result["problems"] == [], result


def test_an_attempt_whose_process_is_gone_is_recorded_once_and_a_live_one_is_left(lake):
    """The markers record_run leaves while a stage runs: one of a process that ended (here a
    finished child) becomes one failed, abandoned row, however many runs look; one of a
    running process (this one) stays."""
    import json
    import subprocess

    from lakemine.io import schemas
    from lakemine.io.runs import ATTEMPTS, _process_start, record_abandoned

    folder = os.path.join(lake.root, ATTEMPTS)
    os.makedirs(folder)
    base = {"stage": "clean", "as_of": "2011-12-09", "params": {}, "started_at": "2026-12-01T00:00:00+00:00",
            "host": socket.gethostname()}
    child = subprocess.Popen(["true"])  # noqa: S607 - a process that has ended
    child.wait()
    dead_pid = child.pid
    with open(os.path.join(folder, "dead.json"), "w") as fh:
        json.dump({**base, "run_id": "dead", "pid": dead_pid, "pid_start": "1"}, fh)
    with open(os.path.join(folder, "live.json"), "w") as fh:
        json.dump({**base, "run_id": "live", "pid": os.getpid(), "pid_start": _process_start(os.getpid())}, fh)
    assert [r.run_id for r in record_abandoned(lake)] == ["dead"]
    assert record_abandoned(lake) == []
    rows = lake.read_table(schemas.OPS_RUNS).collect()
    assert [(r["run_id"], r["status"], r["stage"]) for r in rows] == [("dead", "failed", "clean")]
    assert rows[0]["message"].startswith(f"abandoned: the process (pid {dead_pid} on ")
    assert sorted(os.listdir(folder)) == ["live.json"]


def test_a_run_killed_after_its_sealed_last_commit_is_recorded_done_once(lake):
    """A stage killed after its last commit (its rerun a noop) and before its ops/runs row: the
    next run records it with the counts it sealed and that commit's version; one killed before
    the sealed commit is abandoned; one killed after writing its own row is not recorded again."""
    import subprocess

    from lakemine.io import schemas
    from lakemine.io.runs import ATTEMPTS, RECORDED_LATE, Run, record_abandoned, seal, write_run

    folder = os.path.join(lake.root, ATTEMPTS)
    child = subprocess.Popen(["true"])  # noqa: S607 - a process that has ended
    child.wait()

    def attempt(run_id: str) -> Run:
        run = Run(stage="clean", as_of=date(2011, 12, 9), params={"mode": "incremental"}, run_id=run_id)
        run.marker = os.path.join(folder, f"{run_id}.json")
        storage.write_json(run.marker, {"stage": run.stage, "as_of": "2011-12-09", "params": run.params,
                                        "run_id": run_id, "started_at": run.started_at.isoformat(),
                                        "host": socket.gethostname(), "pid": child.pid, "pid_start": "1"})
        run.rows_in, run.rows_out, run.rows_quarantined, run.rows_duplicate = 10, 7, 2, 1
        run.quarantine_reasons = {"bad_quantity": 2}
        return run

    marks = lake.spark.createDataFrame([("b1",)], "batch_id string")
    committed = attempt("committed")
    version = lake.overwrite(marks, schemas.OPS_CLEAN_BATCHES, tag=seal(committed, schemas.OPS_CLEAN_BATCHES))
    counted = attempt("counted")  # its rows_out are what its last commit wrote
    lake.overwrite(lake.spark.range(3), "gold/counted", tag=seal(counted, "gold/counted", rows_out_of_commit=True))
    seal(attempt("uncommitted"), schemas.OPS_CLEAN_BATCHES)  # killed before its commit
    seal(attempt("never_made"), "gold/never_made")  # killed before its commit created the table
    recorded = attempt("recorded")
    write_run(lake, recorded)  # killed after its own row, before removing its marker
    # a claim whose claimer died before recording it
    claim = "~".join((".claimed", socket.gethostname(), str(child.pid), "1", "0", "x")) + ".json"
    os.rename(attempt("reclaimed").marker, os.path.join(folder, claim))

    found = {r.run_id: r for r in record_abandoned(lake)}
    assert sorted(found) == ["committed", "counted", "never_made", "reclaimed", "uncommitted"]
    assert record_abandoned(lake) == []
    rows = {r["run_id"]: r for r in lake.read_table(schemas.OPS_RUNS).collect()}
    assert sorted(rows) == ["committed", "counted", "never_made", "reclaimed", "recorded", "uncommitted"]
    done = rows["committed"]
    assert (done["status"], done["rows_in"], done["rows_out"], done["rows_quarantined"], done["rows_duplicate"]) == \
        ("succeeded", 10, 7, 2, 1)
    assert done["quarantine_reasons"] == {"bad_quantity": 2} and done["outputs"] == {schemas.OPS_CLEAN_BATCHES: version}
    assert RECORDED_LATE in done["message"] and done["as_of"] == date(2011, 12, 9)
    assert rows["counted"]["status"] == "succeeded" and rows["counted"]["rows_out"] == 3
    for name in ("uncommitted", "never_made", "reclaimed"):
        assert rows[name]["status"] == "failed" and rows[name]["message"].startswith("abandoned"), name
    assert os.listdir(folder) == []


def test_an_interrupted_run_keeps_its_marker_for_the_next_to_record(lake):
    """A run ended by something other than an error it can record (Ctrl-C) writes no row and
    leaves its marker: the next run, in another process, records it."""
    from lakemine.io import schemas
    from lakemine.io.runs import ATTEMPTS, record_run

    with pytest.raises(KeyboardInterrupt), record_run(lake, "clean", date(2011, 12, 9), {}):
        raise KeyboardInterrupt
    assert not lake.exists(schemas.OPS_RUNS)
    assert len(os.listdir(os.path.join(lake.root, ATTEMPTS))) == 1


def test_runs_of_several_dates_are_recorded_in_one_commit_and_fail_together(lake):
    """The features stage records its snapshot dates with `record_runs`: one ops/runs commit
    for all of them; an error records each date as failed; either way no marker stays."""
    from lakemine.io import schemas
    from lakemine.io.runs import ATTEMPTS, record_runs

    dates = [date(2011, 9, 10), date(2011, 12, 9)]
    with record_runs(lake, "features", dates, {"k": 1}) as runs:
        assert [r.as_of for r in runs] == dates and len({r.run_id for r in runs}) == 2
        assert len(os.listdir(os.path.join(lake.root, ATTEMPTS))) == 2
        runs[0].rows_out, runs[1].rows_out = 3, 4
    assert lake.table_version(schemas.OPS_RUNS) == 0  # created by the one commit
    rows = sorted(lake.read_table(schemas.OPS_RUNS).collect(), key=lambda r: r["as_of"])
    assert [(r["as_of"], r["status"], r["rows_out"]) for r in rows] == [(dates[0], "succeeded", 3), (dates[1], "succeeded", 4)]
    with pytest.raises(ValueError), record_runs(lake, "features", dates, {}):
        raise ValueError("snapshot broke")
    failed = lake.read_table(schemas.OPS_RUNS).where("status = 'failed'").collect()
    assert sorted(r["as_of"] for r in failed) == dates
    assert all(r["message"] == "ValueError: snapshot broke" for r in failed)
    assert os.listdir(os.path.join(lake.root, ATTEMPTS)) == []
