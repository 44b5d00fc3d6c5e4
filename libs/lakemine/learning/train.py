"""`lakemine train`: gold features and labels into a churn model under <lake>/models/churn/<version>/.

Driver side (`run_train`): builds the training set in Spark (trainset), writes its train and
validation splits as plain Parquet under the model folder, fits a logistic-regression
baseline on the same split, then runs `train_worker` on N processes:

* `--backend horovod` (default): `horovod.spark.run` puts one process in each of N Spark
  tasks (Gloo on CPU; NCCL for CUDA tensors when Horovod is built with it and the executors
  have GPUs). The same function runs outside Spark under `horovodrun -np N` (see
  `python -m lakemine.train --help`).
* `--backend torch`: `pyspark.ml.torch.distributor.TorchDistributor` (DDP; Gloo on CPU,
  NCCL on GPU).

Each worker reads its own shard through Petastorm (`make_batch_reader(cur_shard=rank,
shard_count=size)`, seeded shuffling), so no rank holds the whole set. Horovod:
`DistributedOptimizer` (ring-allreduce of gradients), parameters and optimizer state
broadcast from rank 0. Both: learning rate scaled by the world size after a linear warm-up,
metrics summed with allreduce, validation AUC on the gathered predictions, early stopping
with patience, a checkpoint by rank 0 after every epoch and resumption from it on a re-run.
The network (lakemine.model.ChurnMLP) knows nothing of any of this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

import pyspark.sql.functions as F

from lakemine import artifacts, drift, schemas
from lakemine.config import Config, TrainConfig
from lakemine.errors import StageError, UsageError
from lakemine.features import FEATURES
from lakemine.lake import Lake
from lakemine.runs import Run, deterministic_run_id, record_run
from lakemine.trainset import LABEL, input_columns, latest_segment_model, training_frame

log = logging.getLogger(__name__)

STAGE = "train"
MODEL_KIND = "churn"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "state_dict.pt"
METADATA = "metadata.json"
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


def logit_offset(pos_weight: float) -> float:
    """Class weighting multiplies the odds the network learns by `pos_weight`; adding
    -log(pos_weight) to its logit gives calibrated churn probabilities (AUC unchanged)."""
    return -math.log(pos_weight)


@dataclass(frozen=True)
class TrainParams(TrainConfig):
    """The train section of the config, validated, with command-line overrides."""

    def __post_init__(self) -> None:
        if self.backend not in ("horovod", "torch"):
            raise UsageError(f"--backend {self.backend}: allowed: horovod, torch")
        if self.workers < 1 or self.epochs < 1:
            raise UsageError("--workers and --epochs must be at least 1")

    @classmethod
    def from_config(cls, cfg: TrainConfig, **overrides) -> "TrainParams":
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["hidden"] = tuple(int(h) for h in values["hidden"])
        return cls(**values)


# ---------------------------------------------------------------- inside each worker process


class _HorovodComm:
    """Collectives through Horovod (Gloo on CPU, NCCL for CUDA tensors)."""

    def __init__(self, cuda: bool) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def wrap(self, model, optimizer, optimizer_state):
        hvd = self.hvd
        # groups=1: every gradient in one grouped allreduce per step, not one negotiation per
        # tensor (bench/horovod_floor.py measures both)
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), groups=1)
        if optimizer_state is not None:  # rank 0 only; the broadcast below gives it to all
            optimizer.load_state_dict(optimizer_state)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return model, optimizer

    def sum(self, values: list[float]) -> list[float]:
        import torch

        return self.hvd.allreduce(torch.tensor(values, dtype=torch.float64), op=self.hvd.Sum).tolist()

    def gather(self, tensor):
        return self.hvd.allgather(tensor)

    def broadcast_object(self, obj):
        return self.hvd.broadcast_object(obj, root_rank=0)

    def average_(self, tensor) -> None:
        tensor.copy_(self.hvd.allreduce(tensor, op=self.hvd.Average))

    def close(self) -> None:
        self.hvd.shutdown()


class _TorchComm:
    """Collectives through torch.distributed (DDP; Gloo on CPU, NCCL on GPU)."""

    def __init__(self, cuda: bool) -> None:
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if cuda else "gloo")
        self.dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{self.local_rank}") if cuda else torch.device("cpu")
        self.cuda = cuda

    def wrap(self, model, optimizer, optimizer_state):
        from torch.nn.parallel import DistributedDataParallel

        optimizer_state = self.broadcast_object(optimizer_state)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        # DDP broadcasts rank 0's parameters and buffers when it wraps the module
        ddp = DistributedDataParallel(model, device_ids=[self.local_rank] if self.cuda else None)
        return ddp, optimizer

    def sum(self, values: list[float]) -> list[float]:
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return t.cpu().tolist()

    def gather(self, tensor):
        import torch

        tensor = tensor.to(self.device)
        n = torch.tensor([tensor.shape[0]], device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.size)]
        self.dist.all_gather(sizes, n)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=self.device)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.zeros_like(padded) for _ in range(self.size)]
        self.dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).cpu()

    def broadcast_object(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_(self, tensor) -> None:
        self.dist.all_reduce(tensor)
        tensor /= self.size

    def close(self) -> None:
        self.dist.destroy_process_group()


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties count half), from numpy arrays."""
    import numpy as np
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def parameter_digest(model) -> str:
    """sha1 of every parameter's bytes, in order: equal digests = equal parameters."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def in_memory_passes(x, y, batch_size: int, seed: int):
    """Endless (x, y) batches over tensors in memory, a new seeded permutation each pass; a
    pass's last, incomplete batch is dropped (its rows come early in another pass)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    while True:
        order = torch.randperm(n, generator=g).to(x.device)
        for i in range(0, max(1, n - batch_size + 1), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]


