"""Where the Delta jars are and the spark-submit options that use them.

Light on purpose (no pyspark import): the Airflow DAG files and `lakemine.submit_args` read
it at parse time.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from lakemine.config import Config
from lakemine.errors import UsageError

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
REPO_ROOT = Path(__file__).resolve().parents[2]


def jars_dir(cfg: Config) -> Path:
    """Folder holding the Delta jars fetched by scripts/setup.sh."""
    if cfg.spark.jars_dir:
        return Path(cfg.spark.jars_dir)
    if os.environ.get("LAKEMINE_JARS_DIR"):
        return Path(os.environ["LAKEMINE_JARS_DIR"])
    return REPO_ROOT / ".jars"


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


def submit_args(cfg: Config) -> list[str]:
    """spark-submit arguments that put Delta on the classpath and enable its catalog."""
    if cfg.spark.delta_jars == "packages":
        args = ["--packages", cfg.spark.delta_packages]
    else:
        args = ["--jars", ",".join(delta_jars(cfg))]
    for key, value in DELTA_CONF.items():
        args += ["--conf", f"{key}={value}"]
    return args
