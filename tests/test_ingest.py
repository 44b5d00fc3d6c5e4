from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.testing import assertDataFrameEqual

from conftest import ingest_files as ingest
from conftest import write_lines
from lakemine.core.errors import InputError
from lakemine.io import schemas

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
HEADER_II = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"
BRONZE_COLS = list(schemas.RAW_COLUMNS) + ["_source_file", "_line"]
QUARANTINE_COLS = ["_raw", "reason", "_source_file", "_line", "stage"]


def bronze(lake, cols=BRONZE_COLS):
    return lake.read_table(schemas.BRONZE_TRANSACTIONS).select(*cols)


def assert_bronze(lake, uri, rows):
    """Bronze holds exactly `rows` (the eight raw fields, then the line number) of the file at `uri`."""
    assertDataFrameEqual(bronze(lake), lake.spark.createDataFrame([(*r[:-1], uri, r[-1]) for r in rows], BRONZE_COLS))


def quarantine(lake, cols=QUARANTINE_COLS):
    return lake.read_table(schemas.BRONZE_QUARANTINE).select(*cols)


def runs(lake):
    return lake.read_table(schemas.OPS_RUNS)


def test_ingest_reads_both_layouts_bom_crlf_and_quoted_commas(lake, lake_cfg, tmp_path):
    a = write_lines(tmp_path / "in" / "a.csv", [
        HEADER,
        '536365,85123A,"HANGING HEART, WHITE",6,12/1/2010 8:26,2.55,17850,United Kingdom',
        '536366,22633,"HAND WARMER ""UNION JACK""",6,12/1/2010 8:28,1.85,17850,United Kingdom',
    ], bom=True, newline="\r\n")
    b = write_lines(tmp_path / "in" / "b.csv", [
        HEADER_II,
        "C489449,22087,PAPER BUNTING,-12,2009-12-01T10:33:00,2.95,16321,Australia",
    ])
    result = ingest(lake, lake_cfg, str(tmp_path / "in"))
    ua, ub = f"file:{a}", f"file:{b}"
    expected = lake.spark.createDataFrame([
        ("536365", "85123A", "HANGING HEART, WHITE", "6", "12/1/2010 8:26", "2.55", "17850", "United Kingdom", ua, 2),
        ("536366", "22633", 'HAND WARMER "UNION JACK"', "6", "12/1/2010 8:28", "1.85", "17850", "United Kingdom", ua, 3),
        ("C489449", "22087", "PAPER BUNTING", "-12", "2009-12-01T10:33:00", "2.95", "16321", "Australia", ub, 2),
    ], BRONZE_COLS)
    assertDataFrameEqual(bronze(lake), expected)
    assert result.rows_in == 3 and result.rows_out == 3 and result.rows_quarantined == 0
    batch_ids = {r["_source_file"]: r["_batch_id"] for r in bronze(lake, ["_source_file", "_batch_id"]).collect()}
    assert len(set(batch_ids.values())) == 2


def test_header_names_match_without_case_or_spaces_and_other_columns_are_ignored(lake, lake_cfg, tmp_path):
    path = write_lines(tmp_path / "in" / "lower.csv", [
        " country , invoice,stockcode,DESCRIPTION,quantity,invoicedate,price,customer id,store",
        "United Kingdom,489434,85048,LIGHTS,12,2009-12-01 07:45:00,6.95,13085,web",
        "France,489435,22041,FRAME,48,2009-12-01 07:46:00,2.1,,shop 4",
        "France,489436,22041,FRAME,48,2009-12-01 07:46:00,2.1,,shop 4,one too many",
    ])
    result = ingest(lake, lake_cfg, str(path))
    assert_bronze(lake, f"file:{path}", [
        ("489434", "85048", "LIGHTS", "12", "2009-12-01 07:45:00", "6.95", "13085", "United Kingdom", 2),
        ("489435", "22041", "FRAME", "48", "2009-12-01 07:46:00", "2.1", None, "France", 3),
    ])
    assert result.quarantine_reasons == {"bad_field_count": 1}
    assert quarantine(lake, ["_line", "reason", "detail"]).collect()[0].asDict() == {
        "_line": 4, "reason": "bad_field_count", "detail": "10 fields, expected 9"}


