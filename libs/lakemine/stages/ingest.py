"""`lakemine ingest`: raw exports into `bronze/transactions`.

Inputs are CSV files (plain, .gz or .bz2), Excel workbooks, Parquet files, a Delta table's folder or a
metastore table (`table:NAME`). Each is read through a source profile (lakemine.core.sources),
named by `--source` or detected from its header, which maps its columns onto the bronze
columns and says how to read it (encoding, delimiter, quote, header). Every data line
of every file ends in exactly one of `bronze/transactions` (raw columns as strings plus
lineage) or `bronze/quarantine` (with a reason code). A file's batch id is a hash of its
content, so ingesting the same content again is a no-op, and the writes replace whole batches.

`ops/ingest_ledger` lists the landed files (path, size, modification time, batch): a file it
holds unchanged is skipped without being read, so a day costs the new files only. Its rows
are written last, after bronze and quarantine, so a batch counts as ingested only when all of
its rows are committed: a run killed before that is repaired by running it again.

Unusable inputs (missing, empty, binary, a header no profile matches, undecodable header,
unreadable Parquet or Excel) stop the stage before anything is written: InputError, exit 2.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import hashlib
import io
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from urllib.parse import unquote

import pyspark.sql.functions as F
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession

from lakemine.core import privacy, sources, storage
from lakemine.core.config import Config, IngestConfig, StageParams
from lakemine.core.errors import InputError, StageError, UsageError
from lakemine.core.sources import SourceProfile
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, conservation_check, record_run, seal

log = logging.getLogger(__name__)

STAGE = "ingest"
SNIFF_BYTES = 65536
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
TABLE_PREFIX = "table:"


@dataclass(frozen=True)
class RawFile:
    """An input that passed inspection: its format (csv, parquet, delta, table), the profile
    that reads it, its columns in file order and {contract field: its column or "=expr"}."""

    path: str
    size: int
    fmt: str
    profile: SourceProfile
    columns: tuple[str, ...]
    mapping: tuple[tuple[str, str], ...]
    # the landed file it came from (a workbook for its sheets); None for Delta and metastore tables
    origin: storage.FileInfo | None = None


def _decompressed_head(info: storage.FileInfo) -> bytes:
    """The first bytes of a CSV file's text: gzip (.gz) and bzip2 (.bz2) files, which Spark reads
    decompressed, are decompressed here too, to their end: one cut short (a transfer that
    stopped) would otherwise fail Spark's read halfway, after the other files were read."""
    compressed = info.name.lower().endswith((".gz", ".bz2"))
    kind = info.name.rsplit(".", 1)[-1]
    try:
        head = storage.head_bytes(info.path, SNIFF_BYTES, decompress=compressed)
        if compressed:
            storage.read_to_end(info.path, decompress=True)
    except (OSError, EOFError, ValueError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:80]
        raise InputError(f"{info.path}: not a readable .{kind} file, corrupt or truncated ({why})") from None
    return head


def first_line(head: bytes, where: str) -> bytes:
    """The header line of a CSV file's first bytes, after the checks that make a file unusable."""
    if not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise InputError(f"{where}: empty file (no header, no rows)")
    if head.startswith(_UTF16_BOMS):
        raise InputError(f"{where}: UTF-16 text; convert it to UTF-8")
    if b"\x00" in head:
        raise InputError(f"{where}: binary data, not a CSV text file")
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    return head.split(b"\n", 1)[0].rstrip(b"\r")


