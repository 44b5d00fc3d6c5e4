"""`lakemine clean`: `bronze/transactions` into typed `silver/transactions`.

`clean_transactions` is the pure transform: trims, parses numbers and dates (formats from
config), removes exact duplicate lines (counted, not quarantined), marks cancellations as
returns and routes rows failing validation to quarantine with a stable reason code. The stage
classifies only the bronze batches silver does not hold yet (`ops/clean_batches`), at a pinned
bronze version, so re-running it leaves the same rows; the result equals a rebuild from all of
bronze.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pyspark.sql.functions as F
from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Observation, Window

from lakemine.core import privacy
from lakemine.core.config import CleanConfig, Config, StageParams, packaged_defaults
from lakemine.core.errors import StageError
from lakemine.core.sources import SourceProfile
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, conservation_check, record_run, seal
from lakemine.io.spark import observing_session

log = logging.getLogger(__name__)
# Classified rows are cached on disk only: a MEMORY_AND_DISK block read back from disk is first
# copied whole into the heap, and at 20 M lines in 8 partitions that block overflows a 4 GiB
# driver (java.lang.OutOfMemoryError in the history build of bench/daily.py).
SPILL = StorageLevel.DISK_ONLY

STAGE = "clean"

# Stable reason codes, in the order they are tested: a row gets the first that applies.
REASONS = (
    "unknown_source",
    "missing_invoice",
    "missing_stock_code",
    "bad_date",
    "bad_number",
    "missing_customer",
    "negative_quantity",
    "zero_quantity",
    "bad_return",
    "bad_price",
    "extreme_price",
    "extreme_quantity",
)
MIN_YEAR, MAX_YEAR = 1990, 2100
_INT = r"^[+-]?\d{1,9}$"
_DECIMAL = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$"


@dataclass(frozen=True)
class CleanParams(CleanConfig, StageParams):
    """The clean section of the config (date formats, missing customer and outlier policies,
    limits) and the run's logical date."""

    SECTION = "clean"
    as_of: date | None = None


def _blank_to_null(col: Column) -> Column:
    trimmed = F.trim(col)
    return F.when(trimmed != "", trimmed)


def parse_timestamp(col: Column, formats: tuple[str, ...]) -> Column:
    """The first format that parses, or null; years outside 1990-2100 count as unparsed."""
    ts = F.coalesce(*[F.try_to_timestamp(col, F.lit(fmt)) for fmt in formats])
    return F.when(F.year(ts).between(MIN_YEAR, MAX_YEAR), ts)


LINEAGE = ("_source_file", "_line", "_batch_id")


@dataclass(frozen=True)
class Lineage:
    """The lineage values of some bronze rows (`LINEAGE`: file, line, batch), numbered so that
    one long orders them as their struct does: the file's rank, then the line, then the batch's
    rank, each in its own bits (`code`). The de-duplication then keeps the least copy by a
    minimum over that long, which Spark aggregates in a hash map, where the minimum of a struct
    of strings needs a sort of every line by every column (a sixth of clean's time at 5 M
    lines). `of` returns None when the values do not fit in 63 bits or one is null."""

    files: tuple[str, ...]
    batches: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]  # the (file, batch) pairs the rows hold
    line_bits: int

    @classmethod
    def of(cls, groups: list) -> "Lineage | None":
        """From rows of `lineage_groups` (None for no rows: nothing to order)."""
        if not groups or any(g["_source_file"] is None or g["_batch_id"] is None or g["lines"] != g["rows"] for g in groups):
            return None
        if any(g["first_line"] is not None and g["first_line"] < 0 for g in groups):
            return None
        files = tuple(sorted({g["_source_file"] for g in groups}))  # code points: the order of UTF-8 bytes, Spark's
        batches = tuple(sorted({g["_batch_id"] for g in groups}))
        line_bits = max((g["last_line"] or 0 for g in groups), default=0).bit_length()
        if _bits(len(files)) + line_bits + _bits(len(batches)) > 63:
            return None
        return cls(files, batches, tuple(sorted((g["_source_file"], g["_batch_id"]) for g in groups)), line_bits)

    @property
    def _batch_bits(self) -> int:
        return _bits(len(self.batches))

    def code(self, bronze: DataFrame) -> DataFrame:
        """`bronze` (rows these values came from) with `_lineage`, their order as one long."""
        file_rank = {f: i for i, f in enumerate(self.files)}
        batch_rank = {b: i for i, b in enumerate(self.batches)}
        shift = self.line_bits + self._batch_bits
        pairs = bronze.sparkSession.createDataFrame(
            [(f, b, (file_rank[f] << shift) | batch_rank[b]) for f, b in self.pairs],
            "_source_file string, _batch_id string, _pair long")
        coded = bronze.join(F.broadcast(pairs), ["_source_file", "_batch_id"], "left")
        return coded.withColumn("_lineage", F.when(
            F.col("_pair").isNull(), F.raise_error(F.lit("clean: a bronze row's (file, batch) is not in its lineage"))
        ).otherwise(F.col("_pair").bitwiseOR(F.shiftleft(F.col("_line"), self._batch_bits)))).drop("_pair")

    def decoded(self, code: Column) -> dict[str, Column]:
        """{file, line, batch} of a `_lineage` long."""
        shift = self.line_bits + self._batch_bits
        return {
            "_source_file": F.element_at(F.lit(list(self.files)), F.shiftright(code, shift).cast("int") + 1).cast("string"),
            "_line": F.shiftright(code, self._batch_bits).bitwiseAND(F.lit((1 << self.line_bits) - 1)),
            "_batch_id": F.element_at(F.lit(list(self.batches)),
                                      code.bitwiseAND(F.lit((1 << self._batch_bits) - 1)).cast("int") + 1).cast("string"),
        }


