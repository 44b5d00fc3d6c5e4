"""`lakemine score`: a churn model and gold/customer_features into gold/customer_scores (MERGE),
with the population stability of every feature against the training snapshot in ops/drift.

Inference is an iterator-of-batches Arrow (pandas) UDF: each Python worker loads the weights
once (cached per process) and scores Arrow batches with torch. Scores are MERGEd on
(customer_id, as_of, model_version); a matched row is rewritten only when its score or
segment changed, so a re-run leaves the table (scored_at included) as it was, and Delta's
conflict retries make concurrent runs safe.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import date
from typing import Iterator

import numpy as np
import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame
from pyspark.sql.functions import pandas_udf

from lakemine.core import storage
from lakemine.core.config import Config, ScoreConfig, StageParams
from lakemine.core.errors import StageError, UsageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, deterministic_run_id, record_run
from lakemine.learning import drift
from lakemine.learning.train import MODEL_KIND, WEIGHTS, load_metadata, model_versions
from lakemine.learning.trainset import SegmentModel, model_inputs

log = logging.getLogger(__name__)

STAGE = "score"
# (weights URI, SHA-256 of the weights) -> model, per Python worker process: Spark reuses its
# Python workers, so a URI alone would keep serving weights that were rewritten since
_LOADED: dict[tuple[str, str | None], object] = {}


def _load_model(weights_uri: str, architecture: dict, sha256: str | None = None):
    """The network with the weights at `weights_uri`, cached per process by URI and digest.
    With `sha256` (recorded in the model's metadata) the bytes read must have that digest."""
    model = _LOADED.get((weights_uri, sha256))
    if model is None:
        import torch

        from lakemine.learning.model import ChurnMLP

        torch.set_num_threads(1)  # one Python worker per task slot already
        data = storage.read_bytes(weights_uri)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise StageError(f"{weights_uri}: its SHA-256 is not the one its model's metadata.json records; "
                             "the weights were changed after training, retrain the model")
        model = ChurnMLP(architecture["n_inputs"], tuple(architecture["hidden"]), architecture["dropout"],
                         architecture["batch_norm"], architecture.get("activation", "relu"))
        model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        model.eval()
        _LOADED[(weights_uri, sha256)] = model
    return model


def churn_probability_udf(weights_uri: str, architecture: dict, offset: float = 0.0, sha256: str | None = None):
    """pandas UDF: a struct of the input columns (in model order) -> churn probability,
    sigmoid(network logit + `offset`) (the calibration recorded with the model)."""

    @pandas_udf("double")
    def churn_probability(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        import torch

        model = _load_model(weights_uri, architecture, sha256)
        with torch.no_grad():
            for batch in batches:
                x = torch.from_numpy(batch.to_numpy(dtype=np.float32, copy=True))
                yield pd.Series(torch.sigmoid(model(x) + offset).numpy().astype(np.float64))

    return churn_probability


def score_features(features: DataFrame, meta: dict, weights_uri: str) -> DataFrame:
    """customer_id, as_of, churn_probability, segment, model_version for every featured row."""
    data = model_inputs(features, SegmentModel.recorded(meta.get("segment_model")))
    offset = (meta.get("calibration") or {}).get("logit_offset", 0.0)  # models before calibration: 0
    udf = churn_probability_udf(weights_uri, meta["architecture"], offset, meta.get("weights_sha256"))
    return data.select(
        "customer_id",
        "as_of",
        udf(F.struct(*[F.col(c) for c in meta["features"]])).alias("churn_probability"),
        "segment",
        F.lit(meta["model_version"]).alias("model_version"),
    )


@dataclass
class DriftResult:
    feature: str
    psi: float
    status: str
    expected: list[float]
    actual: list[float]
    edges: list[float]


def feature_drift(features: DataFrame, meta: dict, warn_psi: float) -> tuple[list[DriftResult], int]:
    """PSI of each original-unit feature against the training snapshot's bins, over the
    population the reference describes (the active customers; everyone for a model trained
    before that), and its status (see lakemine.learning.drift); the rows compared."""
    reference = meta["drift_reference"]
    if reference.get("population") == "active":
        features = drift.active(features, reference["window_days"])
    edges = {f: e for f, e in reference["edges"].items() if f in features.columns}
    actual, n = drift.proportions(features, edges)
    out = []
    for f in edges:
        value = drift.psi(reference["expected"][f], actual[f])
        out.append(DriftResult(f, value, drift.status(f, value, warn_psi, reference), reference["expected"][f], actual[f],
                               edges[f]))
    return out, n


@dataclass(frozen=True)
class ScoreParams(ScoreConfig, StageParams):
    """The score section of the config (drift bins and threshold), the model version (None:
    the latest trained) and the logical date (None: the latest features')."""

    SECTION = "score"
    model_version: str | None = None
    as_of: date | None = None


def model_for(lake: Lake, as_of: date, model_version: str | None = None) -> tuple[dict, str]:
    """The metadata of the model that scores `as_of` and why it was chosen: `model_version`
    when given, else the latest trained of the models whose snapshot is on or before `as_of`
    (a backfill never gets a model that learnt from later dates)."""
    if model_version is not None:
        meta = load_metadata(lake, model_version)
        why = "as asked"
        if meta["as_of"] > as_of.isoformat():
            why += f"; it was trained as of {meta['as_of']}, after the date it scores"
            log.warning("model %s was trained as of %s, after %s that it scores", model_version, meta["as_of"], as_of)
        return meta, why
    versions = model_versions(lake)
    if not versions:
        raise StageError(f"no churn model under {lake.root}/models/{MODEL_KIND}: run `lakemine train` first")
    usable = [m for m in (load_metadata(lake, v) for v in versions) if m["as_of"] <= as_of.isoformat()]
    if not usable:
        earliest = min(load_metadata(lake, v)["as_of"] for v in versions)
        raise UsageError(f"no churn model trained as of {as_of} or earlier (the earliest is as of {earliest}): "
                         f"train one with `lakemine train --as-of D` for a date D <= {as_of}, or name one with --model-version")
    meta = usable[-1]
    return meta, f"the latest trained as of {as_of} or earlier (as of {meta['as_of']})"


def run(lake: Lake, cfg: Config, p: ScoreParams) -> Run:
    """Score gold/customer_features for `p.as_of` with a churn model (`model_for`); `Run.result`
    is the list of DriftResult, one per feature."""
    as_of = p.as_of
    features_v = lake.table_version(schemas.GOLD_CUSTOMER_FEATURES)
    features_all = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES, features_v)
    if as_of is None:
        as_of = features_all.agg(F.max("as_of")).first()[0]
    meta, chosen = model_for(lake, as_of, p.model_version)
    version = meta["model_version"]
    params = {"model_version": version, "drift_warn_psi": p.drift_warn_psi}
    inputs = {schemas.GOLD_CUSTOMER_FEATURES: features_v}
    with record_run(lake, STAGE, as_of, params) as run:
        run.run_id = deterministic_run_id(STAGE, as_of, params, inputs)
        run.inputs.update(inputs)
        features = features_all.where(F.col("as_of") == F.lit(as_of))
        weights = f"{lake.model_path(MODEL_KIND, version)}/{WEIGHTS}"
        scores = score_features(features, meta, weights).withColumn("scored_at", F.current_timestamp().cast("timestamp"))
        scores = scores.select(*schemas.SCORES_SCHEMA.fieldNames())
        changed = "NOT (t.churn_probability <=> s.churn_probability) OR NOT (t.segment <=> s.segment)"
        run.outputs[schemas.GOLD_CUSTOMER_SCORES] = lake.merge_into(
            scores, schemas.GOLD_CUSTOMER_SCORES, list(schemas.SCORES_KEY), update_when=changed,
            schema=schemas.SCORES_SCHEMA, target=f"t.as_of = DATE'{as_of.isoformat()}'",
        )
        drifts, n = feature_drift(features, meta, p.drift_warn_psi)
        run.rows_in = n
        # what the table now holds for this date and model, counted after the MERGE
        run.rows_out = (lake.read_table(schemas.GOLD_CUSTOMER_SCORES, run.outputs[schemas.GOLD_CUSTOMER_SCORES])
                        .where((F.col("as_of") == F.lit(as_of)) & (F.col("model_version") == F.lit(version))).count())
        rows = [(as_of, version, d.feature, float(d.psi), d.status, d.expected, d.actual, d.edges, run.run_id) for d in drifts]
        drift_df = lake.spark.createDataFrame(rows, schemas.DRIFT_SCHEMA)
        predicate = f"as_of = DATE'{as_of.isoformat()}' AND model_version = '{version}'"
        run.outputs[schemas.OPS_DRIFT] = lake.replace_where(drift_df, schemas.OPS_DRIFT, predicate)
        warned = [d for d in drifts if d.status == "warn"]
        run.message = f"{n:,} customers scored with model {version} ({chosen})" + (
            "; drift: " + ", ".join(f"{d.feature} PSI {d.psi:.2f}" for d in warned) if warned else "; no feature drift above "
            f"PSI {p.drift_warn_psi}")
        for d in warned:
            log.warning("feature %s drifted: PSI %.3f > %.2f", d.feature, d.psi, p.drift_warn_psi)
        run.result = drifts
    return run
