"""`lakemine forecast`: weekly demand per item into gold/demand_forecast, backtested.

**Series.** Units sold per item per week (weeks start on Monday; sales lines of silver, service
lines left out as the features stage leaves them out, returns not netted: demand is what was
ordered). The history ends with the last complete week on or before as_of and starts with the
item's first sale in the last `window_weeks` weeks (0: all); weeks without a sale are 0.

**Items.** The best sellers by units over that history, as many as make `volume_share` of all
units, at most `max_items`, each with at least `min_weeks` weeks of history.

**Model.** Per item, in parallel (`applyInPandas`, one item per call), statsmodels' ETS
(`ETSModel`, additive errors): simple exponential smoothing and a damped additive trend, each
also with additive seasonality of `season_weeks` when the history holds two seasons; the one
with the lowest AICc is kept. Forecasts for `horizon_weeks` weeks with the model's
`interval` prediction interval, clipped at 0 units.

**Backtest** (ops/forecast_backtest). The last `backtest_weeks` weeks are hidden, the model is
chosen and fitted again on the weeks before, and its forecasts are compared with those of two
baselines on the same weeks: naive (the last week's units again) and seasonal naive (the units
of the same week a season earlier, when the history before the backtest holds a season).
Per item and method: MAE, MASE (MAE over the in-sample MAE of the one-week naive forecast;
undefined for an item whose history never changes) and sMAPE (mean 2|F - A| / (|F| + |A|),
0 where both are 0).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame, Window

from lakemine.core.config import Config, ForecastConfig, StageParams
from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, deterministic_run_id, record_run
from lakemine.stages.features import product_lines

log = logging.getLogger(__name__)

STAGE = "forecast"
ETS, NAIVE, SEASONAL_NAIVE = "ets", "naive", "seasonal naive"
METHODS = (ETS, NAIVE, SEASONAL_NAIVE)
# what one call of the per-item function returns: forecast rows (kind "forecast") and backtest rows
# (kind "backtest"), split into the two tables by the driver
ITEM_SCHEMA = ("stock_code string, kind string, week_start date, forecast double, lower double, upper double, "
               "model string, method string, weeks int, mae double, mase double, smape double")


@dataclass(frozen=True)
class ForecastParams(ForecastConfig, StageParams):
    """The forecast section of the config and the logical date (None: the latest sale's)."""

    SECTION = "forecast"
    as_of: date | None = None


@dataclass(frozen=True)
class Fitted:
    """A chosen model's name (ETS(error,trend,season)) and its forecasts with interval bounds."""

    model: str
    forecast: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def week_start(d: date) -> date:
    return d - timedelta(days=d.weekday())


def last_complete_week(as_of: date) -> date:
    """The Monday of the last week (Monday to Sunday) that ends on or before as_of."""
    start = week_start(as_of)
    return start if as_of.weekday() == 6 else start - timedelta(weeks=1)


def _candidates(n: int, season: int) -> list[dict]:
    out = [{"trend": None, "damped_trend": False}, {"trend": "add", "damped_trend": True}]
    if season > 1 and n >= 2 * season:
        out += [{**c, "seasonal": "add", "seasonal_periods": season} for c in out]
    return out


def _name(c: dict) -> str:
    trend = "Ad" if c.get("damped_trend") else ("A" if c.get("trend") else "N")
    return f"ETS(A,{trend},{'A' if c.get('seasonal') else 'N'})"


def fit_ets(y: np.ndarray, horizon: int, season: int, interval: float) -> Fitted:
    """The lowest-AICc ETS model of `_candidates` fitted to `y`, forecasting `horizon` steps."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    y = np.asarray(y, dtype=float)
    series = pd.Series(y)  # statsmodels' prediction results need an index
    best, best_aicc = None, math.inf
    for c in _candidates(len(y), season):
        init = "heuristic" if c.get("seasonal") else "estimated"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fitted = ETSModel(series, error="add", initialization_method=init, **c).fit(disp=False, maxiter=200)
                aicc = fitted.aicc
        except (ValueError, np.linalg.LinAlgError) as e:  # too short for the model, singular fit
            log.debug("%s not fitted: %s", _name(c), e)
            continue
        if np.isfinite(aicc) and aicc < best_aicc:
            best, best_aicc, best_c = fitted, aicc, c
    if best is None:  # a series no model fits (constant, all zero): its level
        level = np.full(horizon, float(y[-1]) if len(y) else 0.0)
        return Fitted("level", level, level.copy(), level.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = best.get_prediction(start=len(y), end=len(y) + horizon - 1).summary_frame(alpha=1 - interval)
    clip = lambda a: np.clip(np.asarray(a, dtype=float), 0.0, None)  # noqa: E731
    return Fitted(_name(best_c), clip(frame["mean"]), clip(frame["pi_lower"]), clip(frame["pi_upper"]))


def naive(train: np.ndarray, horizon: int) -> np.ndarray:
    return np.full(horizon, float(train[-1]))


def seasonal_naive(train: np.ndarray, horizon: int, season: int) -> np.ndarray | None:
    """y[t - season] for each forecast week (the last season repeated); None without a season."""
    if season < 1 or len(train) < season:
        return None
    last = np.asarray(train[-season:], dtype=float)
    return np.resize(last, horizon)


def errors(actual: np.ndarray, predicted: np.ndarray, train: np.ndarray) -> dict:
    """MAE, MASE (scaled by the in-sample one-step naive MAE; None when that is 0) and sMAPE."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    mae = float(np.mean(np.abs(predicted - actual)))
    scale = float(np.mean(np.abs(np.diff(train)))) if len(train) > 1 else 0.0
    denom = np.abs(predicted) + np.abs(actual)
    smape = float(np.mean(np.where(denom > 0, 2 * np.abs(predicted - actual) / np.where(denom > 0, denom, 1), 0.0)))
    return {"mae": mae, "mase": mae / scale if scale > 0 else None, "smape": smape}


def backtest(y: np.ndarray, weeks: int, season: int, interval: float) -> dict[str, dict | None]:
    """Each method's errors on the last `weeks` of `y`, fitted on the weeks before (None: the
    method needs more history)."""
    train, actual = np.asarray(y[:-weeks], dtype=float), np.asarray(y[-weeks:], dtype=float)
    out: dict[str, dict | None] = {}
    out[ETS] = errors(actual, fit_ets(train, weeks, season, interval).forecast, train)
    out[NAIVE] = errors(actual, naive(train, weeks), train)
    snaive = seasonal_naive(train, weeks, season)
    out[SEASONAL_NAIVE] = None if snaive is None else errors(actual, snaive, train)
    return out


def forecast_item(pdf: pd.DataFrame, p: ForecastParams, first_forecast_week: date) -> pd.DataFrame:
    """applyInPandas function body: one item's weekly series (stock_code, week_start, units;
    every week present) into its forecast rows and its backtest rows (ITEM_SCHEMA)."""
    pdf = pdf.sort_values("week_start")
    code = pdf["stock_code"].iloc[0]
    y = pdf["units"].to_numpy(dtype=float)
    fitted = fit_ets(y, p.horizon_weeks, p.season_weeks, p.interval)
    weeks = [first_forecast_week + timedelta(weeks=i) for i in range(p.horizon_weeks)]
    rows = [{"stock_code": code, "kind": "forecast", "week_start": w, "forecast": f, "lower": lo, "upper": hi,
             "model": fitted.model} for w, f, lo, hi in zip(weeks, fitted.forecast, fitted.lower, fitted.upper)]
    if len(y) >= p.backtest_weeks + p.min_weeks:
        for method, e in backtest(y, p.backtest_weeks, p.season_weeks, p.interval).items():
            if e is not None:
                rows.append({"stock_code": code, "kind": "backtest", "method": method, "weeks": p.backtest_weeks, **e})
    out = pd.DataFrame(rows, columns=[c.split()[0] for c in ITEM_SCHEMA.split(", ")])
    out["weeks"] = out["weeks"].astype("Int32")
    return out


def weekly_units(silver: DataFrame, p: ForecastParams, as_of: date, service_codes: tuple[str, ...] = (),
                 service_pattern: str = "") -> tuple[DataFrame, date]:
    """(stock_code, week_start, units: every week from the item's first sale in the window to
    the last complete week, zeros included; service lines left out) and that last week."""
    last = last_complete_week(as_of)
    week = F.date_trunc("week", F.col("invoice_date")).cast("date")
    lines = product_lines(silver, service_codes, service_pattern).where(
        ~F.col("is_return") & (F.col("quantity") > 0) & (F.col("invoice_date") <= F.lit(last + timedelta(days=6))))
    if p.window_weeks:
        lines = lines.where(F.col("invoice_date") >= F.lit(last - timedelta(weeks=p.window_weeks - 1)))
    sold = lines.groupBy("stock_code", week.alias("week_start")).agg(F.sum("quantity").cast("double").alias("units"))
    grid = sold.groupBy("stock_code").agg(F.min("week_start").alias("_first")).select(
        "stock_code", F.explode(F.sequence("_first", F.lit(last), F.expr("interval 1 week"))).alias("week_start"))
    series = grid.join(sold, ["stock_code", "week_start"], "left").select(
        "stock_code", "week_start", F.coalesce("units", F.lit(0.0)).alias("units"))
    return series, last


def top_items(series: DataFrame, p: ForecastParams) -> DataFrame:
    """stock_code, units, weeks: the best sellers that make `volume_share` of the units (the item
    that crosses the share included), at most `max_items`, each with `min_weeks` weeks."""
    per_item = series.groupBy("stock_code").agg(F.sum("units").alias("units"), F.count(F.lit(1)).alias("weeks"))
    order = Window.orderBy(F.desc("units"), "stock_code")
    running = per_item.withColumn("_before", F.coalesce(F.sum("units").over(
        order.rowsBetween(Window.unboundedPreceding, -1)), F.lit(0.0))).withColumn("_rank", F.row_number().over(order))
    total = per_item.agg(F.sum("units")).first()[0] or 0.0
    return running.where((F.col("_before") < F.lit(p.volume_share * total)) & (F.col("_rank") <= p.max_items)
                         & (F.col("weeks") >= p.min_weeks)).select("stock_code", "units", "weeks")


def run(lake: Lake, cfg: Config, p: ForecastParams) -> Run:
    """Forecast the best sellers' weekly units after as_of's last complete week, backtest them;
    both tables replace that as_of. `Run.result`: the backtest's mean MASE per method."""
    if not lake.exists(schemas.SILVER_TRANSACTIONS):
        raise StageError(f"table {schemas.SILVER_TRANSACTIONS} does not exist in lake {lake.root}: run `lakemine clean` first")
    version = lake.table_version(schemas.SILVER_TRANSACTIONS)
    silver = lake.read_table(schemas.SILVER_TRANSACTIONS, version)
    as_of = p.as_of or silver.agg(F.max("invoice_date")).first()[0]
    if as_of is None:
        raise StageError(f"table {schemas.SILVER_TRANSACTIONS} has no rows: nothing to forecast")
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items() if k != "as_of"}
    inputs = {schemas.SILVER_TRANSACTIONS: version}
    with record_run(lake, STAGE, as_of, params) as run:
        run.run_id = deterministic_run_id(STAGE, as_of, params, inputs)
        run.inputs.update(inputs)
        series, last = weekly_units(silver, p, as_of, cfg.features.service_codes, cfg.features.service_pattern)
        series = series.cache()
        try:
            items = top_items(series, p).cache()
            n_items = items.count()
            run.rows_in = n_items
            first_forecast = last + timedelta(weeks=1)
            chosen = series.join(items.select("stock_code"), "stock_code")
            # one item per task where the items allow it: the fits are the work
            per_item = chosen.repartition(max(1, min(n_items, 4 * lake.spark.sparkContext.defaultParallelism)),
                                          "stock_code")
            out = per_item.groupBy("stock_code").applyInPandas(
                lambda pdf: forecast_item(pdf, p, first_forecast), ITEM_SCHEMA).cache()
            try:
                stamp = [F.lit(as_of).alias("as_of"), F.lit(run.run_id).alias("run_id")]
                forecasts = out.where(F.col("kind") == "forecast").select(
                    "stock_code", "week_start", "forecast", "lower", "upper", "model",
                    F.lit(p.interval).alias("interval"), *stamp)
                run.outputs[schemas.GOLD_DEMAND_FORECAST] = lake.overwrite_as_of(
                    forecasts, schemas.GOLD_DEMAND_FORECAST, as_of)
                run.rows_out = lake.rows_written(schemas.GOLD_DEMAND_FORECAST, run.outputs[schemas.GOLD_DEMAND_FORECAST])
                tested = out.where(F.col("kind") == "backtest").select(
                    F.lit(as_of).alias("as_of"), "stock_code", "method", "weeks", "mae", "mase", "smape",
                    F.lit(run.run_id).alias("run_id"))
                run.outputs[schemas.OPS_FORECAST_BACKTEST] = lake.overwrite_as_of(
                    tested, schemas.OPS_FORECAST_BACKTEST, as_of)
                run.result = summarize_backtest(lake.read_table(schemas.OPS_FORECAST_BACKTEST).where(
                    F.col("as_of") == F.lit(as_of)))
            finally:
                out.unpersist()
                items.unpersist()
        finally:
            series.unpersist()
        run.message = (f"{n_items:,} items, {p.horizon_weeks} weeks from {first_forecast} "
                       f"({p.interval:.0%} intervals)" + backtest_line(run.result, p.backtest_weeks))
    return run


