"""One SparkSession (local[2], UI off, 2 shuffle partitions, Delta on) for the whole run, and a
fresh lake folder per test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import date

os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
# the gradient-boosted-trees baseline with 10 trees, not the packaged 50, in every training the
# suite starts: in-process, `lakemine` subprocesses, spark-submit jobs and Airflow tasks alike
GBT_TREES = os.environ.setdefault("LAKEMINE_TRAIN__GBT_TREES", "10")
# Spark settings for every session the suite starts, in-process and in subprocesses alike:
# - the one test driver lives through every test: its status store keeps few finished jobs
#   and queries (the defaults keep a thousand of each, plans included);
# - expressions are evaluated, not compiled: on the tests' few rows, generating and compiling
#   Java code for each new query costs more than it saves (ingest and clean of a small file
#   ~30% faster). lakemine itself keeps Spark's code generation.
SPARK_CONF = os.environ.setdefault(
    "LAKEMINE_SPARK__CONF",
    "{spark.ui.retainedJobs: 50, spark.ui.retainedStages: 100, spark.sql.ui.retainedExecutions: 20, "
    "spark.ui.retainedTasks: 10000, spark.sql.codegen.wholeStage: false, spark.sql.codegen.factoryMode: NO_CODEGEN, "
    "spark.cleaner.periodicGC.interval: 3min}")
# - no extra JVM options (`spark.java_options`; lakemine's default lets HotSpot compile methods
#   over 8,000 bytes, for Spark's generated code of wide rows at scale): with expressions
#   evaluated, there is no such code here. Of the two suite runs with the option in the test
#   driver, one ran slower and one ended in an OutOfMemoryError of its 4 GiB heap (a task
#   result lost, then a hang). test_lake checks that the option reaches what lakemine starts,
#   and that this machine's java takes it.
JAVA_OPTIONS = os.environ.setdefault("LAKEMINE_SPARK__JAVA_OPTIONS", '""')
from pathlib import Path

import pytest

from lakemine.core.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
# another retailer's export: household, basket, product, quantity, line sales value, local time, store
HOUSEHOLD_PROFILE = """
sources:
  household:
    columns: {invoice: BASKET_ID, item: PRODUCT_ID, quantity: QUANTITY, line_total: SALES_VALUE,
              timestamp: TRANS_TIMESTAMP, customer: household_key, country: STORE_ID}
    cancellation: negative_quantity
    timezone: Europe/London
