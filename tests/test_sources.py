"""Source profiles: other retailers' schemas, encodings, delimiters, decimal commas, header-less
files, Parquet, Delta and metastore tables, each through ingest and clean; and `inspect`."""

from __future__ import annotations

import subprocess
from datetime import date, datetime

import pytest
from pyspark.testing import assertDataFrameEqual

from conftest import HOUSEHOLD_PROFILE, REPO, clean_lake, ingest_files, with_profiles
from lakemine.core.config import load_config
from lakemine.core.errors import ConfigError, InputError
from lakemine.io import schemas
from lakemine.stages import inspect

SILVER = ["invoice_no", "stock_code", "description", "quantity", "invoice_ts", "invoice_date", "unit_price",
          "line_amount", "customer_id", "country", "is_return"]
SILVER_DDL = ("invoice_no string, stock_code string, description string, quantity int, invoice_ts timestamp, "
              "invoice_date date, unit_price double, line_amount double, customer_id string, country string, "
              "is_return boolean")

SHOP_HEADER = "household_key,BASKET_ID,PRODUCT_ID,QUANTITY,SALES_VALUE,TRANS_TIMESTAMP,STORE_ID,RETAIL_DISC"
SHOP_LINES = [
    SHOP_HEADER,
    "2375,26984851472,1004906,2,2.78,2024-07-01 00:30:00,364,-0.6",
    "2375,26984851472,1033142,1,0.82,2024-07-01 00:30:00,364,0.0",
    ",26984851516,1036325,1,0.99,2024-01-15 09:00:00,31742,0",
    "1364,26984896261,842930,-1,-1.29,2024-07-02 08:00:00,31742,0",
    "1364,26984896262,842930,0,0.00,2024-07-02 08:05:00,31742,0",
    "1364,26984896263,842931,3,abc,2024-07-02 08:05:00,31742,0",
]
KASSE = """
sources:
  kasse:
    columns: {invoice: Beleg, item: Artikel, description: Bezeichnung, quantity: Menge, unit_price: Preis,
              timestamp: Zeit, customer: Kunde, country: Filiale}
    cancellation: negative_quantity
    encoding: cp1252
    delimiter: ";"
    decimal: ","
    date_formats: ["dd.MM.yyyy HH:mm"]
"""
KASSE_BYTES = "\n".join([
    "Beleg;Artikel;Bezeichnung;Menge;Preis;Zeit;Kunde;Filiale",
    "B1;4711;Käse Gouda;2;1.234,50;03.03.2024 10:15;K1;Köln",
    'B1;4712;"Tee; grün";1;3,99;03.03.2024 10:15;K1;Köln',
    "B2;4713;Sekt €;1;9,5;04.03.2024 18:00;;Köln",
]).encode("cp1252") + b"\nB3;4714;Bad byte \x81;1;1,00;04.03.2024 18:00;K2;K\xf6ln\n"
POS = """
sources:
  pos:
    header: false
    column_names: [store, ticket, day, time, sku, name, qty, price, member, void]
    columns: {invoice: ticket, item: sku, description: name, quantity: qty, unit_price: price, customer: member,
              country: store, cancel_flag: void, timestamp: "=concat(day, ' ', time)"}
    cancellation: flag
    delimiter: "\\t"
    quote: "'"
    date_formats: ["yyyy-MM-dd HH:mm"]
"""
WAREHOUSE = """
sources:
  warehouse:
    columns: {invoice: order_id, item: sku, quantity: qty, unit_price: price, timestamp: ts, customer: cust,
              country: shop}
    cancellation: negative_quantity
"""


def silver(lake):
    return lake.read_table(schemas.SILVER_TRANSACTIONS).select(*SILVER)


def reasons(lake, table):
    return sorted((r["reason"], r["_line"]) for r in lake.read_table(table).collect())


