"""`lakemine ingest`: raw files (CSV or Parquet, either UCI layout) into `bronze/transactions`.

Every data line of every file ends in exactly one of `bronze/transactions` (raw columns as
strings plus lineage) or `bronze/quarantine` (with a reason code). A file's batch id is a hash
of its content, so ingesting the same content again is a no-op, and the writes replace whole
batches, so a run interrupted half-way is repaired by running it again.

Unusable files (missing, empty, binary, wrong columns, undecodable header, unreadable
Parquet) stop the stage before anything is written: InputError, exit 2.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pyspark.sql.functions as F
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from lakemine.core import storage
from lakemine.core.config import Config, IngestConfig, StageParams
from lakemine.core.errors import InputError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, conservation_check, record_run

log = logging.getLogger(__name__)

STAGE = "ingest"
SNIFF_BYTES = 65536
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@dataclass(frozen=True)
class RawFile:
    """An input file that passed inspection: its format, layout and header in file order."""

    path: str
    size: int
    fmt: str
    layout: str
    columns: tuple[str, ...]
    # (the file's column, its bronze name) for the columns the layout maps; others are ignored
    mapping: tuple[tuple[str, str], ...]


def match_layout(names: list[str], where: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The layout whose columns the header holds, names compared without case and surrounding
    spaces (columns it does not map are ignored), and (file column, bronze name) pairs."""
    own = {n.strip().lower(): n for n in names}
    found = []
    for layout, mapping in schemas.LAYOUTS.items():
        if all(src.lower() in own for src in mapping):
            found.append((layout, tuple((own[src.lower()], dst) for src, dst in mapping.items())))
    if len(found) == 1:
        return found[0]
    cleaned = [n.strip() for n in names]
    if found:
        raise InputError(f"{where}: columns {cleaned} match both UCI layouts; keep the columns of one")
    raise InputError(
        f"{where}: columns {cleaned} match neither UCI layout; expected "
        f"{list(schemas.RAW_COLUMNS)} or {list(schemas.RAW_COLUMNS_II)} (any case, other columns ignored)"
    )


def _decompressed_head(info: storage.FileInfo) -> bytes:
    """The first bytes of a CSV file's text: gzip (.gz) and bzip2 (.bz2) files, which Spark reads
    decompressed, are decompressed here too."""
    compressed = info.name.lower().endswith((".gz", ".bz2"))
    try:
        return storage.head_bytes(info.path, SNIFF_BYTES, decompress=compressed)
    except OSError as exc:
        kind = info.name.rsplit(".", 1)[-1]
        raise InputError(f"{info.path}: not a readable .{kind} file ({str(exc).splitlines()[0][:80]})") from None


def _inspect_csv(info: storage.FileInfo) -> RawFile:
    head = _decompressed_head(info)
    if not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise InputError(f"{info.path}: empty file (no header, no rows)")
    if head.startswith(_UTF16_BOMS):
        raise InputError(f"{info.path}: UTF-16 text; convert it to UTF-8")
    if b"\x00" in head:
        raise InputError(f"{info.path}: binary data, not a CSV text file")
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        header_text = first.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{info.path}: header line is not valid UTF-8; convert the file to UTF-8") from None
    names = next(csv.reader(io.StringIO(header_text)), [])
    names = [n.strip() for n in names]
    layout, mapping = match_layout(names, info.path)
    return RawFile(info.path, info.size, "csv", layout, tuple(names), mapping)


def _inspect_parquet(spark: SparkSession, info: storage.FileInfo) -> RawFile:
    if storage.head_bytes(info.path, 4) != b"PAR1":
        raise InputError(f"{info.path}: not a Parquet file (no PAR1 magic)")
    try:
        names = spark.read.parquet(info.path).columns
    except Exception as exc:  # noqa: BLE001 - Spark wraps every footer problem differently
        raise InputError(f"{info.path}: unreadable Parquet ({str(exc).splitlines()[0][:120]})") from None
    layout, mapping = match_layout(names, info.path)
    return RawFile(info.path, info.size, "parquet", layout, tuple(names), mapping)