def test_gzip_and_bzip2_csv_are_read_and_their_content_is_the_batch(lake, lake_cfg, tmp_path):
    import bz2
    import gzip

    text = "\n".join([HEADER, "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom", "",
                      "536366,22633,WARMER,6,12/1/2010 8:28,1.85,17850,United Kingdom"]) + "\n"
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "export.csv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "bz2").mkdir()
    (tmp_path / "bz2" / "export.csv.bz2").write_bytes(bz2.compress(text.encode()))
    first = ingest(lake, lake_cfg, str(tmp_path / "gz"))
    assert_bronze(lake, f"file:{tmp_path / 'gz' / 'export.csv.gz'}", [
        ("536365", "85123A", "HEART", "6", "12/1/2010 8:26", "2.55", "17850", "United Kingdom", 2),
        ("536366", "22633", "WARMER", "6", "12/1/2010 8:28", "1.85", "17850", "United Kingdom", 4),
    ])
    assert (first.rows_in, first.rows_out, first.quarantine_reasons) == (3, 2, {"blank_line": 1})
    # the same lines compressed otherwise are the same batch: nothing new
    second = ingest(lake, lake_cfg, str(tmp_path / "bz2"))
    assert second.status == "noop" and list(second.result.skipped.values())[0].startswith("already ingested as batch")


def test_ingest_quarantines_unreadable_lines_with_reasons(lake, lake_cfg, tmp_path):
    path = tmp_path / "dirty.csv"
    lines = [
        HEADER,
        "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom",
        "",
        "536365,85123A,HEART,6,12/1/2010 8:26",
        '536365,85123A,"HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom',
        HEADER,
        "536367,84879,BIRD,32,12/1/2010 8:34,1.69,13047,United Kingdom,extra",
    ]
    # 0x81 and 0x8d are neither UTF-8 nor cp1252 (the UCI profiles read UTF-8, else cp1252)
    raw = ("\n".join(lines) + "\n").encode() + b"536368,22960,JAM MAKING SET \x81\x8d,6,12/1/2010 8:34,4.25,13047,France\n"
    path.write_bytes(raw)
    result = ingest(lake, lake_cfg, str(path))
    uri = f"file:{path}"
    expected = lake.spark.createDataFrame([
        ("", "blank_line", uri, 3, "ingest"),
        ("536365,85123A,HEART,6,12/1/2010 8:26", "bad_field_count", uri, 4, "ingest"),
        ('536365,85123A,"HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom', "bad_quoting", uri, 5, "ingest"),
        (HEADER, "repeated_header", uri, 6, "ingest"),
        ("536367,84879,BIRD,32,12/1/2010 8:34,1.69,13047,United Kingdom,extra", "bad_field_count", uri, 7, "ingest"),
        ("536368,22960,JAM MAKING SET \x81\x8d,6,12/1/2010 8:34,4.25,13047,France", "bad_encoding", uri, 8, "ingest"),
    ], QUARANTINE_COLS)
    assertDataFrameEqual(quarantine(lake), expected)
    assert [r["_line"] for r in bronze(lake).collect()] == [2]
    assert result.quarantine_reasons == {
        "blank_line": 1, "bad_field_count": 2, "bad_quoting": 1, "repeated_header": 1, "bad_encoding": 1}
    details = {r["reason"]: r["detail"] for r in lake.read_table(schemas.BRONZE_QUARANTINE).collect()}
    assert details["bad_field_count"] in ("5 fields, expected 8", "9 fields, expected 8")
    assert details["bad_encoding"] == "line is not UTF-8 or cp1252 text; its bytes in hex: " + raw.splitlines()[-1].hex().upper()


