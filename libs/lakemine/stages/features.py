"""`lakemine features`: silver into `gold/baskets`, `gold/customer_features`, `gold/feature_scaler`
and `gold/labels`.

Features for a logical date read only rows dated on or before it; labels read only the
horizon after it. Standardized copies (`z_<feature>`: z-score, after log1p for heavy-tailed
counts and money) are what models use; their parameters go to `gold/feature_scaler`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import date, timedelta

import pyspark.sql.functions as F
from pyspark.sql import DataFrame, Window

from lakemine.core.config import Config, FeaturesConfig, StageParams
from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, record_run

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


def build_baskets(silver: DataFrame) -> DataFrame:
    """One row per sales invoice: basket_id, customer_id (null for a guest purchase),
    invoice_date, items (distinct, sorted)."""
    schemas.require_columns(silver, SILVER_COLUMNS, schemas.SILVER_TRANSACTIONS)
    return (
        silver.where(~F.col("is_return"))
        .groupBy(F.col("invoice_no").alias("basket_id"))
        .agg(
            F.min("customer_id").alias("customer_id"),
            F.min("invoice_date").alias("invoice_date"),
            F.array_sort(F.collect_set("stock_code")).alias("items"),
        )
    )


def _category(description):
    """A product family from the description's last word (MUG, LANTERN, BAG...)."""
    return F.upper(F.element_at(F.split(F.trim(F.coalesce(description, F.lit(""))), r"\s+"), -1))


def compute_customer_features(silver: DataFrame, p: FeatureParams) -> DataFrame:
    """RFM and behaviour features per customer from rows dated on or before `p.as_of`."""
    schemas.require_columns(silver, SILVER_COLUMNS, schemas.SILVER_TRANSACTIONS)
    as_of = F.lit(p.as_of)
    hist = silver.where((F.col("invoice_date") <= as_of) & F.col("customer_id").isNotNull())
    sales = hist.where(~F.col("is_return"))

    invoices = sales.groupBy("customer_id", "invoice_no").agg(
        F.min("invoice_date").alias("day"),
        F.countDistinct("stock_code").alias("n_items"),
        F.sum("line_amount").alias("value"),
    )
    per_customer = invoices.groupBy("customer_id").agg(
        F.max("day").alias("last_day"),
        F.min("day").alias("first_day"),
        F.count(F.lit(1)).alias("frequency"),
        F.avg("n_items").alias("mean_basket_size"),
        F.avg("value").alias("mean_basket_value"),
        F.sum("value").alias("monetary"),
    )
    lines = sales.groupBy("customer_id").agg(
        F.countDistinct("stock_code").alias("distinct_items"), F.count(F.lit(1)).alias("sale_lines")
    )
    returns = hist.where(F.col("is_return")).groupBy("customer_id").agg(F.count(F.lit(1)).alias("return_lines"))

    with_cat = sales.withColumn("category", _category(F.col("description")))
    top = (
        with_cat.groupBy("category").agg(F.sum("line_amount").alias("spend"))
        .withColumn("rank", F.row_number().over(Window.orderBy(F.desc("spend"), "category")))
        .where(F.col("rank") <= p.top_categories)
        .select("category")
    )
    top_spend = with_cat.join(F.broadcast(top), "category").groupBy("customer_id").agg(
        F.sum("line_amount").alias("top_spend")
    )

    df = per_customer.join(lines, "customer_id").join(returns, "customer_id", "left").join(top_spend, "customer_id", "left")
    freq = F.col("frequency")
    tenure = F.datediff(as_of, F.col("first_day"))
    return df.select(
        "customer_id",
        as_of.alias("as_of"),
        F.datediff(as_of, F.col("last_day")).alias("recency_days"),
        freq.cast("long").alias("frequency"),
        F.round("monetary", 2).alias("monetary"),
        tenure.alias("tenure_days"),
        F.col("mean_basket_size").cast("double"),
        F.col("mean_basket_value").cast("double"),
        F.col("distinct_items").cast("long"),
        (F.coalesce(F.col("return_lines"), F.lit(0)) / F.col("sale_lines")).alias("return_rate"),
        F.when(freq > 1, F.datediff(F.col("last_day"), F.col("first_day")) / (freq - 1))
        .otherwise(tenure.cast("double"))
        .alias("mean_days_between"),
        F.when(F.col("monetary") > 0, F.coalesce(F.col("top_spend"), F.lit(0.0)) / F.col("monetary"))
        .otherwise(F.lit(0.0))
        .alias("top_category_share"),
    )


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