def summarize_backtest(backtest_rows: DataFrame) -> list[dict]:
    """Per method: items, mean and median MASE and mean sMAPE, over the items every method was
    scored on (so the methods are compared on the same items)."""
    defined = backtest_rows.where(F.col("mase").isNotNull())
    methods = [r["method"] for r in defined.select("method").distinct().collect()]
    common = defined.groupBy("stock_code").agg(F.count(F.lit(1)).alias("_n")).where(F.col("_n") == len(methods))
    rows = (defined.join(common.select("stock_code"), "stock_code")
            .groupBy("method").agg(F.count(F.lit(1)).alias("items"), F.avg("mase").alias("mean_mase"),
                                   F.percentile_approx("mase", 0.5).alias("median_mase"),
                                   F.avg("smape").alias("mean_smape"))
            .collect())
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(({"method": r["method"], "items": int(r["items"]), "mean_mase": float(r["mean_mase"]),
                    "median_mase": float(r["median_mase"]), "mean_smape": float(r["mean_smape"])} for r in rows),
                  key=lambda r: order.get(r["method"], len(order)))


def backtest_line(summary: list[dict] | None, weeks: int) -> str:
    if not summary:
        return "; no backtest (too little history)"
    parts = ", ".join(f"{r['method']} {r['mean_mase']:.3f}" for r in summary)
    return f"; backtest on the last {weeks} weeks, mean MASE over {summary[0]['items']:,} items: {parts}"
