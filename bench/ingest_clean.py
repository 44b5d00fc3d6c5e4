"""Benchmark: generate -> ingest -> clean at 1M and 5M raw lines.

Each stage runs as its own `lakemine` process, as a user would run it; a sampler records the
peak resident memory of the process tree (Python driver + Spark JVM). Stage time is taken from
ops/runs (started_at..finished_at, session start excluded) for ingest and clean, and from the
process wall time minus the measured session start for generate. Median of --repeat runs.

    .venv/bin/python bench/ingest_clean.py --lines 1000000 5000000 --repeat 3

Writes bench/results/ingest_clean.json and .md. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
LAKEMINE = [sys.executable, "-m", "lakemine"]
LINES_PER_CUSTOMER = 365.0  # measured: 2,475 customers -> 912,161 lines; 12,376 -> 4,534,267 (--days 365, seed 1)


def run_sampled(cmd: list[str]) -> tuple[float, float, str]:
    """Run cmd; return (wall seconds, peak RSS of the process tree in MiB, stdout)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    return wall, peak[0] / 2**20, out


def stage_seconds(lake: Path, stage: str) -> float:
    """Duration of the latest run of `stage` from ops/runs, read with a plain Delta reader."""
    code = (
        "import sys, json\n"
        "from lakemine.core.config import load_config\nfrom lakemine.io.spark import session\n"
        "from lakemine.io.lake import Lake\n"
        "lake = Lake.at(session(load_config()), sys.argv[1])\n"
        "r = lake.read_table('ops/runs').where(f\"stage = '{sys.argv[2]}'\").orderBy('started_at', ascending=False).first()\n"
        "print(json.dumps({'secs': (r['finished_at'] - r['started_at']).total_seconds(), 'rows_in': r['rows_in']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(lake), stage], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def session_start_seconds() -> float:
    code = "from lakemine.core.config import load_config\nfrom lakemine.io.spark import session\nsession(load_config()).range(1).count()\n"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.monotonic() - t0


def one_run(work: Path, customers: int, seed: int, session_s: float) -> dict:
    raw, lake = work / "raw", work / "lake"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = {}
    wall, peak, _ = run_sampled([*LAKEMINE, "generate", "--out", str(raw), "--customers", str(customers),
                                 "--days", "365", "--seed", str(seed), "--dirty-rate", "0.005"])
    manifest = json.loads((raw / "_manifest.json").read_text())
    result["lines"] = manifest["data_lines"]
    result["generate"] = {"secs": max(wall - session_s, 0.0), "wall": wall, "peak_mib": peak, "rows": manifest["data_lines"]}
    for stage, args in (("ingest", ["--input", str(raw)]), ("clean", [])):
        wall, peak, _ = run_sampled([*LAKEMINE, stage, "--lake", str(lake), *args])
        info = stage_seconds(lake, stage)
        result[stage] = {"secs": info["secs"], "wall": wall, "peak_mib": peak, "rows": info["rows_in"]}
    return result


def median_of(runs: list[dict], stage: str, key: str) -> float:
    return statistics.median(r[stage][key] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default=str(REPO / "bench" / "work"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ingest_clean"))
    args = ap.parse_args()

    session_s = statistics.median(session_start_seconds() for _ in range(3))
    print(f"session start (median of 3): {session_s:.1f} s", flush=True)
    table = []
    for target in args.lines:
        customers = max(10, round(target / LINES_PER_CUSTOMER))
        runs = []
        for i in range(args.repeat):
            r = one_run(Path(args.work) / f"l{target}", customers, seed=1, session_s=session_s)
            print(f"{target:,} lines, run {i + 1}: " + ", ".join(
                f"{s} {r[s]['secs']:.1f}s/{r[s]['peak_mib']:.0f}MiB" for s in ("generate", "ingest", "clean")), flush=True)
            runs.append(r)
        row = {"target_lines": target, "lines": runs[0]["lines"], "customers": customers, "runs": runs, "median": {}}
        for stage in ("generate", "ingest", "clean"):
            secs = median_of(runs, stage, "secs")
            row["median"][stage] = {
                "secs": secs,
                "wall_secs": median_of(runs, stage, "wall"),
                "rows": runs[0][stage]["rows"],
                "rows_per_sec": runs[0][stage]["rows"] / secs if secs else None,
                "peak_mib": median_of(runs, stage, "peak_mib"),
            }
        table.append(row)
    shutil.rmtree(args.work, ignore_errors=True)

    meta = {
        "benchmark": "generate -> ingest -> clean",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "spark": "local[*], driver memory from config (4g)",
        "repeat": args.repeat,
        "session_start_secs": session_s,
        "dirty_rate": 0.005,
    }
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": table}, indent=2))
    lines = [
        f"# generate -> ingest -> clean ({meta['date']})",
        "",
        f"{meta['machine']}; median of {args.repeat} runs; stage time excludes the {session_s:.1f} s session start;"
        " peak memory is the resident set of the whole process tree (Python + JVM).",
        "",
        "| lines | stage | seconds | rows/s | peak MiB | wall incl. start (s) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in table:
        for stage in ("generate", "ingest", "clean"):
            m = row["median"][stage]
            lines.append(f"| {row['lines']:,} | {stage} | {m['secs']:.1f} | {m['rows_per_sec']:,.0f} | {m['peak_mib']:,.0f} | {m['wall_secs']:.1f} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