def compute_labels(silver: DataFrame, features: DataFrame, p: FeatureParams) -> DataFrame:
    """churned = 1 when a featured customer buys nothing in (as_of, as_of + horizon].

    `complete` says whether the data reach the end of the horizon (labels of a recent as_of
    are not yet known and must not be trained on).
    """
    as_of = F.lit(p.as_of)
    end = F.date_add(as_of, p.horizon_days)
    future = (
        silver.where(~F.col("is_return") & (F.col("invoice_date") > as_of) & (F.col("invoice_date") <= end))
        .select("customer_id").distinct().withColumn("bought", F.lit(True))
    )
    last_day = silver.agg(F.max("invoice_date").alias("data_end"))
    return (
        features.select("customer_id", "as_of")
        .join(future, "customer_id", "left")
        .crossJoin(F.broadcast(last_day))
        .select(
            "customer_id",
            "as_of",
            F.when(F.col("bought"), 0).otherwise(1).cast("int").alias("churned"),
            F.lit(p.horizon_days).alias("horizon_days"),
            (F.col("data_end") >= end).alias("complete"),
        )
    )


def latest_date(lake: Lake, version: int | None = None) -> date:
    return lake.read_table(schemas.SILVER_TRANSACTIONS, version).agg(F.max("invoice_date")).first()[0]


def training_dates(as_of: date, data_start: date, horizon_days: int, snapshots: int, spacing_days: int) -> list[date]:
    """The earlier snapshot dates whose labels are complete by `as_of`: as_of - horizon,
    then `spacing_days` further back each, oldest first; dates with less than `spacing_days`
    of history before them are left out."""
    dates = [as_of - timedelta(days=horizon_days + i * spacing_days) for i in range(snapshots)]
    return sorted(d for d in dates if d >= data_start + timedelta(days=spacing_days))


def run(lake: Lake, cfg: Config, p: FeatureParams) -> Run:
    """Features, scaler and labels for `p.as_of` and for its training snapshots (see
    `training_dates`: the dates whose churn labels the data now complete, so training always
    has labelled rows), baskets once. Returns `as_of`'s run; `Run.result` lists every
    snapshot's run, `as_of`'s last."""
    version = lake.table_version(schemas.SILVER_TRANSACTIONS)
    if version is None:
        raise StageError(f"table {schemas.SILVER_TRANSACTIONS} does not exist in lake {lake.root}: run `lakemine clean` first")
    as_of = p.as_of or latest_date(lake, version)
    start = lake.read_table(schemas.SILVER_TRANSACTIONS, version).agg(F.min("invoice_date")).first()[0]
    earlier = training_dates(as_of, start, p.horizon_days, p.training_snapshots, p.snapshot_spacing_days) if start else []
    runs = [run_snapshot(lake, dataclasses.replace(p, as_of=d), version, baskets=False) for d in earlier]
    runs.append(run_snapshot(lake, dataclasses.replace(p, as_of=as_of), version, baskets=True))
    runs[-1].result = runs
    return runs[-1]


def run_snapshot(lake: Lake, p: FeatureParams, version: int, baskets: bool) -> Run:
    """Write baskets (all, when `baskets`), and features, scaler and labels for `p.as_of` from
    silver at `version`; records ops/runs."""
    as_of = p.as_of
    params = {"horizon_days": p.horizon_days, "top_categories": p.top_categories,
              "service_codes": list(p.service_codes), "service_pattern": p.service_pattern}
    with record_run(lake, STAGE, as_of, params) as run:
        silver = lake.read_table(schemas.SILVER_TRANSACTIONS, version)
        run.inputs[schemas.SILVER_TRANSACTIONS] = version
        run.rows_in = silver.where(F.col("invoice_date") <= F.lit(as_of)).count()
        silver = product_lines(silver, p.service_codes, p.service_pattern)
        if baskets:
            run.outputs[schemas.GOLD_BASKETS] = lake.overwrite(build_baskets(silver), schemas.GOLD_BASKETS)
        features, scaler = standardize(compute_customer_features(silver, p))
        run.outputs[schemas.GOLD_CUSTOMER_FEATURES] = lake.overwrite_as_of(features, schemas.GOLD_CUSTOMER_FEATURES, as_of)
        run.rows_out = lake.rows_written(schemas.GOLD_CUSTOMER_FEATURES)
        run.outputs[schemas.GOLD_FEATURE_SCALER] = lake.overwrite_as_of(scaler, schemas.GOLD_FEATURE_SCALER, as_of)
        written = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(as_of))
        labels = compute_labels(silver, written, p)
        run.outputs[schemas.GOLD_LABELS] = lake.overwrite_as_of(labels, schemas.GOLD_LABELS, as_of)
    return run
