"""The bad-input corpus over every source option (profiles, encodings, delimiters, quotes,
decimal commas, header-less files, cancellation rules, time zones, expressions, .gz, .bz2,
Parquet, Delta, metastore tables, .xlsx): each file mixes good lines with lines broken in that
option's own way. Either every line ends in a table or in quarantine (bronze rows + bronze
quarantine = the lines; silver + silver quarantine + duplicates = bronze), or the file is
refused with one line naming it and nothing is written (issue 16)."""

from __future__ import annotations

import bz2
import gzip
import io
from datetime import datetime

import pytest

from conftest import clean_lake, ingest_files, with_profiles
from lakemine.core.errors import InputError
from lakemine.io import schemas
from lakemine.io.lake import Lake

UCI = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
UCI_GOOD = "536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom"
UCI_BAD = [
    "536366,22633,HAND WARMER,many,12/1/2010 8:28,1.85,17850,United Kingdom",  # quantity
    "536367,22634,HAND WARMER,6,13/45/2010 8:28,1.85,17850,United Kingdom",  # date
    "536368,22635,HAND WARMER,6,12/1/2010 8:28,-1.85,17850,United Kingdom",  # negative price
    ",22636,HAND WARMER,6,12/1/2010 8:28,1.85,17850,United Kingdom",  # no invoice
    "536369,22637,HAND WARMER,6",  # too few fields
    "536370,22638,HAND WARMER,6,12/1/2010 8:28,1.85,17850,United Kingdom,extra,fields",  # too many
    '536371,22639,"UNCLOSED QUOTE,6,12/1/2010 8:28,1.85,17850,United Kingdom',
    UCI_GOOD,  # a duplicate
]
UCI_LINES = [UCI_GOOD, *UCI_BAD]
UCI_SOURCE = "online_retail"  # the latin profile below reads the same header

PROFILES = """
sources:
  latin:
    columns: {invoice: InvoiceNo, item: StockCode, description: Description, quantity: Quantity,
              timestamp: InvoiceDate, unit_price: UnitPrice, customer: CustomerID, country: Country}
    encoding: latin-1
    date_formats: ["M/d/yyyy H:mm"]
  kasse:
    columns: {invoice: Beleg, item: Artikel, description: Bezeichnung, quantity: Menge, unit_price: Preis,
              timestamp: Zeit, customer: Kunde, country: Filiale}
    cancellation: negative_quantity
    encoding: cp1252
    delimiter: ";"
    decimal: ","
    date_formats: ["dd.MM.yyyy HH:mm"]
  pos:
    header: false
    column_names: [store, ticket, day, time, sku, name, qty, price, member, void]
    columns: {invoice: ticket, item: sku, description: name, quantity: qty, unit_price: price, customer: member,
              country: store, cancel_flag: void, timestamp: "=concat(day, ' ', time)"}
    cancellation: flag
    cancel_values: ["Y"]
    delimiter: "\\t"
    quote: "'"
    date_formats: ["yyyy-MM-dd HH:mm"]
  household:
    columns: {invoice: BASKET_ID, item: PRODUCT_ID, quantity: QUANTITY, line_total: SALES_VALUE,
              timestamp: TRANS_TIMESTAMP, customer: household_key, country: STORE_ID}
    cancellation: negative_quantity
    timezone: Europe/London
  warehouse:
    columns: {invoice: order_id, item: sku, quantity: qty, unit_price: price, timestamp: ts, customer: cust,
              country: shop}
    cancellation: negative_quantity
"""


def _csv(lines: list[str], encoding: str = "utf-8") -> bytes:
    return ("\n".join(lines) + "\n").encode(encoding)


