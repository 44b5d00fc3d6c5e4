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
    """Generate (when no input), ingest, clean, features, fpgrowth, kmeans; returns the summary."""
    from lakemine.clean import clean
    from lakemine.features import run_features
    from lakemine.fpgrowth import MiningParams, run_fpgrowth
    from lakemine.kmeans import KMeansParams, run_kmeans
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
    console.step("features", f"{schemas.SILVER_TRANSACTIONS} -> baskets, customer features, labels")
    feats = timings.timed("features", run_features, lake, cfg, args.as_of)
    console.step("features", f"{feats.rows_out:,} customers as of {feats.as_of}")
    console.step("fpgrowth", f"{schemas.GOLD_BASKETS} -> itemsets and rules")
    mined = timings.timed("fpgrowth", run_fpgrowth, lake, cfg, MiningParams(), feats.as_of)
    console.step("fpgrowth", mined.message or "")
    console.step("kmeans", f"{schemas.GOLD_CUSTOMER_FEATURES} -> segments")
    segmented = timings.timed("kmeans", run_kmeans, lake, cfg, KMeansParams(k_range=(2, 8)), feats.as_of)
    console.step("kmeans", segmented.message or "")
    return summarize(lake, timings, result.run, cleaned, feats.as_of)


def summarize(lake: Lake, timings: Timings, ingest_run, clean_run, as_of=None) -> str:
    lines = ["", f"lakemine run: lake {lake.root}", "", "tables"]
    for table in (schemas.BRONZE_TRANSACTIONS, schemas.BRONZE_QUARANTINE,
                  schemas.SILVER_TRANSACTIONS, schemas.SILVER_QUARANTINE, schemas.GOLD_BASKETS,
                  schemas.GOLD_CUSTOMER_FEATURES, schemas.GOLD_LABELS, schemas.GOLD_FREQUENT_ITEMSETS,
                  schemas.GOLD_ASSOCIATION_RULES, schemas.GOLD_CUSTOMER_SEGMENTS):
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
    if as_of is not None and lake.exists(schemas.GOLD_ASSOCIATION_RULES):
        rules = lake.read_table(schemas.GOLD_ASSOCIATION_RULES).where(F.col("as_of") == F.lit(as_of))
        lines += ["", f"association rules as of {as_of}: {rules.count():,} (top 5 by lift)"]
        for r in rules.orderBy(F.desc("lift"), F.desc("support")).limit(5).collect():
            lhs = " + ".join(r["antecedent_descriptions"] or r["antecedent"])
            lines.append(f"  {lhs[:60]:<60} -> {(r['consequent_description'] or r['consequent'][0])[:32]:<32} "
                         f"support {r['support']:.3f} confidence {r['confidence']:.2f} lift {r['lift']:.1f}")
    if as_of is not None and lake.exists(schemas.GOLD_SEGMENT_PROFILES):
        profiles = lake.read_table(schemas.GOLD_SEGMENT_PROFILES).where(F.col("as_of") == F.lit(as_of))
        lines += ["", "customer segments (centres in original units)"]
        for r in profiles.orderBy("segment").collect():
            lines.append(f"  {r['segment']}  {r['segment_label']:<14} {r['size']:>8,} customers  recency {r['recency_days']:6.0f} d  "
                         f"frequency {r['frequency']:6.1f}  monetary {r['monetary']:12,.0f}")
    lines += ["", "wall time per stage"]
    for name, secs in timings.stages.items():
        lines.append(f"  {name:<10} {secs:8.1f} s")
    lines.append(f"  {'total':<10} {sum(timings.stages.values()):8.1f} s")
    return "\n".join(lines)
