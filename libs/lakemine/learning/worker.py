"""Inside each training process: one rank of the distributed churn training (`train_worker`).

The driver (lakemine.learning.train) prepares the data and a plain-valued `spec`, then runs
`train_worker(spec)` on N processes under `horovod.spark.run`, TorchDistributor or
`horovodrun` (`python -m lakemine.learning.train --spec FILE`).

Each worker reads its own shard through Petastorm (`make_batch_reader(cur_shard=rank,
shard_count=size)`, seeded shuffling), so no rank holds the whole set. Horovod:
`DistributedOptimizer` (ring-allreduce of gradients), parameters and optimizer state
broadcast from rank 0. Both: learning rate scaled by the world size after a linear warm-up,
metrics summed with allreduce, validation AUC from allreduced score histograms (a fixed
size, whatever the rows), early stopping
with patience, a checkpoint by rank 0 after every epoch and resumption from it on a re-run
(none when `spec["checkpoint"]` is None: the tuner's trials).
The network (lakemine.learning.model.ChurnMLP) knows nothing of any of this.

The driver imports this module: torch, Petastorm and Horovod are imported inside the
functions that use them.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import socket
import time
from typing import Any, NamedTuple

from lakemine.core import storage
from lakemine.learning.trainset import LABEL

# Petastorm options for reading a shard once, in file order.
_ONCE = {"num_epochs": 1, "shuffle_row_groups": False, "workers_count": 1}
_PROGRESS = ("epoch", "history", "best_auc", "best_epoch", "bad_epochs")


def logit_offset(pos_weight: float) -> float:
    """Class weighting multiplies the odds the network learns by `pos_weight`; adding
    -log(pos_weight) to its logit gives calibrated churn probabilities (AUC unchanged)."""
    return -math.log(pos_weight)


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

    def broadcast_object(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_(self, tensor) -> None:
        self.dist.all_reduce(tensor)
        tensor /= self.size

    def close(self) -> None:
        self.dist.destroy_process_group()


class _LocalComm:
    """One process, no collectives: a model-search trial (lakemine.learning.tune) in one Spark task."""

    rank, size = 0, 1

    def __init__(self, cuda: bool) -> None:
        # on a GPU executor, the GPU Spark gave this task (spark.task.resource.gpu.amount), so
        # trials running side by side do not share one device
        self.local_rank = 0
        if cuda:
            from pyspark import TaskContext

            task = TaskContext.get()
            gpus = task.resources().get("gpu") if task is not None else None
            if gpus is not None and gpus.addresses:
                self.local_rank = int(gpus.addresses[0])

    def wrap(self, model, optimizer, optimizer_state):
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        return model, optimizer

    def sum(self, values: list[float]) -> list[float]:
        return [float(v) for v in values]

    def broadcast_object(self, obj):
        return obj

    def average_(self, tensor) -> None:
        pass

    def close(self) -> None:
        pass


_COMMS = {"horovod": _HorovodComm, "torch": _TorchComm, "local": _LocalComm}

# validation AUC from histograms of the calibrated logit over [-AUC_LOGIT, AUC_LOGIT] (clipped):
# bins 4.9e-4 wide in logit (1.2e-4 in probability near 0.5); pairs within one bin count half
AUC_BINS, AUC_LOGIT = 1 << 16, 16.0


def auc_histogram(logits, labels):
    """Counts per logit bin: negatives in the first AUC_BINS, positives in the next."""
    import numpy as np

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels) > 0.5
    idx = np.clip(((logits + AUC_LOGIT) / (2 * AUC_LOGIT) * AUC_BINS).astype(np.int64), 0, AUC_BINS - 1)
    return np.concatenate([np.bincount(idx[~labels], minlength=AUC_BINS),
                           np.bincount(idx[labels], minlength=AUC_BINS)]).astype(np.float64)


def auc_from_histogram(pos, neg) -> float:
    """The AUC of scores binned in order: positive-negative pairs with the positive in a higher
    bin, plus half of those in the same bin."""
    import numpy as np

    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float(((pos * below).sum() + 0.5 * (pos * neg).sum()) / (n_pos * n_neg))


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


class _Losses(NamedTuple):
    weighted: Any  # class-weighted BCE: what the network is trained on
    plain: Any  # unweighted BCE, of the calibrated logits
    offset: float  # logit_offset(pos_weight)


# ---------------------------------------------------------------- the steps of train_worker


def train_worker(spec: dict) -> dict:
    """One rank of the distributed training; the same function under every launcher.

    `spec` holds only plain values (it is pickled to the workers). Returns this rank's
    history and parameter digest; rank 0 also returns the best epoch's weights.
    """
    _quiet_petastorm()
    comm, device = _set_up(spec)
    model, optimizer = _new_model(spec, device)
    progress, best_state, optimizer_state = _restore_checkpoint(spec, comm, model)
    net, optimizer = comm.wrap(model, optimizer, optimizer_state)
    losses = _losses(spec["pos_weight"], device)
    validation = _validation_shard(spec, comm, device)
    batches = _training_batches(spec, comm, device)
    try:
        for epoch in range(progress["epoch"], spec["epochs"]):
            if progress["bad_epochs"] >= spec["patience"]:
                break
            trained = _train_epoch(spec, comm, net, model, optimizer, losses.weighted, batches, epoch)
            scores = _evaluate(comm, net, losses, validation())
            best_state = _record_epoch(progress, epoch, trained, scores, model, best_state)
            if comm.rank == 0 and spec["checkpoint"]:  # (trials: no checkpoint, and no epoch lines
                _save_checkpoint(spec, progress, model, optimizer, best_state)  # interleaving in the log)
                _print_epoch(comm, progress["history"][-1])
    finally:
        batches.close()  # stops a streaming reader
    result = _result(comm, model, progress, best_state)
    comm.close()
    return result


def _quiet_petastorm() -> None:
    import warnings

    # Petastorm 0.13.1 calls pyarrow's legacy dataset API (the reason for the pyarrow 14 pin);
    # its deprecation warnings, twice per rank and epoch, say nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    warnings.filterwarnings("ignore", message="shard_seed was deprecated")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # its batches are read-only views


def _set_up(spec: dict):
    """Threads, this rank's communicator and its device (a GPU when asked for and present)."""
    import torch

    torch.set_num_threads(spec["threads"])
    cuda = spec["use_gpu"] and torch.cuda.is_available()
    comm = _COMMS[spec["backend"]](cuda)
    device = torch.device(f"cuda:{comm.local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return comm, device


def _new_model(spec: dict, device):
    """The seeded network and its optimizer, not yet distributed: AdamW (Adam with decoupled
    weight decay; with `weight_decay` 0 it is Adam)."""
    import torch

    from lakemine.learning.model import ChurnMLP

    torch.manual_seed(spec["seed"])
    model = ChurnMLP(len(spec["inputs"]), tuple(spec["hidden"]), spec["dropout"], spec["batch_norm"],
                     spec["activation"]).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=spec["learning_rate"], weight_decay=spec["weight_decay"])