def test_reingesting_the_same_content_is_a_noop(lake, lake_cfg, tmp_path):
    rows = [HEADER, "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom", ""]
    write_lines(tmp_path / "day1" / "export.csv", rows)
    first = ingest(lake, lake_cfg, str(tmp_path / "day1"))
    version = lake.table_version(schemas.BRONZE_TRANSACTIONS)
    # same bytes under another name: same batch, nothing written
    write_lines(tmp_path / "copy" / "renamed.csv", rows)
    second = ingest(lake, lake_cfg, str(tmp_path / "copy"))
    assert first.status == "succeeded" and second.status == "noop"
    assert lake.table_version(schemas.BRONZE_TRANSACTIONS) == version
    assert bronze(lake).count() == 1 and quarantine(lake).count() == 1
    statuses = sorted(r["status"] for r in runs(lake).collect())
    assert statuses == ["noop", "succeeded"]


def test_line_numbers_are_exact_when_a_file_is_split_across_tasks(spark, lake, lake_cfg, tmp_path):
    n = 3000
    lines = [HEADER] + [f"{600000 + i},85123A,HEART,{i % 50 + 1},12/1/2010 8:26,2.55,17850,United Kingdom" for i in range(n)]
    path = write_lines(tmp_path / "big.csv", lines)
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16k")
    try:
        assert spark.read.text(str(path)).rdd.getNumPartitions() > 5
        ingest(lake, lake_cfg, str(path))
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)
    got = bronze(lake, ["InvoiceNo", "_line"])
    expected = spark.createDataFrame([(str(600000 + i), i + 2) for i in range(n)], ["InvoiceNo", "_line"])
    assertDataFrameEqual(got, expected)


def test_bronze_and_quarantine_each_classify_a_line_once(spark, lake_cfg, tmp_path):
    """The passes writing bronze and its quarantine filter on the line's reason: Spark must not
    copy the classification into the filter below its projection (SPARK-47672), which had
    every line split and counted twice."""
    import datetime as dt

    import pyspark.sql.functions as F

    from lakemine.stages import ingest as stage

    path = write_lines(tmp_path / "a.csv", [HEADER, '1,A,"X, Y",1,12/1/2010 8:26,1.00,100,UK', "2,A,X,1,12/1/2010 8:26,1.00"])
    files, _ = stage.inspect_inputs(spark, str(path), lake_cfg.ingest.suffixes, lake_cfg.sources)
    parsed, _ = stage.read_group(spark, files)
    good, bad = stage.split_rows(parsed.withColumn("_batch_id", F.lit("b")), dt.datetime(2026, 1, 1))
    for rows in (good, bad):
        plan = rows._jdf.queryExecution().optimizedPlan().toString()
        assert plan.count("size(split(") == 1 and plan.count("regexp_replace(") == 1
    assert [r["InvoiceNo"] for r in good.collect()] == ["1"]
    assert [r["reason"] for r in bad.collect()] == ["bad_field_count"]


def test_parquet_input_in_layout_ii_is_read_as_strings(lake, lake_cfg, tmp_path):
    table = pa.table({
        "Invoice": ["489434", "489435"],
        "StockCode": ["85048", "22350"],
        "Description": ["ROSE CUSHION", "CAT BOWL"],
        "Quantity": pa.array([12, 24], pa.int64()),
        "InvoiceDate": ["12/1/2009 7:45", "12/1/2009 7:46"],
        "Price": pa.array([6.95, 2.1], pa.float64()),
        "Customer ID": pa.array([13085.0, None], pa.float64()),
        "Country": ["United Kingdom", "United Kingdom"],
    })
    path = tmp_path / "retail.parquet"
    pq.write_table(table, path)
    ingest(lake, lake_cfg, str(path))
    assert_bronze(lake, f"file:{path}", [
        ("489434", "85048", "ROSE CUSHION", "12", "12/1/2009 7:45", "6.95", "13085.0", "United Kingdom", 1),
        ("489435", "22350", "CAT BOWL", "24", "12/1/2009 7:46", "2.1", None, "United Kingdom", 2),
    ])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", b"", "empty file"),
        ("blank.csv", b"\n\n", "empty file"),
        ("junk.csv", bytes(range(256)) * 4, "binary data"),
        ("utf16.csv", HEADER.encode("utf-16"), "UTF-16"),
        ("cols.csv", b"order,sku,qty\n1,2,3\n", r"\['order', 'sku', 'qty'\] match no source profile \(online_retail, "
                                                   r"online_retail_ii\); .*lakemine inspect"),
        ("both.csv", (HEADER + ",Invoice,Price,Customer ID\n").encode(), "match profiles online_retail, online_retail_ii alike; choose one with --source"),
        ("broken.csv.gz", b"not gzip at all", "not a readable .gz file"),
        ("latin1.csv", "Factura,C\xf3digo\n".encode("latin-1"), r"\['Factura', 'C\xf3digo'\] match no source profile"),
        ("fake.parquet", b"PAR1 not really", "unreadable Parquet"),
        ("text.parquet", b"hello", "not a Parquet file"),
        ("cut.parquet", b"PAR1" + bytes(200), r"unreadable Parquet \(.*is not a Parquet file"),
    ],
)
def test_unusable_files_raise_input_error_and_write_nothing(lake, lake_cfg, tmp_path, name, content, message):
    good = write_lines(tmp_path / "in" / "a_good.csv", [HEADER, "1,2,X,1,12/1/2010 8:26,1.0,1,UK"])
    bad = tmp_path / "in" / name
    bad.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        ingest(lake, lake_cfg, str(tmp_path / "in"))
    assert name in str(err.value) and "\n" not in str(err.value)
    assert good.exists()
    assert not lake.exists(schemas.BRONZE_TRANSACTIONS) and not lake.exists(schemas.OPS_RUNS)


