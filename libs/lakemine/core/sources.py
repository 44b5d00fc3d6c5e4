"""Source profiles: how one retailer's export maps onto the contract's fields.

A profile names, for each contract field, the export's column (or a Spark SQL expression over
its columns, written with a leading "="), the cancellation rule, date formats and time zone,
and the reading options (encoding, delimiter, quote, decimal separator, header). Profiles
come from the config's `sources` section, each filled in from `source_defaults`; the two UCI
layouts are built in there. `parse_profiles` validates them; nothing here imports Spark.
"""

from __future__ import annotations

import codecs
import csv
import io
import zoneinfo
from dataclasses import dataclass
from typing import Any

from lakemine.core.errors import ConfigError, InputError

# contract field -> the bronze column that holds its raw string
FIELDS = {
    "invoice": "InvoiceNo",
    "item": "StockCode",
    "description": "Description",
    "quantity": "Quantity",
    "timestamp": "InvoiceDate",
    "unit_price": "UnitPrice",
    "customer": "CustomerID",
    "country": "Country",
    "line_total": "LineTotal",
    "cancel_flag": "CancelFlag",
}
REQUIRED = ("invoice", "item", "quantity", "timestamp")
CANCELLATION_RULES = ("invoice_prefix", "negative_quantity", "flag")
# auto: a line that is valid UTF-8 is read as UTF-8, any other line as cp1252 (Windows
# Western European, a superset of Latin-1's printable characters): what Excel and most
# point-of-sale exports write.
ENCODINGS = ("utf-8", "latin-1", "cp1252", "auto")
# the five bytes that cp1252 leaves undefined; a line holding one cannot be decoded
CP1252_UNDEFINED = (0x81, 0x8D, 0x8F, 0x90, 0x9D)


@dataclass(frozen=True)
class SourceProfile:
    """One export layout. `columns` holds (contract field, source column or "=expression")."""

    name: str
    columns: tuple[tuple[str, str], ...]
    cancellation: str
    cancel_prefix: str
    cancel_values: tuple[str, ...]
    date_formats: tuple[str, ...] | None
    timezone: str | None
    encoding: str
    delimiter: str
    quote: str
    decimal: str
    header: bool
    column_names: tuple[str, ...] | None

    @property
    def mapping(self) -> dict[str, str]:
        return dict(self.columns)

    def source_columns(self) -> list[str]:
        """The export columns the profile names directly (expressions left out)."""
        return [src for _, src in self.columns if not src.startswith("=")]

    def match(self, names: list[str]) -> dict[str, str] | None:
        """{contract field: the file's own column name or "=expression"} when `names` (a
        header) holds every column the profile names (compared without case and surrounding
        spaces), else None."""
        own = {n.strip().lower(): n.strip() for n in names}
        out = {}
        for field, src in self.columns:
            if src.startswith("="):
                out[field] = src
            elif src.strip().lower() in own:
                out[field] = own[src.strip().lower()]
            else:
                return None
        return out

    def missing(self, names: list[str]) -> list[str]:
        own = {n.strip().lower() for n in names}
        return [src for src in self.source_columns() if src.strip().lower() not in own]

    def decode(self, raw: bytes) -> str:
        """A header line as text, decoded as this profile reads the file's lines."""
        if self.encoding == "auto":
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw.decode("cp1252", errors="strict")
        return raw.decode(self.encoding)

    def split_header(self, line: str) -> list[str]:
        if len(self.delimiter) == 1:
            return [n.strip() for n in next(csv.reader(io.StringIO(line), delimiter=self.delimiter,
                                                       quotechar=self.quote), [])]
        return [n.strip().strip(self.quote) for n in line.split(self.delimiter)]


