"""`lakemine kmeans`: standardized customer features into gold/customer_segments and
gold/segment_profiles, with the fitted model under <lake>/models/kmeans/<as_of>-<digest>/.

A saved model is never rewritten: its version is its date and a digest of its centres, so a
re-run that fits the same centres finds its model already there, and one that fits other
centres (new features for that date, other parameters) saves a new version beside it. The
churn models that one-hot the segment record the version they used.

k is given (`--k`) or chosen by the best silhouette (squared Euclidean, as Spark's
`ClusteringEvaluator`) over `--k-range`. The candidates are fitted and scored on a sample of at
most `kmeans.sample_size` customers on the driver (every customer when they are that few), drawn
by a seeded hash of customer_id: for each k the lowest-cost of `--n-init` seeded k-means++ and
Lloyd runs (mining/lloyd.py). The chosen k is then refined by Lloyd steps over every customer in
Spark, one job per step over cached float64 blocks, so a re-run gives the same segments and
nothing on the driver grows with the customers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

import numpy as np
import pyspark.sql.functions as F
from pyspark import StorageLevel
from pyspark.ml.clustering import KMeansModel
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame

from lakemine.core import storage
from lakemine.core.config import Config, KmeansConfig, StageParams
from lakemine.core.errors import StageError, UsageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, deterministic_run_id, record_run
from lakemine.mining import lloyd
from lakemine.stages.features import FEATURES, LOG_FEATURES

log = logging.getLogger(__name__)

STAGE = "kmeans"
MODEL_KIND = "kmeans"
MODEL_META = "lakemine.json"  # written last: a model folder without it is incomplete
@dataclass(frozen=True)
class KMeansParams(KmeansConfig, StageParams):
    """The kmeans section of the config (k or k_range, seed, n_init, iterations, the
    standardized columns to cluster on) and the logical date (None: the latest features')."""

    SECTION = "kmeans"
    as_of: date | None = None

    def candidates(self) -> list[int]:
        if self.k is not None:
            return [self.k]
        lo, hi = self.k_range
        return list(range(lo, hi + 1))


def assemble(features: DataFrame, columns: tuple[str, ...]) -> DataFrame:
    schemas.require_columns(features, ("customer_id",) + tuple(columns), schemas.GOLD_CUSTOMER_FEATURES)
    return VectorAssembler(inputCols=list(columns), outputCol="features").transform(features)


@dataclass(frozen=True)
class FitSummary:
    """What a fit reports: the cost on every customer (Spark's `trainingCost`), the Lloyd steps
    run over all customers in Spark (0 when the sample held every customer) and the sample size."""

    trainingCost: float  # noqa: N815 - the name Spark's KMeansSummary gives it
    numIter: int  # noqa: N815
    sample_size: int


class FittedKMeans(KMeansModel):
    """Spark's KMeansModel (applied, saved and loaded as any) holding lakemine's centres."""

    def __init__(self, java_model, summary: FitSummary) -> None:
        super().__init__(java_model)
        self._fit = summary

    @property
    def summary(self) -> FitSummary:
        return self._fit

    @property
    def hasSummary(self) -> bool:  # noqa: N802 - Spark's name
        return True


@dataclass(frozen=True)
class Customers:
    """The customers to cluster: the DataFrame, their count, and a sample of at most
    `sample_size` of them on the driver (all of them when they are that few), drawn by a
    seeded hash of customer_id so a re-run draws the same."""

    data: DataFrame
    columns: tuple[str, ...]
    n: int
    sample: np.ndarray

    @property
    def complete(self) -> bool:
        return len(self.sample) == self.n


def customers(data: DataFrame, p: KMeansParams, n: int | None = None) -> Customers:
    cols = [F.col(c).cast("double").alias(c) for c in p.columns]
    n = data.count() if n is None else n
    h = F.xxhash64(F.col("customer_id").cast("string"), F.lit(p.seed)).alias("_h")
    rows = data.select(F.col("customer_id").cast("string").alias("customer_id"), *cols, h)
    if n > p.sample_size:  # a little more than needed, then the lowest hashes
        rows = rows.where(F.pmod("_h", F.lit(1 << 30)) < F.lit(int(min(1.0, 1.2 * p.sample_size / n) * (1 << 30))))
    table = rows.toArrow()
    if n > p.sample_size:  # the sample: the lowest hashes
        table = table.sort_by([("_h", "ascending"), ("customer_id", "ascending")]).slice(0, p.sample_size)
    else:  # every customer, in customer_id order
        table = table.sort_by("customer_id")
    x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in p.columns]).astype(np.float64)
    if x.size and np.isnan(x).any():
        raise StageError(f"{schemas.GOLD_CUSTOMER_FEATURES}: null or NaN in the k-means columns {list(p.columns)}; "
                         "rerun `lakemine features` for this date")
    return Customers(data, tuple(p.columns), n, x.reshape(len(table), len(p.columns)))


