"""Benchmark: `lakemine run --input` on the whole real UCI Online Retail II year.

The file is ../shared/data/online_retail_II_2009_2010.csv.xz (525,461 lines, CC BY 4.0). It is
decompressed once under --work. Then, --repeat times, `lakemine run --input FILE --lake <fresh
lake>` runs in its own process, its process tree's resident memory sampled (bench/e2e.py's
sampler). After the last repeat the lake is read back and checked against counts made
independently from the raw file with Python's csv module: exact conservation through ingest
and clean, the exact-duplicate count, no service code in any rule, guest baskets. The result
holds what a retailer would look at: counts, the top rules by lift (with descriptions), the
segments, the churn model's validation AUC beside the logistic-regression baseline, and the
wall time per stage (median of the repeats).

Then the same lines as UCI commonly distributes them (Latin-1, `M/D/YYYY H:MM` dates) go
through `lakemine ingest` and `lakemine clean` into another lake: silver must hold the same
number of rows, '£' included.

    nice -n 10 .venv/bin/python bench/real_data.py --repeat 1

Writes <out>/real_data.json and real_data.md (default out: bench/results). Never run by the tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import lzma
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import LAKEMINE_STAGES, attribute, parse_summary, run_tracked  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "online_retail_II_2009_2010.csv.xz"
T_START = time.monotonic()


def say(text: str) -> None:
    print(f"[real {time.monotonic() - T_START:7.1f}s] {text}", file=sys.stderr, flush=True)


def independent_counts(path: Path, services: set[str], pattern: re.Pattern) -> dict:
    """What the raw file holds, counted with the csv module alone."""
    with open(path, encoding="utf-8", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    sales = {}
    for r in rows:
        if not r[0].upper().startswith("C"):
            sales.setdefault(r[0], set()).add(r[1].strip().upper())
    guests = {r[0] for r in rows if not r[6].strip() and not r[0].upper().startswith("C")}
    service = [r for r in rows if r[1].strip().upper() in services or pattern.search(r[1].strip().upper())]
    return {
        "header": header,
        "lines": len(rows),
        "exact_duplicates": sum(n - 1 for n in Counter(tuple(r) for r in rows).values()),
        "lines_without_customer": sum(1 for r in rows if not r[6].strip()),
        "sales_invoices": len(sales),
        "sales_invoices_with_a_guest_line": len(guests),
        "service_lines": len(service),
        "invoices_with_postage": sum("POST" in items for items in sales.values()),
    }


def latin1_copy(src: Path, dest: Path) -> None:
    """The same lines as UCI commonly distributes them: Latin-1, M/D/YYYY H:MM dates, UCI I names."""
    with open(src, encoding="utf-8", newline="") as fh, open(dest, "w", encoding="latin-1", newline="") as out:
        reader, writer = csv.reader(fh), csv.writer(out, lineterminator="\r\n")
        next(reader)
        writer.writerow(["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"])
        for r in reader:
            when = datetime.strptime(r[4], "%Y-%m-%d %H:%M:%S")
            writer.writerow([*r[:4], f"{when.month}/{when.day}/{when.year} {when.hour}:{when.minute:02d}", *r[5:]])


def read_back(lake_dir: Path, raw: dict, services: set[str], pattern: re.Pattern) -> dict:
    """The lake of the last run, read with Spark and checked against the raw file's counts."""
    import pyspark.sql.functions as F

    from lakemine.core.config import load_config
    from lakemine.io import schemas
    from lakemine.io.lake import Lake
    from lakemine.io.spark import session

    cfg = load_config().with_lake(str(lake_dir))
    lake = Lake.at(session(cfg), str(lake_dir))
    runs = {r["stage"]: r for r in lake.read_table(schemas.OPS_RUNS).where("status = 'succeeded'").collect()}
    ing, cln = runs["ingest"], runs["clean"]
    conservation = {
        "ingest": {"in": ing["rows_in"], "bronze": ing["rows_out"], "quarantined": ing["rows_quarantined"]},
        "clean": {"in": cln["rows_in"], "silver": cln["rows_out"], "quarantined": cln["rows_quarantined"],
                  "duplicates": cln["rows_duplicate"]},
    }
    checks = {
        "ingest exact": ing["rows_in"] == raw["lines"] == ing["rows_out"] + ing["rows_quarantined"],
        "clean exact": cln["rows_in"] == cln["rows_out"] + cln["rows_quarantined"] + cln["rows_duplicate"],
        "duplicates = raw file's": cln["rows_duplicate"] == raw["exact_duplicates"],
    }
    silver = lake.read_table(schemas.SILVER_TRANSACTIONS)
    names = {r["stock_code"]: r["description"] for r in silver.groupBy("stock_code").agg(
        F.mode("description").alias("description")).collect()}
    rules = lake.read_table(schemas.GOLD_ASSOCIATION_RULES).orderBy(F.desc("lift"), F.desc("support")).collect()
    in_rules = {i for r in rules for i in r["antecedent"] + r["consequent"]}
    checks["no service code in rules"] = not [i for i in in_rules if i in services or pattern.search(i)]
    baskets = lake.read_table(schemas.GOLD_BASKETS)
    guest_baskets = baskets.where(F.col("customer_id").isNull()).count()
    top = [{"antecedent": [f"{i} {names.get(i) or ''}".strip() for i in r["antecedent"]],
            "consequent": [f"{i} {names.get(i) or ''}".strip() for i in r["consequent"]],
            "support": r["support"], "confidence": r["confidence"], "lift": r["lift"]} for r in rules[:5]]
    profiles = [r.asDict() for r in lake.read_table(schemas.GOLD_SEGMENT_PROFILES).orderBy("segment").collect()]
    for p in profiles:
        p.pop("run_id", None)
        p["as_of"] = str(p.get("as_of"))
    evaluation = {r["method"]: {k: r[k] for k in ("k", "customers", "hit_rate", "map_at_k", "coverage")}
                  for r in lake.read_table(schemas.OPS_RECOMMEND_EVAL).collect()} if lake.exists(schemas.OPS_RECOMMEND_EVAL) else {}
    recs = lake.read_table(schemas.GOLD_RECOMMENDATIONS) if lake.exists(schemas.GOLD_RECOMMENDATIONS) else None
    recommended = {"rows": recs.count(), "customers": recs.select("customer_id").distinct().count(),
                   "examples": [r.asDict() for r in recs.where(F.col("rank") <= 3).orderBy("customer_id", "rank")
                                .select("customer_id", "rank", "stock_code", "description", "score", "because").limit(9).collect()],
                   "evaluation": evaluation} if recs is not None else None
    forecasts = None
    if lake.exists(schemas.OPS_FORECAST_BACKTEST):
        from lakemine.learning.forecast import summarize_backtest

        fc = lake.read_table(schemas.GOLD_DEMAND_FORECAST)
        forecasts = {"items": fc.select("stock_code").distinct().count(), "weeks": fc.select("week_start").distinct().count(),
                     "models": {r["model"]: r["count"] for r in fc.groupBy("model").agg(
                         F.countDistinct("stock_code").alias("count")).collect()},
                     "backtest": summarize_backtest(lake.read_table(schemas.OPS_FORECAST_BACKTEST))}
    search = None
    if lake.exists(schemas.OPS_TUNE_TRIALS):
        from lakemine.learning.tune import ranked

        rows = [r.asDict() for r in lake.read_table(schemas.OPS_TUNE_TRIALS).collect()]
        for r in rows:
            r["as_of"] = str(r["as_of"])
        search = {"ranked": ranked(rows), "baselines": [r for r in rows if r["model"] != "mlp"],
                  "trials": sum(1 for r in rows if r["model"] == "mlp")}
    version = sorted((lake_dir / "models" / "churn").iterdir())[-1]
    meta = json.loads((version / "metadata.json").read_text())
    return {
        "conservation": conservation, "checks": checks,
        "quarantine_reasons": {"bronze": dict(ing["quarantine_reasons"] or {}), "silver": dict(cln["quarantine_reasons"] or {})},
        "silver_rows": silver.count(), "silver_guest_lines": silver.where(F.col("customer_id").isNull()).count(),
        "baskets": baskets.count(), "guest_baskets": guest_baskets, "rules": len(rules), "top_rules": top,
        "segments": profiles, "recommendations": recommended, "forecasts": forecasts, "search": search,
        "model": {"version": version.name, "val_auc": meta["validation"]["auc"], "baseline_auc": meta["baseline"]["auc"],
                  "val_log_loss": meta["validation"].get("log_loss"), "baseline_log_loss": meta["baseline"].get("log_loss"),
                  "baselines": meta.get("baselines", []), "epochs_run": meta["epochs"]["run"], "world_size": meta["world_size"],
                  "tuned_from": meta.get("tuned_from"), "architecture": meta.get("architecture"),
                  "learning_rate": meta["params"].get("learning_rate"), "weight_decay": meta["params"].get("weight_decay"),
                  "train_rows": meta["rows"]["train"], "val_rows": meta["rows"]["val"]},
        "scores": lake.read_table(schemas.GOLD_CUSTOMER_SCORES).count(),
        "report": str(next((lake_dir / "reports").glob("*/report.html"), "")),
    }


