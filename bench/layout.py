"""Benchmark: silver by date partitions against Delta liquid clustering (issue 15, part 3).

Takes silver/transactions of a built lake (default: the 1 M history bench/daily.py builds) and
writes it twice in one Spark session: partitioned by `invoice_date` (lakemine's layout) and
liquid-clustered by `invoice_date` (CREATE TABLE ... CLUSTER BY, then OPTIMIZE). Then, --repeat
times, alternating which layout goes first, on each:

* **new day**: the rows of a date the table lacks written with `replaceWhere` on that date
  (what incremental clean does for a new day);
* **rewrite a day**: one existing date's rows written back with `replaceWhere` on that date
  (what clean does when a late or re-sent file touches an old date; a different date each
  repeat, so no repeat finds its date alone in a file an earlier repeat wrote);
* **read a day / a month**: `count()` of one date, of 30 dates.

Files touched, rows written and bytes removed come from each commit's operationMetrics; files read are the table's data files
whose [min, max] `invoice_date` covers the filter, i.e. what Delta's partition pruning or data
skipping can leave (computed from the files themselves). Times are wall seconds, medians.

    nice -n 10 .venv/bin/python bench/layout.py --repeat 3
    nice -n 10 .venv/bin/python bench/layout.py --source LAKE --repeat 1 --out /tmp/layout-smoke

Writes <out>/layout.json and layout.md (default out: bench/results). Never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = ("partitioned", "clustered")
OPS = ("new_day", "rewrite_day", "read_day", "read_month")


def say(text: str) -> None:
    print(f"[layout] {text}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=REPO / "bench" / "work" / "daily" / "1000000" / "history",
                    help="a lake whose silver/transactions is the data (default: bench/daily.py's 1 M history)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "layout")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    source = args.source / "silver" / "transactions"
    if not (source / "_delta_log").is_dir():
        print(f"layout: no silver table at {source}; build one first (bench/daily.py --lines 1000000)", file=sys.stderr)
        return 2

    import pyspark.sql.functions as F

    from lakemine.core.config import load_config
    from lakemine.io.spark import session

    spark = session(load_config(None))
    silver = spark.read.format("delta").load(str(source))
    dates = sorted(r[0] for r in silver.select("invoice_date").distinct().collect())
    last = dates[-1]
    new_date = last + timedelta(days=1)
    day_rows = silver.where(F.col("invoice_date") == F.lit(last)).withColumn("invoice_date", F.lit(new_date)).cache()
    rows, n_day = silver.count(), day_rows.count()
    say(f"{rows:,} rows over {len(dates)} dates; a day: {n_day:,} rows")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    paths = {layout: str(args.work / layout) for layout in LAYOUTS}

    def last_metrics(path: str) -> dict:
        row = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").first()
        m = row["operationMetrics"] or {}
        return {"operation": row["operation"], "files_added": int(m.get("numFiles", m.get("numAddedFiles", 0))),
                "files_removed": int(m.get("numRemovedFiles", 0)), "rows_written": int(m.get("numOutputRows", 0)),
                "bytes_removed": int(m.get("numRemovedBytes", 0))}

    def data_files(path: str) -> list[tuple]:
        d = spark.read.format("delta").load(path).groupBy(F.input_file_name().alias("f")).agg(
            F.min("invoice_date").alias("lo"), F.max("invoice_date").alias("hi"))
        return [(r["lo"], r["hi"]) for r in d.collect()]

    def files_read(files: list[tuple], lo, hi) -> int:
        return sum(1 for a, b in files if a <= hi and b >= lo)

    # --- build both
    build = {}
    t = time.perf_counter()
    silver.repartition("invoice_date").write.format("delta").partitionBy("invoice_date").save(paths["partitioned"])
    build["partitioned"] = {"secs": time.perf_counter() - t}
    t = time.perf_counter()
    cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in silver.schema.fields)
    spark.sql(f"CREATE TABLE delta.`{paths['clustered']}` ({cols}) USING delta CLUSTER BY (invoice_date)")
    silver.write.format("delta").mode("append").save(paths["clustered"])
    spark.sql(f"OPTIMIZE delta.`{paths['clustered']}`")
    build["clustered"] = {"secs": time.perf_counter() - t}
    for layout in LAYOUTS:
        build[layout]["files"] = len(data_files(paths[layout]))
        say(f"built {layout}: {build[layout]['secs']:.1f} s, {build[layout]['files']} files")
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{paths['clustered']}`").first().asDict()
    build["clustered"]["clustering_columns"] = list(detail.get("clusteringColumns") or [])

    def replace(path: str, df, day) -> dict:
        t = time.perf_counter()
        (df.write.format("delta").mode("overwrite").option("replaceWhere", f"invoice_date = DATE'{day}'").save(path))
        return {"secs": time.perf_counter() - t, **last_metrics(path)}

    def read(path: str, lo, hi) -> dict:
        t = time.perf_counter()
        n = spark.read.format("delta").load(path).where(F.col("invoice_date").between(F.lit(lo), F.lit(hi))).count()
        return {"secs": time.perf_counter() - t, "rows": n}

    runs = []
    for i in range(args.repeat):
        order = LAYOUTS if i % 2 == 0 else LAYOUTS[::-1]
        middle = dates[len(dates) // 2 + i]  # a date not rewritten before, as a late file would touch
        old_rows = silver.where(F.col("invoice_date") == F.lit(middle)).cache()
        old_rows.count()
        result = {}
        for layout in order:
            path = paths[layout]
            r = {"new_day": replace(path, day_rows, new_date), "rewrite_day": replace(path, old_rows, middle)}
            files = data_files(path)
            r["read_day"] = {**read(path, middle, middle), "files_read": files_read(files, middle, middle), "files": len(files)}
            month = (middle - timedelta(days=29), middle)
            r["read_month"] = {**read(path, *month), "files_read": files_read(files, *month), "files": len(files)}
            # back to the built state's content for the next repeat: the new day removed
            spark.sql(f"DELETE FROM delta.`{path}` WHERE invoice_date = DATE'{new_date}'")
            result[layout] = r
            say(f"repeat {i + 1} {layout}: " + ", ".join(f"{op} {r[op]['secs']:.1f} s" for op in OPS))
        runs.append(result)

    med = {layout: {op: {"secs": statistics.median(r[layout][op]["secs"] for r in runs),
                         **{k: v for k, v in runs[-1][layout][op].items() if k != "secs"}} for op in OPS}
           for layout in LAYOUTS}
    meta = {"started": started, "repeat": args.repeat,
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
            "rows": rows, "dates": len(dates), "day_rows": n_day, "source": str(args.source.name)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "layout.json").write_text(json.dumps({"meta": meta, "build": build, "repeats": runs, "median": med},
                                                     indent=2, default=str))
    lines = [
        "# Silver layout: date partitions vs liquid clustering (bench/layout.py)", "",
        f"{meta['started']} · {meta['machine']} · {rows:,} silver rows over {len(dates)} dates, "
        f"a day {n_day:,} rows · medians of {args.repeat}", "",
        "| layout | build (s) | files | new day (s) | files +/- | rewrite a day (s) | files +/- | rows written "
        "| read a day (s) | files read | read 30 days (s) | files read |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layout in LAYOUTS:
        m, b = med[layout], build[layout]
        lines.append(
            f"| {layout} | {b['secs']:.1f} | {b['files']} | {m['new_day']['secs']:.2f} | "
            f"{m['new_day']['files_added']} / {m['new_day']['files_removed']} | {m['rewrite_day']['secs']:.2f} | "
            f"{m['rewrite_day']['files_added']} / {m['rewrite_day']['files_removed']} | {m['rewrite_day']['rows_written']:,} | "
            f"{m['read_day']['secs']:.2f} | "
            f"{m['read_day']['files_read']} of {m['read_day']['files']} | {m['read_month']['secs']:.2f} | "
            f"{m['read_month']['files_read']} of {m['read_month']['files']} |")
    text = "\n".join(lines) + "\n"
    (args.out / "layout.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
