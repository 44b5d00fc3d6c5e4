"""The training set: standardized customer features + churn labels + segment one-hot.

`model_inputs` is shared by training and scoring, so both build exactly the same input
columns: the `z_` features, then `segment_0..segment_{k-1}` from the k-means model recorded
with the churn model (applied to each snapshot's features, so every date uses one
numbering of segments).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.mining.kmeans import assemble, saved_models
from lakemine.stages.features import Z_FEATURES

LABEL = "churned"


@dataclass(frozen=True)
class SegmentModel:
    """A saved k-means model (lakemine kmeans) used to one-hot the segment."""

    path: str
    as_of: str
    k: int
    columns: tuple[str, ...]
    version: str | None = None  # None: recorded by a churn model from before k-means versions

    def load(self):
        from pyspark.ml.clustering import KMeansModel

        return KMeansModel.load(self.path)

    def record(self) -> dict:
        """What a churn model's metadata records of it."""
        return {"path": self.path, "as_of": self.as_of, "version": self.version, "k": self.k, "columns": list(self.columns)}

    @classmethod
    def recorded(cls, meta: dict | None) -> SegmentModel | None:
        return cls(meta["path"], meta["as_of"], meta["k"], tuple(meta["columns"]), meta.get("version")) if meta else None


def latest_segment_model(lake: Lake, columns: tuple[str, ...], as_of: date | None = None) -> SegmentModel | None:
    """The latest k-means model of the lake (fitted on `columns`, the config's kmeans.columns)
    for a date on or before `as_of` (None: any date), None when there is none."""
    models = [m for m in saved_models(lake) if as_of is None or m["as_of"] <= as_of.isoformat()]
    if not models:
        return None
    m = models[-1]
    k = m.get("k")
    if k is None:  # a model from before versions: its metadata is Spark's alone
        from pyspark.ml.clustering import KMeansModel

        k = len(KMeansModel.load(m["path"]).clusterCenters())
    return SegmentModel(m["path"], m["as_of"], k, tuple(columns), m["model_version"])


def input_columns(segments: SegmentModel | None) -> list[str]:
    return list(Z_FEATURES) + ([f"segment_{i}" for i in range(segments.k)] if segments else [])


def model_inputs(features: DataFrame, segments: SegmentModel | None) -> DataFrame:
    """`features` plus `segment` (int, null without a segment model) and every input column
    as float, in the order of `input_columns`."""
    schemas.require_columns(features, ("customer_id", "as_of") + Z_FEATURES, schemas.GOLD_CUSTOMER_FEATURES)
    if segments is None:
        df = features.withColumn("segment", F.lit(None).cast("int"))
    else:
        predicted = segments.load().transform(assemble(features, segments.columns))
        df = predicted.drop("features").withColumn("segment", F.col("prediction").cast("int")).drop("prediction")
        for i in range(segments.k):
            df = df.withColumn(f"segment_{i}", (F.col("segment") == i).cast("float"))
    for c in Z_FEATURES:
        df = df.withColumn(c, F.col(c).cast("float"))
    return df


@dataclass(frozen=True)
class Split:
    kind: str  # "time": earlier dates train, the latest validates; "customer": seeded hash split
    train_dates: list[str]
    val_dates: list[str]


def training_frame(
    features: DataFrame, labels: DataFrame, segments: SegmentModel | None, as_of: date,
    val_fraction: float, seed: int,
) -> tuple[DataFrame, Split]:
    """Rows of complete labels dated on or before `as_of`, with their inputs and `split`."""
    schemas.require_columns(labels, ("customer_id", "as_of", LABEL, "complete"), schemas.GOLD_LABELS)
    known = labels.where(F.col("complete") & (F.col("as_of") <= F.lit(as_of))).select(
        "customer_id", "as_of", F.col(LABEL).cast("float").alias(LABEL)
    )
    data = model_inputs(features.join(known, ["customer_id", "as_of"]), segments)
    dates = sorted(r["as_of"] for r in known.select("as_of").distinct().collect())
    if not dates:
        raise StageError(
            f"{schemas.GOLD_LABELS} has no complete labels on or before {as_of}: run `lakemine features "
            "--as-of D` for a date D at least the churn horizon before the end of the data"
        )
    if len(dates) >= 2:
        split = F.when(F.col("as_of") == F.lit(dates[-1]), "val").otherwise("train")
        info = Split("time", [d.isoformat() for d in dates[:-1]], [dates[-1].isoformat()])
    else:
        bucket = F.abs(F.xxhash64("customer_id", F.lit(seed))) % 10_000
        split = F.when(bucket < int(val_fraction * 10_000), "val").otherwise("train")
        info = Split("customer", [dates[0].isoformat()], [dates[0].isoformat()])
    return data.withColumn("split", split), info