def _cell(value) -> str:
    """A worksheet cell as the text a CSV export would hold."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def xlsx_to_csv(info: storage.FileInfo, out_dir: str, max_mb: int) -> list[storage.FileInfo]:
    """Each sheet of an Excel workbook as a UTF-8 CSV file under `out_dir`/<content hash>/,
    read on the driver with openpyxl (cell values, not formulas); rows without any value are
    left out. InputError for a workbook above `max_mb` or one openpyxl cannot read."""
    if info.name.lower().endswith(".xls"):
        raise InputError(f"{info.path}: legacy Excel .xls; save it as .xlsx or export its sheets as CSV")
    if info.size > max_mb * 2**20:
        raise InputError(f"{info.path}: Excel workbook of {info.size / 2**20:.0f} MB, above ingest.xlsx_max_mb "
                         f"({max_mb} MB); export its sheets as CSV and ingest those")
    from openpyxl import load_workbook

    data = storage.read_bytes(info.path)
    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - zipfile, XML and openpyxl errors alike mean unreadable
        raise InputError(f"{info.path}: not a readable .xlsx workbook ({str(exc).splitlines()[0][:80]})") from None
    folder = f"{out_dir.rstrip('/')}/{hashlib.sha1(data).hexdigest()[:16]}"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", info.name.rsplit(".", 1)[0])
    out = []
    for sheet in book.worksheets:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        for row in sheet.iter_rows(values_only=True):
            if any(v is not None and v != "" for v in row):
                writer.writerow([_cell(v) for v in row])
        path = f"{folder}/{stem}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', sheet.title)}.csv"
        storage.write_text(path, text.getvalue())
        out.append(storage.FileInfo(path, len(text.getvalue().encode())))
        log.info("%s: sheet %s -> %s", info.path, sheet.title, path)
    book.close()
    return out


def _inspect_csv(info: storage.FileInfo, profiles: dict[str, SourceProfile], source: str | None) -> RawFile:
    header = first_line(_decompressed_head(info), info.path)
    profile, mapping = sources.choose(profiles, header, info.path, source)
    names = sources.header_names(profile, header, None, info.path)
    return RawFile(info.path, info.size, "csv", profile, tuple(names), tuple(mapping.items()), info)


def read_typed(spark: SparkSession, fmt: str, path: str) -> DataFrame:
    if fmt == "parquet":
        return spark.read.parquet(path)
    if fmt == "delta":
        return spark.read.format("delta").load(path)
    return spark.table(path)


# Spark's conditions for an input that is not there or not a table, and the texts of a file
# whose bytes are not Parquet: the user's input is unusable (exit 2)
INPUT_CONDITIONS = frozenset({"PATH_NOT_FOUND", "DELTA_TABLE_NOT_FOUND", "DELTA_MISSING_DELTA_TABLE",
                              "TABLE_OR_VIEW_NOT_FOUND", "UNABLE_TO_INFER_SCHEMA", "DELTA_INVALID_FORMAT"})
INPUT_TEXTS = ("FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER", "is not a Parquet file", "corrupted file")
# ... unless the cause is the storage itself: network, credentials, permissions, a file system
# missing from the classpath. Then it is no fault of the file: the stage fails (exit 1), to retry.
STORAGE_TEXTS = ("java.net.", "UnknownHost", "SocketTimeout", "ConnectTimeout", "Connection refused", "ClassNotFoundException",
                 "No FileSystem for scheme", "AccessDenied", "Access Denied", "AccessControlException", "Permission denied",
                 "Forbidden", "Status Code: 403", "credential", "Credential", "SdkClientException", "AmazonS3Exception", "AmazonServiceException",
                 "StorageException", "Timeout", "timed out", "Interrupted")


def _cause(exc: Exception) -> str:
    """The deepest cause Spark (or py4j) reports, one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    causes = [ln[len("Caused by: "):] for ln in lines if ln.startswith("Caused by: ")]
    return (causes[-1] if causes else lines[0] if lines else type(exc).__name__)[:200]


def read_error(fmt: str, path: str, exc: Exception) -> Exception:
    """What failing to read a typed input means: InputError when the input is unusable,
    StageError naming the cause when the storage failed (the file may be fine)."""
    condition = exc.getCondition() if hasattr(exc, "getCondition") else None
    text = "\n".join(ln for ln in str(exc).splitlines() if not ln.strip().startswith("at "))  # no stack frames
    if condition in INPUT_CONDITIONS or (any(t in text for t in INPUT_TEXTS) and not any(t in text for t in STORAGE_TEXTS)):
        what = {"parquet": "unreadable Parquet", "delta": "unreadable Delta table", "table": "no readable table"}[fmt]
        first = text.splitlines()[0] if condition else _cause(exc)
        return InputError(f"{path}: {what} ({first[:160]})")
    return StageError(f"{path}: reading it failed, and not for anything in the input as far as Spark tells "
                      f"(check the storage, access and network, then rerun): {_cause(exc)}")


