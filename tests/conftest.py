"""One SparkSession (local[2], UI off, 2 shuffle partitions, Delta on) for the whole run, and a
fresh lake folder per test."""

from __future__ import annotations

import os
import re
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
        # test (Horovod, GBT, Delta logs); the packaged default, not less
        "LAKEMINE_SPARK__DRIVER_MEMORY": "4g",
        "LAKEMINE_TRAIN__GBT_TREES": GBT_TREES,
        "LAKEMINE_SPARK__CONF": SPARK_CONF,
        "LAKEMINE_SPARK__JAVA_OPTIONS": JAVA_OPTIONS,
    }
    return load_config(env=env)


@pytest.fixture(scope="session")
def spark(cfg):
    from lakemine.io.spark import session

    s = session(cfg)
    # Every JVM started from here on (spark-submit and lakemine subprocesses, Airflow tasks, the
    # test cluster) runs one short job: C1-compiled code only (a trivial spark-submit took 32 s
    # of CPU with C2's compiling on the 2-core machine, 20 s without). This session's JVM,
    # started above and alive for the whole run, keeps C2.
    os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1")
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