def _restore_checkpoint(spec: dict, comm, model):
    """Rank 0 loads the checkpoint, if any, into `model`; every rank gets the progress.
    Returns (progress, best epoch's weights or None, optimizer state for comm.wrap or None)."""
    import torch

    checkpoint = None
    if comm.rank == 0 and spec["checkpoint"] and storage.exists(spec["checkpoint"]):
        checkpoint = torch.load(io.BytesIO(storage.read_bytes(spec["checkpoint"])), map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["model"])
    progress = comm.broadcast_object(
        {k: checkpoint[k] for k in _PROGRESS}
        if checkpoint else {"epoch": 0, "history": [], "best_auc": -1.0, "best_epoch": 0, "bad_epochs": 0}
    )
    if not checkpoint:
        return progress, None, None
    return progress, checkpoint["best_model"], checkpoint["optimizer"]


def _losses(pos_weight: float, device) -> _Losses:
    import torch

    return _Losses(
        weighted=torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device), reduction="sum"),
        plain=torch.nn.BCEWithLogitsLoss(reduction="sum"),
        offset=logit_offset(pos_weight),  # the validation log loss is of calibrated probabilities
    )


def _read_shard(spec: dict, comm, device, url: str, batch_size: int, queue: int = 0, **options):
    """This rank's shard of `url` in Petastorm batches, as (inputs, label) tensors on `device`.
    The reader is stopped by hand, not with `with`: its __exit__ prints "Cache cleanup
    complete." each time."""
    import torch
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    inputs = spec["inputs"]
    reader = make_batch_reader(url, schema_fields=inputs + [LABEL], cur_shard=comm.rank, shard_count=comm.size, **options)
    try:
        for batch in BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=queue):
            x = torch.stack([batch[c].float() for c in inputs], dim=1).to(device)
            yield x, batch[LABEL].float().to(device)
    finally:
        reader.stop()
        reader.join()


# Small shards are read once and kept as tensors (4 bytes per input and row); larger ones
# are streamed from the Parquet files every epoch. Either way a rank holds only its shard.
def _fits(spec: dict, comm, rows: int) -> bool:
    """Whether this rank's shard of a split with `rows` rows is kept in memory."""
    return math.ceil(rows / comm.size) <= spec["cache_rows"]


def _validation_shard(spec: dict, comm, device):
    """A function giving this rank's validation batches: read once and kept, or read anew
    at each call."""
    if not _fits(spec, comm, spec["val_rows"]):
        return lambda: _read_shard(spec, comm, device, spec["val_url"], 4096, **_ONCE)
    cache = list(_read_shard(spec, comm, device, spec["val_url"], 4096, **_ONCE))
    return lambda: cache