def inspect_inputs(spark: SparkSession, pattern: str, suffixes: tuple[str, ...]) -> list[RawFile]:
    """Resolve `pattern` to files and check each one is usable; InputError on the first that is not."""
    infos = storage.list_inputs(pattern, suffixes)
    if not infos:
        if storage.exists(pattern):
            raise InputError(f"{pattern}: no input files ({', '.join(suffixes)}) found there")
        raise InputError(f"{pattern}: no such file or directory")
    files = []
    for info in infos:
        if info.size == 0:
            raise InputError(f"{info.path}: empty file (0 bytes)")
        if info.name.lower().endswith(".parquet"):
            files.append(_inspect_parquet(spark, info))
        else:
            files.append(_inspect_csv(info))
    return files


def _numbered(df: DataFrame, content: list) -> tuple[DataFrame, dict[str, tuple[str, int]]]:
    """Add `_line` (1-based position in its file) to rows read by a file source.

    Rows of one split arrive in file order with consecutive monotonically increasing ids, so
    a row's line is the rows in earlier splits of its file plus its position in the split. The
    same pass sums a 64-bit hash of every row's `content` per file, giving each file a batch
    id that depends on its rows only (not on its name or on how Spark split it).
    Returns the numbered rows and {file: (batch id, rows)}.
    """
    h = F.xxhash64(*content)
    df = df.select(
        F.col("_metadata.file_path").alias("_source_file"),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_id"),
        "*",
    )
    blocks = (
        df.groupBy("_source_file", "_block")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.min("_id").alias("first_id"),
            F.sum(h.bitwiseAND(F.lit(0xFFFFFFFF))).alias("lo"),
            F.sum(F.shiftrightunsigned(h, 32)).alias("hi"),
        )
        .collect()
    )
    offsets, files = [], {}
    for row in sorted(blocks, key=lambda r: (r["_source_file"], r["_block"])):
        n, lo, hi = files.get(row["_source_file"], (0, 0, 0))
        offsets.append((row["_source_file"], row["_block"], n, row["first_id"]))
        files[row["_source_file"]] = (n + row["n"], lo + row["lo"], hi + row["hi"])
    batches = {
        path: (hashlib.sha1(f"{n}:{lo % 2**64}:{hi % 2**64}".encode()).hexdigest()[:20], n)
        for path, (n, lo, hi) in files.items()
    }
    offs = df.sparkSession.createDataFrame(offsets, "_source_file string, _block long, before long, first_id long")
    numbered = (
        df.join(F.broadcast(offs), ["_source_file", "_block"])
        .withColumn("_line", F.col("before") + F.col("_id") - F.col("first_id") + 1)
        .drop("_block", "_id", "before", "first_id")
    )
    return numbered, batches


