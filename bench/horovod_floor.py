"""Benchmark: the floor under distributed training on this machine. Two Horovod ranks (Gloo, one
thread each) train lakemine's ChurnMLP on one fixed in-memory batch, with no Petastorm, no
shuffling and no Spark, against one process with 2 threads at the same global batch.

Petastorm + Horovod in bench/train_score_throughput.py cannot be expected to beat this ratio:
it is what the per-step allreduce costs next to the network's arithmetic. Horovod runs twice:
with its default DistributedOptimizer (one allreduce request per gradient tensor, fused by its
background thread) and with groups=1 (all gradients in one grouped allreduce), what
lakemine.learning.worker uses.

    .venv/bin/python bench/horovod_floor.py --batch-size 256 4096 --repeat 5

Writes bench/results/horovod_floor.json and .md. Never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = 500


def loop(distributed: bool, batch: int, threads: int, groups: int | None = None) -> float:
    """Samples per second over STEPS optimizer steps (after STEPS warm-up steps)."""
    import torch

    from lakemine.learning.model import ChurnMLP

    size, rank = 1, 0
    if distributed:
        import horovod.torch as hvd

        hvd.init()
        size, rank = hvd.size(), hvd.rank()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = ChurnMLP(14, (64, 32), 0.1, False)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    if distributed:
        opt = hvd.DistributedOptimizer(opt, named_parameters=net.named_parameters(), groups=groups)
        hvd.broadcast_parameters(net.state_dict(), 0)
    x, y = torch.randn(batch, 14), (torch.rand(batch) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for timed in (False, True):
        t0 = time.perf_counter()
        for _ in range(STEPS):
            opt.zero_grad()
            loss_fn(net(x).reshape(-1), y).backward()
            opt.step()
        secs = time.perf_counter() - t0
    rate = STEPS * batch * size / secs
    if distributed:
        hvd.shutdown()
    if rank == 0:
        print(json.dumps({"samples_per_sec": rate}), flush=True)
    return rate


def run(cmd: list[str]) -> float:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    line = next(l for l in out.splitlines() if "samples_per_sec" in l)
    return json.loads(line[line.index("{"):])["samples_per_sec"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[256, 4096], help="rows per rank")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "horovod_floor"))
    ap.add_argument("--worker", nargs=3, metavar=("MODE", "BATCH", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, batch, threads = args.worker
        loop(mode != "memory", int(batch), int(threads), 1 if mode == "horovod-grouped" else None)
        return 0

    bindir = Path(sys.executable).parent
    rows = []
    for batch in args.batch_size:
        hvd, grouped, mem = [], [], []
        for i in range(args.repeat):
            for mode, out in (("horovod", hvd), ("horovod-grouped", grouped)):
                out.append(run([str(bindir / "horovodrun"), "-np", "2", "--gloo", "-H", "localhost:2", sys.executable,
                                __file__, "--worker", mode, str(batch), "1"]))
            mem.append(run([sys.executable, __file__, "--worker", "memory", str(2 * batch), "2"]))
            print(f"batch {batch}/rank, run {i + 1}: horovod 2 x 1 thread {hvd[-1]:,.0f} samples/s, grouped "
                  f"{grouped[-1]:,.0f}, one process 2 threads {mem[-1]:,.0f}", file=sys.stderr, flush=True)
        med = statistics.median
        rows.append({"batch_per_rank": batch, "horovod_samples_per_sec": med(hvd),
                     "horovod_grouped_samples_per_sec": med(grouped), "one_process_samples_per_sec": med(mem),
                     "grouped_faster_in_runs": sum(g > h for g, h in zip(grouped, hvd)),
                     "runs": {"horovod": hvd, "horovod_grouped": grouped, "one_process": mem}})
        rows[-1]["ratio"] = rows[-1]["horovod_samples_per_sec"] / rows[-1]["one_process_samples_per_sec"]
        rows[-1]["ratio_grouped"] = rows[-1]["horovod_grouped_samples_per_sec"] / rows[-1]["one_process_samples_per_sec"]
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "steps": STEPS, "repeat": args.repeat}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    md = [f"# Horovod floor: 2 ranks on one fixed in-memory batch vs one process ({meta['date']})", "",
          f"{meta['machine']}; median of {args.repeat}; {STEPS} timed steps after {STEPS} warm-up steps; "
          "ChurnMLP 14 -> 64 -> 32 -> 1, Adam; no data loading, no shuffling, no Spark.", "",
          "| rows per rank (global) | Horovod 2 x 1 thread | ratio | the same, groups=1 | ratio | "
          "groups=1 faster in | one process, 2 threads |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['batch_per_rank']:,} ({2 * r['batch_per_rank']:,}) | {r['horovod_samples_per_sec']:,.0f} | "
           f"{r['ratio']:.2f} | {r['horovod_grouped_samples_per_sec']:,.0f} | {r['ratio_grouped']:.2f} | "
           f"{r['grouped_faster_in_runs']} of {args.repeat} runs | {r['one_process_samples_per_sec']:,.0f} |"
           for r in rows]
    md += ["", "Samples per second (all ranks together)."]
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
