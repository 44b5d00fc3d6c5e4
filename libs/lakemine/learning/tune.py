"""`lakemine tune`: a seeded random search over the churn MLP, into ops/tune_trials.

**Search.** Trial 0 is the config's own train settings; trials 1..N draw, from
`random.Random(tune.seed)` in a fixed order, the hidden layers (depth from `depths`, the first
layer's width from `widths`, each next layer half as wide, at least 8), the activation,
dropout, batch norm (even odds), and the learning rate and weight decay (log-uniform between
the config's [low, high], three significant digits). The same seed gives the same trials.

**Data.** The training set is train's (`training_frame`: the same dates, split, inputs and
seed), written once as Parquet under <lake>/models/tune/<run>/data in a fixed row order; the
folder is deleted when the search ends (it holds customers' feature rows, see `lakemine forget`).

**Trials run in parallel as Spark tasks**, one trial per task, each a single-process trainer
(`train_worker` with no collectives) reading both splits through Petastorm. Why not the
Horovod path: the network has a few thousand weights, so a trial is seconds of arithmetic
and one allreduce per step would cost more than the step; the trials are independent, so one
per task slot uses every core with no communication. One process also makes a trial exactly
reproducible: same files, same seed, same weights. The winner is retrained by `lakemine
train --params best` on the configured workers (learning rate per worker, scaled with their
number, as the config's own).

**Output.** ops/tune_trials (replaced per as_of): one row per trial with its settings, its best
epoch's validation AUC and log loss, and the logistic-regression and gradient-boosted-trees
baselines on the same split as rows of their own (`model`). Early stopping uses
train.patience; each trial has at most tune.epochs epochs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from datetime import date

import pyspark.sql.functions as F

from lakemine.core import storage
from lakemine.core.config import Config, StageParams, TrainConfig, TuneConfig
from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, deterministic_run_id, record_run
from lakemine.learning.trainset import LABEL, input_columns, latest_segment_model, training_frame

log = logging.getLogger(__name__)

STAGE = "tune"
MLP = "mlp"
SEARCHED = ("hidden", "activation", "dropout", "batch_norm", "learning_rate", "weight_decay")
MIN_WIDTH = 8


@dataclass(frozen=True)
class TuneParams(TuneConfig, StageParams):
    """The tune section of the config and the labels' date (None: the latest complete)."""

    SECTION = "tune"
    as_of: date | None = None


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")


def trial_settings(t: TuneConfig, train: TrainConfig) -> list[dict]:
    """The settings of trials 0..t.trials: the train section's, then t.trials seeded draws."""
    rng = random.Random(t.seed)
    trials = [{"hidden": list(train.hidden), "activation": train.activation, "dropout": train.dropout,
               "batch_norm": train.batch_norm, "learning_rate": train.learning_rate, "weight_decay": train.weight_decay}]
    for _ in range(t.trials):
        depth, width = rng.choice(t.depths), rng.choice(t.widths)
        trials.append({
            "hidden": [max(MIN_WIDTH, width >> layer) for layer in range(depth)],
            "activation": rng.choice(t.activations),
            "dropout": rng.choice(t.dropouts),
            "batch_norm": rng.random() < 0.5,
            "learning_rate": _log_uniform(rng, *t.learning_rate),
            "weight_decay": _log_uniform(rng, *t.weight_decay),
        })
    return trials


def describe(s: dict) -> str:
    """One trial's settings in a few words."""
    return (f"hidden {'-'.join(map(str, s['hidden'])) or 'none'} {s['activation']}, dropout {s['dropout']:g}, "
            f"batch norm {'on' if s['batch_norm'] else 'off'}, lr {s['learning_rate']:.3g}, weight decay {s['weight_decay']:.3g}")


def run_trial(item: tuple[int, dict]) -> dict:
    """One trial in one Spark task: `train_worker` on one process. Its best epoch's validation
    metrics, or the error that stopped it."""
    from lakemine.learning.worker import train_worker

    trial, spec = item
    started = time.perf_counter()
    try:
        result = train_worker(spec)
    except Exception as exc:  # noqa: BLE001 - one diverging trial must not end the search
        return {"trial": trial, "error": f"{type(exc).__name__}: {str(exc).strip()[:300]}",
                "seconds": time.perf_counter() - started}
    best = next((h for h in result["history"] if h["epoch"] == result["best_epoch"]), None)
    return {"trial": trial, "val_auc": best["val_auc"] if best else None,
            "val_log_loss": best["val_log_loss"] if best else None, "best_epoch": result["best_epoch"],
            "epochs_run": len(result["history"]), "seconds": time.perf_counter() - started,
            "error": None if best else "no epoch improved on an AUC of -1 (diverged)"}


