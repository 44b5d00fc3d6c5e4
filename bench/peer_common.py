"""What the single-node peers of the benchmarks (bench/e2e_peers.py, bench/scale.py) share:
light on purpose (no Spark, torch or pandas import)."""

from __future__ import annotations

import re

# mirrors of lakemine constants (bench/e2e.py asserts they are equal)
RAW_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
RAW_COLUMNS_II = ("Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country")
FEATURES = ("recency_days", "frequency", "monetary", "tenure_days", "mean_basket_size", "mean_basket_value",
            "distinct_items", "return_rate", "mean_days_between", "top_category_share")
LOG_FEATURES = frozenset({"frequency", "monetary", "mean_basket_size", "mean_basket_value", "distinct_items"})
TOP_CATEGORIES = 5


def strptime_format(spark_pattern: str) -> str:
    """A Spark datetime pattern (as in clean.date_formats) as a strptime format (pandas, DuckDB)."""
    tokens = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "M": "%m", "dd": "%d", "d": "%d", "HH": "%H", "H": "%H",
              "mm": "%M", "ss": "%S", "XXX": "%z", "Z": "%z"}
    out = []
    for tok in re.findall(r"'[^']*'|yyyy|yy|MM|M|dd|d|HH|H|mm|ss|XXX|Z|.", spark_pattern):
        out.append(tok.strip("'") if tok.startswith("'") else tokens.get(tok, tok))
    return "".join(out)