def inspect_typed(spark: SparkSession, fmt: str, path: str, size: int,
                   profiles: dict[str, SourceProfile], source: str | None) -> RawFile:
    """A Parquet file, Delta table path or metastore table: columns come from its schema."""
    try:
        names = read_typed(spark, fmt, path).columns
    except Exception as exc:  # noqa: BLE001 - Spark wraps every footer and catalog problem differently
        raise read_error(fmt, path, exc) from None
    profile, mapping = sources.choose(profiles, None, path, source, names)
    return RawFile(path, size, fmt, profile, tuple(names), tuple(mapping.items()))


def inspect_inputs(spark: SparkSession, pattern: str, suffixes: tuple[str, ...],
                   profiles: dict[str, SourceProfile], source: str | None = None,
                   staging: str | None = None, xlsx_max_mb: int = 64,
                   known: frozenset = frozenset()) -> tuple[list[RawFile], list[storage.FileInfo]]:
    """Resolve `pattern` to inputs and check each one is usable; InputError on the first that
    is not. `pattern` is a file, folder or glob, a Delta table's folder, or `table:NAME` (a
    metastore table). Excel workbooks become CSV files under `staging` (None: refused).
    Files whose (path, size, modified_us) is in `known` are not read: they come back second."""
    if pattern.startswith(TABLE_PREFIX):
        return [inspect_typed(spark, "table", pattern[len(TABLE_PREFIX):], 0, profiles, source)], []
    if storage.exists(pattern.rstrip("/") + "/_delta_log"):
        return [inspect_typed(spark, "delta", pattern, 0, profiles, source)], []
    infos = storage.list_inputs(pattern, suffixes)
    if not infos:
        if storage.exists(pattern):
            raise InputError(f"{pattern}: no input files ({', '.join(suffixes)}) found there")
        raise InputError(f"{pattern}: no such file or directory")
    files, unchanged = [], []
    for info in infos:
        if (info.path, info.size, info.modified_us) in known:
            unchanged.append(info)
        elif info.size == 0:
            raise InputError(f"{info.path}: empty file (0 bytes)")
        elif info.name.lower().endswith(".parquet"):
            if storage.head_bytes(info.path, 4) != b"PAR1":
                raise InputError(f"{info.path}: not a Parquet file (no PAR1 magic)")
            typed = inspect_typed(spark, "parquet", info.path, info.size, profiles, source)
            files.append(dataclasses.replace(typed, origin=info))
        elif info.name.lower().endswith((".xlsx", ".xls")):
            if staging is None:
                raise InputError(f"{info.path}: Excel workbook; export its sheets as CSV")
            for sheet in xlsx_to_csv(info, staging, xlsx_max_mb):
                files.append(dataclasses.replace(_inspect_csv(sheet, profiles, source), origin=info))
        else:
            files.append(_inspect_csv(info, profiles, source))
    return files, unchanged


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


def _regex(text: str) -> str:
    """`text` as a literal inside a Java regular expression."""
    return "".join(c if c.isalnum() else "\\" + c for c in text)


# cp1252 differs from Latin-1 only in 0x80-0x9F: Latin-1 reads those bytes as C1 controls,
# cp1252 as these characters (five bytes are undefined there and stay, marking the line)
_C1 = "".join(chr(b) for b in range(0x80, 0xA0) if b not in sources.CP1252_UNDEFINED)
_CP1252 = bytes(ord(c) for c in _C1).decode("cp1252")
_UNDEFINED = "[" + "".join(f"\\x{{{b:02x}}}" for b in sources.CP1252_UNDEFINED) + "]"


_SAID = {"utf-8": "UTF-8", "latin-1": "Latin-1", "cp1252": "cp1252", "auto": "UTF-8 or cp1252"}


def decode_lines(value: Column, encoding: str) -> tuple[Column, Column]:
    """(the line as text, whether it cannot be decoded) for `value`, a line's bytes as Spark's
    text reader keeps them (undecoded)."""
    if encoding == "utf-8":
        return value, ~F.is_valid_utf8(value)
    latin1 = F.decode(value.cast("binary"), "ISO-8859-1")
    if encoding == "latin-1":
        return latin1, F.lit(False)
    cp1252 = F.translate(latin1, _C1, _CP1252)
    undefined = latin1.rlike(_UNDEFINED)
    if encoding == "cp1252":
        return cp1252, undefined
    valid = F.is_valid_utf8(value)
    return F.when(valid, value).otherwise(cp1252), ~valid & undefined


