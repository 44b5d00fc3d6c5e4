"""Daily increments into one lake equal a full rebuild from the same files (issue 15).

Export files land one day at a time in a landing folder, with the cases a real feed has: a
file for an earlier date arriving late, a file sent again, a corrected file under the same
name, and a backfill of old dates after newer ones that repeats lines already landed.
"""

from __future__ import annotations

import json
import re
from datetime import date

import pyspark.sql.functions as F
import pytest
from pyspark.testing import assertDataFrameEqual

from conftest import clean_lake, daily_lines, ingest_files, land, run_features
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.stages import clean
from lakemine.stages.generate import GenerateParams, generate

pytestmark = pytest.mark.slow

def clean_runs(lake) -> list:
    return lake.read_table(schemas.OPS_RUNS).where("stage = 'clean'").orderBy("started_at").collect()


def assert_same_lakes(a: Lake, b: Lake, as_of: date) -> None:
    """Every data table row for row (the tables per logical date at `as_of`, the date both
    lakes computed); ingest times (a run's clock) aside."""
    for table in (schemas.BRONZE_TRANSACTIONS, schemas.BRONZE_QUARANTINE, schemas.SILVER_TRANSACTIONS,
                  schemas.SILVER_QUARANTINE, schemas.GOLD_BASKETS, schemas.GOLD_CUSTOMER_DAYS, schemas.GOLD_CUSTOMER_FEATURES,
                  schemas.GOLD_FEATURE_SCALER, schemas.GOLD_LABELS):
        left = a.read_table(table).drop("_ingested_at")
        right = b.read_table(table).drop("_ingested_at")
        if "as_of" in left.columns:
            left, right = (t.where(F.col("as_of") == F.lit(as_of)) for t in (left, right))
        assert left.count() > 0, table
        assertDataFrameEqual(left, right.select(*left.columns), checkRowOrder=False)
    ingested = [F.col("status") == "ingested"]
    assertDataFrameEqual(a.read_table(schemas.OPS_INGEST_LEDGER).where(*ingested).select("path", "batch_id"),
                         b.read_table(schemas.OPS_INGEST_LEDGER).where(*ingested).select("path", "batch_id"))


def silver_files(lake: Lake, version: int, days: list[date]) -> int:
    """Data files of silver at `version` holding rows of `days`."""
    rows = lake.read_table(schemas.SILVER_TRANSACTIONS, version).where(F.col("invoice_date").isin(days))
    return rows.select(F.input_file_name()).distinct().count()


def test_daily_increments_with_late_resent_corrected_and_backfilled_files_equal_a_full_rebuild(spark, cfg, tmp_path):
    generate(spark, str(tmp_path / "raw"),
             GenerateParams.from_config(cfg, customers=40, days=14, seed=5, dirty_rate=0.05))
    header, by_day = daily_lines(tmp_path / "raw")
    days = list(by_day)
    assert len(days) >= 10
    landing = tmp_path / "landing"
    landing.mkdir()
    lake = Lake.at(spark, str(tmp_path / "daily"))
    lake_cfg = cfg.with_lake(lake.root)

    def name(d: date) -> str:
        return f"day_{d.isoformat()}.csv"

    def a_day(*files: tuple[str, list[str]]):
        for file_name, lines in files:
            land(landing, file_name, header, lines)
        ingested = ingest_files(lake, lake_cfg, str(landing))
        cleaned = clean_lake(lake, lake_cfg)
        run_features(lake, lake_cfg)
        return ingested, cleaned

    # first day: the first five days' exports, except the third's
    for d in days[:5]:
        if d != days[2]:
            land(landing, name(d), header, by_day[d])
    a_day()
    # an ordinary day: one new file, one silver partition written, none rewritten
    before = lake.table_version(schemas.SILVER_TRANSACTIONS)
    ingested, cleaned = a_day((name(days[5]), by_day[days[5]]))
    assert len(ingested.result.new_batches) == 1 and ingested.rows_in == len(by_day[days[5]])
    assert cleaned.rows_in == ingested.rows_out
    ordinary = clean_runs(lake)[-1]
    assert (ordinary["files_added"]["silver/transactions"], ordinary["files_removed"]["silver/transactions"]) == (1, 0)
    assert lake.table_version(schemas.SILVER_TRANSACTIONS) == before + 1
    # a file for an earlier date arrives late, with today's
    ingested, _ = a_day((name(days[2]), by_day[days[2]]), (name(days[6]), by_day[days[6]]))
    assert len(ingested.result.new_batches) == 2
    # a file sent again under its name (same bytes, new time): read, found known, nothing written
    ingested, _ = a_day((name(days[1]), by_day[days[1]]), (name(days[7]), by_day[days[7]]))
    assert len(ingested.result.new_batches) == 1
    assert ingested.result.skipped[str(landing / name(days[1]))].startswith("already ingested as batch")
    # a corrected file under the same name: one quantity fixed, one line withdrawn
    fixed = list(by_day[days[3]])
    fields = fixed[0].split(",")
    fields[3] = str(int(fields[3]) + 1)
    fixed = [",".join(fields), *fixed[1:-1]]
    ingested, cleaned = a_day((name(days[3]), fixed), *[(name(d), by_day[d]) for d in days[8:10]])
    assert "superseded" in ingested.message and "full rebuild" in cleaned.message
    # a backfill of the first day after newer ones: new lines, plus a repeat of a good line of
    # day 6 and of every line of day 5 (their quarantined lines too), in a file whose name
    # sorts first, so its copies become the ones silver keeps
    extra = [re.sub(r"^(\w+),", r"9\1,", line) for line in by_day[days[0]][:3]]
    backfill = extra + [by_day[days[5]][0]] + by_day[days[4]]
    before = lake.table_version(schemas.SILVER_TRANSACTIONS)
    ingested, cleaned = a_day(("a_backfill.csv", backfill), *[(name(d), by_day[d]) for d in days[10:]])
    assert ingested.rows_in == len(backfill) + sum(len(by_day[d]) for d in days[10:])
    assert cleaned.rows_in == ingested.rows_out
    assert cleaned.rows_duplicate > len(by_day[days[4]]) // 2  # its lines that ingest let through
    backfilled = clean_runs(lake)[-1]
    touched = silver_files(lake, before, [days[0], days[4], days[5]])
    assert backfilled["files_removed"]["silver/transactions"] == touched
    modes = [json.loads(r["params"])["mode"] for r in clean_runs(lake)]
    assert modes == ["full", "incremental", "incremental", "incremental", "full", "incremental"]

    rebuilt = Lake.at(spark, str(tmp_path / "rebuilt"))
    rebuilt_cfg = cfg.with_lake(rebuilt.root)
    ingest_files(rebuilt, rebuilt_cfg, str(landing))
    clean_lake(rebuilt, rebuilt_cfg)
    run_features(rebuilt, rebuilt_cfg)
    aggregates = [json.loads(r["params"]) for r in lake.read_table(schemas.OPS_RUNS).where(
        "stage = 'features' AND params LIKE '%aggregates%'").orderBy("started_at").collect()]
    assert [a["mode"] for a in aggregates] == ["full", "incremental", "incremental", "incremental", "full", "incremental"]
    assert aggregates[1]["dates"] == [days[5].isoformat()]
    assert_same_lakes(lake, rebuilt, days[-1])


