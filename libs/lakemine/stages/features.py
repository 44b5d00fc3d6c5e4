"""`lakemine features`: silver into `gold/baskets`, `gold/customer_features`, `gold/feature_scaler`
and `gold/labels`.

Features for a logical date read only rows dated on or before it; labels read only the
horizon after it. Standardized copies (`z_<feature>`: z-score, after log1p for heavy-tailed
counts and money) are what models use; their parameters go to `gold/feature_scaler`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import date, timedelta

import pyspark.sql.functions as F
from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window

from lakemine.core import storage
from lakemine.core.config import Config, FeaturesConfig, StageParams
from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, record_run, record_runs, seal

log = logging.getLogger(__name__)

STAGE = "features"

FEATURES = (
    "recency_days",
    "frequency",
    "monetary",
    "tenure_days",
    "mean_basket_size",
    "mean_basket_value",
    "distinct_items",
    "return_rate",
    "mean_days_between",
    "top_category_share",
)
# heavy-tailed: log1p before the z-score
LOG_FEATURES = frozenset({"frequency", "monetary", "mean_basket_size", "mean_basket_value", "distinct_items"})
Z_FEATURES = tuple(f"z_{f}" for f in FEATURES)
# totals over the trailing `window_days`: beside the lifetime totals in the table (not model
# inputs), for drift (lakemine.learning.drift), since they do not grow with a customer's age
WINDOW_FEATURES = ("recent_frequency", "recent_monetary")
SILVER_COLUMNS = ("invoice_no", "stock_code", "description", "invoice_date", "line_amount", "customer_id", "is_return")


@dataclass(frozen=True)
class FeatureParams(FeaturesConfig, StageParams):
    """The features section of the config (horizon, training snapshots and their spacing, top
    categories) and the logical date (None: the latest date in silver)."""

    SECTION = "features"
    as_of: date | None = None


def product_lines(silver: DataFrame, service_codes: tuple[str, ...], service_pattern: str) -> DataFrame:
    """Silver without its service lines (postage, fees, manual adjustments, vouchers: a stock
    code in `service_codes`, or matching the regular expression `service_pattern`, compared in
    upper case). Service lines stay in silver; baskets, rules and customer features use only
    what this returns, so monetary and basket value are spend on products."""
    code = F.upper(F.col("stock_code"))
    service = code.isin([c.upper() for c in service_codes])
    if service_pattern:
        service = service | code.rlike(service_pattern)
    return silver.where(~F.coalesce(service, F.lit(False)))


def invoice_lines(silver: DataFrame) -> DataFrame:
    """One row per invoice, customer and date of silver rows (an invoice is one customer and
    one timestamp, so almost always one row per invoice): the sale and return lines, the value
    of the sale lines and their distinct items. Baskets and customer days both derive from it:
    the one aggregation over every line that the two need (`baskets_from_invoices`,
    `days_from_invoices`)."""
    schemas.require_columns(silver, SILVER_COLUMNS, schemas.SILVER_TRANSACTIONS)
    sale = ~F.col("is_return")
    return silver.groupBy("invoice_no", "customer_id", "invoice_date").agg(
        F.count(F.when(sale, 1)).alias("sale_lines"),
        F.count(F.when(~sale, 1)).alias("return_lines"),
        F.sum(F.when(sale, F.col("line_amount"))).alias("value"),
        F.collect_set(F.when(sale, F.col("stock_code"))).alias("items"),
    )


def category_spend(silver: DataFrame) -> DataFrame:
    """Per customer and date of silver rows, the spend of the sale lines per category
    (`category_spend`, a map sorted by category). Summed per (customer, date, category) by a
    hash aggregation: grouping the lines of each invoice and then summing arrays of them per
    category took a fifth of the features stage."""
    sales = silver.where(~F.col("is_return") & F.col("customer_id").isNotNull())
    per_category = sales.groupBy("customer_id", "invoice_date", _category(F.col("description")).alias("category")).agg(
        F.sum("line_amount").alias("spend"))
    return per_category.groupBy("customer_id", "invoice_date").agg(
        F.map_from_entries(F.array_sort(F.collect_list(F.struct("category", "spend")))).alias("category_spend"))


def _union_items(items: str) -> Column:
    return F.array_sort(F.array_distinct(F.flatten(F.collect_list(items))))


def baskets_from_invoices(invoices: DataFrame) -> DataFrame:
    """`build_baskets` from `invoice_lines` rows."""
    return (
        invoices.where(F.col("sale_lines") > 0)
        .groupBy(F.col("invoice_no").alias("basket_id"))
        .agg(F.min("customer_id").alias("customer_id"), F.min("invoice_date").alias("invoice_date"),
             _union_items("items").alias("items"))
    )


def build_baskets(silver: DataFrame) -> DataFrame:
    """One row per sales invoice: basket_id, customer_id (null for a guest purchase),
    invoice_date, items (distinct, sorted)."""
    return baskets_from_invoices(invoice_lines(silver))


# whitespace besides the space, which only the regular expression's split of `_category` handles
_OTHER_SPACE = ("\t", "\n", "\r", "\x0b", "\x0c")


def _category(description):
    """A product family from the description's last word (MUG, LANTERN, BAG...): after its
    last run of whitespace. A description spaced by spaces only (nearly all) is cut without a
    regular expression, with the same result."""
    text = F.trim(F.coalesce(description, F.lit("")))
    other = text.contains(_OTHER_SPACE[0])
    for c in _OTHER_SPACE[1:]:
        other = other | text.contains(c)
    return F.upper(F.when(other, F.element_at(F.split(text, r"\s+"), -1)).otherwise(F.substring_index(text, " ", -1)))


def days_from_invoices(invoices: DataFrame, spend: DataFrame) -> DataFrame:
    """`customer_days` from `invoice_lines` rows and the `category_spend` of the same lines."""
    key = ["customer_id", "invoice_date"]
    zero = F.lit(0).cast("long")
    days = invoices.where(F.col("customer_id").isNotNull()).groupBy(*key).agg(
        F.count(F.when(F.col("sale_lines") > 0, 1)).alias("invoices"),
        F.sum(F.size("items")).alias("basket_items"),
        F.sum("value").alias("value"),
        F.sum("sale_lines").alias("sale_lines"),
        F.sum("return_lines").alias("return_lines"),
        _union_items("items").alias("items"),
    ).join(spend, key, "left")
    return days.select(
        *key,
        F.coalesce("invoices", zero).alias("invoices"),
        F.coalesce(F.col("basket_items").cast("long"), zero).alias("basket_items"),
        F.coalesce("value", F.lit(0.0)).alias("value"),
        F.coalesce("sale_lines", zero).alias("sale_lines"),
        F.coalesce("return_lines", zero).alias("return_lines"),
        F.coalesce("items", F.array().cast("array<string>")).alias("items"),
        F.coalesce("category_spend", F.create_map().cast("map<string,double>")).alias("category_spend"),
    )


def customer_days(silver: DataFrame) -> DataFrame:
    """The customer-day aggregate that every customer feature and label is computed from: per
    customer and invoice date, the sales invoices, the sum of their distinct items, their value,
    the sale and return lines, the distinct items bought and the spend per category.

    An invoice counts on the date of its lines (an invoice is one timestamp, so one date)."""
    return days_from_invoices(invoice_lines(silver), category_spend(silver))


def on_dates(days: DataFrame, dates: list[date], admits) -> DataFrame:
    """`days` rows once for each date `a` of `dates` with `admits(invoice_date, a)`, that date
    as `as_of`: every snapshot's rows in one DataFrame, so one aggregation serves them all."""
    listed = F.array(*[F.lit(d) for d in sorted(dates)])
    return days.select("*", F.explode(F.filter(listed, lambda a: admits(F.col("invoice_date"), a))).alias("as_of"))


