from __future__ import annotations

import datetime as dt

import pyspark.sql.functions as F
import pytest
from pyspark.testing import assertDataFrameEqual

from conftest import clean_lake
from lakemine.core.errors import SchemaError
from lakemine.io import schemas
from lakemine.stages.clean import CleanParams, clean_transactions, quarantine_rows, silver_rows

FORMATS = ("M/d/yyyy H:mm", "M/d/yy H:mm", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd HH:mm:ss")
PARAMS = CleanParams.from_config(None, date_formats=FORMATS, max_unit_price=1000.0, max_quantity=5000,
                                 missing_customer="quarantine")
BRONZE_DDL = ", ".join(f"{c} string" for c in schemas.RAW_COLUMNS) + ", _source_file string, _line long, _batch_id string"
SILVER_COLS = ["invoice_no", "stock_code", "description", "quantity", "invoice_ts", "invoice_date",
               "unit_price", "line_amount", "customer_id", "country", "is_return", "_line"]


def bronze_df(spark, rows):
    """rows: (InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country)."""
    return spark.createDataFrame(
        [tuple(r) + ("file:/x.csv", i + 2, "b1") for i, r in enumerate(rows)], BRONZE_DDL)


def ts(text):
    return dt.datetime.fromisoformat(text)


def test_clean_types_trims_and_marks_returns(spark):
    bronze = bronze_df(spark, [
        (" 536365 ", "85123a", " WHITE HEART ", "6", "12/1/2010 8:26", "2.55", "17850.0", "United Kingdom"),
        ("c536379", "D", "Discount", "-1", "12/9/11 9:41", "27.50", "14527", "United Kingdom"),
        ("489434", "85048", "ROSE", "+12", "2009-12-01T07:45:00", "6.95", "13085", "EIRE"),
        ("489435", "22350", "CAT", "24", "2009-12-01 07:46:00", ".5", "13085", "EIRE"),
    ])
    silver = silver_rows(clean_transactions(bronze, PARAMS)).select(*SILVER_COLS)
    expected = spark.createDataFrame([
        ("536365", "85123A", "WHITE HEART", 6, ts("2010-12-01 08:26"), dt.date(2010, 12, 1), 2.55, 15.3, "17850", "United Kingdom", False, 2),
        ("C536379", "D", "Discount", -1, ts("2011-12-09 09:41"), dt.date(2011, 12, 9), 27.5, -27.5, "14527", "United Kingdom", True, 3),
        ("489434", "85048", "ROSE", 12, ts("2009-12-01 07:45"), dt.date(2009, 12, 1), 6.95, 83.4, "13085", "EIRE", False, 4),
        ("489435", "22350", "CAT", 24, ts("2009-12-01 07:46"), dt.date(2009, 12, 1), 0.5, 12.0, "13085", "EIRE", False, 5),
    ], silver.schema)
    assertDataFrameEqual(silver, expected, rtol=1e-9)


def test_clean_quarantines_each_failure_with_its_reason(spark):
    good = ("1", "A", "X", "1", "12/1/2010 8:26", "1.00", "100", "UK")
    bad = [
        (("", "A", "X", "1", "12/1/2010 8:26", "1.00", "100", "UK"), "missing_invoice"),
        (("2", " ", "X", "1", "12/1/2010 8:26", "1.00", "100", "UK"), "missing_stock_code"),
        (("3", "A", "X", "1", "31/31/2011 25:61", "1.00", "100", "UK"), "bad_date"),
        (("4", "A", "X", "1", "not a date", "1.00", "100", "UK"), "bad_date"),
        (("5", "A", "X", "1", "12/1/0010 8:26", "1.00", "100", "UK"), "bad_date"),
        (("6", "A", "X", "12x", "12/1/2010 8:26", "1.00", "100", "UK"), "bad_number"),
        (("7", "A", "X", "1", "12/1/2010 8:26", "2,55", "100", "UK"), "bad_number"),
        (("8", "A", "X", "1", "12/1/2010 8:26", "N/A", "100", "UK"), "bad_number"),
        (("9", "A", "X", "1", "12/1/2010 8:26", "1.00", "", "UK"), "missing_customer"),
        (("10", "A", "X", "-3", "12/1/2010 8:26", "1.00", "100", "UK"), "negative_quantity"),
        (("11", "A", "X", "0", "12/1/2010 8:26", "1.00", "100", "UK"), "zero_quantity"),
        (("C12", "A", "X", "3", "12/1/2010 8:26", "1.00", "100", "UK"), "bad_return"),
        (("13", "A", "X", "1", "12/1/2010 8:26", "-11062.06", "100", "UK"), "bad_price"),
        (("14", "A", "X", "1", "12/1/2010 8:26", "38970.00", "100", "UK"), "extreme_price"),
        (("15", "A", "X", "80995", "12/1/2010 8:26", "2.08", "100", "UK"), "extreme_quantity"),
        (("16", "A", "X", "99999999999", "12/1/2010 8:26", "1.00", "100", "UK"), "bad_number"),
    ]
    bronze = bronze_df(spark, [good] + [row for row, _ in bad])
    classified = clean_transactions(bronze, PARAMS)
    got = quarantine_rows(classified).select("InvoiceNo", "reason", "stage", "_line")
    expected = spark.createDataFrame(
        [(row[0], reason, "clean", i + 3) for i, (row, reason) in enumerate(bad)],
        "InvoiceNo string, reason string, stage string, _line long")
    assertDataFrameEqual(got, expected)
    assert [r["invoice_no"] for r in silver_rows(classified).collect()] == ["1"]
    detail = quarantine_rows(classified).where(F.col("InvoiceNo") == "7").first()["detail"]
    assert detail == "UnitPrice '2,55' is not a number"


def test_clean_removes_exact_duplicates_and_keeps_the_first_copy(spark):
    row = ("536365", "85123A", "HEART", "6", "12/1/2010 8:26", "2.55", "17850", "United Kingdom")
    near = ("536365", "85123A", "HEART", "6", "12/1/2010 8:26", "2.55", "17850", "United Kingdom ")
    bronze = bronze_df(spark, [row, row, near, row])
    classified = clean_transactions(bronze, PARAMS)
    assert classified.agg(F.sum(F.col("copies") - 1)).first()[0] == 2
    # a trailing space makes it a different raw line: kept, not a duplicate
    assert sorted(r["_line"] for r in silver_rows(classified).collect()) == [2, 4]


def test_cap_policy_caps_outliers_instead_of_quarantining(spark):
    bronze = bronze_df(spark, [
        ("14", "A", "X", "1", "12/1/2010 8:26", "38970.00", "100", "UK"),
        ("15", "A", "X", "-80995", "12/1/2010 8:26", "2.08", "100", "UK"),
        ("C16", "A", "X", "-80995", "12/1/2010 8:26", "2.08", "100", "UK"),
    ])
    p = CleanParams.from_config(None, date_formats=FORMATS, outlier_policy="cap", max_unit_price=1000.0, max_quantity=5000)
    classified = clean_transactions(bronze, p)
    got = silver_rows(classified).select("invoice_no", "quantity", "unit_price")
    expected = spark.createDataFrame([("14", 1, 1000.0), ("C16", -5000, 2.08)], got.schema)
    assertDataFrameEqual(got, expected)
    assert [r["reason"] for r in quarantine_rows(classified).collect()] == ["negative_quantity"]


def test_guest_lines_stay_in_silver_without_a_customer_by_default(spark):
    bronze = bronze_df(spark, [("9", "A", "X", "1", "12/1/2010 8:26", "1.00", " ", "UK")])
    classified = clean_transactions(bronze, CleanParams.from_config(None, date_formats=FORMATS))
    rows = silver_rows(classified).select("invoice_no", "customer_id").collect()
    assert [(r["invoice_no"], r["customer_id"]) for r in rows] == [("9", None)]


def test_the_deduplication_takes_partitions_enough_for_its_rows(spark):
    from lakemine.stages.clean import ROWS_PER_PARTITION, dedupe_exact, shuffle_partitions

    configured = int(spark.conf.get("spark.sql.shuffle.partitions"))
    assert shuffle_partitions(spark, configured * ROWS_PER_PARTITION) is None
    assert shuffle_partitions(spark, configured * ROWS_PER_PARTITION + 1) == configured + 1
    assert shuffle_partitions(spark, 50_000_000) == 50_000_000 // ROWS_PER_PARTITION
    rows = bronze_df(spark, [(str(i), "A", "X", "1", f"12/{i % 9 + 1}/2010 8:26", "1.00", "100", "UK") for i in range(30)])
    deduped = dedupe_exact(schemas.with_source_columns(rows), by=F.col("InvoiceDate"), partitions=configured + 3)
    assert deduped.rdd.getNumPartitions() == configured + 3 and deduped.count() == 30


def test_the_deduplication_keeps_the_least_copy_by_one_long_as_by_the_struct(spark):
    """The hash aggregation over `Lineage`'s long keeps the copy the struct's minimum keeps:
    least file (by UTF-8 bytes), then line, then batch; the struct's sort aggregation stays for
    lineage that cannot be packed (a null line)."""
    from lakemine.stages.clean import LINEAGE, Lineage, dedupe_exact, lineage_groups

    records = [("1", "A", "X", "1", "12/1/2010 8:26", "1.00", "100", "UK"), ("2", "B", "Y", "2", "12/2/2010 9:00", "3.00", "101", "UK"),
               ("3", "C", "Z", "3", "12/3/2010 9:00", "4.00", "102", "UK")]
    files = ["file:/in/b.csv", "file:/in/a.csv", "file:/in/\u00e9t\u00e9.csv", "file:/in/Z.csv", "file:/in/a b.csv"]
    batches = ["b9", "b10", "a1"]
    lines = [(r, files[(i * 7 + k) % 5], 1000 - 37 * k + i, batches[(i + k) % 3])
             for i, r in enumerate(records) for k in range(6)]
    lines += [(records[0], "file:/in/a.csv", 2, b) for b in batches]  # same file and line, three batches
    bronze = spark.createDataFrame([tuple(r) + (f, n, b) for r, f, n, b in lines], BRONZE_DDL)
    lineage = Lineage.of(lineage_groups(bronze))
    assert lineage is not None and lineage.files[0] == "file:/in/Z.csv" and lineage.batches == ("a1", "b10", "b9")
    expected = {rec[0]: min((f, n, b) for r, f, n, b in lines if r == rec) for rec in records}
    packed = dedupe_exact(schemas.with_source_columns(bronze), by=F.col("InvoiceDate"))
    assert "SortAggregate" not in packed._jdf.queryExecution().executedPlan().toString()
    got = {r["InvoiceNo"]: (r["_source_file"], r["_line"], r["_batch_id"]) for r in packed.collect()}
    assert got == expected
    assert {r["InvoiceNo"]: r["copies"] for r in packed.collect()} == {"1": 9, "2": 6, "3": 6}
    # a null line: no packing, the struct's minimum (nulls first), the same columns
    with_null = bronze.union(spark.createDataFrame([records[1] + ("file:/in/Z.csv", None, "b9")], BRONZE_DDL))
    assert Lineage.of(lineage_groups(with_null)) is None and Lineage.of(lineage_groups(bronze.limit(0))) is None
    by_struct = dedupe_exact(schemas.with_source_columns(with_null), by=F.col("InvoiceDate"))
    assert by_struct.columns == packed.columns
    got = {r["InvoiceNo"]: tuple(r[c] for c in LINEAGE) for r in by_struct.collect()}
    assert expected["2"][0] == "file:/in/Z.csv" and got == {**expected, "2": ("file:/in/Z.csv", None, "b9")}


def test_clean_names_the_missing_column(spark):
    df = spark.createDataFrame([("1",)], "InvoiceNo string")
    with pytest.raises(SchemaError, match="table bronze/transactions has no column 'StockCode'"):
        clean_transactions(df, PARAMS)


def test_clean_stage_is_idempotent_and_records_conservation(lake, lake_cfg, spark):
    rows = [
        ("1", "A", "X", "1", "12/1/2010 8:26", "1.00", "100", "UK"),
        ("1", "A", "X", "1", "12/1/2010 8:26", "1.00", "100", "UK"),
        ("2", "A", "X", "1", "bad", "1.00", "100", "UK"),
        ("3", "B", "Y", "2", "12/2/2010 9:00", "3.00", "101", "UK"),
    ]
    bronze = bronze_df(spark, rows).withColumn("_ingested_at", F.current_timestamp())
    lake.append(bronze, schemas.BRONZE_TRANSACTIONS)
    first = clean_lake(lake, lake_cfg)
    silver1 = lake.read_table(schemas.SILVER_TRANSACTIONS).collect()
    second = clean_lake(lake, lake_cfg)
    assertDataFrameEqual(lake.read_table(schemas.SILVER_TRANSACTIONS), silver1)
    assertDataFrameEqual(lake.read_table(schemas.SILVER_QUARANTINE).select("InvoiceNo", "reason"),
                         spark.createDataFrame([("2", "bad_date")], "InvoiceNo string, reason string"))
    assert (first.rows_in, first.rows_out, first.rows_quarantined, first.rows_duplicate) == (4, 2, 1, 1)
    assert (second.status, second.rows_in, second.rows_out) == ("noop", 0, 0)
    assert first.as_of == second.as_of == dt.date(2010, 12, 2)
    recorded = lake.read_table(schemas.OPS_RUNS).where("stage = 'clean'").orderBy("started_at").collect()
    assert [r["status"] for r in recorded] == ["succeeded", "noop"]
    for r in recorded[:1]:
        assert (r["rows_in"], r["rows_out"], r["rows_quarantined"], r["rows_duplicate"]) == (4, 2, 1, 1)
        assert r["inputs"] == {"bronze/transactions": 0}
        assert set(r["outputs"]) == {"silver/transactions", "silver/quarantine", "ops/clean_batches"}
        # silver is partitioned by invoice date: one file per day of the two
        assert r["files_added"]["silver/transactions"] == 2
        assert r["quarantine_reasons"] == {"bad_date": 1}


def test_a_full_clean_writes_one_silver_file_per_date_from_the_dedupe_shuffle(lake, lake_cfg, spark):
    """Rows of one date spread over every bronze partition still land in one silver file:
    the de-duplication's shuffle groups them by date (no repartition before the write). With
    AQE's coalescing off, tiny data cannot hide a date split over shuffle partitions."""
    from lakemine.io.lake import Lake

    rows = [(str(i), f"S{i % 7}", "X", "1", f"12/{1 + i % 3}/2010 {8 + i % 9}:{i % 60:02d}", "1.00", str(100 + i % 5), "UK")
            for i in range(120)]
    lake.append(bronze_df(spark, rows).repartition(6).withColumn("_ingested_at", F.current_timestamp()),
                schemas.BRONZE_TRANSACTIONS)
    uncoalesced = spark.newSession()
    uncoalesced.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    run = clean_lake(Lake.at(uncoalesced, lake.root), lake_cfg)
    assert (run.rows_out, run.rows_quarantined) == (120, 0)
    assert lake.files_touched(schemas.SILVER_TRANSACTIONS, run.outputs[schemas.SILVER_TRANSACTIONS]) == (3, 0)


def test_a_full_clean_counts_as_it_writes_and_leaves_the_session_fit_for_mllib(lake, lake_cfg, spark):
    """The full rebuild counts records as it writes silver (no separate tally pass); copies of
    a failing record are duplicates, as in silver. It must not leave the session
    unserializable (Spark 4.0 does after `DataFrame.observe`): a model with a training summary,
    fitted in the same session afterwards, still evaluates."""
    rows = ([("1", "A", "X", "1", "12/1/2010 8:26", "1.00", "100", "UK")] * 3
            + [("2", "B", "Y", "2", "12/2/2010 9:00", "3.00", "101", "UK")]
            + [("3", "C", "Z", "1", "not a date", "1.00", "102", "UK")] * 2)
    lake.append(bronze_df(spark, rows).withColumn("_ingested_at", F.current_timestamp()), schemas.BRONZE_TRANSACTIONS)
    run = clean_lake(lake, lake_cfg)
    assert (run.rows_in, run.rows_out, run.rows_quarantined, run.rows_duplicate) == (6, 2, 1, 3)
    assert run.quarantine_reasons == {"bad_date": 1}
    assert lake.read_table(schemas.SILVER_QUARANTINE).count() == 1
    assert lake.read_table(schemas.SILVER_TRANSACTIONS).count() == 2

    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.linalg import Vectors
    points = spark.createDataFrame([(Vectors.dense([float(x)]), float(x > 1)) for x in range(4)], ["features", "label"])
    model = LogisticRegression(maxIter=5).fit(points)
    assert model.evaluate(points).areaUnderROC > 0.5
