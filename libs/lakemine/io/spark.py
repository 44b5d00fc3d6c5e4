"""The one way to get a SparkSession: `session(cfg)`.

Only this module knows about the Delta extension and catalog, the Delta jars, shuffle
partitions, time zone and the UI.
"""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from lakemine.core.config import Config
from lakemine.orchestration.jars import DELTA_CONF, QUIET_LOG4J, delta_jars

log = logging.getLogger(__name__)


def session(cfg: Config, submitted: bool = False, quiet: bool = True) -> SparkSession:
    """The SparkSession for `cfg`, created once per process.

    `submitted=True` is passed by the jobs/ entry points run through spark-submit: the
    master, memory and jars then come from the spark-submit line, not from the config.
    """
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    conf: dict[str, str] = dict(DELTA_CONF)
    conf.update(
        {
            "spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.enabled": str(cfg.spark.ui).lower(),
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.adaptive.enabled": "true",
            "spark.databricks.delta.snapshotPartitions": "2",
        }
    )
    if not submitted:
        builder = builder.master(cfg.spark.master)
        conf["spark.driver.memory"] = cfg.spark.driver_memory
        # local executors are threads of this process: their Python workers must be this
        # interpreter (with pyfim, torch...), not whatever python3 is first on PATH
        conf["spark.pyspark.python"] = sys.executable
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if quiet:
            conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={QUIET_LOG4J.as_uri()}"
        if cfg.spark.delta_jars == "packages":
            conf["spark.jars.packages"] = cfg.spark.delta_packages
        else:
            conf["spark.jars"] = ",".join(delta_jars(cfg))
    conf.update(cfg.spark.conf)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR" if quiet else cfg.spark.log_level)
    log.debug("spark session %s, master %s", spark.version, spark.sparkContext.master)
    return spark
