"""Weekly insights: demand forecasts (`jobs/forecast.py`), the recommendations' held-out
evaluation (`jobs/recommend.py` with the evaluation, which mines the rules a second time) and
the churn model search (`jobs/tune.py` into ops/tune_trials; the daily DAG's training takes
its winner when the config says `train.params: best`).

Wiring only; settings from the lakemine config as in retail_mining.py. Both read what the
daily DAG wrote for the same logical date (silver, baskets, the day's rules) and replace only
their own as_of, so a re-run or a backfill leaves the same rows. Run it after the daily run of
its date (it is scheduled for the end of the week; `airflow dags trigger` for any date).
"""

from __future__ import annotations

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Asset

from lakemine.orchestration.dags import dag_settings

S = dag_settings()
TABLES = {"forecast": ["gold/demand_forecast", "ops/forecast_backtest"],
          "recommend": ["gold/recommendations", "ops/recommend_eval"],
          "tune": ["ops/tune_trials"]}


def stage(name: str, task_id: str) -> SparkSubmitOperator:
    return SparkSubmitOperator(task_id=task_id, **S.submit_args(name),
                               outlets=[Asset(name=f"lakemine/{t}", uri=S.asset_uri(t)) for t in TABLES[name]])


with DAG("weekly_insights", schedule="@weekly", start_date=pendulum.datetime(2010, 12, 1, tz="UTC"), catchup=False,
         description="lakemine: weekly demand forecasts, the recommendations' held-out evaluation and the model search",
         **S.dag_args) as dag:
    S.package_task() >> [stage("forecast", "forecast"), stage("recommend", "evaluate_recommendations"), stage("tune", "tune")]
