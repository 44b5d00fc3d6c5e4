"""Daily retail mining: ingest -> clean -> features -> (fpgrowth -> recommend, kmeans) -> train? -> score -> report.

Wiring only. Every stage is `spark-submit jobs/<stage>.py --lake L --as-of {{ ds }}` through
the Airflow connection named by `orchestration.conn_id` (default `spark_default`; its host
picks the master: `local[*]`, `spark://HOST:7077`, `yarn`, `k8s://https://HOST:443`).
Settings come from the lakemine config (`LAKEMINE_CONFIG`, then `LAKEMINE_*` variables),
read when the file is parsed; no connection or Variable is looked up here.

Backfill-safe: each stage replaces only its own `as_of`, so re-running or backfilling a date
leaves the same rows. Training runs when the lake has no model yet or on the weekly
retraining day (`orchestration.train_weekday`); scoring runs every day. Recommendations are
made every day from the day's rules, without their held-out evaluation (it mines the rules a
second time): the weekly_insights DAG evaluates them and forecasts demand.
"""

from __future__ import annotations

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset, TriggerRule, task

from lakemine.orchestration.dags import dag_settings

S = dag_settings()
TABLES = {
    "ingest": ["bronze/transactions", "bronze/quarantine"],
    "clean": ["silver/transactions", "silver/quarantine"],
    "features": ["gold/baskets", "gold/customer_days", "gold/customer_features", "gold/feature_scaler", "gold/labels"],
    "fpgrowth": ["gold/frequent_itemsets", "gold/association_rules"],
    "recommend": ["gold/recommendations"],
    "kmeans": ["gold/customer_segments", "gold/segment_profiles"],
    "train": ["models/churn"],
    "score": ["gold/customer_scores", "ops/drift"],
    "report": ["reports"],
}


def stage(name: str, extra: list[str] | None = None, **kwargs) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=name, **S.submit_args(name, extra),
        outlets=[Asset(name=f"lakemine/{t}", uri=S.asset_uri(t)) for t in TABLES[name]],
        **kwargs,
    )


# the first day of the UCI exports: any date after can be backfilled
with DAG("retail_mining", schedule="@daily", start_date=pendulum.datetime(2010, 12, 1, tz="UTC"), catchup=False,
         description="lakemine: raw exports to gold tables, segments, rules, churn scores and a report",
         **S.dag_args) as dag:

    @task.branch
    def train_today(ds=None) -> str:
        """`train` when the lake has no model yet or on the weekly retraining day."""
        from datetime import date

        from lakemine.orchestration.dags import choose_training

        train, why = choose_training(S.lake, date.fromisoformat(ds), S.train_weekday)
        print(f"{'training' if train else 'not training'}: {why}")
        return "train" if train else "keep_model"

    fpgrowth = stage("fpgrowth", S.fpgrowth_args)
    fpgrowth >> stage("recommend", ["--no-evaluate"])
    mined = [fpgrowth, stage("kmeans")]
    learned = [stage("train"), EmptyOperator(task_id="keep_model")]
    score = stage("score", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)

    S.package_task() >> stage("ingest", S.ingest_args) >> stage("clean") >> stage("features") >> mined
    mined >> train_today() >> learned >> score >> stage("report")
