"""Population stability index (PSI) of features between a reference and a new population.

Bins are the reference's quantiles (so each reference bin holds about 1/bins of it);
PSI = sum over bins of (actual - expected) * ln(actual / expected), with empty bins floored
at a small share. Rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a shift worth a look.

What is compared, so that a stable population raises no warning:
- the active customers only (a sale in the trailing `features.window_days`), on both sides: the
  featured customers include everyone who ever bought, and the lapsed ones pile up with time;
- warnings come from WATCHED features only: recency, the trailing-window totals, and per-basket
  or per-line ratios. The lifetime totals and the age-like features (INFO) grow with the
  customers' age and with the length of the data, so their PSI is reported (status "info"
  above the threshold) but never warns.
"""

from __future__ import annotations

import math

import pyspark.sql.functions as F
from pyspark.sql import DataFrame

FLOOR = 1e-4
WATCHED = ("recency_days", "recent_frequency", "recent_monetary", "mean_basket_size", "mean_basket_value",
           "return_rate", "top_category_share")
INFO = ("frequency", "monetary", "distinct_items", "tenure_days", "mean_days_between")


def active(features: DataFrame, window_days: int) -> DataFrame:
    """The customers with a sale in the trailing `window_days` of their `as_of`."""
    return features.where(F.col("recency_days") < window_days)


def reference(rows: DataFrame, bins: int, window_days: int) -> dict:
    """The drift reference of a model's training rows (customer features): the active
    customers' bin edges and shares per feature, and what `status` needs to read them."""
    population = active(rows, window_days)
    features = [f for f in WATCHED + INFO if f in rows.columns]
    edges = quantile_edges(population, features, bins)
    expected, n = proportions(population, edges)
    # a feature with no value in the reference (no active customer, or a column older
    # snapshots lack) has nothing to compare against: left out rather than always "drifting"
    kept = [f for f in features if sum(expected[f]) > 0]
    edges, expected = {f: edges[f] for f in kept}, {f: expected[f] for f in kept}
    return {"bins": bins, "edges": edges, "expected": expected, "population": "active", "window_days": window_days,
            "rows": n, "watched": [f for f in WATCHED if f in kept]}


def status(feature: str, value: float, warn_psi: float, reference: dict) -> str:
    """"ok" at or below `warn_psi`; above it "warn" for a watched feature, "info" for the
    others. A reference from before watched features (no "watched") warns on every feature."""
    if value <= warn_psi:
        return "ok"
    watched = reference.get("watched")
    return "warn" if watched is None or feature in watched else "info"


def quantile_edges(df: DataFrame, features: tuple[str, ...] | list[str], bins: int) -> dict[str, list[float]]:
    """Inner bin edges per feature: the distinct reference quantiles 1/bins ... (bins-1)/bins."""
    probs = [i / bins for i in range(1, bins)]
    quantiles = df.approxQuantile(list(features), probs, 0.0001)
    return {f: sorted(set(float(q) for q in qs)) for f, qs in zip(features, quantiles)}


def _bin(column: str, edges: list[float]):
    """Bin index 0..len(edges): the number of edges the value lies above."""
    x = F.col(column).cast("double")
    return sum((x > F.lit(e)).cast("int") for e in edges) if edges else F.lit(0)


def proportions(df: DataFrame, edges: dict[str, list[float]]) -> tuple[dict[str, list[float]], int]:
    """Share of non-null rows in each bin, per feature, and the number of rows."""
    exprs = []
    for feature, e in edges.items():
        b = _bin(feature, e)
        exprs += [F.count(F.when(F.col(feature).isNotNull() & (b == i), 1)).alias(f"{feature}__{i}")
                  for i in range(len(e) + 1)]
    row = df.agg(F.count(F.lit(1)).alias("__n"), *exprs).first()
    out = {}
    for feature, e in edges.items():
        counts = [row[f"{feature}__{i}"] for i in range(len(e) + 1)]
        total = sum(counts)
        out[feature] = [c / total if total else 0.0 for c in counts]
    return out, int(row["__n"])


def psi(expected: list[float], actual: list[float]) -> float:
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} expected bins but {len(actual)} actual")
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e, FLOOR), max(a, FLOOR)
        total += (a - e) * math.log(a / e)
    return total