def _training_batches(spec: dict, comm, device):
    """Endless training batches of this rank's shard: seeded passes over it in memory, or a
    seeded shuffled stream from the Parquet files."""
    import torch

    seed = spec["seed"] + comm.rank
    if not _fits(spec, comm, spec["train_rows"]):
        return _read_shard(spec, comm, device, spec["train_url"], spec["batch_size"], 4 * spec["batch_size"],
                           num_epochs=None, shuffle_row_groups=True, shuffle_rows=True, seed=seed,
                           shard_seed=spec["seed"], workers_count=2)
    # read in file order by one thread, so the same files give the same passes
    shard = list(_read_shard(spec, comm, device, spec["train_url"], 65536, **_ONCE))
    if not shard:
        raise RuntimeError(f"rank {comm.rank} of {comm.size}: its shard of {spec['train_url']} has no rows")
    return in_memory_passes(torch.cat([x for x, _ in shard]), torch.cat([y for _, y in shard]), spec["batch_size"], seed)


def _train_epoch(spec: dict, comm, net, model, optimizer, weighted, batches, epoch: int) -> dict:
    """`steps_per_epoch` optimizer steps; the loss, rows and seconds summed over the ranks."""
    net.train()
    steps, lr, size = spec["steps_per_epoch"], spec["learning_rate"], comm.size
    target = spec.get("lr_scale", size)  # the rows of a step over one process's (see train.lr_scale)
    warm = spec["warmup_epochs"] * steps
    loss_sum, seen = 0.0, 0
    started = time.perf_counter()
    for step in range(steps):
        # from the single-worker rate to target x that rate over the warm-up (Goyal et al.)
        g = epoch * steps + step
        scale = 1 + (target - 1) * min(1.0, g / warm) if warm else target
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
    return {"train_loss": total / n, "samples": int(n), "train_secs": secs / size}


def _evaluate(comm, net, losses: _Losses, batches) -> dict:
    """Validation losses (weighted; log loss of the calibrated probabilities) over every
    rank's rows, and the AUC from the ranks' score histograms summed by one allreduce of
    AUC_BINS counts per class (no rank gathers the others' predictions)."""
    import numpy as np
    import torch

    net.eval()
    hist, loss_w, loss_p, n_local = np.zeros(2 * AUC_BINS), 0.0, 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = net(x)
            loss_w += float(losses.weighted(logits, y))
            loss_p += float(losses.plain(logits + losses.offset, y))
            hist += auc_histogram((logits + losses.offset).cpu().numpy().ravel(), y.cpu().numpy().ravel())
            n_local += int(y.shape[0])
    total_w, total_p, n = comm.sum([loss_w, loss_p, float(n_local)])
    summed = np.asarray(comm.sum(hist), dtype=np.float64)
    return {"val_loss": total_w / n, "val_log_loss": total_p / n,
            "val_auc": auc_from_histogram(summed[AUC_BINS:], summed[:AUC_BINS])}


def _record_epoch(progress: dict, epoch: int, trained: dict, scores: dict, model, best_state):
    """Append the epoch to the history and update early stopping; the best weights so far."""
    progress["history"].append({"epoch": epoch + 1, "train_loss": trained["train_loss"], **scores,
                                "samples": trained["samples"], "train_secs": trained["train_secs"]})
    if scores["val_auc"] > progress["best_auc"] + 1e-4:
        progress.update(best_auc=scores["val_auc"], best_epoch=epoch + 1, bad_epochs=0)
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    else:
        progress["bad_epochs"] += 1
    progress["epoch"] = epoch + 1
    return best_state


def _save_checkpoint(spec: dict, progress: dict, model, optimizer, best_state) -> None:
    import torch

    buf = io.BytesIO()
    torch.save({**progress, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "best_model": best_state}, buf)
    storage.write_bytes(spec["checkpoint"], buf.getvalue())


def _print_epoch(comm, h: dict) -> None:
    # the metrics are allreduced: every rank has the same, one line is enough
    print(f"[rank 0/{comm.size}] epoch {h['epoch']}: train loss {h['train_loss']:.4f}, "
          f"val loss {h['val_loss']:.4f}, val AUC {h['val_auc']:.4f}", flush=True)


def _result(comm, model, progress: dict, best_state) -> dict:
    """This rank's history, digest and placement; rank 0 adds the best epoch's weights."""
    import torch

    # where this rank ran: on a cluster the working folder is the executor's own
    # (standalone: <worker dir>/<app id>/<executor id>), which shows the placement
    result = {"rank": comm.rank, "size": comm.size, "digest": parameter_digest(model), "history": progress["history"],
              "best_epoch": progress["best_epoch"], "best_auc": progress["best_auc"],
              "placement": {"host": socket.gethostname(), "pid": os.getpid(), "workdir": os.getcwd()}}
    if comm.rank == 0:
        buf = io.BytesIO()
        torch.save(best_state if best_state is not None else model.state_dict(), buf)
        result["state"] = buf.getvalue()
    return result