def _bits(n: int) -> int:
    """Bits to number `n` values from 0."""
    return max(n - 1, 0).bit_length()


def lineage_groups(bronze: DataFrame) -> list:
    """Per (file, batch) of `bronze`: its rows, non-null lines and least and greatest line."""
    return bronze.groupBy("_source_file", "_batch_id").agg(
        F.count(F.lit(1)).alias("rows"), F.count("_line").alias("lines"),
        F.min("_line").alias("first_line"), F.max("_line").alias("last_line")).collect()


def dedupe_exact(bronze: DataFrame, by: Column | str | None = None, partitions: int | None = None,
                 carry: dict[str, Column] | None = None, lineage: Lineage | None = None) -> DataFrame:
    """One row per distinct raw record: lineage of its first copy (the least file, line,
    batch), `copies` (>= 1) and `_record_hash`, a 64-bit hash of the record.

    `by`, an expression of the record's columns or the name of a `carry` column, groups the
    records into Spark partitions (copies are equal, so they share it): the shuffle of the
    de-duplication then also places every row of one `by` value in one partition.
    `partitions`: how many (None: the session's shuffle partitions). `carry`: more expressions
    of the record's columns, computed once per line before the shuffle and kept in the result
    under their names. `lineage`: the `Lineage` of `bronze`'s rows or of more (None: one pass
    over `bronze` finds it)."""
    if lineage is None:
        lineage = Lineage.of(lineage_groups(bronze))
    carry = dict(carry or {})
    kept = list(carry)
    if isinstance(by, Column):
        carry["_by"], by = by, "_by"
    if lineage is not None:
        bronze = lineage.code(bronze)
        first, decoded = F.min("_lineage"), lineage.decoded(F.col("_first"))
    else:  # the struct's minimum: a sort aggregation
        first = F.min(F.struct(*LINEAGE))
        decoded = {c: F.col(f"_first.{c}") for c in LINEAGE}
    if carry:
        bronze = bronze.withColumns(carry)
    if by is not None:
        bronze = bronze.repartition(partitions, by) if partitions else bronze.repartition(by)
    return bronze.groupBy(*schemas.SOURCE_COLUMNS, *carry).agg(
        first.alias("_first"), F.count(F.lit(1)).alias("copies")
    ).select(
        *schemas.SOURCE_COLUMNS, *kept,
        *[decoded[c].alias(c) for c in LINEAGE],
        "copies",
        F.xxhash64(*schemas.SOURCE_COLUMNS).alias("_record_hash"),
    )


def _number(col: Column, decimal: str) -> Column:
    """A number's text in Spark's notation: with a decimal comma, "." and spaces group thousands."""
    if decimal == ",":
        return F.regexp_replace(F.regexp_replace(col, r"[.\s\u00a0]", ""), ",", ".")
    return col


