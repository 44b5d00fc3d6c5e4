"""Where the Delta jars, the stage entry points and the quiet log4j file are, and the
spark-submit options that use them.

Light on purpose (no pyspark import): the Airflow DAG files and `lakemine.orchestration.submit`
read it at parse time. Every location comes from configuration first, then from the checkout
the package runs from (`.jars/`, `jobs/`), then from the installed package itself, so a wheel
installed outside the repository works too.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from lakemine.core.config import Config
from lakemine.core.errors import UsageError

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# The repository root when the package runs from a checkout (libs/lakemine/...), else None.
REPO_ROOT: Path | None = PACKAGE_DIR.parents[1] if (PACKAGE_DIR.parents[1] / "jobs").is_dir() else None
# Spark's INFO chatter off, its errors still shown.
QUIET_LOG4J = Path(__file__).with_name("log4j2.properties")
# The spark-submit entry for any stage inside the installed package: `job.py STAGE [options]`.
PACKAGE_JOB = PACKAGE_DIR / "job.py"


def java_options(cfg: Config, quiet: bool = True) -> dict[str, str]:
    """spark.driver/executor.extraJavaOptions for every Spark JVM lakemine starts or submits to:
    `spark.java_options` (by default the one that lets HotSpot compile Spark's large generated
    methods), and for the driver the quiet log4j file when `quiet`. Empty options are left out."""
    options = cfg.spark.java_options.strip()
    driver = " ".join(filter(None, (options, f"-Dlog4j2.configurationFile={QUIET_LOG4J.as_uri()}" if quiet else "")))
    conf = {"spark.driver.extraJavaOptions": driver, "spark.executor.extraJavaOptions": options}
    return {k: v for k, v in conf.items() if v}


def jars_dir(cfg: Config) -> Path:
    """Folder holding the Delta jars: `spark.jars_dir`, else LAKEMINE_JARS_DIR, else the
    checkout's `.jars/` (filled by scripts/setup.sh), else `<prefix>/share/lakemine/jars`."""
    if cfg.spark.jars_dir:
        return Path(cfg.spark.jars_dir)
    if os.environ.get("LAKEMINE_JARS_DIR"):
        return Path(os.environ["LAKEMINE_JARS_DIR"])
    if REPO_ROOT is not None and (REPO_ROOT / ".jars").is_dir():
        return REPO_ROOT / ".jars"
    return Path(sys.prefix) / "share" / "lakemine" / "jars"


def delta_jars(cfg: Config) -> list[str]:
    """Paths of the Delta jars; raises UsageError saying how to get them when missing."""
    folder = jars_dir(cfg)
    jars = sorted(glob.glob(str(folder / "*.jar")))
    if not any(Path(j).name.startswith("delta-spark_") for j in jars):
        raise UsageError(
            f"Delta jars not found in {folder}: run scripts/setup.sh, set spark.jars_dir, "
            "or set spark.delta_jars: packages to resolve them through Ivy"
        )
    return jars


# Hadoop's local file system with permissions set through java.nio, not a chmod process per
# file (infra/java/lakemine/hadoop/NioLocalFileSystem.java, built by scripts/setup.sh)
LOCAL_FS_CLASS = "lakemine.hadoop.NioLocalFileSystem"


def local_fs_jar(cfg: Config) -> Path | None:
    """The jar of `LOCAL_FS_CLASS` under the jars folder's `local/` (not among the jars every
    spark-submit ships), or None when setup could not build it."""
    jar = jars_dir(cfg) / "local" / "lakemine-localfs.jar"
    return jar if jar.is_file() else None


def jobs_dir(cfg: Config) -> Path | None:
    """Folder of the per-stage `jobs/<stage>.py` shells: `orchestration.jobs_dir`, else the
    checkout's `jobs/`; None when neither exists (then `PACKAGE_JOB STAGE` is the entry)."""
    if cfg.orchestration.jobs_dir:
        return Path(cfg.orchestration.jobs_dir)
    return REPO_ROOT / "jobs" if REPO_ROOT is not None else None


def submit_args(cfg: Config) -> list[str]:
    """spark-submit arguments that put Delta on the classpath and enable its catalog, and give
    the JVMs `spark.java_options` (`java_options`)."""
    if cfg.spark.delta_jars == "packages":
        args = ["--packages", cfg.spark.delta_packages]
    else:
        args = ["--jars", ",".join(delta_jars(cfg))]
    for key, value in {**DELTA_CONF, **java_options(cfg, quiet=False)}.items():
        args += ["--conf", f"{key}={value}"]
    return args
