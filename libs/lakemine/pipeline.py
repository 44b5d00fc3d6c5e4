"""`lakemine run`: every stage in one local Spark session, then a summary for people."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyspark.sql.functions as F

from lakemine import schemas
from lakemine.config import Config
from lakemine.lake import Lake


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, fn, *args, **kwargs):
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.stages[name] = time.monotonic() - t0


def run_pipeline(lake: Lake, cfg: Config, args, console) -> str:
    """Generate (when no input), ingest, clean; returns the summary text."""
    from lakemine.clean import clean
    from lakemine.generate import GenerateParams, generate
    from lakemine.ingest import ingest

    timings = Timings()
    input_path = args.input
    if input_path is None:
        input_path = f"{lake.root}/_generated/seed{args.seed}-c{args.customers}-d{args.days}-r{args.dirty_rate}"
        params = GenerateParams(args.customers, args.days, args.seed, args.dirty_rate, args.format, args.files)
        console.step("generate", f"{args.customers:,} customers x {args.days} days (seed {args.seed}) -> {input_path}")
        manifest = timings.timed("generate", generate, lake.spark, input_path, params)
        console.step("generate", f"{manifest['data_lines']:,} lines in {len(manifest['files'])} file(s)")
    console.step("ingest", f"{input_path} -> {schemas.BRONZE_TRANSACTIONS}")
    result = timings.timed("ingest", ingest, lake, cfg, input_path, args.as_of)
    console.step("ingest", f"{result.run.rows_out:,} rows to bronze, {result.run.rows_quarantined:,} quarantined"
                 + (f", {len(result.skipped)} file(s) already ingested" if result.skipped else ""))
    console.step("clean", f"{schemas.BRONZE_TRANSACTIONS} -> {schemas.SILVER_TRANSACTIONS}")
    cleaned = timings.timed("clean", clean, lake, cfg, args.as_of)
    console.step("clean", f"{cleaned.rows_out:,} rows to silver, {cleaned.rows_quarantined:,} quarantined, "
                 f"{cleaned.rows_duplicate:,} duplicates removed")
    return summarize(lake, timings, result.run, cleaned)


def summarize(lake: Lake, timings: Timings, ingest_run, clean_run) -> str:
    lines = ["", f"lakemine run: lake {lake.root}", "", "tables"]
    for table in (schemas.BRONZE_TRANSACTIONS, schemas.BRONZE_QUARANTINE,
                  schemas.SILVER_TRANSACTIONS, schemas.SILVER_QUARANTINE):
        if lake.exists(table):
            n = lake.read_table(table).count()
            lines.append(f"  {table:<24} {n:>12,} rows  (version {lake.table_version(table)})")
    lines += ["", "quarantined by reason"]
    for table in (schemas.BRONZE_QUARANTINE, schemas.SILVER_QUARANTINE):
        if lake.exists(table):
            for r in lake.read_table(table).groupBy("reason").count().orderBy(F.desc("count")).collect():
                lines.append(f"  {table:<24} {r['reason']:<20} {r['count']:>10,}")
    lines += ["", "conservation (this run)"]
    for run in (ingest_run, clean_run):
        lines.append(
            f"  {run.stage:<8} in {run.rows_in:>12,} = out {run.rows_out:,} + quarantined "
            f"{run.rows_quarantined:,} + duplicates {run.rows_duplicate:,}   [{run.status}]"
        )
    lines += ["", "wall time per stage"]
    for name, secs in timings.stages.items():
        lines.append(f"  {name:<10} {secs:8.1f} s")
    lines.append(f"  {'total':<10} {sum(timings.stages.values()):8.1f} s")
    return "\n".join(lines)