def _typing(profile: SourceProfile, p: CleanParams) -> tuple:
    """What decides how a profile's strings become typed values: profiles alike share one
    expression."""
    return (profile.decimal, profile.date_formats or p.date_formats, profile.timezone, profile.cancellation,
            profile.cancel_prefix.upper(), profile.cancel_values, "line_total" in profile.mapping)


def _typed_columns(t: dict[str, Column], typing: tuple) -> dict[str, Column]:
    """invoice_ts, invoice_date, quantity, unit_price, is_return and the failing raw value's
    name for one profile typing (see `_typing`)."""
    decimal, formats, timezone, cancellation, prefix, values, by_total = typing
    qty_text = _number(t["Quantity"], decimal)
    quantity = F.when(qty_text.rlike(_INT), qty_text.try_cast("int"))
    price_name = "LineTotal" if by_total else "UnitPrice"
    price_text = _number(t[price_name], decimal)
    price = F.when(price_text.rlike(_DECIMAL), price_text.try_cast("double"))
    if by_total:
        # unit price from the line's total; a zero quantity is caught as zero_quantity
        price = F.when(price.isNotNull(), F.when(quantity != 0, F.abs(price) / F.abs(quantity)).otherwise(F.lit(0.0)))
    if cancellation == "invoice_prefix":
        is_return = F.upper(t["InvoiceNo"]).startswith(prefix)
    elif cancellation == "negative_quantity":
        is_return = F.coalesce(quantity < 0, F.lit(False))
    else:
        is_return = F.coalesce(F.upper(t["CancelFlag"]).isin(list(values)), F.lit(False))
        # a flagged line is a return whatever the sign its export gave the quantity
        quantity = F.when(is_return, -F.abs(quantity)).otherwise(quantity)
    ts = parse_timestamp(t["InvoiceDate"], formats)
    day = F.to_date(ts)
    if timezone is not None:
        # a timestamp with its own offset is already an instant; others are local to `timezone`
        offset = t["InvoiceDate"].rlike(r"(Z|[+-]\d\d:?\d\d)$")
        ts = F.when(offset, ts).otherwise(F.to_utc_timestamp(ts, timezone))
        day = F.to_date(F.from_utc_timestamp(ts, timezone))
    return {"invoice_ts": ts, "invoice_date": day, "quantity": quantity, "unit_price": price,
            "is_return": is_return, "price_name": F.lit(price_name)}


def _by_source(source: Column, groups: dict[tuple, list[str]], t: dict[str, Column] | None = None) -> dict[str, Column]:
    """The typed columns, each choosing its profile's expression by the row's `_source`, from
    the trimmed strings `t` (default: classify's `_t_<column>`)."""
    typed = {typing: _typed_columns(t or _trimmed(), typing) for typing in groups}
    out = {}
    for name in next(iter(typed.values())):
        if len(groups) == 1:
            out[name] = next(iter(typed.values()))[name]
            continue
        col = None
        for typing, names in groups.items():
            test = source.isin(names)
            col = F.when(test, typed[typing][name]) if col is None else col.when(test, typed[typing][name])
        out[name] = col
    return out


def _trimmed() -> dict[str, Column]:
    """The trimmed raw strings (blank as null) that `classify` adds as `_t_<column>`."""
    return {c: F.col(f"_t_{c}") for c in schemas.SOURCE_COLUMNS}


def _typing_groups(p: CleanParams, profiles: dict[str, SourceProfile]) -> dict[tuple, list[str]]:
    """The profiles' names per typing (see `_typing`)."""
    groups: dict[tuple, list[str]] = {}
    for name, profile in sorted(profiles.items()):
        groups.setdefault(_typing(profile, p), []).append(name)
    return groups


def invoice_date_of_record(p: CleanParams, profiles: dict[str, SourceProfile]) -> Column:
    """The invoice date `classify` gives a raw record, from its raw columns."""
    return _time_of_record(p, profiles)["invoice_date"]


def _time_of_record(p: CleanParams, profiles: dict[str, SourceProfile]) -> dict[str, Column]:
    """The invoice time and date `classify` gives a raw record, from its raw columns."""
    source = F.coalesce(F.col("_source"), F.lit(schemas.LEGACY_SOURCE))
    t = {c: _blank_to_null(F.col(c)) for c in schemas.SOURCE_COLUMNS}
    typed = _by_source(source, _typing_groups(p, profiles), t)
    return {"invoice_ts": typed["invoice_ts"], "invoice_date": typed["invoice_date"]}


