"""`lakemine train`: gold features and labels into a churn model under <lake>/models/churn/<version>/.

Driver side (`run`): builds the training set in Spark (trainset), writes its train and
validation splits as plain Parquet under the model folder, fits a logistic-regression
baseline on the same split, then runs `train_worker` (lakemine.learning.worker: what runs
inside each process) on N processes:

* `--backend horovod` (default): `horovod.spark.run` puts one process in each of N Spark
  tasks (Gloo on CPU; NCCL for CUDA tensors when Horovod is built with it and the executors
  have GPUs). The same function runs outside Spark under `horovodrun -np N` (see
  `python -m lakemine.learning.train --help`).
* `--backend torch`: `pyspark.ml.torch.distributor.TorchDistributor` (DDP; Gloo on CPU,
  NCCL on GPU).

Each worker reads its own shard of the splits through Petastorm, so no rank holds the whole
set; rank 0 returns the best epoch's weights, which the driver writes with the metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

import pyspark.sql.functions as F

from lakemine.core import storage
from lakemine.core.config import Config, StageParams, TrainConfig
from lakemine.core.errors import StageError, UsageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, deterministic_run_id, record_run
from lakemine.learning import drift
from lakemine.learning.trainset import LABEL, SegmentModel, Split, input_columns, latest_segment_model, training_frame
from lakemine.learning.worker import logit_offset, train_worker

log = logging.getLogger(__name__)

STAGE = "train"
MODEL_KIND = "churn"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "state_dict.pt"
METADATA = "metadata.json"
RESUMED_FROM = "resumed_from.txt"  # the version whose checkpoint this one started from
# A small training set still gets this many optimizer steps per epoch: the batch per rank
# shrinks (not below MIN_BATCH) rather than an epoch being one or two steps.
MIN_STEPS_PER_EPOCH = 20
MIN_BATCH = 16


def fingerprint(df, columns: list[str]) -> str:
    """Row count and the XOR of every row's 64-bit hash: equal for equal rows in any order."""
    row = df.agg(F.count(F.lit(1)).alias("n"), F.bit_xor(F.xxhash64(*columns)).alias("h")).first()
    return f"{row['n']}-{(row['h'] or 0) & 0xFFFFFFFFFFFFFFFF:016x}"


