from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyspark.sql.functions as F
from pyspark.testing import assertDataFrameEqual

from conftest import run_features
from lakemine.io import schemas
from lakemine.stages.features import (
    FEATURES,
    FeatureParams,
    build_baskets,
    compute_customer_features,
    compute_labels,
    customer_days,
    features_from_days,
    labels_from_days,
    product_lines,
    standardize,
)

SILVER_DDL = ("invoice_no string, stock_code string, description string, quantity int, invoice_date date, "
              "line_amount double, customer_id string, is_return boolean")
D = dt.date


def silver_df(spark, rows):
    return spark.createDataFrame(rows, SILVER_DDL)


ROWS = [
    # customer A: two invoices, one return
    ("1", "X", "RED MUG", 2, D(2011, 1, 1), 10.0, "A", False),
    ("1", "Y", "BLUE LANTERN", 1, D(2011, 1, 1), 5.0, "A", False),
    ("1", "X", "RED MUG", 1, D(2011, 1, 1), 5.0, "A", False),
    ("2", "X", "RED MUG", 4, D(2011, 1, 11), 20.0, "A", False),
    ("C3", "X", "RED MUG", -1, D(2011, 1, 12), -5.0, "A", True),
    # customer B: one invoice
    ("4", "Z", "GREEN BAG", 3, D(2011, 1, 5), 30.0, "B", False),
    # no customer: basket only
    ("5", "Y", "BLUE LANTERN", 1, D(2011, 1, 6), 5.0, None, False),
]


def test_baskets_are_sales_invoices_with_distinct_sorted_items(spark):
    got = build_baskets(silver_df(spark, ROWS))
    expected = spark.createDataFrame([
        ("1", "A", D(2011, 1, 1), ["X", "Y"]),
        ("2", "A", D(2011, 1, 11), ["X"]),
        ("4", "B", D(2011, 1, 5), ["Z"]),
        ("5", None, D(2011, 1, 6), ["Y"]),
    ], "basket_id string, customer_id string, invoice_date date, items array<string>")
    assertDataFrameEqual(got, expected)


def test_service_lines_leave_baskets_and_features_but_not_silver(spark):
    """Postage, fees and vouchers (the configured codes and pattern, any case) are no products:
    an invoice of service lines only makes no basket, and a customer's spend counts products."""
    p = FeatureParams.from_config(None, as_of=D(2011, 1, 15))
    rows = ROWS + [
        ("1", "POST", "POSTAGE", 1, D(2011, 1, 1), 18.0, "A", False),
        ("6", "post", "POSTAGE", 1, D(2011, 1, 7), 18.0, "B", False),
        ("6", "gift_0001_20", "VOUCHER", 1, D(2011, 1, 7), 20.0, "B", False),
        ("7", "BANK CHARGES", "Bank Charges", 1, D(2011, 1, 8), 15.0, None, False),
    ]
    products = product_lines(silver_df(spark, rows), p.service_codes, p.service_pattern)
    assertDataFrameEqual(products, silver_df(spark, ROWS))
    assertDataFrameEqual(build_baskets(products), build_baskets(silver_df(spark, ROWS)))
    assertDataFrameEqual(compute_customer_features(products, p), compute_customer_features(silver_df(spark, ROWS), p))
    # without the defaults, the same codes are products again
    kept = product_lines(silver_df(spark, rows), ("BANK CHARGES",), "")
    assert sorted(r["stock_code"] for r in kept.where(F.col("invoice_no").isin("1", "6")).collect()) == [
        "POST", "X", "X", "Y", "gift_0001_20", "post"]


def test_customer_features_by_hand(spark):
    got = compute_customer_features(silver_df(spark, ROWS), FeatureParams.from_config(None, as_of=D(2011, 1, 15), top_categories=1))
    expected = spark.createDataFrame([
        # recency, frequency, monetary, tenure, mean basket size, mean value, distinct items,
        # return rate, mean days between, top-category (MUG) share, and over the trailing
        # window (365 days: everything here) frequency and monetary
        ("A", D(2011, 1, 15), 4, 2, 40.0, 14, 1.5, 20.0, 2, 1 / 4, 10.0, 35.0 / 40.0, 2, 40.0),
        ("B", D(2011, 1, 15), 10, 1, 30.0, 10, 1.0, 30.0, 1, 0.0, 10.0, 0.0, 1, 30.0),
    ], "customer_id string, as_of date, recency_days int, frequency long, monetary double, tenure_days int, "
       "mean_basket_size double, mean_basket_value double, distinct_items long, return_rate double, "
       "mean_days_between double, top_category_share double, recent_frequency long, recent_monetary double")
    assertDataFrameEqual(got, expected, rtol=1e-9)
    # a 7-day window, (8 Jan, 15 Jan]: A's second invoice only (its return is no sale), none of B's
    week = compute_customer_features(silver_df(spark, ROWS), FeatureParams.from_config(None, as_of=D(2011, 1, 15), window_days=7))
    assert sorted((r["customer_id"], r["recent_frequency"], r["recent_monetary"]) for r in week.collect()) == [
        ("A", 1, 20.0), ("B", 0, 0.0)]


def test_no_feature_reads_past_as_of(spark):
    as_of = D(2011, 1, 15)
    base = compute_customer_features(silver_df(spark, ROWS), FeatureParams.from_config(None, as_of=as_of))
    future = ROWS + [
        ("9", "W", "GOLD CLOCK", 500, D(2011, 1, 16), 99999.0, "A", False),
        ("C9", "X", "RED MUG", -50, D(2011, 2, 1), -500.0, "B", True),
        ("10", "Q", "NEW THING", 1, D(2012, 1, 1), 1.0, "C", False),
    ]
    later = compute_customer_features(silver_df(spark, future), FeatureParams.from_config(None, as_of=as_of))
    assertDataFrameEqual(later, base)
    z_base, _ = standardize(base)
    z_later, _ = standardize(later)
    assertDataFrameEqual(z_later, z_base)


