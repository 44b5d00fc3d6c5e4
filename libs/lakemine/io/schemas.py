"""Table names, raw layouts and schemas: the constants every stage checks against."""

from __future__ import annotations

import re

import pyspark.sql.functions as F
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from lakemine.core.errors import SchemaError

BRONZE_TRANSACTIONS = "bronze/transactions"
BRONZE_QUARANTINE = "bronze/quarantine"
SILVER_TRANSACTIONS = "silver/transactions"
SILVER_QUARANTINE = "silver/quarantine"
GOLD_BASKETS = "gold/baskets"
GOLD_CUSTOMER_DAYS = "gold/customer_days"
GOLD_CUSTOMER_FEATURES = "gold/customer_features"
GOLD_FEATURE_SCALER = "gold/feature_scaler"
GOLD_LABELS = "gold/labels"
GOLD_FREQUENT_ITEMSETS = "gold/frequent_itemsets"
GOLD_ASSOCIATION_RULES = "gold/association_rules"
GOLD_CUSTOMER_SEGMENTS = "gold/customer_segments"
GOLD_SEGMENT_PROFILES = "gold/segment_profiles"
GOLD_CUSTOMER_SCORES = "gold/customer_scores"
GOLD_RECOMMENDATIONS = "gold/recommendations"
GOLD_DEMAND_FORECAST = "gold/demand_forecast"
OPS_RUNS = "ops/runs"
OPS_INGEST_LEDGER = "ops/ingest_ledger"
OPS_CLEAN_BATCHES = "ops/clean_batches"
OPS_DRIFT = "ops/drift"
OPS_RECOMMEND_EVAL = "ops/recommend_eval"
OPS_FORECAST_BACKTEST = "ops/forecast_backtest"
OPS_ERASURES = "ops/erasures"
OPS_TUNE_TRIALS = "ops/tune_trials"

# The columns Delta keeps per-file statistics (min, max, nulls) of, for the two tables written
# a row per line: the lineage that idempotent writes and lookups select by, not every raw
# string (statistics of all of bronze's columns were an eighth of ingest's time). Set when
# lakemine creates or overwrites the table (`delta.dataSkippingStatsColumns`); other tables
# keep Delta's default (the first 32 columns).
STATS_COLUMNS = {
    BRONZE_TRANSACTIONS: ("_batch_id", "_source_file", "_line"),
    SILVER_TRANSACTIONS: ("_batch_id", "customer_id", "invoice_no"),
}

# Bronze keeps every source's raw strings under the UCI Online Retail names, whatever its
# profile called them (lakemine.core.sources.FIELDS), plus a line total and a cancellation flag
# for the profiles that give those, and `_source`, the profile that read the line.
RAW_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
SOURCE_COLUMNS = RAW_COLUMNS + ("LineTotal", "CancelFlag", "_source")
# UCI Online Retail II names, mapped onto RAW_COLUMNS position by position.
RAW_COLUMNS_II = ("Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country")
# the profile that bronze rows written before profiles existed were read with
LEGACY_SOURCE = "online_retail"

_TYPES = {
    "string": T.StringType(), "int": T.IntegerType(), "long": T.LongType(), "double": T.DoubleType(),
    "boolean": T.BooleanType(), "date": T.DateType(), "timestamp": T.TimestampType(),
    "array<double>": T.ArrayType(T.DoubleType()), "map<string,long>": T.MapType(T.StringType(), T.LongType()),
}


def fields(ddl: str) -> list[T.StructField]:
    """Struct fields from "name type, name type, ..." (the types of `_TYPES`), all nullable."""
    out = []
    for part in re.split(r",\s+", ddl.strip()):
        name, kind = part.split()
        out.append(T.StructField(name, _TYPES[kind]))
    return out


LINEAGE_FIELDS = fields("_source_file string, _line long, _batch_id string")
RAW_FIELDS = [T.StructField(c, T.StringType()) for c in SOURCE_COLUMNS]