def parse_csv_lines(lines: DataFrame, columns: tuple[str, ...], mapping: dict[str, str]) -> DataFrame:
    """Classify and split CSV data lines (`value`, lineage columns) of one header: `columns` in
    file order, `mapping` from the file's columns to bronze names (others are dropped).

    Returns the raw columns (canonical names, strings, empty fields null), `_raw`, and
    `reason`/`detail`: null for a good line, else one of blank_line, bad_encoding,
    repeated_header, bad_quoting, bad_field_count.

    Lines without a double quote (nearly all) are split on commas; only quoted lines go
    through the CSV parser. Each step is its own projection so that no regular expression
    or parse runs more than once per line.
    """
    value = F.col("value")
    quoted = value.contains('"')
    # A quoted field is one or more "..." runs ("" inside a field splits it into two runs),
    # so removing every "[^"]*" run leaves the commas that separate fields.
    unquoted = F.regexp_replace(value, '"[^"]*"', "")
    step = lines.select(
        "*",
        quoted.alias("_quoted"),
        F.when(quoted, unquoted).alias("_unquoted"),
    ).select(
        "*",
        F.size(F.split(F.coalesce(F.col("_unquoted"), value), ",", -1)).alias("_n"),
        F.coalesce(F.col("_unquoted").contains('"'), F.lit(False)).alias("_unbalanced"),
    )
    n = F.col("_n")
    header = ",".join(columns)
    reason = (
        F.when(F.trim(value) == "", F.lit("blank_line"))
        .when(~F.is_valid_utf8(value), F.lit("bad_encoding"))
        .when(F.translate(value, '"', "") == header, F.lit("repeated_header"))
        .when(F.col("_unbalanced"), F.lit("bad_quoting"))
        .when(n != len(columns), F.lit("bad_field_count"))
    )
    step = step.withColumn("reason", reason)
    r = F.col("reason")
    detail = (
        F.when(r == "bad_field_count", F.format_string(f"%d fields, expected {len(columns)}", n))
        .when(r == "bad_encoding", F.lit("line is not valid UTF-8"))
        .when(r == "bad_quoting", F.lit("unbalanced double quote"))
        .when(r == "blank_line", F.lit("empty line"))
        .when(r == "repeated_header", F.lit("header line inside the data"))
    )
    ddl = ", ".join(f"`{c}` STRING" for c in columns)
    parsed = F.from_csv(value, ddl, {"mode": "PERMISSIVE", "nullValue": "", "escape": '"'})
    fields = F.when(r.isNull() & F.col("_quoted"), F.array(*[parsed.getField(c) for c in columns])).when(
        r.isNull(), F.split(value, ",", -1)
    )
    step = step.select("*", detail.alias("detail"), fields.alias("_fields"))
    raw = []
    for i, src in enumerate(columns):
        if src in mapping:
            field = F.col("_fields").getItem(i)
            raw.append(F.when(field != "", field).alias(mapping[src]))
    return step.select(
        *raw,
        F.make_valid_utf8(value).alias("_raw"),
        "reason",
        "detail",
        "_source_file",
        "_line",
    )


def _read_group(spark: SparkSession, files: list[RawFile]) -> tuple[DataFrame, dict[str, tuple[str, int]]]:
    """Parsed data rows of files sharing one format and header, and {file: (batch id, data rows)}."""
    first = files[0]
    paths = [f.path for f in files]
    if first.fmt == "csv":
        lines, batches = _numbered(spark.read.text(paths), [F.col("value")])
        body = lines.where(F.col("_line") > 1)
        batches = {path: (batch, n - 1) for path, (batch, n) in batches.items()}
        return parse_csv_lines(body, first.columns, dict(first.mapping)), batches
    raw = spark.read.parquet(*paths)
    rows, batches = _numbered(raw, [F.col(f"`{c}`").cast("string") for c in first.columns])
    parsed = rows.select(
        *[F.col(f"`{src}`").cast("string").alias(dst) for src, dst in first.mapping],
        F.lit(None).cast("string").alias("_raw"),
        F.lit(None).cast("string").alias("reason"),
        F.lit(None).cast("string").alias("detail"),
        "_source_file",
        "_line",
    )
    return parsed, batches


