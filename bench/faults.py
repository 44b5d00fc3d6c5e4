#!/usr/bin/env python
"""Fault injection: SIGKILL each stage's whole process group at seeded random instants, rerun
the stage, and compare every table with a run that was never killed (issue 16).

    .venv/bin/python bench/faults.py --trials 20            # every stage, 20 instants each
    .venv/bin/python bench/faults.py --trials 3 --stages clean features
    .venv/bin/python bench/faults.py --trials 20 --stages train score --merge    # added to the results
    .venv/bin/python bench/faults.py --after-each-commit --stages ingest clean --merge  # a kill after each commit

Set-up (`prepare`): generated raw exports go through every stage once, each stage a
`python -m lakemine STAGE` process; the lake is copied before and after each stage, and the
stage's wall time T (JVM start included) is measured. A trial copies the lake from before the
stage, starts the same command in a new process group, kills the group with SIGKILL after a
delay drawn uniformly from (0, T) (seeded), reruns the stage to the end and compares the lake
with the one after the never-killed run:

- every Delta table row for row (as multisets; clock columns and run ids aside), so no row is
  lost or doubled; key columns without duplicates;
- ops/runs: the stage's succeeded runs with the counts of the never-killed run (exact
  conservation), and the killed attempt recorded once by the rerun: as abandoned, or, killed
  after its sealed last commit (a rerun then has nothing to do), as done with its counts;
- the model folders: the same k-means and churn versions, the same churn weights.

Results: bench/results/faults.{json,md} (trials, kills that landed after the stage's first
commit, failures, and lines lost or doubled per stage). tests/test_faults.py runs a few trials
per stage with the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "libs"))

STAGES = ("ingest", "clean", "features", "fpgrowth", "kmeans", "train", "score")
ARGS = {
    "ingest": ["--input", "{raw}"],
    "kmeans": ["--k", "3", "--n-init", "1"],
    "train": ["--epochs", "3", "--workers", "2", "--batch-size", "64"],
}
# clock values and run ids: they differ between two runs that wrote the same rows
VOLATILE = frozenset({"_ingested_at", "recorded_at", "scored_at", "run_id"})
# columns that identify a row: no key may appear twice
KEYS = {
    "bronze/transactions": ("_batch_id", "_line"),
    "silver/transactions": ("_batch_id", "_line"),
    "gold/customer_features": ("customer_id", "as_of"),
    "gold/customer_segments": ("customer_id", "as_of"),
    "gold/customer_scores": ("customer_id", "as_of", "model_version"),
    "ops/clean_batches": ("batch_id",),
}
LINE_TABLES = ("bronze/transactions", "bronze/quarantine", "silver/transactions", "silver/quarantine")
STAGE_ENV = {"LAKEMINE_SPARK__MASTER": "local[2]", "LAKEMINE_SPARK__SHUFFLE_PARTITIONS": "2",
             "LAKEMINE_SPARK__DRIVER_MEMORY": "1g"}


def stage_argv(stage: str, lake: Path, raw: Path) -> list[str]:
    """`lakemine` arguments of one stage run on `lake`."""
    return [stage, "--lake", str(lake), *[a.format(raw=raw) for a in ARGS.get(stage, [])]]


def stage_env() -> dict:
    return {**os.environ, **STAGE_ENV, "PYTHONPATH": str(REPO / "libs")}


def generate_argv(raw: Path, customers: int, days: int, seed: int) -> list[str]:
    return ["generate", "--out", str(raw), "--customers", str(customers), "--days", str(days), "--seed", str(seed),
            "--dirty-rate", "0.02"]


def prepare(root: Path, stages: tuple[str, ...], run: Callable[[list[str]], float]) -> dict[str, float]:
    """For every stage up to the last of `stages`, the lake before it (root/before/STAGE) and
    after it (root/after/STAGE), from the raw exports under root/raw; `run(ARGV)` runs
    `lakemine ARGV` to the end and returns its wall time. Returns each stage's."""
    lake, durations = root / "lake", {}
    last = max(STAGES.index(s) for s in stages)
    for stage in STAGES[: last + 1]:
        _snapshot(lake, root / "before" / stage)
        durations[stage] = run(stage_argv(stage, lake, root / "raw"))
        _snapshot(lake, root / "after" / stage)
    return durations


