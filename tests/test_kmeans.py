from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pyspark.sql.functions as F
import pytest
from pyspark.testing import assertDataFrameEqual
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import adjusted_rand_score

from lakemine.core import storage
from lakemine.core.errors import UsageError
from lakemine.io import schemas
from lakemine.learning.trainset import latest_segment_model
from lakemine.mining import lloyd
from lakemine.mining.kmeans import KMeansParams, assemble, choose_k, customers, fit_kmeans
from lakemine.mining.kmeans import run as run_kmeans
from lakemine.stages.features import FEATURES, LOG_FEATURES

SEGMENT_FEATURES = KMeansParams.from_config(None).columns


def _features(gold_lake):
    lake = gold_lake[0]
    feats = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES)
    as_of = feats.agg(F.max("as_of")).first()[0]
    return feats.where(F.col("as_of") == F.lit(as_of))


def test_planted_customer_groups_are_recovered(gold_lake):
    truth = gold_lake[2]
    data = assemble(_features(gold_lake), SEGMENT_FEATURES)
    model = fit_kmeans(data, 5, KMeansParams.from_config(None))
    pairs = model.transform(data).join(truth, "customer_id").select("prediction", "group").collect()
    assert len(pairs) > 350
    ari = adjusted_rand_score([r["group"] for r in pairs], [r["prediction"] for r in pairs])
    assert ari >= 0.9, ari


def test_cost_within_one_percent_of_scikit_learn(gold_lake):
    data = assemble(_features(gold_lake), SEGMENT_FEATURES)
    x = np.array(data.select(*SEGMENT_FEATURES).toPandas(), dtype=float)
    for k in (3, 5):
        spark_cost = fit_kmeans(data, k, KMeansParams.from_config(None)).summary.trainingCost
        sk_cost = SkKMeans(n_clusters=k, n_init=10, random_state=0).fit(x).inertia_
        assert abs(spark_cost - sk_cost) / sk_cost <= 0.01, (k, spark_cost, sk_cost)


def test_silhouette_chooses_the_k_of_well_separated_blobs(spark):
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [8, 0], [0, 8], [8, 8]])
    rows = [(f"c{i}", *map(float, centres[i % 4] + rng.normal(0, 0.5, 2))) for i in range(200)]
    df = spark.createDataFrame(rows, "customer_id string, a double, b double")
    model, scores = choose_k(assemble(df, ("a", "b")), KMeansParams.from_config(None, k_range=(2, 6), columns=("a", "b")))
    assert len(model.clusterCenters()) == 4
    assert max(scores, key=scores.get) == 4 and set(scores) == {2, 3, 4, 5, 6}