"""


@pytest.fixture(scope="session")
def cfg() -> Config:
    env = {
        "LAKEMINE_SPARK__MASTER": "local[2]",
        "LAKEMINE_SPARK__SHUFFLE_PARTITIONS": "2",
        # local mode: the tasks run in the driver's heap, and the session lives through every
        # test (Horovod, GBT, Delta logs): 6 GiB, not the packaged 4. Twice CI's run went wrong
        # in `recommend` with 4 GiB, about 13 and 40 minutes in: once an OutOfMemoryError, once a
        # job waiting for ever (the watchdog below says why, should it recur). Only this
        # process's session reads it: subprocesses and spark-submit jobs get the packaged 4g.
        "LAKEMINE_SPARK__DRIVER_MEMORY": "6g",
        "LAKEMINE_TRAIN__GBT_TREES": GBT_TREES,
        "LAKEMINE_SPARK__CONF": SPARK_CONF,
        "LAKEMINE_SPARK__JAVA_OPTIONS": JAVA_OPTIONS,
    }
    return load_config(env=env)


@pytest.fixture(scope="session")
def spark(cfg):
    import dataclasses

    from lakemine.io.spark import session

    # this driver alone logs its collections (the watchdog below quotes the log's end): a file
    # per run, the newest few kept. `cfg`'s options are part of these, so `session(cfg)` finds
    # this session the same.
    DIAGNOSTICS.mkdir(parents=True, exist_ok=True)
    for old in sorted(DIAGNOSTICS.glob("driver-gc-*.log"))[:-3]:
        old.unlink()
    GC_LOG.append(DIAGNOSTICS / f"driver-gc-{time.strftime('%Y%m%dT%H%M%S')}.log")
    logged = f"{cfg.spark.java_options} -Xlog:gc:file={GC_LOG[0]}:uptime,time".strip()
    s = session(dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark, java_options=logged)))
    # Every JVM started from here on (spark-submit and lakemine subprocesses, Airflow tasks, the
    # test cluster) runs one short job: C1-compiled code only (a trivial spark-submit took 32 s
    # of CPU with C2's compiling on the 2-core machine, 20 s without). This session's JVM,
    # started above and alive for the whole run, keeps C2.
    os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1")
    DRIVER_PID.append(int(s.sparkContext._jvm.java.lang.ProcessHandle.current().pid()))
    yield s
    DRIVER_JVM.extend(_jvm_memory(s))
    s.stop()


# the driver JVM's memory as the suite ends, for the terminal summary: twice this suite's test
# driver has run out of heap in test_recommend, 40-odd minutes in (once a task result lost and
# the job waiting for it for ever, once the JVM gone and every later test failing)
DRIVER_JVM: list[str] = []
# the most the old generation held after a collection, and the test after which it was seen
OLD_GEN_HIGH: list = [0, None]


@pytest.fixture(autouse=True)
def _drop_cached_tables(request):
    """After each test, drop what the shared session caches for the test's tables: Delta keeps
    every table's log and state (its snapshot, persisted as an RDD) for an hour after last use,
    and DataFrames cached and not unpersisted stay until cleared. Each test writes its own lake,
    so these grow with the suite: four test files left 206 MiB live in the heap, 123 MiB with
    this (after a full collection); the whole suite, 178 MiB with it. A test that reads a shared
    lake again reloads its log."""
    yield
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        return
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.catalog.clearCache()
    sc._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()
    for pool in sc._jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans():
        after = pool.getCollectionUsage()
        if after is not None and "Old" in pool.getName() and after.getUsed() > OLD_GEN_HIGH[0]:
            OLD_GEN_HIGH[:] = [after.getUsed(), request.node.nodeid]


# A test (its fixtures included) still running after this many seconds is stuck: the slowest
# takes about 3 minutes. Twice in CI a job of the test driver waited for ever (once after an
# OutOfMemoryError lost a task's result), and the run went past CI's 90 minutes with no word of
# why. The watchdog writes the driver JVM's heap, collector counts and thread stacks to a file,
# prints where and the stuck tasks' top frames, and cancels the session's jobs: the test fails
# with Spark's "cancelled" and the suite goes on.
STUCK_AFTER_S = float(os.environ.get("LAKEMINE_TEST_STUCK_AFTER_S", "600"))
DIAGNOSTICS = Path(tempfile.gettempdir()) / "lakemine-test-diagnostics"
DRIVER_PID: list[int] = []
GC_LOG: list[Path] = []
STUCK: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    timer = threading.Timer(STUCK_AFTER_S, _on_stuck, args=(item.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _on_stuck(nodeid: str, into: list[str] | None = None) -> None:
    """The watchdog's work for the test `nodeid`; its summary lines go to `into` (default: the
    run's summary) and stderr."""
    lines = [f"{nodeid}: still running after {STUCK_AFTER_S:,.0f} s"]
    if DRIVER_PID:
        pid = str(DRIVER_PID[0])
        DIAGNOSTICS.mkdir(parents=True, exist_ok=True)
        path = DIAGNOSTICS / f"{time.strftime('%Y%m%dT%H%M%S')}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', nodeid)[-80:]}.txt"
        texts = {}
        for what, cmd in (("heap", ["jcmd", pid, "GC.heap_info"]), ("collectors", ["jstat", "-gcutil", pid]),
                          ("threads", ["jcmd", pid, "Thread.print"])):
            try:
                texts[what] = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
            except (OSError, subprocess.SubprocessError) as e:
                texts[what] = f"{cmd[0]}: {e}"
        texts.update(_python_stacks(int(pid)))
        path.write_text("".join(f"===== {what}\n{text}\n" for what, text in texts.items()))
        lines.append(f"  the driver JVM's heap, collectors and thread stacks: {path}")
        lines += [f"  {line}" for line in texts["heap"].splitlines() if "total" in line or "garbage-first" in line.lower()]
        lines += [f"  {line}" for line in texts["collectors"].splitlines()]
        if GC_LOG and GC_LOG[0].exists():
            lines += [f"  {line}" for line in GC_LOG[0].read_text().splitlines()[-8:]]
        lines += [f"  {line}" for line in _task_frames(texts["threads"])]
        for what, text in texts.items():
            frames = [line.strip() for line in text.splitlines() if line.startswith("    ")]
            if what.startswith("python") and frames:  # py-spy: each thread's innermost frame first
                lines += [f"  {what}"] + [f"    {frame}" for frame in frames[:4]]
    try:
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is not None:
            sc.cancelAllJobs()
            lines.append("  cancelled the session's jobs")
    except Exception as e:  # the JVM may be gone: say so, the test fails either way
        lines.append(f"  could not cancel the session's jobs: {e}")
    (STUCK if into is None else into).extend(lines)
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def _python_stacks(jvm_pid: int) -> dict[str, str]:
    """`py-spy dump` of each Python process the driver JVM started (Spark's Python daemon and
    workers: pandas and Arrow functions run there), keyed "python PID COMMAND"."""
    import shutil

    import psutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = {}
    try:
        children = psutil.Process(jvm_pid).children(recursive=True)
    except psutil.Error:
        return out
    for child in children:
        try:
            command = " ".join(child.cmdline())[:120]
            if "python" not in command:
                continue
            dump = subprocess.run([spy, "dump", "--pid", str(child.pid)], capture_output=True, text=True, timeout=60)
            out[f"python {child.pid} {command}"] = dump.stdout + dump.stderr
        except (OSError, subprocess.SubprocessError, psutil.Error) as e:
            out[f"python {child.pid}"] = f"py-spy: {e}"
    return out