def test_missing_path_and_empty_folder_raise_input_error(lake, lake_cfg, tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        ingest(lake, lake_cfg, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_manifest.json").write_text("{}")
    with pytest.raises(InputError, match="no input files"):
        ingest(lake, lake_cfg, str(tmp_path / "empty"))


def _ledger(lake):
    return sorted((r["path"], r["batch_id"], r["status"], r["rows"]) for r in lake.read_table(schemas.OPS_INGEST_LEDGER).collect())


def test_the_ledger_skips_known_files_unread_and_reads_changed_ones(lake, lake_cfg, tmp_path):
    """A landed file the ledger holds with the same size and time is not read (proved by
    changing its bytes behind the ledger's back); a copy under a new name is read once and then
    known too; a corrected file (new content, same name) is a new batch."""
    import os

    rows = [HEADER, "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom"]
    a = write_lines(tmp_path / "in" / "a.csv", rows)
    first = ingest(lake, lake_cfg, str(tmp_path / "in"))
    batch = first.result.new_batches[0]
    assert _ledger(lake) == [(str(a), batch, "ingested", 1)]
    stat = a.stat()
    a.write_bytes(a.read_bytes().replace(b"HEART", b"HEARD"))  # same size
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    b = write_lines(tmp_path / "in" / "b.csv", rows)
    second = ingest(lake, lake_cfg, str(tmp_path / "in"))
    assert second.status == "noop" and second.result.skipped == {
        str(a): f"unchanged since ingested as batch {batch} (not read)",
        str(b): f"already ingested as batch {batch}"}
    assert _ledger(lake) == [(str(a), batch, "ingested", 1), (str(b), batch, "duplicate", 1)]
    assert list(ingest(lake, lake_cfg, str(tmp_path / "in")).result.skipped.values()) == [
        f"unchanged since ingested as batch {batch} (not read)"] * 2
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: read again, the new content is a new batch
    third = ingest(lake, lake_cfg, str(tmp_path / "in"))
    assert third.status == "succeeded" and third.rows_out == 1 and third.result.new_batches != [batch]
    assert sorted(r["Description"] for r in bronze(lake, ["Description"]).collect()) == ["HEARD", "HEART"]


def test_a_corrected_file_without_bad_lines_takes_its_earlier_lines_out_of_the_quarantine(lake, lake_cfg, tmp_path):
    """When every line of a run is in bronze, the quarantine's commit (which then has no rows to
    read the files for) still takes out the rows of the batch a corrected file superseded."""
    import os

    good = "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom"
    a = write_lines(tmp_path / "in" / "a.csv", [HEADER, good, "1,2,3"])
    first = ingest(lake, lake_cfg, str(tmp_path / "in"))
    assert (first.rows_out, first.rows_quarantined) == (1, 1)
    assert [r["reason"] for r in quarantine(lake).collect()] == ["bad_field_count"]
    stat = a.stat()
    write_lines(a, [HEADER, good, good.replace("HEART", "HEARTS")])
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = ingest(lake, lake_cfg, str(tmp_path / "in"))
    assert (second.rows_in, second.rows_out, second.rows_quarantined) == (2, 2, 0)
    assert "superseded" in second.message
    assert quarantine(lake).count() == 0
    assert sorted(r["Description"] for r in bronze(lake, ["Description"]).collect()) == ["HEART", "HEARTS"]
    batches = {r["_batch_id"] for r in bronze(lake, ["_batch_id"]).collect()}
    assert batches == set(second.result.new_batches)


def test_a_run_killed_between_bronze_and_quarantine_is_repaired_by_the_next(lake, lake_cfg, tmp_path, monkeypatch):
    """The crash window the ledger closes: bronze committed, quarantine not. The batch is not in
    the ledger, so the next run reads it again and both tables equal a run never interrupted."""
    from lakemine.io.lake import Lake

    path = write_lines(tmp_path / "in" / "day.csv", [
        HEADER, "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom", "", "1,2,3"])
    real = Lake.replace_batches

    def dies_on_quarantine(self, df, table, batch_ids):
        if table == schemas.BRONZE_QUARANTINE:
            raise RuntimeError("killed")
        return real(self, df, table, batch_ids)

    monkeypatch.setattr(Lake, "replace_batches", dies_on_quarantine)
    with pytest.raises(RuntimeError, match="killed"):
        ingest(lake, lake_cfg, str(path))
    monkeypatch.setattr(Lake, "replace_batches", real)
    assert bronze(lake).count() == 1 and not lake.exists(schemas.BRONZE_QUARANTINE)
    assert _ledger(lake) == []
    again = ingest(lake, lake_cfg, str(path))
    assert again.status == "succeeded" and (again.rows_out, again.rows_quarantined) == (1, 2)
    never = Lake.at(lake.spark, str(tmp_path / "never"))
    ingest(never, lake_cfg.with_lake(never.root), str(path))
    for table, cols in ((schemas.BRONZE_TRANSACTIONS, BRONZE_COLS + ["_batch_id"]),
                        (schemas.BRONZE_QUARANTINE, QUARANTINE_COLS + ["_batch_id"])):
        assertDataFrameEqual(lake.read_table(table).select(*cols), never.read_table(table).select(*cols))
    statuses = sorted(r["status"] for r in runs(lake).collect())
    assert statuses == ["failed", "succeeded"]


def test_a_lake_from_before_the_ledger_gets_one_from_its_bronze(lake, lake_cfg, tmp_path):
    path = write_lines(tmp_path / "in" / "a.csv", [HEADER, "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom"])
    first = ingest(lake, lake_cfg, str(path))
    import shutil

    shutil.rmtree(lake.path(schemas.OPS_INGEST_LEDGER))
    second = ingest(lake, lake_cfg, str(path))
    batch = first.result.new_batches[0]
    assert second.status == "noop" and second.result.skipped == {str(path): f"already ingested as batch {batch}"}
    assert _ledger(lake) == sorted([(f"file:{path}", batch, "ingested", None), (str(path), batch, "duplicate", 1)])


KILLER = r"""
import os, signal, sys
from delta.tables import DeltaMergeBuilder
from lakemine.io.lake import Lake
after, commits = int(sys.argv[1]), [0]

def counted(commit):
    def wrapper(*args, **kwargs):
        out = commit(*args, **kwargs)
        if len(args) > 2 and args[2] == "ops/runs":  # the record of an earlier killed run: not the stage's work
            return out
        commits[0] += 1
        if commits[0] == after:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapper

Lake._write = counted(Lake._write)
DeltaMergeBuilder.execute = counted(DeltaMergeBuilder.execute)
from lakemine.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_ingest_killed_9_after_each_commit_in_turn_accounts_for_every_line_once(spark, cfg, tmp_path, venv_env):
    """Real `kill -9`s of `lakemine ingest`: killed after its 1st commit (the ledger made), then
    reruns killed after the 1st (bronze), 2nd (quarantine) and 3rd (ledger marks), then one
    that finishes. Bronze and quarantine then hold every line exactly once, as a run never killed."""
    import subprocess
    import sys

    from conftest import REPO
    from lakemine.io.lake import Lake
    from lakemine.io.runs import RECORDED_LATE
    from lakemine.stages.generate import GenerateParams, generate

    landing = tmp_path / "landing"
    generate(spark, str(landing), GenerateParams.from_config(cfg, customers=20, days=5, seed=4, dirty_rate=0.1))
    write_lines(landing / "extra.csv", [HEADER, "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom",
                                        "", "1,2,3", "536366,22633,HAND WARMER,6,12/1/2010 8:28,1.85,17850,United Kingdom"])
    lines = sum(len(p.read_text().splitlines()) - 1 for p in landing.glob("*.csv"))
    killed = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    for after in (1, 1, 2, 3, 0):
        proc = subprocess.run([sys.executable, str(script), str(after), "ingest", "--input", str(landing),
                               "--lake", str(killed)], capture_output=True, text=True, env=venv_env, timeout=300,
                              cwd=REPO)
        assert proc.returncode == (-9 if after else 0), proc.stderr[-3000:]
    lake = Lake.at(spark, str(killed))
    never = Lake.at(spark, str(tmp_path / "never"))
    ingest(never, cfg.with_lake(never.root), str(landing))
    rows = lake.read_table(schemas.BRONZE_TRANSACTIONS).count() + lake.read_table(schemas.BRONZE_QUARANTINE).count()
    assert rows == lines
    for table, cols in ((schemas.BRONZE_TRANSACTIONS, BRONZE_COLS + ["_batch_id"]),
                        (schemas.BRONZE_QUARANTINE, QUARANTINE_COLS + ["_batch_id"])):
        assertDataFrameEqual(lake.read_table(table).select(*cols), never.read_table(table).select(*cols))
    ledger = lake.read_table(schemas.OPS_INGEST_LEDGER).where("status = 'ingested'").select("path", "batch_id")
    assertDataFrameEqual(ledger, never.read_table(schemas.OPS_INGEST_LEDGER).where("status = 'ingested'").select("path", "batch_id"))
    runs = lake.read_table(schemas.OPS_RUNS).orderBy("started_at").collect()
    # the runs killed before their last commit (the ledger marks) recorded by the next as
    # abandoned; the one killed after it as done, with its counts (its rerun had nothing to do)
    assert [r["status"] for r in runs] == ["failed"] * 3 + ["succeeded", "noop"]
    assert all(r["message"].startswith("abandoned: the process") for r in runs[:3])
    done = runs[3]
    assert RECORDED_LATE in done["message"]
    assert (done["rows_in"], done["rows_out"] + done["rows_quarantined"]) == (lines, lines)
    assert done["rows_quarantined"] == lake.read_table(schemas.BRONZE_QUARANTINE).count() > 0


@pytest.mark.parametrize("path, cause", [
    ("s3a://no-such-bucket/exports/day.parquet", "S3AFileSystem not found"),  # hadoop-aws not on the classpath
    ("hdfs://127.0.0.1:1/exports/day.parquet", "Connection refused"),  # the name node is down
])
def test_a_storage_failure_reading_parquet_is_not_called_a_bad_file(spark, cfg, path, cause):
    """Every Spark error reading Parquet was "unreadable Parquet", exit 2, as if the retailer's
    file were bad (issue 16). A storage failure is a StageError (exit 1, rerun) naming its cause."""
    from lakemine.core.errors import StageError
    from lakemine.stages.ingest import inspect_typed

    with pytest.raises(StageError, match=f"{path}: reading it failed, and not for anything in the input.*{cause}") as err:
        inspect_typed(spark, "parquet", path, 0, cfg.sources, None)
    assert not isinstance(err.value, InputError) and "\n" not in str(err.value)
