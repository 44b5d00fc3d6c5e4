from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pyspark.sql.functions as F

from lakemine.io import schemas
from lakemine.learning import forecast
from lakemine.learning.forecast import ForecastParams

START = date(2021, 1, 6)  # a Wednesday; the series' weeks start on Monday 2021-01-04
WEEKS = 156


def silver_rows(series: dict[str, list[float]], extra: list[tuple] = ()) -> list[tuple]:
    """One line per item and week (on the week's Wednesday) with the week's units."""
    rows = []
    for code, units in series.items():
        for w, q in enumerate(units):
            if q > 0:
                day = START + timedelta(weeks=w)
                rows.append((f"{code}-{w}", code, f"item {code}", int(q), datetime(day.year, day.month, day.day, 10),
                             day, 1.0, float(q), f"c{w % 7}", "UK", False))
    return rows + list(extra)


def write_silver(lake, rows):
    columns = [f.name for f in schemas.SILVER_SCHEMA.fields][:11]
    df = lake.spark.createDataFrame(rows, schemas.SILVER_SCHEMA.__class__(schemas.SILVER_SCHEMA.fields[:11]))
    full = df.select(*columns, *[F.lit(None).cast(f.dataType).alias(f.name) for f in schemas.SILVER_SCHEMA.fields[11:]])
    lake.overwrite(full, schemas.SILVER_TRANSACTIONS, partition_by=("invoice_date",))


def test_forecasts_beat_naive_and_seasonal_naive_on_planted_seasonal_series(lake, lake_cfg):
    """Four items with a 13-week season, a trend and noise over three years, one flat noisy item,
    and postage (a service code) and returns that must not count as demand."""
    t = np.arange(WEEKS)
    series = {}
    for i, code in enumerate(("S1", "S2", "S3", "S4")):
        rng = np.random.default_rng(i)
        series[code] = np.maximum(0, 100 + 40 * np.sin(2 * np.pi * (t + 3 * i) / 13) + 0.5 * t
                                  + rng.normal(0, 10, WEEKS)).round().tolist()
    series["N"] = np.random.default_rng(9).poisson(30, WEEKS).astype(float).tolist()
    series["POST"] = [500.0] * WEEKS
    last_day = START + timedelta(weeks=WEEKS - 1)
    ret = ("R-1", "S1", "item S1", 10_000, datetime(2021, 3, 3, 9), date(2021, 3, 3), 1.0, 10_000.0, "c1", "UK", True)
    # a partial week after the last complete one: on Thursday as_of, that week is not history
    partial = ("P-1", "S1", "item S1", 5, datetime(2024, 1, 4, 9), last_day + timedelta(days=8), 1.0, 5.0, "c1", "UK", False)
    write_silver(lake, silver_rows(series, [ret, partial]))
    as_of = last_day + timedelta(days=8)  # Thursday of the week after the last complete one
    assert as_of.weekday() == 3
    p = ForecastParams.from_config(lake_cfg, as_of=as_of, volume_share=1.0, max_items=10, horizon_weeks=6,
                                   backtest_weeks=8, season_weeks=13, window_weeks=0)
    run = forecast.run(lake, lake_cfg, p)

    rows = lake.read_table(schemas.GOLD_DEMAND_FORECAST).collect()
    assert sorted({r["stock_code"] for r in rows}) == ["N", "S1", "S2", "S3", "S4"]
    first = date(2024, 1, 1)  # the Monday after the last complete week (2023-12-25 to 2023-12-31)
    assert forecast.last_complete_week(as_of) == first - timedelta(weeks=1)
    for code in ("N", "S1", "S2", "S3", "S4"):
        mine = sorted((r for r in rows if r["stock_code"] == code), key=lambda r: r["week_start"])
        assert [r["week_start"] for r in mine] == [first + timedelta(weeks=w) for w in range(6)]
        assert all(0 <= r["lower"] <= r["forecast"] <= r["upper"] and r["interval"] == 0.8 for r in mine)
        if code.startswith("S"):
            assert mine[0]["model"].endswith(",A)"), mine[0]["model"]  # a seasonal model was chosen
    by = {r["method"]: r for r in run.result}
    assert by["ets"]["items"] == 5
    assert by["ets"]["mean_mase"] < by["seasonal naive"]["mean_mase"] < by["naive"]["mean_mase"], by
    backtest = lake.read_table(schemas.OPS_FORECAST_BACKTEST)
    assert backtest.count() == 15 and backtest.where(F.col("weeks") != 8).count() == 0

    again = forecast.run(lake, lake_cfg, p)
    assert again.run_id == run.run_id
    assert sorted(map(tuple, lake.read_table(schemas.GOLD_DEMAND_FORECAST).collect())) == sorted(map(tuple, rows))


def test_items_are_the_best_sellers_that_make_the_volume_share(spark, cfg):
    units = {"A": 60.0, "B": 25.0, "C": 10.0, "D": 4.0}
    series = spark.createDataFrame(
        [(code, date(2024, 1, 1) + timedelta(weeks=w), u / 10) for code, u in units.items() for w in range(10)]
        + [("E", date(2024, 3, 4), 1.0)],  # one week of history: too short to forecast
        "stock_code string, week_start date, units double")

    def chosen(**kw):
        p = ForecastParams.from_config(cfg, **{"max_items": 10, "min_weeks": 8, **kw})
        return [r["stock_code"] for r in forecast.top_items(series, p).orderBy(F.desc("units")).collect()]

    assert chosen(volume_share=0.5) == ["A"]  # A alone makes more than half
    assert chosen(volume_share=0.7) == ["A", "B"]  # B crosses 70%
    assert chosen(volume_share=1.0) == ["A", "B", "C", "D"]  # E has too little history
    assert chosen(volume_share=1.0, max_items=2) == ["A", "B"]