def test_a_second_schema_maps_line_totals_negative_returns_guests_and_a_time_zone(lake, lake_cfg, tmp_path):
    """Household / basket / product / sales value: unit price = total / quantity, a negative
    quantity is a return, an empty household a guest, local London times stored as UTC with the
    local date; the extra RETAIL_DISC column is ignored."""
    cfg = with_profiles(lake_cfg, tmp_path, HOUSEHOLD_PROFILE)
    path = tmp_path / "in" / "transactions.csv"
    path.parent.mkdir()
    path.write_text("\n".join(SHOP_LINES) + "\n")
    run = ingest_files(lake, cfg, str(path))
    assert run.rows_in == 6 and run.rows_out == 6
    clean_lake(lake, cfg)
    expected = lake.spark.createDataFrame([
        ("26984851472", "1004906", None, 2, datetime(2024, 6, 30, 23, 30), date(2024, 7, 1), 1.39, 2.78, "2375", "364", False),
        ("26984851472", "1033142", None, 1, datetime(2024, 6, 30, 23, 30), date(2024, 7, 1), 0.82, 0.82, "2375", "364", False),
        ("26984851516", "1036325", None, 1, datetime(2024, 1, 15, 9, 0), date(2024, 1, 15), 0.99, 0.99, None, "31742", False),
        ("26984896261", "842930", None, -1, datetime(2024, 7, 2, 7, 0), date(2024, 7, 2), 1.29, -1.29, "1364", "31742", True),
    ], SILVER_DDL)
    assertDataFrameEqual(silver(lake), expected, rtol=1e-9)
    assert reasons(lake, schemas.SILVER_QUARANTINE) == [("bad_number", 7), ("zero_quantity", 6)]
    detail = lake.read_table(schemas.SILVER_QUARANTINE).where("reason = 'bad_number'").first()["detail"]
    assert detail == "LineTotal 'abc' is not a number"
    assert {r["_source"] for r in lake.read_table(schemas.BRONZE_TRANSACTIONS).collect()} == {"household"}


def test_semicolon_decimal_comma_cp1252_export_through_clean(lake, lake_cfg, tmp_path):
    """cp1252 text (ä, ü, €), ';' between fields, a quoted ';' inside one, '1.234,50' read as
    1234.5; a line holding a byte cp1252 leaves undefined is quarantined with its bytes."""
    cfg = with_profiles(lake_cfg, tmp_path, KASSE)
    path = tmp_path / "kasse.csv"
    path.write_bytes(KASSE_BYTES)
    ingest_files(lake, cfg, str(path))
    clean_lake(lake, cfg)
    expected = lake.spark.createDataFrame([
        ("B1", "4711", "Käse Gouda", 2, datetime(2024, 3, 3, 10, 15), date(2024, 3, 3), 1234.5, 2469.0, "K1", "Köln", False),
        ("B1", "4712", "Tee; grün", 1, datetime(2024, 3, 3, 10, 15), date(2024, 3, 3), 3.99, 3.99, "K1", "Köln", False),
        ("B2", "4713", "Sekt €", 1, datetime(2024, 3, 4, 18, 0), date(2024, 3, 4), 9.5, 9.5, None, "Köln", False),
    ], SILVER_DDL)
    assertDataFrameEqual(silver(lake), expected)
    bad = lake.read_table(schemas.BRONZE_QUARANTINE).first()
    assert (bad["reason"], bad["_line"]) == ("bad_encoding", 5)
    assert bad["detail"] == "line is not cp1252 text; its bytes in hex: " + KASSE_BYTES.splitlines()[-1].hex().upper()


def test_latin1_uci_export_keeps_the_pound_sign(lake, lake_cfg, tmp_path):
    """The UCI file as commonly distributed is Latin-1: the built-in profiles read a line that is
    not UTF-8 as cp1252, so '£' survives whether the line was written in Latin-1 or UTF-8."""
    path = tmp_path / "Online Retail.csv"
    path.write_bytes(
        b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        + "536365,22423,REGENCY CAKESTAND £3,1,12/1/2010 8:26,12.75,17850,United Kingdom\n".encode("latin-1")
        + "536366,22423,REGENCY CAKESTAND £3,2,12/1/2010 8:28,12.75,17850,United Kingdom\n".encode("utf-8")
    )
    ingest_files(lake, lake_cfg, str(path))
    rows = lake.read_table(schemas.BRONZE_TRANSACTIONS).select("Description", "_source", "_line").orderBy("_line").collect()
    assert [tuple(r) for r in rows] == [("REGENCY CAKESTAND £3", "online_retail", 2), ("REGENCY CAKESTAND £3", "online_retail", 3)]
    assert not lake.exists(schemas.BRONZE_QUARANTINE) or lake.read_table(schemas.BRONZE_QUARANTINE).count() == 0