def _blocks(c: Customers) -> DataFrame:
    """Every customer's columns packed into float64 blocks (one binary value per Arrow batch),
    cached, one partition per core: each Lloyd step reads them without row conversion."""
    width = len(c.columns)

    def pack(batches):
        import numpy as np
        import pyarrow as pa

        for b in batches:
            if b.num_rows:
                x = np.column_stack([b.column(i).to_numpy(zero_copy_only=False) for i in range(width)]).astype(np.float64)
                yield pa.RecordBatch.from_arrays([pa.array([x.tobytes()], pa.binary())], ["x"])

    spark = c.data.sparkSession
    cols = [F.col(x).cast("double") for x in c.columns]
    blocks = c.data.select(*cols).mapInArrow(pack, "x binary").coalesce(spark.sparkContext.defaultParallelism)
    return blocks.persist(StorageLevel.MEMORY_AND_DISK)


def _step(blocks: DataFrame, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One Lloyd step over every customer: per partition the sums, counts and cost of its
    blocks (lloyd.step_sums), one small row each, added up here."""
    k, width = centres.shape

    def partial(batches):
        import numpy as np
        import pyarrow as pa

        from lakemine.mining import lloyd as ll

        sums, counts, cost = np.zeros((k, width)), np.zeros(k), 0.0
        for b in batches:
            for blob in b.column(0).to_pylist():
                s, n, e = ll.step_sums(np.frombuffer(blob, dtype=np.float64).reshape(-1, width), centres)
                sums += s
                counts += n
                cost += e
        out = np.concatenate([sums.ravel(), counts, [cost]])
        yield pa.RecordBatch.from_arrays([pa.array([out.tobytes()], pa.binary())], ["stats"])

    total = np.zeros(k * width + k + 1)
    for row in blocks.mapInArrow(partial, "stats binary").collect():
        total += np.frombuffer(row["stats"], dtype=np.float64)
    return total[:k * width].reshape(k, width), total[k * width:-1], float(total[-1])


def refine(c: Customers, centres: np.ndarray, p: KMeansParams) -> tuple[np.ndarray, float, int]:
    """Lloyd steps over every customer in Spark, from the sample's centres, until no centre
    moves more than `tol` or `max_iter`; the centres of the last step, their cost, the steps."""
    blocks = _blocks(c)
    try:
        for it in range(1, p.max_iter + 1):
            sums, counts, cost = _step(blocks, centres)
            moved, move = lloyd.update(centres, sums, counts)
            if move <= p.tol or it == p.max_iter:
                return centres, cost, it
            centres = moved
    finally:
        blocks.unpersist()


def _model(spark, centres: np.ndarray, summary: FitSummary) -> FittedKMeans:
    """Spark's KMeansModel with these centres (through its JVM constructors), k set."""
    jvm, gateway = spark._jvm, spark.sparkContext._gateway
    vectors = gateway.new_array(jvm.org.apache.spark.mllib.linalg.Vector, len(centres))
    for i, centre in enumerate(centres):
        values = gateway.new_array(jvm.double, len(centre))
        for j, v in enumerate(centre):
            values[j] = float(v)
        vectors[i] = jvm.org.apache.spark.mllib.linalg.Vectors.dense(values)
    digest = hashlib.sha256(np.ascontiguousarray(centres).tobytes()).hexdigest()[:12]
    java = jvm.org.apache.spark.ml.clustering.KMeansModel(f"KMeans_{digest}", jvm.org.apache.spark.mllib.clustering.KMeansModel(vectors))
    model = FittedKMeans(java, summary)
    model._set(k=len(centres))
    return model


def fit_kmeans(data: DataFrame, k: int, p: KMeansParams, c: Customers | None = None) -> FittedKMeans:
    """k-means of the customers in `data`: the lowest-cost of `p.n_init` seeded k-means++ runs
    on the sample (seeds seed, seed+1, ...), then, when the sample is not every customer, Lloyd
    steps over all of them in Spark from those centres."""
    c = c or customers(data, p)
    centres, cost = lloyd.fit(c.sample, k, p.n_init, p.seed, p.max_iter, p.tol)
    steps = 0
    if not c.complete:
        centres, cost, steps = refine(c, centres, p)
    return _model(data.sparkSession, centres, FitSummary(cost, steps, len(c.sample)))


def choose_k(data: DataFrame, p: KMeansParams, n: int | None = None) -> tuple[FittedKMeans, dict[int, float]]:
    """The model of the k with the best silhouette, and every candidate's silhouette. Each
    candidate is fitted and scored on the sample (every customer when they are at most
    `sample_size`); only the chosen k is then refined on all customers."""
    c = customers(data, p, n)
    if len(p.candidates()) == 1:
        k = p.candidates()[0]
        model = fit_kmeans(data, k, p, c)
        return model, {k: lloyd.silhouette(c.sample, np.array(model.clusterCenters()))}
    scores, fits = {}, {}
    for k in p.candidates():
        fits[k] = lloyd.fit(c.sample, k, p.n_init, p.seed, p.max_iter, p.tol)
        scores[k] = lloyd.silhouette(c.sample, fits[k][0])
        log.info("k=%d silhouette=%.4f", k, scores[k])
    best = max(scores, key=lambda k: (scores[k], -k))
    centres, cost = fits[best]
    steps = 0
    if not c.complete:
        centres, cost, steps = refine(c, centres, p)
    return _model(data.sparkSession, centres, FitSummary(cost, steps, len(c.sample))), scores


def assign_segments(model: KMeansModel, data: DataFrame) -> DataFrame:
    """customer_id, as_of, segment, distance (Euclidean, in standardized units)."""
    centres = [list(map(float, c)) for c in model.clusterCenters()]
    table = F.array(*[F.array(*[F.lit(v) for v in c]) for c in centres])
    predicted = model.transform(data)
    centre = F.element_at(table, F.col("prediction") + 1)
    sq = F.zip_with(vector_to_array("features"), centre, lambda a, b: (a - b) * (a - b))
    return predicted.select(
        "customer_id",
        "as_of",
        F.col("prediction").cast("int").alias("segment"),
        F.sqrt(F.aggregate(sq, F.lit(0.0), lambda acc, x: acc + x)).alias("distance"),
    )


def label_centre(z: dict[str, float]) -> str:
    """A readable name from a centre in standardized units."""
    if z.get("z_mean_basket_size", 0) > 1.5:
        return "wholesale"
    if z.get("z_recency_days", 0) > 0.75:
        return "at risk"
    if z.get("z_tenure_days", 0) < -0.75:
        return "new"
    if z.get("z_monetary", 0) > 0.5:
        return "high value"
    if z.get("z_monetary", 0) < -0.5:
        return "low value"
    return "regular"


def segment_labels(model: KMeansModel, columns: tuple[str, ...]) -> list[str]:
    labels, seen = [], {}
    for centre in model.clusterCenters():
        name = label_centre(dict(zip(columns, map(float, centre))))
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name} {seen[name]}")
    return labels


