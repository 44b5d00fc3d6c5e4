"""The report's reads: every Spark query behind the page, each table at one pinned Delta version.

Tables are aggregated in Spark (groupBy, rollup, limit) and only small results reach the driver.
What leaves this module is plain Python and small pandas frames, never a Spark DataFrame, so
`figures` and `html` run without Spark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame, Window

from lakemine.core.errors import LakemineError, StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.learning.train import MODEL_KIND, load_metadata, model_versions
from lakemine.stages.features import FEATURES, LOG_FEATURES

SCORE_BINS = 20
TOP_RULES = 15
TOP_RECOMMENDED = 10
FORECAST_PLOTS = 6  # items whose history and forecast are plotted: the largest forecast volumes
FORECAST_HISTORY_WEEKS = 26  # weeks of history before each plotted forecast
FORECAST_ITEMS_TABLE = 15
SCATTER_RULES = 5000  # the scatter shows at most this many rules, the highest lift first
RUN_STAGES = ("ingest", "clean")
QUARANTINES = ((schemas.BRONZE_QUARANTINE, "lakemine ingest"), (schemas.SILVER_QUARANTINE, "lakemine clean"))


@dataclass(frozen=True)
class Missing:
    """A table with nothing to show for the report's date, and the command that fills it."""

    table: str
    command: str


@dataclass(frozen=True)
class Quality:
    """runs: the latest ingest and clean runs (ops/runs rows as dicts), ingest first.
    quarantined: (table, reason, rows), most rows first, from both quarantines."""

    runs: list[dict] = field(default_factory=list)
    runs_missing: Missing | None = None
    quarantined: list[tuple[str, str, int]] = field(default_factory=list)
    quarantine_missing: list[Missing] = field(default_factory=list)


@dataclass(frozen=True)
class Segments:
    """profiles: gold/segment_profiles for the date, by segment. features: the feature columns
    that have values, in FEATURES order; log_features: those heavy-tailed enough for a log axis."""

    profiles: pd.DataFrame = field(default_factory=pd.DataFrame)
    features: list[str] = field(default_factory=list)
    log_features: frozenset[str] = frozenset()
    missing: Missing | None = None


@dataclass(frozen=True)
class Rules:
    """total: the date's rule count. top: the TOP_RULES highest-lift rules as dicts (antecedent,
    consequent, support, confidence, lift, and when `described` antecedent_descriptions and
    consequent_description). points: support, confidence, lift of at most SCATTER_RULES rules."""

    total: int = 0
    top: list[dict] = field(default_factory=list)
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    described: bool = False
    missing: Missing | None = None


@dataclass(frozen=True)
class Recommendations:
    """The date's recommendations: customers given any, rows, the held-out evaluation (dicts of
    ops/recommend_eval: method, k, customers, hit_rate, map_at_k, coverage; none when it was
    skipped) and the TOP_RECOMMENDED items recommended to most customers (stock_code,
    description, customers, mean_score)."""

    customers: int = 0
    rows: int = 0
    evaluation: list[dict] = field(default_factory=list)
    top: list[dict] = field(default_factory=list)
    missing: Missing | None = None


@dataclass(frozen=True)
class Forecasts:
    """The latest demand forecast on or before the report's date: its as_of, items, weeks,
    interval; backtest (per method: items, mean_mase, median_mase, mean_smape over the items
    every method was scored on); per_item (FORECAST_ITEMS_TABLE items with the most forecast
    units: stock_code, description, units (forecast total), model, and each method's MASE);
    plots (FORECAST_PLOTS items: stock_code, description, history (week_start, units: the last
    FORECAST_HISTORY_WEEKS weeks), forecast (week_start, forecast, lower, upper))."""

    as_of: date | None = None
    items: int = 0
    weeks: int = 0
    interval: float = 0.0
    backtest: list[dict] = field(default_factory=list)
    per_item: list[dict] = field(default_factory=list)
    plots: list[dict] = field(default_factory=list)
    missing: Missing | None = None


