"""Benchmark: training samples/s through Petastorm + Horovod against the same model trained from
in-memory tensors in one process, and scoring rows/s through the Arrow UDF against plain torch.

Data: a synthetic training set with the model's real input columns (10 z-features, 4 segment
one-hots, the label), written as Parquet exactly as `lakemine train` writes its splits.

* petastorm+horovod: `lakemine.train.launch` with `horovod.spark.run` on `local[2]`, 2 ranks, streamed
  (the shard read from Parquet every epoch) and cached (read once, kept as tensors: `train.cache_rows`)
  of 1 thread each, batch 256 per rank; samples/s = samples / time in the epochs' training
  steps (as recorded by the workers), and also over the whole launch (process start-up,
  readers and validation included).
* in-memory: one process, 2 threads, the same network, the same global batch (2 x --batch-size), tensors
  already in memory, the same epochs.
* scoring: `score_features` (iterator Arrow UDF, model loaded once per Python worker) over the
  rows as a Spark DataFrame, written to the `noop` sink, against `model(x)` on the same rows
  in memory with 2 threads.

Median of --repeat runs. Writes bench/results/train_score.json and .md. Never run by the tests.

    .venv/bin/python bench/train_score_throughput.py --rows 200000 --epochs 3 --repeat 3
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import pyspark.sql.functions as F
import torch

from lakemine import artifacts
from lakemine.config import TrainConfig, load_config
from lakemine.features import Z_FEATURES
from lakemine.model import ChurnMLP
from lakemine.score import score_features
from lakemine.spark import session
from lakemine.train import launch
from lakemine.trainset import LABEL

REPO = Path(__file__).resolve().parents[1]
K = 4
INPUTS = list(Z_FEATURES) + [f"segment_{i}" for i in range(K)]
HIDDEN = (64, 32)


def make_rows(spark, n: int, seed: int = 1):
    """Deterministic rows: normal z-features, a one-hot segment, a label from a known logit."""
    df = spark.range(n).withColumnRenamed("id", "i")
    for j, c in enumerate(Z_FEATURES):
        df = df.withColumn(c, F.randn(seed + j).cast("float"))
    seg = (F.abs(F.xxhash64("i", F.lit(seed))) % K).cast("int")
    df = df.withColumn("segment", seg)
    for k in range(K):
        df = df.withColumn(f"segment_{k}", (seg == k).cast("float"))
    logit = F.col(Z_FEATURES[0]) * 1.5 - F.col(Z_FEATURES[1]) + F.col(Z_FEATURES[2]) * F.col(Z_FEATURES[3])
    return df.withColumn(LABEL, (F.rand(seed + 99) < 1 / (1 + F.exp(-logit))).cast("float"))


def spec_for(work: Path, epochs: int, n_train: int, batch: int, cache_rows: int) -> dict:
    return {
        "backend": "horovod", "workers": 2, "epochs": epochs, "batch_size": batch, "learning_rate": 0.001,
        "warmup_epochs": 1, "patience": 10**6, "hidden": list(HIDDEN), "dropout": 0.1, "batch_norm": False,
        "val_fraction": 0.2, "seed": 42, "inputs": INPUTS,
        "train_url": artifacts.dataset_url(str(work / "train")), "val_url": artifacts.dataset_url(str(work / "val")),
        "checkpoint": str(work / "ckpt" / "checkpoint.pt"), "pos_weight": 1.0,
        "steps_per_epoch": -(-n_train // (2 * batch)), "threads": 1, "use_gpu": False,
        "train_rows": n_train, "val_rows": n_train // 10, "cache_rows": cache_rows,
    }


def time_petastorm_horovod(spark, spec: dict) -> dict:
    shutil.rmtree(Path(spec["checkpoint"]).parent, ignore_errors=True)
    t0 = time.perf_counter()
    results = launch(spark, spec, "horovod", 2)
    wall = time.perf_counter() - t0
    history = next(r for r in results if r["rank"] == 0)["history"]
    samples = sum(h["samples"] for h in history)
    train_secs = sum(h["train_secs"] for h in history)
    return {"samples": samples, "train_secs": train_secs, "wall_secs": wall,
            "samples_per_sec": samples / train_secs, "samples_per_sec_wall": samples / wall}


def time_in_memory(x: torch.Tensor, y: torch.Tensor, epochs: int, steps: int, batch: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(42)
    net = ChurnMLP(x.shape[1], HIDDEN, 0.1, False)
    opt = torch.optim.Adam(net.parameters(), lr=0.002)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(42)
    samples, secs = 0, 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(x.shape[0], generator=g)
        for s in range(steps):
            idx = order[(s * batch) % x.shape[0]:][:batch]
            if idx.shape[0] < batch:
                idx = torch.cat([idx, order[: batch - idx.shape[0]]])
            opt.zero_grad()
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            samples += idx.shape[0]
        secs += time.perf_counter() - t0
    return {"samples": samples, "train_secs": secs, "samples_per_sec": samples / secs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--score-rows", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256, help="per rank; the in-memory run uses 2x (the same global batch)")
    ap.add_argument("--work", default=str(REPO / "bench" / "work" / "train"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_score"))
    args = ap.parse_args()

    cfg = load_config(env={"LAKEMINE_SPARK__MASTER": "local[2]"})
    spark = session(cfg)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    rows = make_rows(spark, args.rows)
    rows.select(*INPUTS, LABEL).repartition(8).write.parquet(artifacts.dataset_url(str(work / "train")))
    make_rows(spark, args.rows // 10, seed=7).select(*INPUTS, LABEL).repartition(4).write.parquet(
        artifacts.dataset_url(str(work / "val")))
    pdf = spark.read.parquet(str(work / "train")).toPandas()
    x = torch.from_numpy(pdf[INPUTS].to_numpy(dtype=np.float32))
    y = torch.from_numpy(pdf[LABEL].to_numpy(dtype=np.float32))
    # streamed: every epoch read from the Parquet files (shards above train.cache_rows);
    # cached: each rank reads its shard once through Petastorm and keeps it as tensors
    modes = {"streamed": 0, "cached": TrainConfig().cache_rows}
    specs = {m: spec_for(work, args.epochs, args.rows, args.batch_size, c) for m, c in modes.items()}
    steps = specs["cached"]["steps_per_epoch"]

    time_petastorm_horovod(spark, {**specs["streamed"], "epochs": 1})  # warm-up: imports, page cache
    ph, mem = {m: [] for m in modes}, []
    for i in range(args.repeat):
        for m in modes:
            ph[m].append(time_petastorm_horovod(spark, specs[m]))
        mem.append(time_in_memory(x, y, args.epochs, steps, 2 * args.batch_size))
        print(f"train run {i + 1}: " + ", ".join(
            f"petastorm+horovod {m} {ph[m][-1]['samples_per_sec']:,.0f} samples/s "
            f"({ph[m][-1]['samples_per_sec_wall']:,.0f} over the whole launch)" for m in modes)
            + f", in-memory {mem[-1]['samples_per_sec']:,.0f}", flush=True)

    # scoring: a model with the real architecture, saved where score_features reads it
    torch.manual_seed(0)
    net = ChurnMLP(len(INPUTS), HIDDEN, 0.1, False).eval()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    weights = str(work / "model" / "state_dict.pt")
    artifacts.write_bytes(weights, buf.getvalue())
    meta = {"model_version": "bench", "features": INPUTS, "segment_model": None,
            "architecture": {"n_inputs": len(INPUTS), "hidden": list(HIDDEN), "dropout": 0.1, "batch_norm": False}}
    make_rows(spark, args.score_rows, seed=3).withColumn("customer_id", F.col("i").cast("string")).withColumn(
        "as_of", F.current_date()).repartition(4).write.parquet(str(work / "score"))
    features = spark.read.parquet(str(work / "score")).cache()
    features.count()
    sx = torch.from_numpy(features.select(*INPUTS).toPandas().to_numpy(dtype=np.float32))
    udf_s, torch_s = [], []
    score_features(features, meta, weights).write.format("noop").mode("overwrite").save()  # warm-up
    for i in range(args.repeat):
        t0 = time.perf_counter()
        score_features(features, meta, weights).write.format("noop").mode("overwrite").save()
        udf_s.append(time.perf_counter() - t0)
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in range(0, sx.shape[0], 10_000):
                torch.sigmoid(net(sx[b: b + 10_000]))
        torch_s.append(time.perf_counter() - t0)
        print(f"score run {i + 1}: Arrow UDF {args.score_rows / udf_s[-1]:,.0f} rows/s, plain torch "
              f"{args.score_rows / torch_s[-1]:,.0f} rows/s", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    peer = med(r["samples_per_sec"] for r in mem)
    result = {
        "train": {
            "rows": args.rows, "epochs": args.epochs, "batch_per_rank": args.batch_size, "global_batch": 2 * args.batch_size,
            "in_memory_samples_per_sec": peer,
            **{m: {"cache_rows": c, "samples_per_sec": med(r["samples_per_sec"] for r in ph[m]),
                   "samples_per_sec_whole_launch": med(r["samples_per_sec_wall"] for r in ph[m])} for m, c in modes.items()},
            "runs": {**{f"petastorm_horovod_{m}": ph[m] for m in modes}, "in_memory": mem},
        },
        "score": {
            "rows": args.score_rows, "arrow_udf_rows_per_sec": args.score_rows / med(udf_s),
            "plain_torch_rows_per_sec": args.score_rows / med(torch_s), "runs": {"arrow_udf_secs": udf_s, "torch_secs": torch_s},
        },
    }
    t = result["train"]
    for m in modes:
        t[m]["ratio"] = t[m]["samples_per_sec"] / peer
        t[m]["ratio_whole_launch"] = t[m]["samples_per_sec_whole_launch"] / peer
    s = result["score"]
    s["ratio"] = s["arrow_udf_rows_per_sec"] / s["plain_torch_rows_per_sec"]
    meta_out = {
        "benchmark": "training through Petastorm + Horovod vs in-memory; scoring through the Arrow UDF vs plain torch",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "spark": "local[2], warm session", "repeat": args.repeat,
    }
    Path(args.out + ".json").write_text(json.dumps({"meta": meta_out, **result}, indent=2))
    md = [
        f"# training and scoring throughput ({meta_out['date']})", "",
        f"{meta_out['machine']}; median of {args.repeat} runs; {len(INPUTS)} inputs, MLP {HIDDEN}.", "",
        "| what | rows | lakemine (per s) | peer (per s) | lakemine / peer |",
        "|---|---:|---:|---:|---:|",
        *[line for m in modes for line in (
            f"| training samples, Petastorm ({m}) + Horovod 2 x 1 thread vs in-memory 1 x 2 threads, {args.epochs} epochs, "
            f"global batch {2 * args.batch_size} (training steps) | {args.rows:,} | {t[m]['samples_per_sec']:,.0f} | "
            f"{peer:,.0f} | {t[m]['ratio']:.2f} |",
            f"| the same, over the whole launch (start-up, readers, validation) | {args.rows:,} | "
            f"{t[m]['samples_per_sec_whole_launch']:,.0f} | {peer:,.0f} | {t[m]['ratio_whole_launch']:.2f} |")],
        f"| scoring rows, Arrow UDF (Spark, noop sink) vs plain torch in memory | {args.score_rows:,} | "
        f"{s['arrow_udf_rows_per_sec']:,.0f} | {s['plain_torch_rows_per_sec']:,.0f} | {s['ratio']:.2f} |",
    ]
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
