"""The one way to get a SparkSession: `session(cfg)`.

Only this module knows about the Delta extension and catalog, the Delta jars, shuffle
partitions, time zone and the UI.
"""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from lakemine.core.config import Config, packaged_defaults
from lakemine.orchestration.jars import DELTA_CONF, LOCAL_FS_CLASS, delta_jars, java_options, local_fs_jar

log = logging.getLogger(__name__)


def settings(cfg: Config, submitted: bool = False, quiet: bool = True) -> dict[str, str]:
    """The Spark settings lakemine asks for under `cfg`.

    Local mode: everything (master, memory, jars, lakemine's tuning for one machine). Under
    spark-submit (`submitted`) the cluster's own settings (spark-defaults.conf, --conf) stand:
    lakemine adds the Delta extension and UTC, then only what the user's lakemine config sets
    (shuffle partitions or the UI changed from the packaged defaults, and `spark.conf`).
    """
    conf: dict[str, str] = dict(DELTA_CONF)
    conf["spark.sql.session.timeZone"] = "UTC"  # every date lakemine computes is a UTC date
    shuffle = {"spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions)}
    ui = {"spark.ui.enabled": str(cfg.spark.ui).lower()}
    if submitted:
        defaults = packaged_defaults().spark
        if cfg.spark.shuffle_partitions != defaults.shuffle_partitions:
            conf.update(shuffle)
        if cfg.spark.ui != defaults.ui:
            conf.update(ui)
    else:
        conf.update({
            **shuffle, **ui,
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.adaptive.enabled": "true",
            "spark.databricks.delta.snapshotPartitions": "2",
            "spark.master": cfg.spark.master,
            "spark.driver.memory": cfg.spark.driver_memory,
            # local executors are threads of this process: their Python workers must be this
            # interpreter (with pyfim, torch...), not whatever python3 is first on PATH
            "spark.pyspark.python": sys.executable,
        })
        conf.update(java_options(cfg, quiet))
        if cfg.spark.delta_jars == "packages":
            conf["spark.jars.packages"] = cfg.spark.delta_packages
        else:
            conf["spark.jars"] = ",".join(delta_jars(cfg))
    conf.update({k: str(v) for k, v in cfg.spark.conf.items()})
    jar = local_fs_jar(cfg) if not submitted and _in_process(cfg.spark.master) else None
    if jar is not None and "spark.hadoop.fs.file.impl" not in cfg.spark.conf:
        # file:// without a chmod process per file written (the driver is the only JVM)
        conf["spark.hadoop.fs.file.impl"] = LOCAL_FS_CLASS
        conf["spark.driver.extraClassPath"] = os.pathsep.join(filter(None, (str(jar), conf.get("spark.driver.extraClassPath"))))
    return conf


def _in_process(master: str) -> bool:
    """Whether `master` runs the executors inside the driver's JVM (local, local[N], local[*])."""
    return master == "local" or master.startswith("local[")


def session(cfg: Config, submitted: bool = False, quiet: bool = True) -> SparkSession:
    """The SparkSession for `cfg`: created once per process, with `settings(cfg, ...)`.

    `submitted=True` is passed by the jobs/ entry points run through spark-submit: the
    master, memory and jars then come from the spark-submit line, the tuning from the
    cluster's settings.

    When a session already runs in this process, its SQL settings are not changed under the
    callers that share it: a session with different SQL settings (shuffle partitions, ...)
    gets its own child session on the same SparkContext, and settings that cannot change on
    a running context (master, memory, jars, UI) are logged as ignored.
    """
    conf = settings(cfg, submitted, quiet)
    if not submitted:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    running = _running()
    if running is None:
        builder = SparkSession.builder.appName(cfg.spark.app_name)
        for key, value in conf.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
    else:
        spark = _reuse(running, conf)
    spark.sparkContext.setLogLevel("ERROR" if quiet else cfg.spark.log_level)
    log.debug("spark session %s, master %s", spark.version, spark.sparkContext.master)
    return spark


def _running() -> SparkSession | None:
    """The process's first session (the one getOrCreate hands out), not the thread's active
    one: running a query makes its session active, a child session included."""
    first = getattr(SparkSession, "_instantiatedSession", None)
    if first is not None and first._sc._jsc is not None:
        return first
    return SparkSession.getActiveSession()


def _reuse(running: SparkSession, conf: dict[str, str]) -> SparkSession:
    """`running`, or a child session of it with `conf`'s SQL settings where they differ."""
    context = running.sparkContext.getConf()
    changed, ignored = {}, []
    for key, value in conf.items():
        if running.conf.isModifiable(key):
            if running.conf.get(key, None) != value:
                changed[key] = value
        elif key.startswith("spark.sql."):  # static SQL settings (extensions, catalog)
            if running.conf.get(key, None) != value:
                ignored.append(f"{key}={value} (running: {running.conf.get(key, None)})")
        elif context.get(key, None) != value and not (key.endswith("extraJavaOptions") and value in context.get(key, "")):
            ignored.append(f"{key}={value} (running: {context.get(key, None)})")
    if ignored:
        log.warning("a Spark session already runs in this process; these settings cannot change on it and are "
                    "ignored: %s", "; ".join(ignored))
    if not changed:
        return running
    child = running.newSession()
    for key, value in changed.items():
        child.conf.set(key, value)
    return child


def observing_session(spark: SparkSession) -> SparkSession:
    """A child session of `spark` with its SQL settings, for queries that use
    `DataFrame.observe`. In Spark 4.0 a session that has served an `Observation` can no longer
    be serialized (its ObservationManager is not), so every MLlib model with a training summary
    fitted in it afterwards fails to evaluate. The child takes that; `spark` stays usable."""
    child = spark.newSession()
    for key, value in spark.conf.getAll.items():
        if child.conf.isModifiable(key) and child.conf.get(key, None) != value:
            child.conf.set(key, value)
    return child


def release_free_heap(spark: SparkSession) -> int:
    """Ask the driver's JVM for a full garbage collection, after which it hands the heap it no
    longer needs back to the system; the MiB of committed heap given back.

    Called before starting memory-hungry Python processes (Horovod ranks, the search's trials):
    in local mode every stage's tasks ran in this heap, which keeps what it grew to (a 1 M-line
    run: 3.7 GiB resident while Horovod trained, 0.5 GiB after a collection).

    How much a collection gives back is the collector's choice. For this one collection the
    heap's free ratios are lowered (HotSpot's `MinHeapFreeRatio` / `MaxHeapFreeRatio`, which can
    be changed on a running JVM), then put back. The parallel collector (lakemine's default JVM
    options) gives back nothing on `System.gc()` unless the JVM also runs with
    `-XX:+UseAdaptiveSizePolicyWithSystemGC`, which the default options include."""
    jvm = spark._jvm
    runtime = jvm.java.lang.Runtime.getRuntime()
    before = runtime.totalMemory()
    restore = _lower_heap_free_ratios(jvm)
    try:
        jvm.java.lang.System.gc()
    finally:
        restore()
    freed = (before - runtime.totalMemory()) // 2**20
    log.info("driver JVM heap: %d MiB handed back to the system before the training processes start", freed)
    return freed


HEAP_FREE_RATIOS = {"MinHeapFreeRatio": 10, "MaxHeapFreeRatio": 40}  # % of the heap left free after a collection


def _lower_heap_free_ratios(jvm):
    """Set HotSpot's heap free ratios to HEAP_FREE_RATIOS; a function that puts them back. A JVM
    without HotSpot's diagnostic bean keeps its own (the function then does nothing)."""
    try:
        bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
            jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
        was = {name: bean.getVMOption(name).getValue() for name in HEAP_FREE_RATIOS}
        for name, value in HEAP_FREE_RATIOS.items():  # min first, then max: min <= max throughout
            bean.setVMOption(name, str(value))
    except Exception as e:  # noqa: BLE001 - another JVM: a plain collection
        log.debug("heap free ratios not changed: %s", e)
        return lambda: None

    def restore() -> None:
        for name in reversed(HEAP_FREE_RATIOS):  # max first, then min
            bean.setVMOption(name, was[name])
    return restore