def centre_in_original_units(centre: dict[str, float], scaler: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Undo the z-score (and log1p) of each standardized feature of a centre."""
    out = {}
    for name, (mean, std) in scaler.items():
        z = centre.get(f"z_{name}")
        if z is None:
            continue
        x = z * std + mean
        out[name] = float(math.expm1(x) if name in LOG_FEATURES else x)
    return out


def profile_segments(
    segments: DataFrame, model: KMeansModel, labels: list[str], columns: tuple[str, ...], scaler: dict
) -> DataFrame:
    sizes = {r["segment"]: r["count"] for r in segments.groupBy("segment").count().collect()}
    rows = []
    for i, centre in enumerate(model.clusterCenters()):
        original = centre_in_original_units(dict(zip(columns, map(float, centre))), scaler)
        rows.append((i, labels[i], int(sizes.get(i, 0)), *[original.get(f) for f in FEATURES]))
    ddl = "segment int, segment_label string, size long, " + ", ".join(f"{f} double" for f in FEATURES)
    return segments.sparkSession.createDataFrame(rows, ddl)


def model_version(model: KMeansModel, as_of: date, columns: tuple[str, ...]) -> str:
    """<as_of>-<digest of the columns and the centres (to 9 decimals)>."""
    centres = [[round(float(x), 9) + 0.0 for x in c] for c in model.clusterCenters()]
    digest = hashlib.sha256(json.dumps({"columns": list(columns), "centres": centres}).encode()).hexdigest()
    return f"{as_of.isoformat()}-{digest[:8]}"


def save_model(lake: Lake, model: KMeansModel, as_of: date, columns: tuple[str, ...], run_id: str) -> str:
    """Save `model` under its own version and return the version; a complete model of that
    version (the same centres) is kept as it is. A folder a killed run left incomplete is
    written again: nothing refers to a version before its metadata exists."""
    version = model_version(model, as_of, columns)
    path = lake.model_path(MODEL_KIND, version)
    meta = {"model_version": version, "kind": MODEL_KIND, "as_of": as_of.isoformat(), "k": len(model.clusterCenters()),
            "columns": list(columns), "run_id": run_id, "saved_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
    if not storage.exists(f"{path}/{MODEL_META}"):
        model.write().overwrite().save(path)
        storage.write_json(f"{path}/{MODEL_META}", meta)
    elif [m["model_version"] for m in saved_models(lake) if m["as_of"] == meta["as_of"]][-1] != version:
        # another version of this date was saved since: this run's (an earlier one's centres again)
        # becomes the latest of its date, its files untouched
        storage.write_json(f"{path}/{MODEL_META}", {**storage.read_json(f"{path}/{MODEL_META}"), "saved_at": meta["saved_at"]})
    return version


def saved_models(lake: Lake) -> list[dict]:
    """The complete k-means models of the lake, oldest first by (as_of, saved_at). Models saved
    before versions (a folder named by its date alone, no metadata) count as saved at their date."""
    root = f"{lake.root}/models/{MODEL_KIND}"
    found = []
    for name in storage.list_dirs(root):
        if name.startswith((".", "_")):
            continue
        meta = f"{root}/{name}/{MODEL_META}"
        if storage.exists(meta):
            found.append({**storage.read_json(meta), "path": f"{root}/{name}"})
        elif _is_date(name):
            found.append({"model_version": name, "as_of": name, "saved_at": "", "path": f"{root}/{name}"})
    return sorted(found, key=lambda m: (m["as_of"], m["saved_at"]))


def _is_date(name: str) -> bool:
    try:
        date.fromisoformat(name)
    except ValueError:
        return False
    return True


def run(lake: Lake, cfg: Config, p: KMeansParams) -> Run:
    """Segment the customers of `p.as_of`; writes segments, profiles and the model."""
    as_of = p.as_of
    version = lake.table_version(schemas.GOLD_CUSTOMER_FEATURES)
    features_all = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES, version)
    if as_of is None:
        as_of = features_all.agg(F.max("as_of")).first()[0]
    params = {**{k: v for k, v in asdict(p).items() if k != "as_of"}, "k_range": list(p.k_range), "columns": list(p.columns)}
    inputs = {schemas.GOLD_CUSTOMER_FEATURES: version}
    with record_run(lake, STAGE, as_of, params) as run:
        run.run_id = deterministic_run_id(STAGE, as_of, params, inputs)
        run.inputs.update(inputs)
        data = assemble(features_all.where(F.col("as_of") == F.lit(as_of)), p.columns).cache()
        try:
            run.rows_in = data.count()
            if run.rows_in < max(p.candidates()):
                raise UsageError(f"{run.rows_in} customers at as_of {as_of}: too few for k up to {max(p.candidates())}")
            model, scores = choose_k(data, p, run.rows_in)
            k = len(model.clusterCenters())
            saved = save_model(lake, model, as_of, p.columns, run.run_id)
            labels = segment_labels(model, p.columns)
            segments = assign_segments(model, data)
            names = F.array(*[F.lit(x) for x in labels])
            stamp = [F.lit(as_of).alias("as_of"), F.lit(run.run_id).alias("run_id")]
            out = segments.select(
                "customer_id", "segment",
                F.element_at(names, F.col("segment") + 1).alias("segment_label"),
                "distance", *stamp,
            )
            run.outputs[schemas.GOLD_CUSTOMER_SEGMENTS] = lake.overwrite_as_of(out, schemas.GOLD_CUSTOMER_SEGMENTS, as_of)
            run.rows_out = lake.rows_written(schemas.GOLD_CUSTOMER_SEGMENTS, run.outputs[schemas.GOLD_CUSTOMER_SEGMENTS])
            scaler_rows = lake.read_table(schemas.GOLD_FEATURE_SCALER).where(F.col("as_of") == F.lit(as_of)).collect()
            scaler = {r["feature"]: (r["mean"], r["std"]) for r in scaler_rows}
            profiles = profile_segments(segments, model, labels, p.columns, scaler).select(
                "*", F.lit(k).alias("k"), F.lit(scores[k]).alias("silhouette"), *stamp
            )
            run.outputs[schemas.GOLD_SEGMENT_PROFILES] = lake.overwrite_as_of(profiles, schemas.GOLD_SEGMENT_PROFILES, as_of)
            run.message = (f"k={k} (silhouette {scores[k]:.3f}), model {saved}; "
                           + ", ".join(f"k={kk}: {s:.3f}" for kk, s in scores.items()))
            run.result = {"model_version": saved, "model_path": lake.model_path(MODEL_KIND, saved)}
        finally:
            data.unpersist()
    return run