def _task_frames(threads: str, frames: int = 6) -> list[str]:
    """The first frames of each thread that runs or fetches a task, from `jcmd Thread.print`."""
    out = []
    for block in threads.split("\n\n"):
        head = block.lstrip().splitlines()[0] if block.strip() else ""
        if "Executor task launch" in head or "task-result-getter" in head or "dag-scheduler" in head:
            body = [line.strip() for line in block.strip().splitlines()[1:] if line.strip().startswith(("at ", "java.lang.Thread.State"))]
            out += [head.split(" #")[0]] + [f"    {line}" for line in body[:frames]]
    return out


def _jvm_memory(s) -> list[str]:
    factory = s.sparkContext._jvm.java.lang.management.ManagementFactory
    heap = factory.getMemoryMXBean().getHeapMemoryUsage()
    lines = [f"heap {heap.getUsed() / 2**20:,.0f} MiB used of {heap.getMax() / 2**20:,.0f} MiB"]
    for pool in factory.getMemoryPoolMXBeans():
        after = pool.getCollectionUsage()
        if after is not None and "Old" in pool.getName():
            lines.append(f"{pool.getName()}: {after.getUsed() / 2**20:,.0f} MiB after the last collection, "
                         f"peak {pool.getPeakUsage().getUsed() / 2**20:,.0f} MiB")
    for gc in factory.getGarbageCollectorMXBeans():
        lines.append(f"{gc.getName()}: {gc.getCollectionCount():,} collections, {gc.getCollectionTime() / 1000:,.1f} s")
    return lines


