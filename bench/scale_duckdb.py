"""The DuckDB peer of bench/scale.py: what lakemine's ingest, clean and features do, in SQL on
one machine, on the same raw CSV files (issue 17).

* ingest: every field read as text (`all_varchar`), lines with the wrong number of fields
  kept aside by DuckDB's reject tables, repeated headers set apart (blank lines the reader
  skips, uncounted), a 64-bit hash per row; bronze and its quarantine written as Parquet;
* clean: exact duplicates dropped and counted; the same trimming, number and date parsing
  (clean.date_formats, in order), the same reason codes in the same order, returns marked;
  silver and its quarantine as Parquet;
* features: service lines dropped, the product family (the description's last word), baskets,
  RFM and behaviour features for the latest date and the training snapshots lakemine builds
  (same horizon, count and spacing), z-scores (log1p where lakemine logs), churn labels.

    .venv/bin/python bench/scale_duckdb.py --input RAW --work DIR --threads 2 --result FILE

Progress lines on stderr have lakemine's format, so bench/e2e.run_tracked attributes memory
to stages; --result gets seconds per stage and the counts (JSON).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

T0 = time.monotonic()
sys.path.insert(0, str(Path(__file__).resolve().parent))

import duckdb  # noqa: E402
from peer_common import FEATURES, LOG_FEATURES, RAW_COLUMNS, RAW_COLUMNS_II, TOP_CATEGORIES, strptime_format  # noqa: E402

from lakemine.core.config import load_config  # noqa: E402


def step(stage: str, text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {stage:<8} {text}", file=sys.stderr, flush=True)


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ingest(con, files: list[str], out: Path) -> dict:
    con.execute(f"""CREATE TABLE raw AS SELECT * FROM read_csv({[str(f) for f in files]}, all_varchar = true,
                    header = true, filename = true, store_rejects = true)""")
    cols = [c for c in con.sql("SELECT * FROM raw LIMIT 0").columns if c != "filename"]
    layout = RAW_COLUMNS if sorted(cols) == sorted(RAW_COLUMNS) else RAW_COLUMNS_II
    if sorted(cols) != sorted(layout):
        raise SystemExit(f"columns {cols} match neither UCI layout")
    named = ", ".join(f"{q(c)} AS {q(n)}" for c, n in zip(layout, RAW_COLUMNS))
    blank = " AND ".join(f"coalesce(trim({q(c)}), '') = ''" for c in layout)
    header = " AND ".join(f"{q(c)} = {lit(c)}" for c in layout)
    con.execute(f"""CREATE TABLE marked AS SELECT {named}, filename AS _source_file,
                    CASE WHEN {blank} THEN 'blank_line' WHEN {header} THEN 'repeated_header' END AS reason,
                    hash({", ".join(q(c) for c in layout)}) AS _row_hash FROM raw""")
    con.execute("DROP TABLE raw")
    con.execute("CREATE TABLE bronze AS SELECT * EXCLUDE (reason) FROM marked WHERE reason IS NULL")
    # one row per error, several per line; blank lines the reader skips without a trace
    rejected = con.execute("SELECT count(DISTINCT (scan_id, file_id, line)) FROM reject_errors").fetchone()[0]
    con.execute(f"COPY (SELECT * FROM reject_errors) TO {lit(str(out / 'bronze_rejects.parquet'))} (FORMAT parquet)")
    reasons = dict(con.execute("SELECT reason, count(*) FROM marked WHERE reason IS NOT NULL GROUP BY 1").fetchall())
    con.execute(f"COPY bronze TO {lit(str(out / 'bronze_transactions.parquet'))} (FORMAT parquet)")
    con.execute(f"COPY (SELECT * FROM marked WHERE reason IS NOT NULL) TO {lit(str(out / 'bronze_quarantine.parquet'))} "
                "(FORMAT parquet)")
    (rows_out,) = con.execute("SELECT count(*) FROM bronze").fetchone()
    (flagged,) = con.execute("SELECT count(*) FROM marked WHERE reason IS NOT NULL").fetchone()
    con.execute("DROP TABLE marked")
    return {"rows_in": rows_out + flagged + rejected, "rows_out": rows_out, "rows_quarantined": flagged + rejected,
            "quarantine_reasons": {**reasons, "bad_field_count": rejected}}


def clean(con, cfg, out: Path) -> dict:
    c = cfg.clean

    def text(col: str) -> str:
        return f"nullif(trim({col}, ' '), '')"

    parsed = []
    for fmt in c.date_formats:
        py = strptime_format(fmt)
        one = f"try_strptime(date_text, {lit(py)})"
        parsed.append(f"timezone('UTC', {one})" if "%z" in py else one)
    checks = [("missing_invoice", "invoice_no IS NULL"), ("missing_stock_code", "stock_code IS NULL"),
              ("bad_date", "ts IS NULL"), ("bad_number", "qn IS NULL OR price IS NULL")]
    if c.missing_customer == "quarantine":
        checks.append(("missing_customer", "customer_id IS NULL"))
    checks += [("negative_quantity", "NOT is_return AND qn < 0"), ("zero_quantity", "qn = 0"),
               ("bad_return", "is_return AND qn > 0"), ("bad_price", "price < 0")]
    if c.outlier_policy != "cap":
        checks += [("extreme_price", f"price > {c.max_unit_price}"), ("extreme_quantity", f"abs(qn) > {c.max_quantity}")]
    reason = "CASE " + " ".join(f"WHEN {cond} THEN {lit(code)}" for code, cond in checks) + " END"
    price = f"least(price, {c.max_unit_price})" if c.outlier_policy == "cap" else "price"
    qty = f"greatest(least(qn, {c.max_quantity}), -{c.max_quantity})" if c.outlier_policy == "cap" else "qn"
    con.execute("CREATE TABLE dedup AS SELECT DISTINCT " + ", ".join(q(x) for x in RAW_COLUMNS) + " FROM bronze")
    (rows_in,) = con.execute("SELECT count(*) FROM bronze").fetchone()
    con.execute("DROP TABLE bronze")
    con.execute(f"""CREATE TABLE typed AS
        WITH t AS (SELECT *, upper({text('InvoiceNo')}) AS invoice_no, upper({text('StockCode')}) AS stock_code,
                          {text('Description')} AS description, try_cast({text('Quantity')} AS DOUBLE) AS qd,
                          try_cast({text('UnitPrice')} AS DOUBLE) AS pd, {text('InvoiceDate')} AS date_text,
                          regexp_replace({text('CustomerID')}, '\\.0+$', '') AS customer_id, {text('Country')} AS country
                   FROM dedup),
             u AS (SELECT *, coalesce(starts_with(invoice_no, 'C'), false) AS is_return,
                          CASE WHEN qd = floor(qd) AND abs(qd) <= 2147483647 THEN qd END AS qn,
                          CASE WHEN isfinite(pd) THEN pd END AS price,
                          coalesce({", ".join(parsed)}) AS ts0 FROM t),
             v AS (SELECT *, CASE WHEN year(ts0) BETWEEN 1990 AND 2100 THEN ts0 END AS ts FROM u)
        SELECT *, {reason} AS reason FROM v""")
    con.execute("DROP TABLE dedup")
    con.execute(f"""CREATE TABLE silver AS SELECT invoice_no, stock_code, description, CAST({qty} AS INTEGER) AS quantity,
                    ts AS invoice_ts, CAST(ts AS DATE) AS invoice_date, {price} AS unit_price,
                    round(CAST({qty} AS INTEGER) * {price}, 2) AS line_amount, customer_id, country, is_return
                    FROM typed WHERE reason IS NULL""")
    con.execute(f"COPY silver TO {lit(str(out / 'silver_transactions.parquet'))} (FORMAT parquet)")
    con.execute(f"COPY (SELECT {', '.join(q(x) for x in RAW_COLUMNS)}, reason FROM typed WHERE reason IS NOT NULL) "
                f"TO {lit(str(out / 'silver_quarantine.parquet'))} (FORMAT parquet)")
    (rows_out,) = con.execute("SELECT count(*) FROM silver").fetchone()
    (quarantined,) = con.execute("SELECT count(*) FROM typed WHERE reason IS NOT NULL").fetchone()
    reasons = dict(con.execute("SELECT reason, count(*) FROM typed WHERE reason IS NOT NULL GROUP BY 1 ORDER BY 1").fetchall())
    (distinct,) = con.execute("SELECT count(*) FROM typed").fetchone()
    con.execute("DROP TABLE typed")
    return {"rows_in": rows_in, "rows_out": rows_out, "rows_quarantined": quarantined, "rows_duplicate": rows_in - distinct,
            "quarantine_reasons": reasons}


def features(con, cfg, out: Path) -> dict:
    fc = cfg.features
    codes = ", ".join(lit(x.upper()) for x in fc.service_codes)
    service = f"upper(stock_code) IN ({codes})" + (
        f" OR regexp_matches(upper(stock_code), {lit(fc.service_pattern)})" if fc.service_pattern else "")
    con.execute(f"""CREATE TABLE s AS SELECT *,
                    upper(coalesce(regexp_extract(trim(description, ' '), '(\\S+)$', 1), '')) AS category
                    FROM silver WHERE NOT ({service})""")
    con.execute(f"""COPY (SELECT invoice_no AS basket_id, min(customer_id) AS customer_id, min(invoice_date) AS invoice_date,
                    list(DISTINCT stock_code ORDER BY stock_code) AS items FROM s WHERE NOT is_return GROUP BY invoice_no)
                    TO {lit(str(out / 'gold_baskets.parquet'))} (FORMAT parquet)""")
    as_of, start = con.execute("SELECT max(invoice_date), min(invoice_date) FROM s").fetchone()
    h, n, spacing = fc.horizon_days, fc.training_snapshots, fc.snapshot_spacing_days
    dates = sorted(d for d in (as_of - timedelta(days=h + i * spacing) for i in range(n)) if d >= start + timedelta(days=spacing))
    dates.append(as_of)
    z = ", ".join(
        f"CASE WHEN stddev_pop({x}) OVER () > 0 THEN ({x} - avg({x}) OVER ()) / stddev_pop({x}) OVER () ELSE 0 END AS z_{f}"
        for f in FEATURES for x in [f"ln(1 + {f})" if f in LOG_FEATURES else f])
    parts = []
    for d in dates:
        day = f"DATE {lit(d.isoformat())}"
        parts.append(f"""(WITH hist AS (SELECT * FROM s WHERE invoice_date <= {day} AND customer_id IS NOT NULL),
          sales AS (SELECT * FROM hist WHERE NOT is_return),
          inv AS (SELECT customer_id, invoice_no, min(invoice_date) AS day, count(DISTINCT stock_code) AS n_items,
                         sum(line_amount) AS value FROM sales GROUP BY ALL),
          per AS (SELECT customer_id, max(day) AS last_day, min(day) AS first_day, count(*) AS frequency,
                         avg(n_items) AS mean_basket_size, avg(value) AS mean_basket_value, sum(value) AS monetary
                  FROM inv GROUP BY customer_id),
          lines AS (SELECT customer_id, count(DISTINCT stock_code) AS distinct_items, count(*) AS sale_lines
                    FROM sales GROUP BY customer_id),
          rets AS (SELECT customer_id, count(*) AS return_lines FROM hist WHERE is_return GROUP BY customer_id),
          top AS (SELECT category FROM sales GROUP BY category ORDER BY sum(line_amount) DESC, category LIMIT {TOP_CATEGORIES}),
          tops AS (SELECT customer_id, sum(line_amount) AS top_spend FROM sales
                   WHERE category IN (SELECT category FROM top) GROUP BY customer_id),
          f AS (SELECT customer_id, {day} AS as_of, {day} - last_day AS recency_days, frequency,
                       round(monetary, 2) AS monetary, {day} - first_day AS tenure_days, mean_basket_size,
                       mean_basket_value, distinct_items, coalesce(return_lines, 0) / sale_lines AS return_rate,
                       CASE WHEN frequency > 1 THEN (last_day - first_day) / (frequency - 1) ELSE {day} - first_day END
                           AS mean_days_between,
                       CASE WHEN monetary > 0 THEN coalesce(top_spend, 0) / monetary ELSE 0 END AS top_category_share
                FROM per JOIN lines USING (customer_id) LEFT JOIN rets USING (customer_id) LEFT JOIN tops USING (customer_id)),
          bought AS (SELECT DISTINCT customer_id FROM s WHERE NOT is_return AND invoice_date > {day}
                     AND invoice_date <= {day} + INTERVAL {h} DAY)
          SELECT f.*, {z}, CAST(b.customer_id IS NULL AS INTEGER) AS churned,
                 DATE {lit(as_of.isoformat())} >= {day} + INTERVAL {h} DAY AS complete
          FROM f LEFT JOIN bought b USING (customer_id))""")
    con.execute("CREATE TABLE feats AS " + " UNION ALL ".join(parts))
    con.execute(f"COPY feats TO {lit(str(out / 'gold_customer_features.parquet'))} (FORMAT parquet)")
    per_date = con.execute("SELECT CAST(as_of AS VARCHAR), count(*) FROM feats GROUP BY 1 ORDER BY 1").fetchall()
    (baskets,) = con.execute(f"SELECT count(*) FROM read_parquet({lit(str(out / 'gold_baskets.parquet'))})").fetchone()
    return {"baskets": baskets, "customer_features": sum(c for _, c in per_date), "as_of": [d for d, _ in per_date]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="a raw CSV file or a folder of them")
    ap.add_argument("--work", required=True, help="folder for the outputs and DuckDB's spill (replaced)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    cfg = load_config(None)
    out = Path(args.work)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    src = Path(args.input)
    files = sorted(str(p) for p in src.rglob("*.csv")) if src.is_dir() else [str(src)]
    con = duckdb.connect(str(out / "peer.duckdb"))
    con.execute(f"SET threads = {args.threads}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET temp_directory = {lit(str(out / 'spill'))}")
    timings, counts = {}, {}
    for stage, fn, fargs in (("ingest", ingest, (con, files, out)), ("clean", clean, (con, cfg, out)),
                             ("features", features, (con, cfg, out))):
        step(stage, "DuckDB")
        t0 = time.monotonic()
        counts[stage] = fn(*fargs)
        timings[stage] = time.monotonic() - t0
        step(stage, json.dumps(counts[stage], default=str))
    Path(args.result).write_text(json.dumps({"stages": timings, "counts": counts}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
