"""The Airflow DAGs: they parse without connection or Variable look-ups or heavy imports, the
branch and packaging helpers behave, and `airflow dags test retail_mining DATE` runs every
task through real spark-submit against generated data."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import zipfile
from datetime import date

import pytest

from conftest import REPO
from lakemine.core import storage
from lakemine.orchestration import dags

PARSE = r"""
import json, sys
def refuse(*args, **kwargs):
    raise RuntimeError("looked up at parse time")
import airflow.sdk
from airflow.sdk import BaseHook, Variable
BaseHook.get_connection = classmethod(refuse)
Variable.get = staticmethod(refuse)
from airflow.models.connection import Connection
Connection.get_connection_from_secrets = classmethod(refuse)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()}, "heavy": sorted(
    m for m in ("pyspark", "torch", "horovod", "delta", "pandas") if m in sys.modules), "dags": {}}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for t in dag.tasks:
        tasks[t.task_id] = {
            "type": type(t).__name__, "downstream": sorted(t.downstream_task_ids),
            "args": list(getattr(t, "application_args", None) or []), "conn_id": getattr(t, "_conn_id", None),
            "py_files": getattr(t, "py_files", None), "retries": t.retries,
            "backoff": t.retry_exponential_backoff, "timeout": t.execution_timeout.total_seconds(),
            "outlets": [a.uri for a in t.outlets], "trigger_rule": getattr(t.trigger_rule, "value", str(t.trigger_rule)),
            "conf": getattr(t, "conf", None),
        }
    out["dags"][dag_id] = {"schedule": str(dag.schedule), "catchup": dag.catchup,
                           "start": dag.start_date.isoformat(), "tasks": tasks}
print("PARSED " + json.dumps(out))
"""


def _airflow_env(tmp_path, venv_env, **lakemine) -> dict:
    """The environment scripts/airflow-env.sh sets up, with an AIRFLOW_HOME of the test's own."""
    env = dict(venv_env, AIRFLOW_HOME=str(tmp_path / "airflow"), **lakemine)
    env.pop("AIRFLOW_CONN_SPARK_DEFAULT", None)
    script = f"source {REPO / 'scripts' / 'airflow-env.sh'} && env -0"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return dict(item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)