def test_the_silhouette_is_the_one_sparks_evaluator_computes(spark):
    """lloyd.silhouette (numpy, on the sample) against ClusteringEvaluator on the same points and
    centres, with a cluster of one point among them."""
    from pyspark.ml.evaluation import ClusteringEvaluator

    rng = np.random.default_rng(4)
    x = np.vstack([rng.normal(c, 0.8, size=(60, 3)) for c in ((0, 0, 0), (4, 0, 1), (0, 5, 2))] + [[[20.0, 20.0, 20.0]]])
    centres = np.array([[0, 0, 0], [4, 0, 1], [0, 5, 2], [20, 20, 20]], dtype=float)
    labels = lloyd.squared_distances(x, centres).argmin(1)
    df = spark.createDataFrame([(f"c{i}", *map(float, row), int(label)) for i, (row, label) in enumerate(zip(x, labels))],
                               "customer_id string, a double, b double, c double, prediction int")
    expected = ClusteringEvaluator(featuresCol="features", predictionCol="prediction").evaluate(assemble(df, ("a", "b", "c")))
    assert math.isclose(lloyd.silhouette(x, centres), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_above_the_sample_size_the_fit_is_refined_on_every_customer(gold_lake):
    """With a sample smaller than the customers, the k chosen on the sample is refined by Lloyd
    steps over all of them in Spark: same cost as scikit-learn within 1%, the same centres on a
    re-run, the sample drawn the same way."""
    data = assemble(_features(gold_lake), SEGMENT_FEATURES).cache()
    x = np.array(data.select(*SEGMENT_FEATURES).toPandas(), dtype=float)
    p = KMeansParams.from_config(None, sample_size=150)
    c = customers(data, p)
    assert c.n == len(x) > 150 and len(c.sample) == 150 and not c.complete
    assert np.array_equal(customers(data, p).sample, c.sample)
    model = fit_kmeans(data, 5, p)
    assert model.summary.numIter >= 1 and model.summary.sample_size == 150
    sk_cost = SkKMeans(n_clusters=5, n_init=10, random_state=0).fit(x).inertia_
    assert abs(model.summary.trainingCost - sk_cost) / sk_cost <= 0.01, (model.summary.trainingCost, sk_cost)
    centres = np.array(model.clusterCenters())
    own = lloyd.squared_distances(x, centres).min(1).sum()
    assert math.isclose(own, model.summary.trainingCost, rel_tol=1e-9)  # the cost is that of the centres returned
    assert np.array_equal(np.array(fit_kmeans(data, 5, p).clusterCenters()), centres)
    chosen, scores = choose_k(data, KMeansParams.from_config(None, sample_size=150, k_range=(2, 6)))
    assert set(scores) == {2, 3, 4, 5, 6} and len(chosen.clusterCenters()) == max(scores, key=scores.get)
    data.unpersist()


def test_bad_k_choices_are_usage_errors():
    with pytest.raises(UsageError, match="--k 1: must be at least 2"):
        KMeansParams.from_config(None, k=1)
    with pytest.raises(UsageError, match=r"--k-range \(5, 3\): needs \[low, high\] with 2 <= low <= high"):
        KMeansParams.from_config(None, k_range=(5, 3))


def test_kmeans_stage_writes_segments_profiles_model_and_is_idempotent(spark, lake, lake_cfg, gold_lake):
    src = gold_lake[0]
    for table in (schemas.GOLD_CUSTOMER_FEATURES, schemas.GOLD_FEATURE_SCALER):
        lake.overwrite(src.read_table(table), table)
    p = KMeansParams.from_config(lake_cfg, k=5)
    first = run_kmeans(lake, lake_cfg, p)
    segments = lake.read_table(schemas.GOLD_CUSTOMER_SEGMENTS).collect()
    profiles = lake.read_table(schemas.GOLD_SEGMENT_PROFILES)
    run_kmeans(lake, lake_cfg, p)
    assertDataFrameEqual(lake.read_table(schemas.GOLD_CUSTOMER_SEGMENTS), segments)
    assertDataFrameEqual(lake.read_table(schemas.GOLD_SEGMENT_PROFILES), profiles.collect())

    feats = src.read_table(schemas.GOLD_CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(first.as_of))
    assert len(segments) == feats.count() and first.rows_out == len(segments)
    prof = {r["segment"]: r for r in profiles.collect()}
    assert sorted(prof) == [0, 1, 2, 3, 4]
    assert sum(r["size"] for r in prof.values()) == len(segments)
    assert {r["segment_label"] for r in segments} == {r["segment_label"] for r in prof.values()}
    # the centre in original units is the inverse transform of the model's centre
    from pyspark.ml.clustering import KMeansModel

    model = KMeansModel.load(first.result["model_path"])
    scaler = {r["feature"]: r for r in src.read_table(schemas.GOLD_FEATURE_SCALER).where(F.col("as_of") == F.lit(first.as_of)).collect()}
    centre = dict(zip(SEGMENT_FEATURES, model.clusterCenters()[0]))
    for name in ("recency_days", "monetary"):
        x = centre[f"z_{name}"] * scaler[name]["std"] + scaler[name]["mean"]
        assert math.isclose(prof[0][name], math.expm1(x) if name in LOG_FEATURES else x, rel_tol=1e-9)
    # distance is the Euclidean distance to the own centre in standardized units
    seg = {r["customer_id"]: r for r in segments}
    row = feats.first()
    own = model.clusterCenters()[seg[row["customer_id"]]["segment"]]
    vec = np.array([row[c] for c in SEGMENT_FEATURES])
    assert math.isclose(seg[row["customer_id"]]["distance"], float(np.linalg.norm(vec - own)), rel_tol=1e-9)
    assert set(FEATURES) <= set(profiles.columns)


def test_too_few_customers_is_refused_and_the_refusal_is_in_ops_runs(lake, lake_cfg, gold_lake):
    """A run the stage refuses once started (fewer customers than k) still exits 2, and now
    leaves its ops/runs row, failed, with the reason (issue 16)."""
    feats = gold_lake[0].read_table(schemas.GOLD_CUSTOMER_FEATURES)
    as_of = feats.agg(F.max("as_of")).first()[0]
    lake.overwrite(feats.where(F.col("as_of") == F.lit(as_of)).orderBy("customer_id").limit(3), schemas.GOLD_CUSTOMER_FEATURES)
    with pytest.raises(UsageError, match="3 customers at as_of .*: too few for k up to 5"):
        run_kmeans(lake, lake_cfg, KMeansParams.from_config(lake_cfg, k=5, as_of=as_of))
    runs = lake.read_table(schemas.OPS_RUNS).where(F.col("stage") == "kmeans").collect()
    assert [(r["status"], r["as_of"]) for r in runs] == [("failed", as_of)]
    assert "too few for k up to 5" in runs[0]["message"]


def _files(folder: str) -> dict[str, bytes]:
    from pathlib import Path

    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(Path(folder).rglob("*")) if f.is_file()}


