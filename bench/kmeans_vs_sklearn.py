"""Benchmark: K-means in Spark (the kmeans stage's fit) against scikit-learn on the same data.

Customers are drawn around the segment centres that the pipeline finds on generated data
(5 standardized features: recency, frequency, monetary, tenure, basket size), seeded. Both
fit k=5 with the same number of inits (--n-init); Spark's time includes reading the Parquet
features and assembling vectors (warm session, start excluded); scikit-learn's time is the fit
on an in-memory array. Median of --repeat runs; the cost of both is reported. Beside them, the
time of what the kmeans stage does (`choose_k`: every k of the config's k_range fitted and
scored by silhouette on the sample, the best refined on all customers), the figure issue 17
bounds at 10 s for 5,000 customers.

    .venv/bin/python bench/kmeans_vs_sklearn.py --customers 5000 100000 1000000 --repeat 3
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

import numpy as np
import pandas as pd
import psutil
from sklearn.cluster import KMeans as SkKMeans

from lakemine.core.config import load_config
from lakemine.io.spark import session
from lakemine.mining.kmeans import KMeansParams, assemble, choose_k, fit_kmeans

SEGMENT_FEATURES = KMeansParams.from_config(None).columns

REPO = Path(__file__).resolve().parents[1]
# segment centres (standardized units) from a pipeline run on generated data, 5 groups
CENTRES = np.array([
    [-0.7, 1.3, 1.2, 0.7, 0.4],
    [-0.3, 0.3, 0.2, 0.5, -0.1],
    [-0.6, -1.2, -1.4, -2.2, -0.8],
    [2.0, -0.4, -0.5, 0.6, -0.3],
    [0.1, 0.5, 2.8, 0.6, 3.5],
])


def make_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=n, p=[0.2, 0.32, 0.2, 0.25, 0.03])
    return CENTRES[labels] + rng.normal(0, 0.35, size=(n, 5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, nargs="+", default=[5_000, 100_000, 1_000_000])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--n-init", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default=str(REPO / "bench" / "work" / "km"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "kmeans"))
    args = ap.parse_args()

    spark = session(load_config())
    results = []
    for n in args.customers:
        x = make_data(n, seed=1)
        path = Path(args.work) / f"c{n}"
        pdf = pd.DataFrame(x, columns=list(SEGMENT_FEATURES))
        pdf.insert(0, "customer_id", [str(i) for i in range(n)])
        path.mkdir(parents=True, exist_ok=True)
        pdf.to_parquet(path / "part-0.parquet", index=False)
        p = KMeansParams.from_config(None, k=args.k, n_init=args.n_init)
        stage = KMeansParams.from_config(None, n_init=args.n_init)  # k chosen over k_range

        def spark_fit(params=p):
            t0 = time.perf_counter()
            data = assemble(spark.read.parquet(str(path)), SEGMENT_FEATURES).cache()
            data.count()
            model = fit_kmeans(data, args.k, params) if params.k else choose_k(data, params)[0]
            secs = time.perf_counter() - t0
            data.unpersist()
            return secs, model.summary.trainingCost

        spark_fit()  # warm-up
        runs = []
        for i in range(args.repeat):
            s_secs, s_cost = spark_fit()
            c_secs, _ = spark_fit(stage)
            t0 = time.perf_counter()
            sk = SkKMeans(n_clusters=args.k, n_init=args.n_init, random_state=i).fit(x)
            k_secs = time.perf_counter() - t0
            runs.append({"spark_secs": s_secs, "spark_cost": s_cost, "sklearn_secs": k_secs, "sklearn_cost": float(sk.inertia_),
                         "choose_k_secs": c_secs})
            print(f"{n:,} customers run {i + 1}: spark {s_secs:.2f}s cost {s_cost:.1f}; "
                  f"sklearn {k_secs:.2f}s cost {sk.inertia_:.1f}; stage's choose_k {c_secs:.2f}s", flush=True)
        row = {"customers": n, "runs": runs}
        for key in ("spark_secs", "spark_cost", "sklearn_secs", "sklearn_cost", "choose_k_secs"):
            row[key] = statistics.median(r[key] for r in runs)
        row["time_ratio"] = row["spark_secs"] / row["sklearn_secs"]
        row["cost_ratio"] = row["spark_cost"] / row["sklearn_cost"]
        results.append(row)
    shutil.rmtree(args.work, ignore_errors=True)

    meta = {
        "benchmark": "kmeans stage fit vs scikit-learn KMeans",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "k": args.k, "n_init": args.n_init, "repeat": args.repeat, "features": list(SEGMENT_FEATURES),
        "k_range": list(KMeansParams.from_config(None).k_range), "sample_size": KMeansParams.from_config(None).sample_size,
    }
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = [
        f"# K-means: Spark job vs scikit-learn ({meta['date']})", "",
        f"{meta['machine']}; k={args.k}, {args.n_init} inits each; median of {args.repeat} runs; Spark includes reading "
        "Parquet and assembling vectors (warm session); scikit-learn fits an in-memory array. The stage's choose_k: "
        f"k from {meta['k_range'][0]} to {meta['k_range'][1]} fitted and scored by silhouette on a sample of at most "
        f"{meta['sample_size']:,} customers, the best refined on all (issue 17: at most 10 s at 5,000 customers).", "",
        "| customers | lakemine fit, k=5 (s) | scikit-learn (s) | time ratio | lakemine cost | scikit-learn cost "
        "| cost ratio | the stage's choose_k (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        md.append(f"| {r['customers']:,} | {r['spark_secs']:.2f} | {r['sklearn_secs']:.2f} | {r['time_ratio']:.2f}x | "
                  f"{r['spark_cost']:,.1f} | {r['sklearn_cost']:,.1f} | {r['cost_ratio']:.4f} | {r['choose_k_secs']:.2f} |")
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
