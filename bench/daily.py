"""Benchmark: the cost of one scheduled day against the lake's history (issue 15).

Per size (--lines), `lakemine generate` writes a year and a day of lines (--days 366), split
here into one CSV per day. The first 365 days are the history: landed, then built once into a
history lake (ingest, clean, features, fpgrowth, kmeans, a short torch training, score; one
Spark session; its time is reported, not compared). Then, --repeat times, on fresh copies:

* **daily, one process per stage** (as the DAG runs it, one JVM each): the last day's file is
  landed beside the history's and `lakemine ingest`, `clean`, `features`, `fpgrowth`,
  `kmeans`, `score` run for that date, each its own process. Training is excluded.
* **daily, one session**: the same six stages in one Spark session.
* **full rebuild**: the same six stages in one session on an empty lake (the model copied in)
  over all 366 files: what the day would cost without increments.

Times are wall seconds (per-process: the processes' sum, JVM starts included); peak memory is
the resident set of the process tree (Python, JVM, Spark workers) sampled every 0.1 s; files
touched are the data files the day's commits added and removed (`ops/runs`). Medians of the
repeats; --rebuild-repeat 0 reports the history build's stage times as the full rebuild
instead of running one (at 20 M a rebuild is the longest run by far). Target (issue 15): the
daily time at 20 M lines within 1.5x of the time at 1 M.

    nice -n 10 .venv/bin/python bench/daily.py --lines 1000000 5000000 20000000 --repeat 3
    nice -n 10 .venv/bin/python bench/daily.py --lines 1000000 20000000 5000000 --repeat 3 3 2 --rebuild-repeat 0
    nice -n 10 .venv/bin/python bench/daily.py --lines 100000 --repeat 1 --out /tmp/daily-smoke   # smoke test

Writes <out>/daily.json and daily.md (default out: bench/results). Generated data and lakes
stay under --work (ignored by git) and are reused by a later run of the same size. Never run
by the tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import run_tracked  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T_START = time.monotonic()
STAGES = ("ingest", "clean", "features", "fpgrowth", "kmeans", "score")
DATE = re.compile(rb",(\d{1,2})/(\d{1,2})/(\d{4}) ")


def say(text: str) -> None:
    print(f"[daily {time.monotonic() - T_START:7.1f}s] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ one session (a subprocess)


def session_main(argv: list[str]) -> int:
    """`daily.py --session LAKE INPUT AS_OF [--train]`: the stages in one Spark session; prints
    JSON: seconds per stage, and the files the commits of these runs added and removed."""
    lake_dir, input_path, as_of_text, *rest = argv
    import pyspark.sql.functions as F

    from lakemine.core.config import load_config
    from lakemine.io import schemas
    from lakemine.io.lake import Lake
    from lakemine.io.spark import session
    from lakemine.learning import score, train
    from lakemine.mining import fpgrowth, kmeans
    from lakemine.stages import clean, features, ingest

    as_of = date.fromisoformat(as_of_text)
    cfg = load_config(None).with_lake(lake_dir)
    spark = session(cfg)
    lake = Lake.at(spark, lake_dir)
    started = datetime.now(timezone.utc).replace(tzinfo=None)
    steps = [
        ("ingest", lambda: ingest.run(lake, cfg, ingest.IngestParams.from_config(cfg, input=input_path, as_of=as_of))),
        ("clean", lambda: clean.run(lake, cfg, clean.CleanParams.from_config(cfg, as_of=as_of))),
        ("features", lambda: features.run(lake, cfg, features.FeatureParams.from_config(cfg, as_of=as_of))),
        ("fpgrowth", lambda: fpgrowth.run(lake, cfg, fpgrowth.MiningParams.from_config(cfg, as_of=as_of))),
        ("kmeans", lambda: kmeans.run(lake, cfg, kmeans.KMeansParams.from_config(cfg, as_of=as_of))),
    ]
    if "--train" in rest:
        steps.append(("train", lambda: train.run(lake, cfg, train.TrainParams.from_config(
            cfg, as_of=as_of, backend="torch", workers=1, epochs=3))))
    steps.append(("score", lambda: score.run(lake, cfg, score.ScoreParams.from_config(cfg, as_of=as_of))))
    secs = {}
    for name, step in steps:
        t0 = time.monotonic()
        step()
        secs[name] = time.monotonic() - t0
        print(f"[{time.monotonic() - T_START:8.1f}s] {name} done in {secs[name]:.1f} s", file=sys.stderr, flush=True)
    runs = lake.read_table(schemas.OPS_RUNS).where(F.col("started_at") >= F.lit(started)).collect()
    print(json.dumps({"stage_secs": secs, "files": files_touched(runs)}))
    return 0


def files_touched(runs) -> dict:
    """{table: [added, removed]} summed over ops/runs rows."""
    out: dict[str, list[int]] = {}
    for r in runs:
        for table, n in (r["files_added"] or {}).items():
            out.setdefault(table, [0, 0])[0] += n
        for table, n in (r["files_removed"] or {}).items():
            out.setdefault(table, [0, 0])[1] += n
    return out


# ----------------------------------------------------------------------------------- the data


def split_days(raw: Path, landing: Path, new_day: Path) -> tuple[date, int, int]:
    """Generated CSVs -> one file per day under `landing`, except the last day's, which goes to
    `new_day`. A line without a readable date stays with the line before it. Returns (the last
    day, history lines, new-day lines)."""
    shutil.rmtree(landing, ignore_errors=True)
    shutil.rmtree(new_day, ignore_errors=True)
    landing.mkdir(parents=True)
    new_day.mkdir(parents=True)
    parts: dict[date, list[bytes]] = {}
    header = b""
    for path in sorted(raw.glob("*.csv")):
        with open(path, "rb") as fh:
            header = fh.readline()
            day = None
            for line in fh:
                m = DATE.search(line)
                if m:
                    try:
                        day = date(int(m[3]), int(m[1]), int(m[2]))
                    except ValueError:
                        pass
                parts.setdefault(day or date(1990, 1, 1), []).append(line)
    orphans = parts.pop(date(1990, 1, 1), [])
    days = sorted(parts)
    parts[days[0]] = orphans + parts[days[0]]
    last = days[-1]
    for d in days:
        folder = new_day if d == last else landing
        with open(folder / f"day_{d.isoformat()}.csv", "wb") as fh:
            fh.write(header)
            fh.writelines(parts[d])
    return last, sum(len(parts[d]) for d in days[:-1]), len(parts[last])


def ensure_history(n: int, work: Path, repo_python: str) -> dict:
    """Raw data, daily files and the built history lake of `n` lines, reused when present."""
    root = work / f"{n}"
    meta_path = root / "history.json"
    if meta_path.exists():
        say(f"  reusing {root}")
        return json.loads(meta_path.read_text())
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    customers = max(50, n // 366)
    say(f"  generating {n:,} lines ({customers:,} customers, 366 days)")
    subprocess.run([repo_python, "-m", "lakemine", "generate", "--out", str(root / "raw"), "--customers", str(customers),
                    "--days", "366", "--seed", "1", "--dirty-rate", "0.01"], check=True, capture_output=True)
    last, history_lines, day_lines = split_days(root / "raw", root / "landing", root / "new_day")
    shutil.rmtree(root / "raw")
    say(f"  {history_lines:,} history lines in 365 daily files; the new day {last}: {day_lines:,} lines")
    say("  building the history lake (one session, training included)")
    tracked = run_tracked([repo_python, __file__, "--session", str(root / "history"), str(root / "landing"),
                           (last.fromordinal(last.toordinal() - 1)).isoformat(), "--train"],
                          root / "history.log", (), "history")
    meta = {"lines": n, "history_lines": history_lines, "day_lines": day_lines, "new_day": last.isoformat(),
            "history_build_secs": tracked["wall"], "history_peak_mib": peak_mib(tracked), "history_build": json.loads(tracked["stdout"].strip().splitlines()[-1])}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


# ------------------------------------------------------------------------------ the variants


def peak_mib(tracked: dict) -> float:
    return max((r for _, r in tracked["samples"]), default=0) / 2**20


def daily_per_process(root: Path, lake: Path, as_of: str, python: str) -> dict:
    """The day as the DAG runs it: one `lakemine <stage>` process per stage."""
    secs, peaks = {}, {}
    started = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    for stage in STAGES:
        cmd = [python, "-m", "lakemine", stage, "--lake", str(lake), "--as-of", as_of]
        if stage == "ingest":
            cmd += ["--input", str(root / "landing")]
        tracked = run_tracked(cmd, root / f"proc-{stage}.log", (), stage)
        secs[stage], peaks[stage] = tracked["wall"], peak_mib(tracked)
    return {"stage_secs": secs, "total_secs": sum(secs.values()), "peak_mib": max(peaks.values()),
            "files": _files_since(lake, python, started)}


def _files_since(lake: Path, python: str, started: str) -> dict:
    """Files the runs started after `started` (UTC) touched, read from ops/runs in a short
    separate session."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[2]); from daily import files_touched; "
            "from lakemine.core.config import load_config; from lakemine.io.spark import session; "
            "from lakemine.io.lake import Lake; "
            "lake = Lake.at(session(load_config(None)), sys.argv[1]); "
            "runs = lake.read_table('ops/runs').where(f\"started_at >= TIMESTAMP'{sys.argv[3]}'\").collect(); "
            "print(json.dumps(files_touched(runs)))")
    out = subprocess.run([python, "-c", code, str(lake), str(Path(__file__).parent), started],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_session(root: Path, lake: Path, input_path: Path, as_of: str, python: str, tag: str) -> dict:
    tracked = run_tracked([python, __file__, "--session", str(lake), str(input_path), as_of],
                          root / f"{tag}.log", (), tag)
    out = json.loads(tracked["stdout"].strip().splitlines()[-1])
    return {"stage_secs": out["stage_secs"], "total_secs": sum(out["stage_secs"].values()),
            "process_secs": tracked["wall"], "peak_mib": peak_mib(tracked), "files": out["files"]}


def measure(n: int, work: Path, repeat: int, rebuild_repeat: int, python: str) -> dict:
    say(f"{n:,} lines")
    meta = ensure_history(n, work, python)
    root = work / f"{n}"
    (new_file,) = sorted((root / "new_day").glob("*.csv"))
    landed = root / "landing" / new_file.name
    runs = []
    for i in range(repeat):
        say(f"  repeat {i + 1}/{repeat}")
        result = {}
        for variant in ("per_process", "one_session"):
            lake = root / f"day-{variant}"
            shutil.rmtree(lake, ignore_errors=True)
            shutil.copytree(root / "history", lake)
            shutil.copy2(new_file, landed)
            try:
                if variant == "per_process":
                    result[variant] = daily_per_process(root, lake, meta["new_day"], python)
                else:
                    result[variant] = one_session(root, lake, root / "landing", meta["new_day"], python, variant)
            finally:
                landed.unlink(missing_ok=True)
                shutil.rmtree(lake, ignore_errors=True)
            say(f"    daily {variant}: {result[variant]['total_secs']:.1f} s")
        if i >= rebuild_repeat:
            runs.append(result)
            continue
        full = root / "full"
        shutil.rmtree(full, ignore_errors=True)
        (full / "models").parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(root / "history" / "models", full / "models")
        everything = root / "all_days"
        shutil.rmtree(everything, ignore_errors=True)
        shutil.copytree(root / "landing", everything)
        shutil.copy2(new_file, everything / new_file.name)
        try:
            result["full_rebuild"] = one_session(root, full, everything, meta["new_day"], python, "full")
        finally:
            shutil.rmtree(full, ignore_errors=True)
            shutil.rmtree(everything, ignore_errors=True)
        say(f"    full rebuild: {result['full_rebuild']['total_secs']:.1f} s")
        runs.append(result)
    if rebuild_repeat == 0:
        # the history build: the same stages in one session on an empty lake, over 365 of the
        # 366 files; training left out of the sum as in the other variants
        built = {s: secs for s, secs in meta["history_build"]["stage_secs"].items() if s != "train"}
        for r in runs:
            r["full_rebuild"] = {"stage_secs": built, "total_secs": sum(built.values()), "peak_mib": meta.get("history_peak_mib", 0),
                                 "files": meta["history_build"]["files"], "from_history_build": True}
    med = {}
    for variant in ("per_process", "one_session", "full_rebuild"):
        rs = [r[variant] for r in runs if variant in r]
        med[variant] = {
            "total_secs": statistics.median(r["total_secs"] for r in rs),
            "stage_secs": {s: statistics.median(r["stage_secs"][s] for r in rs) for s in rs[0]["stage_secs"]},
            "peak_mib": statistics.median(r["peak_mib"] for r in rs),
            "files": rs[-1]["files"],
            "runs": len(rs),
            "from_history_build": bool(rs[-1].get("from_history_build")),
        }
    return {**meta, "repeats": runs, "median": med}


def write_markdown(path: Path, meta: dict, results: list[dict]) -> str:
    lines = [
        "# One more day against the history (bench/daily.py)", "",
        f"{meta['started']} · {meta['machine']} · medians of the runs counted in the table; training excluded", "",
        "| history lines | new day lines | runs daily / rebuild | daily, process per stage (s) | daily, one session (s) "
        "| full rebuild (s) | full / daily (one session) | peak MiB daily / full | silver files added/removed that day |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r["median"]
        pp, os_, fr = m["per_process"], m["one_session"], m["full_rebuild"]
        silver = pp["files"].get("silver/transactions", [0, 0])
        rebuild_runs = "history build*" if fr["from_history_build"] else fr["runs"]
        full_peak = f"{fr['peak_mib']:,.0f}" if fr["peak_mib"] else "n/a"
        lines.append(
            f"| {r['history_lines']:,} | {r['day_lines']:,} | {pp['runs']} / {rebuild_runs} | {pp['total_secs']:.1f} | "
            f"{os_['total_secs']:.1f} | {fr['total_secs']:.1f} | {fr['total_secs'] / os_['total_secs']:.1f}x | "
            f"{max(pp['peak_mib'], os_['peak_mib']):,.0f} / {full_peak} | {silver[0]} / {silver[1]} |")
    if any(r["median"]["full_rebuild"]["from_history_build"] for r in results):
        lines += ["", "\\* the history build's stage times: the same stages in one session on an empty lake, over the "
                  "365 history files (the rebuild would add the one new day), training left out; one run; its peak "
                  "memory, where n/a, was not sampled."]
    lines += ["", "Seconds per stage (medians):", "",
              "| history lines | variant | " + " | ".join(STAGES) + " |", "|---:|---|" + "---:|" * len(STAGES)]
    for r in results:
        for variant in ("per_process", "one_session", "full_rebuild"):
            s = r["median"][variant]["stage_secs"]
            lines.append(f"| {r['history_lines']:,} | {variant} | " + " | ".join(f"{s.get(x, 0):.1f}" for x in STAGES) + " |")
    if len(results) > 1:
        first, last = results[0]["median"], results[-1]["median"]
        for variant in ("per_process", "one_session"):
            ratio = last[variant]["total_secs"] / first[variant]["total_secs"]
            lines.append("")
            lines.append(f"Daily {variant.replace('_', ' ')}: {results[-1]['history_lines']:,}-line history costs "
                         f"{ratio:.2f}x the {results[0]['history_lines']:,}-line one (target: within 1.5x at 20 M vs 1 M).")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--session":
        return session_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    ap.add_argument("--repeat", type=int, nargs="+", default=[3],
                    help="daily runs per size: one number for all sizes, or one per --lines (default 3)")
    ap.add_argument("--rebuild-repeat", type=int, default=None,
                    help="full rebuilds per size (default: as --repeat); 0 reports the history build's stage "
                         "times instead (the same stages on an empty lake over the 365 history files, training "
                         "left out), which saves the longest runs at 20 M")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "daily")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    python = sys.executable
    meta = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "repeat": args.repeat,
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}"}
    repeats = args.repeat * len(args.lines) if len(args.repeat) == 1 else args.repeat
    if len(repeats) != len(args.lines):
        ap.error("--repeat takes one number, or one per --lines")
    meta["repeat"] = dict(zip(map(str, args.lines), repeats))
    meta["rebuild_repeat"] = args.rebuild_repeat
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for n, r in zip(args.lines, repeats):
        results.append(measure(n, args.work, r, r if args.rebuild_repeat is None else min(args.rebuild_repeat, r), python))
        results.sort(key=lambda x: x["lines"])
        # written after every size, so a long run stopped early keeps what it measured
        (args.out / "daily.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
        text = write_markdown(args.out / "daily.md", meta, results)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
