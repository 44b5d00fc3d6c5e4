"""Benchmark: `lakemine run` end to end against the same work done single-node by the tools a
user would pick for small data (bench/e2e_peers.py: pandas, pyfim, scikit-learn, plain torch).

Per size, `lakemine generate` writes the raw CSV once (--days 365, --seed, --dirty-rate;
customers = lines / 365). Then, --repeat times, each in its own process:

* lakemine: `lakemine run --input RAW --lake <fresh lake>` (the lake is deleted afterwards);
* peer: `bench/e2e_peers.py --input RAW --epochs E`, with E the epochs lakemine's training
  ran in the same repeat (read from the model's metadata.json), so both train equally long.

Stage seconds are each pipeline's own timer around each stage (lakemine: the summary's "wall
time per stage"); `startup` is the time to the first stage (interpreter, imports, and for
lakemine the JVM and Spark session); `process wall` is the whole process, lakemine's summary
queries and the peer's exit included. A sampler sums the resident memory of the process tree
(Python driver, JVM, Spark's Python workers, Horovod's ranks) every 0.1 s and files each
sample under the stage whose progress line ("[  12.3s] stage    text" on stderr) came last;
samples after the last stage ends are `summary`. Medians of the repeats.

    nice -n 10 .venv/bin/python bench/e2e.py --lines 1000000 5000000 --repeat 3   # add 20000000 when time allows
    nice -n 10 .venv/bin/python bench/e2e.py --lines 100000 --repeat 1 --out /tmp/e2e-smoke   # smoke test

Writes <out>/e2e-<date>.json, .md and .png (default out: bench/results; date of the start, UTC).
Generated files stay under --work with --keep-data and are reused by a later run with the same
customers, seed and dirty rate. Never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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
LINES_PER_CUSTOMER = 365.0  # measured (bench/ingest_clean.py): 2,475 customers -> 912,161 lines at --days 365
STAGES = ("ingest", "clean", "features", "fpgrowth", "kmeans", "train", "score")
LAKEMINE_STAGES = ("ingest", "clean", "features", "fpgrowth", "recommend", "forecast", "kmeans", "tune", "train", "score",
                   "report")
PROGRESS = re.compile(r"^\[\s*([\d.]+)s\] (\S+)\s?(.*)$")
SAMPLE_SECS = 0.1
T_START = time.monotonic()


def say(text: str) -> None:
    print(f"[e2e {time.monotonic() - T_START:7.1f}s] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- running a process


class MemoryLimit(RuntimeError):
    """The process tree passed run_tracked's `limit_bytes` and was killed."""

    def __init__(self, cmd: list[str], peak: int, limit: int, wall: float, marks: list) -> None:
        super().__init__(f"{cmd[0]}: resident memory of the process tree passed {limit / 2**30:.1f} GiB, stopped")
        self.peak, self.limit, self.wall, self.marks = peak, limit, wall, marks