BRONZE_SCHEMA = T.StructType(RAW_FIELDS + LINEAGE_FIELDS + fields("_ingested_at timestamp"))
QUARANTINE_SCHEMA = T.StructType(RAW_FIELDS + fields("_raw string, reason string, detail string, stage string")
                                 + LINEAGE_FIELDS)
SILVER_SCHEMA = T.StructType(
    fields("invoice_no string, stock_code string, description string, quantity int, invoice_ts timestamp, "
           "invoice_date date, unit_price double, line_amount double, customer_id string, country string, "
           "is_return boolean")
    + LINEAGE_FIELDS + fields("_record_hash long")
)
RUNS_SCHEMA = T.StructType(fields(
    "run_id string, stage string, as_of date, status string, started_at timestamp, finished_at timestamp, "
    "rows_in long, rows_out long, rows_quarantined long, rows_duplicate long, quarantine_reasons map<string,long>, "
    "inputs map<string,long>, outputs map<string,long>, params string, message string, "
    "files_added map<string,long>, files_removed map<string,long>"
))
# one row per (landed file as it was when read, batch): a file whose path, size and modification
# time are here is not read again; a batch counts as ingested only once its row is here
LEDGER_KEY = ("path", "size", "modified_us", "batch_id")
LEDGER_SCHEMA = T.StructType(fields(
    "path string, size long, modified_us long, batch_id string, status string, rows long, source string, "
    "run_id string, recorded_at timestamp"
))
# the bronze batches silver holds, and the clean parameters and profiles they were classified
# under: written after silver and its quarantine, so a batch is cleaned only once marked here
CLEAN_BATCHES_SCHEMA = T.StructType(fields("batch_id string, fingerprint string, run_id string, recorded_at timestamp"))
SCORES_KEY = ("customer_id", "as_of", "model_version")
SCORES_SCHEMA = T.StructType(fields(
    "customer_id string, as_of date, churn_probability double, segment int, model_version string, scored_at timestamp"
))
DRIFT_SCHEMA = T.StructType(fields(
    "as_of date, model_version string, feature string, psi double, status string, expected array<double>, "
    "actual array<double>, edges array<double>, run_id string"
))
# one row per erased customer: the keyed hash of its id (never the id), when, by which run, its
# rows per table when it was erased, and the key's check value (privacy.key_check: which key)
ERASURES_SCHEMA = T.StructType(fields("id_hash string, erased_at timestamp, run_id string, rows map<string,long>, "
                                      "key_check string"))
# one row per model-search trial (model "mlp") and per baseline on the same split (trial null)
TUNE_TRIALS_SCHEMA = T.StructType(fields(
    "as_of date, model string, trial int, hidden string, activation string, dropout double, batch_norm boolean, "
    "learning_rate double, weight_decay double, params string, val_auc double, val_log_loss double, best_epoch int, "
    "epochs_run int, error string, seed int, run_id string"
))
RECOMMEND_EVAL_SCHEMA = T.StructType(fields(
    "as_of date, method string, k int, customers long, hit_rate double, map_at_k double, coverage double, "
    "training_baskets long, training_rules long, run_id string"
))


def with_source_columns(df: DataFrame) -> DataFrame:
    """`df` with any of SOURCE_COLUMNS it lacks added as nulls (bronze written before profiles)."""
    missing = [c for c in SOURCE_COLUMNS if c not in df.columns]
    return df.select("*", *[F.lit(None).cast("string").alias(c) for c in missing]) if missing else df


def require_columns(df: DataFrame, columns: tuple[str, ...] | list[str], table: str) -> None:
    """Raise SchemaError naming the first column of `columns` that `df` lacks."""
    present = set(df.columns)
    for column in columns:
        if column not in present:
            raise SchemaError(f"table {table} has no column '{column}' (has: {', '.join(df.columns)})")
