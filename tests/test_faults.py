"""A stage killed at a random instant (SIGKILL to its whole process group) and rerun leaves
the lake of a run never killed: bench/faults.py's harness, a few seeded instants per stage
(the bench runs 20 or more per stage, train and score included)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from conftest import REPO
from lakemine.cli import main

sys.path.insert(0, str(REPO / "bench"))
import faults  # noqa: E402 - bench/faults.py, the harness

SUITE_STAGES = ("ingest", "clean", "features", "fpgrowth", "kmeans")
TRIALS = {"ingest": 2, "clean": 2, "features": 2, "fpgrowth": 1, "kmeans": 1}  # the last two commit once

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
        if _lost_counts_only(result["problems"]):
            pytest.xfail(f"known defect, issue 16: {stage} killed at {delay:.1f} s after its last data commit and before "
                         "its ops/runs row; every table is right but the rerun is a noop and the run's counts never "
                         "reach ops/runs (" + result["problems"][0] + ")")
        assert result["problems"] == [], f"{stage} killed at {delay:.1f} s: " + "; ".join(result["problems"])


def _lost_counts_only(problems: list[str]) -> bool:
    """The one known difference (bench/results/faults.md): a succeeded ops/runs row missing, none
    added or changed, nothing else different."""
    import ast

    if len(problems) != 1 or not problems[0].startswith("ops/runs: succeeded "):
        return False
    got, never = problems[0].split(") [", 1)[1].split("], never killed [")
    got, never = ast.literal_eval("[" + got + "]"), ast.literal_eval("[" + never.rstrip("]") + "]")
    return set(got) < set(never)


def test_an_attempt_whose_process_is_gone_is_recorded_once_and_a_live_one_is_left(lake):
    """The markers record_run leaves while a stage runs: one of a process that ended (here a
    finished child) becomes one failed, abandoned row, however many runs look; one of a
    running process (this one) stays."""
    import json
    import socket
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