@dataclass(frozen=True)
class Training:
    """meta: the latest churn model's metadata (None: no model); model_dir: where models live;
    search: the rows of the latest model search on or before the date (ops/tune_trials: MLP
    trials and baselines; empty when none ran)."""

    meta: dict | None
    model_dir: str
    search: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Scores:
    """The scores of one model version for the date. histogram: `score_histogram` with `bins`
    bins. segments: per segment (no segment last) and overall: all customers, each a dict of
    segment, customers, mean, median, at_risk (share >= 0.5). labels: segment -> name.
    others: the other model versions that scored the date."""

    version: str | None = None
    others: list[str] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)
    histogram: pd.DataFrame = field(default_factory=pd.DataFrame)
    bins: int = SCORE_BINS
    segments: list[dict] = field(default_factory=list)
    overall: dict = field(default_factory=dict)
    missing: Missing | None = None


@dataclass(frozen=True)
class Drift:
    """psi: feature, psi, status of one model version's drift check, highest PSI first."""

    version: str | None = None
    psi: pd.DataFrame = field(default_factory=pd.DataFrame)
    missing: Missing | None = None


@dataclass(frozen=True)
class Report:
    """Everything the page shows. versions: the Delta version read of every table read."""

    lake_root: str
    as_of: date
    generated_at: datetime
    versions: dict[str, int]
    quality: Quality
    segments: Segments
    rules: Rules
    recommendations: Recommendations
    forecasts: Forecasts
    training: Training
    scores: Scores
    drift: Drift


@dataclass
class _Source:
    """Reads tables at one pinned Delta version each, and remembers the versions for the header."""

    lake: Lake
    versions: dict[str, int] = field(default_factory=dict)

    def table(self, name: str) -> DataFrame | None:
        if name not in self.versions:
            version = self.lake.table_version(name)
            if version is None:
                return None
            self.versions[name] = version
        return self.lake.read_table(name, self.versions[name])

    def rows_for(self, name: str, as_of: date) -> DataFrame | None:
        """The table's rows for `as_of` (maybe none); None when the table is missing."""
        df = self.table(name)
        return None if df is None else df.where(F.col("as_of") == F.lit(as_of))


def gather(lake: Lake, as_of: date | None = None) -> Report:
    """Read everything the page shows for `as_of` (default: `_default_as_of`). A missing part
    comes back with its `missing` set; an empty lake (no ops/runs): StageError."""
    if not lake.exists(schemas.OPS_RUNS):
        raise StageError(
            f"nothing to report: lake {lake.root} has no {schemas.OPS_RUNS} table; run `lakemine ingest` first")
    src = _Source(lake)
    as_of = as_of or _default_as_of(src)
    generated_at = datetime.now(timezone.utc)
    meta = _latest_model(lake, as_of)
    model_version = meta["model_version"] if meta else None
    scores = _scores(src, lake, as_of, model_version)
    quality, segments, rules = _quality(src), _segments(src, as_of), _rules(src, as_of)
    drift = _drift(src, as_of, [scores.version, model_version])
    return Report(lake_root=lake.root, as_of=as_of, generated_at=generated_at, versions=dict(src.versions),
                  quality=quality, segments=segments, rules=rules, recommendations=_recommendations(src, as_of),
                  forecasts=_forecasts(src, as_of),
                  training=Training(meta, f"{lake.root}/models/{MODEL_KIND}", _search(src, as_of)), scores=scores,
                  drift=drift)


def score_histogram(scores: DataFrame, bins: int = SCORE_BINS) -> pd.DataFrame:
    """Counts of churn_probability in `bins` equal bins of [0, 1] per segment: segment, bin, count.

    Bin i holds i/bins <= p < (i+1)/bins; p = 1 falls in the last bin. Only bins x segments
    rows reach the driver, however many customers were scored.
    """
    b = F.least(F.floor(F.col("churn_probability") * bins), F.lit(bins - 1)).cast("int")
    return (
        scores.where(F.col("churn_probability").isNotNull())
        .groupBy("segment", b.alias("bin")).agg(F.count(F.lit(1)).alias("count"))
        .toPandas()
    )


