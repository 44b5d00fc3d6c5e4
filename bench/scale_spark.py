"""The bare-Spark peer of bench/scale.py: the I/O of lakemine's ingest -> clean -> features
with none of its checks, as issue 17 measured it (its 58 s at 5 M lines is the yardstick of
the 90 s target: within 1.5x). The same session settings and Delta jars as lakemine's local
mode (lakemine.io.spark.session), on the same raw CSV files:

* ingest: the CSV files read by Spark's CSV reader (every field a string, header line),
  a 64-bit hash of each row, written to a Delta table;
* clean: exact duplicates removed by one group-by over the row's fields; quantity, price and
  the invoice time typed (clean.date_formats, in order); written to a Delta table;
* features: one aggregation per customer (invoices, lines, spend, first and last day), written
  to a Delta table.

No line numbers, content-hashed batches, quarantine, reason codes, run records, incremental
bookkeeping, date partitioning or training snapshots: what lakemine does on top is its cost.

    .venv/bin/python bench/scale_spark.py --input RAW --work DIR --result FILE

Progress lines on stderr have lakemine's format, so bench/e2e.run_tracked attributes memory
to stages; --result gets seconds per stage and the counts (JSON).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

T0 = time.monotonic()

import pyspark.sql.functions as F  # noqa: E402

from lakemine.core.config import load_config  # noqa: E402
from lakemine.io.spark import session  # noqa: E402

COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")


def step(stage: str, text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {stage:<8} {text}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="folder of raw CSV files (lakemine generate's layout)")
    ap.add_argument("--work", required=True, help="folder for the three Delta tables (replaced)")
    ap.add_argument("--result", required=True, help="JSON file for seconds per stage and counts")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = load_config()
    spark = session(cfg)
    secs, counts = {}, {}

    step("ingest", f"{args.input} -> bronze (Delta)")
    t = time.monotonic()
    raw = spark.read.option("header", True).csv(f"{args.input}/*.csv").toDF(*COLUMNS)
    raw.withColumn("_row_hash", F.xxhash64(*COLUMNS)).write.format("delta").save(str(work / "bronze"))
    secs["ingest"] = time.monotonic() - t

    step("clean", "bronze -> silver (Delta): one de-duplicating group-by, typed")
    t = time.monotonic()
    bronze = spark.read.format("delta").load(str(work / "bronze"))
    distinct = bronze.groupBy(*COLUMNS).agg(F.count(F.lit(1)).alias("copies"), F.first("_row_hash").alias("_row_hash"))
    ts = F.coalesce(*[F.try_to_timestamp(F.col("InvoiceDate"), F.lit(f)) for f in cfg.clean.date_formats])
    silver = distinct.select(
        F.upper(F.trim("InvoiceNo")).alias("invoice_no"), F.upper(F.trim("StockCode")).alias("stock_code"),
        F.trim("Description").alias("description"), F.col("Quantity").try_cast("int").alias("quantity"),
        ts.alias("invoice_ts"), F.to_date(ts).alias("invoice_date"), F.col("UnitPrice").try_cast("double").alias("unit_price"),
        F.trim("CustomerID").alias("customer_id"), F.trim("Country").alias("country"), "copies", "_row_hash")
    silver.write.format("delta").save(str(work / "silver"))
    secs["clean"] = time.monotonic() - t

    step("features", "silver -> customer features (Delta): one aggregation per customer")
    t = time.monotonic()
    silver = spark.read.format("delta").load(str(work / "silver"))
    (silver.where(F.col("customer_id").isNotNull())
     .groupBy("customer_id")
     .agg(F.countDistinct("invoice_no").alias("invoices"), F.count(F.lit(1)).alias("lines"),
          F.sum(F.col("quantity") * F.col("unit_price")).alias("spend"),
          F.min("invoice_date").alias("first_day"), F.max("invoice_date").alias("last_day"))
     .write.format("delta").save(str(work / "features")))
    secs["features"] = time.monotonic() - t

    for table in ("bronze", "silver", "features"):
        counts[table] = spark.read.format("delta").load(str(work / table)).count()
    step("features", f"done: bronze {counts['bronze']:,}, silver {counts['silver']:,}, customers {counts['features']:,}")
    Path(args.result).write_text(json.dumps({"stages": secs, "counts": {"clean": {"rows_out": counts["silver"]}, **counts}}, indent=2))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