def test_a_clean_killed_between_its_commits_is_repaired_by_the_next(spark, cfg, tmp_path, monkeypatch):
    """Killed after silver (quarantine, mark not written) and after both (mark not written):
    the rerun leaves the rows of a clean never killed."""
    generate(spark, str(tmp_path / "raw"), GenerateParams.from_config(cfg, customers=20, days=6, seed=8, dirty_rate=0.1))
    header, by_day = daily_lines(tmp_path / "raw")
    days = list(by_day)
    landing = tmp_path / "landing"
    landing.mkdir()
    lakes = {k: Lake.at(spark, str(tmp_path / k)) for k in ("killed", "calm")}
    for d in days[:-1]:
        land(landing, f"day_{d}.csv", header, by_day[d])
    for one in lakes.values():
        ingest_files(one, cfg.with_lake(one.root), str(landing))
        clean_lake(one, cfg.with_lake(one.root))
    bad = "X1,ABC,A THING,many,12/1/2010 8:00,1.00,12346,United Kingdom"
    land(landing, "day_last.csv", header, by_day[days[-1]] + by_day[days[0]][:5] + [bad])
    for one in lakes.values():
        ingest_files(one, cfg.with_lake(one.root), str(landing))

    killed, killed_cfg = lakes["killed"], cfg.with_lake(lakes["killed"].root)

    def kill(*args, **kwargs):
        raise RuntimeError("killed")

    for point in ("_merge_quarantine", "_mark_batches"):  # after silver; after silver and quarantine
        with monkeypatch.context() as m:
            m.setattr(clean, point, kill)
            with pytest.raises(RuntimeError, match="killed"):
                clean_lake(killed, killed_cfg)
    rerun = clean_lake(killed, killed_cfg)
    calm = clean_lake(lakes["calm"], cfg.with_lake(lakes["calm"].root))
    assert rerun.message.startswith("incremental")
    assert (rerun.rows_in, rerun.rows_out, rerun.rows_quarantined, rerun.rows_duplicate) == (
        calm.rows_in, calm.rows_out, calm.rows_quarantined, calm.rows_duplicate)
    assert calm.rows_duplicate >= 5 and calm.rows_quarantined >= 1
    for table in (schemas.SILVER_TRANSACTIONS, schemas.SILVER_QUARANTINE, schemas.OPS_CLEAN_BATCHES):
        cols = [c for c in killed.read_table(table).columns if c not in ("run_id", "recorded_at")]
        assertDataFrameEqual(killed.read_table(table).select(*cols), lakes["calm"].read_table(table).select(*cols))
