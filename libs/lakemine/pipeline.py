"""`lakemine run`: every stage in one local Spark session, then a summary for people."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyspark.sql.functions as F

from lakemine.core.config import Config
from lakemine.io import schemas
from lakemine.io.lake import Lake


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
    """Generate (when no input), ingest, clean, features (with the training snapshots),
    fpgrowth, recommend, forecast, kmeans, tune, train (the best trial's settings), score and
    the report; returns the summary. `args.skip_slow`: recommend without its held-out
    evaluation, no forecast, no tune (train takes the config's settings)."""
    from lakemine.learning import forecast
    from lakemine.mining import fpgrowth, kmeans, recommend
    from lakemine.stages import clean, features, ingest
    from lakemine.stages.generate import GenerateParams, generate

    timings = Timings()
    input_path = args.input
    if input_path is None:
        g = GenerateParams.from_config(cfg, customers=args.customers, days=args.days, seed=args.seed,
                                       dirty_rate=args.dirty_rate if args.dirty_rate is not None else cfg.run.dirty_rate,
                                       format=args.format, files=args.files, population=args.population)
        input_path = f"{lake.root}/_generated/seed{g.seed}-c{g.customers}-d{g.days}-r{g.dirty_rate}" + (
            "-stationary" if g.population == "stationary" else "")
        console.step("generate", f"{g.customers:,} customers x {g.days} days (seed {g.seed}) -> {input_path}")
        manifest = timings.timed("generate", generate, lake.spark, input_path, g)
        console.step("generate", f"{manifest['data_lines']:,} lines in {len(manifest['files'])} file(s)")
    console.step("ingest", f"{input_path} -> {schemas.BRONZE_TRANSACTIONS}")
    ingested = timings.timed("ingest", ingest.run, lake, cfg, ingest.IngestParams.from_config(
        cfg, input=input_path, as_of=args.as_of, source=getattr(args, "source", None)))
    skipped = ingested.result.skipped
    console.step("ingest", f"{ingested.rows_out:,} rows to bronze, {ingested.rows_quarantined:,} quarantined"
                 + (f", {len(skipped)} file(s) already ingested" if skipped else ""))
    console.step("clean", f"{schemas.BRONZE_TRANSACTIONS} -> {schemas.SILVER_TRANSACTIONS}")
    cleaned = timings.timed("clean", clean.run, lake, cfg, clean.CleanParams.from_config(cfg, as_of=args.as_of))
    console.step("clean", f"{cleaned.rows_out:,} rows to silver, {cleaned.rows_quarantined:,} quarantined, "
                 f"{cleaned.rows_duplicate:,} duplicates removed")
    console.step("features", f"{schemas.SILVER_TRANSACTIONS} -> baskets, customer features, labels")
    feats = timings.timed("features", features.run, lake, cfg, features.FeatureParams.from_config(cfg, as_of=args.as_of))
    snapshots = feats.result
    console.step("features", f"{feats.rows_out:,} customers as of {feats.as_of}; training snapshots: "
                 + (", ".join(f"{r.as_of} ({r.rows_out:,})" for r in snapshots[:-1]) or "none (history too short)"))
    console.step("fpgrowth", f"{schemas.GOLD_BASKETS} -> itemsets and rules")
    mined = timings.timed("fpgrowth", fpgrowth.run, lake, cfg, fpgrowth.MiningParams.from_config(cfg, as_of=feats.as_of))
    console.step("fpgrowth", mined.message or "")
    skip_slow = getattr(args, "skip_slow", False)
    rp = recommend.RecommendParams.from_config(cfg, as_of=feats.as_of, evaluate=False if skip_slow else None)
    console.step("recommend", f"{schemas.GOLD_ASSOCIATION_RULES} -> {schemas.GOLD_RECOMMENDATIONS}"
                 + ("" if rp.evaluate else " (held-out evaluation skipped)"))
    recommended = timings.timed("recommend", recommend.run, lake, cfg, rp)
    console.step("recommend", recommended.message or "")
    forecasted = None
    if skip_slow:
        console.step("forecast", "skipped (--skip-slow)")
    else:
        fp = forecast.ForecastParams.from_config(cfg, as_of=feats.as_of)
        console.step("forecast", f"{schemas.SILVER_TRANSACTIONS} -> {schemas.GOLD_DEMAND_FORECAST} ({fp.horizon_weeks} weeks)")
        forecasted = timings.timed("forecast", forecast.run, lake, cfg, fp)
        console.step("forecast", forecasted.message or "")
    console.step("kmeans", f"{schemas.GOLD_CUSTOMER_FEATURES} -> segments")
    km = kmeans.KMeansParams.from_config(cfg, as_of=feats.as_of, k_range=cfg.run.k_range)
    segmented = timings.timed("kmeans", kmeans.run, lake, cfg, km)
    console.step("kmeans", segmented.message or "")
    learned = _learn(lake, cfg, args, console, timings, feats.as_of, trainable=len(snapshots) > 1)
    report_path = None
    if not getattr(args, "no_report", False):
        from lakemine import report

        console.step("report", f"plots and tables -> {lake.root}/reports/{feats.as_of}/report.html")
        report_path = timings.timed("report", report.run, lake, cfg, report.ReportParams(as_of=feats.as_of)).result
    return summarize(lake, timings, ingested, cleaned, feats.as_of, learned, report_path,
                     more=[recommended.message and f"recommendations: {recommended.message}",
                           forecasted and forecasted.message and f"demand forecasts: {forecasted.message}"])


@dataclass
class Learned:
    """What train and score left for the summary (None when training could not run)."""

    meta: dict | None = None
    skipped: str | None = None
    scored: int = 0
    drifts: list = field(default_factory=list)
    tuned: str | None = None  # the model search's message (None: skipped)


def _learn(lake: Lake, cfg: Config, args, console, timings: Timings, as_of, trainable: bool) -> Learned:
    from lakemine.learning import score, train

    if not trainable:
        why = (f"no complete churn labels: the data must span the churn horizon ({cfg.features.horizon_days} days) "
               f"plus {cfg.features.snapshot_spacing_days} days of history")
        console.step("train", f"skipped: {why}")
        return Learned(skipped=why)
    tuned = None
    if getattr(args, "skip_slow", False):
        console.step("tune", "skipped (--skip-slow): training takes the config's settings")
    else:
        tuned = _tune(lake, cfg, args, console, timings)
    p = train.TrainParams.from_config(cfg, epochs=getattr(args, "epochs", None), workers=getattr(args, "workers", None),
                                      params="best" if tuned else None, verbose=args.verbose)
    console.step("train", f"features + labels -> churn model ({p.backend} x {p.workers} processes, at most {p.epochs} epochs)")
    trained = timings.timed("train", train.run, lake, cfg, p)
    meta = trained.result
    console.step("train", trained.message or "")
    console.step("score", f"{schemas.GOLD_CUSTOMER_FEATURES} as of {as_of} -> {schemas.GOLD_CUSTOMER_SCORES}")
    scored = timings.timed("score", score.run, lake, cfg,
                           score.ScoreParams.from_config(cfg, model_version=meta["model_version"], as_of=as_of))
    warned = [d.feature for d in scored.result if d.status == "warn"]
    console.step("score", f"{scored.rows_out:,} customers scored; drift warnings: {', '.join(warned) or 'none'}")
    return Learned(meta=meta, scored=scored.rows_out, drifts=scored.result, tuned=tuned)


def _tune(lake: Lake, cfg: Config, args, console, timings: Timings) -> str | None:
    """The model search (its trials capped at --epochs too); its message."""
    from lakemine.learning import tune

    epochs = getattr(args, "epochs", None)
    p = tune.TuneParams.from_config(cfg, epochs=min(epochs, cfg.tune.epochs) if epochs else None)
    console.step("tune", f"{p.trials} trials + the config's, at most {p.epochs} epochs each -> {schemas.OPS_TUNE_TRIALS}")
    tuned = timings.timed("tune", tune.run, lake, cfg, p)
    console.step("tune", tuned.message or "")
    return tuned.message


def summarize(lake: Lake, timings: Timings, ingest_run, clean_run, as_of=None, learned: Learned | None = None,
              report: str | None = None, more: list[str | None] = ()) -> str:
    lines = ["", f"lakemine run: lake {lake.root}", "", "tables"]
    for table in (schemas.BRONZE_TRANSACTIONS, schemas.BRONZE_QUARANTINE,
                  schemas.SILVER_TRANSACTIONS, schemas.SILVER_QUARANTINE, schemas.GOLD_BASKETS,
                  schemas.GOLD_CUSTOMER_FEATURES, schemas.GOLD_LABELS, schemas.GOLD_FREQUENT_ITEMSETS,
                  schemas.GOLD_ASSOCIATION_RULES, schemas.GOLD_RECOMMENDATIONS, schemas.GOLD_DEMAND_FORECAST,
                  schemas.GOLD_CUSTOMER_SEGMENTS, schemas.GOLD_CUSTOMER_SCORES,
                  schemas.OPS_DRIFT):
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
    for line in more:
        if line:
            lines += ["", line]
    if as_of is not None and lake.exists(schemas.GOLD_SEGMENT_PROFILES):
        profiles = lake.read_table(schemas.GOLD_SEGMENT_PROFILES).where(F.col("as_of") == F.lit(as_of))
        lines += ["", "customer segments (centres in original units)"]
        for r in profiles.orderBy("segment").collect():
            lines.append(f"  {r['segment']}  {r['segment_label']:<14} {r['size']:>8,} customers  recency {r['recency_days']:6.0f} d  "
                         f"frequency {r['frequency']:6.1f}  monetary {r['monetary']:12,.0f}")
    if learned is not None:
        lines += ["", "churn model"]
        if learned.meta is None:
            lines.append(f"  not trained: {learned.skipped}")
        else:
            m = learned.meta
            lines.append(f"  models/churn/{m['model_version']}  ({m['backend']} x {m['world_size']}, "
                         f"{m['epochs']['run']} epochs, best {m['epochs']['best']}; split by {m['split']['kind']}: "
                         f"{m['rows']['train']:,} train / {m['rows']['val']:,} validation rows)")
            gain = m["validation"]["auc"] - m["baseline"]["auc"]
            lines.append(f"  validation AUC {m['validation']['auc']:.4f} vs logistic-regression baseline "
                         f"{m['baseline']['auc']:.4f} ({gain:+.4f})")
            for b in m.get("baselines", [])[1:]:
                lines.append(f"  {'':14} vs {b['model']} {b['auc']:.4f} ({m['validation']['auc'] - b['auc']:+.4f})")
            if learned.tuned:
                lines.append(f"  model search: {learned.tuned}")
            if m.get("tuned_from"):
                lines.append(f"  trained with the settings of the search's trial {m['tuned_from']['trial']}")
            lines.append(f"  scores written: {learned.scored:,} customers as of {as_of}")
            warned = [d for d in learned.drifts if d.status == "warn"]
            if warned:
                lines.append("  drift warnings (PSI above score.drift_warn_psi) against the training snapshot:")
                for d in sorted(warned, key=lambda d: -d.psi):
                    lines.append(f"    {d.feature:<20} PSI {d.psi:.3f}")
            else:
                lines.append("  drift: no feature above the PSI threshold")
    if report:
        lines += ["", f"report: {report}"]
    lines += ["", "wall time per stage"]
    for name, secs in timings.stages.items():
        lines.append(f"  {name:<10} {secs:8.1f} s")
    lines.append(f"  {'total':<10} {sum(timings.stages.values()):8.1f} s")
    return "\n".join(lines)
