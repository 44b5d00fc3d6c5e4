"""`lakemine inspect`: how to ingest an export, worked out from a sample of it.

Reads the first lines of a CSV (or the first rows of a Parquet file, Delta table or
metastore table), says its encoding, delimiter, header and columns, the source profile that
matches it or a suggested one for an unknown schema (column names and values compared with
what each contract field is usually called and holds), which date formats parse its
timestamps, and what share of the sampled lines each quarantine reason would take. The shares
come from the real ingest and clean transforms run on the sample, so they are what a run would
do. Nothing is written to the lake.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyspark.sql.functions as F
import yaml
from pyspark.sql import DataFrame, SparkSession

from lakemine.core import sources, storage
from lakemine.core.config import Config, source_defaults
from lakemine.core.errors import InputError
from lakemine.core.sources import SourceProfile
from lakemine.stages import clean, ingest

SAMPLE_BYTES = 4 * 1024 * 1024
# what each contract field is usually called (lower case, letters and digits only), best first
SYNONYMS = {
    "invoice": ("invoiceno", "invoice", "invoiceid", "invoicenumber", "basketid", "basket", "orderid", "order",
                "ordernumber", "transactionid", "transaction", "receiptid", "receipt", "ticketid", "billno",
                "rechnung", "rechnungsnummer", "beleg", "belegnummer", "bon", "facture", "factura", "ticket"),
    "item": ("stockcode", "productid", "product", "sku", "itemid", "item", "articleid", "article", "productcode",
             "itemcode", "upc", "ean", "artikel", "artikelnummer", "produit", "producto", "articulo"),
    "description": ("description", "productname", "itemname", "productdescription", "name", "desc",
                    "beschreibung", "bezeichnung", "libelle", "descripcion"),
    "quantity": ("quantity", "qty", "units", "unitssold", "quantitysold", "menge", "anzahl", "quantite", "cantidad"),
    "timestamp": ("invoicedate", "timestamp", "datetime", "transactiontime", "transtimestamp", "orderdate",
                  "transactiondate", "purchasedate", "createdat", "date", "time", "datum", "zeit", "zeitpunkt", "fecha"),
    "unit_price": ("unitprice", "price", "itemprice", "priceperunit", "preis", "einzelpreis", "prix", "precio"),
    "line_total": ("salesvalue", "linetotal", "lineamount", "amount", "total", "sales", "revenue", "netsales", "value",
                   "betrag", "umsatz", "montant", "importe"),
    "customer": ("customerid", "customer", "householdkey", "householdid", "household", "clientid", "memberid",
                 "userid", "accountid", "loyaltyid", "cardid", "kunde", "kundennummer", "client", "cliente"),
    "country": ("country", "storeid", "store", "region", "shop", "storecode", "location", "land", "filiale",
                "pays", "pais"),
    "cancel_flag": ("isreturn", "returnflag", "cancelled", "canceled", "iscancelled", "return", "refund", "void"),
}
# tried besides the configured clean.date_formats
EXTRA_DATE_FORMATS = ("d/M/yyyy H:mm", "d/M/yyyy H:mm:ss", "dd.MM.yyyy HH:mm", "dd.MM.yyyy HH:mm:ss", "yyyy/MM/dd HH:mm:ss",
                      "yyyyMMdd HHmmss", "yyyy-MM-dd", "M/d/yyyy", "d/M/yyyy", "dd.MM.yyyy", "yyyyMMdd")
_DELIMITERS = (",", ";", "\t", "|")


@dataclass
class Inspection:
    """What `inspect` found; `yaml` is the config file that `--write` saves."""

    path: str
    inputs: int
    fmt: str
    columns: list[str]
    encoding: str | None = None
    delimiter: str | None = None
    header: bool = True
    matched: str | None = None
    profile: dict = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    date_formats: list[tuple[str, float]] = field(default_factory=list)
    sampled: int = 0
    outcome: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    yaml: str = ""


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def detect_encoding(data: bytes) -> str:
    """utf-8 when the bytes are valid UTF-8, else cp1252, else latin-1 (which decodes anything)."""
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    if any(b in data for b in (bytes([u]) for u in sources.CP1252_UNDEFINED)):
        return "latin-1"
    return "cp1252"


def detect_delimiter(lines: list[str]) -> str:
    """The candidate that splits the most lines into the same number (> 1) of fields."""
    best, score = ",", -1
    for d in _DELIMITERS:
        counts = Counter(len(next(csv.reader([line], delimiter=d), [])) for line in lines[:200] if line.strip())
        width, n = counts.most_common(1)[0] if counts else (1, 0)
        if width > 1 and n > score:
            best, score = d, n
    return best


def _numeric(value: str) -> bool:
    return bool(re.fullmatch(r"[+-]?[\d.,\s]+", value.strip())) and any(c.isdigit() for c in value)


def suggest_columns(columns: list[str], rows: list[list[str]]) -> dict[str, str]:
    """{contract field: column} from the column names, then from values for what names leave."""
    by_norm = {_norm(c): c for c in columns}
    used: set[str] = set()
    out: dict[str, str] = {}
    for field_name, names in SYNONYMS.items():
        for n in names:
            col = by_norm.get(n)
            if col is not None and col not in used:
                out[field_name] = col
                used.add(col)
                break
    if "unit_price" in out and "line_total" in out:
        del out["line_total"]  # a unit price is the contract's own field; the total is then redundant
    values = {c: [r[i] for r in rows if i < len(r) and r[i].strip()] for i, c in enumerate(columns)}
    if "timestamp" not in out:
        for c in columns:
            vals = values[c][:200]
            if c not in used and vals and sum(bool(re.search(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}", v)) for v in vals) > 0.9 * len(vals):
                out["timestamp"] = c
                used.add(c)
                break
    return out


def _cancellation(mapping: dict[str, str], columns: list[str], rows: list[list[str]]) -> str:
    if "cancel_flag" in mapping:
        return "flag"
    idx = {c: i for i, c in enumerate(columns)}
    invoices = [r[idx[mapping["invoice"]]] for r in rows if "invoice" in mapping and idx[mapping["invoice"]] < len(r)]
    if invoices and any(v.upper().startswith("C") and v[1:].isdigit() for v in invoices):
        return "invoice_prefix"
    return "negative_quantity"


def _decimal(mapping: dict[str, str], columns: list[str], rows: list[list[str]]) -> str:
    idx = {c: i for i, c in enumerate(columns)}
    name = mapping.get("unit_price") or mapping.get("line_total")
    if name is None:
        return "."
    vals = [r[idx[name]] for r in rows if idx[name] < len(r) and r[idx[name]].strip()]
    comma = sum(bool(re.fullmatch(r"[+-]?[\d.\s]*\d,\d+", v.strip())) for v in vals)
    return "," if vals and comma > len(vals) / 2 else "."


def date_format_shares(spark: SparkSession, values: list[str], formats: list[str]) -> list[tuple[str, float]]:
    """(format, share of `values` it parses), as clean parses them (years 1990-2100)."""
    if not values:
        return []
    df = spark.createDataFrame([(v,) for v in values], "v string")
    shares = df.select(*[F.avg(clean.parse_timestamp(F.trim("v"), (fmt,)).isNotNull().cast("double")).alias(f"f{i}")
                         for i, fmt in enumerate(formats)]).first()
    return [(fmt, float(shares[f"f{i}"] or 0.0)) for i, fmt in enumerate(formats)]


def _profile_yaml(name: str, entry: dict, path: str) -> str:
    head = (f"# Source profile suggested by `lakemine inspect` for {path}.\n"
            f"# Check the column mapping, then: lakemine ingest --input {path} --config THIS_FILE --source {name}\n")
    return head + yaml.safe_dump({"sources": {name: entry}}, sort_keys=False, allow_unicode=True, width=120)


def _outcome(cfg: Config, parsed: DataFrame, profile: SourceProfile) -> dict[str, int]:
    """{reason or "silver" or "duplicate": lines} for parsed sample lines through ingest and clean."""
    parsed = parsed.withColumn("_batch_id", F.lit("inspect")).cache()
    try:
        out = {r["reason"]: int(r["count"]) for r in parsed.where(F.col("reason").isNotNull()).groupBy("reason").count().collect()}
        good = parsed.where(F.col("reason").isNull())
        p = clean.CleanParams.from_config(cfg)
        classified = clean.clean_transactions(good, p, {profile.name: profile})
        for r in classified.groupBy(F.coalesce("reason", F.lit("silver")).alias("r")).agg(
                F.count(F.lit(1)).alias("n"), F.sum(F.col("copies") - 1).alias("dups")).collect():
            out[r["r"]] = out.get(r["r"], 0) + int(r["n"])
            if r["dups"]:
                out["duplicate"] = out.get("duplicate", 0) + int(r["dups"])
        return out
    finally:
        parsed.unpersist()


def inspect(spark: SparkSession, cfg: Config, path: str, source: str | None = None, sample: int = 5000) -> Inspection:
    """Inspect the export at `path` (its first file when a folder or glob); InputError when it
    is unusable whatever the profile."""
    if path.startswith(ingest.TABLE_PREFIX) or storage.exists(path.rstrip("/") + "/_delta_log"):
        fmt = "table" if path.startswith(ingest.TABLE_PREFIX) else "delta"
        target = path[len(ingest.TABLE_PREFIX):] if fmt == "table" else path
        return _typed_source(spark, cfg, path, fmt, target, 1, source, sample)
    infos = storage.list_inputs(path, cfg.ingest.suffixes)
    if not infos:
        raise InputError(f"{path}: no input files ({', '.join(cfg.ingest.suffixes)}) found there")
    info = infos[0]
    if info.name.lower().endswith(".parquet"):
        return _typed_source(spark, cfg, info.path, "parquet", info.path, len(infos), source, sample)
    if info.name.lower().endswith((".xlsx", ".xls")):
        scratch = tempfile.mkdtemp(prefix="lakemine-inspect-")
        try:
            sheets = ingest.xlsx_to_csv(info, scratch, cfg.ingest.xlsx_max_mb)
            found = inspect(spark, cfg, sheets[0].path, source, sample)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        found.notes.insert(0, f"Excel workbook: its first sheet of {len(sheets)} inspected, as ingest reads it (a CSV per sheet)")
        found.yaml = found.yaml.replace(found.path, info.path)
        found.path, found.fmt = info.path, "xlsx"
        return found
    compressed = info.name.lower().endswith((".gz", ".bz2"))
    head = storage.head_bytes(info.path, SAMPLE_BYTES, decompress=compressed)
    header = ingest.first_line(head, info.path)
    body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    raw_lines = body.split(b"\n")
    if len(head) >= SAMPLE_BYTES:
        raw_lines = raw_lines[:-1]  # the last line may be cut
    raw_lines = [line.rstrip(b"\r") for line in raw_lines]
    while raw_lines and not raw_lines[-1]:
        raw_lines.pop()
    encoding = detect_encoding(b"\n".join(raw_lines))
    found = Inspection(info.path, len(infos), "csv", [], encoding=encoding)
    try:
        profile, _ = sources.choose(cfg.sources, header, info.path, source)
        found.matched = profile.name
        found.delimiter, found.header = profile.delimiter, profile.header
        found.columns = sources.header_names(profile, header, None, info.path)
        entry = None
    except InputError as exc:
        if source is not None:
            raise
        found.notes.append(_unmatched(exc))
        text = [line.decode(encoding, errors="replace") for line in raw_lines]
        found.delimiter = detect_delimiter(text)
        rows = list(csv.reader(io.StringIO("\n".join(text)), delimiter=found.delimiter))
        first = [c.strip() for c in rows[0]]
        found.header = not any(_numeric(c) for c in first) and any(_numeric(c) for c in (rows[1] if len(rows) > 1 else []))
        found.columns = first if found.header else [f"col{i + 1}" for i in range(len(first))]
        data = rows[1:] if found.header else rows
        entry = _suggest(spark, cfg, found, data[:sample])
        profile = _try_build(found, entry)
    lines = raw_lines[: sample + (1 if found.header else 0)]
    if profile is not None:
        found.sampled = len(lines) - (1 if found.header else 0)
        found.outcome = _sample_outcome(spark, cfg, lines, profile, info.path)
        if entry is None:
            found.date_formats = _formats_of(spark, cfg, profile, lines)
            found.profile = {"name": profile.name}
            found.yaml = _profile_yaml(profile.name, _entry_of(profile), info.path)
    return found


def _suggest(spark: SparkSession, cfg: Config, found: Inspection, data: list[list[str]]) -> dict:
    """A profile entry for an unknown CSV export: columns, cancellation, decimal, date formats."""
    mapping = suggest_columns(found.columns, data)
    found.unmapped = [f for f in sources.REQUIRED if f not in mapping]
    if "unit_price" not in mapping and "line_total" not in mapping:
        found.unmapped.append("unit_price or line_total")
    entry: dict = {"columns": dict(mapping) if mapping else {}}
    for missing in found.unmapped:
        entry["columns"][missing.split(" or ")[0]] = "FILL_IN"
    entry["cancellation"] = _cancellation(mapping, found.columns, data)
    if found.encoding not in ("utf-8", None):
        entry["encoding"] = found.encoding
    if found.delimiter not in (",", None):
        entry["delimiter"] = found.delimiter
    decimal = _decimal(mapping, found.columns, data)
    if decimal != ".":
        entry["decimal"] = decimal
    if not found.header:
        entry["header"] = False
        entry["column_names"] = list(found.columns)
    if "timestamp" in mapping:
        idx = found.columns.index(mapping["timestamp"])
        values = [r[idx] for r in data if idx < len(r)][:2000]
        found.date_formats = date_format_shares(spark, values, list(cfg.clean.date_formats) + list(EXTRA_DATE_FORMATS))
        configured = [s for f, s in found.date_formats if f in cfg.clean.date_formats]
        if not configured or max(configured) < 0.99:
            best = max(found.date_formats, key=lambda fs: fs[1])
            if best[1] > 0:
                entry["date_formats"] = [best[0]]
    name = re.sub(r"[^a-z0-9]+", "_", Path(found.path).name.split(".")[0].lower()).strip("_") or "my_export"
    found.profile = {"name": name, **entry}
    found.yaml = _profile_yaml(name, entry, found.path)
    return entry


def _unmatched(exc: InputError) -> str:
    """The detection error without its file name and its advice to run inspect."""
    text = str(exc).split(": ", 1)[1]
    return text.split("; add one under", 1)[0]


def _try_build(found: Inspection, entry: dict) -> SourceProfile | None:
    if found.unmapped:
        found.notes.append(f"no column found for {', '.join(found.unmapped)}: fill in FILL_IN in the suggested profile")
        return None
    return sources.build_profile(found.profile["name"], {**source_defaults(), **entry})


def _entry_of(profile: SourceProfile) -> dict:
    entry: dict = {"columns": profile.mapping}
    for key in ("cancellation", "encoding", "delimiter", "decimal", "timezone", "date_formats"):
        value = getattr(profile, key)
        if value is not None:
            entry[key] = list(value) if isinstance(value, tuple) else value
    return entry


def _decoded(profile: SourceProfile, line: bytes) -> str:
    try:
        return profile.decode(line)
    except UnicodeDecodeError:
        return line.decode("latin-1")


def _formats_of(spark: SparkSession, cfg: Config, profile: SourceProfile, lines: list[bytes]) -> list[tuple[str, float]]:
    text = [_decoded(profile, line) for line in lines]
    rows = list(csv.reader(io.StringIO("\n".join(text)), delimiter=profile.delimiter, quotechar=profile.quote))
    columns = sources.header_names(profile, lines[0] if profile.header else None, list(profile.column_names or ()), "")
    own = {c.strip().lower(): i for i, c in enumerate(columns)}
    src = profile.mapping["timestamp"]
    if src.startswith("=") or src.lower() not in own:
        return []
    idx = own[src.lower()]
    values = [r[idx] for r in rows[1 if profile.header else 0:] if idx < len(r)][:2000]
    formats = list(profile.date_formats or cfg.clean.date_formats) + list(EXTRA_DATE_FORMATS)
    return date_format_shares(spark, values, list(dict.fromkeys(formats)))


def _sample_outcome(spark: SparkSession, cfg: Config, lines: list[bytes], profile: SourceProfile, where: str) -> dict[str, int]:
    """Write the sampled lines to a scratch file and run them through ingest's parser and clean."""
    scratch = Path(tempfile.mkdtemp(prefix="lakemine-inspect-"))
    try:
        sample = scratch / "sample.csv"
        sample.write_bytes(b"\n".join(lines) + b"\n")
        header = lines[0] if lines else b""
        _, mapping = sources.choose({profile.name: profile}, header, where, profile.name)
        names = sources.header_names(profile, header, None, where)
        raw = ingest.RawFile(str(sample), sample.stat().st_size, "csv", profile, tuple(names), tuple(mapping.items()))
        parsed, _ = ingest.read_group(spark, [raw])
        return _outcome(cfg, parsed, profile)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _typed_source(spark: SparkSession, cfg: Config, path: str, fmt: str, target: str, inputs: int,
                  source: str | None, sample: int) -> Inspection:
    raw = ingest.inspect_typed(spark, fmt, target, 0, cfg.sources, source) if source else None
    df = ingest.read_typed(spark, fmt, target)
    found = Inspection(path, inputs, fmt, list(df.columns))
    names = ingest.unique_names(tuple(df.columns))
    # read as ingest reads it (Spark's cast to string), once: the outcome is then of these rows
    rows = [list(r) for r in df.limit(sample).select(
        *[F.col(f"`{c}`").cast("string").alias(n) for c, n in zip(df.columns, names)]).collect()]
    try:
        raw = raw or ingest.inspect_typed(spark, fmt, target, 0, cfg.sources, None)
        profile, entry = raw.profile, None
        found.matched = profile.name
    except InputError as exc:
        found.notes.append(_unmatched(exc))
        data = [[v or "" for v in r] for r in rows]
        entry = _suggest(spark, cfg, found, data)
        profile = _try_build(found, entry)
        if profile is None:
            return found
        _, mapping = sources.choose({profile.name: profile}, None, path, profile.name, found.columns)
        raw = ingest.RawFile(target, 0, fmt, profile, tuple(found.columns), tuple(mapping.items()))
    text = spark.createDataFrame(rows, ", ".join(f"`{n}` string" for n in names))
    text = text.select("*", *[F.lit(None).cast("string").alias(c) for c in ("_raw", "reason", "detail", "_source_file")],
                       F.lit(0).cast("long").alias("_line"))
    parsed = ingest.to_bronze_columns(text, dict(zip(raw.columns, names)), dict(raw.mapping), profile)
    found.sampled = len(rows)
    found.outcome = _outcome(cfg, parsed, profile)
    if entry is None:
        found.profile = {"name": profile.name}
        found.yaml = _profile_yaml(profile.name, _entry_of(profile), path)
    return found