def train_worker(spec: dict) -> dict:
    """One rank of the distributed training; the same function under every launcher.

    `spec` holds only plain values (it is pickled to the workers). Returns this rank's
    history and parameter digest; rank 0 also returns the best epoch's weights.
    """
    import warnings

    # Petastorm 0.13.1 calls pyarrow's legacy dataset API (the reason for the pyarrow 14 pin);
    # its deprecation warnings, twice per rank and epoch, say nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    warnings.filterwarnings("ignore", message="shard_seed was deprecated")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # its batches are read-only views
    import torch
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    from lakemine.model import ChurnMLP

    torch.set_num_threads(spec["threads"])
    cuda = spec["use_gpu"] and torch.cuda.is_available()
    comm = _HorovodComm(cuda) if spec["backend"] == "horovod" else _TorchComm(cuda)
    device = torch.device(f"cuda:{comm.local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    rank, size = comm.rank, comm.size
    inputs, fields = spec["inputs"], spec["inputs"] + [LABEL]

    torch.manual_seed(spec["seed"])
    model = ChurnMLP(len(inputs), tuple(spec["hidden"]), spec["dropout"], spec["batch_norm"]).to(device)
    lr = spec["learning_rate"]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    checkpoint = None
    if rank == 0 and artifacts.exists(spec["checkpoint"]):
        checkpoint = torch.load(io.BytesIO(artifacts.read_bytes(spec["checkpoint"])), map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["model"])
    progress = comm.broadcast_object(
        {k: checkpoint[k] for k in ("epoch", "history", "best_auc", "best_epoch", "bad_epochs")}
        if checkpoint else {"epoch": 0, "history": [], "best_auc": -1.0, "best_epoch": 0, "bad_epochs": 0}
    )
    best_state = checkpoint["best_model"] if checkpoint else None
    net, optimizer = comm.wrap(model, optimizer, checkpoint["optimizer"] if checkpoint else None)

    pos_weight = torch.tensor(spec["pos_weight"], device=device)
    weighted = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="sum")
    plain = torch.nn.BCEWithLogitsLoss(reduction="sum")
    offset = logit_offset(spec["pos_weight"])  # the validation log loss is of calibrated probabilities

    def xy(batch):
        x = torch.stack([batch[c].float() for c in inputs], dim=1).to(device)
        return x, batch[LABEL].float().to(device)

    def read_shard(url: str, batch_size: int, queue: int = 0, **options):
        """This rank's shard of `url` in Petastorm batches. The reader is stopped by hand, not
        with `with`: its __exit__ prints "Cache cleanup complete." each time."""
        reader = make_batch_reader(url, schema_fields=fields, cur_shard=rank, shard_count=size, **options)
        try:
            for batch in BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=queue):
                yield xy(batch)
        finally:
            reader.stop()
            reader.join()

    # Small shards are read once and kept as tensors (4 bytes per input and row); larger ones
    # are streamed from the Parquet files every epoch. Either way a rank holds only its shard.
    def fits(rows: int) -> bool:  # this rank's shard of a split with `rows` rows
        return math.ceil(rows / size) <= spec["cache_rows"]

    cached = fits(spec["train_rows"])
    once = {"num_epochs": 1, "shuffle_row_groups": False, "workers_count": 1}
    val_cache = list(read_shard(spec["val_url"], 4096, **once)) if fits(spec["val_rows"]) else None

    def evaluate() -> tuple[float, float, float]:
        net.eval()
        preds, ys, loss_w, loss_p = [], [], 0.0, 0.0
        with torch.no_grad():
            for x, y in val_cache if val_cache is not None else read_shard(spec["val_url"], 4096, **once):
                logits = net(x)
                loss_w += float(weighted(logits, y))
                loss_p += float(plain(logits + offset, y))
                preds.append(torch.sigmoid(logits + offset).cpu())
                ys.append(y.cpu())
        local_p = torch.cat(preds) if preds else torch.zeros(0)
        local_y = torch.cat(ys) if ys else torch.zeros(0)
        total_w, total_p, n = comm.sum([loss_w, loss_p, float(local_y.shape[0])])
        all_p, all_y = comm.gather(local_p), comm.gather(local_y)
        return total_w / n, total_p / n, roc_auc(all_y.numpy(), all_p.numpy())

    steps = spec["steps_per_epoch"]
    warm = spec["warmup_epochs"] * steps
    history = progress["history"]
    if cached:
        shard = list(read_shard(spec["train_url"], 65536, **{**once, "workers_count": 2}))
        if not shard:
            raise RuntimeError(f"rank {rank} of {size}: its shard of {spec['train_url']} has no rows")
        batches = in_memory_passes(torch.cat([x for x, _ in shard]), torch.cat([y for _, y in shard]),
                                   spec["batch_size"], spec["seed"] + rank)
        del shard
    else:
        batches = read_shard(spec["train_url"], spec["batch_size"], 4 * spec["batch_size"], num_epochs=None,
                             shuffle_row_groups=True, shuffle_rows=True, seed=spec["seed"] + rank,
                             shard_seed=spec["seed"], workers_count=2)
    try:
        for epoch in range(progress["epoch"], spec["epochs"]):
            if progress["bad_epochs"] >= spec["patience"]:
                break
            net.train()
            loss_sum, seen = 0.0, 0
            started = time.perf_counter()
            for step in range(steps):
                # from the single-worker rate to size x that rate over the warm-up (Goyal et al.)
                g = epoch * steps + step
                scale = 1 + (size - 1) * min(1.0, g / warm) if warm else size
                for group in optimizer.param_groups:
                    group["lr"] = lr * scale
                x, y = next(batches)
                optimizer.zero_grad()
                loss = weighted(net(x), y)
                (loss / max(1, y.shape[0])).backward()
                optimizer.step()
                loss_sum += float(loss.detach())
                seen += int(y.shape[0])
            for buffer in model.buffers():  # batch-norm statistics: keep ranks identical
                if buffer.is_floating_point():
                    comm.average_(buffer.data)
            total, n, secs = comm.sum([loss_sum, float(seen), time.perf_counter() - started])
            val_loss, val_log_loss, val_auc = evaluate()
            history.append({"epoch": epoch + 1, "train_loss": total / n, "val_loss": val_loss,
                            "val_log_loss": val_log_loss, "val_auc": val_auc, "samples": int(n),
                            "train_secs": secs / size})
            if val_auc > progress["best_auc"] + 1e-4:
                progress.update(best_auc=val_auc, best_epoch=epoch + 1, bad_epochs=0)
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                progress["bad_epochs"] += 1
            progress["epoch"] = epoch + 1
            if rank == 0:
                buf = io.BytesIO()
                torch.save({**progress, "history": history, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "best_model": best_state}, buf)
                artifacts.write_bytes(spec["checkpoint"], buf.getvalue())
                # the metrics are allreduced: every rank has the same, one line is enough
                print(f"[rank 0/{size}] epoch {epoch + 1}: train loss {total / n:.4f}, "
                      f"val loss {val_loss:.4f}, val AUC {val_auc:.4f}", flush=True)
    finally:
        batches.close()  # stops a streaming reader
    # where this rank ran: on a cluster the working folder is the executor's own
    # (standalone: <worker dir>/<app id>/<executor id>), which shows the placement
    result = {"rank": rank, "size": size, "digest": parameter_digest(model), "history": history,
              "best_epoch": progress["best_epoch"], "best_auc": progress["best_auc"],
              "placement": {"host": socket.gethostname(), "pid": os.getpid(), "workdir": os.getcwd()}}
    if rank == 0:
        buf = io.BytesIO()
        torch.save(best_state if best_state is not None else model.state_dict(), buf)
        result["state"] = buf.getvalue()
    comm.close()
    return result