def evaluated_once(col: Column) -> Column:
    """`col`, computed in its own projection, once per row. Spark 4.0 pushes a filter on a
    projected column below the projection by copying the column's expression into it
    (SPARK-47672), so bronze's `reason IS NULL` would classify every line twice; a projection
    holding a nondeterministic expression is one it does not push through. A partition id is
    never negative: the value is `col`'s (Spark's optimizer folds `rand() >= 0`, so not that)."""
    return F.when(F.spark_partition_id() >= 0, col)


def parse_csv_lines(lines: DataFrame, columns: tuple[str, ...], mapping: dict[str, str],
                    profile: SourceProfile | None = None) -> DataFrame:
    """Classify and split CSV data lines (`value`, lineage columns) of one header: `columns` in
    file order, `mapping` from contract fields to the file's columns (or "=expression"),
    `profile` the reading options (None: UTF-8, comma, double quote, a header line).

    Returns the bronze source columns (strings, empty fields null), `_raw` (the line, for a
    quarantined one only), and `reason`/`detail`: null for a good line, else one of
    blank_line, bad_encoding, repeated_header, bad_quoting, bad_field_count.

    Lines without a quote character (nearly all) are split on the delimiter; only quoted lines
    go through the CSV parser. Each step is its own projection so that no regular expression
    or parse runs more than once per line.
    """
    enc, delim, quote, has_header = "utf-8", ",", '"', True
    if profile is not None:
        enc, delim, quote, has_header = profile.encoding, profile.delimiter, profile.quote, profile.header
    text, undecodable = decode_lines(F.col("_bytes"), enc)
    lines = lines.withColumnRenamed("value", "_bytes").select("*", text.alias("value"), undecodable.alias("_undecodable"))
    value = F.col("value")
    quoted = value.contains(quote)
    # A quoted field is one or more quoted runs (a doubled quote inside a field splits it into
    # two runs), so removing every run leaves the delimiters that separate fields.
    q = _regex(quote)
    sep = _regex(delim)
    step = lines.select(
        "*",
        quoted.alias("_quoted"),
        F.when(quoted, F.regexp_replace(value, f"{q}[^{q}]*{q}", "")).alias("_unquoted"),
    ).select(
        "*",
        F.size(F.split(F.coalesce(F.col("_unquoted"), value), sep, -1)).alias("_n"),
        F.coalesce(F.col("_unquoted").contains(quote), F.lit(False)).alias("_unbalanced"),
    )
    n = F.col("_n")
    reason = F.when(F.trim(value) == "", F.lit("blank_line")).when(F.col("_undecodable"), F.lit("bad_encoding"))
    if has_header:
        # the header again, its quotes aside; only a line holding a quote is translated (a
        # translate of every line was a fifth of ingest's time)
        header = delim.join(columns)
        again = F.when(F.col("_quoted"), F.translate(value, quote, "") == header).otherwise(value == header)
        reason = reason.when(again, F.lit("repeated_header"))
    reason = reason.when(F.col("_unbalanced"), F.lit("bad_quoting")).when(n != len(columns), F.lit("bad_field_count"))
    step = step.withColumn("reason", evaluated_once(reason))
    r = F.col("reason")
    detail = (
        F.when(r == "bad_field_count", F.format_string(f"%d fields, expected {len(columns)}", n))
        .when(r == "bad_encoding", F.concat(F.lit(f"line is not {_SAID[enc]} text; its bytes in hex: "),
                                            F.hex(F.col("_bytes").cast("binary"))))
        .when(r == "bad_quoting", F.lit("unbalanced quote"))
        .when(r == "blank_line", F.lit("empty line"))
        .when(r == "repeated_header", F.lit("header line inside the data"))
    )
    width = range(len(columns))
    ddl = ", ".join(f"_c{i} STRING" for i in width)
    options = {"mode": "PERMISSIVE", "nullValue": "", "escape": quote, "quote": quote, "sep": delim}
    parsed = F.from_csv(value, ddl, options)
    fields = F.when(r.isNull() & F.col("_quoted"), F.array(*[parsed.getField(f"_c{i}") for i in width])).when(
        r.isNull(), F.split(value, sep, -1)
    )
    step = step.select("*", detail.alias("detail"), fields.alias("_fields"))
    names = unique_names(columns)
    step = step.select(
        *[F.col("_fields").getItem(i).alias(names[i]) for i in width],
        # the line as text for quarantine only: good rows drop it, so they need not carry a copy
        F.when(r.isNotNull(), F.make_valid_utf8(value)).alias("_raw"), "reason", "detail", "_source_file", "_line",
    )
    return to_bronze_columns(step, dict(zip(columns, names)), mapping, profile)