def features_from_days(days: DataFrame, p: FeatureParams, dates: list[date] | None = None) -> DataFrame:
    """RFM and behaviour features per customer with a sale on or before the date, for each of
    `dates` (default: `p.as_of`; a row per customer and date), from `customer_days` rows."""
    hist = on_dates(days, dates or [p.as_of], lambda day, a: day <= a)
    as_of = F.col("as_of")
    sale_day = F.when(F.col("invoices") > 0, F.col("invoice_date"))
    recent = F.col("invoice_date") > F.date_sub(as_of, p.window_days)
    df = hist.groupBy("as_of", "customer_id").agg(
        F.max(sale_day).alias("last_day"),
        F.min(sale_day).alias("first_day"),
        F.sum("invoices").alias("frequency"),
        F.sum("basket_items").alias("basket_items"),
        F.sum("value").alias("monetary"),
        F.sum("sale_lines").alias("sale_lines"),
        F.sum("return_lines").alias("return_lines"),
        F.size(F.array_distinct(F.flatten(F.collect_list("items")))).alias("distinct_items"),
        F.sum(F.when(recent, F.col("invoices")).otherwise(0)).alias("recent_frequency"),
        F.sum(F.when(recent, F.col("value")).otherwise(0.0)).alias("recent_monetary"),
    ).where(F.col("frequency") > 0)

    spend = hist.select("as_of", "customer_id", F.explode("category_spend").alias("category", "spend"))
    top = (
        spend.groupBy("as_of", "category").agg(F.sum("spend").alias("spend"))
        .withColumn("rank", F.row_number().over(Window.partitionBy("as_of").orderBy(F.desc("spend"), "category")))
        .where(F.col("rank") <= p.top_categories)
        .select("as_of", "category")
    )
    top_spend = (spend.join(F.broadcast(top), ["as_of", "category"])
                 .groupBy("as_of", "customer_id").agg(F.sum("spend").alias("top_spend")))

    df = df.join(top_spend, ["as_of", "customer_id"], "left")
    freq = F.col("frequency")
    tenure = F.datediff(as_of, F.col("first_day"))
    return df.select(
        "customer_id",
        "as_of",
        F.datediff(as_of, F.col("last_day")).alias("recency_days"),
        freq.cast("long").alias("frequency"),
        F.round("monetary", 2).alias("monetary"),
        tenure.alias("tenure_days"),
        (F.col("basket_items") / freq).cast("double").alias("mean_basket_size"),
        (F.col("monetary") / freq).cast("double").alias("mean_basket_value"),
        F.col("distinct_items").cast("long"),
        (F.col("return_lines") / F.col("sale_lines")).alias("return_rate"),
        F.when(freq > 1, F.datediff(F.col("last_day"), F.col("first_day")) / (freq - 1))
        .otherwise(tenure.cast("double"))
        .alias("mean_days_between"),
        F.when(F.col("monetary") > 0, F.coalesce(F.col("top_spend"), F.lit(0.0)) / F.col("monetary"))
        .otherwise(F.lit(0.0))
        .alias("top_category_share"),
        F.col("recent_frequency").cast("long"),
        F.round("recent_monetary", 2).alias("recent_monetary"),
    )


