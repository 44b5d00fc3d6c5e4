"""The real UCI Online Retail II export (../shared/data, CC BY 4.0): its first 30,000 lines
through ingest, clean, features and fpgrowth, checked against counts made independently from
the raw file with Python's csv module: exact conservation and duplicates, guest purchases kept
as baskets, service codes (postage, fees, vouchers) out of baskets, features and rules."""

from __future__ import annotations

import csv
import io
import itertools
import lzma
import re
from collections import Counter
from datetime import datetime

import pyspark.sql.functions as F
import pytest

from conftest import REPO, clean_lake, ingest_files, run_features
from lakemine.io import schemas
from lakemine.mining import fpgrowth

pytestmark = pytest.mark.slow

SOURCE = REPO.parent / "shared" / "data" / "online_retail_II_2009_2010.csv.xz"
LINES = 30_000
SUPPORT = 0.02  # postage alone is in 2.6% of these sales invoices: frequent, were it mined
INT, DECIMAL = re.compile(r"^[+-]?\d{1,9}$"), re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The header and the first LINES data lines, as the export has them (UTF-8, CRLF-free)."""
    if not SOURCE.exists():
        pytest.fail(f"{SOURCE} is missing: the real data set ships in shared/data")
    with lzma.open(SOURCE, "rt", encoding="utf-8", newline="") as fh:
        text = "".join(itertools.islice(fh, LINES + 1))
    path = tmp_path_factory.mktemp("uci") / "online_retail_II_head.csv"
    path.write_text(text, encoding="utf-8")
    header, *rows = list(csv.reader(io.StringIO(text)))
    assert header == ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]
    return path, rows


def _sale_product(row, services: set[str], pattern: re.Pattern) -> bool:
    """A line that clean keeps as a sale (the rules of clean.py, written again here) and that
    is a product, not a service line."""
    invoice, code, _, qty, when, price = (x.strip() for x in row[:6])
    if not invoice or not code or invoice.upper().startswith("C"):
        return False
    try:
        year_ok = 1990 <= datetime.strptime(when, "%Y-%m-%d %H:%M:%S").year <= 2100
    except ValueError:
        return False
    if not (year_ok and INT.match(qty) and DECIMAL.match(price)):
        return False
    if not (0 < int(qty) <= 100_000 and 0 <= float(price) <= 10_000):
        return False
    return code.upper() not in services and not pattern.search(code.upper())


@pytest.fixture(scope="module")
def mined(spark, cfg, raw, tmp_path_factory):
    from lakemine.io.lake import Lake

    path, _ = raw
    lake = Lake.at(spark, str(tmp_path_factory.mktemp("uci-lake") / "lake"))
    lake_cfg = cfg.with_lake(lake.root)
    ingested = ingest_files(lake, lake_cfg, str(path))
    cleaned = clean_lake(lake, lake_cfg)
    run_features(lake, lake_cfg)
    fpgrowth.run(lake, lake_cfg, fpgrowth.MiningParams.from_config(lake_cfg, min_support=SUPPORT))
    return lake, lake_cfg, ingested, cleaned


def test_every_line_is_accounted_for_and_duplicates_match_the_raw_file(mined, raw):
    lake, _, ingested, cleaned = mined
    _, rows = raw
    bronze = lake.read_table(schemas.BRONZE_TRANSACTIONS).count()
    assert bronze + lake.read_table(schemas.BRONZE_QUARANTINE).count() == LINES == ingested.rows_in
    duplicates = sum(n - 1 for n in Counter(tuple(r) for r in rows).values())
    assert cleaned.rows_duplicate == duplicates > 0
    silver = lake.read_table(schemas.SILVER_TRANSACTIONS).count()
    assert silver + lake.read_table(schemas.SILVER_QUARANTINE).count() + duplicates == bronze


def test_guest_purchases_are_baskets_and_customer_tables_hold_identified_customers(mined, raw):
    lake, cfg, _, _ = mined
    _, rows = raw
    services = {c.upper() for c in cfg.features.service_codes}
    pattern = re.compile(cfg.features.service_pattern)
    kept = [r for r in rows if _sale_product(r, services, pattern)]
    named = {r[0].strip().upper() for r in kept if r[6].strip()}
    guests = {r[0].strip().upper() for r in kept if not r[6].strip()} - named
    baskets = lake.read_table(schemas.GOLD_BASKETS)
    got_guests = {r["basket_id"] for r in baskets.where(F.col("customer_id").isNull()).collect()}
    assert got_guests == guests and len(guests) > 100
    assert baskets.count() == len(named | guests)
    assert lake.read_table(schemas.SILVER_TRANSACTIONS).where(F.col("customer_id").isNull()).count() > 0

    features = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES)
    customers = {re.sub(r"\.0+$", "", r[6].strip()) for r in kept if r[6].strip()}
    assert {r["customer_id"] for r in features.select("customer_id").collect()} == customers
    assert lake.read_table(schemas.GOLD_LABELS).where(F.col("customer_id").isNull()).count() == 0


def test_service_codes_stay_in_silver_but_out_of_baskets_and_rules(mined, raw):
    lake, cfg, _, _ = mined
    _, rows = raw
    services = {c.upper() for c in cfg.features.service_codes}
    pattern = re.compile(cfg.features.service_pattern)

    def service(code: str) -> bool:
        return code.upper() in services or bool(pattern.search(code.upper()))

    # the raw file has them, postage often enough to be a frequent item were it mined
    sales = {}
    for r in rows:
        if not r[0].upper().startswith("C"):
            sales.setdefault(r[0], set()).add(r[1].strip().upper())
    assert sum("POST" in items for items in sales.values()) / len(sales) > SUPPORT
    silver_codes = {r["stock_code"] for r in lake.read_table(schemas.SILVER_TRANSACTIONS).select("stock_code").distinct().collect()}
    assert {"POST", "DOT", "M"} <= silver_codes

    items = {i for r in lake.read_table(schemas.GOLD_BASKETS).select("items").collect() for i in r["items"]}
    assert items and not [i for i in items if service(i)]
    mined_items = {i for r in lake.read_table(schemas.GOLD_FREQUENT_ITEMSETS).select("items").collect() for i in r["items"]}
    rules = lake.read_table(schemas.GOLD_ASSOCIATION_RULES).collect()
    in_rules = {i for r in rules for i in r["antecedent"] + r["consequent"]}
    assert mined_items and rules
    assert not [i for i in mined_items | in_rules if service(i)]


def test_the_latin1_distribution_cleans_to_the_same_silver_as_the_utf8_export(spark, cfg, raw, tmp_path):
    """UCI Online Retail as commonly distributed: Latin-1 bytes and `M/D/YYYY H:MM` dates. The
    built-in profile reads it into the same silver rows as the UTF-8 export, '£' included. The
    lines: the first 3,000 plus every line of the year with a non-ASCII character (47, from
    line 31,080 on)."""
    from pyspark.testing import assertDataFrameEqual

    from lakemine.io.lake import Lake

    _, rows = raw
    with lzma.open(SOURCE, "rt", encoding="utf-8", newline="") as fh:
        accented = [r for r in csv.reader(fh) if any(ord(c) > 127 for c in "".join(r))]
    assert len(accented) == 47 and any("£" in r[2] for r in accented)
    sample = rows[:3000] + accented
    header = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]

    def export(name: str, encoding: str, us_dates: bool) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(header)
        for r in sample:
            when = datetime.strptime(r[4], "%Y-%m-%d %H:%M:%S")
            shown = f"{when.month}/{when.day}/{when.year} {when.hour}:{when.minute:02d}" if us_dates else r[4]
            writer.writerow([*r[:4], shown, *r[5:]])
        path = tmp_path / name
        path.write_bytes(out.getvalue().encode(encoding))
        return str(path)

    columns = ["invoice_no", "stock_code", "description", "quantity", "invoice_ts", "unit_price", "customer_id", "country", "_line"]
    silvers = []
    for name, encoding, us_dates in (("utf8.csv", "utf-8", False), ("Online Retail.csv", "latin-1", True)):
        lake = Lake.at(spark, str(tmp_path / name.replace(" ", "_").replace(".csv", "")))
        lake_cfg = cfg.with_lake(lake.root)
        ingest_files(lake, lake_cfg, export(name, encoding, us_dates))
        clean_lake(lake, lake_cfg)
        assert not lake.exists(schemas.BRONZE_QUARANTINE) or lake.read_table(schemas.BRONZE_QUARANTINE).count() == 0
        silvers.append(lake.read_table(schemas.SILVER_TRANSACTIONS).select(*columns))
    assertDataFrameEqual(silvers[1], silvers[0])
    pounds = silvers[1].where(F.col("description").contains("£")).count()
    assert pounds == sum("£" in r[2] for r in accented) > 0