def test_dag_files_parse_without_lookups_or_heavy_imports(tmp_path, venv_env):
    env = _airflow_env(tmp_path, venv_env, LAKEMINE_LAKE=str(tmp_path / "lake"),
                       LAKEMINE_ORCHESTRATION__SOURCE="online_retail_ii")
    proc = subprocess.run([sys.executable, "-c", PARSE, str(REPO / "dags")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.split("PARSED ", 1)[1])
    assert parsed["errors"] == {}
    assert parsed["heavy"] == []
    assert set(parsed["dags"]) == {"retail_mining", "lake_maintenance", "weekly_insights"}
    mining = parsed["dags"]["retail_mining"]
    assert mining["catchup"] is False and mining["start"].startswith("2010-12-01")
    tasks = mining["tasks"]
    order = ["package", "ingest", "clean", "features"]
    for a, b in zip(order, order[1:]):
        assert tasks[a]["downstream"] == [b]
    assert tasks["features"]["downstream"] == ["fpgrowth", "kmeans"]
    assert tasks["fpgrowth"]["downstream"] == ["recommend", "train_today"] and tasks["kmeans"]["downstream"] == ["train_today"]
    assert tasks["recommend"]["args"][-1] == "--no-evaluate" and tasks["recommend"]["downstream"] == []
    assert tasks["train_today"]["downstream"] == ["keep_model", "train"]
    assert tasks["train"]["downstream"] == tasks["keep_model"]["downstream"] == ["score"]
    assert tasks["score"]["downstream"] == ["report"] and tasks["score"]["trigger_rule"] == "none_failed_min_one_success"
    lake_uri = "file://" + str(tmp_path / "lake")
    for stage in ("ingest", "clean", "features", "fpgrowth", "recommend", "kmeans", "train", "score", "report"):
        t = tasks[stage]
        assert t["type"] == "SparkSubmitOperator" and t["conn_id"] == "spark_default"
        assert t["args"][:4] == ["--lake", str(tmp_path / "lake"), "--as-of", "{{ ds }}"], stage
        assert t["py_files"].endswith(".zip") and t["retries"] == 2 and t["backoff"] and t["timeout"] == 3600
        assert t["outlets"] and all(u.startswith(lake_uri + "/") for u in t["outlets"]), stage
        # the local connection of scripts/airflow-env.sh brings local tuning, not Spark's cluster defaults
        assert t["conf"]["spark.sql.shuffle.partitions"] == "8" and t["conf"]["spark.ui.enabled"] == "false", stage
    assert lake_uri + "/gold/customer_scores" in tasks["score"]["outlets"]
    assert tasks["ingest"]["args"][4] == "--input" and tasks["ingest"]["args"][6:] == ["--source", "online_retail_ii"]
    weekly = parsed["dags"]["weekly_insights"]
    assert weekly["schedule"] == "@weekly"
    assert weekly["tasks"]["package"]["downstream"] == ["evaluate_recommendations", "forecast", "tune"]
    assert weekly["tasks"]["tune"]["outlets"] == [f"{lake_uri}/ops/tune_trials"]
    assert weekly["tasks"]["forecast"]["outlets"] == [f"{lake_uri}/gold/demand_forecast", f"{lake_uri}/ops/forecast_backtest"]
    assert "--no-evaluate" not in weekly["tasks"]["evaluate_recommendations"]["args"]
    maintenance = parsed["dags"]["lake_maintenance"]
    assert maintenance["schedule"] == "@weekly"
    assert maintenance["tasks"]["optimize_vacuum"]["args"][-2:] == ["--retention-hours", "168"]


def test_training_runs_without_a_model_or_on_the_weekly_day(tmp_path):
    root = str(tmp_path / "lake")
    sunday, monday = date(2011, 11, 27), date(2011, 11, 28)
    assert dags.choose_training(root, monday, 6)[0]  # no model yet
    storage.write_bytes(f"{root}/models/churn/v2/checkpoint.pt", b"")  # unfinished: no metadata
    assert not dags.has_model(root)
    storage.write_json(f"{root}/models/churn/v1/metadata.json", {})
    assert dags.has_model(root)
    assert dags.choose_training(root, sunday, 6)[0]
    train, why = dags.choose_training(root, monday, 6)
    assert not train and "Monday" in why
    storage.write_json(f"{root}/models/churn/v1/metadata.json", {"erasure": {"run_id": "r"}})  # lakemine forget flagged it
    train, why = dags.choose_training(root, monday, 6)
    assert train and "erased" in why


def test_py_files_zip_is_deterministic_and_importable(tmp_path):
    dest = str(tmp_path / "dist" / "lakemine.zip")
    dags.build_py_files(dest)
    first = storage.read_bytes(dest)
    dags.build_py_files(dest)
    assert storage.read_bytes(dest) == first
    names = zipfile.ZipFile(dest).namelist()
    assert {"lakemine/cli.py", "lakemine/core/defaults.yaml", "lakemine/orchestration/log4j2.properties"} <= set(names)
    assert not any("__pycache__" in n for n in names)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import lakemine.cli, lakemine.core.config; "
            "assert '.zip' in lakemine.cli.__file__; print(lakemine.core.config.load_config().features.horizon_days)")
    proc = subprocess.run([sys.executable, "-c", code, dest], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "90", proc.stderr[-2000:]


@pytest.mark.slow
def test_airflow_dags_test_runs_every_task_through_spark_submit(spark, tmp_path, venv_env):
    """generate -> the history up to a day landed -> `airflow dags test retail_mining DAY`:
    every task succeeds through spark-submit (it picks `train`, as no model exists), with the
    package's zip as --py-files, and each stage's tables hold the day's rows. (One day: each run
    is a dozen spark-submits; a next day's incremental ingest, clean and features are tested
    in-process in test_incremental.py.)"""
    import pyspark.sql.functions as F

    from conftest import daily_lines, land
    from lakemine.io import schemas
    from lakemine.io.lake import Lake
    from lakemine.stages.generate import GenerateParams, generate

    raw, landing, lake_dir = tmp_path / "raw", tmp_path / "landing", tmp_path / "lake"
    generate(spark, str(raw), GenerateParams.from_config(None, customers=300, days=240, seed=7, dirty_rate=0.005))
    header, by_day = daily_lines(raw)
    day = list(by_day)[-1]
    landing.mkdir()
    land(landing, "history.csv", header, [line for lines in by_day.values() for line in lines])
    env = _airflow_env(tmp_path, venv_env, LAKEMINE_LAKE=str(lake_dir), LAKEMINE_ORCHESTRATION__INPUT=str(landing),
                       LAKEMINE_TRAIN__EPOCHS="3", LAKEMINE_ORCHESTRATION__TRAIN_WEEKDAY=str((day.weekday() + 1) % 7))
    env["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({"conn_type": "spark", "host": "local[2]"})
    proc = subprocess.run([f"{REPO}/.venv/bin/airflow", "dags", "test", "retail_mining", day.isoformat()],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        (run_id,) = db.execute("select run_id from dag_run where dag_id = 'retail_mining' order by id desc limit 1").fetchone()
        states = dict(db.execute("select task_id, state from task_instance where dag_id = 'retail_mining' "
                                 "and run_id = ?", (run_id,)).fetchall())
    expected = {t: "success" for t in ("package", "ingest", "clean", "features", "fpgrowth", "recommend", "kmeans",
                                       "train_today", "train", "score", "report")}
    assert states == {**expected, "keep_model": "skipped"}, (states, (proc.stdout + proc.stderr)[-4000:])

    lake = Lake.at(spark, str(lake_dir))
    for table in (schemas.SILVER_TRANSACTIONS, schemas.GOLD_CUSTOMER_FEATURES, schemas.GOLD_ASSOCIATION_RULES,
                  schemas.GOLD_CUSTOMER_SEGMENTS, schemas.GOLD_CUSTOMER_SCORES, schemas.OPS_DRIFT):
        assert lake.read_table(table).count() > 0, table
    featured = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES).where(F.col("as_of") == F.lit(day)).count()
    assert lake.read_table(schemas.GOLD_CUSTOMER_SCORES).where(F.col("as_of") == F.lit(day)).count() == featured > 0
    runs = {r["stage"]: r["status"] for r in lake.read_table(schemas.OPS_RUNS).collect()}
    assert {runs[s] for s in ("ingest", "clean", "features", "fpgrowth", "recommend", "kmeans", "train", "score")} == {
        "succeeded"}
    assert lake.read_table(schemas.GOLD_RECOMMENDATIONS).where(F.col("as_of") == F.lit(day)).count() > 0
    assert storage.exists(f"{lake_dir}/reports/{day}/report.html")