def unique_names(columns: tuple[str, ...]) -> list[str]:
    """A file's column names made unique (a repeated or empty name gets a numeric suffix)."""
    seen: dict[str, int] = {}
    out = []
    for c in columns:
        name = c.strip() or "_blank"
        seen[name.lower()] = seen.get(name.lower(), 0) + 1
        out.append(name if seen[name.lower()] == 1 else f"{name}_{seen[name.lower()]}")
    return out


def to_bronze_columns(rows: DataFrame, names: dict[str, str], mapping: dict[str, str],
                      profile: SourceProfile | None) -> DataFrame:
    """Rows holding a file's columns (strings, under `names[file column]`) -> the bronze source
    columns: each contract field from its column or expression (empty strings null), `_source`."""
    out = []
    for field, bronze in sources.FIELDS.items():
        src = mapping.get(field)
        if src is None:
            out.append(F.lit(None).cast("string").alias(bronze))
            continue
        col = F.expr(src[1:]).cast("string") if src.startswith("=") else F.col(f"`{names[src]}`")
        out.append(F.when(F.trim(col) != "", col).alias(bronze))
    source = profile.name if profile is not None else schemas.LEGACY_SOURCE
    return rows.select(*out, F.lit(source).alias("_source"), "_raw", "reason", "detail", "_source_file", "_line")


def read_group(spark: SparkSession, files: list[RawFile]) -> tuple[DataFrame, dict[str, tuple[str, int]]]:
    """Parsed data rows of inputs sharing one format, profile and header, and {file: (batch id,
    data rows)}; a CSV or Parquet file, or a data file of a Delta or metastore table, is a batch."""
    first = files[0]
    mapping = dict(first.mapping)
    try:
        if first.fmt == "csv":
            lines, batches = _numbered(spark.read.text([f.path for f in files]), [F.col("value")])
            if first.profile.header:
                lines = lines.where(F.col("_line") > 1)
                batches = {path: (batch, n - 1) for path, (batch, n) in batches.items()}
            return parse_csv_lines(lines, first.columns, mapping, first.profile), batches
        if first.fmt == "parquet":
            raw = spark.read.parquet(*[f.path for f in files])
        else:
            raw = read_typed(spark, first.fmt, first.path)
        names = unique_names(first.columns)
        as_text = raw.select(*[F.col(f"`{c}`").cast("string").alias(n) for c, n in zip(first.columns, names)], "_metadata")
        rows, batches = _numbered(as_text, [F.col(f"`{n}`") for n in names])
        rows = rows.select("*", *[F.lit(None).cast("string").alias(c) for c in ("_raw", "reason", "detail")])
        return to_bronze_columns(rows, dict(zip(first.columns, names)), mapping, first.profile), batches
    except AnalysisException as exc:
        raise InputError(f"profile {first.profile.name} on {first.path}: {str(exc).splitlines()[0][:160]}") from None


def _location(path: str) -> str:
    """A file's location as Spark's `_metadata.file_path` and `list_inputs` both reduce to."""
    return re.sub(r"^file:/+", "/", unquote(path))


def open_ledger(lake: Lake) -> DataFrame:
    """`ops/ingest_ledger`, created first if missing: empty on a new lake, and for a lake ingested
    before the ledger existed, one row per batch its bronze and quarantine hold (file size and
    time unknown, so those files are read once more and then found by content)."""
    if not lake.exists(schemas.OPS_INGEST_LEDGER):
        parts = [lake.read_table(t).select(F.col("_source_file").alias("path"), F.col("_batch_id").alias("batch_id"))
                 for t in (schemas.BRONZE_TRANSACTIONS, schemas.BRONZE_QUARANTINE) if lake.exists(t)]
        rows = []
        if parts:
            found = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
            rows = [(r["path"], None, None, r["batch_id"], "ingested", None, None, "before-ledger", None)
                    for r in found.distinct().collect()]
        lake.overwrite(lake.spark.createDataFrame(rows, schemas.LEDGER_SCHEMA), schemas.OPS_INGEST_LEDGER)
    return lake.read_table(schemas.OPS_INGEST_LEDGER)