def _default_as_of(src: _Source) -> date:
    """The latest as_of in gold/customer_features, else the last silver date, else the latest run's, else today."""
    for table, column in ((schemas.GOLD_CUSTOMER_FEATURES, "as_of"), (schemas.SILVER_TRANSACTIONS, "invoice_date"),
                          (schemas.OPS_RUNS, "as_of")):
        df = src.table(table)
        latest = df.agg(F.max(column)).first()[0] if df is not None else None
        if latest is not None:
            return latest
    return datetime.now(timezone.utc).date()


def _latest_model(lake: Lake, as_of: date) -> dict | None:
    """The model scoring picks for `as_of` (the latest trained as of that date or earlier),
    else the latest; None when none was trained."""
    models = [load_metadata(lake, v) for v in model_versions(lake)]
    usable = [m for m in models if m["as_of"] <= as_of.isoformat()]
    return (usable or models or [None])[-1]


def _pick_version(available: list[str], preferred: list[str | None]) -> str:
    """The first preferred version that is available, else the first available."""
    return next((v for v in preferred if v and v in available), available[0])


def _latest_runs(src: _Source, stages: tuple[str, ...]) -> list[dict]:
    """The latest succeeded run of each stage (else its latest run of any status), in `stages` order."""
    runs = src.table(schemas.OPS_RUNS)
    if runs is None:
        return []
    order = Window.partitionBy("stage").orderBy(F.desc(F.col("status") == "succeeded"), F.desc("finished_at"))
    latest = (runs.where(F.col("stage").isin(list(stages)))
              .withColumn("_n", F.row_number().over(order)).where(F.col("_n") == 1).collect())
    by_stage = {r["stage"]: r.asDict() for r in latest}
    return [by_stage[s] for s in stages if s in by_stage]


def _quality(src: _Source) -> Quality:
    """The latest ingest and clean runs and the row counts of both quarantines by reason (all dates)."""
    runs = _latest_runs(src, RUN_STAGES)
    counts, missing = [], []
    for table, command in QUARANTINES:
        df = src.table(table)
        if df is None:
            missing.append(Missing(table, command))
            continue
        for r in df.groupBy("reason").agg(F.count(F.lit(1)).alias("rows")).collect():
            counts.append((table, r["reason"] or "(none)", int(r["rows"])))
    counts.sort(key=lambda c: (-c[2], c[0], c[1]))
    return Quality(runs=runs, runs_missing=None if runs else Missing(schemas.OPS_RUNS, "lakemine ingest"),
                   quarantined=counts, quarantine_missing=missing)


def _segments(src: _Source, as_of: date) -> Segments:
    """The date's segment profiles and the features they have values for."""
    profiles = src.rows_for(schemas.GOLD_SEGMENT_PROFILES, as_of)
    pdf = profiles.orderBy("segment").toPandas() if profiles is not None else None
    if pdf is None or pdf.empty:
        return Segments(missing=Missing(schemas.GOLD_SEGMENT_PROFILES, "lakemine kmeans"))
    features = [f for f in FEATURES if f in pdf.columns and pdf[f].notna().any()]
    return Segments(profiles=pdf, features=features, log_features=frozenset(LOG_FEATURES))


def _rules(src: _Source, as_of: date) -> Rules:
    """The date's rule count, its highest-lift rules for the table and up to SCATTER_RULES for the scatter."""
    rules = src.rows_for(schemas.GOLD_ASSOCIATION_RULES, as_of)
    total = rules.count() if rules is not None else 0
    if total == 0:
        return Rules(missing=Missing(schemas.GOLD_ASSOCIATION_RULES, "lakemine fpgrowth"))
    described = "antecedent_descriptions" in rules.columns and "consequent_description" in rules.columns
    cols = ["antecedent", "consequent", "support", "confidence", "lift"]
    cols += ["antecedent_descriptions", "consequent_description"] if described else []
    ordered = rules.orderBy(F.desc("lift"), F.desc("support"), F.desc("confidence"))
    top = [r.asDict() for r in ordered.select(*cols).limit(TOP_RULES).collect()]
    points = ordered.select("support", "confidence", "lift").limit(SCATTER_RULES).toPandas()
    return Rules(total=total, top=top, points=points, described=described)


