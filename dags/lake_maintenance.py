"""Weekly lake upkeep: OPTIMIZE and VACUUM every Delta table (`jobs/maintain.py`).

Wiring only; settings from the lakemine config as in retail_mining.py. VACUUM keeps the
files that any version of the last `maintain.retention_hours` (default 168) needs.
"""

from __future__ import annotations

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, task

from lakemine.orchestration import dag_settings

S = dag_settings()

with DAG(
    dag_id="lake_maintenance",
    description="lakemine: OPTIMIZE and VACUUM every Delta table of the lake",
    schedule="@weekly",
    start_date=pendulum.datetime(2010, 12, 1, tz="UTC"),  # the first day of the UCI exports: any date after can be backfilled
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": S.retries,
        "retry_delay": S.retry_delay,
        "retry_exponential_backoff": True,
        "max_retry_delay": S.max_retry_delay,
        "execution_timeout": S.execution_timeout,
    },
    tags=["lakemine"],
) as dag:

    @task
    def package() -> str:
        from lakemine.orchestration import build_py_files

        return build_py_files(S.py_files)

    package() >> SparkSubmitOperator(
        task_id="optimize_vacuum",
        application=S.job("maintain"),
        application_args=S.common_args("maintain") + ["--retention-hours", str(S.retention_hours)],
        conn_id=S.conn_id,
        py_files=S.py_files,
        jars=S.jars,
        packages=S.packages,
        conf=S.conf,
        name="lakemine-maintain-{{ ds }}",
    )