def subprocess_runner(python: str) -> Callable[[list[str]], float]:
    """`run(ARGV)`: `python -m lakemine ARGV` as its own process, its wall time."""
    def run(argv: list[str], check: bool = True) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run([python, "-m", "lakemine", *argv], env=stage_env(), capture_output=True, text=True,
                              timeout=1800)
        if check and proc.returncode != 0:
            raise RuntimeError(f"lakemine {' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        return time.perf_counter() - t0

    return run


def _snapshot(lake: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    if lake.exists():
        shutil.copytree(lake, dest)


def kill_at(argv: list[str], python: str, delay: float) -> bool:
    """Start `python -m lakemine ARGV` in a new process group and SIGKILL the whole group
    after `delay` seconds; False when it finished first."""
    proc = subprocess.Popen([python, "-m", "lakemine", *argv], env=stage_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _reap_group(proc.pid)
        return True


def kill_after_commit(argv: list[str], python: str, lake: Path, n: int, timeout: float = 1800) -> bool:
    """Start `python -m lakemine ARGV` in a new process group and SIGKILL the whole group as
    soon as the `n`-th new Delta commit appears in `lake` (polled every 2 ms, so within a few
    milliseconds of it); False when it finished first."""
    base = commits(lake)
    proc = subprocess.Popen([python, "-m", "lakemine", *argv], env=stage_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if commits(lake) - base >= n or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _reap_group(proc.pid)
            return True
        time.sleep(0.002)
    return False


def _reap_group(pgid: int, wait_s: float = 10.0) -> None:
    """Wait until no process of group `pgid` is left (Spark's Python workers, Horovod ranks)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def commits(lake: Path) -> int:
    """Delta commits in every table of `lake` (files in the _delta_log folders)."""
    return sum(1 for _ in lake.glob("*/*/_delta_log/*.json")) if lake.exists() else 0


def compare(spark, reference: Path, trial: Path, stage: str) -> tuple[list[str], dict[str, int]]:
    """Differences between the never-killed lake and the trial's ([] when none), and for the
    line tables the rows the trial has more (+, doubled) or fewer (-, lost) per table."""
    import pyspark.sql.functions as F

    from lakemine.core import storage
    from lakemine.io.lake import Lake

    ref, got = Lake.at(spark, str(reference)), Lake.at(spark, str(trial))
    problems: list[str] = []
    lines: dict[str, int] = {}
    tables = sorted(set(ref.tables()) | set(got.tables()))
    for table in tables:
        if not (ref.exists(table) and got.exists(table)):
            problems.append(f"{table}: only in the {'reference' if ref.exists(table) else 'trial'}")
            continue
        if _same_log(reference / table, trial / table):
            continue  # neither run wrote it: both still hold the copy from before the stage
        a, b = ref.read_table(table), got.read_table(table)
        if table == "ops/runs":
            problems += _compare_runs(a, b, stage)
            continue
        cols = [_comparable(a.schema[c].dataType, c) for c in a.columns if c not in VOLATILE]
        a, b = a.select(*cols), b.select(*cols)
        (n_a, h_a), (n_b, h_b) = _fingerprint(a), _fingerprint(b)
        if table in LINE_TABLES:
            lines[table] = n_b - n_a
        if (n_a, h_a) != (n_b, h_b):
            missing, extra = a.exceptAll(b).count(), b.exceptAll(a).count()
            problems.append(f"{table}: {n_b} rows vs {n_a} never killed ({missing} missing, {extra} extra)")
        key = KEYS.get(table)
        if key and b.groupBy(*key).count().where(F.col("count") > 1).limit(1).count():
            problems.append(f"{table}: duplicate keys {key}")
    for kind in ("kmeans", "churn"):
        want = _models(storage, reference, kind)
        have = _models(storage, trial, kind)
        if want != have:
            problems.append(f"models/{kind}: versions {sorted(have)} vs {sorted(want)} never killed")
    return problems, lines


def _same_log(a: Path, b: Path) -> bool:
    """Whether two copies of a table have the same commits, byte for byte."""
    logs = [sorted(p.name for p in (t / "_delta_log").glob("*.json")) for t in (a, b)]
    return logs[0] == logs[1] and all((a / "_delta_log" / n).read_bytes() == (b / "_delta_log" / n).read_bytes()
                                      for n in logs[0])


def _fingerprint(df) -> tuple[int, int]:
    """(rows, sum of the rows' 31-bit hashes): equal for equal multisets of rows, one job."""
    import pyspark.sql.functions as F

    row = df.agg(F.count(F.lit(1)).alias("n"), F.sum(F.pmod(F.xxhash64(*df.columns), F.lit(2**31))).alias("h")).first()
    return int(row["n"]), int(row["h"] or 0)


def _comparable(kind, name: str):
    """A column set operations can compare: a map as its entries sorted by key, a double to 9
    decimals (a sum's last bits follow the order Spark adds its partial sums in)."""
    import pyspark.sql.functions as F
    from pyspark.sql.types import DoubleType, MapType

    if isinstance(kind, MapType):
        entries = F.array_sort(F.map_entries(F.col(name)))
        if isinstance(kind.valueType, DoubleType):
            entries = F.transform(entries, lambda e: F.struct(e["key"].alias("key"), F.round(e["value"], 9).alias("value")))
        return entries.alias(name)
    if isinstance(kind, DoubleType):
        return F.round(F.col(name), 9).alias(name)
    return F.col(name)


def _models(storage, lake: Path, kind: str) -> dict[str, str | None]:
    """Complete model versions of `kind` -> their weights' digest (churn) or None."""
    root = f"{lake}/models/{kind}"
    found = {}
    for name in storage.list_dirs(root):
        meta = f"{root}/{name}/{'metadata.json' if kind == 'churn' else 'lakemine.json'}"
        if storage.exists(meta):
            found[name] = storage.read_json(meta).get("weights_sha256")
    return found


def _compare_runs(a, b, stage: str) -> list[str]:
    """The stage's succeeded runs (one per date it wrote) with the never-killed run's counts
    (exact conservation); any other run of it failed, abandoned; other stages' rows as they were.
    A run whose rerun is a noop (ingest, clean, the features aggregates step) appears exactly
    as often as never killed; runs a rerun repeats (features snapshots, the later stages) may
    appear twice, the killed one having finished its writes."""
    def once(r) -> bool:
        return stage in ("ingest", "clean") or '"step": "aggregates"' in (r["params"] or "")

    def done(rows) -> list[tuple]:
        rows = [r for r in rows if r["stage"] == stage and r["status"] == "succeeded"]
        counts = [(str(r["as_of"]), r["rows_in"], r["rows_out"], r["rows_quarantined"], r["rows_duplicate"], once(r))
                  for r in rows]
        return sorted([c for c in counts if c[-1]] + sorted(set(c for c in counts if not c[-1])))

    got = [r for r in b.collect() if r["stage"] == stage]
    problems = []
    if done(got) != done(a.collect()):
        problems.append(f"ops/runs: succeeded {stage} runs (as_of, in, out, quarantined, duplicates, once) {done(got)}, "
                        f"never killed {done(a.collect())}")
    others = [r for r in got if r["status"] not in ("succeeded", "noop", "skipped")]
    if any(r["status"] != "failed" or not (r["message"] or "").startswith("abandoned") for r in others):
        problems.append(f"ops/runs: unexpected {stage} rows {[(r['status'], r['message']) for r in others]}")
    other_stages = sorted((r["stage"], r["status"]) for r in b.collect() if r["stage"] != stage)
    if other_stages != sorted((r["stage"], r["status"]) for r in a.collect() if r["stage"] != stage):
        problems.append("ops/runs: the other stages' rows changed")
    return problems


def left_attempts(lake: Path) -> list[dict]:
    """The attempt markers a killed run left, each with whether its sealed last commit (if it
    sealed one) is in its table, found by the tag in the Delta log files themselves."""
    found = []
    for path in sorted((lake / "_attempts").glob("*.json")) if lake.exists() else []:
        if path.name.startswith("."):
            continue
        marker = json.loads(path.read_text())
        sealed = marker.get("sealed")
        logs = (lake / sealed["table"] / "_delta_log").glob("*.json") if sealed else []
        found.append({"run_id": marker["run_id"], "started_at": marker["started_at"],
                      "sealed_run_id": sealed["run"]["run_id"] if sealed else None,
                      "committed": any(sealed["tag"] in log.read_text() for log in logs)})
    return found


def _check_attempts(left: list[dict], before: list, after: list) -> tuple[list[str], int]:
    """Each attempt the killed run left is recorded once by the rerun: as done (its sealed
    last commit made) or as abandoned (not made); not again when it had written its own row.
    Returns the problems and the attempts recorded as done."""
    from datetime import datetime

    from lakemine.io.runs import RECORDED_LATE

    def late(r) -> bool:
        return RECORDED_LATE in (r["message"] or "")

    def abandoned(r) -> bool:
        return r["status"] == "failed" and (r["message"] or "").startswith("abandoned")

    problems, done = [], 0
    expected = [m for m in left if not any(
        r["run_id"] == m["run_id"] or r["started_at"] == datetime.fromisoformat(m["started_at"]).replace(tzinfo=None)
        for r in before)]  # else killed after writing its row, before removing its marker
    for m in expected:
        if m["committed"]:
            rows = [r for r in after if r["run_id"] == m["sealed_run_id"] and late(r)]
            ok = len(rows) == 1 and rows[0]["status"] in ("succeeded", "noop")
            done += 1
        else:
            rows = [r for r in after if r["run_id"] == m["run_id"]]
            ok = len(rows) == 1 and abandoned(rows[0])
        if not ok:
            want = "done, recorded late" if m["committed"] else "abandoned"
            problems.append(f"ops/runs: the killed attempt {m['run_id']} should be recorded once as {want}, "
                            f"found {[(r['status'], r['message']) for r in rows]}")
    new_late = sum(map(late, after)) - sum(map(late, before))
    new_abandoned = sum(map(abandoned, after)) - sum(map(abandoned, before))
    if new_late + new_abandoned != len(expected):
        problems.append(f"ops/runs: the rerun recorded {new_abandoned} abandoned and {new_late} late attempts, "
                        f"{len(expected)} expected in all")
    return problems, done


def trial(spark, root: Path, python: str, stage: str, number: int, delay: float | None,
          rerun: Callable[[list[str]], float], after_commit: int | None = None) -> dict:
    """One kill: copy the lake from before `stage`, kill the stage after `delay` s (or right
    after its `after_commit`-th commit), rerun it with `rerun(ARGV)`, compare with the
    never-killed lake."""
    from lakemine.io.lake import Lake

    lake = root / "trials" / f"{stage}-{number}"
    _snapshot(root / "before" / stage, lake)
    before = commits(lake)
    argv = stage_argv(stage, lake, root / "raw")
    killed = kill_at(argv, python, delay) if after_commit is None else kill_after_commit(argv, python, lake, after_commit)
    committed = commits(lake) - before
    left = left_attempts(lake)
    runs_before = _runs(spark, Lake, lake)
    rerun(stage_argv(stage, lake, root / "raw"))
    problems, lines = compare(spark, root / "after" / stage, lake, stage)
    attempt_problems, done = _check_attempts(left, runs_before, _runs(spark, Lake, lake))
    result = {"stage": stage, "trial": number, "delay_s": None if delay is None else round(delay, 2),
              "after_commit": after_commit, "killed": killed,
              "commits_before_kill": committed, "marker_left": bool(left), "recorded_done": done,
              "problems": problems + attempt_problems, "lines": lines}
    shutil.rmtree(lake, ignore_errors=True)
    return result


def _runs(spark, lake_class, lake: Path) -> list:
    """Every ops/runs row of `lake` ([] before the table exists)."""
    at = lake_class.at(spark, str(lake))
    return at.read_table("ops/runs").collect() if at.exists("ops/runs") else []


def delays(stage: str, duration: float, n: int, seed: int) -> list[float]:
    """`n` kill instants drawn uniformly from (0, duration), seeded per stage."""
    rng = random.Random(f"{seed}-{stage}")
    return sorted(rng.uniform(0.05 * duration, duration) for _ in range(n))


def label(trial: dict) -> str:
    """A summary row: the stage's random instants, or its kills right after each commit."""
    return trial["stage"] + (", after each commit" if trial.get("after_commit") else "")


def summarize(results: list[dict], durations: dict[str, float]) -> dict[str, dict]:
    table = {}
    for row in dict.fromkeys(map(label, results)):
        rs = [r for r in results if label(r) == row]
        stage = rs[0]["stage"]
        table[row] = {
            "stage_s": round(durations[stage], 1), "trials": len(rs), "killed": sum(r["killed"] for r in rs),
            "killed_after_a_commit": sum(r["killed"] and r["commits_before_kill"] > 0 for r in rs),
            "abandoned_runs_recorded": sum(r["marker_left"] for r in rs) - sum(r.get("recorded_done", 0) for r in rs),
            "completed_runs_recorded": sum(r.get("recorded_done", 0) for r in rs),
            "failures": sum(bool(r["problems"]) for r in rs),
            "lines_lost": -sum(min(0, v) for r in rs for v in r["lines"].values()),
            "lines_doubled": sum(max(0, v) for r in rs for v in r["lines"].values()),
        }
    return table


def markdown(summary: dict[str, dict], meta: dict) -> str:
    out = [f"# Fault injection: SIGKILL at random instants, rerun, compare ({meta['date']})", "",
           f"Data: generated, {meta['customers']} customers x {meta['days']} days (seed {meta['seed']}); "
           f"{meta['trials']} seeded kill instants per stage, uniform over (0.05 T, T), T the stage's "
           "never-killed wall time as its own process (JVM start included). "
           f"Command: `{meta['command']}`. Total {meta['total_s'] / 60:.0f} min.", "",
           "| stage | T (s) | trials | killed before the end | killed after its first commit | abandoned runs recorded "
           "| killed after its last commit, recorded done | failures | lines lost | lines doubled |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for stage, s in summary.items():
        out.append(f"| {stage} | {s['stage_s']} | {s['trials']} | {s['killed']} | {s['killed_after_a_commit']} | "
                   f"{s['abandoned_runs_recorded']} | {s.get('completed_runs_recorded', 0)} | {s['failures']} | "
                   f"{s['lines_lost']} | {s['lines_doubled']} |")
    out += ["", "Rows marked *after each commit* (`--after-each-commit`): one kill right after each commit the "
            "stage's never-killed run makes (the lake's Delta logs polled every 2 ms), so every window between a "
            "commit and the next step is hit, the one before the run's own ops/runs row included.", "",
            "A failure is any difference from the never-killed lake (see bench/faults.py); lines lost and "
            "doubled are the bronze, silver and quarantine rows the killed-and-rerun lake has fewer or more."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="kill instants per stage (default 20)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--customers", type=int, default=150)
    ap.add_argument("--days", type=int, default=220, help="days of data; train needs more than the churn horizon (90)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--work", default=str(REPO / "bench" / "work" / "faults"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "faults"))
    ap.add_argument("--after-each-commit", action="store_true",
                    help="instead of --trials random instants, kill each stage right after each of the commits its "
                         "never-killed run makes, one trial per commit (the windows between a commit and the next "
                         "step, which random instants seldom hit)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the trials of other stages already in <out>.json (same data and seed): the stages "
                         "can be run in parts, e.g. --stages train score --merge")
    args = ap.parse_args(argv)
    from datetime import date

    from lakemine.core.config import load_config
    from lakemine.io.spark import session

    root = Path(args.work)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    python = sys.executable
    t0 = time.perf_counter()
    print(f"faults: preparing {args.customers} customers x {args.days} days through every stage ...", flush=True)
    runner = subprocess_runner(python)
    runner(generate_argv(root / "raw", args.customers, args.days, args.seed))
    durations = prepare(root, tuple(args.stages), runner)
    print("faults: never-killed stage times " + ", ".join(f"{s} {t:.1f} s" for s, t in durations.items()), flush=True)
    spark = session(load_config(None, env=STAGE_ENV))
    results, earlier = [], {"trials": [], "durations": {}, "commands": [], "total_s": 0.0}
    if args.merge and Path(args.out + ".json").exists():
        kept = json.loads(Path(args.out + ".json").read_text())
        same = {k: kept["meta"][k] for k in ("customers", "days", "seed", "trials")}
        if same != {"customers": args.customers, "days": args.days, "seed": args.seed, "trials": args.trials}:
            raise SystemExit(f"--merge: {args.out}.json was run with {same}; run these stages with the same")
        earlier = {"trials": [t for t in kept["trials"]
                              if t["stage"] not in args.stages or bool(t.get("after_commit")) != args.after_each_commit],
                   "durations": {s: t for s, t in kept["durations"].items()
                                 if s not in args.stages or args.after_each_commit},
                   "commands": kept["meta"].get("commands", [kept["meta"]["command"]]),
                   "total_s": kept["meta"]["total_s"]}
    command = "bench/faults.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for stage in args.stages:
        if args.after_each_commit:  # one kill right after each commit the never-killed run made
            made = commits(root / "after" / stage) - commits(root / "before" / stage)
            plan = [(None, n) for n in range(1, made + 1)]
        else:
            plan = [(delay, None) for delay in delays(stage, durations[stage], args.trials, args.seed)]
        for i, (delay, after) in enumerate(plan):
            r = trial(spark, root, python, stage, i, delay, runner, after_commit=after)
            results.append(r)
            status = "ok" if not r["problems"] else "FAILED: " + "; ".join(r["problems"])
            when = f"after commit {after}/{len(plan)}" if after else f"at {delay:.1f} s"
            print(f"faults: {stage} #{i + 1}/{len(plan)} kill {when} "
                  f"({'killed' if r['killed'] else 'finished first'}, {r['commits_before_kill']} commits before) {status}",
                  flush=True)
        everything = sorted(earlier["trials"] + results,
                            key=lambda t: (STAGES.index(t["stage"]), bool(t.get("after_commit")), t.get("after_commit") or 0))
        times = {**durations, **earlier["durations"]}  # a stage run earlier keeps its own T
        summary = summarize(everything, times)
        commands = [*earlier["commands"], command]
        meta = {"date": date.today().isoformat(), "customers": args.customers, "days": args.days, "seed": args.seed,
                "trials": args.trials, "command": " and ".join(commands), "commands": commands,
                "total_s": earlier["total_s"] + time.perf_counter() - t0}
        Path(args.out + ".json").write_text(json.dumps({"meta": meta, "durations": times, "summary": summary,
                                                       "trials": everything}, indent=2, default=str))
        Path(args.out + ".md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