def test_a_saved_model_is_never_rewritten_a_refit_saves_a_new_version(lake, lake_cfg, gold_lake):
    """Re-running k-means for a date used to overwrite models/kmeans/<as_of>, under the churn
    models that one-hot with it (issue 16). Now: the same fit finds its version, another fit
    saves a new version beside it, and the newest of the date is the one training picks."""
    src = gold_lake[0]
    for table in (schemas.GOLD_CUSTOMER_FEATURES, schemas.GOLD_FEATURE_SCALER):
        lake.overwrite(src.read_table(table), table)
    first = run_kmeans(lake, lake_cfg, KMeansParams.from_config(lake_cfg, k=5, n_init=1))
    v1, path1 = first.result["model_version"], first.result["model_path"]
    assert v1.startswith(first.as_of.isoformat() + "-") and v1 in first.message
    saved = _files(path1)
    again = run_kmeans(lake, lake_cfg, KMeansParams.from_config(lake_cfg, k=5, n_init=1))
    assert again.result["model_version"] == v1 and _files(path1) == saved
    other = run_kmeans(lake, lake_cfg, KMeansParams.from_config(lake_cfg, k=3, n_init=1))
    v2 = other.result["model_version"]
    assert v2 != v1 and _files(path1) == saved  # the first model's files untouched
    picked = latest_segment_model(lake, SEGMENT_FEATURES)
    assert (picked.version, picked.k, picked.path) == (v2, 3, other.result["model_path"])
    assert latest_segment_model(lake, SEGMENT_FEATURES, first.as_of - timedelta(days=1)) is None
    # the k=5 fit again: its version, unchanged, becomes the date's latest again
    run_kmeans(lake, lake_cfg, KMeansParams.from_config(lake_cfg, k=5, n_init=1))
    assert latest_segment_model(lake, SEGMENT_FEATURES).version == v1
    assert {k: v for k, v in _files(path1).items() if k != "lakemine.json"} == {k: v for k, v in saved.items() if k != "lakemine.json"}
    assert storage.read_json(f"{path1}/lakemine.json")["k"] == 5