def _recommendations(src: _Source, as_of: date) -> Recommendations:
    """The date's recommendation counts, its evaluation and the items recommended most."""
    recs = src.rows_for(schemas.GOLD_RECOMMENDATIONS, as_of)
    counts = recs.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("customer_id").alias("customers")).first() \
        if recs is not None else None
    if counts is None or counts["rows"] == 0:
        return Recommendations(missing=Missing(schemas.GOLD_RECOMMENDATIONS, "lakemine recommend"))
    top = (recs.groupBy("stock_code").agg(F.max("description").alias("description"), F.count(F.lit(1)).alias("customers"),
                                          F.avg("score").alias("mean_score"))
           .orderBy(F.desc("customers"), "stock_code").limit(TOP_RECOMMENDED).collect())
    evals = src.rows_for(schemas.OPS_RECOMMEND_EVAL, as_of)
    evaluation = [] if evals is None else [r.asDict() for r in evals.orderBy("method").collect()]
    return Recommendations(customers=int(counts["customers"]), rows=int(counts["rows"]), evaluation=evaluation,
                           top=[r.asDict() for r in top])


def _search(src: _Source, as_of: date) -> list[dict]:
    """The rows of the latest model search on or before `as_of` (it runs on its own schedule)."""
    table = src.table(schemas.OPS_TUNE_TRIALS)
    latest = None if table is None else table.where(F.col("as_of") <= F.lit(as_of)).agg(F.max("as_of")).first()[0]
    return [] if latest is None else [r.asDict() for r in table.where(F.col("as_of") == F.lit(latest)).collect()]


def _forecasts(src: _Source, as_of: date) -> Forecasts:
    """The latest forecast on or before `as_of` (forecasts run on their own, weekly schedule)."""
    from lakemine.learning.forecast import METHODS, summarize_backtest

    table = src.table(schemas.GOLD_DEMAND_FORECAST)
    latest = None if table is None else table.where(F.col("as_of") <= F.lit(as_of)).agg(F.max("as_of")).first()[0]
    if latest is None:
        return Forecasts(missing=Missing(schemas.GOLD_DEMAND_FORECAST, "lakemine forecast"))
    rows = table.where(F.col("as_of") == F.lit(latest)).cache()
    try:
        facts = rows.agg(F.countDistinct("stock_code").alias("items"), F.countDistinct("week_start").alias("weeks"),
                         F.max("interval").alias("interval"), F.min("week_start").alias("first")).first()
        totals = rows.groupBy("stock_code").agg(F.sum("forecast").alias("units"), F.max("model").alias("model"))
        backtest = src.rows_for(schemas.OPS_FORECAST_BACKTEST, latest)
        summary = [] if backtest is None else summarize_backtest(backtest)
        mase = {} if backtest is None else {
            (r["stock_code"], r["method"]): r["mase"] for r in backtest.select("stock_code", "method", "mase").collect()}
        top = totals.orderBy(F.desc("units"), "stock_code").limit(FORECAST_ITEMS_TABLE).collect()
        codes = [r["stock_code"] for r in top]
        silver = src.table(schemas.SILVER_TRANSACTIONS)
        names: dict[str, str] = {}
        history = pd.DataFrame(columns=["stock_code", "week_start", "units"])
        if silver is not None and codes:
            start = facts["first"] - timedelta(weeks=FORECAST_HISTORY_WEEKS)
            lines = silver.where(F.col("stock_code").isin(codes) & (F.col("invoice_date") >= F.lit(start))
                                 & (F.col("invoice_date") < F.lit(facts["first"])))
            names = {r["stock_code"]: r["description"] for r in lines.groupBy("stock_code").agg(
                F.max_by("description", F.col("invoice_ts")).alias("description")).collect()}
            history = (lines.where(~F.col("is_return") & (F.col("quantity") > 0))
                       .groupBy("stock_code", F.date_trunc("week", "invoice_date").cast("date").alias("week_start"))
                       .agg(F.sum("quantity").cast("double").alias("units")).toPandas())
        per_item = [{"stock_code": r["stock_code"], "description": names.get(r["stock_code"], ""), "units": r["units"],
                     "model": r["model"], **{m: mase.get((r["stock_code"], m)) for m in METHODS}} for r in top]
        weeks = [facts["first"] - timedelta(weeks=w) for w in range(FORECAST_HISTORY_WEEKS, 0, -1)]
        future = rows.where(F.col("stock_code").isin(codes[:FORECAST_PLOTS])).select(
            "stock_code", "week_start", "forecast", "lower", "upper").toPandas()
        plots = []
        for code in codes[:FORECAST_PLOTS]:
            mine = history[history["stock_code"] == code]
            sold = dict(zip(pd.to_datetime(mine["week_start"]).dt.date, mine["units"]))
            plots.append({"stock_code": code, "description": names.get(code, ""),
                          "history": pd.DataFrame({"week_start": weeks, "units": [float(sold.get(w, 0.0)) for w in weeks]}),
                          "forecast": future[future["stock_code"] == code].sort_values("week_start").reset_index(drop=True)})
        return Forecasts(as_of=latest, items=int(facts["items"]), weeks=int(facts["weeks"]), interval=float(facts["interval"]),
                         backtest=summary, per_item=per_item, plots=plots)
    finally:
        rows.unpersist()