def run(lake: Lake, cfg: Config, p: TuneParams) -> Run:
    """Search for the labels on or before `p.as_of` (default: the latest complete); every
    trial and both baselines replace that as_of in ops/tune_trials. `Run.result`: the rows
    written (baselines first), each with its `seconds`. The same search again (same data,
    seed and settings) is a noop that keeps the rows."""
    from lakemine.learning import train

    tables = train.input_versions(lake)
    labels = lake.read_table(schemas.GOLD_LABELS, tables[schemas.GOLD_LABELS])
    as_of = p.as_of if p.as_of is not None else train.latest_complete(labels)
    segments = latest_segment_model(lake, cfg.kmeans.columns)
    tc = cfg.train
    params = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items() if k != "as_of"},
              "train": {k: getattr(tc, k) for k in ("val_fraction", "seed", "batch_size", "patience", "cache_rows",
                                                     "gbt_trees", "gbt_depth")}}
    with record_run(lake, STAGE, as_of, params) as run:
        run.inputs.update(tables)
        features = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES, tables[schemas.GOLD_CUSTOMER_FEATURES])
        frame, _ = training_frame(features, labels, segments, as_of, tc.val_fraction, tc.seed)
        frame = frame.cache()
        inputs = input_columns(segments)
        key = {"data": train.fingerprint(frame, ["customer_id", "as_of", "split", LABEL, *inputs]),
               "segment_model": (segments.version or segments.as_of) if segments else None}
        run.run_id = deterministic_run_id(STAGE, as_of, params, key)
        folder = f"{lake.root}/models/tune/{run.run_id}"
        settings = trial_settings(p, tc)
        done = _done(lake, as_of, run.run_id, len(settings))
        if done:
            frame.unpersist()
            run.status, run.result = "noop", done
            run.message = (f"already searched: {schemas.OPS_TUNE_TRIALS} as of {as_of} holds the {len(settings)} trials of "
                           f"run {run.run_id} (same data, seed and settings); " + _message(done, settings))
            return run
        try:
            try:
                counts = train.class_counts(frame, as_of)
                run.rows_in = sum(counts.values())
                urls = {part: train.write_split(frame, part, inputs, 4, folder) for part in ("train", "val")}
                baselines = _baselines(frame, inputs, tc)
            finally:
                frame.unpersist()
            results = _search(lake, p, tc, settings, inputs, counts, urls)
        finally:
            storage.delete_dir(folder)
        rows = _rows(as_of, run.run_id, p.seed, settings, results, baselines)
        run.outputs[schemas.OPS_TUNE_TRIALS] = lake.overwrite_as_of(
            lake.spark.createDataFrame([{k: v for k, v in r.items() if k != "seconds"} for r in rows],
                                       schemas.TUNE_TRIALS_SCHEMA), schemas.OPS_TUNE_TRIALS, as_of)
        run.rows_out = len(settings)
        run.result = rows
        run.message = _message(rows, settings)
    return run


def _done(lake: Lake, as_of: date, run_id: str, trials: int) -> list[dict] | None:
    """The rows of the same search as of `as_of` when the table holds all of them (its trials
    train deterministically; Spark ML's baselines may differ in the last digits run to run,
    so a re-run keeps the rows rather than write other ones)."""
    if not lake.exists(schemas.OPS_TUNE_TRIALS):
        return None
    rows = [{**r.asDict(), "seconds": None} for r in lake.read_table(schemas.OPS_TUNE_TRIALS)
            .where((F.col("as_of") == F.lit(as_of)) & (F.col("run_id") == run_id)).collect()]
    return rows if sum(1 for r in rows if r["model"] == MLP) == trials else None


def _baselines(frame, inputs: list[str], tc: TrainConfig) -> list[dict]:
    """Logistic regression and (train.gbt_trees > 0) gradient-boosted trees on the same split,
    each with its seconds."""
    from lakemine.learning import train

    started = time.perf_counter()
    out = [{"model": "logistic regression (Spark ML)", **train.logistic_baseline(frame, inputs)}]
    out[0]["seconds"] = time.perf_counter() - started
    if tc.gbt_trees:
        started = time.perf_counter()
        out.append({**train.gbt_baseline(frame, inputs, tc.gbt_trees, tc.gbt_depth, tc.seed),
                    "seconds": time.perf_counter() - started})
    return out


