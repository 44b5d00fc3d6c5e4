"""Benchmark: training samples/s through Petastorm + Horovod against the same model trained from
in-memory tensors in one process, and scoring rows/s through the Arrow UDF against plain torch.

Data: a synthetic training set with the model's real input columns (10 z-features, 4 segment
one-hots, the label), written as Parquet exactly as `lakemine train` writes its splits.

* petastorm+horovod: `lakemine.learning.train.launch` with `horovod.spark.run` on `local[2]`, 2 ranks of
  1 thread each, streamed (the shard read from Parquet every epoch) and cached (read once, kept
  as tensors: `train.cache_rows`), at each --batch-size rows per rank (the default sweeps 256,
  1,024 and 4,096, the configured default); samples/s = samples / time in the epochs' training
  steps (as recorded by the workers), and also over the whole launch (process start-up,
  readers and validation included).
* in-memory: one process, 2 threads, the same network, the same global batch (2 x the rows per
  rank), tensors already in memory, the same epochs.
* quality: both report the validation AUC after those epochs (the data's own AUC, from the
  logit the labels were drawn from, is the ceiling). With --quality-epochs N (default: the
  configured train.epochs), one more cached lakemine run per batch size trains for up to N
  epochs with the configured early stopping, to show what the batch size does to the model.
* scoring: `score_features` (iterator Arrow UDF, model loaded once per Python worker) over the
  rows as a Spark DataFrame, written to the `noop` sink, against `model(x)` on the same rows
  in memory with 2 threads.

Median of --repeat runs. Writes bench/results/train_score.json, .md and .png. Never run by the tests.

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

from lakemine.core import storage
from lakemine.core.config import load_config, packaged_defaults
from lakemine.io.spark import session
from lakemine.learning.model import ChurnMLP
from lakemine.learning.score import score_features
from lakemine.learning.train import effective_batch_size, launch
from lakemine.learning.trainset import LABEL
from lakemine.learning.worker import roc_auc
from lakemine.stages.features import Z_FEATURES

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
    return df.withColumn("logit", logit).withColumn(LABEL, (F.rand(seed + 99) < 1 / (1 + F.exp(-logit))).cast("float"))


def spec_for(work: Path, epochs: int, n_train: int, batch: int, cache_rows: int, patience: int = 10**6) -> dict:
    return {
        "backend": "horovod", "workers": 2, "epochs": epochs, "batch_size": batch, "learning_rate": 0.001,
        "warmup_epochs": 1, "patience": patience, "hidden": list(HIDDEN), "dropout": 0.1, "batch_norm": False,
        "val_fraction": 0.2, "seed": 42, "inputs": INPUTS,
        "train_url": storage.file_url(str(work / "train")), "val_url": storage.file_url(str(work / "val")),
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
            "samples_per_sec": samples / train_secs, "samples_per_sec_wall": samples / wall,
            "epochs_run": len(history), "val_auc": history[-1]["val_auc"],
            "best_auc": max(h["val_auc"] for h in history)}


def time_in_memory(x: torch.Tensor, y: torch.Tensor, epochs: int, steps: int, batch: int,
                   val: tuple[torch.Tensor, torch.Tensor]) -> dict:
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
    net.eval()
    with torch.no_grad():
        auc = roc_auc(val[1].numpy(), net(val[0]).reshape(-1).numpy())
    return {"samples": samples, "train_secs": secs, "samples_per_sec": samples / secs, "val_auc": auc}


def plot(sweep: list[dict], path: str) -> None:
    """Samples/s against rows per rank for the three ways of training, and the ratio to in-memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    b = [r["batch_per_rank"] for r in sweep]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(b, [r["in_memory"]["samples_per_sec"] for r in sweep], "o-", color="tab:grey",
             label="in memory, 1 process x 2 threads")
    for m, style, colour in (("cached", "s-", "tab:blue"), ("streamed", "^-", "tab:orange")):
        ax1.plot(b, [r[m]["samples_per_sec"] for r in sweep], style, color=colour,
                 label=f"Petastorm ({m}) + Horovod 2 x 1 thread")
        ax2.plot(b, [r[m]["ratio"] for r in sweep], style, color=colour, label=m)
    ax1.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:,.0f} K"))
    ax2.axhline(0.8, color="grey", linestyle="--", label="target 0.8")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(b, [f"{v:,}" for v in b])
        ax.set_xlabel("rows per rank per step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylabel("training samples / s")
    ax1.set_ylim(bottom=0)
    ax2.set_ylabel("lakemine / in memory")
    ax2.set_ylim(0, max(1.0, *(r[m]["ratio"] for r in sweep for m in ("cached", "streamed"))) * 1.1)
    fig.suptitle("training throughput against the per-rank batch (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    default_batch = packaged_defaults().train.batch_size
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--score-rows", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, nargs="+", default=sorted({256, 1024, 4096, default_batch}),
                    help="rows per rank, one or more; the in-memory run uses 2x (the same global batch)")
    ap.add_argument("--quality-epochs", type=int, default=packaged_defaults().train.epochs,
                    help="epochs (with train.patience) of the one quality run per batch size; 0: none")
    ap.add_argument("--work", default=str(REPO / "bench" / "work" / "train"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_score"))
    ap.add_argument("--report", action="store_true", help="only re-write <out>.md and .png from <out>.json")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(Path(args.out + ".json").read_text()), args.out))
        return 0

    cfg = load_config(env={"LAKEMINE_SPARK__MASTER": "local[2]"})
    spark = session(cfg)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    rows = make_rows(spark, args.rows)
    rows.select(*INPUTS, LABEL).repartition(8).write.parquet(storage.file_url(str(work / "train")))
    make_rows(spark, args.rows // 10, seed=7).select(*INPUTS, LABEL, "logit").repartition(4).write.parquet(
        storage.file_url(str(work / "val")))
    pdf = spark.read.parquet(str(work / "train")).toPandas()
    x = torch.from_numpy(pdf[INPUTS].to_numpy(dtype=np.float32))
    y = torch.from_numpy(pdf[LABEL].to_numpy(dtype=np.float32))
    vdf = spark.read.parquet(str(work / "val")).toPandas()
    val = (torch.from_numpy(vdf[INPUTS].to_numpy(dtype=np.float32)), torch.from_numpy(vdf[LABEL].to_numpy(dtype=np.float32)))
    ceiling = roc_auc(vdf[LABEL].to_numpy(), vdf["logit"].to_numpy())
    # streamed: every epoch read from the Parquet files (shards above train.cache_rows);
    # cached: each rank reads its shard once through Petastorm and keeps it as tensors
    modes = {"streamed": 0, "cached": packaged_defaults().train.cache_rows}
    med = statistics.median

    sweep = []
    for asked in args.batch_size:
        batch = effective_batch_size(asked, args.rows, 2)  # what `lakemine train` would use
        specs = {m: spec_for(work, args.epochs, args.rows, batch, c) for m, c in modes.items()}
        steps = specs["cached"]["steps_per_epoch"]
        time_petastorm_horovod(spark, {**specs["streamed"], "epochs": 1})  # warm-up: imports, page cache
        ph, mem = {m: [] for m in modes}, []
        for i in range(args.repeat):
            for m in modes:
                ph[m].append(time_petastorm_horovod(spark, specs[m]))
            mem.append(time_in_memory(x, y, args.epochs, steps, 2 * batch, val))
            print(f"batch {batch}/rank, train run {i + 1}: " + ", ".join(
                f"petastorm+horovod {m} {ph[m][-1]['samples_per_sec']:,.0f} samples/s "
                f"({ph[m][-1]['samples_per_sec_wall']:,.0f} over the whole launch)" for m in modes)
                + f", in-memory {mem[-1]['samples_per_sec']:,.0f}", flush=True)
        peer = med(r["samples_per_sec"] for r in mem)
        entry = {"batch_per_rank": batch, "global_batch": 2 * batch, "steps_per_epoch": steps,
                 "in_memory": {"samples_per_sec": peer, "val_auc": med(r["val_auc"] for r in mem)},
                 "runs": {**{f"petastorm_horovod_{m}": ph[m] for m in modes}, "in_memory": mem}}
        for m, c in modes.items():
            rate, wall = med(r["samples_per_sec"] for r in ph[m]), med(r["samples_per_sec_wall"] for r in ph[m])
            entry[m] = {"cache_rows": c, "samples_per_sec": rate, "samples_per_sec_whole_launch": wall,
                        "ratio": rate / peer, "ratio_whole_launch": wall / peer,
                        "val_auc": med(r["val_auc"] for r in ph[m])}
        if args.quality_epochs:
            tc = packaged_defaults().train
            q = time_petastorm_horovod(spark, spec_for(work, args.quality_epochs, args.rows, batch, tc.cache_rows, tc.patience))
            entry["quality"] = {"epochs": args.quality_epochs, "patience": tc.patience, **q}
            print(f"batch {batch}/rank, quality run: best val AUC {q['best_auc']:.4f} in {q['epochs_run']} epochs, "
                  f"{q['train_secs']:.1f} s training, {q['wall_secs']:.1f} s launch", flush=True)
        sweep.append(entry)

    # scoring: a model with the real architecture, saved where score_features reads it
    torch.manual_seed(0)
    net = ChurnMLP(len(INPUTS), HIDDEN, 0.1, False).eval()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    weights = str(work / "model" / "state_dict.pt")
    storage.write_bytes(weights, buf.getvalue())
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

    s = {"rows": args.score_rows, "arrow_udf_rows_per_sec": args.score_rows / med(udf_s),
         "plain_torch_rows_per_sec": args.score_rows / med(torch_s), "runs": {"arrow_udf_secs": udf_s, "torch_secs": torch_s}}
    s["ratio"] = s["arrow_udf_rows_per_sec"] / s["plain_torch_rows_per_sec"]
    meta_out = {
        "benchmark": "training through Petastorm + Horovod vs in-memory; scoring through the Arrow UDF vs plain torch",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "loadavg_at_end": ", ".join(f"{v:.1f}" for v in psutil.getloadavg()),
        "spark": "local[2], warm session", "repeat": args.repeat, "command": "bench/train_score_throughput.py " + " ".join(sys.argv[1:]),
        "default_batch_per_rank": default_batch,
    }
    train = {"rows": args.rows, "val_rows": args.rows // 10, "epochs": args.epochs, "auc_ceiling": ceiling, "sweep": sweep}
    doc = {"meta": meta_out, "train": train, "score": s}
    Path(args.out + ".json").write_text(json.dumps(doc, indent=2))
    print(report(doc, args.out))
    return 0


def report(doc: dict, out: str) -> str:
    """Write <out>.md and <out>.png from the results `doc` (as saved in <out>.json); the md text."""
    meta, train, s = doc["meta"], doc["train"], doc["score"]
    sweep, rows = train["sweep"], train["rows"]
    plot(sweep, out + ".png")
    default = effective_batch_size(meta["default_batch_per_rank"], rows, 2)

    def tag(b: int) -> str:
        return f"{b:,} (default)" if b == default else f"{b:,}"

    def run_ratios(r: dict, m: str) -> str:
        each = [a["samples_per_sec"] / b["samples_per_sec"]
                for a, b in zip(r["runs"][f"petastorm_horovod_{m}"], r["runs"]["in_memory"])]
        return f"{min(each):.2f}–{max(each):.2f}"

    md = [
        f"# training and scoring throughput ({meta['date']})", "",
        f"{meta['machine']}; median of {meta['repeat']} runs; {len(INPUTS)} inputs, MLP {HIDDEN}; "
        f"{rows:,} training rows, {train['val_rows']:,} validation rows, {train['epochs']} epochs. "
        f"Command: `{meta['command']}`.", "",
        "## Training samples/s: Petastorm + Horovod (2 ranks x 1 thread, `local[2]`) vs in-memory tensors "
        "(1 process x 2 threads), same global batch and epochs", "",
        "Samples/s over the epochs' training steps; the whole launch adds Spark tasks, rendezvous, reading and "
        "validation. Ratio: of the medians; per run: each run's lakemine rate over the in-memory run next to it. "
        f"Validation AUC after the {train['epochs']} epochs; the data's own ceiling is {train['auc_ceiling']:.4f}.", "",
        "| rows per rank | Petastorm | lakemine | whole launch | in-memory | ratio | per run | whole-launch ratio "
        "| AUC lakemine | AUC in-memory |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sweep:
        for m in ("cached", "streamed"):
            md.append(f"| {tag(r['batch_per_rank'])} | {m} | {r[m]['samples_per_sec']:,.0f} | "
                      f"{r[m]['samples_per_sec_whole_launch']:,.0f} | {r['in_memory']['samples_per_sec']:,.0f} | "
                      f"**{r[m]['ratio']:.2f}** | {run_ratios(r, m)} | {r[m]['ratio_whole_launch']:.2f} | "
                      f"{r[m]['val_auc']:.4f} | {r['in_memory']['val_auc']:.4f} |")
    if "quality" in sweep[0]:
        q0 = sweep[0]["quality"]
        md += ["", f"## The model against the batch size: lakemine (cached), up to {q0['epochs']} epochs with "
               f"early stopping (patience {q0['patience']}), one run each", "",
               "| rows per rank | steps per epoch | epochs run | best val AUC | training s | whole launch s |",
               "|---:|---:|---:|---:|---:|---:|"]
        md += [f"| {tag(r['batch_per_rank'])} | {r['steps_per_epoch']} | {r['quality']['epochs_run']} | "
               f"{r['quality']['best_auc']:.4f} | {r['quality']['train_secs']:.1f} | {r['quality']['wall_secs']:.1f} |"
               for r in sweep]
    md += ["", "## Scoring rows/s", "", "| what | rows | lakemine (per s) | peer (per s) | lakemine / peer |",
           "|---|---:|---:|---:|---:|",
           f"| Arrow UDF (Spark, noop sink) vs plain torch in memory | {s['rows']:,} | "
           f"{s['arrow_udf_rows_per_sec']:,.0f} | {s['plain_torch_rows_per_sec']:,.0f} | {s['ratio']:.2f} |", "",
           f"![training throughput]({Path(out).name}.png)"]
    text = "\n".join(md) + "\n"
    Path(out + ".md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