def _segment_labels(src: _Source, lake: Lake, version: str, as_of: date) -> dict[int, str]:
    """Names of the segments a model scored with: the profiles of its k-means snapshot."""
    try:
        seg = load_metadata(lake, version).get("segment_model")
    except (LakemineError, OSError, ValueError):  # model folder gone or unreadable: numbers alone still read
        seg = None
    snapshot = date.fromisoformat(seg["as_of"]) if seg and seg.get("as_of") else as_of
    profiles = src.rows_for(schemas.GOLD_SEGMENT_PROFILES, snapshot)
    if profiles is None:
        return {}
    return {int(r["segment"]): r["segment_label"] for r in profiles.select("segment", "segment_label").collect()}


def _score_summary(scores: DataFrame) -> list[dict]:
    """Customers, mean, median and share >= 0.5 per segment (no segment last), then overall (total=1)."""
    summary = scores.rollup("segment").agg(
        F.grouping("segment").alias("total"), F.count(F.lit(1)).alias("customers"),
        F.avg("churn_probability").alias("mean"), F.percentile_approx("churn_probability", 0.5).alias("median"),
        F.avg((F.col("churn_probability") >= 0.5).cast("double")).alias("at_risk"),
    ).orderBy("total", F.col("segment").asc_nulls_last()).collect()
    return [r.asDict() for r in summary]


def _scores(src: _Source, lake: Lake, as_of: date, model_version: str | None) -> Scores:
    """The date's scores of `model_version` when it scored the date, else of the latest scoring."""
    scores = src.rows_for(schemas.GOLD_CUSTOMER_SCORES, as_of)
    scored = [] if scores is None else (
        scores.groupBy("model_version").agg(F.max("scored_at").alias("at")).orderBy(F.desc("at")).collect())
    if not scored:
        return Scores(missing=Missing(schemas.GOLD_CUSTOMER_SCORES, "lakemine score"))
    available = [r["model_version"] for r in scored]
    version = _pick_version(available, [model_version])
    scores = scores.where(F.col("model_version") == F.lit(version))
    labels = _segment_labels(src, lake, version, as_of)
    histogram = score_histogram(scores)
    summary = _score_summary(scores)
    return Scores(version=version, others=[v for v in available if v != version], labels=labels,
                  histogram=histogram, segments=[r for r in summary if not r["total"]],
                  overall=next(r for r in summary if r["total"]))


def _drift(src: _Source, as_of: date, preferred: list[str | None]) -> Drift:
    """The date's drift check of the first preferred model version that has one, else of the latest."""
    drift = src.rows_for(schemas.OPS_DRIFT, as_of)
    available = [] if drift is None else [
        r["model_version"] for r in drift.select("model_version").distinct().orderBy(F.desc("model_version")).collect()]
    if not available:
        return Drift(missing=Missing(schemas.OPS_DRIFT, "lakemine score"))
    version = _pick_version(available, preferred)
    psi = (drift.where(F.col("model_version") == F.lit(version)).select("feature", "psi", "status")
           .orderBy(F.desc("psi")).toPandas())
    return Drift(version=version, psi=psi)