def test_headerless_tab_file_with_flag_cancellations_and_an_expression(lake, lake_cfg, tmp_path):
    """No header: the profile lists the columns and must be named (--source); a flagged line is
    a return whatever its sign; the timestamp is an expression over two columns; ' quotes."""
    cfg = with_profiles(lake_cfg, tmp_path, POS)
    path = tmp_path / "pos.txt"
    path.write_text("\n".join([
        "S1\tT1\t2024-05-01\t09:30\tA1\t'Milk\t1L'\t2\t1.10\tM9\tN",
        "S1\tT2\t2024-05-01\t09:45\tA1\tMilk 1L\t2\t1.10\tM9\ty",
        "S1\tT3\t2024-05-01\t10:00\tA2\tBread\t1\t2.00\t\t",
    ]) + "\n")
    with pytest.raises(InputError, match=r"match no source profile \(online_retail, online_retail_ii, pos\)"):
        ingest_files(lake, cfg, str(path))
    run = ingest_files(lake, cfg, str(path), source="pos")
    assert run.rows_in == 3 and run.rows_out == 3
    clean_lake(lake, cfg)
    expected = lake.spark.createDataFrame([
        ("T1", "A1", "Milk\t1L", 2, datetime(2024, 5, 1, 9, 30), date(2024, 5, 1), 1.1, 2.2, "M9", "S1", False),
        ("T2", "A1", "Milk 1L", -2, datetime(2024, 5, 1, 9, 45), date(2024, 5, 1), 1.1, -2.2, "M9", "S1", True),
        ("T3", "A2", "Bread", 1, datetime(2024, 5, 1, 10, 0), date(2024, 5, 1), 2.0, 2.0, None, "S1", False),
    ], SILVER_DDL)
    assertDataFrameEqual(silver(lake), expected)


def test_source_option_checks_the_profile_against_the_file(lake, lake_cfg, tmp_path):
    cfg = with_profiles(lake_cfg, tmp_path, HOUSEHOLD_PROFILE)
    path = tmp_path / "t.csv"
    path.write_text("\n".join(SHOP_LINES[:2]) + "\n")
    with pytest.raises(InputError, match=r"--source nope: no such profile; configured: household, online_retail, online_retail_ii"):
        ingest_files(lake, cfg, str(path), source="nope")
    with pytest.raises(InputError, match=r"profile online_retail needs columns \['InvoiceNo', .*\], not in the file's"):
        ingest_files(lake, cfg, str(path), source="online_retail")
    assert not lake.exists(schemas.BRONZE_TRANSACTIONS)