@dataclass(frozen=True)
class IngestParams(IngestConfig, StageParams):
    """The ingest section of the config (suffixes) and the input: a file, folder or glob."""

    SECTION = "ingest"
    input: str = ""
    as_of: date | None = None
    source: str | None = None   # a profile name; None: detected from each file's header


@dataclass
class IngestResult:
    """What `run` leaves in `Run.result`: files read, batches written, files skipped and why."""

    files: int
    new_batches: list[str]
    skipped: dict[str, str]


def split_rows(rows: DataFrame, ingested_at: datetime) -> tuple[DataFrame, DataFrame]:
    """Parsed rows with `_batch_id` -> (bronze rows, quarantine rows): the pure transform."""
    good = rows.where(F.col("reason").isNull()).select(
        *schemas.SOURCE_COLUMNS, "_source_file", "_line", "_batch_id",
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
    )
    bad = rows.where(F.col("reason").isNotNull()).select(
        *schemas.SOURCE_COLUMNS, "_raw", "reason", "detail", F.lit(STAGE).alias("stage"),
        "_source_file", "_line", "_batch_id",
    )
    return good, bad


def erased_ids(lake: Lake, cfg: Config) -> tuple[bytes, list[str]] | None:
    """(key, keyed hashes) of the customers `lakemine forget` erased; None when none was."""
    if not lake.exists(schemas.OPS_ERASURES):
        return None
    rows = lake.read_table(schemas.OPS_ERASURES).select("id_hash", "key_check").collect()
    if not rows:
        return None
    try:
        key = privacy.load_key(cfg.privacy.key_env, cfg.privacy.key_file, lake.root)
    except UsageError as exc:
        raise UsageError(f"this lake has erased customers, and ingest needs the erasure key to keep their lines out: {exc}") from None
    privacy.require_same_key(key, {r["key_check"] for r in rows})
    return key, sorted(r["id_hash"] for r in rows)


def quarantine_erased(rows: DataFrame, key: bytes, hashes: list[str]) -> DataFrame:
    """Parsed rows with the lines of erased customers turned into quarantine rows with reason
    `erased`: the CustomerID replaced by its keyed hash, the raw text dropped, and for a line
    matched only through its raw text (it did not parse into fields) every field dropped."""
    marked = rows.withColumn("_erased", privacy.erased_match(key, hashes, F.col("CustomerID"), F.col("_raw")))
    erased = F.col("_erased").isNotNull()
    keep = F.coalesce(F.col("_erased.by_field"), F.lit(False))
    replaced = {c: F.when(~erased, F.col(c)).when(keep, F.col(c)) for c in schemas.SOURCE_COLUMNS if c != "_source"}
    replaced["CustomerID"] = F.when(erased, F.col("_erased.hash")).otherwise(F.col("CustomerID"))
    replaced["_raw"] = F.when(~erased, F.col("_raw"))
    replaced["reason"] = F.when(erased, F.lit("erased")).otherwise(F.col("reason"))
    replaced["detail"] = F.when(erased, F.lit("customer erased by lakemine forget: CustomerID is its keyed hash, "
                                              "the raw line is not kept")).otherwise(F.col("detail"))
    return marked.withColumns(replaced).drop("_erased")


# Spark's input splits while ingest reads exports: at most 32 MiB (Spark's default is 128), so
# that a few large files become tasks enough to balance over the cores (3 exports of 127 MiB
# were 3 tasks on 2 cores: a third of each pass ran on one core)
INPUT_SPLIT = 32 * 2**20


@contextlib.contextmanager
def split_size(spark: SparkSession, most: int):
    """`spark.sql.files.maxPartitionBytes` at most `most` bytes inside the block, then as it was."""
    key = "spark.sql.files.maxPartitionBytes"
    before = spark.conf.get(key)
    current = spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes()
    spark.conf.set(key, str(min(current, most)))
    try:
        yield
    finally:
        spark.conf.set(key, before)


