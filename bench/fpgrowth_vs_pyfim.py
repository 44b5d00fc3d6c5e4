"""Benchmark: the fpgrowth job (pfp engine) against pyfim on the same baskets.

Baskets come from the generator's invoices (the same structure `lakemine generate` writes,
including the wholesale tail of 150-1,100-line invoices), grouped in Spark and saved once per
size as Parquet. Per run:

* job: read the Parquet baskets, mine itemsets and make rules with `lakemine.mining.fpgrowth.mine`,
  materialize both (session start excluded; the session is warm);
* pyfim: `fim.fpgrowth` on the same baskets as Python lists (loading excluded), itemsets only,
  and `fim.fpgrowth(target='r')` for rules.

Median of --repeat runs. Writes bench/results/fpgrowth.json and .md. Never run by the tests.

    .venv/bin/python bench/fpgrowth_vs_pyfim.py --baskets 10000 100000 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import fim
import psutil
import pyarrow.parquet as pq
import pyspark.sql.functions as F

from lakemine.core.config import load_config
from lakemine.io.spark import session
from lakemine.mining.fpgrowth import MiningParams, min_count, mine
from lakemine.stages.generate import GenerateParams, _lines

REPO = Path(__file__).resolve().parents[1]
INVOICES_PER_CUSTOMER = 15.0  # measured on the generator at --days 365 (500 customers -> 7,487 sales invoices)


def make_baskets(spark, n_baskets: int, path: Path) -> int:
    customers = max(50, round(1.15 * n_baskets / INVOICES_PER_CUSTOMER))
    lines = _lines(spark, GenerateParams.from_config(None, customers=customers, days=365, seed=1))
    baskets = (
        lines.where(~F.col("is_ret"))
        .groupBy("invoice").agg(F.array_sort(F.collect_set(F.col("item").cast("string"))).alias("items"))
        .orderBy("invoice").limit(n_baskets).select("items")
    )
    baskets.repartition(4).write.mode("overwrite").parquet(str(path))
    return spark.read.parquet(str(path)).count()


def time_job(spark, path: Path, support: float, confidence: float) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    baskets = spark.read.parquet(str(path)).cache()
    n = baskets.count()
    itemsets, rules = mine(baskets, n, MiningParams.from_config(None, min_support=support, min_confidence=confidence), default_groups=4)
    itemsets = itemsets.cache()
    n_sets = itemsets.count()
    n_rules = rules.count()
    secs = time.perf_counter() - t0
    itemsets.unpersist()
    baskets.unpersist()
    return secs, n_sets, n_rules


def load_tracts(path: Path) -> tuple[float, list]:
    """What a pyfim user does first: read the baskets from Parquet into Python lists."""
    t0 = time.perf_counter()
    tracts = pq.read_table(str(path)).column("items").to_pylist()
    return time.perf_counter() - t0, tracts


def time_pyfim(tracts: list, support: float, confidence: float) -> tuple[float, float, int, int]:
    cut = min_count(len(tracts), support)
    t0 = time.perf_counter()
    sets = fim.fpgrowth(tracts, target="s", supp=-cut, zmin=1, report="a")
    t_sets = time.perf_counter() - t0
    t0 = time.perf_counter()
    rules = fim.fpgrowth(tracts, target="r", supp=-cut, conf=confidence * 100, zmin=2, report="c")
    t_rules = time.perf_counter() - t0
    return t_sets, t_sets + t_rules, len(sets), len(rules)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baskets", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--support", type=float, default=0.01)
    ap.add_argument("--confidence", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default=str(REPO / "bench" / "work" / "fp"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "fpgrowth"))
    args = ap.parse_args()

    spark = session(load_config())
    results = []
    for size in args.baskets:
        path = Path(args.work) / f"b{size}"
        n = make_baskets(spark, size, path)
        _, tracts = load_tracts(path)
        longest = max(len(t) for t in tracts)
        time_job(spark, path, args.support, args.confidence)  # warm-up: JIT and Python workers
        job, sets_only, with_rules, loads = [], [], [], []
        for i in range(args.repeat):
            secs, n_sets, n_rules = time_job(spark, path, args.support, args.confidence)
            load_secs, tracts = load_tracts(path)
            s_sets, s_all, p_sets, p_rules = time_pyfim(tracts, args.support, args.confidence)
            loads.append(load_secs)
            if (n_sets, n_rules) != (p_sets, p_rules):
                raise AssertionError(f"{size}: job found {n_sets} itemsets/{n_rules} rules, pyfim {p_sets}/{p_rules}")
            job.append(secs)
            sets_only.append(s_sets)
            with_rules.append(s_all)
            print(f"{n:,} baskets run {i + 1}: job {secs:.2f}s, pyfim {s_sets:.2f}s (+rules {s_all:.2f}s), "
                  f"{n_sets:,} itemsets, {n_rules:,} rules", flush=True)
        row = {
            "baskets": n, "longest_basket": longest, "itemsets": n_sets, "rules": n_rules,
            "job_secs": statistics.median(job), "pyfim_itemsets_secs": statistics.median(sets_only),
            "pyfim_itemsets_and_rules_secs": statistics.median(with_rules),
            "pyfim_load_secs": statistics.median(loads),
            "runs": {"job": job, "pyfim_itemsets": sets_only, "pyfim_with_rules": with_rules, "pyfim_load": loads},
        }
        row["ratio_vs_pyfim_itemsets"] = row["job_secs"] / row["pyfim_itemsets_secs"]
        row["ratio_vs_pyfim_load_and_itemsets"] = row["job_secs"] / (row["pyfim_itemsets_secs"] + row["pyfim_load_secs"])
        row["ratio_vs_pyfim_with_rules"] = row["job_secs"] / row["pyfim_itemsets_and_rules_secs"]
        results.append(row)
    shutil.rmtree(args.work, ignore_errors=True)

    meta = {
        "benchmark": "fpgrowth job (pfp engine) vs pyfim",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "support": args.support, "confidence": args.confidence, "repeat": args.repeat,
        "spark": "local[*] (2 cores), warm session; session start excluded",
    }
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = [
        f"# fpgrowth job vs pyfim ({meta['date']})", "",
        f"{meta['machine']}; support {args.support}, confidence {args.confidence}; median of {args.repeat} runs; "
        "job = Spark reads the Parquet baskets, mines itemsets and makes rules (warm session); pyfim = C FP-growth in one "
        "process on lists already in memory, itemsets only, or with its own rule generation (target='r'); "
        "'load' = reading the same Parquet into Python lists. "
        "Both give the same itemset and rule counts (checked every run).", "",
        "| baskets | longest basket | itemsets | rules | job (s) | pyfim itemsets (s) | pyfim load + itemsets (s) | pyfim itemsets + rules (s) "
        "| job / pyfim itemsets | job / pyfim load + itemsets | job / pyfim itemsets + rules |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        md.append(f"| {r['baskets']:,} | {r['longest_basket']:,} | {r['itemsets']:,} | {r['rules']:,} | {r['job_secs']:.2f} | "
                  f"{r['pyfim_itemsets_secs']:.2f} | {r['pyfim_load_secs'] + r['pyfim_itemsets_secs']:.2f} | "
                  f"{r['pyfim_itemsets_and_rules_secs']:.2f} | {r['ratio_vs_pyfim_itemsets']:.1f}x | "
                  f"{r['ratio_vs_pyfim_load_and_itemsets']:.1f}x | {r['ratio_vs_pyfim_with_rules']:.1f}x |")
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