def test_parquet_delta_folder_and_metastore_table_through_clean(lake, lake_cfg, tmp_path):
    """Typed sources with their own column names: values are read as strings into bronze and
    typed by clean like any CSV; each data file is a batch."""
    cfg = with_profiles(lake_cfg, tmp_path, WAREHOUSE)
    spark = lake.spark
    ddl = "order_id long, sku string, qty int, price double, ts timestamp, cust long, shop string"

    def orders(n):
        return spark.createDataFrame([(n, "SKU1", 3 - n, 1.5, datetime(2024, 5, n, 12, 0), 17850, "web")], ddl).coalesce(1)

    orders(1).write.parquet(str(tmp_path / "parquet"))
    orders(2).write.format("delta").save(str(tmp_path / "delta"))
    orders(3).write.format("delta").option("path", str(tmp_path / "table")).saveAsTable("lakemine_test_orders")
    try:
        for source in (str(tmp_path / "parquet"), str(tmp_path / "delta"), "table:lakemine_test_orders"):
            assert ingest_files(lake, cfg, source).rows_out == 1, source
    finally:
        spark.sql("DROP TABLE IF EXISTS lakemine_test_orders")
    clean_lake(lake, cfg)
    expected = spark.createDataFrame([
        ("1", "SKU1", 2, datetime(2024, 5, 1, 12), date(2024, 5, 1), 1.5, 3.0, "17850", "web", False),
        ("2", "SKU1", 1, datetime(2024, 5, 2, 12), date(2024, 5, 2), 1.5, 1.5, "17850", "web", False),
    ], "invoice_no string, stock_code string, quantity int, invoice_ts timestamp, invoice_date date, unit_price double, "
       "line_amount double, customer_id string, country string, is_return boolean")
    assertDataFrameEqual(silver(lake).drop("description"), expected)
    assert reasons(lake, schemas.SILVER_QUARANTINE)[0][0] == "zero_quantity"


def test_bronze_from_before_profiles_gains_the_new_columns_and_cleans(lake, lake_cfg, tmp_path):
    """A lake written before source profiles: its bronze rows read as the UCI profile and a new
    ingest adds the source columns to the table instead of failing on the schema."""
    old = lake.spark.createDataFrame(
        [("536365", "85123A", "HEART", "6", "12/1/2010 8:26", "2.55", "17850", "United Kingdom", "file:/old.csv", 2, "b0",
          datetime(2024, 1, 1))],
        ", ".join(f"{c} string" for c in schemas.RAW_COLUMNS) + ", _source_file string, _line long, _batch_id string, "
        "_ingested_at timestamp")
    lake.overwrite(old, schemas.BRONZE_TRANSACTIONS)
    path = tmp_path / "new.csv"
    path.write_text("Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
                    "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527,United Kingdom\n")
    ingest_files(lake, lake_cfg, str(path))
    clean_lake(lake, lake_cfg)
    rows = silver(lake).select("invoice_no", "quantity", "is_return").collect()
    assert sorted(tuple(r) for r in rows) == [("536365", 6, False), ("C536379", -1, True)]


def test_a_source_no_longer_configured_is_quarantined_not_guessed(spark):
    from lakemine.stages.clean import CleanParams, clean_transactions

    bronze = spark.createDataFrame(
        [("1", "A", None, "1", "2024-01-01 10:00:00", "1.0", "7", "UK", None, None, "gone", "f", 2, "b")],
        ", ".join(f"`{c}` string" for c in schemas.SOURCE_COLUMNS) + ", _source_file string, _line long, _batch_id string")
    row = clean_transactions(bronze, CleanParams.from_config(None)).first()
    assert (row["reason"], row["detail"]) == ("unknown_source", "source profile 'gone' is not configured")