def pytest_terminal_summary(terminalreporter):
    if STUCK:
        terminalreporter.write_sep("-", f"tests stuck past {STUCK_AFTER_S:,.0f} s")
        for line in STUCK:
            terminalreporter.write_line(line)
    if DRIVER_JVM:
        terminalreporter.write_sep("-", "the suite's Spark driver JVM at the end")
        for line in DRIVER_JVM:
            terminalreporter.write_line(line)
        if OLD_GEN_HIGH[1]:
            terminalreporter.write_line(f"old generation after a collection, at most {OLD_GEN_HIGH[0] / 2**20:,.0f} MiB "
                                        f"(seen after {OLD_GEN_HIGH[1]})")


@pytest.fixture
def lake(spark, tmp_path):
    from lakemine.io.lake import Lake

    return Lake.at(spark, str(tmp_path / "lake"))


@pytest.fixture
def lake_cfg(cfg, lake) -> Config:
    return cfg.with_lake(lake.root)


def write_lines(path: Path, lines: list[str], bom: bool = False, newline: str = "\n") -> Path:
    """Write a small raw CSV file exactly as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = newline.join(lines) + newline
    raw = data.encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
    return path


@pytest.fixture
def venv_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def gold_lake(spark, cfg, tmp_path_factory):
    """Generated data (400 customers, a year) through ingest, clean and features, once per run.

    Returns (lake, cfg, truth DataFrame of planted groups, manifest). Tests must not write to it.
    """
    from lakemine.io.lake import Lake
    from lakemine.stages.generate import GenerateParams, generate

    root = tmp_path_factory.mktemp("gold")
    manifest = generate(spark, str(root / "raw"), GenerateParams.from_config(cfg, customers=400, days=365, seed=3))
    lake = Lake.at(spark, str(root / "lake"))
    lake_cfg = cfg.with_lake(lake.root)
    build_silver(lake, lake_cfg, str(root / "raw"))
    run_features(lake, lake_cfg)
    truth = spark.read.parquet(str(root / "raw" / "_truth" / "customers"))
    return lake, lake_cfg, truth, manifest


@pytest.fixture(scope="session")
def learn_lake(spark, cfg, tmp_path_factory):
    """Generated data (600 customers, a year) with feature snapshots 150, 120 and 90 days before
    the end (complete churn labels) and at the end, and a k-means model; once per run.

    Returns (lake, cfg). Tests that write must work on `copy_lake(...)`.
    """
    from datetime import timedelta

    from lakemine.io.lake import Lake
    from lakemine.mining import kmeans
    from lakemine.stages.features import latest_date
    from lakemine.stages.generate import GenerateParams, generate

    root = tmp_path_factory.mktemp("learn")
    generate(spark, str(root / "raw"), GenerateParams.from_config(cfg, customers=600, days=365, seed=11))
    lake = Lake.at(spark, str(root / "lake"))
    lake_cfg = cfg.with_lake(lake.root)
    build_silver(lake, lake_cfg, str(root / "raw"))
    end = latest_date(lake)
    for days in (150, 120, 90, 0):
        run_features(lake, lake_cfg, end - timedelta(days=days))
    kmeans.run(lake, lake_cfg, kmeans.KMeansParams.from_config(lake_cfg, k=4, n_init=2, as_of=end))
    return lake, lake_cfg


def build_silver(lake, cfg, raw: str) -> None:
    """Ingest `raw` and clean it: bronze and silver in `lake`."""
    ingest_files(lake, cfg, raw)
    clean_lake(lake, cfg)


def ingest_files(lake, cfg, path: str, as_of=None, source=None):
    """The ingest stage on `path`; its Run (`.result`: files, new batches, skipped files)."""
    from lakemine.stages import ingest

    return ingest.run(lake, cfg, ingest.IngestParams.from_config(cfg, input=path, as_of=as_of, source=source))


def with_profiles(cfg, tmp_path: Path, text: str):
    """`cfg` plus the source profiles of the YAML `text` (a `sources:` section), as --config gives them."""
    import dataclasses

    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    return dataclasses.replace(cfg, sources=load_config(str(path), env={}).sources)


def clean_lake(lake, cfg, as_of=None):
    """The clean stage; its Run."""
    from lakemine.stages import clean

    return clean.run(lake, cfg, clean.CleanParams.from_config(cfg, as_of=as_of))


def run_features(lake, cfg, as_of=None, **overrides):
    """The features stage for one date only (no training snapshots); its Run."""
    from lakemine.stages import features

    p = features.FeatureParams.from_config(cfg, as_of=as_of, training_snapshots=0, **overrides)
    return features.run(lake, cfg, p)


def copy_lake(lake, cfg, dest: Path):
    """A writable copy of a session lake (its model folders keep pointing at the original)."""
    import shutil

    from lakemine.io.lake import Lake

    shutil.copytree(lake.root, dest)
    copy = Lake.at(lake.spark, str(dest))
    return copy, cfg.with_lake(copy.root)


@pytest.fixture(scope="session")
def trained_lake(learn_lake, tmp_path_factory):
    """A copy of learn_lake with a churn model trained by 2 Horovod processes.

    Returns (lake, cfg, run, metadata). Tests that write must copy it again.
    """
    from lakemine.learning import train

    lake, cfg = copy_lake(*learn_lake, tmp_path_factory.mktemp("trained") / "lake")
    run = train.run(lake, cfg, train.TrainParams.from_config(cfg, backend="horovod", workers=2, epochs=10, batch_size=64,
                                                             patience=3))
    return lake, cfg, run, run.result


@pytest.fixture(scope="session")
def scored_lake(trained_lake, tmp_path_factory):
    """A copy of the trained lake with rules, recommendations, forecasts and scores for its
    latest date. Returns (lake, cfg, as_of, model metadata). Tests that write must copy it."""
    import pyspark.sql.functions as F

    from lakemine.io import schemas
    from lakemine.learning import forecast, score
    from lakemine.mining import fpgrowth, recommend

    lake, cfg = copy_lake(*trained_lake[:2], tmp_path_factory.mktemp("scored") / "lake")
    as_of = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES).agg(F.max("as_of")).first()[0]
    fpgrowth.run(lake, cfg, fpgrowth.MiningParams.from_config(cfg, min_support=0.02, as_of=as_of))
    recommend.run(lake, cfg, recommend.RecommendParams.from_config(cfg, as_of=as_of))
    forecast.run(lake, cfg, forecast.ForecastParams.from_config(cfg, as_of=as_of, max_items=4, backtest_weeks=4))
    score.run(lake, cfg, score.ScoreParams.from_config(cfg, as_of=as_of))
    return lake, cfg, as_of, trained_lake[3]


# generated exports split into one file per day, landed one at a time (incremental runs)
DATE = re.compile(r",(\d{1,2})/(\d{1,2})/(\d{4}) ")


def daily_lines(raw_dir) -> tuple[str, dict[date, list[str]]]:
    """(header, {day: lines}) of a generated export; a line without a readable date stays with
    the line before it."""
    (path,) = sorted(raw_dir.glob("*.csv"))
    header, *lines = path.read_text().splitlines()
    days: dict[date, list[str]] = defaultdict(list)
    day = None
    for line in lines:
        m = DATE.search(line)
        try:
            day = date(int(m[3]), int(m[1]), int(m[2])) if m else day
        except ValueError:  # a planted malformed date
            pass
        days[day or date(1990, 1, 1)].append(line)
    days.pop(date(1990, 1, 1), None)
    return header, dict(sorted(days.items()))


def land(folder, name: str, header: str, lines: list[str]) -> None:
    """Write a file and give it a modification time later than anything landed before."""
    path = folder / name
    path.write_text("\n".join([header, *lines]) + "\n")
    stamp = time.time() + land.count
    land.count += 10
    os.utime(path, (stamp, stamp))


land.count = 0
