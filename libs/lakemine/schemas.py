"""Table names, raw layouts and schemas: the constants every stage checks against."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from lakemine.errors import SchemaError

BRONZE_TRANSACTIONS = "bronze/transactions"
BRONZE_QUARANTINE = "bronze/quarantine"
SILVER_TRANSACTIONS = "silver/transactions"
SILVER_QUARANTINE = "silver/quarantine"
OPS_RUNS = "ops/runs"

# UCI Online Retail; bronze keeps these names for both public layouts.
RAW_COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
# UCI Online Retail II names, mapped onto RAW_COLUMNS position by position.
RAW_COLUMNS_II = (
    "Invoice",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "Price",
    "Customer ID",
    "Country",
)
LAYOUTS = {
    "online_retail": dict(zip(RAW_COLUMNS, RAW_COLUMNS)),
    "online_retail_ii": dict(zip(RAW_COLUMNS_II, RAW_COLUMNS)),
}

LINEAGE_FIELDS = [
    T.StructField("_source_file", T.StringType()),
    T.StructField("_line", T.LongType()),
    T.StructField("_batch_id", T.StringType()),
]
RAW_FIELDS = [T.StructField(c, T.StringType()) for c in RAW_COLUMNS]

BRONZE_SCHEMA = T.StructType(
    RAW_FIELDS + LINEAGE_FIELDS + [T.StructField("_ingested_at", T.TimestampType())]
)

QUARANTINE_SCHEMA = T.StructType(
    RAW_FIELDS
    + [
        T.StructField("_raw", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("detail", T.StringType()),
        T.StructField("stage", T.StringType()),
    ]
    + LINEAGE_FIELDS
)

SILVER_SCHEMA = T.StructType(
    [
        T.StructField("invoice_no", T.StringType()),
        T.StructField("stock_code", T.StringType()),
        T.StructField("description", T.StringType()),
        T.StructField("quantity", T.IntegerType()),
        T.StructField("invoice_ts", T.TimestampType()),
        T.StructField("invoice_date", T.DateType()),
        T.StructField("unit_price", T.DoubleType()),
        T.StructField("line_amount", T.DoubleType()),
        T.StructField("customer_id", T.StringType()),
        T.StructField("country", T.StringType()),
        T.StructField("is_return", T.BooleanType()),
    ]
    + LINEAGE_FIELDS
)

RUNS_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType()),
        T.StructField("stage", T.StringType()),
        T.StructField("as_of", T.DateType()),
        T.StructField("status", T.StringType()),
        T.StructField("started_at", T.TimestampType()),
        T.StructField("finished_at", T.TimestampType()),
        T.StructField("rows_in", T.LongType()),
        T.StructField("rows_out", T.LongType()),
        T.StructField("rows_quarantined", T.LongType()),
        T.StructField("rows_duplicate", T.LongType()),
        T.StructField("quarantine_reasons", T.MapType(T.StringType(), T.LongType())),
        T.StructField("inputs", T.MapType(T.StringType(), T.LongType())),
        T.StructField("outputs", T.MapType(T.StringType(), T.LongType())),
        T.StructField("params", T.StringType()),
        T.StructField("message", T.StringType()),
    ]
)


def require_columns(df: DataFrame, columns: tuple[str, ...] | list[str], table: str) -> None:
    """Raise SchemaError naming the first column of `columns` that `df` lacks."""
    present = set(df.columns)
    for column in columns:
        if column not in present:
            raise SchemaError(
                f"table {table} has no column '{column}' (has: {', '.join(df.columns)})"
            )

GOLD_BASKETS = "gold/baskets"
GOLD_CUSTOMER_FEATURES = "gold/customer_features"
GOLD_FEATURE_SCALER = "gold/feature_scaler"
GOLD_LABELS = "gold/labels"
GOLD_FREQUENT_ITEMSETS = "gold/frequent_itemsets"
GOLD_ASSOCIATION_RULES = "gold/association_rules"
GOLD_CUSTOMER_SEGMENTS = "gold/customer_segments"
GOLD_SEGMENT_PROFILES = "gold/segment_profiles"
GOLD_CUSTOMER_SCORES = "gold/customer_scores"
OPS_DRIFT = "ops/drift"

SCORES_KEY = ("customer_id", "as_of", "model_version")
SCORES_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType()),
        T.StructField("as_of", T.DateType()),
        T.StructField("churn_probability", T.DoubleType()),
        T.StructField("segment", T.IntegerType()),
        T.StructField("model_version", T.StringType()),
        T.StructField("scored_at", T.TimestampType()),
    ]
)

DRIFT_SCHEMA = T.StructType(
    [
        T.StructField("as_of", T.DateType()),
        T.StructField("model_version", T.StringType()),
        T.StructField("feature", T.StringType()),
        T.StructField("psi", T.DoubleType()),
        T.StructField("status", T.StringType()),
        T.StructField("expected", T.ArrayType(T.DoubleType())),
        T.StructField("actual", T.ArrayType(T.DoubleType())),
        T.StructField("edges", T.ArrayType(T.DoubleType())),
        T.StructField("run_id", T.StringType()),
    ]
)
