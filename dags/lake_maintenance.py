"""Weekly lake upkeep: OPTIMIZE and VACUUM every Delta table (`jobs/maintain.py`).

Wiring only; settings from the lakemine config as in retail_mining.py. VACUUM keeps the
files that any version of the last `maintain.retention_hours` (default 168) needs.
"""

from __future__ import annotations

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

from lakemine.orchestration.dags import dag_settings

S = dag_settings()

# the first day of the UCI exports: any date after can be backfilled
with DAG("lake_maintenance", schedule="@weekly", start_date=pendulum.datetime(2010, 12, 1, tz="UTC"), catchup=False,
         description="lakemine: OPTIMIZE and VACUUM every Delta table of the lake", **S.dag_args) as dag:
    S.package_task() >> SparkSubmitOperator(
        task_id="optimize_vacuum", **S.submit_args("maintain", ["--retention-hours", str(S.retention_hours)])
    )