# the typed columns `clean_transactions` computes before the de-duplication and `classify`
# takes as they are: typed name -> carried column
PARSED_TIME = {"invoice_ts": "_invoice_ts", "invoice_date": "_invoice_date"}


def classify(rows: DataFrame, p: CleanParams, profiles: dict[str, SourceProfile] | None = None) -> DataFrame:
    """Typed columns plus `reason`/`detail` (null for a clean row) for de-duplicated raw rows,
    each typed by its `_source` profile (`profiles`, default the packaged ones).

    The raw strings travel in the struct `_record` (their names clash with the typed ones
    under Spark's case-insensitive resolution).
    """
    profiles = profiles if profiles is not None else packaged_defaults().sources
    groups = _typing_groups(p, profiles)
    source = F.coalesce(F.col("_source"), F.lit(schemas.LEGACY_SOURCE))
    trimmed = rows.select(
        "*", *[_blank_to_null(F.col(c)).alias(f"_t_{c}") for c in schemas.SOURCE_COLUMNS if c != "_source"],
        source.alias("_t__source"),
    )
    typed_cols = _by_source(F.col("_t__source"), groups)
    if set(PARSED_TIME.values()) <= set(rows.columns):
        # parsed once per line before the de-duplication (`clean_transactions`), not again
        typed_cols.update({name: F.col(column) for name, column in PARSED_TIME.items()})
    t = _trimmed()
    customer = F.regexp_replace(t["CustomerID"], r"\.0+$", "")
    cap = p.outlier_policy == "cap"
    q, price = F.col("quantity"), F.col("unit_price")

    typed = trimmed.select(
        F.struct(*schemas.SOURCE_COLUMNS).alias("_record"),
        F.upper(t["InvoiceNo"]).alias("invoice_no"),
        F.upper(t["StockCode"]).alias("stock_code"),
        t["Description"].alias("description"),
        typed_cols["quantity"].alias("quantity"),
        typed_cols["invoice_ts"].alias("invoice_ts"),
        typed_cols["invoice_date"].alias("invoice_date"),
        typed_cols["unit_price"].alias("unit_price"),
        customer.alias("customer_id"),
        t["Country"].alias("country"),
        typed_cols["is_return"].alias("is_return"),
        typed_cols["price_name"].alias("_price_name"),
        t["_source"].isin(list(profiles)).alias("_known_source"),
        "_source_file",
        "_line",
        "_batch_id",
        "copies",
        "_record_hash",
    )

    def raw(column: str) -> Column:
        return F.coalesce(F.col(f"_record.{column}"), F.lit(""))

    checks = [
        ("unknown_source", ~F.col("_known_source"),
         F.format_string("source profile '%s' is not configured", F.col("_record._source"))),
        ("missing_invoice", F.col("invoice_no").isNull(), F.lit("InvoiceNo is empty")),
        ("missing_stock_code", F.col("stock_code").isNull(), F.lit("StockCode is empty")),
        (
            "bad_date",
            F.col("invoice_ts").isNull(),
            F.format_string("InvoiceDate '%s' matches no configured format", raw("InvoiceDate")),
        ),
        (
            "bad_number",
            q.isNull() | price.isNull(),
            F.when(q.isNull(), F.format_string("Quantity '%s' is not an integer", raw("Quantity")))
            .when(F.col("_price_name") == "LineTotal", F.format_string("LineTotal '%s' is not a number", raw("LineTotal")))
            .otherwise(F.format_string("UnitPrice '%s' is not a number", raw("UnitPrice"))),
        ),
    ]
    if p.missing_customer == "quarantine":
        checks.append(("missing_customer", F.col("customer_id").isNull(), F.lit("CustomerID is empty")))
    checks += [
        ("negative_quantity", ~F.col("is_return") & (q < 0), F.format_string("quantity %d on a sale", q)),
        ("zero_quantity", q == 0, F.lit("quantity 0")),
        ("bad_return", F.col("is_return") & (q > 0), F.format_string("quantity %d on a cancellation", q)),
        ("bad_price", price < 0, F.format_string("unit price %s below 0", price.cast("string"))),
    ]
    if not cap:
        checks += [
            ("extreme_price", price > p.max_unit_price, F.format_string(f"unit price %s above {p.max_unit_price}", price.cast("string"))),
            ("extreme_quantity", F.abs(q) > p.max_quantity, F.format_string(f"|quantity| %d above {p.max_quantity}", q)),
        ]
    reason, detail = F.lit(None).cast("string"), F.lit(None).cast("string")
    for code, test, text in reversed(checks):
        reason = F.when(test, F.lit(code)).otherwise(reason)
        detail = F.when(test, text).otherwise(detail)
    typed = typed.withColumn("reason", reason).withColumn("detail", detail)
    if cap:
        typed = typed.withColumn("unit_price", F.least(price, F.lit(p.max_unit_price))).withColumn(
            "quantity", F.when(F.abs(q) > p.max_quantity, F.signum(q).cast("int") * p.max_quantity).otherwise(q)
        )
    return typed


