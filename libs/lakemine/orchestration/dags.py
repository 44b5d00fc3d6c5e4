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

from lakemine import __version__
from lakemine.core import storage
from lakemine.core.config import Config, load_config
from lakemine.orchestration.jars import DELTA_CONF, PACKAGE_DIR, PACKAGE_JOB, REPO_ROOT, delta_jars, java_options, jobs_dir

# the layout lakemine.learning.train writes (MODEL_KIND, METADATA); named again here because
# importing it would load pyspark when the DAG files are parsed
MODELS = "models/churn"
METADATA = "metadata.json"


@dataclass(frozen=True)
class DagSettings:
    """Everything a SparkSubmitOperator of the lakemine DAGs takes, from config only."""

    lake: str
    input: str
    conn_id: str
    jobs: Path | None
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
    source: str | None = None  # the source profile of the landed files; None: detected per file
    window_days: int = 365     # the baskets FP-growth mines: the last W days (0: all of history)

    @property
    def fpgrowth_args(self) -> list[str]:
        """The fpgrowth task's arguments: the mining window, so a day mines a bounded history."""
        return ["--window-days", str(self.window_days)]

    @property
    def ingest_args(self) -> list[str]:
        """The ingest task's arguments: the landing folder, and the profile when one is set."""
        return ["--input", self.input] + (["--source", self.source] if self.source else [])

    @property
    def dag_args(self) -> dict:
        """DAG arguments both lakemine DAGs share: one run at a time, every task's retries
        (exponential backoff) and timeout, the tag."""
        default_args = {"retries": self.retries, "retry_delay": self.retry_delay, "retry_exponential_backoff": True,
                        "max_retry_delay": self.max_retry_delay, "execution_timeout": self.execution_timeout}
        return {"max_active_runs": 1, "default_args": default_args, "tags": ["lakemine"]}

    def package_task(self):
        """The `package` task: (re)builds the zip that --py-files ships with every stage
        (Airflow is imported here, when a DAG file calls this, never by lakemine itself)."""
        from airflow.sdk import task

        @task(task_id="package")
        def package() -> str:
            return build_py_files(self.py_files)

        return package()

    def submit_args(self, stage: str, extra: list[str] | None = None) -> dict:
        """SparkSubmitOperator arguments that run `stage` for the templated logical date."""
        return {"application": self.job(stage), "application_args": self.common_args(stage) + (extra or []),
                "conn_id": self.conn_id, "py_files": self.py_files, "jars": self.jars, "packages": self.packages,
                "conf": self.conf, "name": f"lakemine-{stage}-{{{{ ds }}}}"}

    def job(self, stage: str) -> str:
        """The application spark-submit runs: `jobs/<stage>.py`, or the installed package's
        `lakemine/job.py` when there is no jobs folder."""
        return str(self.jobs / f"{stage}.py") if self.jobs is not None else str(PACKAGE_JOB)

    def common_args(self, stage: str) -> list[str]:
        """--lake, --as-of (templated logical date) and --config for the stage's application
        (led by the stage name for the package's `job.py`)."""
        args = ([] if self.jobs is not None else [stage]) + ["--lake", self.lake, "--as-of", "{{ ds }}"]
        return args + (["--config", self.config_file] if self.config_file else [])

    def asset_uri(self, table: str) -> str:
        return f"{storage.file_url(self.lake)}/{table}"


def dag_settings(config_file: str | None = None, env: dict | None = None) -> DagSettings:
    """Settings for the DAG files from the lakemine config (`LAKEMINE_CONFIG` names the file).
    Relative lake and input paths are taken from the repository root (the working directory
    when the package is installed outside a checkout)."""
    env = os.environ if env is None else env
    config_file = config_file or env.get("LAKEMINE_CONFIG") or None
    cfg: Config = load_config(config_file, env)
    o = cfg.orchestration
    if cfg.spark.delta_jars == "packages":
        jars, packages = None, cfg.spark.delta_packages
    else:
        jars, packages = ",".join(delta_jars(cfg)), None
    base = REPO_ROOT or Path.cwd()
    dist = Path(o.dist_dir) if o.dist_dir else (
        REPO_ROOT / "dist" if REPO_ROOT else Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lakemine" / "dist")
    return DagSettings(
        lake=storage.absolute(cfg.lake, base),
        input=storage.absolute(o.input, base),
        source=o.source,
        window_days=cfg.fpgrowth.window_days,
        conn_id=o.conn_id,
        jobs=jobs_dir(cfg),
        py_files=str(dist / f"lakemine-{__version__}-py.zip"),
        jars=jars,
        packages=packages,
        # client mode: the driver runs beside Airflow and reads the quiet log4j file from the
        # package (Spark's errors still reach the task log, its INFO chatter does not)
        conf={**DELTA_CONF, **java_options(cfg, quiet=True), **o.spark_conf},
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
    if not (storage.exists(dest) and storage.read_bytes(dest) == data):
        storage.write_bytes(dest, data)
    return dest


def has_model(lake_root: str) -> bool:
    """Whether any churn model finished training (its metadata.json written) under the lake."""
    root = f"{lake_root}/{MODELS}"
    return any(storage.exists(f"{root}/{name}/{METADATA}") for name in storage.list_dirs(root))


def newest_model_erased(lake_root: str) -> bool:
    """Whether the newest finished churn model was trained on a customer erased since
    (`lakemine forget` flags it in its metadata.json)."""
    root = f"{lake_root}/{MODELS}"
    done = sorted(name for name in storage.list_dirs(root) if storage.exists(f"{root}/{name}/{METADATA}"))
    return bool(done) and bool(storage.read_json(f"{root}/{done[-1]}/{METADATA}").get("erasure"))


def choose_training(lake_root: str, logical_date: date, train_weekday: int) -> tuple[bool, str]:
    """Train when no model exists yet, when the newest was trained on an erased customer, or
    on the weekly retraining day; with the reason."""
    if not has_model(lake_root):
        return True, "no churn model in the lake yet"
    if newest_model_erased(lake_root):
        return True, "the newest model was trained on a customer erased since"
    if logical_date.weekday() == train_weekday:
        return True, f"weekly retraining day ({logical_date:%A})"
    return False, f"a model exists and {logical_date:%A} is not the retraining day"
