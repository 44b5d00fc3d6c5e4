"""`lakemine maintain`: OPTIMIZE compacts, VACUUM deletes what no retained version needs, rows never change."""

from __future__ import annotations

from pyspark.testing import assertDataFrameEqual

from lakemine.cli import main
from lakemine.core import storage
from lakemine.io import schemas
from lakemine.stages.maintain import MaintainParams
from lakemine.stages.maintain import run as run_maintain


def maintain(lake, cfg, **overrides):
    run = run_maintain(lake, cfg, MaintainParams.from_config(cfg, **overrides))
    return run, run.result


def _many_small_files(lake, table: str, writes: int = 6):
    for i in range(writes):
        lake.append(lake.spark.range(i * 10, i * 10 + 10).selectExpr("id", "cast(id % 3 as int) as g"), table)


def test_optimize_then_vacuum_keeps_rows_and_frees_files(lake, lake_cfg):
    _many_small_files(lake, "gold/demo")
    lake.overwrite(lake.spark.range(5).selectExpr("id").coalesce(1), "silver/other")
    lake.overwrite(lake.spark.range(7).selectExpr("id").coalesce(1), "silver/other")  # leaves the first version's file behind
    before = {t: lake.read_table(t).collect() for t in ("gold/demo", "silver/other")}
    files_before, _ = storage.data_files(lake.path("gold/demo"))
    assert lake.tables() == ["gold/demo", "silver/other"]

    run, done = maintain(lake, lake_cfg, retention_hours=0)
    by_table = {t.table: t for t in done}
    assert set(by_table) == {"gold/demo", "silver/other"}
    demo = by_table["gold/demo"]
    assert demo.files_compacted == files_before and demo.files_written == 1
    assert demo.files_deleted == files_before  # the small files are gone from storage
    assert storage.data_files(lake.path("gold/demo"))[0] == 1
    assert by_table["silver/other"].files_compacted == 0 and by_table["silver/other"].files_deleted >= 1
    for table, rows in before.items():
        assertDataFrameEqual(lake.read_table(table), rows)
    recorded = lake.read_table(schemas.OPS_RUNS).where("stage = 'maintain'").collect()
    assert len(recorded) == 1 and recorded[0]["status"] == "succeeded"
    assert recorded[0]["outputs"]["gold/demo"] == demo.version

    _, again = maintain(lake, lake_cfg, retention_hours=0, tables=("gold/demo",))
    assert (again[0].files_compacted, again[0].files_deleted) == (0, 0)  # VACUUM may log commits, nothing else
    assertDataFrameEqual(lake.read_table("gold/demo"), before["gold/demo"])


def test_default_retention_keeps_time_travel(lake, lake_cfg):
    _many_small_files(lake, "gold/demo", writes=3)
    first = lake.read_table("gold/demo", version=0).collect()
    _, done = maintain(lake, lake_cfg)  # 168 h: files of recent versions stay
    assert done[0].files_deleted == 0
    assertDataFrameEqual(lake.read_table("gold/demo", version=0), first)


def test_cli_maintain_names_a_missing_table(lake, capsys):
    _many_small_files(lake, "gold/demo", writes=2)
    assert main(["maintain", "--lake", lake.root, "--table", "gold/nope"]) == 2
    assert "gold/nope: no such Delta table" in capsys.readouterr().err
    assert main(["maintain", "--lake", lake.root, "--table", "gold/demo", "--retention-hours", "0"]) == 0
    out = capsys.readouterr().out
    assert "maintain: status=succeeded" in out and "gold/demo" in out


def test_vacuum_below_the_safety_default_leaves_the_shared_session_check_on(lake, lake_cfg, monkeypatch):
    """VACUUM at 0 h turns Delta's retention check off for its own call only: the session every
    other write in the process shares keeps it on throughout (issue 16)."""
    from delta.tables import DeltaTable

    key = "spark.databricks.delta.retentionDurationCheck.enabled"
    real_vacuum, seen = DeltaTable.vacuum, []

    def watching(self, *args):
        seen.append(lake.spark.conf.get(key, "true"))
        return real_vacuum(self, *args)

    monkeypatch.setattr(DeltaTable, "vacuum", watching)
    _many_small_files(lake, "gold/demo", writes=2)
    files_before, _ = storage.data_files(lake.path("gold/demo"))
    _, done = maintain(lake, lake_cfg, retention_hours=0)
    assert seen == ["true"] and lake.spark.conf.get(key, "true") == "true"
    assert done[0].files_deleted == files_before  # the 0 h VACUUM still ran unchecked
