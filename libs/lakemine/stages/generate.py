"""`lakemine generate`: deterministic raw line items in the UCI Online Retail layout.

Everything random is a hash of (seed, purpose, keys), so the output depends only on the
arguments, not on partitioning or cluster size, and is produced by Spark without the driver
holding any rows. Planted structure (recorded in `_manifest.json` and `_truth/`):

* customer groups with distinct recency, frequency and spend (for K-means);
* item bundles bought together (for FP-growth);
* churn that depends on behaviour: less engaged customers buy less often, return more and
  are more likely to stop buying before the end, and the odds are U-shaped in when a
  customer started (for the churn model, which must beat a linear baseline);
* a tail of wholesale invoices with hundreds of lines (up to 1,100).

`--dirty-rate R` turns each line, with probability R per defect type, into one of the defects
real exports have; the manifest counts each and names the reason code that must catch it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date

import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame, SparkSession

from lakemine.core import storage
from lakemine.core.config import GenerateConfig, StageParams
from lakemine.io.schemas import RAW_COLUMNS

log = logging.getLogger(__name__)

BASE_DATE = date(2010, 12, 1)
DATE_FORMAT = "M/d/yyyy H:mm"
FIRST_CUSTOMER_ID = 12346
MAX_INVOICES = 4000
LIFETIME_DAYS = 365.0  # the mean customer lifetime of a stationary population

# name, share of customers, mean days between invoices, mean lines, mean quantity
GROUPS = (
    ("champions", 0.20, 7.0, 20, 8),
    ("loyal", 0.32, 21.0, 12, 6),
    ("new", 0.20, 10.0, 6, 4),
    ("at_risk", 0.25, 25.0, 8, 5),
    ("wholesale", 0.03, 30.0, 0, 24),
)
# Item indices below RESERVED_ITEMS are bundle items; the rest are drawn so that the lines of
# one invoice never repeat an item (stride through a prime-sized range).
N_BUNDLES = 8
RESERVED_ITEMS = 32
ITEM_RANGE = 3989  # prime
BUNDLE_SHARE = 0.35

DEFECTS_CSV = (
    "missing_customer",
    "duplicate",
    "negative_quantity",
    "cancellation",
    "bad_date",
    "bad_number",
    "extreme_price",
    "blank_line",
    "truncated_line",
)
# Parquet has no lines to leave blank or cut short.
DEFECTS_PARQUET = DEFECTS_CSV[:7]

# Where each injected defect must end up after ingest and clean.
EXPECTED_OUTCOME = {
    "missing_customer": "silver/transactions:guest",  # clean.missing_customer: quarantine sends it to silver/quarantine
    "duplicate": "clean:duplicate",
    "negative_quantity": "silver/quarantine:negative_quantity",
    "cancellation": "silver/transactions:is_return",
    "bad_date": "silver/quarantine:bad_date",
    "bad_number": "silver/quarantine:bad_number",
    "extreme_price": "silver/quarantine:extreme_price",
    "blank_line": "bronze/quarantine:blank_line",
    "truncated_line": "bronze/quarantine:bad_field_count",
}

_ADJECTIVES = ("RETRO", "VINTAGE", "PANTRY", "REGENCY", "PARTY", "JUMBO", "SWEETHEART",
               "WOODLAND", "PAPER", "GLASS", "ENAMEL", "HEART", "STAR", "CHRISTMAS", "GARDEN")
_COLOURS = ("RED", "WHITE", "PINK", "BLUE", "GREEN", "IVORY", "BLACK", "CREAM", "SPOTTY", "GOLD")
_NOUNS = ("MUG", "LANTERN", "CAKE TIN", "BUNTING", "T-LIGHT HOLDER", "DOORMAT", "LUNCH BAG",
          "TEA SET", "CANDLE", "NAPKINS", "CLOCK", "CUSHION COVER", "JAR", "BOX", "SIGN")
_COUNTRIES = ("United Kingdom",) * 17 + ("Germany", "France", "EIRE")


@dataclass(frozen=True)
class GenerateParams(GenerateConfig, StageParams):
    """The generate section of the config (customers, days, seed, dirty_rate, format, files)."""

    SECTION = "generate"

    def defects(self) -> tuple[str, ...]:
        return DEFECTS_CSV if self.format == "csv" else DEFECTS_PARQUET

    def partitions(self) -> int:
        if self.files:
            return max(1, min(self.files, self.customers))
        return max(1, min(self.customers, self.customers // 5000 + 1))


def _u(seed: int, salt: str, *cols: Column) -> Column:
    """Uniform [0, 1) from a hash of the seed, a purpose string and key columns."""
    h = F.xxhash64(F.lit(seed), F.lit(salt), *cols)
    return h.bitwiseAND(F.lit((1 << 53) - 1)).cast("double") / float(1 << 53)


def _pick(values: tuple, index: Column) -> Column:
    return F.element_at(F.array(*[F.lit(v) for v in values]), index.cast("int") + 1)


def _by_group(group: Column, position: int) -> Column:
    return _pick(tuple(g[position] for g in GROUPS), group)


def _bundle_size(bundle: Column) -> Column:
    return F.lit(2) + bundle % 3


def bundle_items() -> list[list[str]]:
    """The stock codes of every planted bundle (what FP-growth should find)."""
    return [[stock_code(4 * b + t) for t in range(2 + b % 3)] for b in range(N_BUNDLES)]


def stock_code(item: int) -> str:
    """Python twin of the stock-code expression, for manifests and tests."""
    return f"{20000 + item * 7}{'ABCDEF'[item % 6] if item % 5 == 0 else ''}"


def _stock_code(item: Column) -> Column:
    letter = F.when(item % 5 == 0, _pick(tuple("ABCDEF"), item % 6)).otherwise(F.lit(""))
    return F.concat((F.lit(20000) + item * 7).cast("string"), letter)


def _description(seed: int, item: Column) -> Column:
    words = F.concat_ws(
        " ",
        _pick(_ADJECTIVES, F.floor(_u(seed, "adj", item) * len(_ADJECTIVES))),
        _pick(_COLOURS, F.floor(_u(seed, "col", item) * len(_COLOURS))),
        _pick(_NOUNS, F.floor(_u(seed, "noun", item) * len(_NOUNS))),
    )
    shape = _u(seed, "shape", item)
    return (
        F.when(shape < 0.08, F.concat(words, F.lit(", SET OF "), (item % 4 + 2).cast("string")))
        .when(shape < 0.10, F.concat(F.lit('"'), words, F.lit('" DESIGN')))
        .otherwise(words)
    )


def _price(seed: int, item: Column) -> Column:
    return F.round(F.lit(0.19) + F.lit(15.0) * F.pow(_u(seed, "price", item), 2.2), 2)


def customers(spark: SparkSession, p: GenerateParams) -> DataFrame:
    """One row per customer with its planted group, engagement and activity window (days)."""
    s, d = p.seed, float(p.days)
    df = spark.range(0, p.customers, 1, p.partitions()).withColumnRenamed("id", "c")
    c = F.col("c")
    shares = [g[1] for g in GROUPS]
    ug = _u(s, "group", c)
    group = F.lit(len(GROUPS) - 1)
    acc = sum(shares[:-1])
    for i in range(len(GROUPS) - 2, -1, -1):
        group = F.when(ug < acc, F.lit(i)).otherwise(group)
        acc -= shares[i]
    df = df.withColumn("group", group)
    g = F.col("group")
    df = df.withColumn("engagement", _u(s, "eng", c))
    e = F.col("engagement")
    u_start = _u(s, "start", c)
    start = (
        F.when(g == 2, F.greatest(F.lit(0.0), F.lit(d - 60)) + u_start * F.least(F.lit(57.0), F.lit(d * 0.6)))
        .when(g == 1, u_start * d * 0.5)
        .when(g == 3, u_start * d * 0.2)
        .otherwise(u_start * d * 0.3)
    )
    df = df.withColumn("start_day", F.floor(start).cast("int"))
    # Churn-prone customers stop buying in the last months; the odds rise as engagement falls,
    # and are U-shaped in when the customer started (the earliest and the latest starters of
    # a group churn more than the middle): a signal no linear model of tenure can use.
    bias = _pick((-1.0, 0.0, 0.5, 0.0, -0.5), g)
    u_shape = F.lit(3.0) * (F.abs(F.lit(2.0) * u_start - F.lit(1.0)) - F.lit(0.5))
    logit = F.lit(-1.0) + F.lit(4.0) * (F.lit(0.5) - e) + bias + u_shape
    df = df.withColumn("churn_prone", (_u(s, "churn", c) < F.lit(1.0) / (F.lit(1.0) + F.exp(-logit))) & (g != 3))
    u_end = _u(s, "end", c)
    end = (
        F.when(g == 3, F.lit(d * 0.3) + u_end * d * 0.25)
        .when(F.col("churn_prone"), F.lit(d - 120) + u_end * 110)
        .otherwise(F.lit(d))
    )
    if p.population == "stationary":
        # arrivals even over [-2 lifetimes, days), exponential lifetimes: the active population's
        # make-up stays put; invoices before day 0 are not written (k_first: the first after it)
        start = F.lit(-2 * LIFETIME_DAYS) + u_start * F.lit(d + 2 * LIFETIME_DAYS)
        df = df.withColumn("start_day", F.floor(start).cast("int"))
        end = F.col("start_day") + F.lit(1.0) - F.lit(LIFETIME_DAYS) * F.log(F.lit(1.0) - u_end)
    df = df.withColumn("end_day", F.least(F.lit(d), F.greatest(F.floor(end), F.col("start_day") + 1)).cast("int"))
    df = df.withColumn("gap", _by_group(g, 2) * (F.lit(1.25) - F.lit(0.5) * e))
    n = F.floor((F.col("end_day") - F.col("start_day")) / F.col("gap")) + 1
    k_first = F.greatest(F.lit(0), F.ceil(-F.col("start_day") / F.col("gap")))
    df = df.withColumn("k_first", k_first.cast("int"))
    df = df.withColumn("n_invoices", F.least(F.col("k_first") + F.lit(MAX_INVOICES), F.greatest(F.lit(1), n)).cast("int"))
    # a stationary population's customers who left before day 0 buy nothing in the period
    df = df.where(F.col("k_first") < F.col("n_invoices"))
    df = df.withColumn("return_rate", F.lit(0.02) + F.lit(0.25) * F.pow(F.lit(1.0) - e, 2))
    df = df.withColumn("customer_id", (F.lit(FIRST_CUSTOMER_ID) + c).cast("string"))
    df = df.withColumn("country", _pick(_COUNTRIES, F.floor(_u(s, "country", c) * len(_COUNTRIES))))
    # The first customer of each partition carries the CSV header of that output file.
    low_bits = F.monotonically_increasing_id().bitwiseAND(F.lit((1 << 33) - 1))
    return df.withColumn("first_in_file", low_bits == 0)


def _lines(spark: SparkSession, p: GenerateParams) -> DataFrame:
    """Every line item (sales and behavioural returns) with its raw field values and defect."""
    s = p.seed
    df = customers(spark, p)
    df = df.withColumn("k", F.explode(F.sequence(F.col("k_first"), F.col("n_invoices") - 1)))
    inv_key = F.col("c") * MAX_INVOICES + (F.col("k") - F.col("k_first"))  # below MAX_INVOICES: unique
    jitter = (_u(s, "jit", inv_key) - 0.5) * 0.6 * F.col("gap")
    day = F.col("start_day") + F.col("k") * F.col("gap") + jitter
    df = df.withColumn("inv_key", inv_key)
    first = F.greatest(F.col("start_day"), F.lit(0))
    df = df.withColumn("day", F.least(F.lit(p.days - 1), F.greatest(first, F.floor(day))).cast("int"))
    g = F.col("group")
    um = _u(s, "lines", F.col("inv_key"))
    m = F.when(g == 4, F.lit(150) + F.floor(F.lit(950.0) * F.pow(um, 3))).otherwise(
        F.greatest(F.lit(1), F.round(_by_group(g, 3) * (F.lit(0.4) + F.lit(1.2) * um)))
    )
    has_bundle = _u(s, "bundle?", F.col("inv_key")) < BUNDLE_SHARE
    bundle = F.floor(_u(s, "bundle", F.col("inv_key")) * N_BUNDLES).cast("int")
    df = df.withColumn("bundle", F.when(has_bundle, bundle))
    df = df.withColumn("bsize", F.coalesce(_bundle_size(F.col("bundle")), F.lit(0)))
    df = df.withColumn("m", F.greatest(m.cast("int"), F.col("bsize")))
    returned = _u(s, "ret?", F.col("inv_key")) < F.col("return_rate")
    df = df.withColumn("r", F.when(returned, F.least(F.col("m"), F.lit(1) + F.floor(_u(s, "retn", F.col("inv_key")) * 2))).otherwise(0).cast("int"))
    df = df.withColumn("i", F.explode(F.sequence(F.lit(0), F.col("m") + F.col("r") - 1)))

    is_ret = F.col("i") >= F.col("m")
    line = F.when(is_ret, F.col("i") - F.col("m")).otherwise(F.col("i"))
    base = F.floor(F.lit(float(ITEM_RANGE)) * F.pow(_u(s, "base", F.col("inv_key")), 2))
    step = F.lit(1) + F.floor(_u(s, "step", F.col("inv_key")) * (ITEM_RANGE - 1))
    free = F.lit(RESERVED_ITEMS) + F.pmod(base + (line - F.col("bsize")) * step, F.lit(ITEM_RANGE))
    item = F.when(line < F.col("bsize"), F.col("bundle") * 4 + line).otherwise(free).cast("long")
    df = df.withColumn("item", item).withColumn("is_ret", is_ret)
    line_key = F.col("inv_key") * 2048 + F.col("i")
    df = df.withColumn("line_key", line_key)

    uq = _u(s, "qty", F.col("inv_key"), line)
    qty = F.when(g == 4, F.lit(12) * (F.lit(1) + F.floor(uq * 10))).otherwise(
        F.lit(1) + F.floor(_by_group(g, 4) * 2 * F.pow(uq, 1.5))
    )
    qty = F.when(is_ret, -(F.lit(1) + F.floor(_u(s, "rq", F.col("inv_key"), line) * 5))).otherwise(qty)
    price = F.when(g == 4, F.round(_price(s, F.col("item")) * 0.85, 2)).otherwise(_price(s, F.col("item")))
    day = F.when(is_ret, F.least(F.lit(p.days - 1), F.col("day") + 1 + F.floor(_u(s, "rday", F.col("inv_key")) * 5))).otherwise(F.col("day"))
    minutes = F.lit(8 * 60) + F.floor(_u(s, "time", F.col("inv_key"), F.col("is_ret").cast("int")) * 11 * 60)
    ts = F.timestamp_seconds(
        F.unix_timestamp(F.lit(BASE_DATE.isoformat()), "yyyy-MM-dd") + day.cast("long") * 86400 + minutes.cast("long") * 60
    )
    invoice = (F.lit(500000) + F.col("inv_key")).cast("string")
    df = df.select(
        "c", "group", "customer_id", "first_in_file", "k", "k_first", "i", "line_key", "is_ret", F.col("country").alias("cust_country"), "item",
        F.when(F.col("is_ret"), F.concat(F.lit("C"), invoice)).otherwise(invoice).alias("invoice"),
        qty.cast("long").alias("qty"),
        price.alias("price"),
        ts.alias("ts"),
    )

    defects = p.defects()
    ud = _u(s, "defect", F.col("line_key"))
    defect = F.when(
        (ud < p.dirty_rate * len(defects)) & ~F.col("is_ret"),
        _pick(defects, F.floor(ud / p.dirty_rate) if p.dirty_rate > 0 else F.lit(0)),
    )
    return df.withColumn("defect", defect)


def _raw_fields(df: DataFrame, seed: int) -> DataFrame:
    """The eight raw string fields of each line, defects applied."""
    dfc = F.col("defect")
    variant = F.floor(_u(seed, "variant", F.col("line_key")) * 3)
    invoice = F.when(dfc == "cancellation", F.concat(F.lit("C"), F.col("invoice"))).otherwise(F.col("invoice"))
    qty = F.col("qty").cast("string")
    qty = (
        F.when(dfc.isin("negative_quantity", "cancellation"), F.concat(F.lit("-"), qty))
        .when((dfc == "bad_number") & (variant == 0), F.concat(qty, F.lit("x")))
        .otherwise(qty)
    )
    date_s = F.date_format(F.col("ts"), DATE_FORMAT)
    date_s = F.when(dfc == "bad_date", _pick(("31/31/2011 25:61", "not a date", "2011-13-45 10:00"), variant)).otherwise(date_s)
    price = F.format_number(F.col("price"), 2)
    price = F.regexp_replace(price, ",", "")
    price = (
        F.when((dfc == "bad_number") & (variant == 1), F.regexp_replace(price, r"\.", ","))
        .when((dfc == "bad_number") & (variant == 2), F.lit("N/A"))
        .when(dfc == "extreme_price", F.format_string("%.2f", F.col("price") * 1000 + 25000))
        .otherwise(price)
    )
    customer = F.when(dfc == "missing_customer", F.lit("")).otherwise(F.col("customer_id"))
    return df.select(
        "*",
        invoice.alias("InvoiceNo"),
        _stock_code(F.col("item")).alias("StockCode"),
        _description(seed, F.col("item")).alias("Description"),
        qty.alias("Quantity"),
        date_s.alias("InvoiceDate"),
        price.alias("UnitPrice"),
        customer.alias("CustomerID"),
        F.col("cust_country").alias("Country"),
    )


def _csv_field(col: Column) -> Column:
    quoted = F.concat(F.lit('"'), F.regexp_replace(col, '"', '""'), F.lit('"'))
    return F.when(col.contains(",") | col.contains('"'), quoted).otherwise(col)


def _csv_text(df: DataFrame) -> DataFrame:
    """One row per output line: header first in each file, then lines, duplicates, blanks."""
    fields = [_csv_field(F.col(c)) for c in RAW_COLUMNS]
    full = F.concat_ws(",", *fields)
    cut = F.concat_ws(",", *fields[:5])
    text = F.when(F.col("defect") == "truncated_line", cut).otherwise(full)
    header = F.lit(",".join(RAW_COLUMNS))
    is_first = F.col("first_in_file") & (F.col("k") == F.col("k_first")) & (F.col("i") == 0)
    parts = F.array(
        F.when(is_first, header),
        text,
        F.when(F.col("defect") == "duplicate", text),
        F.when(F.col("defect") == "blank_line", F.lit("")),
    )
    return df.select(F.explode(F.filter(parts, lambda x: x.isNotNull())).alias("value"))


def generate(spark: SparkSession, out: str, p: GenerateParams) -> dict:
    """Write the raw files under `out` plus `_manifest.json` and `_truth/`; return the manifest."""
    lines = _raw_fields(_lines(spark, p), p.seed)
    tmp = f"{out.rstrip('/')}/_tmp_write"
    if p.format == "csv":
        _csv_text(lines).write.mode("overwrite").option("compression", "none").text(tmp)
        suffix = ".csv"
    else:
        rows = lines.select(
            F.explode(F.when(F.col("defect") == "duplicate", F.array(F.lit(1), F.lit(2))).otherwise(F.array(F.lit(1)))).alias("_copy"),
            *RAW_COLUMNS,
        ).drop("_copy")
        rows.write.mode("overwrite").parquet(tmp)
        suffix = ".parquet"
    files = storage.publish_parts(tmp, out, f"online_retail_{{:05d}}{suffix}")

    counts = lines.agg(
        F.count(F.lit(1)).alias("records"),
        F.sum(F.col("is_ret").cast("long")).alias("natural_return_lines"),
        *[F.sum((F.col("defect") == d).cast("long")).alias(d) for d in p.defects()],
    ).first().asDict()
    injected = {d: int(counts[d] or 0) for d in p.defects()}
    data_lines = int(counts["records"]) + injected.get("duplicate", 0) + injected.get("blank_line", 0)
    truth = customers(spark, p).select(
        "customer_id",
        F.element_at(F.array(*[F.lit(g[0]) for g in GROUPS]), F.col("group") + 1).alias("group"),
        "engagement", "churn_prone",
        F.date_add(F.lit(BASE_DATE), F.col("start_day")).alias("first_day"),
        F.date_add(F.lit(BASE_DATE), F.col("end_day")).alias("end_day"),
    )
    truth.write.mode("overwrite").parquet(f"{out.rstrip('/')}/_truth/customers")
    group_sizes = {r["group"]: r["count"] for r in truth.groupBy("group").count().collect()}
    manifest = {
        "generator": "lakemine.generate/1",
        "seed": p.seed,
        "customers": p.customers,
        "days": p.days,
        "first_date": BASE_DATE.isoformat(),
        "format": p.format,
        "dirty_rate": p.dirty_rate,
        "files": files,
        "records": int(counts["records"]),
        "data_lines": data_lines,
        "natural_return_lines": int(counts["natural_return_lines"] or 0),
        "injected": injected,
        "expected_outcome": {d: EXPECTED_OUTCOME[d] for d in p.defects()},
        "planted": {
            "bundles": bundle_items(),
            "groups": group_sizes,
        },
    }
    storage.write_text(f"{out.rstrip('/')}/_manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
