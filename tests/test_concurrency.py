"""Two lakemine processes on one lake at once: no row doubled or lost, no commit lost; a loser
retries to success or exits 1 with one line naming the conflict, and its rerun succeeds
(issue 16). Two scorers of one date: tests/test_score.py."""

from __future__ import annotations

import subprocess
import sys

import pyspark.sql.functions as F
import pytest

from conftest import REPO, daily_lines, land
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.stages.generate import GenerateParams, generate

pytestmark = pytest.mark.slow

ENV = {"LAKEMINE_SPARK__MASTER": "local[1]", "LAKEMINE_SPARK__SHUFFLE_PARTITIONS": "2", "LAKEMINE_SPARK__DRIVER_MEMORY": "1g"}


def _together(venv_env, *argvs: list[str]) -> list[subprocess.CompletedProcess]:
    """Start every `lakemine ARGV` at once; their results, in order."""
    env = {**venv_env, **ENV, "PYTHONPATH": str(REPO / "libs")}
    procs = [subprocess.Popen([sys.executable, "-m", "lakemine", *argv], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
    out = []
    for argv, proc in zip(argvs, procs):
        stdout, stderr = proc.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr))
    return out


def _settle(venv_env, results: list[subprocess.CompletedProcess]) -> list[str]:
    """Each run either succeeded or failed with one line naming the conflict; the failed ones
    are rerun alone and must succeed. Returns the conflict lines seen."""
    lines = []
    for r in results:
        if r.returncode == 0:
            continue
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("lakemine ")]
        assert r.returncode == 1 and len(errors) == 1, r.stderr[-3000:]
        assert "another run committed to the same table first" in errors[0] and "rerun it" in errors[0], errors
        lines.append(errors[0])
        (again,) = _together(venv_env, r.args)
        assert again.returncode == 0, again.stderr[-3000:]
    return lines


def test_two_ingests_two_cleans_and_two_days_features_on_one_lake_at_once(spark, cfg, tmp_path, venv_env):
    """Two landing folders ingested into one (new) lake at once, then two cleans at once, then
    two DAG days' features (different as_of) at once: every line once in bronze, every bronze
    row once in silver or its quarantine, both dates' features once per customer."""
    generate(spark, str(tmp_path / "raw"), GenerateParams.from_config(cfg, customers=30, days=8, seed=3, dirty_rate=0.05))
    header, by_day = daily_lines(tmp_path / "raw")
    days = sorted(by_day)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, d in enumerate(days):
        land(tmp_path / ("a" if i % 2 else "b"), f"day_{d}.csv", header, by_day[d])
    lines = sum(len(v) for v in by_day.values())
    lake_dir = str(tmp_path / "lake")
    conflicts = _settle(venv_env, _together(venv_env, ["ingest", "--input", str(tmp_path / "a"), "--lake", lake_dir],
                                            ["ingest", "--input", str(tmp_path / "b"), "--lake", lake_dir]))
    lake = Lake.at(spark, lake_dir)
    bronze = lake.read_table(schemas.BRONZE_TRANSACTIONS)
    quarantined = lake.read_table(schemas.BRONZE_QUARANTINE).count() if lake.exists(schemas.BRONZE_QUARANTINE) else 0
    assert bronze.count() + quarantined == lines
    assert bronze.groupBy("_batch_id", "_line").count().where("count > 1").count() == 0
    assert lake.read_table(schemas.OPS_RUNS).where("stage = 'ingest' AND status = 'succeeded'").count() == 2

    conflicts += _settle(venv_env, _together(venv_env, ["clean", "--lake", lake_dir], ["clean", "--lake", lake_dir]))
    silver = lake.read_table(schemas.SILVER_TRANSACTIONS)
    dropped = lake.read_table(schemas.SILVER_QUARANTINE).count()
    runs = lake.read_table(schemas.OPS_RUNS).where("stage = 'clean' AND status = 'succeeded'").collect()
    assert silver.count() + dropped + sum(r["rows_duplicate"] for r in runs) == bronze.count()
    assert silver.groupBy("_batch_id", "_line").count().where("count > 1").count() == 0

    dates = days[-2:]
    conflicts += _settle(venv_env, _together(venv_env, *[["features", "--lake", lake_dir, "--as-of", d.isoformat()]
                                                         for d in dates]))
    features = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES)
    for d in dates:
        rows = features.where(F.col("as_of") == F.lit(d))
        assert rows.count() > 0 and rows.groupBy("customer_id").count().where("count > 1").count() == 0
    done = lake.read_table(schemas.OPS_RUNS).where("stage = 'features' AND status = 'succeeded'").collect()
    assert {r["as_of"] for r in done} == set(dates)
    print("conflicts:", conflicts)