def effective_batch_size(batch_size: int, train_rows: int, workers: int) -> int:
    """The configured rows per step per rank, or fewer when the set is too small for
    MIN_STEPS_PER_EPOCH steps of it."""
    return max(min(MIN_BATCH, batch_size), min(batch_size, train_rows // (workers * MIN_STEPS_PER_EPOCH)))


def lr_scale(batch_size: int, train_rows: int, workers: int) -> float:
    """How many times the configured (one process's) learning rate the workers take after the
    warm-up: the rows of one step over all ranks over those of one process's step (the linear
    scaling rule). `workers` when each rank takes the configured batch; less when a small set
    cut the batch per rank, so a model search's trial (one process) and `train --params best`
    on N workers take steps of the same rows at the same rate."""
    return effective_batch_size(batch_size, train_rows, workers) * workers / effective_batch_size(batch_size, train_rows, 1)


@dataclass(frozen=True)
class TrainParams(TrainConfig, StageParams):
    """The train section of the config (checked as the config is, command-line overrides
    too), the labels' date (None: the latest complete), and how to run: `spec_out` prepares
    the data and writes the horovodrun worker spec instead of training; `verbose` shows the
    launcher's logs."""

    SECTION = "train"
    as_of: date | None = None
    spec_out: str | None = None
    verbose: bool = False


def launch(spark, spec: dict, backend: str, workers: int, verbose: bool = False) -> list[dict]:
    """Run `train_worker` on `workers` processes; the results of every rank (torch: rank 0 only)."""
    from lakemine.io.spark import release_free_heap

    release_free_heap(spark)  # before the ranks start: what the earlier stages' tasks left in the heap
    if backend == "horovod":
        import horovod.spark

        return horovod.spark.run(train_worker, args=(spec,), num_proc=workers, use_gloo=True,
                                 verbose=2 if verbose else 0, start_timeout=600)
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=workers, local_mode=False, use_gpu=spec["use_gpu"])
    return [distributor.run(train_worker, spec)]


def _validation_metrics(model, assembled) -> dict:
    """Validation AUC and log loss of a fitted Spark ML classifier."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.functions import vector_to_array

    scored = model.transform(assembled.where(F.col("split") == "val"))
    auc = BinaryClassificationEvaluator(rawPredictionCol="rawPrediction", labelCol=LABEL).evaluate(scored)
    p = F.least(F.greatest(vector_to_array("probability")[1], F.lit(1e-7)), F.lit(1 - 1e-7))
    y = F.col(LABEL)
    log_loss = scored.select(F.avg(-(y * F.log(p) + (1 - y) * F.log(1 - p)))).first()[0]
    return {"auc": float(auc), "log_loss": float(log_loss)}


def _assembled(frame, inputs: list[str]):
    from pyspark.ml.feature import VectorAssembler

    return VectorAssembler(inputCols=inputs, outputCol="x").transform(frame)


def logistic_baseline(frame, inputs: list[str]) -> dict:
    """Spark ML logistic regression on the same split: validation AUC and log loss."""
    from pyspark.ml.classification import LogisticRegression

    assembled = _assembled(frame, inputs)
    model = LogisticRegression(featuresCol="x", labelCol=LABEL, maxIter=100).fit(assembled.where(F.col("split") == "train"))
    return _validation_metrics(model, assembled)


def gbt_baseline(frame, inputs: list[str], trees: int, depth: int, seed: int) -> dict:
    """Spark ML gradient-boosted trees (`trees` of at most `depth` levels, logistic loss) on the
    same split: validation AUC and log loss, with the model's parameters. A stronger tabular
    baseline than logistic regression: trees need no scaling and find interactions."""
    from pyspark.ml.classification import GBTClassifier

    assembled = _assembled(frame, inputs)
    model = GBTClassifier(featuresCol="x", labelCol=LABEL, maxIter=trees, maxDepth=depth, seed=seed).fit(
        assembled.where(F.col("split") == "train"))
    return {"model": "gradient-boosted trees (Spark ML)", "trees": trees, "depth": depth, **_validation_metrics(model, assembled)}


def model_versions(lake: Lake) -> list[str]:
    """Churn model versions with finished metadata, oldest first by training time."""
    root = f"{lake.root}/models/{MODEL_KIND}"
    found = []
    for name in storage.list_dirs(root):
        meta = f"{root}/{name}/{METADATA}"
        if storage.exists(meta):
            found.append((storage.read_json(meta).get("trained_at", ""), name))
    return [name for _, name in sorted(found)]


def load_metadata(lake: Lake, version: str | None = None) -> dict:
    """metadata.json of `version`, or of the latest trained model."""
    if version is None:
        versions = model_versions(lake)
        if not versions:
            raise StageError(f"no churn model under {lake.root}/models/{MODEL_KIND}: run `lakemine train` first")
        version = versions[-1]
    path = f"{lake.model_path(MODEL_KIND, version)}/{METADATA}"
    if not storage.exists(path):
        raise UsageError(f"--model-version {version}: no {path}")
    return storage.read_json(path)


@dataclass(frozen=True)
class TrainingData:
    """What the driver prepared for one model version."""

    as_of: date
    version: str
    lineage: str  # the version less the epoch budget: models that differ only in epochs share it
    model_dir: str
    tables: dict[str, int]  # the input tables' Delta versions
    segments: SegmentModel | None
    split: Split
    inputs: list[str]
    counts: dict[tuple[str, int], int]  # rows by (split, label)
    train_url: str
    val_url: str
    baseline: dict  # logistic regression's validation metrics
    gbt: dict | None  # gradient-boosted trees' (None: train.gbt_trees 0)
    drift_reference: dict
    scaler: list[dict]

    @property
    def n_train(self) -> int:
        return self.counts[("train", 0)] + self.counts[("train", 1)]

    @property
    def n_val(self) -> int:
        return self.counts[("val", 0)] + self.counts[("val", 1)]


def run(lake: Lake, cfg: Config, p: TrainParams) -> Run:
    """Train for the labels on or before `p.as_of` (default: the latest complete ones);
    `Run.result` is the model's metadata. Re-running with the same inputs resumes the same
    model version from its checkpoint. With `p.spec_out`, prepare the data, write the worker
    spec there (for `horovodrun ... python -m lakemine.learning.train --spec FILE`) and stop
    (`Run.result` None)."""
    tables = input_versions(lake)
    labels = lake.read_table(schemas.GOLD_LABELS, tables[schemas.GOLD_LABELS])
    as_of = p.as_of if p.as_of is not None else latest_complete(labels)
    tuned_from = None
    if p.params == "best":
        from lakemine.learning import tune

        tuned_from = tune.best_trial(lake, as_of)
        p = dataclasses.replace(p, **{k: tuned_from["params"][k] for k in tune.SEARCHED})
    # the lake's latest k-means model (also for an older as_of: one-shot runs fit k-means on
    # the last snapshot only); the churn model records its version, so scoring one-hots with it
    segments = latest_segment_model(lake, cfg.kmeans.columns)
    params = {**{k: v for k, v in asdict(p).items() if k not in ("as_of", "spec_out", "verbose", "params")},
              "hidden": list(p.hidden)}
    with record_run(lake, STAGE, as_of, params) as run:
        run.inputs.update(tables)
        data = _prepare_data(lake, cfg, p, run, tables, labels, segments)
        spec = _worker_spec(lake.spark, p, params, data)
        if p.spec_out:
            with open(p.spec_out, "w", encoding="utf-8") as fh:
                json.dump({**spec, "use_gpu": True}, fh, indent=2)
            run.message = f"model {data.version}: data prepared, worker spec written to {p.spec_out}"
            return run
        resumed_from = _seed_checkpoint(lake, data, p.epochs)
        results = launch(lake.spark, spec, p.backend, p.workers, p.verbose)
        meta = _write_model(cfg, p, params, data, spec, results, resumed_from, tuned_from)
        gbt = f", gradient-boosted trees {data.gbt['auc']:.4f}" if data.gbt else ""
        run.message = (f"model {data.version}: validation AUC {meta['validation']['auc']:.4f} "
                       f"(logistic baseline {meta['baseline']['auc']:.4f}{gbt}), best epoch {meta['epochs']['best']} of "
                       f"{meta['epochs']['run']}, {p.backend} x {meta['world_size']}")
        run.result = meta
    return run


def input_versions(lake: Lake) -> dict[str, int]:
    """The Delta versions of the gold tables training reads; all must exist."""
    versions = {t: lake.table_version(t) for t in (schemas.GOLD_CUSTOMER_FEATURES, schemas.GOLD_LABELS, schemas.GOLD_FEATURE_SCALER)}
    for table, v in versions.items():
        if v is None:
            raise StageError(f"table {table} does not exist in lake {lake.root}: run `lakemine features` first")
    return versions


def latest_complete(labels) -> date:
    as_of = labels.where("complete").agg(F.max("as_of")).first()[0]
    if as_of is None:
        raise StageError(
            f"{schemas.GOLD_LABELS} has no complete labels: run `lakemine features --as-of D` for a date D "
            "at least the churn horizon before the end of the data"
        )
    return as_of


def _prepare_data(lake: Lake, cfg: Config, p: TrainParams, run: Run, tables: dict[str, int], labels,
                  segments: SegmentModel | None) -> TrainingData:
    """The training frame for `run.as_of`, its model version (and `run.run_id`), its checked
    class counts (`run.rows_in`), the splits as Parquet under the model folder, the logistic
    baseline, the drift reference and the scaler rows of the training dates."""
    as_of = run.as_of
    features = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES, tables[schemas.GOLD_CUSTOMER_FEATURES])
    frame, split = training_frame(features, labels, segments, as_of, p.val_fraction, p.seed)
    frame = frame.cache()
    try:
        version, lineage, run.run_id = _model_version(frame, segments, as_of, run.params)
        model_dir = lake.model_path(MODEL_KIND, version)
        counts = class_counts(frame, as_of)
        run.rows_in = sum(counts[(part, cls)] for part in ("train", "val") for cls in (0, 1))
        inputs = input_columns(segments)
        files = max(4, 2 * p.workers)
        train_url = write_split(frame, "train", inputs, files, model_dir)
        val_url = write_split(frame, "val", inputs, files, model_dir)
        baseline = logistic_baseline(frame, inputs)
        gbt = gbt_baseline(frame, inputs, p.gbt_trees, p.gbt_depth, p.seed) if p.gbt_trees else None
        train_rows = frame.where(F.col("split") == "train")
        reference = drift.reference(train_rows, cfg.score.drift_bins, cfg.features.window_days)
    finally:
        frame.unpersist()
    return TrainingData(as_of, version, lineage, model_dir, tables, segments, split, inputs, counts, train_url, val_url,
                        baseline, gbt, reference, _scaler_rows(lake, tables[schemas.GOLD_FEATURE_SCALER], split))


def _model_version(frame, segments: SegmentModel | None, as_of: date, params: dict) -> tuple[str, str, str]:
    """The model version, its lineage and the run id of training `frame` with `params`."""
    # The version follows the training rows' content, not the tables' Delta versions:
    # re-running the features for the same data rewrites the tables but resumes (and
    # so keeps) the same model, and scoring MERGEs onto the same rows. The epoch budget is
    # part of it (other weights, other version); the lineage leaves it out, so a re-run with
    # more --epochs starts from the checkpoint of the same lineage's shorter run.
    key = {"data": fingerprint(frame, ["customer_id", "as_of", "split", LABEL, *input_columns(segments)]),
           "segment_model": (segments.version or segments.as_of) if segments else None}
    identity = {k: v for k, v in params.items() if k != "epochs"}
    lineage = deterministic_run_id(STAGE, as_of, identity, key)[:8]
    version = f"{as_of.isoformat()}-{deterministic_run_id(STAGE, as_of, params, key)[:8]}"
    return version, lineage, deterministic_run_id(STAGE, as_of, params, key)


def _seed_checkpoint(lake: Lake, data: TrainingData, epochs: int) -> str | None:
    """A new version with no checkpoint of its own starts from the checkpoint of the finished
    model of its lineage with the most epochs below `epochs` (copied, never shared): the
    version it resumed from, None when it starts afresh."""
    own, note = f"{data.model_dir}/{CHECKPOINT}", f"{data.model_dir}/{RESUMED_FROM}"
    if storage.exists(own):  # this version's own run, killed or finished, goes on from its own
        return storage.read_bytes(note).decode() if storage.exists(note) else None
    shorter = [m for m in (_metadata_of(lake, v) for v in model_versions(lake))
               if m.get("lineage") == data.lineage and m["epochs"]["max"] < epochs
               and storage.exists(f"{lake.model_path(MODEL_KIND, m['model_version'])}/{CHECKPOINT}")]
    if not shorter:
        return None
    source = max(shorter, key=lambda m: m["epochs"]["max"])["model_version"]
    storage.write_text(note, source)
    storage.write_bytes(own, storage.read_bytes(f"{lake.model_path(MODEL_KIND, source)}/{CHECKPOINT}"))
    log.info("model %s resumes from the checkpoint of %s", data.version, source)
    return source


def _metadata_of(lake: Lake, version: str) -> dict:
    return storage.read_json(f"{lake.model_path(MODEL_KIND, version)}/{METADATA}")


def class_counts(frame, as_of: date) -> dict[tuple[str, int], int]:
    """Rows by (split, label); both splits must have both classes."""
    counts = {(r["split"], int(r[LABEL])): r["count"] for r in frame.groupBy("split", LABEL).count().collect()}
    for part in ("train", "val"):
        for cls in (0, 1):
            if not counts.get((part, cls)):
                raise StageError(
                    f"the {part} split has no rows with {LABEL} = {cls} ({sum(counts.values())} labelled rows up to "
                    f"{as_of}); more customers or another --as-of are needed"
                )
    return counts


def write_split(frame, split: str, inputs: list[str], files: int, model_dir: str) -> str:
    """The inputs and label of one split as Parquet under <model_dir>/data/<split>; its URL.
    The rows are in the order of a hash of (customer_id, as_of), across the files in name order:
    well mixed, and the same for the same rows, so a reader of the files in order (the
    in-memory shards, the tuner's trials) sees the same sequence every time."""
    url = storage.file_url(f"{model_dir}/data/{split}")
    order = F.xxhash64("customer_id", "as_of")
    (frame.where(F.col("split") == split).withColumn("_order", order).repartitionByRange(files, "_order")
     .sortWithinPartitions("_order").select(*inputs, LABEL).write.mode("overwrite").parquet(url))
    return url


def _scaler_rows(lake: Lake, version: int, split: Split) -> list[dict]:
    """The feature scaler's rows for the training and validation dates, JSON-ready."""
    dates = sorted(set(split.train_dates) | set(split.val_dates))
    return [
        {k: (v.isoformat() if isinstance(v, date) else v) for k, v in r.asDict().items()}
        for r in lake.read_table(schemas.GOLD_FEATURE_SCALER, version)
        .where(F.col("as_of").isin([date.fromisoformat(d) for d in dates])).orderBy("as_of", "feature").collect()
    ]


def data_spec(spark, counts: dict[tuple[str, int], int], batch_size: int, workers: int) -> dict:
    """The worker-spec values that follow from the split and the launch, shared by training
    and the model search's trials: class weight, batch and steps per rank, the learning-rate
    scale, row counts and whether the executors have GPUs."""
    n_train, n_val = counts[("train", 0)] + counts[("train", 1)], counts[("val", 0)] + counts[("val", 1)]
    batch = effective_batch_size(batch_size, n_train, workers)
    return {"pos_weight": counts[("train", 0)] / counts[("train", 1)], "batch_size": batch,
            "steps_per_epoch": max(1, math.ceil(n_train / (batch * workers))),
            "lr_scale": lr_scale(batch_size, n_train, workers), "train_rows": n_train, "val_rows": n_val,
            "use_gpu": spark.sparkContext.getConf().get("spark.executor.resource.gpu.amount", None) is not None}


def _worker_spec(spark, p: TrainParams, params: dict, data: TrainingData) -> dict:
    """The plain values `train_worker` runs on (pickled to the workers, or written as JSON)."""
    return {
        **params, "inputs": data.inputs, "train_url": data.train_url, "val_url": data.val_url,
        "checkpoint": f"{data.model_dir}/{CHECKPOINT}", **data_spec(spark, data.counts, p.batch_size, p.workers),
        "threads": max(1, (os.cpu_count() or 1) // p.workers),
    }


def _write_model(cfg: Config, p: TrainParams, params: dict, data: TrainingData, spec: dict,
                 results: list[dict], resumed_from: str | None, tuned_from: dict | None) -> dict:
    """Rank 0's best weights and metadata.json into the model folder; the metadata."""
    chief = next(r for r in results if r["rank"] == 0)
    storage.write_bytes(f"{data.model_dir}/{WEIGHTS}", chief["state"])
    meta = _metadata(cfg, p, params, data, spec, results, chief)
    meta.update({"resumed_from": resumed_from, "tuned_from": tuned_from, "weights_sha256": hashlib.sha256(chief["state"]).hexdigest()})
    storage.write_json(f"{data.model_dir}/{METADATA}", meta)
    return meta


def _metadata(cfg: Config, p: TrainParams, params: dict, data: TrainingData, spec: dict, results: list[dict],
              chief: dict) -> dict:
    """metadata.json: what was trained on, how, its history and validation, the baseline and
    the drift reference."""
    best = next(h for h in chief["history"] if h["epoch"] == chief["best_epoch"])
    segments, counts = data.segments, data.counts
    return {
        "model_version": data.version, "lineage": data.lineage, "kind": MODEL_KIND, "as_of": data.as_of.isoformat(),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features": data.inputs, "label": LABEL, "architecture": {
            "class": "lakemine.learning.model.ChurnMLP", "n_inputs": len(data.inputs), "hidden": list(p.hidden),
            "dropout": p.dropout, "batch_norm": p.batch_norm, "activation": p.activation},
        "segment_model": segments.record() if segments else None,
        "scaler": data.scaler, "inputs": data.tables, "split": asdict(data.split),
        "rows": {"train": data.n_train, "val": data.n_val, "train_churned": counts[("train", 1)], "val_churned": counts[("val", 1)]},
        "backend": p.backend, "world_size": results[0]["size"], "params": params,
        "epochs": {"max": p.epochs, "run": len(chief["history"]), "best": chief["best_epoch"]},
        "batch_size": {"configured": p.batch_size, "used": spec["batch_size"]},
        "calibration": {"pos_weight": spec["pos_weight"], "logit_offset": logit_offset(spec["pos_weight"])},
        "history": chief["history"],
        "validation": {"auc": best["val_auc"], "log_loss": best["val_log_loss"]},
        "baseline": {"model": "logistic regression (Spark ML)", **data.baseline},
        "baselines": [{"model": "logistic regression (Spark ML)", **data.baseline}, *([data.gbt] if data.gbt else [])],
        "drift_reference": data.drift_reference,
        "rank_digests": {str(r["rank"]): r["digest"] for r in results},
        "placement": {str(r["rank"]): r["placement"] for r in results},
    }


def _main(argv: list[str] | None = None) -> int:
    """Outside Spark: `horovodrun -np N python -m lakemine.learning.train --spec spec.json` runs the same
    worker function on N processes (GPU nodes: one per GPU). `lakemine train --write-spec`
    writes the spec after preparing the data."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lakemine.learning.train", description=_main.__doc__)
    ap.add_argument("--spec", required=True, help="JSON spec written by `lakemine train --write-spec FILE`")
    args = ap.parse_args(argv)
    with open(args.spec, encoding="utf-8") as fh:
        spec = json.load(fh)
    result = train_worker(spec)
    if result["rank"] == 0:
        storage.write_bytes(spec["checkpoint"].rsplit("/", 1)[0] + "/" + WEIGHTS, result["state"])
        print(json.dumps({k: v for k, v in result.items() if k != "state"}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