def clean_transactions(bronze: DataFrame, p: CleanParams, profiles: dict[str, SourceProfile] | None = None,
                       partitions: int | None = None, lineage: Lineage | None = None) -> DataFrame:
    """Bronze rows -> classified rows: silver columns, `reason`, `detail`, `_record`, `copies`.

    Rows with a null `reason` are silver; the rest are quarantine. `copies - 1` per row are the
    exact duplicates removed. The rows of one invoice date are in one Spark partition, of
    `partitions` (None: the session's shuffle partitions). `lineage`: see `dedupe_exact`.
    """
    schemas.require_columns(bronze, schemas.RAW_COLUMNS + ("_source_file", "_line", "_batch_id"), schemas.BRONZE_TRANSACTIONS)
    profiles = profiles if profiles is not None else packaged_defaults().sources
    # the de-duplication's shuffle places each invoice date in one partition, so silver is
    # written one file per date with no second shuffle; the time parsed for it is kept, so
    # `classify` does not parse it again (a tenth of clean's time went to parsing times)
    time = _time_of_record(p, profiles)
    deduped = dedupe_exact(schemas.with_source_columns(bronze), by=PARSED_TIME["invoice_date"], partitions=partitions,
                           carry={column: time[name] for name, column in PARSED_TIME.items()}, lineage=lineage)
    return classify(deduped, p, profiles)


def silver_rows(classified: DataFrame) -> DataFrame:
    q, price = F.col("quantity"), F.col("unit_price")
    return classified.where(F.col("reason").isNull()).select(
        "invoice_no",
        "stock_code",
        "description",
        "quantity",
        "invoice_ts",
        "invoice_date",
        "unit_price",
        F.round(q * price, 2).alias("line_amount"),
        "customer_id",
        "country",
        "is_return",
        "_source_file",
        "_line",
        "_batch_id",
        "_record_hash",
    )


def quarantine_rows(classified: DataFrame) -> DataFrame:
    return classified.where(F.col("reason").isNotNull()).select(
        *[F.col(f"_record.{c}").alias(c) for c in schemas.SOURCE_COLUMNS],
        F.lit(None).cast("string").alias("_raw"),
        "reason",
        "detail",
        F.lit(STAGE).alias("stage"),
        "_source_file",
        "_line",
        "_batch_id",
    )


def _fingerprint(p: CleanParams, profiles: dict[str, SourceProfile], pseudonym_key: bytes | None = None) -> str:
    """What decides how a bronze row is classified: the clean parameters, the source
    profiles and, when ids are pseudonymized, the key (by a keyed check value, not the key).
    Silver built under another fingerprint is rebuilt, not extended."""
    key = {"clean": {k: v for k, v in dataclasses.asdict(p).items() if k != "as_of"},
           "profiles": {name: dataclasses.asdict(prof) for name, prof in sorted(profiles.items())}}
    if pseudonym_key is not None:
        key["pseudonyms"] = privacy.key_check(pseudonym_key)
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plan(lake: Lake, live: list[str], fingerprint: str) -> tuple[str, list[str], str]:
    """(mode, bronze batches to classify, why): "incremental" with the batches silver has not
    seen, "noop" when there are none, or "full" with every batch, when silver is missing, was
    built under other parameters or profiles, or holds a batch bronze no longer has (a
    corrected file superseded it). `live`: the batches bronze holds."""
    if not lake.exists(schemas.OPS_CLEAN_BATCHES) or not lake.exists(schemas.SILVER_TRANSACTIONS):
        return "full", live, "silver is new"
    silver = lake.read_table(schemas.SILVER_TRANSACTIONS)
    if "_record_hash" not in silver.columns or lake.partition_columns(schemas.SILVER_TRANSACTIONS) != list(SILVER_PARTITIONS):
        return "full", live, "silver predates the incremental layout"
    done = {r["batch_id"]: r["fingerprint"] for r in lake.read_table(schemas.OPS_CLEAN_BATCHES).collect()}
    if any(f != fingerprint for f in done.values()):
        return "full", live, "clean parameters or source profiles changed"
    gone = sorted(set(done) - set(live))
    if gone:
        return "full", live, f"{len(gone)} cleaned batch(es) no longer in bronze (superseded by a corrected file)"
    new = [b for b in live if b not in done]
    return ("incremental", new, f"{len(new)} new batch(es)") if new else ("noop", [], "no new batches")