def _search(lake: Lake, p: TuneParams, tc: TrainConfig, settings: list[dict], inputs: list[str],
            counts: dict, urls: dict[str, str]) -> list[dict]:
    """Every trial as one Spark task; their results in trial order."""
    from lakemine.io.spark import release_free_heap
    from lakemine.learning.train import data_spec

    sc = lake.spark.sparkContext
    slots = max(1, min(len(settings), sc.defaultParallelism))
    # a trial's torch threads: the cores Spark gives each task (spark.task.cpus), or in local mode the
    # machine's cores shared by the trials that run at once
    local = sc.master.startswith("local")
    threads = max(1, (os.cpu_count() or 1) // slots) if local else int(sc.getConf().get("spark.task.cpus", "1"))
    base = {"backend": "local", "inputs": inputs, "train_url": urls["train"], "val_url": urls["val"], "checkpoint": None,
            **data_spec(lake.spark, counts, tc.batch_size, 1), "threads": threads, "epochs": p.epochs,
            "patience": tc.patience, "warmup_epochs": tc.warmup_epochs, "cache_rows": tc.cache_rows, "seed": tc.seed}
    specs = [(i, {**base, **s}) for i, s in enumerate(settings)]
    log.info("tune: %d trials, %d at a time", len(specs), slots)
    release_free_heap(lake.spark)  # before the trials' Python processes grow
    sc.setJobDescription(f"lakemine tune: {len(specs)} trials")
    try:
        return sorted(sc.parallelize(specs, len(specs)).map(run_trial).collect(), key=lambda r: r["trial"])
    finally:
        sc.setJobDescription(None)


def _rows(as_of: date, run_id: str, seed: int, settings: list[dict], results: list[dict], baselines: list[dict]) -> list[dict]:
    """ops/tune_trials rows: the baselines (no trial number), then the trials."""
    rows = [{"as_of": as_of, "model": b["model"], "trial": None, "hidden": None, "activation": None, "dropout": None,
             "batch_norm": None, "learning_rate": None, "weight_decay": None,
             "params": json.dumps({k: b[k] for k in ("trees", "depth") if k in b}, sort_keys=True),
             "val_auc": b["auc"], "val_log_loss": b["log_loss"], "best_epoch": None, "epochs_run": None, "error": None,
             "seed": seed, "run_id": run_id, "seconds": b["seconds"]} for b in baselines]
    for s, r in zip(settings, results):
        rows.append({"as_of": as_of, "model": MLP, "trial": r["trial"], "hidden": "-".join(map(str, s["hidden"])),
                     "activation": s["activation"], "dropout": float(s["dropout"]), "batch_norm": bool(s["batch_norm"]),
                     "learning_rate": float(s["learning_rate"]), "weight_decay": float(s["weight_decay"]),
                     "params": json.dumps(s, sort_keys=True), "val_auc": r.get("val_auc"),
                     "val_log_loss": r.get("val_log_loss"), "best_epoch": r.get("best_epoch"),
                     "epochs_run": r.get("epochs_run"), "error": r["error"], "seed": seed, "run_id": run_id,
                     "seconds": r["seconds"]})
    return rows


def ranked(rows: list[dict]) -> list[dict]:
    """The MLP trials that finished, best first: highest validation AUC, then lowest log loss,
    then the lower trial number."""
    done = [r for r in rows if r["model"] == MLP and r["val_auc"] is not None and not math.isnan(r["val_auc"])]
    return sorted(done, key=lambda r: (-r["val_auc"], r["val_log_loss"], r["trial"]))


def _message(rows: list[dict], settings: list[dict]) -> str:
    trials = [r for r in rows if r["model"] == MLP]
    order = ranked(rows)
    failed = sum(1 for r in trials if r["error"])
    seconds = sum(r["seconds"] or 0 for r in trials)
    if not order:
        return f"{len(trials)} trials, none finished ({failed} failed)"
    best, own = order[0], next(r for r in trials if r["trial"] == 0)
    base = ", ".join(f"{r['model'].split(' (')[0]} {r['val_auc']:.4f}" for r in rows if r["model"] != MLP)
    own_auc = f"{own['val_auc']:.4f}" if own["val_auc"] is not None else "failed"
    took = f"{seconds:.0f} s of training" if seconds else "recorded"
    return (f"{len(trials)} trials ({took}{f', {failed} failed' if failed else ''}); best: trial "
            f"{best['trial']}, validation AUC {best['val_auc']:.4f} ({describe(settings[best['trial']])}); the config's "
            f"own settings (trial 0) {own_auc}; baselines: {base}")


def best_trial(lake: Lake, as_of: date) -> dict:
    """The best trial of the latest search on or before `as_of`: {"as_of", "run_id", "trial",
    "val_auc", "params"} (params: the SEARCHED settings, `hidden` a tuple)."""
    if not lake.exists(schemas.OPS_TUNE_TRIALS):
        raise StageError(f"--params best: no {schemas.OPS_TUNE_TRIALS} in lake {lake.root}: run `lakemine tune` first")
    trials = lake.read_table(schemas.OPS_TUNE_TRIALS).where(F.col("as_of") <= F.lit(as_of))
    latest = trials.agg(F.max("as_of")).first()[0]
    if latest is None:
        raise StageError(f"--params best: no search on or before {as_of} in {schemas.OPS_TUNE_TRIALS}: "
                         f"run `lakemine tune --as-of {as_of}`")
    order = ranked([r.asDict() for r in trials.where(F.col("as_of") == F.lit(latest)).collect()])
    if not order:
        raise StageError(f"--params best: no trial of the search as of {latest} finished: see {schemas.OPS_TUNE_TRIALS}")
    best = order[0]
    params = json.loads(best["params"])
    params["hidden"] = tuple(params["hidden"])
    return {"as_of": latest.isoformat(), "run_id": best["run_id"], "trial": best["trial"], "val_auc": best["val_auc"],
            "params": {k: params[k] for k in SEARCHED}}
