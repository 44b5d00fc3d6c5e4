# Source me: the environment the lakemine DAGs run in on this machine (local mode).
#
#   source scripts/airflow-env.sh
#   airflow dags test retail_mining 2011-11-30     # one run, every task through spark-submit
#   airflow standalone                             # scheduler + UI on http://localhost:8080
#
# AIRFLOW_HOME defaults to .airflow/ in the checkout (SQLite metadata, created on first use);
# the spark_default connection points at local mode unless AIRFLOW_CONN_SPARK_DEFAULT is
# already set (e.g. '{"conn_type": "spark", "host": "spark://HOST:7077"}', or host "yarn"); with
# the local connection, orchestration.spark_conf gets local tuning unless LAKEMINE_ORCHESTRATION__SPARK_CONF is set.
# lakemine settings: LAKEMINE_CONFIG=FILE and LAKEMINE_* variables (see libs/lakemine/core/defaults.yaml).
LAKEMINE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$LAKEMINE_ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$LAKEMINE_ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="${AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT:-60}"
if [[ -z "${AIRFLOW_CONN_SPARK_DEFAULT:-}" ]]; then
  export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]"}'
  # Local mode: every task's spark-submit gets the tuning `lakemine` gives its own local
  # sessions (lakemine.io.spark.settings), since submitted jobs keep Spark's defaults (200
  # shuffle partitions, the UI, 50 snapshot partitions), made for a cluster, not one machine.
  if [[ -z "${LAKEMINE_ORCHESTRATION__SPARK_CONF:-}" ]]; then
    export LAKEMINE_ORCHESTRATION__SPARK_CONF='{"spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.databricks.delta.snapshotPartitions": "2"}'
  fi
fi
export PATH="$LAKEMINE_ROOT/.venv/bin:$PATH"
if [[ ! -f "$AIRFLOW_HOME/airflow.db" ]]; then
  mkdir -p "$AIRFLOW_HOME"
  airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/db-migrate.log" >&2; return 1 2>/dev/null || exit 1; }
fi