def latin1_run(utf8: Path, work: Path) -> dict:
    copy = work / "Online Retail (latin-1).csv"
    latin1_copy(utf8, copy)
    lake = work / "lake-latin1"
    shutil.rmtree(lake, ignore_errors=True)
    t0 = time.monotonic()
    for stage in (["ingest", "--input", str(copy)], ["clean"]):
        subprocess.run([sys.executable, "-m", "lakemine", *stage, "--lake", str(lake)], check=True, capture_output=True)
    secs = time.monotonic() - t0
    import pyspark.sql.functions as F

    from lakemine.core.config import load_config
    from lakemine.io import schemas
    from lakemine.io.lake import Lake
    from lakemine.io.spark import session

    spark = session(load_config())
    latin = Lake.at(spark, str(lake)).read_table(schemas.SILVER_TRANSACTIONS)
    quarantined = Lake.at(spark, str(lake)).read_table(schemas.BRONZE_QUARANTINE).count() if (lake / "bronze" / "quarantine").exists() else 0
    return {"bytes": copy.stat().st_size, "ingest_clean_secs": secs, "silver_rows": latin.count(),
            "silver_lines_with_pound": latin.where(F.col("description").contains("£")).count(),
            "bronze_quarantined": quarantined}


def markdown(result: dict) -> str:
    r, raw, lm = result, result["raw"], result["lakemine"]
    lines = [f"# `lakemine run --input` on the real UCI Online Retail II year ({r['date']})", "",
             f"Machine: {r['machine']}. Input: `{SOURCE.name}` decompressed, {raw['lines']:,} lines. "
             f"Repeats: {r['repeat']} (medians).", "", "## Counts against the raw file", "",
             "| | lakemine | raw file (csv module) |", "|---|---:|---:|",
             f"| lines read by ingest | {lm['conservation']['ingest']['in']:,} | {raw['lines']:,} |",
             f"| bronze + bronze quarantine | {lm['conservation']['ingest']['bronze']:,} + {lm['conservation']['ingest']['quarantined']:,} | |",
             f"| exact duplicates removed by clean | {lm['conservation']['clean']['duplicates']:,} | {raw['exact_duplicates']:,} |",
             f"| silver + silver quarantine | {lm['conservation']['clean']['silver']:,} + {lm['conservation']['clean']['quarantined']:,} | |",
             f"| silver lines without a customer (guests) | {lm['silver_guest_lines']:,} | {raw['lines_without_customer']:,} lines in the file |",
             f"| baskets (sales invoices with a product) / of them guest baskets | {lm['baskets']:,} / {lm['guest_baskets']:,} | {raw['sales_invoices']:,} sales invoices / {raw['sales_invoices_with_a_guest_line']:,} with a guest line |",
             f"| association rules | {lm['rules']:,} | |", f"| customers scored | {lm['scores']:,} | |", "",
             "Checks: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in lm["checks"].items()), "",
             "Quarantine by reason: bronze " + json.dumps(lm["quarantine_reasons"]["bronze"]) + ", silver "
             + json.dumps(lm["quarantine_reasons"]["silver"]), "", "## Top 5 rules by lift", "",
             "| antecedent | consequent | support | confidence | lift |", "|---|---|---:|---:|---:|"]
    for t in lm["top_rules"]:
        lines.append(f"| {'; '.join(t['antecedent'])} | {'; '.join(t['consequent'])} | {t['support']:.4f} | "
                     f"{t['confidence']:.3f} | {t['lift']:.1f} |")
    lines += ["", "## Segments", "", "| segment | label | customers | recency days | frequency | monetary |", "|---:|---|---:|---:|---:|---:|"]
    for s in lm["segments"]:
        lines.append(f"| {s['segment']} | {s['segment_label']} | {s.get('size', 0):,} | {s.get('recency_days', 0):.0f} | "
                     f"{s.get('frequency', 0):.1f} | {s.get('monetary', 0):,.0f} |")
    rec = lm.get("recommendations")
    if rec:
        lines += ["", "## Recommendations", "", f"{rec['rows']:,} recommendations for {rec['customers']:,} customers. "
                  "Held-out evaluation (each customer's last basket hidden, rules mined again without those baskets):", "",
                  "| method | customers | hit rate@K | MAP@K | coverage |", "|---|---:|---:|---:|---:|"]
        for method, e in sorted(rec["evaluation"].items()):
            lines.append(f"| {method} | {e['customers']:,} | {e['hit_rate']:.3f} | {e['map_at_k']:.4f} | {e['coverage']:.3f} |")
        lines += ["", "First three recommendations of the first customers:", "", "| customer | rank | item | score | because |",
                  "|---|---:|---|---:|---|"]
        for x in rec["examples"]:
            lines.append(f"| {x['customer_id']} | {x['rank']} | {x['stock_code']} {x['description']} | {x['score']:.2f} | "
                         f"{', '.join(x['because'])} |")
    fc = lm.get("forecasts")
    if fc:
        lines += ["", "## Demand forecasts", "", f"{fc['items']:,} items, {fc['weeks']} weeks ahead; models chosen: "
                  + ", ".join(f"{m} {n}" for m, n in sorted(fc["models"].items(), key=lambda x: -x[1])) + ".", "",
                  "Backtest (the last weeks hidden and forecast again), over the items every method was scored on:", "",
                  "| method | items | mean MASE | median MASE | mean sMAPE |", "|---|---:|---:|---:|---:|"]
        for b in fc["backtest"]:
            lines.append(f"| {b['method']} | {b['items']:,} | {b['mean_mase']:.3f} | {b['median_mase']:.3f} | {b['mean_smape']:.3f} |")
    m = lm["model"]
    lines += ["", "## Churn model", "",
              f"Validation AUC {m['val_auc']:.3f} against the logistic-regression baseline's {m['baseline_auc']:.3f} "
              f"(log loss {m['val_log_loss']:.3f} vs {m['baseline_log_loss']:.3f}); {m['train_rows']:,} training and "
              f"{m['val_rows']:,} validation rows, {m['epochs_run']} epochs on {m['world_size']} Horovod workers.", "",
              *[f"- {b['model']}: validation AUC {b['auc']:.3f}, log loss {b['log_loss']:.3f}" for b in m.get("baselines", [])],
              ""]
    search = lm.get("search")
    if search:
        t = m.get("tuned_from") or {}
        a = m.get("architecture") or {}
        lines += [f"Trained with the settings of the model search's trial {t.get('trial')} (hidden "
                  f"{'-'.join(map(str, a.get('hidden', [])))} {a.get('activation')}, dropout {a.get('dropout')}, batch norm "
                  f"{a.get('batch_norm')}, learning rate {m.get('learning_rate')}, weight decay {m.get('weight_decay')}).", "",
                  "### Model search", "",
                  f"{search['trials']} trials (trial 0: the config's settings), each one process in one Spark task; the "
                  "five best, trial 0 and the baselines on the same split:", "",
                  "| trial | validation AUC | log loss | hidden | activation | dropout | batch norm | learning rate | weight decay |",
                  "|---|---:|---:|---|---|---:|---|---:|---:|"]
        shown = search["ranked"][:5] + [t for t in search["ranked"][5:] if t["trial"] == 0]
        for t in shown:
            lines.append(f"| {t['trial']} | {t['val_auc']:.4f} | {t['val_log_loss']:.4f} | {t['hidden']} | {t['activation']} | "
                         f"{t['dropout']:g} | {'on' if t['batch_norm'] else 'off'} | {t['learning_rate']:.3g} | {t['weight_decay']:.3g} |")
        for b in search["baselines"]:
            lines.append(f"| {b['model']} | {b['val_auc']:.4f} | {b['val_log_loss']:.4f} | | | | | | |")
    lines += ["",
              "## Wall time (median)", "", "| stage | seconds |", "|---|---:|"]
    for stage, secs in r["stage_secs"].items():
        lines.append(f"| {stage} | {secs:.1f} |")
    lines += [f"| **process wall** | **{r['process_wall_secs']:.1f}** |", "",
              f"Peak resident memory of the process tree: {r['overall_peak_mib']:,.0f} MiB.", "",
              "## The Latin-1 distribution", "",
              f"The same lines in Latin-1 with `M/D/YYYY H:MM` dates ({r['latin1']['bytes']:,} bytes): "
              f"{r['latin1']['silver_rows']:,} silver rows (UTF-8 run: {lm['silver_rows']:,}), "
              f"{r['latin1']['silver_lines_with_pound']} with '£', {r['latin1']['bronze_quarantined']} lines quarantined "
              f"by ingest; ingest + clean {r['latin1']['ingest_clean_secs']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", default=str(REPO / "bench" / "work" / "real"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    from lakemine.core.config import load_config

    cfg = load_config()
    services = {c.upper() for c in cfg.features.service_codes}
    pattern = re.compile(cfg.features.service_pattern)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    raw_path = work / "online_retail_II_2009_2010.csv"
    if not raw_path.exists():
        say(f"decompressing {SOURCE.name}")
        with lzma.open(SOURCE) as src, open(raw_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    raw = independent_counts(raw_path, services, pattern)
    say(f"raw file: {raw['lines']:,} lines, {raw['exact_duplicates']:,} exact duplicates")
    lake = work / "lake"
    runs = []
    for i in range(args.repeat):
        shutil.rmtree(lake, ignore_errors=True)
        say(f"lakemine run, repeat {i + 1}/{args.repeat}")
        tracked = run_tracked([sys.executable, "-m", "lakemine", "run", "--input", str(raw_path), "--lake", str(lake)],
                              work / f"run{i}.log", LAKEMINE_STAGES, "lakemine")
        summary = parse_summary(tracked["stdout"])
        runs.append({"stage_secs": summary["stage_secs"], "process_wall_secs": tracked["wall"],
                     **attribute(tracked, summary["stage_secs"])})
        (work / f"run{i}.summary.txt").write_text(tracked["stdout"])
    say("reading the lake back")
    lakemine = read_back(lake, raw, services, pattern)
    say("the Latin-1 distribution: ingest and clean")
    latin1 = latin1_run(raw_path, work)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        "repeat": args.repeat, "raw": {k: v for k, v in raw.items() if k != "header"}, "lakemine": lakemine,
        "stage_secs": {s: statistics.median(r["stage_secs"].get(s, 0.0) for r in runs) for s in runs[0]["stage_secs"]},
        "process_wall_secs": statistics.median(r["process_wall_secs"] for r in runs),
        "overall_peak_mib": statistics.median(r["overall_peak_mib"] for r in runs),
        "latin1": latin1,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_data.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "real_data.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    failed = [k for k, v in lakemine["checks"].items() if not v]
    if latin1["silver_rows"] != lakemine["silver_rows"]:
        failed.append("Latin-1 silver rows")
    if failed:
        say(f"FAILED checks: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