def format_report(found: Inspection) -> str:
    """The inspection as text for a person."""
    out = [f"input      {found.path}" + (f" (first of {found.inputs} files)" if found.inputs > 1 else "")]
    out.append(f"format     {found.fmt}")
    if found.fmt == "csv":
        shown = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(found.delimiter or ",", found.delimiter)
        out.append(f"encoding   {found.encoding}")
        out.append(f"delimiter  {shown}")
        out.append(f"header     {'yes' if found.header else 'no'}")
    out.append(f"columns    {', '.join(found.columns)}")
    if found.matched:
        out.append(f"profile    {found.matched} (matches; ingest needs no --source)")
    elif found.profile:
        out.append(f"profile    none matches; suggested '{found.profile['name']}' below (pass --source {found.profile['name']})")
    for note in found.notes:
        out.append(f"note       {note}")
    if found.date_formats:
        out.append("dates      share of sampled timestamps each format parses:")
        for fmt, share in sorted(found.date_formats, key=lambda fs: -fs[1]):
            if share > 0:
                out.append(f"             {share:7.1%}  {fmt}")
        if not any(share > 0 for _, share in found.date_formats):
            out.append("             none parse: set date_formats in the profile")
    if found.outcome:
        total = found.sampled or 1
        out.append(f"outcome    of {found.sampled:,} sampled lines (ingest then clean):")
        for reason, n in sorted(found.outcome.items(), key=lambda kv: (-kv[1], kv[0])):
            label = {"silver": "to silver", "duplicate": "exact duplicates (removed, counted)"}.get(reason, f"quarantine {reason}")
            out.append(f"             {n / total:7.1%}  {label} ({n:,})")
    if found.yaml and not found.matched:
        out += ["", found.yaml.rstrip()]
    return "\n".join(out)