def run(lake: Lake, cfg: Config, p: IngestParams) -> Run:
    """Ingest `p.input` (file, folder or glob) into bronze; records the run in ops/runs.
    `Run.result` is an IngestResult."""
    spark = lake.spark
    input_path, as_of = p.input, p.as_of
    known: dict[tuple, str] = {}
    if lake.exists(schemas.OPS_INGEST_LEDGER):
        known = {(r["path"], r["size"], r["modified_us"]): r["batch_id"]
                 for r in lake.read_table(schemas.OPS_INGEST_LEDGER).where(F.col("size").isNotNull()).collect()}
    files, unchanged = inspect_inputs(spark, input_path, p.suffixes, cfg.sources, p.source,
                                      staging=f"{lake.root}/_staging/xlsx", xlsx_max_mb=p.xlsx_max_mb,
                                      known=frozenset(known))
    params = {"input": input_path, "files": [f.path for f in files],
              "profiles": {f.path: f.profile.name for f in files}, "unchanged": [f.path for f in unchanged]}
    erasures = erased_ids(lake, cfg) if files else None
    with record_run(lake, STAGE, as_of, params) as run, split_size(spark, INPUT_SPLIT):
        # created here, once the inputs are known to be usable: an unusable input writes nothing
        ledger = open_ledger(lake).cache()
        groups: dict[tuple, list[RawFile]] = {}
        for f in files:
            groups.setdefault((f.fmt, f.profile.name, f.columns, f.mapping), []).append(f)
        batches: dict[str, tuple[str, int]] = {}
        parsed_parts = []
        for group in groups.values():
            parsed, group_batches = read_group(spark, group)
            batches.update(group_batches)
            parsed_parts.append(parsed)

        # a file the ledger knows unchanged is not read; the same content twice in one run, or
        # already in the ledger under another name: skipped
        skipped: dict[str, str] = {
            f.path: f"unchanged since ingested as batch {known[(f.path, f.size, f.modified_us)]} (not read)"
            for f in unchanged}
        # Spark names files its own way (file:/..., URL-encoded): say them as the user gave them
        by_location = {_location(f.path): f for f in files}
        shown = {path: by_location[_location(path)].path if _location(path) in by_location else path for path in batches}
        chosen: dict[str, str] = {}
        for path, (batch, _) in sorted(batches.items()):
            if batch in chosen:
                skipped[shown[path]] = f"same content as {shown[chosen[batch]]}"
            else:
                chosen[batch] = path
        committed = {r["batch_id"] for r in ledger.where(F.col("batch_id").isin(list(chosen))).select("batch_id").collect()}
        for batch in sorted(committed):
            skipped[shown[chosen.pop(batch)]] = f"already ingested as batch {batch}"
        new = {path: batch for batch, path in chosen.items()}
        superseded = _superseded(ledger, by_location, batches, new)
        ledger.unpersist()
        params.update({"batches": {shown[p]: batches[p][0] for p in sorted(batches)}, "skipped": skipped,
                       "superseded": sorted(r["batch_id"] for r in superseded)})

        run.rows_in = sum(batches[p][1] for p in new)
        if not new:
            run.status = "noop"
            run.message = f"{len(skipped)} file(s) already ingested; nothing written"
            _record_files(lake, run, by_location, batches, new)
            run.result = IngestResult(len(files), [], skipped)
            return run

        batch_map = spark.createDataFrame(sorted(new.items()), "_source_file string, _batch_id string")
        rows = parsed_parts[0]
        for part in parsed_parts[1:]:
            rows = rows.unionByName(part)
        rows = rows.join(F.broadcast(batch_map), "_source_file")
        if erasures is not None:
            rows = quarantine_erased(rows, *erasures)
        # Not cached: each write reads and parses the files again, which costs less than a cache
        # of every line (at 50 M lines, reading the cache back took longer than parsing twice).
        # The quarantine's pass splits only the lines it keeps. A file changed between the passes
        # fails the conservation check against the line counts of the numbering pass.
        good, bad = split_rows(rows, datetime.now(timezone.utc).replace(tzinfo=None))
        batch_ids = sorted(new.values())
        # a corrected file's earlier batches leave bronze in the same commits that add its new one
        replaced = batch_ids + sorted({r["batch_id"] for r in superseded} - set(batch_ids))
        run.outputs[schemas.BRONZE_TRANSACTIONS] = lake.replace_batches(good, schemas.BRONZE_TRANSACTIONS, replaced)
        run.rows_out = lake.rows_written(schemas.BRONZE_TRANSACTIONS, run.outputs[schemas.BRONZE_TRANSACTIONS])
        if run.rows_out == run.rows_in:
            # every line of these batches is in bronze, so none is bad: the quarantine's commit
            # (which still drops the rows of the batches replaced) need not read the files again
            bad = bad.limit(0)
        run.outputs[schemas.BRONZE_QUARANTINE] = lake.replace_batches(bad, schemas.BRONZE_QUARANTINE, replaced)
        run.rows_quarantined = lake.rows_written(schemas.BRONZE_QUARANTINE, run.outputs[schemas.BRONZE_QUARANTINE])
        # the quarantine just written holds exactly the bad rows of these batches (none when it made no commit)
        if run.rows_quarantined:
            written = lake.read_table(schemas.BRONZE_QUARANTINE, run.outputs[schemas.BRONZE_QUARANTINE])
            reasons = written.where(F.col("_batch_id").isin(batch_ids)).groupBy("reason").count().collect()
            run.quarantine_reasons = {r["reason"]: int(r["count"]) for r in reasons}
        conservation_check(run)
        if superseded:
            run.message = (f"{len(superseded)} earlier batch(es) of corrected file(s) superseded: "
                           + ", ".join(sorted({r['path'] for r in superseded})))
        _record_files(lake, run, by_location, batches, new, superseded)
        run.result = IngestResult(len(files), batch_ids, skipped)
        return run