def bronze_batches(bronze: DataFrame) -> tuple[dict[str, int], Lineage | None]:
    """{batch id: rows} of bronze and the `Lineage` of its rows, from one pass over its
    lineage columns."""
    groups = lineage_groups(bronze)
    counts: dict[str, int] = {}
    for g in groups:
        counts[g["_batch_id"]] = counts.get(g["_batch_id"], 0) + int(g["rows"])
    return counts, Lineage.of(groups)


# rows per partition of the de-duplication's shuffle: its hash aggregation and the sort of the
# date-partitioned write then stay in memory (8 partitions of 6 M rows spilled 23 GiB at 50 M lines)
ROWS_PER_PARTITION = 500_000


def shuffle_partitions(spark, rows: int) -> int | None:
    """The de-duplication's partitions for `rows` bronze rows: None (the session's shuffle
    partitions, which adaptive execution may coalesce) unless that leaves over
    ROWS_PER_PARTITION rows in one; then enough for ROWS_PER_PARTITION."""
    needed = -(-rows // ROWS_PER_PARTITION)
    return needed if needed > int(spark.conf.get("spark.sql.shuffle.partitions")) else None


def _mark_batches(lake: Lake, run: Run, batches: list[str], fingerprint: str, full: bool) -> None:
    """Record the classified batches in ops/clean_batches: the commit mark, written last and
    sealed (a run killed after it is recorded by the next as it would have recorded itself)."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    marks = lake.spark.createDataFrame([(b, fingerprint, run.run_id, now) for b in batches], schemas.CLEAN_BATCHES_SCHEMA)
    tag = seal(run, schemas.OPS_CLEAN_BATCHES)
    if full:
        run.outputs[schemas.OPS_CLEAN_BATCHES] = lake.overwrite(marks, schemas.OPS_CLEAN_BATCHES, tag=tag)
    else:
        run.outputs[schemas.OPS_CLEAN_BATCHES] = lake.merge_into(marks, schemas.OPS_CLEAN_BATCHES, ["batch_id"], tag=tag)


# a silver row's identity: the raw record's hash, checked against the fields it decides
SILVER_KEY = ("invoice_date", "_record_hash", "invoice_no", "stock_code", "quantity", "unit_price", "customer_id")
SILVER_PARTITIONS = ("invoice_date",)


def _incremental(lake: Lake, run: Run, classified: DataFrame, new: list[str]) -> None:
    """Add the classified rows of the `new` batches to silver and its quarantine.

    A new row that repeats a record already there is a duplicate. Silver is searched only on
    the dates the new rows carry (a copy shares its timestamp), and those dates' partitions
    are rewritten in one commit, the copy with the least (file, line, batch) kept, as a full
    rebuild keeps it. Rows of `new` batches left by a killed run are replaced, not counted.
    """
    fresh = silver_rows(classified).persist(SPILL)
    quarantined = quarantine_rows(classified).persist(SPILL)
    try:
        dates = [r["invoice_date"] for r in fresh.select("invoice_date").distinct().collect()]
        not_new = ~F.col("_batch_id").isin(new)
        silver_changed = False
        if dates:
            existing = lake.read_table(schemas.SILVER_TRANSACTIONS).where(
                F.col("invoice_date").isin(dates)).where(not_new)
            repeats = fresh.join(existing.select(*SILVER_KEY), list(SILVER_KEY), "left_semi").count()
            n_fresh = fresh.count()
            rank = Window.partitionBy(*SILVER_KEY).orderBy(*LINEAGE)
            kept = (existing.unionByName(fresh).withColumn("_rank", F.row_number().over(rank))
                    .where(F.col("_rank") == 1).drop("_rank"))
            silver_changed = True
        else:
            repeats = n_fresh = 0
        old_q = lake.read_table(schemas.SILVER_QUARANTINE).where(not_new)
        same_record = [quarantined[c].eqNullSafe(old_q[c]) for c in schemas.SOURCE_COLUMNS]
        cond = same_record[0]
        for c in same_record[1:]:
            cond = cond & c
        q_repeats = quarantined.join(old_q, cond, "left_semi").count()
        n_quarantined = quarantined.count()
        run.rows_out = n_fresh - repeats
        run.rows_quarantined = n_quarantined - q_repeats
        run.rows_duplicate += repeats + q_repeats
        conservation_check(run)  # before anything is committed

        if silver_changed:
            run.outputs[schemas.SILVER_TRANSACTIONS] = lake.replace_dates(kept, schemas.SILVER_TRANSACTIONS, dates)
        if n_quarantined:
            run.outputs[schemas.SILVER_QUARANTINE] = _merge_quarantine(lake, quarantined)
        run.message = f"incremental: {len(new)} new batch(es), {len(dates)} date(s) of silver rewritten"
    finally:
        fresh.unpersist()
        quarantined.unpersist()


def _merge_quarantine(lake: Lake, quarantined: DataFrame) -> int:
    """Add quarantined records to silver/quarantine; a record already there keeps the copy
    with the least (file, line, batch). Returns the new version."""
    same = " AND ".join(f"t.`{c}` <=> s.`{c}`" for c in schemas.SOURCE_COLUMNS)
    earlier = "struct(s._source_file, s._line, s._batch_id) < struct(t._source_file, t._line, t._batch_id)"
    return lake.commit(schemas.SILVER_QUARANTINE, lambda: (
        DeltaTable.forPath(lake.spark, lake.path(schemas.SILVER_QUARANTINE)).alias("t")
        .merge(quarantined.alias("s"), same)
        .whenMatchedUpdateAll(condition=earlier)
        .whenNotMatchedInsertAll()
        .execute()))


def _full(lake: Lake, run: Run, classified: DataFrame, bronze_rows: int) -> dict:
    """Rebuild silver (partitioned by invoice date) and its quarantine from all of bronze
    (`bronze_rows` lines); returns the classified records per reason (None: kept).

    No cache of the classified records: silver is written straight from the de-duplication,
    and the tally is observed on the way (`DataFrame.observe`), so `lake`'s session must be
    one that may serve an Observation (`observing_session`). The quarantine then takes a
    second pass over bronze only when there is something to quarantine; Spark filters the
    failing lines before that pass's shuffle, so only they are de-duplicated."""
    tally = Observation("clean_tally")
    observed = classified.observe(
        tally, F.count(F.lit(1)).alias("records"), F.sum("copies").alias("lines"),
        *[F.count(F.when(F.col("reason") == code, 1)).alias(code) for code in REASONS])
    # one file per date: each date's rows are in one partition already (`clean_transactions`)
    run.outputs[schemas.SILVER_TRANSACTIONS] = lake.overwrite(
        silver_rows(observed), schemas.SILVER_TRANSACTIONS, partition_by=SILVER_PARTITIONS)
    counted = tally.get
    by_reason = {code: int(counted[code]) for code in REASONS if counted[code]}
    run.rows_in = int(counted["lines"] or 0)
    run.rows_quarantined = sum(by_reason.values())
    run.rows_out = int(counted["records"]) - run.rows_quarantined
    run.rows_duplicate = run.rows_in - int(counted["records"])
    by_reason[None] = run.rows_out
    conservation_check(run)
    if run.rows_in != bronze_rows:
        raise StageError(f"clean: the de-duplication saw {run.rows_in} lines of the {bronze_rows} in bronze")
    quarantine = quarantine_rows(classified)
    if not run.rows_quarantined:
        quarantine = quarantine.where(F.lit(False))  # an empty table, without a second pass
    run.outputs[schemas.SILVER_QUARANTINE] = lake.overwrite(quarantine, schemas.SILVER_QUARANTINE)
    written = tuple(lake.rows_written(t, run.outputs[t]) for t in (schemas.SILVER_TRANSACTIONS, schemas.SILVER_QUARANTINE))
    if written != (run.rows_out, run.rows_quarantined):
        raise StageError(f"clean: wrote {written[0]} silver and {written[1]} quarantine rows, "
                         f"expected {run.rows_out} and {run.rows_quarantined}")
    return by_reason


def _tally(run: Run, classified: DataFrame) -> dict:
    """One pass over the classified records: the run's lines in and exact duplicates, and the
    records per reason (None: kept for silver)."""
    rows = classified.groupBy("reason").agg(F.count(F.lit(1)).alias("n"), F.sum("copies").alias("lines")).collect()
    run.rows_in = sum(int(r["lines"] or 0) for r in rows)
    run.rows_duplicate = run.rows_in - sum(int(r["n"]) for r in rows)
    return {r["reason"]: int(r["n"]) for r in rows}


def run(lake: Lake, cfg: Config, p: CleanParams) -> Run:
    """Classify the bronze batches silver has not seen into silver/transactions and
    silver/quarantine (all of bronze when silver must be rebuilt, see `_plan`); records
    ops/runs and marks the batches in ops/clean_batches. The result equals a rebuild from all
    of bronze."""
    as_of = p.as_of
    version = lake.table_version(schemas.BRONZE_TRANSACTIONS)
    if version is None:
        raise StageError(f"table {schemas.BRONZE_TRANSACTIONS} does not exist in lake {lake.root}")
    # privacy.pseudonymize: silver's customer_id is the keyed hash of the id, not the id
    pseudonym_key = (privacy.load_key(cfg.privacy.key_env, cfg.privacy.key_file, lake.root)
                     if cfg.privacy.pseudonymize else None)
    fingerprint = _fingerprint(p, cfg.sources, pseudonym_key)
    params = {"date_formats": list(p.date_formats), "missing_customer": p.missing_customer,
              "outlier_policy": p.outlier_policy, "max_unit_price": p.max_unit_price,
              "max_quantity": p.max_quantity, "pseudonymize": pseudonym_key is not None}
    with record_run(lake, STAGE, as_of, params) as run:
        bronze = lake.read_table(schemas.BRONZE_TRANSACTIONS, version=version)
        run.inputs[schemas.BRONZE_TRANSACTIONS] = version
        counts, lineage = bronze_batches(bronze)
        mode, batches, why = _plan(lake, sorted(counts), fingerprint)
        params.update({"mode": mode, "why": why, "batches": batches})
        log.info("clean: %s (%s)", mode, why)
        if mode == "noop":
            run.status, run.message = "noop", "no new bronze batches; silver unchanged"
        else:
            if mode == "full":
                # the full rebuild's Observation would leave `lake`'s session unserializable: it
                # reads and writes through a child session (`observing_session`)
                work = lake.with_session(observing_session(lake.spark))
                rows = work.read_table(schemas.BRONZE_TRANSACTIONS, version=version)
            else:
                work, rows = lake, bronze.where(F.col("_batch_id").isin(batches))
            partitions = shuffle_partitions(work.spark, sum(counts[b] for b in batches))
            classified = clean_transactions(rows, p, cfg.sources, partitions, lineage)
            # the raw strings are kept for quarantined records only: half the bytes spilled
            classified = classified.withColumn("_record", F.when(F.col("reason").isNotNull(), F.col("_record")))
            if pseudonym_key is not None:
                classified = classified.withColumn("customer_id", privacy.hash_column(pseudonym_key, F.col("customer_id")))
            if mode == "full":
                by_reason = _full(work, run, classified, sum(counts.values()))
                run.message = f"full rebuild: {why}"
            else:
                classified = classified.persist(SPILL)
                try:
                    by_reason = _tally(run, classified)
                    _incremental(lake, run, classified, batches)
                finally:
                    classified.unpersist()
            run.quarantine_reasons = {r: n for r, n in by_reason.items() if r is not None}
            run.as_of = run.as_of or _last_date(lake)
            _mark_batches(lake, run, batches, fingerprint, full=mode == "full")
        run.as_of = run.as_of or _last_date(lake)
    return run


def _last_date(lake: Lake) -> date | None:
    return lake.read_table(schemas.SILVER_TRANSACTIONS).agg(F.max("invoice_date")).first()[0]