KASSE = _csv([
    "Beleg;Artikel;Bezeichnung;Menge;Preis;Zeit;Kunde;Filiale",
    "B1;4711;Käse Gouda;2;1.234,50;03.03.2024 10:15;K1;Köln",
    "B2;4712;Tee;1;3,9,9;03.03.2024 10:15;K1;Köln",  # two decimal commas
    "B3;4713;Sekt;1;9,5;2024-03-04 18:00;;Köln",  # another date format
    "B4;4714;Brot;0;2,10;04.03.2024 18:00;K2;Köln",  # zero quantity
    "B5;4715;Milch;1;1,10",  # too few fields
], "cp1252") + b"B6;4716;Bad byte \x81;1;1,00;04.03.2024 18:00;K2;K\xf6ln\n"
POS = _csv([
    "S1\tT1\t2024-05-01\t10:00\tA1\tApples\t2\t0.50\tM1\tN",
    "S1\tT1\t2024-05-01\t\tA2\tPears\t1\t0.70\tM1\tN",  # no time: the expression gives an unparseable stamp
    "S1\tT2\t2024-05-01\t10:05\tA1\t'Apples, red\t-2\t0.50\tM1\tY",  # unclosed quote
    "S1\tT3\t2024-05-01\t10:07\tA3\tPlums\t1\t0.90\tM1\tmaybe",  # an unknown flag value
    "S1\tT4\t2024-05-01",  # too few fields
])
HOUSEHOLD = _csv([
    "household_key,BASKET_ID,PRODUCT_ID,QUANTITY,SALES_VALUE,TRANS_TIMESTAMP,STORE_ID",
    "2375,26984851472,1004906,2,2.78,2024-07-01 00:30:00,364",
    "2375,26984851473,1004907,2,abc,2024-07-01 00:30:00,364",  # line total
    "2375,26984851474,1004908,0,0.00,2024-07-01 00:30:00,364",  # zero quantity: no unit price
    "2375,26984851475,1004909,1,1.00,2024-03-31 01:30:00,364",  # a London time that does not exist (DST)
    "2375,26984851476,1004910,1,1.00,2024-13-01 00:30:00,364",  # month 13
])