def _existing_batches(lake: Lake, batch_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for table in (schemas.BRONZE_TRANSACTIONS, schemas.BRONZE_QUARANTINE):
        if lake.exists(table):
            rows = (
                lake.read_table(table)
                .where(F.col("_batch_id").isin(batch_ids))
                .select("_batch_id").distinct().collect()
            )
            found.update(r["_batch_id"] for r in rows)
    return found


@dataclass(frozen=True)
class IngestParams(IngestConfig, StageParams):
    """The ingest section of the config (suffixes) and the input: a file, folder or glob."""

    SECTION = "ingest"
    input: str = ""
    as_of: date | None = None


@dataclass
class IngestResult:
    """What `run` leaves in `Run.result`: files read, batches written, files skipped and why."""

    files: int
    new_batches: list[str]
    skipped: dict[str, str]


def split_rows(rows: DataFrame, ingested_at: datetime) -> tuple[DataFrame, DataFrame]:
    """Parsed rows with `_batch_id` -> (bronze rows, quarantine rows): the pure transform."""
    good = rows.where(F.col("reason").isNull()).select(
        *schemas.RAW_COLUMNS, "_source_file", "_line", "_batch_id",
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
    )
    bad = rows.where(F.col("reason").isNotNull()).select(
        *schemas.RAW_COLUMNS, "_raw", "reason", "detail", F.lit(STAGE).alias("stage"),
        "_source_file", "_line", "_batch_id",
    )
    return good, bad


def run(lake: Lake, cfg: Config, p: IngestParams) -> Run:
    """Ingest `p.input` (file, folder or glob) into bronze; records the run in ops/runs.
    `Run.result` is an IngestResult."""
    spark = lake.spark
    input_path, as_of = p.input, p.as_of
    files = inspect_inputs(spark, input_path, p.suffixes)
    params = {"input": input_path, "files": [f.path for f in files]}
    with record_run(lake, STAGE, as_of, params) as run:
        groups: dict[tuple, list[RawFile]] = {}
        for f in files:
            groups.setdefault((f.fmt, f.columns), []).append(f)
        batches: dict[str, tuple[str, int]] = {}
        parsed_parts = []
        for (fmt, _), group in groups.items():
            parsed, group_batches = _read_group(spark, group)
            batches.update(group_batches)
            parsed_parts.append(parsed)

        # the same content twice in one run, or already in bronze: skip it
        skipped: dict[str, str] = {}
        chosen: dict[str, str] = {}
        for path, (batch, _) in sorted(batches.items()):
            if batch in chosen:
                skipped[path] = f"same content as {chosen[batch]}"
            else:
                chosen[batch] = path
        already = _existing_batches(lake, list(chosen))
        for batch in sorted(already):
            skipped[chosen.pop(batch)] = f"already ingested as batch {batch}"
        new = {path: batch for batch, path in chosen.items()}
        params.update({"batches": {p: batches[p][0] for p in sorted(batches)}, "skipped": skipped})

        run.rows_in = sum(batches[p][1] for p in new)
        if not new:
            run.status = "noop"
            run.message = f"{len(skipped)} file(s) already ingested; nothing written"
            run.result = IngestResult(len(files), [], skipped)
            return run

        batch_map = spark.createDataFrame(sorted(new.items()), "_source_file string, _batch_id string")
        rows = parsed_parts[0]
        for part in parsed_parts[1:]:
            rows = rows.unionByName(part)
        rows = rows.join(F.broadcast(batch_map), "_source_file").persist(StorageLevel.MEMORY_AND_DISK)
        good, bad = split_rows(rows, datetime.now(timezone.utc).replace(tzinfo=None))
        batch_ids = sorted(new.values())
        try:
            run.outputs[schemas.BRONZE_TRANSACTIONS] = lake.replace_batches(good, schemas.BRONZE_TRANSACTIONS, batch_ids)
            run.rows_out = lake.rows_written(schemas.BRONZE_TRANSACTIONS)
            run.outputs[schemas.BRONZE_QUARANTINE] = lake.replace_batches(bad, schemas.BRONZE_QUARANTINE, batch_ids)
            run.rows_quarantined = lake.rows_written(schemas.BRONZE_QUARANTINE)
            reasons = rows.where(F.col("reason").isNotNull()).groupBy("reason").count().collect()
            run.quarantine_reasons = {r["reason"]: int(r["count"]) for r in reasons}
        finally:
            rows.unpersist()
        conservation_check(run)
        run.result = IngestResult(len(files), batch_ids, skipped)
        return run