def _text(name: str, key: str, value: Any, allowed: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config key 'sources.{name}.{key}' must be a non-empty string")
    if allowed and value not in allowed:
        raise ConfigError(f"config key 'sources.{name}.{key}' has value {value!r}; allowed: {', '.join(allowed)}")
    return value


def _texts(name: str, key: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"config key 'sources.{name}.{key}' must be a non-empty list")
    return tuple(str(v) for v in value)


def build_profile(name: str, values: dict) -> SourceProfile:
    """A validated profile from its config entry merged over `source_defaults`."""
    columns = values.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise ConfigError(f"config key 'sources.{name}.columns' must map contract fields to source columns")
    for field, src in columns.items():
        if field not in FIELDS:
            raise ConfigError(f"config key 'sources.{name}.columns.{field}' is unknown; allowed: {', '.join(FIELDS)}")
        if not isinstance(src, str) or not src.strip() or src.strip() == "=":
            raise ConfigError(f"config key 'sources.{name}.columns.{field}' must name a source column or '=expression'")
    pairs = tuple((f, str(columns[f]).strip()) for f in FIELDS if columns.get(f) is not None)
    given = {f for f, _ in pairs}
    for field in REQUIRED:
        if field not in given:
            raise ConfigError(f"config key 'sources.{name}.columns' lacks '{field}' (required: {', '.join(REQUIRED)})")
    if ("unit_price" in given) == ("line_total" in given):
        raise ConfigError(f"config key 'sources.{name}.columns' needs exactly one of unit_price and line_total")
    rule = _text(name, "cancellation", values.get("cancellation"), CANCELLATION_RULES)
    if rule == "flag" and "cancel_flag" not in given:
        raise ConfigError(f"config key 'sources.{name}.cancellation' is flag but columns has no cancel_flag")
    encoding = _text(name, "encoding", str(values.get("encoding", "")).lower(), ENCODINGS)
    delimiter = _text(name, "delimiter", values.get("delimiter"))
    quote = _text(name, "quote", values.get("quote"))
    decimal = _text(name, "decimal", values.get("decimal"), (".", ","))
    if len(quote) != 1 or quote == delimiter or decimal == delimiter:
        raise ConfigError(f"config keys 'sources.{name}.quote/decimal/delimiter': quote is one character, "
                          "and neither quote nor decimal separator may equal the delimiter")
    header = values.get("header")
    if not isinstance(header, bool):
        raise ConfigError(f"config key 'sources.{name}.header' must be true or false")
    column_names = _texts(name, "column_names", values.get("column_names"))
    profile = SourceProfile(
        name=name,
        columns=pairs,
        cancellation=rule,
        cancel_prefix=_text(name, "cancel_prefix", values.get("cancel_prefix")),
        cancel_values=tuple(v.upper() for v in _texts(name, "cancel_values", values.get("cancel_values")) or ()),
        date_formats=_texts(name, "date_formats", values.get("date_formats")),
        timezone=values.get("timezone"),
        encoding=encoding,
        delimiter=codecs.decode(delimiter, "unicode_escape") if delimiter == "\\t" else delimiter,
        quote=quote,
        decimal=decimal,
        header=header,
        column_names=column_names,
    )
    if profile.timezone is not None:
        try:
            zoneinfo.ZoneInfo(str(profile.timezone))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"config key 'sources.{name}.timezone' has value {profile.timezone!r}; "
                              "expected an IANA zone such as Europe/London") from None
    if not header:
        if column_names is None:
            raise ConfigError(f"config key 'sources.{name}.header' is false: give the file's columns in column_names")
        unknown = profile.missing(list(column_names))
        if unknown:
            raise ConfigError(f"config key 'sources.{name}.columns' names {unknown}, not in column_names")
    return profile


def parse_profiles(sources: dict, defaults: dict) -> dict[str, SourceProfile]:
    """{name: profile} from the config's `sources` and `source_defaults`."""
    if not isinstance(sources, dict) or not sources:
        raise ConfigError("config key 'sources' must map profile names to profiles")
    out = {}
    for name, entry in sources.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"config key 'sources.{name}' must be a mapping")
        unknown = sorted(set(entry) - set(defaults) - {"columns"})
        if unknown:
            allowed = ", ".join(sorted(set(defaults) | {"columns"}))
            raise ConfigError(f"config key 'sources.{name}.{unknown[0]}' is unknown; allowed here: {allowed}")
        out[str(name)] = build_profile(str(name), {**defaults, **entry})
    return out


def choose(profiles: dict[str, SourceProfile], header: bytes | None, where: str,
           source: str | None = None, names: list[str] | None = None) -> tuple[SourceProfile, dict[str, str]]:
    """The profile for a file and its {contract field: file column or "=expression"}.

    `header` is a CSV file's first line as bytes (None for a file with typed columns, whose
    names are `names`); `source` is the profile the user named. Without it, the profiles whose
    columns the header holds are candidates and the one naming the most columns wins; none or
    a tie is an InputError listing the profiles.
    """
    if source is not None:
        if source not in profiles:
            raise InputError(f"--source {source}: no such profile; configured: {', '.join(sorted(profiles))}")
        profile = profiles[source]
        cols = header_names(profile, header, names, where)
        found = profile.match(cols)
        if found is None:
            raise InputError(f"{where}: profile {source} needs columns {profile.missing(cols)}, "
                             f"not in the file's {cols}")
        return profile, found
    matches = []
    for profile in profiles.values():
        if not profile.header and header is not None:
            continue
        try:
            cols = header_names(profile, header, names, where)
        except InputError:
            continue
        found = profile.match(cols)
        if found is not None:
            matches.append((len(profile.source_columns()), profile, found))
    best = [m for m in matches if m[0] == max((m[0] for m in matches), default=0)]
    if len(best) == 1:
        return best[0][1], best[0][2]
    listed = ", ".join(sorted(profiles))
    shown = names if names is not None else _plain_header(header)
    if best:
        tied = ", ".join(sorted(m[1].name for m in best))
        raise InputError(f"{where}: columns {shown} match profiles {tied} alike; choose one with --source NAME")
    raise InputError(f"{where}: columns {shown} match no source profile ({listed}); "
                     "add one under `sources` in the config (`lakemine inspect --input FILE --write profile.yaml` "
                     "suggests it) and pass --source NAME")


def header_names(profile: SourceProfile, header: bytes | None, names: list[str] | None, where: str) -> list[str]:
    """A file's column names as `profile` reads them: its header line (`header`, bytes) decoded
    and split, the profile's column_names for a header-less profile, or `names` (typed inputs)."""
    if header is None:
        return list(names or [])
    if not profile.header:
        return list(profile.column_names or ())
    try:
        text = profile.decode(header)
    except UnicodeDecodeError:
        raise InputError(f"{where}: header line is not valid {profile.encoding} text; set the profile's encoding") from None
    return profile.split_header(text)


def _plain_header(header: bytes | None) -> list[str]:
    try:
        text = (header or b"").decode("utf-8")
    except UnicodeDecodeError:
        text = (header or b"").decode("cp1252", errors="replace")
    delimiter = max((",", ";", "\t", "|"), key=text.count)
    return [n.strip() for n in text.split(delimiter)]
