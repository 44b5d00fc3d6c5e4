"""Population stability index (PSI) of features between a reference and a new population.

Bins are the reference's quantiles (so each reference bin holds about 1/bins of it);
PSI = sum over bins of (actual - expected) * ln(actual / expected), with empty bins floored
at a small share. Rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a shift worth a look.
"""

from __future__ import annotations

import math

import pyspark.sql.functions as F
from pyspark.sql import DataFrame

FLOOR = 1e-4


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