@pytest.mark.parametrize("entry, message", [
    ("columns: {invoice: a, item: b, timestamp: d, unit_price: e}", r"'sources.x.columns' lacks 'quantity'"),
    ("columns: {invoice: a, item: b, quantity: c, timestamp: d, unit_price: e, line_total: f}",
     "needs exactly one of unit_price and line_total"),
    ("columns: {invoice: a, item: b, quantity: c, timestamp: d, unit_price: e}\n    cancellation: flag",
     "'sources.x.cancellation' is flag but columns has no cancel_flag"),
    ("columns: {invoice: a, item: b, quantity: c, timestamp: d, unit_price: e}\n    timezone: Mars/Base",
     "expected an IANA zone"),
    ("columns: {invoice: a, item: b, quantity: c, timestamp: d, unit_price: e}\n    header: false",
     "give the file's columns in column_names"),
    ("columns: {invoice: a, item: b, quantity: c, timestamp: d, price: e}", r"'sources.x.columns.price' is unknown"),
    ("columns: {invoice: a, item: b, quantity: c, timestamp: d, unit_price: e}\n    encodin: cp1252",
     r"'sources.x.encodin' is unknown; allowed here: .*encoding"),
    ("columns: {invoice: a, item: b, quantity: c, timestamp: d, unit_price: e}\n    encoding: utf-16",
     "allowed: utf-8, latin-1, cp1252, auto"),
    ("columns: {invoice: a, item: b, quantity: c, timestamp: d, unit_price: e}\n    decimal: ','\n    delimiter: ','",
     "neither quote nor decimal separator may equal the delimiter"),
])
def test_a_bad_profile_is_refused_naming_its_key(tmp_path, entry, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"sources:\n  x:\n    {entry}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(str(path), env={})


def test_inspect_suggests_a_profile_for_an_unknown_schema_that_ingests_as_is(lake, lake_cfg, tmp_path):
    """From an unknown export to a working config in one step: the suggested YAML, passed with
    --config, ingests the file and cleans it as the hand-written profile does."""
    path = tmp_path / "transactions.csv"
    path.write_text("\n".join(SHOP_LINES) + "\n")
    found = inspect.inspect(lake.spark, lake_cfg, str(path))
    assert (found.encoding, found.delimiter, found.header, found.matched) == ("utf-8", ",", True, None)
    assert found.profile == {"name": "transactions", "columns": {
        "invoice": "BASKET_ID", "item": "PRODUCT_ID", "quantity": "QUANTITY", "timestamp": "TRANS_TIMESTAMP",
        "line_total": "SALES_VALUE", "customer": "household_key", "country": "STORE_ID"},
        "cancellation": "negative_quantity"}
    assert ("yyyy-MM-dd HH:mm:ss", 1.0) in found.date_formats
    assert found.sampled == 6 and found.outcome == {"silver": 4, "zero_quantity": 1, "bad_number": 1}
    text = inspect.format_report(found)
    assert "suggested 'transactions' below (pass --source transactions)" in text and "66.7%  to silver (4)" in text
    (tmp_path / "p.yaml").write_text(found.yaml)
    cfg = load_config(str(tmp_path / "p.yaml"), env={"LAKEMINE_SPARK__MASTER": "local[2]"}).with_lake(lake.root)
    ingest_files(lake, cfg, str(path), source="transactions")
    clean_lake(lake, cfg)
    assert silver(lake).count() == 4


def test_inspect_reads_encoding_delimiter_decimal_and_dates_of_a_german_export(spark, lake_cfg, tmp_path):
    path = tmp_path / "kasse.csv"
    path.write_bytes(KASSE_BYTES.replace(b"\x81", b"x"))
    found = inspect.inspect(spark, lake_cfg, str(path))
    assert (found.encoding, found.delimiter, found.header) == ("cp1252", ";", True)
    assert found.profile["columns"] == {"invoice": "Beleg", "item": "Artikel", "description": "Bezeichnung",
                                        "quantity": "Menge", "timestamp": "Zeit", "unit_price": "Preis",
                                        "customer": "Kunde", "country": "Filiale"}
    assert {k: found.profile[k] for k in ("encoding", "delimiter", "decimal", "date_formats")} == {
        "encoding": "cp1252", "delimiter": ";", "decimal": ",", "date_formats": ["dd.MM.yyyy HH:mm"]}
    assert found.outcome == {"silver": 4}


def test_inspect_matches_the_built_in_profile_of_a_latin1_uci_file(spark, lake_cfg, tmp_path):
    path = tmp_path / "uci.csv"
    path.write_bytes(b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
                     + "536365,22423,CAKESTAND £3,1,12/1/2010 8:26,12.75,17850,United Kingdom\n".encode("latin-1")
                     + b"C536366,22423,CAKESTAND,-1,12/1/2010 8:28,12.75,,United Kingdom\n"
                     + b"536367,22424,CAKESTAND,1,13/1/2010 8:28,12.75,17850,United Kingdom\n")
    found = inspect.inspect(spark, lake_cfg, str(path))
    assert (found.encoding, found.matched) == ("cp1252", "online_retail")
    assert found.outcome == {"silver": 2, "bad_date": 1}
    assert dict(found.date_formats)["M/d/yyyy H:mm"] == pytest.approx(2 / 3)
    assert "profile    online_retail (matches; ingest needs no --source)" in inspect.format_report(found)


def test_inspect_on_typed_sources_and_a_headerless_file(spark, lake_cfg, tmp_path):
    cfg = with_profiles(lake_cfg, tmp_path, WAREHOUSE)
    ddl = "order_id long, sku string, qty int, price double, ts timestamp, cust long, shop string"
    spark.createDataFrame([(1, "SKU1", 2, 1.5, datetime(2024, 5, 1, 12), 17850, "web")], ddl).write.format("delta").save(
        str(tmp_path / "delta"))
    found = inspect.inspect(spark, cfg, str(tmp_path / "delta"))
    assert (found.fmt, found.matched, found.outcome) == ("delta", "warehouse", {"silver": 1})
    found = inspect.inspect(spark, lake_cfg, str(tmp_path / "delta"))
    assert found.matched is None and found.profile["columns"]["invoice"] == "order_id" and found.outcome == {"silver": 1}
    path = tmp_path / "pos.txt"
    path.write_text("S1;T1;2024-05-01 09:30;A1;2;1.10\nS1;T2;2024-05-01 09:45;A1;2;1.10\n")
    found = inspect.inspect(spark, lake_cfg, str(path))
    assert (found.header, found.delimiter, found.columns) == (False, ";", ["col1", "col2", "col3", "col4", "col5", "col6"])
    assert found.profile["columns"]["timestamp"] == "col3" and found.profile["columns"]["invoice"] == "FILL_IN"
    assert found.profile["column_names"] == found.columns and "FILL_IN" in found.yaml


def test_inspect_command_prints_quietly_and_writes_the_profile(tmp_path):
    """The installed command as a user runs it: no Spark or log4j noise on stderr, exit 0, and
    --write saves a config file that ingest accepts; an unusable file exits 2 with one line."""
    path = tmp_path / "transactions.csv"
    path.write_text("\n".join(SHOP_LINES) + "\n")
    cmd = [str(REPO / ".venv" / "bin" / "lakemine"), "inspect", "--input", str(path), "--lake", str(tmp_path / "lake"),
           "--write", str(tmp_path / "p.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "log4j" not in proc.stderr and "Reconfiguration" not in proc.stderr, proc.stderr[-2000:]
    assert "suggested 'transactions'" in proc.stdout and f"profile written to {tmp_path / 'p.yaml'}" in proc.stdout
    assert "transactions" in load_config(str(tmp_path / "p.yaml"), env={}).sources
    (tmp_path / "junk.csv").write_bytes(bytes(range(256)))
    proc = subprocess.run(cmd[:3] + [str(tmp_path / "junk.csv")] + cmd[4:6], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("lakemine")] == [
        f"lakemine inspect: error: {tmp_path / 'junk.csv'}: binary data, not a CSV text file"]


def _workbook(path):
    from openpyxl import Workbook

    book = Workbook()
    first = book.active
    first.title = "Year 2009-2010"
    first.append(["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"])
    first.append([489434, "85048", "15CM CHRISTMAS GLASS BALL 20 LIGHTS", 12, datetime(2009, 12, 1, 7, 45), 6.95, 13085.0,
                  "United Kingdom"])
    first.append([None] * 8)
    first.append(["C489449", "22087", "PAPER BUNTING £", -12, datetime(2009, 12, 1, 10, 33), 2.95, None, "Australia"])
    second = book.create_sheet("Year 2010-2011")
    second.append(["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"])
    second.append(["536365", "85123A", "WHITE HANGING HEART", 6, datetime(2010, 12, 1, 8, 26), 2.55, 17850, "United Kingdom"])
    book.save(path)


def test_an_xlsx_workbook_is_read_sheet_by_sheet_through_clean(lake, lake_cfg, tmp_path):
    """The UCI distribution is an .xlsx of two sheets: each sheet is staged as a UTF-8 CSV and
    ingested like one (cell values typed by clean as usual; an empty row left out)."""
    path = tmp_path / "online_retail_II.xlsx"
    _workbook(path)
    run = ingest_files(lake, lake_cfg, str(path))
    assert run.rows_in == 3 and run.rows_out == 3 and len(run.result.new_batches) == 2
    files = {r["_source_file"] for r in lake.read_table(schemas.BRONZE_TRANSACTIONS).collect()}
    assert all("/_staging/xlsx/" in f for f in files) and len(files) == 2
    clean_lake(lake, lake_cfg)
    expected = lake.spark.createDataFrame([
        ("489434", "85048", "15CM CHRISTMAS GLASS BALL 20 LIGHTS", 12, datetime(2009, 12, 1, 7, 45), date(2009, 12, 1),
         6.95, 83.4, "13085", "United Kingdom", False),
        ("C489449", "22087", "PAPER BUNTING £", -12, datetime(2009, 12, 1, 10, 33), date(2009, 12, 1), 2.95, -35.4, None,
         "Australia", True),
        ("536365", "85123A", "WHITE HANGING HEART", 6, datetime(2010, 12, 1, 8, 26), date(2010, 12, 1), 2.55, 15.3, "17850",
         "United Kingdom", False),
    ], SILVER_DDL)
    assertDataFrameEqual(silver(lake), expected)
    assert ingest_files(lake, lake_cfg, str(path)).status == "noop"
    found = inspect.inspect(lake.spark, lake_cfg, str(path))
    assert (found.fmt, found.matched, found.outcome) == ("xlsx", "online_retail_ii", {"silver": 2})
    assert found.notes[0].startswith("Excel workbook: its first sheet of 2 inspected")


@pytest.mark.parametrize("name, content, message", [
    ("broken.xlsx", b"PK\x03\x04 not a workbook", "not a readable .xlsx workbook"),
    ("old.xls", b"\xd0\xcf\x11\xe0 legacy", "legacy Excel .xls; save it as .xlsx or export its sheets as CSV"),
])
def test_an_unreadable_workbook_is_one_input_error(lake, lake_cfg, tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message):
        ingest_files(lake, lake_cfg, str(tmp_path / name))
    assert not lake.exists(schemas.BRONZE_TRANSACTIONS)


@pytest.mark.parametrize("kind", ["gz", "bz2", "parquet", "table"])
def test_inspect_reads_compressed_parquet_and_metastore_inputs(spark, lake_cfg, tmp_path, kind):
    import bz2
    import gzip

    header = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"
    lines = [header, "489434,85048,BALL,12,2009-12-01 07:45:00,6.95,13085,United Kingdom",
             "489435,85049,BALL,x,2009-12-01 07:46:00,6.95,13085,United Kingdom"]
    text = ("\n".join(lines) + "\n").encode()
    if kind in ("gz", "bz2"):
        path = tmp_path / f"export.csv.{kind}"
        path.write_bytes(gzip.compress(text) if kind == "gz" else bz2.compress(text))
        target = str(path)
    else:
        import csv
        import io

        rows = list(csv.reader(io.StringIO("\n".join(lines[1:]))))
        df = spark.createDataFrame(rows, ", ".join(f"`{c}` string" for c in header.split(",")))
        if kind == "parquet":
            df.coalesce(1).write.parquet(str(tmp_path / "pq"))
            target = str(tmp_path / "pq")
        else:
            # a Parquet metastore table: Delta refuses the space in "Customer ID" without column mapping
            df.write.format("parquet").option("path", str(tmp_path / "t")).saveAsTable("lakemine_inspect_orders")
            target = "table:lakemine_inspect_orders"
    try:
        found = inspect.inspect(spark, lake_cfg, target)
    finally:
        spark.sql("DROP TABLE IF EXISTS lakemine_inspect_orders")
    assert found.matched == "online_retail_ii" and found.outcome == {"silver": 1, "bad_number": 1}
    assert found.fmt == {"gz": "csv", "bz2": "csv"}.get(kind, "parquet" if kind == "parquet" else "table")