def _superseded(ledger: DataFrame, by_location: dict[str, RawFile], batches: dict[str, tuple[str, int]],
                new: dict[str, str]) -> list:
    """Ledger rows of the batches that this run's new batches replace: a landed file that
    comes back with new content (a corrected export under the same name) supersedes the
    batches ingested from it before, unless the file still holds them (a workbook's unchanged
    sheet) or another landed file does."""
    mine: dict[str, set[str]] = {}
    for path, (batch, _) in batches.items():
        f = by_location.get(_location(path))
        if f is not None and f.origin is not None:
            mine.setdefault(f.origin.path, set()).add(batch)
    changed = sorted({by_location[_location(p)].origin.path for p in new
                      if by_location.get(_location(p)) is not None and by_location[_location(p)].origin is not None})
    if not changed:
        return []
    rows = ledger.where(F.col("path").isin(changed) & (F.col("status") == "ingested")).collect()
    candidates = {r["batch_id"] for r in rows if r["batch_id"] not in mine[r["path"]]}
    if not candidates:
        return []
    elsewhere = {r["batch_id"] for r in ledger.where(F.col("batch_id").isin(sorted(candidates))
                                                     & ~F.col("path").isin(changed)).collect()}
    return [r for r in rows if r["batch_id"] in candidates - elsewhere]


def _record_files(lake: Lake, run: Run, by_location: dict[str, RawFile], batches: dict[str, tuple[str, int]],
                  new: dict[str, str], superseded: list = ()) -> None:
    """Add this run's files to the ledger: the commit mark of their batches, so written after
    bronze and quarantine, and the run's last commit (sealed: a run killed after it is recorded
    by the next as it would have recorded itself). A landed file is recorded with its size and time (then skipped unread
    while they stay the same); a data file of a Delta or metastore table by its path alone."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = []
    for path, (batch, n) in sorted(batches.items()):
        f = by_location.get(_location(path))
        origin = f.origin if f is not None else None
        rows.append((
            origin.path if origin else path, origin.size if origin else None, origin.modified_us if origin else None,
            batch, "ingested" if path in new else "duplicate", n, f.profile.name if f else None, run.run_id, now,
        ))
    rows += [(r["path"], r["size"], r["modified_us"], r["batch_id"], "superseded", r["rows"], r["source"], run.run_id, now)
             for r in superseded]
    if rows:
        df = lake.spark.createDataFrame(rows, schemas.LEDGER_SCHEMA)
        run.outputs[schemas.OPS_INGEST_LEDGER] = lake.merge_into(df, schemas.OPS_INGEST_LEDGER, list(schemas.LEDGER_KEY),
                                                                 tag=seal(run, schemas.OPS_INGEST_LEDGER))