def test_several_dates_in_one_aggregation_equal_each_date_alone(spark):
    """The stage computes every snapshot date in one aggregation: its rows equal each date's
    features and labels computed alone, the top category chosen per date (BAG leads on 5
    January, MUG by 15 January) and no date reading another's rows."""
    p = FeatureParams.from_config(None, as_of=D(2011, 1, 15), top_categories=1, horizon_days=6)
    silver = silver_df(spark, ROWS)
    days = customer_days(silver)
    dates = [D(2011, 1, 5), D(2011, 1, 11), D(2011, 1, 15)]
    together = features_from_days(days, p, dates)
    alone = [compute_customer_features(silver, dataclasses.replace(p, as_of=d)) for d in dates]
    assertDataFrameEqual(together, alone[0].unionByName(alone[1]).unionByName(alone[2]), rtol=1e-9)
    assert together.where(F.col("as_of") == D(2011, 1, 5)).where("customer_id = 'B'").first()["top_category_share"] == 1.0
    labels = labels_from_days(days, together, p, D(2011, 1, 15), dates)
    expected = [compute_labels(silver, a, dataclasses.replace(p, as_of=d)) for a, d in zip(alone, dates)]
    assertDataFrameEqual(labels, expected[0].unionByName(expected[1]).unionByName(expected[2]))
    # A buys again on 11 January, 6 days after the 5th (its return on the 12th is no purchase)
    assert {(r["as_of"], r["customer_id"]): r["churned"] for r in labels.collect()} == {
        (D(2011, 1, 5), "A"): 0, (D(2011, 1, 5), "B"): 1, (D(2011, 1, 11), "A"): 1, (D(2011, 1, 11), "B"): 1,
        (D(2011, 1, 15), "A"): 1, (D(2011, 1, 15), "B"): 1}


def test_labels_mark_customers_without_purchases_in_the_horizon(spark):
    rows = ROWS + [
        ("11", "X", "RED MUG", 1, D(2011, 2, 20), 5.0, "B", False),   # B buys within 60 days
        ("C12", "X", "RED MUG", -1, D(2011, 2, 1), -5.0, "A", True),  # a return is not a purchase
        ("13", "X", "RED MUG", 1, D(2011, 4, 1), 5.0, "A", False),    # A buys only after the horizon
    ]
    silver = silver_df(spark, rows)
    p = FeatureParams.from_config(None, as_of=D(2011, 1, 15), horizon_days=60)
    feats = compute_customer_features(silver, p)
    got = compute_labels(silver, feats, p)
    expected = spark.createDataFrame([
        ("A", D(2011, 1, 15), 1, 60, True),
        ("B", D(2011, 1, 15), 0, 60, True),
    ], "customer_id string, as_of date, churned int, horizon_days int, complete boolean")
    assertDataFrameEqual(got, expected)
    late = FeatureParams.from_config(None, as_of=D(2011, 3, 15), horizon_days=60)
    assert {r["complete"] for r in compute_labels(silver, compute_customer_features(silver, late), late).collect()} == {False}


def test_standardized_copies_and_scaler_match_numpy(spark):
    rows = [(str(i), "X", "MUG", 1, D(2011, 1, 1 + i % 20), float(1 + i * i), str(i % 7), False) for i in range(40)]
    feats = compute_customer_features(silver_df(spark, rows), FeatureParams.from_config(None, as_of=D(2011, 2, 1)))
    out, scaler = standardize(feats)
    pdf = out.toPandas().sort_values("customer_id")
    params = {r["feature"]: r for r in scaler.collect()}
    for f in ("monetary", "recency_days"):
        x = pdf[f].to_numpy(dtype=float)
        x = np.log1p(x) if f == "monetary" else x
        assert np.isclose(params[f]["mean"], x.mean()) and np.isclose(params[f]["std"], x.std())
        assert np.allclose(pdf[f"z_{f}"], (x - x.mean()) / x.std())
    assert params["monetary"]["transform"] == "log1p_zscore" and params["recency_days"]["transform"] == "zscore"
    assert sorted(params) == sorted(FEATURES)


def test_features_stage_is_idempotent(lake, lake_cfg, spark):
    silver = silver_df(spark, ROWS).withColumn("invoice_ts", F.to_timestamp("invoice_date"))
    lake.overwrite(silver, schemas.SILVER_TRANSACTIONS)
    first = run_features(lake, lake_cfg, D(2011, 1, 15), horizon_days=30)
    tables = (schemas.GOLD_BASKETS, schemas.GOLD_CUSTOMER_FEATURES, schemas.GOLD_FEATURE_SCALER, schemas.GOLD_LABELS)
    before = {t: lake.read_table(t).collect() for t in tables}
    second = run_features(lake, lake_cfg, D(2011, 1, 15), horizon_days=30)
    for t in tables:
        assertDataFrameEqual(lake.read_table(t), before[t])
    assert first.rows_out == second.rows_out == 2
    # another as_of adds its rows and leaves the first date's rows alone
    run_features(lake, lake_cfg, D(2011, 1, 10), horizon_days=30)
    dates = sorted({r["as_of"] for r in lake.read_table(schemas.GOLD_CUSTOMER_FEATURES).collect()})
    assert dates == [D(2011, 1, 10), D(2011, 1, 15)]