def compute_customer_features(silver: DataFrame, p: FeatureParams) -> DataFrame:
    """RFM and behaviour features per customer from rows dated on or before `p.as_of`
    (through `customer_days`, as the stage computes them)."""
    return features_from_days(customer_days(silver), p)


def _transformed(name: str):
    col = F.col(name).cast("double")
    return F.log1p(col) if name in LOG_FEATURES else col


def standardize(features: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(features plus z_<name> columns, scaler rows: as_of, feature, transform, mean, std).

    Population mean and standard deviation over the customers of the same as_of; a feature
    with no spread gets z = 0.
    """
    stats = features.groupBy("as_of").agg(
        *[F.avg(_transformed(f)).alias(f"{f}__mean") for f in FEATURES],
        *[F.stddev_pop(_transformed(f)).alias(f"{f}__std") for f in FEATURES],
    )
    joined = features.join(F.broadcast(stats), "as_of")
    z = [
        F.when(F.col(f"{f}__std") > 0, (_transformed(f) - F.col(f"{f}__mean")) / F.col(f"{f}__std"))
        .otherwise(F.lit(0.0))
        .alias(f"z_{f}")
        for f in FEATURES
    ]
    out = joined.select(*features.columns, *z)
    scaler = stats.select(
        "as_of",
        F.explode(
            F.array(*[
                F.struct(
                    F.lit(f).alias("feature"),
                    F.lit("log1p_zscore" if f in LOG_FEATURES else "zscore").alias("transform"),
                    F.col(f"{f}__mean").alias("mean"),
                    F.col(f"{f}__std").alias("std"),
                )
                for f in FEATURES
            ])
        ).alias("s"),
    ).select("as_of", "s.*")
    return out, scaler


def labels_from_days(days: DataFrame, features: DataFrame, p: FeatureParams, data_end: date | None,
                     dates: list[date] | None = None) -> DataFrame:
    """churned = 1 when a featured customer buys nothing in (as_of, as_of + horizon], from
    `customer_days` rows, for the features of each of `dates` (default: `p.as_of`).

    `complete` says whether the data (which end on `data_end`) reach the end of the horizon
    (labels of a recent as_of are not yet known and must not be trained on).
    """
    horizon = p.horizon_days
    future = (
        on_dates(days.where(F.col("invoices") > 0), dates or [p.as_of],
                 lambda day, a: (day > a) & (day <= F.date_add(a, horizon)))
        .select("customer_id", "as_of").distinct().withColumn("bought", F.lit(True))
    )
    end = F.date_add(F.col("as_of"), horizon)
    complete = F.lit(data_end).cast("date") >= end if data_end is not None else F.lit(False)
    return (
        features.select("customer_id", "as_of")
        .join(future, ["customer_id", "as_of"], "left")
        .select(
            "customer_id",
            "as_of",
            F.when(F.col("bought"), 0).otherwise(1).cast("int").alias("churned"),
            F.lit(horizon).alias("horizon_days"),
            complete.alias("complete"),
        )
    )


def compute_labels(silver: DataFrame, features: DataFrame, p: FeatureParams) -> DataFrame:
    """`labels_from_days` for silver rows, whose last date is where the data end."""
    data_end = silver.agg(F.max("invoice_date")).first()[0]
    return labels_from_days(customer_days(silver), features, p, data_end)


def latest_date(lake: Lake, version: int | None = None) -> date:
    return lake.read_table(schemas.SILVER_TRANSACTIONS, version).agg(F.max("invoice_date")).first()[0]


def training_dates(as_of: date, data_start: date, horizon_days: int, snapshots: int, spacing_days: int) -> list[date]:
    """The earlier snapshot dates whose labels are complete by `as_of`: as_of - horizon,
    then `spacing_days` further back each, oldest first; dates with less than `spacing_days`
    of history before them are left out."""
    dates = [as_of - timedelta(days=horizon_days + i * spacing_days) for i in range(snapshots)]
    return sorted(d for d in dates if d >= data_start + timedelta(days=spacing_days))


def silver_changes(lake: Lake, since: int, until: int) -> set[date] | None:
    """The invoice dates whose silver rows changed from version `since` to `until`, read from
    the Delta log's add and remove actions. None when the log cannot tell, or a commit may have
    taken rows away: a whole-table overwrite (clean's full rebuild), a delete or merge, an
    unpartitioned table, a commit file gone."""
    dates: set[date] = set()
    log_dir = f"{lake.path(schemas.SILVER_TRANSACTIONS)}/_delta_log"
    for version in range(since + 1, until + 1):
        path = f"{log_dir}/{version:020d}.json"
        if not storage.exists(path):
            return None
        for line in storage.read_bytes(path).decode("utf-8").splitlines():
            action = json.loads(line) if line.strip() else {}
            info = action.get("commitInfo")
            if info is not None:
                kind, mode = info.get("operation"), (info.get("operationParameters") or {}).get("mode")
                per_date = kind == "WRITE" and (mode == "Append" or "predicate" in (info.get("operationParameters") or {}))
                if not (per_date or kind == "OPTIMIZE"):
                    return None
            for name in ("add", "remove"):
                change = action.get(name)
                if change is None or not change.get("dataChange", True):
                    continue
                value = (change.get("partitionValues") or {}).get("invoice_date")
                if value is None:
                    return None
                dates.add(date.fromisoformat(value))
    return dates


def _built_from(lake: Lake) -> int | None:
    """The silver version gold/customer_days was last brought up to (its commit's metadata)."""
    for _, meta in lake.commit_metadata(schemas.GOLD_CUSTOMER_DAYS, 50):
        if meta:
            return json.loads(meta).get("silver_version")
    return None


def refresh_aggregates(lake: Lake, p: FeatureParams, version: int, as_of: date) -> Run:
    """Bring gold/baskets and gold/customer_days up to silver `version`, recomputing only the
    dates silver changed since they were last brought up (`silver_changes`), or all of them
    when that cannot be told. Baskets of the changed dates are merged in (items united), then
    the changed dates of customer_days are replaced in one commit that records `version`: the
    mark, so a run killed between the two redoes both. Records ops/runs."""
    since = _built_from(lake)
    changed = silver_changes(lake, since, version) if since is not None and since <= version else None
    mode = "noop" if since == version else ("full" if changed is None else "incremental")
    params = {"step": "aggregates", "mode": mode, "silver_since": since, "silver_version": version,
              "service_codes": list(p.service_codes), "service_pattern": p.service_pattern}
    with record_run(lake, STAGE, as_of, params) as run:
        run.inputs[schemas.SILVER_TRANSACTIONS] = version
        if mode == "noop":
            run.status, run.message = "noop", f"baskets and customer days already at silver version {version}"
            return run
        mark = {"userMetadata": json.dumps({"silver_version": version})}
        if mode == "full":
            run.message = "full: " + ("no earlier build" if since is None else "silver changed beyond dates")
            dates = None
        else:
            params["dates"] = [d.isoformat() for d in sorted(changed)]
            # with no changed dates (silver only compacted) nothing is written and the mark stays
            run.message = f"incremental: {len(changed)} date(s) recomputed"
            if not changed:
                return run
            dates = sorted(changed)
        silver = lake.read_table(schemas.SILVER_TRANSACTIONS, version).select(*SILVER_COLUMNS)
        if dates is not None:
            silver = silver.where(F.col("invoice_date").isin(dates))
        # baskets and customer days both derive from one aggregation of the product lines per
        # invoice (`invoice_lines`); the spend per category is a second, narrower one
        products = product_lines(silver, p.service_codes, p.service_pattern)
        invoices = invoice_lines(products).persist(StorageLevel.MEMORY_AND_DISK)
        spend = category_spend(products)
        try:
            # the customer_days commit, the mark, is the run's last: sealed, so a run killed after
            # it (whose rerun is a noop) is recorded by the next as it would have recorded itself
            if dates is None:
                run.outputs[schemas.GOLD_BASKETS] = lake.overwrite(baskets_from_invoices(invoices), schemas.GOLD_BASKETS)
                days = days_from_invoices(invoices, spend).repartition("invoice_date")  # one file per date
                run.outputs[schemas.GOLD_CUSTOMER_DAYS] = lake.overwrite(
                    days, schemas.GOLD_CUSTOMER_DAYS, partition_by=("invoice_date",), options=mark,
                    tag=seal(run, schemas.GOLD_CUSTOMER_DAYS, rows_out_of_commit=True))
            else:
                run.outputs[schemas.GOLD_BASKETS] = merge_baskets(lake, baskets_from_invoices(invoices))
                run.outputs[schemas.GOLD_CUSTOMER_DAYS] = lake.replace_dates(
                    days_from_invoices(invoices, spend), schemas.GOLD_CUSTOMER_DAYS, changed, options=mark,
                    tag=seal(run, schemas.GOLD_CUSTOMER_DAYS, rows_out_of_commit=True))
        finally:
            invoices.unpersist()
        run.rows_out = lake.rows_written(schemas.GOLD_CUSTOMER_DAYS, run.outputs[schemas.GOLD_CUSTOMER_DAYS])
    return run


def merge_baskets(lake: Lake, baskets: DataFrame) -> int:
    """Merge baskets into gold/baskets: a new invoice is inserted, a known one gains the new
    items (an invoice is only ever added to by incremental silver). Returns the new version."""
    if not lake.exists(schemas.GOLD_BASKETS):
        return lake.overwrite(baskets, schemas.GOLD_BASKETS)
    return lake.commit(schemas.GOLD_BASKETS, lambda: (
        DeltaTable.forPath(lake.spark, lake.path(schemas.GOLD_BASKETS)).alias("t")
        .merge(baskets.alias("s"), "t.basket_id = s.basket_id")
        .whenMatchedUpdate(set={
            "customer_id": "coalesce(least(t.customer_id, s.customer_id), t.customer_id, s.customer_id)",
            "invoice_date": "least(t.invoice_date, s.invoice_date)",
            "items": "array_sort(array_distinct(concat(t.items, s.items)))",
        })
        .whenNotMatchedInsertAll()
        .execute()))


def run(lake: Lake, cfg: Config, p: FeatureParams) -> Run:
    """Bring the aggregates up to silver (`refresh_aggregates`), then features, scaler and
    labels for `p.as_of` and for its training snapshots (see `training_dates`: the dates whose
    churn labels the data now complete, so training always has labelled rows), all from
    gold/customer_days. Returns `as_of`'s run; `Run.result` lists every snapshot's run,
    `as_of`'s last."""
    version = lake.table_version(schemas.SILVER_TRANSACTIONS)
    if version is None:
        raise StageError(f"table {schemas.SILVER_TRANSACTIONS} does not exist in lake {lake.root}: run `lakemine clean` first")
    silver = lake.read_table(schemas.SILVER_TRANSACTIONS, version)
    span = silver.agg(F.min("invoice_date").alias("start"), F.max("invoice_date").alias("end")).first()
    as_of = p.as_of or span["end"]
    refresh_aggregates(lake, p, version, as_of)
    days_version = lake.table_version(schemas.GOLD_CUSTOMER_DAYS)
    earlier = training_dates(as_of, span["start"], p.horizon_days, p.training_snapshots, p.snapshot_spacing_days) if span["start"] else []
    runs = run_snapshots(lake, dataclasses.replace(p, as_of=as_of), sorted({*earlier, as_of}), version, days_version,
                         span["end"])
    runs[-1].result = runs
    return runs[-1]


def run_snapshots(lake: Lake, p: FeatureParams, dates: list[date], silver_version: int, days_version: int,
                  data_end: date | None) -> list[Run]:
    """Write features, scaler and labels for each of `dates` from gold/customer_days at
    `days_version` (silver at `silver_version`, whose data end on `data_end`): every date in
    one aggregation and one commit per table. Records one ops/runs row per date; returns their
    runs, in the order of `dates`."""
    params = {"horizon_days": p.horizon_days, "top_categories": p.top_categories,
              "service_codes": list(p.service_codes), "service_pattern": p.service_pattern}
    with contextlib.ExitStack() as stack:
        runs = stack.enter_context(record_runs(lake, STAGE, dates, params))  # one ops/runs commit for all dates
        days = lake.read_table(schemas.GOLD_CUSTOMER_DAYS, days_version).persist(StorageLevel.MEMORY_AND_DISK)
        stack.callback(days.unpersist)
        # computed once for the three writes (the scaler's statistics come from the same rows)
        raw = features_from_days(days, p, dates).persist()
        stack.callback(raw.unpersist)
        # the counts first: they build the two caches, one at a time, before the writes read
        # them (Spark 4.0 builds a cache once per reference in a query that finds it unbuilt,
        # at once: SPARK-57547; the features' write reads `raw` twice, the labels' both)
        rows_in = days.agg(*[F.count(F.when(F.col("invoice_date") <= F.lit(d), 1)).alias(f"d{i}")
                             for i, d in enumerate(dates)]).first()
        featured = {r["as_of"]: r["count"] for r in raw.groupBy("as_of").count().collect()}
        features, scaler = standardize(raw)
        outputs = {
            schemas.GOLD_CUSTOMER_FEATURES: lake.overwrite_as_of(features.repartition("as_of"), schemas.GOLD_CUSTOMER_FEATURES,
                                                                 dates, merge_schema=True),
            schemas.GOLD_FEATURE_SCALER: lake.overwrite_as_of(scaler.repartition("as_of"), schemas.GOLD_FEATURE_SCALER, dates),
            # the customers just written, from the rows in memory, not read back
            schemas.GOLD_LABELS: lake.overwrite_as_of(labels_from_days(days, raw, p, data_end, dates).repartition("as_of"),
                                                      schemas.GOLD_LABELS, dates),
        }
        for i, (d, run) in enumerate(zip(dates, runs)):
            run.inputs.update({schemas.SILVER_TRANSACTIONS: silver_version, schemas.GOLD_CUSTOMER_DAYS: days_version})
            run.outputs.update(outputs)
            run.rows_in, run.rows_out = int(rows_in[f"d{i}"]), int(featured.get(d, 0))
    return runs
