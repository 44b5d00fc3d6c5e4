"""What the Airflow DAG files need, kept out of them so they stay wiring only.

Light on purpose: no pyspark or torch import, no Airflow connection or Variable look-up.
The DAG files read `dag_settings()` when parsed (the lakemine config file named by
`LAKEMINE_CONFIG`, else the packaged defaults, then `LAKEMINE_*` variables); tasks call
`choose_training` and `build_py_files` when they run.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from lakemine import __version__, artifacts
from lakemine.config import Config, load_config
from lakemine.jars import DELTA_CONF, REPO_ROOT, delta_jars

PACKAGE_DIR = Path(__file__).resolve().parent
QUIET_LOG4J = PACKAGE_DIR / "log4j2.properties"
# the layout lakemine.train writes (MODEL_KIND, METADATA); named again here because importing
# lakemine.train would load pyspark when the DAG files are parsed
MODELS = "models/churn"
METADATA = "metadata.json"


def _resolve(location: str, base: Path) -> str:
    """A lake or input location from config: URIs as they are, relative paths under `base`."""
    if "://" in location or location.startswith("file:"):
        return location.rstrip("/")
    return str((base / location).resolve())


@dataclass(frozen=True)
class DagSettings:
    """Everything a SparkSubmitOperator of the lakemine DAGs takes, from config only."""

    lake: str
    input: str
    conn_id: str
    jobs: Path
    py_files: str
    jars: str | None
    packages: str | None
    conf: dict = field(default_factory=dict)
    retries: int = 2
    retry_delay: timedelta = timedelta(minutes=2)
    max_retry_delay: timedelta = timedelta(minutes=30)
    execution_timeout: timedelta = timedelta(minutes=60)
    train_weekday: int = 6
    retention_hours: int = 168
    config_file: str | None = None

    def job(self, stage: str) -> str:
        return str(self.jobs / f"{stage}.py")

    def common_args(self, stage: str) -> list[str]:
        """--lake, --as-of (templated logical date) and --config for `jobs/<stage>.py`."""
        args = ["--lake", self.lake, "--as-of", "{{ ds }}"]
        return args + (["--config", self.config_file] if self.config_file else [])

    def asset_uri(self, table: str) -> str:
        root = self.lake if "://" in self.lake else "file://" + self.lake
        return f"{root}/{table}"


def dag_settings(config_file: str | None = None, env: dict | None = None) -> DagSettings:
    """Settings for the DAG files from the lakemine config (`LAKEMINE_CONFIG` names the file).
    Relative lake and input paths are taken from the repository root."""
    env = os.environ if env is None else env
    config_file = config_file or env.get("LAKEMINE_CONFIG") or None
    cfg: Config = load_config(config_file, env)
    o = cfg.orchestration
    if cfg.spark.delta_jars == "packages":
        jars, packages = None, cfg.spark.delta_packages
    else:
        jars, packages = ",".join(delta_jars(cfg)), None
    return DagSettings(
        lake=_resolve(cfg.lake, REPO_ROOT),
        input=_resolve(o.input, REPO_ROOT),
        conn_id=o.conn_id,
        jobs=REPO_ROOT / "jobs",
        py_files=str(REPO_ROOT / "dist" / f"lakemine-{__version__}-py.zip"),
        jars=jars,
        packages=packages,
        # client mode: the driver runs beside Airflow and reads the quiet log4j file from the
        # checkout (Spark's errors still reach the task log, its INFO chatter does not)
        conf={**DELTA_CONF, "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={QUIET_LOG4J.as_uri()}",
              **o.spark_conf},
        retries=o.retries,
        retry_delay=timedelta(minutes=o.retry_delay_minutes),
        max_retry_delay=timedelta(minutes=o.max_retry_delay_minutes),
        execution_timeout=timedelta(minutes=o.task_timeout_minutes),
        train_weekday=o.train_weekday,
        retention_hours=cfg.maintain.retention_hours,
        config_file=str(Path(config_file).resolve()) if config_file else None,
    )


def build_py_files(dest: str) -> str:
    """Zip the lakemine package (what `spark-submit --py-files` ships to the cluster) to
    `dest`. Same sources, same bytes: the archive is rewritten only when they change."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(PACKAGE_DIR.rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            info = zipfile.ZipInfo(str(Path("lakemine") / path.relative_to(PACKAGE_DIR)), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    data = buf.getvalue()
    if not (artifacts.exists(dest) and artifacts.read_bytes(dest) == data):
        artifacts.write_bytes(dest, data)
    return dest


def has_model(lake_root: str) -> bool:
    """Whether any churn model finished training (its metadata.json written) under the lake."""
    root = f"{lake_root}/{MODELS}"
    return any(artifacts.exists(f"{root}/{name}/{METADATA}") for name in artifacts.list_dirs(root))


def choose_training(lake_root: str, logical_date: date, train_weekday: int) -> tuple[bool, str]:
    """Train when no model exists yet, or on the weekly retraining day; with the reason."""
    if not has_model(lake_root):
        return True, "no churn model in the lake yet"
    if logical_date.weekday() == train_weekday:
        return True, f"weekly retraining day ({logical_date:%A})"
    return False, f"a model exists and {logical_date:%A} is not the retraining day"