# ---------------------------------------------------------------- driver side


def launch(spark, spec: dict, backend: str, workers: int, verbose: bool = False) -> list[dict]:
    """Run `train_worker` on `workers` processes; the results of every rank (torch: rank 0 only)."""
    if backend == "horovod":
        import horovod.spark

        return horovod.spark.run(train_worker, args=(spec,), num_proc=workers, use_gloo=True,
                                 verbose=2 if verbose else 0, start_timeout=600)
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=workers, local_mode=False, use_gpu=spec["use_gpu"])
    return [distributor.run(train_worker, spec)]


def logistic_baseline(frame, inputs: list[str]) -> dict:
    """Spark ML logistic regression on the same split: validation AUC and log loss."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.functions import vector_to_array

    assembled = VectorAssembler(inputCols=inputs, outputCol="x").transform(frame)
    model = LogisticRegression(featuresCol="x", labelCol=LABEL, maxIter=100).fit(assembled.where(F.col("split") == "train"))
    scored = model.transform(assembled.where(F.col("split") == "val"))
    auc = BinaryClassificationEvaluator(rawPredictionCol="rawPrediction", labelCol=LABEL).evaluate(scored)
    p = F.least(F.greatest(vector_to_array("probability")[1], F.lit(1e-7)), F.lit(1 - 1e-7))
    y = F.col(LABEL)
    log_loss = scored.select(F.avg(-(y * F.log(p) + (1 - y) * F.log(1 - p)))).first()[0]
    return {"auc": float(auc), "log_loss": float(log_loss)}


def model_versions(lake: Lake) -> list[str]:
    """Churn model versions with finished metadata, oldest first by training time."""
    root = f"{lake.root}/models/{MODEL_KIND}"
    found = []
    for name in artifacts.list_dirs(root):
        meta = f"{root}/{name}/{METADATA}"
        if artifacts.exists(meta):
            found.append((artifacts.read_json(meta).get("trained_at", ""), name))
    return [name for _, name in sorted(found)]


def load_metadata(lake: Lake, version: str | None = None) -> dict:
    """metadata.json of `version`, or of the latest trained model."""
    if version is None:
        versions = model_versions(lake)
        if not versions:
            raise StageError(f"no churn model under {lake.root}/models/{MODEL_KIND}: run `lakemine train` first")
        version = versions[-1]
    path = f"{lake.model_path(MODEL_KIND, version)}/{METADATA}"
    if not artifacts.exists(path):
        raise UsageError(f"--model-version {version}: no {path}")
    return artifacts.read_json(path)


def _write_split(frame, split: str, columns: list[str], files: int, url: str) -> None:
    frame.where(F.col("split") == split).select(*columns).repartition(files).write.mode("overwrite").parquet(url)


def run_train(
    lake: Lake, cfg: Config, p: TrainParams, as_of: date | None = None, verbose: bool = False,
    spec_out: str | None = None,
) -> tuple[Run, dict | None]:
    """Train for the labels on or before `as_of` (default: the latest complete ones); returns
    the run and the model's metadata. Re-running with the same inputs resumes the same
    model version from its checkpoint. With `spec_out`, prepare the data, write the worker
    spec there (for `horovodrun ... python -m lakemine.train --spec FILE`) and stop."""
    spark = lake.spark
    inputs_v = {t: lake.table_version(t) for t in (schemas.GOLD_CUSTOMER_FEATURES, schemas.GOLD_LABELS, schemas.GOLD_FEATURE_SCALER)}
    for table, v in inputs_v.items():
        if v is None:
            raise StageError(f"table {table} does not exist in lake {lake.root}: run `lakemine features` first")
    labels = lake.read_table(schemas.GOLD_LABELS, inputs_v[schemas.GOLD_LABELS])
    if as_of is None:
        as_of = labels.where("complete").agg(F.max("as_of")).first()[0]
        if as_of is None:
            raise StageError(
                f"{schemas.GOLD_LABELS} has no complete labels: run `lakemine features --as-of D` for a date D "
                "at least the churn horizon before the end of the data"
            )
    segments = latest_segment_model(lake)
    params = {**asdict(p), "hidden": list(p.hidden)}
    # The epoch budget is not part of the version: a re-run with more --epochs continues the
    # same model from its checkpoint.
    identity = {k: v for k, v in params.items() if k != "epochs"}
    with record_run(lake, STAGE, as_of, params) as run:
        run.inputs.update(inputs_v)
        features = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES, inputs_v[schemas.GOLD_CUSTOMER_FEATURES])
        frame, split = training_frame(features, labels, segments, as_of, p.val_fraction, p.seed)
        frame = frame.cache()
        try:
            # The version follows the training rows' content, not the tables' Delta versions:
            # re-running the features for the same data rewrites the tables but resumes (and
            # so keeps) the same model, and scoring MERGEs onto the same rows.
            key = {"data": fingerprint(frame, ["customer_id", "as_of", "split", LABEL, *input_columns(segments)]),
                   "segment_model": segments.as_of if segments else None}
            version = f"{as_of.isoformat()}-{deterministic_run_id(STAGE, as_of, identity, key)[:8]}"
            model_dir = lake.model_path(MODEL_KIND, version)
            run.run_id = deterministic_run_id(STAGE, as_of, params, key)
            counts = {(r["split"], int(r[LABEL])): r["count"] for r in frame.groupBy("split", LABEL).count().collect()}
            for part in ("train", "val"):
                for cls in (0, 1):
                    if not counts.get((part, cls)):
                        raise StageError(
                            f"the {part} split has no rows with {LABEL} = {cls} ({sum(counts.values())} labelled rows up to "
                            f"{as_of}); more customers or another --as-of are needed"
                        )
            n_train = counts[("train", 0)] + counts[("train", 1)]
            n_val = counts[("val", 0)] + counts[("val", 1)]
            run.rows_in = n_train + n_val
            inputs = input_columns(segments)
            files = max(4, 2 * p.workers)
            train_url = artifacts.dataset_url(f"{model_dir}/data/train")
            val_url = artifacts.dataset_url(f"{model_dir}/data/val")
            _write_split(frame, "train", inputs + [LABEL], files, train_url)
            _write_split(frame, "val", inputs + [LABEL], files, val_url)
            baseline = logistic_baseline(frame, inputs)
            train_rows = frame.where(F.col("split") == "train")
            edges = drift.quantile_edges(train_rows, FEATURES, cfg.score.drift_bins)
            expected, _ = drift.proportions(train_rows, edges)
        finally:
            frame.unpersist()
        scaler_dates = sorted(set(split.train_dates) | set(split.val_dates))
        scaler = [
            {k: (v.isoformat() if isinstance(v, date) else v) for k, v in r.asDict().items()}
            for r in lake.read_table(schemas.GOLD_FEATURE_SCALER, inputs_v[schemas.GOLD_FEATURE_SCALER])
            .where(F.col("as_of").isin([date.fromisoformat(d) for d in scaler_dates])).orderBy("as_of", "feature").collect()
        ]
        use_gpu = spark.sparkContext.getConf().get("spark.executor.resource.gpu.amount", None) is not None
        batch = effective_batch_size(p.batch_size, n_train, p.workers)
        spec = {
            **params, "inputs": inputs, "train_url": train_url, "val_url": val_url,
            "checkpoint": f"{model_dir}/{CHECKPOINT}", "pos_weight": counts[("train", 0)] / counts[("train", 1)],
            "batch_size": batch, "steps_per_epoch": max(1, math.ceil(n_train / (batch * p.workers))),
            "train_rows": n_train, "val_rows": n_val,
            "threads": max(1, (os.cpu_count() or 1) // p.workers), "use_gpu": use_gpu,
        }
        if spec_out:
            with open(spec_out, "w", encoding="utf-8") as fh:
                json.dump({**spec, "use_gpu": True}, fh, indent=2)
            run.message = f"model {version}: data prepared, worker spec written to {spec_out}"
            return run, None
        results = launch(spark, spec, p.backend, p.workers, verbose)
        chief = next(r for r in results if r["rank"] == 0)
        artifacts.write_bytes(f"{model_dir}/{WEIGHTS}", chief["state"])
        best = next(h for h in chief["history"] if h["epoch"] == chief["best_epoch"])
        meta = {
            "model_version": version, "kind": MODEL_KIND, "as_of": as_of.isoformat(),
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "features": inputs, "label": LABEL, "architecture": {
                "class": "lakemine.model.ChurnMLP", "n_inputs": len(inputs), "hidden": list(p.hidden),
                "dropout": p.dropout, "batch_norm": p.batch_norm},
            "segment_model": {"path": segments.path, "as_of": segments.as_of, "k": segments.k,
                              "columns": list(segments.columns)} if segments else None,
            "scaler": scaler, "inputs": inputs_v, "split": asdict(split),
            "rows": {"train": n_train, "val": n_val, "train_churned": counts[("train", 1)], "val_churned": counts[("val", 1)]},
            "backend": p.backend, "world_size": results[0]["size"], "params": params,
            "epochs": {"max": p.epochs, "run": len(chief["history"]), "best": chief["best_epoch"]},
            "batch_size": {"configured": p.batch_size, "used": batch},
            "calibration": {"pos_weight": spec["pos_weight"], "logit_offset": logit_offset(spec["pos_weight"])},
            "history": chief["history"],
            "validation": {"auc": best["val_auc"], "log_loss": best["val_log_loss"]},
            "baseline": {"model": "logistic regression (Spark ML)", **baseline},
            "drift_reference": {"bins": cfg.score.drift_bins, "edges": edges, "expected": expected},
            "rank_digests": {str(r["rank"]): r["digest"] for r in results},
            "placement": {str(r["rank"]): r["placement"] for r in results},
        }
        artifacts.write_json(f"{model_dir}/{METADATA}", meta)
        run.message = (f"model {version}: validation AUC {best['val_auc']:.4f} (baseline {baseline['auc']:.4f}), "
                       f"best epoch {chief['best_epoch']} of {len(chief['history'])}, {p.backend} x {results[0]['size']}")
    return run, meta


def _main(argv: list[str] | None = None) -> int:
    """Outside Spark: `horovodrun -np N python -m lakemine.train --spec spec.json` runs the same
    worker function on N processes (GPU nodes: one per GPU). `lakemine train --write-spec`
    writes the spec after preparing the data."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lakemine.train", description=_main.__doc__)
    ap.add_argument("--spec", required=True, help="JSON spec written by `lakemine train --write-spec FILE`")
    args = ap.parse_args(argv)
    with open(args.spec, encoding="utf-8") as fh:
        spec = json.load(fh)
    result = train_worker(spec)
    if result["rank"] == 0:
        artifacts.write_bytes(spec["checkpoint"].rsplit("/", 1)[0] + "/" + WEIGHTS, result["state"])
        print(json.dumps({k: v for k, v in result.items() if k != "state"}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