def run_tracked(cmd: list[str], log_path: Path, stages: tuple[str, ...], who: str, env: dict | None = None,
                limit_bytes: int | None = None) -> dict:
    """Run cmd with a memory sampler over its process tree and stage marks from its progress
    lines. Returns wall seconds, samples [(t, bytes)], marks [(t, stage)], stage messages and stdout.
    With `limit_bytes`, a tree whose resident memory passes it is killed (MemoryLimit raised)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
    over: list[int] = []
    samples: list[tuple[float, int]] = []
    at_peak: dict[str, int] = {}  # the largest sample's resident bytes by kind of process (`process_kind`)
    file_at_peak: list[int] = [0]  # of the largest sample, the bytes of file-backed pages (mapped files, not heap)
    marks: list[tuple[float, str]] = []
    messages: dict[str, list[str]] = {}
    done = threading.Event()
    out: list[str] = []

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            rss, parts, file_backed = 0, {}, 0
            for p in procs:
                try:
                    if spawning(p):
                        continue
                    info = p.memory_info()
                    kind = process_kind(p, root)
                except psutil.Error:
                    continue
                rss += info.rss
                file_backed += info.shared  # resident pages backed by a file or shared memory
                parts[kind] = parts.get(kind, 0) + info.rss
            if rss > max((r for _, r in samples), default=0):
                at_peak.clear()
                at_peak.update(parts)
                file_at_peak[0] = file_backed
            samples.append((time.monotonic() - t0, rss))
            if limit_bytes is not None and rss > limit_bytes:
                over.append(rss)
                for p in reversed(procs):
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                break
            done.wait(SAMPLE_SECS)

    def read_stdout() -> None:
        out.append(proc.stdout.read())

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=read_stdout, daemon=True)]
    for t in threads:
        t.start()
    with open(log_path, "w", encoding="utf-8") as log:
        for line in proc.stderr:
            log.write(line)
            m = PROGRESS.match(line.rstrip("\n"))
            if m and m.group(2) in stages:
                stage = m.group(2)
                messages.setdefault(stage, []).append(m.group(3))
                if not marks or marks[-1][1] != stage:
                    marks.append((time.monotonic() - t0, stage))
                    say(f"    {who}: {stage} (process at {time.monotonic() - t0:.0f} s)")
    proc.wait()
    wall = time.monotonic() - t0
    done.set()
    for t in threads:
        t.join()
    if over:
        raise MemoryLimit(cmd, max(r for _, r in samples), limit_bytes, wall, marks)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); log {log_path}:\n{tail}")
    return {"wall": wall, "samples": samples, "marks": marks, "messages": messages, "stdout": "".join(out),
            "peak_parts_mib": {k: round(v / 2**20, 1) for k, v in sorted(at_peak.items(), key=lambda kv: -kv[1])},
            "peak_file_backed_mib": round(file_at_peak[0] / 2**20, 1)}


def spawning(p: psutil.Process) -> bool:
    """Whether `p` is its parent caught mid-spawn: a child still running its parent's executable
    (the JVM starts each `chmod`, `readlink`... through posix_spawn, whose child shares the
    parent's memory until it execs). Its resident pages are the parent's: counting them would
    double the JVM for a sample (a 9.9 GiB "peak" at 49 M lines that was a 4.8 GiB JVM)."""
    parent = p.parent()
    return parent is not None and p.name() == "java" and parent.name() == "java" and p.exe() == parent.exe()


def process_kind(p: psutil.Process, root: psutil.Process) -> str:
    """What a process of the tracked tree is: the command itself, the JVM, a Spark Python
    worker, a Horovod process, or its executable's name."""
    if p.pid == root.pid:
        return "main process"
    line = " ".join(p.cmdline())
    if p.name() == "java" or "/java " in line:
        return "JVM"
    if "horovod" in line:
        return "Horovod processes"
    if "pyspark" in line or "daemon" in line:
        return "Spark Python workers"
    return p.name()


def attribute(tracked: dict, stage_secs: dict[str, float]) -> dict:
    """Per-phase peak MiB: startup (before the first stage), each stage, summary (after the
    last stage's own timer ended); plus startup and summary seconds."""
    marks = tracked["marks"]
    first = marks[0][0] if marks else tracked["wall"]
    last_t, last_stage = marks[-1] if marks else (tracked["wall"], None)
    end = last_t + stage_secs.get(last_stage, 0.0) if last_stage else tracked["wall"]
    peaks: dict[str, int] = {}
    for t, rss in tracked["samples"]:
        if t < first:
            phase = "startup"
        elif t >= end:
            phase = "summary"
        else:
            phase = next(s for mt, s in reversed(marks) if mt <= t)
        peaks[phase] = max(peaks.get(phase, 0), rss)
    for mt, stage in marks:  # a stage shorter than the sampling interval: the first sample after it began
        if stage not in peaks:
            peaks[stage] = next((r for t, r in tracked["samples"] if t >= mt), 0)
    overall = max((r for _, r in tracked["samples"]), default=0)
    return {
        "peak_mib": {k: v / 2**20 for k, v in peaks.items()},
        "overall_peak_mib": overall / 2**20,
        "startup_secs": first,
        "summary_secs": max(0.0, tracked["wall"] - end),
        "samples": len(tracked["samples"]),
    }


# ------------------------------------------------------------------------------- lakemine run


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def parse_summary(stdout: str) -> dict:
    """Tables, quarantine reasons, conservation, rules, model and stage times from `lakemine run`'s summary."""
    info: dict = {"tables": {}, "quarantine_reasons": {}, "conservation": {}, "stage_secs": {}}
    section = None
    for line in stdout.splitlines():
        if line and not line.startswith(" "):
            section = line.strip()
        if m := re.match(r"^\s+(\w+/\w+)\s+([\d,]+) rows", line):
            info["tables"][m.group(1)] = _int(m.group(2))
        elif m := re.match(r"^\s+(bronze|silver)/quarantine\s+(\w+)\s+([\d,]+)$", line):
            info["quarantine_reasons"].setdefault(m.group(1), {})[m.group(2)] = _int(m.group(3))
        elif m := re.match(r"^\s+(ingest|clean)\s+in\s+([\d,]+) = out ([\d,]+) \+ quarantined ([\d,]+) \+ duplicates ([\d,]+)", line):
            info["conservation"][m.group(1)] = dict(zip(("rows_in", "rows_out", "rows_quarantined", "rows_duplicate"),
                                                        map(_int, m.groups()[1:])))
        elif m := re.match(r"^association rules as of \S+: ([\d,]+)", line):
            info["rules"] = _int(m.group(1))
        elif m := re.match(r"^\s+models/churn/(\S+)\s+\(", line):
            info["model_version"] = m.group(1)
        elif m := re.match(r"^\s+validation AUC ([\d.]+) vs logistic-regression baseline ([\d.]+)", line):
            info["val_auc"], info["baseline_auc"] = float(m.group(1)), float(m.group(2))
        elif m := re.match(r"^\s+scores written: ([\d,]+)", line):
            info["scored"] = _int(m.group(1))
        elif section == "wall time per stage" and (m := re.match(r"^\s+(\w+)\s+([\d.]+) s$", line)) and m.group(1) != "total":
            info["stage_secs"][m.group(1)] = float(m.group(2))
    return info


def run_lakemine(raw: Path, lake: Path, log: Path) -> dict:
    shutil.rmtree(lake, ignore_errors=True)
    tracked = run_tracked([sys.executable, "-m", "lakemine", "run", "--input", str(raw), "--lake", str(lake)],
                          log, LAKEMINE_STAGES, "lakemine")
    summary = parse_summary(tracked["stdout"])
    missing = [s for s in LAKEMINE_STAGES if s not in summary["stage_secs"]]
    if missing:
        raise RuntimeError(f"lakemine run: no wall time for {missing} in its summary (log {log})")
    meta = json.loads((lake / "models" / "churn" / summary["model_version"] / "metadata.json").read_text())
    msgs = tracked["messages"]
    fp = re.search(r"([\d,]+) itemsets, ([\d,]+) rules from ([\d,]+) baskets", " ".join(msgs.get("fpgrowth", [])))
    km = re.search(r"k=(\d+) \(silhouette ([\d.]+)\)", " ".join(msgs.get("kmeans", [])))
    t = summary["tables"]
    counts = {
        "ingest": summary["conservation"]["ingest"], "clean": summary["conservation"]["clean"],
        "quarantine_reasons": summary["quarantine_reasons"],
        "baskets": t.get("gold/baskets"), "customer_features": t.get("gold/customer_features"),
        "itemsets": _int(fp.group(1)) if fp else None, "rules": summary.get("rules"),
        "k": int(km.group(1)) if km else None, "silhouette": float(km.group(2)) if km else None,
        "train_rows": meta["rows"]["train"], "val_rows": meta["rows"]["val"],
        "epochs_run": meta["epochs"]["run"], "best_epoch": meta["epochs"]["best"],
        "batch_per_worker": meta["batch_size"]["used"], "world_size": meta["world_size"],
        "val_auc": meta["validation"]["auc"], "baseline_auc": meta["baseline"]["auc"], "scored": summary.get("scored"),
    }
    phases = attribute(tracked, summary["stage_secs"])
    shutil.rmtree(lake, ignore_errors=True)
    return {"stage_secs": summary["stage_secs"], "process_wall_secs": tracked["wall"], **phases, "counts": counts}


# ----------------------------------------------------------------------------------- the peer


def run_peer(raw: Path, work: Path, log: Path, epochs: int | None) -> dict:
    result_path = work.with_suffix(".result.json")
    cmd = [sys.executable, str(REPO / "bench" / "e2e_peers.py"), "--input", str(raw), "--work", str(work),
           "--result", str(result_path)]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    tracked = run_tracked(cmd, log, STAGES, "peer")
    result = json.loads(result_path.read_text())
    c = result["counts"]
    counts = {
        "ingest": {k: c["ingest"][k] for k in ("rows_in", "rows_out", "rows_quarantined")} | {"rows_duplicate": 0},
        "clean": {k: c["clean"][k] for k in ("rows_in", "rows_out", "rows_quarantined", "rows_duplicate")},
        "quarantine_reasons": {"bronze": c["ingest"]["quarantine_reasons"], "silver": c["clean"]["quarantine_reasons"]},
        "baskets": c["features"]["baskets"], "customer_features": c["features"]["customer_features"],
        "itemsets": c["fpgrowth"]["itemsets"], "rules": c["fpgrowth"]["rules"],
        "k": c["kmeans"]["k"], "silhouette": c["kmeans"]["silhouette"],
        "train_rows": c["train"]["rows"]["train"], "val_rows": c["train"]["rows"]["val"],
        "epochs_run": c["train"]["epochs"]["run"], "best_epoch": c["train"]["epochs"]["best"],
        "early_stop_would_end_at": c["train"]["epochs"]["early_stop_would_end_at"],
        "batch_per_worker": c["train"]["batch_size"]["per_worker_equivalent"],
        "val_auc": c["train"]["validation"]["auc"], "baseline_auc": c["train"]["baseline"]["auc"],
        "scored": c["score"]["scored"],
    }
    phases = attribute(tracked, result["stages"])
    shutil.rmtree(work, ignore_errors=True)
    result_path.unlink(missing_ok=True)
    return {"stage_secs": result["stages"], "process_wall_secs": tracked["wall"], **phases, "counts": counts}


def check_peer_constants() -> None:
    """The peer copies lakemine's constants (importing them would load Spark): fail if they drifted."""
    sys.path.insert(0, str(REPO / "bench"))
    import e2e_peers as peer

    from lakemine.core.config import packaged_defaults
    from lakemine.io import schemas
    from lakemine.learning import drift, train
    from lakemine.mining import kmeans
    from lakemine.stages import clean, features

    d = packaged_defaults()
    kp = d.kmeans
    segment_features = d.kmeans.columns
    pairs = {
        "RAW_COLUMNS": (schemas.RAW_COLUMNS, peer.RAW_COLUMNS), "RAW_COLUMNS_II": (schemas.RAW_COLUMNS_II, peer.RAW_COLUMNS_II),
        "REASONS": (clean.REASONS, peer.REASONS), "YEARS": ((clean.MIN_YEAR, clean.MAX_YEAR), (peer.MIN_YEAR, peer.MAX_YEAR)),
        "FEATURES": (features.FEATURES, peer.FEATURES), "LOG_FEATURES": (features.LOG_FEATURES, peer.LOG_FEATURES),
        "TOP_CATEGORIES": (d.features.top_categories, peer.TOP_CATEGORIES),
        "SEGMENT_FEATURES": (segment_features, peer.SEGMENT_FEATURES),
        "kmeans params": ((kp.n_init, kp.seed, kp.max_iter, kp.tol), (peer.N_INIT, peer.KMEANS_SEED, peer.KMEANS_MAX_ITER, peer.KMEANS_TOL)),
        "mining params": ((d.fpgrowth.min_support, d.fpgrowth.min_confidence), (peer.MIN_SUPPORT, peer.MIN_CONFIDENCE)),
        "batch floor": ((train.MIN_STEPS_PER_EPOCH, train.MIN_BATCH), (peer.MIN_STEPS_PER_EPOCH, peer.MIN_BATCH)),
        "PSI floor": (drift.FLOOR, peer.FLOOR),
    }
    pairs["run's k range"] = (tuple(d.run.k_range), tuple(peer.K_RANGE))
    probes = [{c: v for c in segment_features} for v in (-2.0, -0.6, 0.0, 0.6, 0.8, 2.0)]
    probes += [{c: (1.0 if c == f else -1.0) for c in segment_features} for f in segment_features]
    pairs["label_centre"] = ([kmeans.label_centre(p) for p in probes], [peer.label_centre(p) for p in probes])
    drifted = [name for name, (a, b) in pairs.items() if a != b]
    if drifted:
        raise SystemExit(f"bench/e2e_peers.py no longer mirrors lakemine: {', '.join(drifted)}")


# ------------------------------------------------------------------------------------ reports


def median_run(runs: list[dict], who: str) -> dict:
    stages = LAKEMINE_STAGES if who == "lakemine" else STAGES
    m = {"stage_secs": {}, "peak_mib": {}}
    for s in stages:
        m["stage_secs"][s] = statistics.median(r[who]["stage_secs"][s] for r in runs)
    for phase in ("startup", *stages, "summary"):
        vals = [r[who]["peak_mib"][phase] for r in runs if phase in r[who]["peak_mib"]]
        if vals:
            m["peak_mib"][phase] = statistics.median(vals)
    for key in ("process_wall_secs", "startup_secs", "summary_secs", "overall_peak_mib"):
        m[key] = statistics.median(r[who][key] for r in runs)
    m["stages_total_secs"] = statistics.median(sum(r[who]["stage_secs"][s] for s in STAGES) for r in runs)
    m["stages_peak_mib"] = statistics.median(max(r[who]["peak_mib"].get(s, 0.0) for s in STAGES) for r in runs)
    return m


CHECKS = (
    ("data lines read", lambda c: c["ingest"]["rows_in"]),
    ("bronze rows", lambda c: c["ingest"]["rows_out"]),
    ("ingest quarantined", lambda c: c["ingest"]["rows_quarantined"]),
    ("duplicates removed", lambda c: c["clean"]["rows_duplicate"]),
    ("silver rows", lambda c: c["clean"]["rows_out"]),
    ("clean quarantined", lambda c: c["clean"]["rows_quarantined"]),
    ("baskets", lambda c: c["baskets"]),
    ("customer feature rows (3 dates)", lambda c: c["customer_features"]),
    ("frequent itemsets", lambda c: c["itemsets"]),
    ("rules", lambda c: c["rules"]),
    ("k (silhouette)", lambda c: f"{c['k']} ({c['silhouette']:.3f})"),
    ("train / validation rows", lambda c: f"{c['train_rows']:,} / {c['val_rows']:,}"),
    ("epochs run (best)", lambda c: f"{c['epochs_run']} ({c['best_epoch']})"),
    ("batch per worker (x 2 workers)", lambda c: c["batch_per_worker"]),
    ("validation AUC / baseline AUC", lambda c: f"{c['val_auc']:.4f} / {c['baseline_auc']:.4f}"),
    ("customers scored", lambda c: c["scored"]),
)


def _fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def write_markdown(path: Path, meta: dict, results: list[dict], png_name: str) -> str:
    md = [
        f"# End to end: `lakemine run` against single-node peers ({meta['date']})", "",
        f"{meta['machine']}; load average {meta['loadavg_at_start']} at the start (the machine is shared); "
        f"median of {meta['repeat']} run(s) per size; generated data (`lakemine generate --days 365 --seed {meta['seed']} "
        f"--dirty-rate {meta['dirty_rate']}`), the same raw CSV files for both. Command: `{meta['command']}`.", "",
        "**lakemine**: `lakemine run --input RAW --lake <fresh lake>` (one local Spark session, `local[*]`, 4 GiB driver; "
        "Delta tables; training Petastorm + Horovod on 2 processes; report). **peer** (`bench/e2e_peers.py`): pandas "
        "(pyarrow CSV engine) for ingest, clean and features, pyfim for FP-growth, scikit-learn K-means and "
        "logistic-regression baseline, lakemine's own `ChurnMLP` trained by plain torch from in-memory tensors "
        "for the epochs lakemine ran, plain torch scoring; every stage writes its outputs as Parquet. The peer has no "
        "report stage.", "",
        "Seconds: each pipeline's own timer around each stage. `startup`: process start to the first stage "
        "(lakemine: interpreter, JVM and Spark session; peer: imports). `process wall` also counts lakemine's report "
        "and summary queries and the peer's interpreter exit. Peak MiB: resident set summed over the whole process "
        "tree (driver, JVM, Spark's Python workers, Horovod's ranks; pages shared between processes, such as the "
        "libraries of forked workers, count once per process), sampled every 0.1 s and filed under the running stage; "
        "the JVM keeps the heap it has grown, so lakemine's later stages show at least the earlier stages' JVM size. "
        "Ratio = lakemine / peer (above 1: lakemine slower).", "",
        "| lines | stage | lakemine s | peer s | ratio | lakemine peak MiB | peer peak MiB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]

    def cell(v, f=None):
        if v is None:
            return "—"
        return (f or ("{:,.2f}" if abs(v) < 10 else "{:,.1f}")).format(v)

    for r in results:
        lk, pe = r["median"].get("lakemine"), r["median"].get("peer")
        lines = f"{r['lines']:,}"

        def row(label, lsec, psec, lpk, ppk):
            ratio = lsec / psec if lsec is not None and psec else None
            md.append(f"| {lines} | {label} | {cell(lsec)} | {cell(psec)} | {cell(ratio, '{:.1f}x')} | "
                      f"{cell(lpk, '{:,.0f}')} | {cell(ppk, '{:,.0f}')} |")

        get = lambda m, *k: None if m is None else (m[k[0]].get(k[1]) if len(k) == 2 else m[k[0]])  # noqa: E731
        row("startup", get(lk, "startup_secs"), get(pe, "startup_secs"), get(lk, "peak_mib", "startup"), get(pe, "peak_mib", "startup"))
        for s in STAGES:
            row(s, get(lk, "stage_secs", s), get(pe, "stage_secs", s), get(lk, "peak_mib", s), get(pe, "peak_mib", s))
        row("report (lakemine only)", get(lk, "stage_secs", "report"), None, get(lk, "peak_mib", "report"), None)
        row("**stages ingest–score**", get(lk, "stages_total_secs"), get(pe, "stages_total_secs"),
            get(lk, "stages_peak_mib"), get(pe, "stages_peak_mib"))
        row("**process wall**", get(lk, "process_wall_secs"), get(pe, "process_wall_secs"),
            get(lk, "overall_peak_mib"), get(pe, "overall_peak_mib"))
    if all(r["median"].get("peer") and r["median"].get("lakemine") for r in results):
        md += ["", "Checks (first run of each size): both pipelines' row counts and results.", "",
               "| lines | what | lakemine | peer |", "|---:|---|---:|---:|"]
        for r in results:
            lc, pc = r["runs"][0]["lakemine"]["counts"], r["runs"][0]["peer"]["counts"]
            for label, fn in CHECKS:
                md.append(f"| {r['lines']:,} | {label} | {_fmt(fn(lc))} | {_fmt(fn(pc))} |")
    md += ["", "Where the peer's logic differs from lakemine's:", ""] + [f"- {d}" for d in meta["peer_differences"]]
    md += ["", f"![cost against lines]({png_name})", ""]
    text = "\n".join(md)
    path.write_text(text)
    return text


def log_axes(ax, title: str, ylabel: str) -> None:
    """A log-log panel against raw lines, titled, gridded, with its legend."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("raw lines")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def write_plot(path: Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5))
    xs = [r["lines"] for r in results]
    colours = {"lakemine": "tab:blue", "peer": "tab:orange"}
    for who in ("lakemine", "peer"):
        ms = [r["median"].get(who) for r in results]
        if not all(ms):
            continue
        ax1.plot(xs, [m["process_wall_secs"] for m in ms], "o-", color=colours[who], label=f"{who}: process wall")
        ax1.plot(xs, [m["stages_total_secs"] for m in ms], "s--", color=colours[who], label=f"{who}: stages ingest–score")
        ax3.plot(xs, [m["overall_peak_mib"] for m in ms], "o-", color=colours[who], label=who)
    for ax, title, ylabel in ((ax1, "wall time against lines", "seconds"), (ax3, "peak resident memory against lines", "MiB")):
        log_axes(ax, title, ylabel)
    cmap = plt.get_cmap("tab10")
    width, pos, ticks, labels = 0.38, 0, [], []
    phases = ("startup",) + LAKEMINE_STAGES
    for r in results:
        for j, who in enumerate(("lakemine", "peer")):
            m = r["median"].get(who)
            if not m:
                continue
            x = pos + j * width
            bottom = 0.0
            for i, phase in enumerate(phases):
                v = m["startup_secs"] if phase == "startup" else m["stage_secs"].get(phase, 0.0)
                ax2.bar(x, v, width * 0.9, bottom=bottom, color=cmap(i), label=phase if pos == 0 and j == 0 else None)
                bottom += v
            ax2.text(x, bottom, "L" if who == "lakemine" else "P", ha="center", va="bottom", fontsize=8)
        ticks.append(pos + width / 2)
        labels.append(f"{r['lines']:,}")
        pos += 1
    ax2.set_xticks(ticks, labels)
    ax2.set_xlabel("raw lines (L = lakemine, P = peer)")
    ax2.set_ylabel("seconds (median)")
    ax2.set_title("seconds per stage")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PEER_DIFFERENCES = [
    "Ingest: pandas' pyarrow CSV engine reads every field as a string and hands back lines with the wrong number of "
    "fields (bad_field_count) and empty lines (blank_line); there is no byte-level check for bad UTF-8 "
    "(bad_encoding) or unbalanced quotes (bad_quoting), no content-hash batches, no line numbers.",
    "Clean: numbers are parsed with pd.to_numeric (a quantity must be integral and fit in 32 bits, a price finite) "
    "instead of lakemine's regular expressions, so exotic spellings such as '1e3' or ' 5' are accepted; Spark date "
    "patterns are translated to strptime (which is laxer about zero padding, and reads 'yy' 69-99 as 19xx).",
    "Features: the product family (last word of the description) is computed once per distinct description rather "
    "than per row and date; everything else, including the three dates, is the same computation.",
    "FP-growth: pyfim's own rule generation (mode 'o': support of body and head) instead of rules joined from itemsets.",
    "K-means: scikit-learn's k-means++ initialisation and its tolerance (relative to the data's variance) instead of "
    "Spark's k-means|| and absolute tolerance, same k range, n_init, seed and max_iter; the silhouette is Spark's "
    "squared-Euclidean one computed in closed form with numpy (scikit-learn's silhouette_score is O(n^2)).",
    "Train: one process with all cores instead of 2 Horovod ranks of 1 thread; the same global batch, learning-rate "
    "warm-up, class weight, calibration and number of epochs (lakemine's, passed in; no early stop), but its own "
    "shuffling, no per-epoch checkpoint and no Petastorm; the baseline is scikit-learn's unregularised logistic "
    "regression; drift bins are exact quantiles instead of approxQuantile.",
    "Score: writes Parquet instead of MERGEing into a Delta table. No report stage.",
]


# --------------------------------------------------------------------------------------- main


def ensure_raw(raw: Path, customers: int, seed: int, dirty_rate: float, log: Path) -> dict:
    """Generate the raw files once; reuse them when the manifest says they are the same."""
    manifest_path = raw / "_manifest.json"
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        if (m["customers"], m["seed"], m["days"], m["dirty_rate"]) == (customers, seed, 365, dirty_rate):
            say(f"  reusing {raw} ({m['data_lines']:,} lines)")
            return {"manifest": m, "reused": True}
    shutil.rmtree(raw, ignore_errors=True)
    say(f"  generating {customers:,} customers -> {raw}")
    tracked = run_tracked([sys.executable, "-m", "lakemine", "generate", "--out", str(raw), "--customers", str(customers),
                           "--days", "365", "--seed", str(seed), "--dirty-rate", str(dirty_rate)],
                          log, ("generate",), "generate")
    m = json.loads(manifest_path.read_text())
    return {"manifest": m, "reused": False, "wall_secs": tracked["wall"],
            "peak_mib": max((r for _, r in tracked["samples"]), default=0) / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, nargs="+", default=[1_000_000, 5_000_000], help="target raw lines per size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dirty-rate", type=float, default=0.005, help="as `lakemine run`'s generated data (default 0.005)")
    ap.add_argument("--work", default=str(REPO / "bench" / "work" / "e2e"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for e2e-<date>.json/.md/.png")
    ap.add_argument("--keep-data", action="store_true", help="keep the generated raw files under --work")
    ap.add_argument("--skip-lakemine", action="store_true", help="peer only (it then early-stops on its own)")
    ap.add_argument("--skip-peer", action="store_true", help="lakemine only")
    args = ap.parse_args()

    check_peer_constants()
    started = datetime.now(timezone.utc)
    work, out = Path(args.work), Path(args.out)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    say(f"e2e: sizes {args.lines}, {args.repeat} repeat(s), load average {load}")
    results = []
    for target in args.lines:
        customers = max(20, round(target / LINES_PER_CUSTOMER))
        say(f"{target:,} lines: {customers:,} customers")
        raw = work / f"raw-c{customers}-s{args.seed}"
        gen = ensure_raw(raw, customers, args.seed, args.dirty_rate, work / "logs" / f"generate-c{customers}.log")
        lines = gen["manifest"]["data_lines"]
        runs = []
        for i in range(args.repeat):
            run: dict = {"repeat": i + 1, "loadavg": [round(x, 2) for x in os.getloadavg()]}
            tag = f"{lines}-r{i + 1}"
            epochs = None
            if not args.skip_lakemine:
                say(f"{lines:,} lines, repeat {i + 1}/{args.repeat}: lakemine run")
                run["lakemine"] = run_lakemine(raw, work / "lake", work / "logs" / f"lakemine-{tag}.log")
                epochs = run["lakemine"]["counts"]["epochs_run"]
                say(f"  lakemine: {run['lakemine']['process_wall_secs']:.1f} s, peak {run['lakemine']['overall_peak_mib']:,.0f} MiB")
            if not args.skip_peer:
                say(f"{lines:,} lines, repeat {i + 1}/{args.repeat}: peer" + (f" ({epochs} epochs)" if epochs else ""))
                run["peer"] = run_peer(raw, work / "peer", work / "logs" / f"peer-{tag}.log", epochs)
                say(f"  peer: {run['peer']['process_wall_secs']:.1f} s, peak {run['peer']['overall_peak_mib']:,.0f} MiB")
            runs.append(run)
        row = {"target_lines": target, "lines": lines, "customers": customers,
               "generate": {k: v for k, v in gen.items() if k != "manifest"} | {"injected": gen["manifest"]["injected"]},
               "runs": runs, "median": {}}
        for who in ("lakemine", "peer"):
            if who in runs[0]:
                row["median"][who] = median_run(runs, who)
        if len(row["median"]) == 2:
            lk, pe = row["median"]["lakemine"], row["median"]["peer"]
            row["ratios"] = {s: lk["stage_secs"][s] / pe["stage_secs"][s] if pe["stage_secs"][s] else None for s in STAGES}
            row["ratios"]["startup"] = lk["startup_secs"] / pe["startup_secs"] if pe["startup_secs"] else None
            row["ratios"]["stages_total"] = lk["stages_total_secs"] / pe["stages_total_secs"]
            row["ratios"]["process_wall"] = lk["process_wall_secs"] / pe["process_wall_secs"]
            row["ratios"]["peak_mib"] = lk["overall_peak_mib"] / pe["overall_peak_mib"]
        results.append(row)
        if not args.keep_data:
            shutil.rmtree(raw, ignore_errors=True)

    from importlib import metadata

    versions = {}
    for dist in ("pyspark", "delta-spark", "horovod", "petastorm", "pandas", "pyarrow", "scikit-learn", "pyfim", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    python = Path(sys.executable)
    date = started.date().isoformat()
    meta = {
        "benchmark": "lakemine run end to end vs single-node peers (pandas, pyfim, scikit-learn, torch)",
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "versions": versions,
        "command": " ".join([os.path.relpath(python, REPO) if python.is_relative_to(REPO) else python.name, *sys.argv]),
        "repeat": args.repeat, "seed": args.seed, "days": 365, "dirty_rate": args.dirty_rate,
        "lakemine": "lakemine run --input RAW --lake <fresh lake>: local[*], 4g driver (config defaults)",
        "peer": "bench/e2e_peers.py --input RAW --epochs <lakemine's epochs run>",
        "peer_differences": PEER_DIFFERENCES,
    }
    stem = out / f"e2e-{date}"
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    write_plot(Path(f"{stem}.png"), results)
    text = write_markdown(Path(f"{stem}.md"), meta, results, f"e2e-{date}.png")
    print(text)
    say(f"wrote {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