def _cut(compress) -> bytes:
    """A compressed export cut in the middle (a transfer that stopped)."""
    data = compress(_csv([UCI] + [UCI_GOOD.replace("536365", str(600000 + i)) for i in range(2000)]))
    return data[: len(data) // 2]


def _xlsx(rows: list[list]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


FILES = {  # case -> (file name, bytes, --source or None, expectation: "accounted" or the refusal's message)
    "utf-8 with an undecodable byte": ("a.csv", _csv([UCI, *UCI_LINES]) + b"536372,1,BAD \xff\xfe,1,12/1/2010 8:28,1,1,UK\n",
                                       UCI_SOURCE, "accounted"),
    "latin-1": ("a.csv", _csv([UCI, *UCI_LINES, "536373,1,CAF\u00c9 \u00a3,1,12/1/2010 8:28,1,1,UK"], "latin-1"),
                "latin", "accounted"),
    "cp1252, semicolons, decimal commas": ("k.csv", KASSE, "kasse", "accounted"),
    "no header, tabs, quote ', flag, expression": ("p.tsv.csv", POS, "pos", "accounted"),
    "line totals, negative quantity, time zone": ("h.csv", HOUSEHOLD, "household", "accounted"),
    ".gz": ("a.csv.gz", gzip.compress(_csv([UCI, *UCI_LINES])), UCI_SOURCE, "accounted"),
    ".gz cut short": ("cut.csv.gz", _cut(gzip.compress), UCI_SOURCE, "cut.csv.gz: not a readable .gz file, corrupt or truncated"),
    ".bz2": ("a.csv.bz2", bz2.compress(_csv([UCI, *UCI_LINES])), UCI_SOURCE, "accounted"),
    ".bz2 cut short": ("cut.csv.bz2", _cut(bz2.compress), UCI_SOURCE, "cut.csv.bz2: not a readable .bz2 file, corrupt or truncated"),
    "header only (a day without sales)": ("h.csv", _csv([UCI]), UCI_SOURCE, "no lines"),
    "a header no profile has": ("x.csv", _csv(["a,b,c", "1,2,3"]), None, "match no source profile"),
    "--source not matching the header": ("a.csv", _csv([UCI, UCI_GOOD]), "kasse", "a.csv: .*kasse"),
    ".xlsx with bad cells": ("w.xlsx", _xlsx([UCI.split(","), [536365, "85123A", "HEART", 6, datetime(2010, 12, 1, 8, 26),
                                                                2.55, 17850, "UK"],
                                              [536366, "22633", "WARMER", "many", "not a date", "x", None, "UK"],
                                              [536367, "22634", "WARMER", 6, "13/45/2010 8:28", 1.85, 17850, "UK"],
                                              [None, "22635", "WARMER", 6, datetime(2010, 12, 1, 8, 28), -1.0, 17850, "UK"],
                                              [None, None, None, None, None, None, None, None]]), UCI_SOURCE, "accounted"),
}
TYPED = ("parquet", "delta", "table")


def _accounted(lake: Lake, lines: int) -> tuple[int, int]:
    """Every line once: in bronze or its quarantine, then in silver, its quarantine or counted
    as a duplicate. Returns (bronze quarantined, silver quarantined)."""
    bronze = lake.read_table(schemas.BRONZE_TRANSACTIONS).count()
    bronze_q = lake.read_table(schemas.BRONZE_QUARANTINE).count() if lake.exists(schemas.BRONZE_QUARANTINE) else 0
    assert bronze + bronze_q == lines, (bronze, bronze_q, lines)
    silver = lake.read_table(schemas.SILVER_TRANSACTIONS).count()
    silver_q = lake.read_table(schemas.SILVER_QUARANTINE).count()
    runs = lake.read_table(schemas.OPS_RUNS).where("stage = 'clean' AND status = 'succeeded'").collect()
    assert silver + silver_q + sum(r["rows_duplicate"] for r in runs) == bronze
    return bronze_q, silver_q


@pytest.mark.parametrize("case", list(FILES))
def test_every_line_ends_in_a_table_or_quarantine_or_the_file_is_refused(lake, lake_cfg, tmp_path, case):
    name, content, source, expect = FILES[case]
    cfg = with_profiles(lake_cfg, tmp_path, PROFILES)
    path = tmp_path / "in" / name
    path.parent.mkdir()
    path.write_bytes(content)
    if expect not in ("accounted", "no lines"):
        with pytest.raises(InputError, match=expect) as err:
            ingest_files(lake, cfg, str(path.parent), source=source)
        assert "\n" not in str(err.value)
        assert not lake.exists(schemas.BRONZE_TRANSACTIONS) and not lake.exists(schemas.OPS_RUNS)
        return
    run = ingest_files(lake, cfg, str(path.parent), source=source)
    if expect == "no lines":
        assert (run.rows_in, run.rows_out, run.rows_quarantined) == (0, 0, 0)
        return
    clean_lake(lake, cfg)
    quarantined = _accounted(lake, run.rows_in)
    assert run.rows_in >= 4 and sum(quarantined) >= 2, (case, run.rows_in, quarantined)


@pytest.mark.parametrize("kind", TYPED)
def test_typed_inputs_with_nulls_and_unparseable_values_are_accounted_for(lake, lake_cfg, tmp_path, kind):
    """Parquet, a Delta folder and a metastore table whose rows have nulls where clean needs
    values and strings where it needs numbers and dates."""
    cfg = with_profiles(lake_cfg, tmp_path, PROFILES)
    spark = lake.spark
    rows = [("1", "SKU1", "3", "1.5", "2024-05-01 12:00:00", "17850", "web"),
            (None, "SKU2", "1", "1.5", "2024-05-01 12:00:00", "17850", "web"),
            ("3", "SKU3", "three", "1.5", "2024-05-01 12:00:00", "17850", "web"),
            ("4", "SKU4", "1", "1,5", "yesterday", "17850", "web"),
            ("5", None, None, None, None, None, None)]
    df = spark.createDataFrame(rows, "order_id string, sku string, qty string, price string, ts string, cust string, "
                                     "shop string").coalesce(1)
    if kind == "parquet":
        df.write.parquet(str(tmp_path / "orders"))
        source = str(tmp_path / "orders")
    elif kind == "delta":
        df.write.format("delta").save(str(tmp_path / "orders"))
        source = str(tmp_path / "orders")
    else:
        df.write.format("delta").option("path", str(tmp_path / "orders")).saveAsTable("lakemine_bad_orders")
        source = "table:lakemine_bad_orders"
    try:
        run = ingest_files(lake, cfg, source, source="warehouse")
    finally:
        spark.sql("DROP TABLE IF EXISTS lakemine_bad_orders")
    clean_lake(lake, cfg)
    assert run.rows_in == len(rows)
    assert sum(_accounted(lake, len(rows))) >= 3
