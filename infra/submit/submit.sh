#!/usr/bin/env bash
# Submit one lakemine stage from a cluster edge node (or locally), with the package, the
# config and Delta shipped along.
#
#   infra/submit/submit.sh [options] STAGE [stage options]
#
# options (before STAGE):
#   --master URL         yarn | spark://HOST:7077 | k8s://https://HOST:443 | local[*]   (default yarn)
#   --deploy-mode MODE   client (default) or cluster
#   --conf KEY=VALUE     extra Spark conf, repeatable (e.g. spark.kubernetes.container.image=...)
#   --offline            Delta from the jars in .jars/ (--jars) instead of --packages through Ivy
#   --dry-run            print the spark-submit command instead of running it
# STAGE: ingest clean features fpgrowth kmeans train score report maintain; the stage options
# are the CLI's (`lakemine STAGE --help`): --lake, --as-of, --input, ...
#
# Environment: LAKEMINE_CONFIG=FILE ships a config file with --files and passes --config to
# the job; PYTHON (default .venv/bin/python) builds the package zip; SPARK_SUBMIT (default
# spark-submit on PATH, else .venv/bin/spark-submit). Cluster defaults (Kryo, shuffle
# partitions, Delta catalog, GPU notes): infra/spark/spark-defaults.conf.
#
# Examples:
#   infra/submit/submit.sh --master yarn ingest --input hdfs:///landing/retail/2011-12-09/ --lake hdfs:///lake --as-of 2011-12-09
#   infra/submit/submit.sh --master spark://spark-master:7077 features --lake s3a://bucket/lake --as-of 2011-12-09
#   infra/submit/submit.sh --master k8s://https://k8s.example:443 --deploy-mode cluster \
#       --conf spark.kubernetes.container.image=registry.example/lakemine:0.1.0 kmeans --lake s3a://bucket/lake
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
SPARK_SUBMIT="${SPARK_SUBMIT:-$(command -v spark-submit || echo "$ROOT/.venv/bin/spark-submit")}"
MASTER=yarn DEPLOY_MODE=client OFFLINE=0 DRY_RUN=0
CONFS=()
die() { echo "submit.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) MASTER="${2:?--master needs a URL}"; shift 2 ;;
    --deploy-mode) DEPLOY_MODE="${2:?--deploy-mode needs client or cluster}"; shift 2 ;;
    --conf) CONFS+=(--conf "${2:?--conf needs KEY=VALUE}"); shift 2 ;;
    --offline) OFFLINE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (options go before STAGE; see --help)" ;;
    *) break ;;
  esac
done
STAGE="${1:-}"; [[ -n "$STAGE" ]] || die "which stage? (see --help)"; shift
[[ -f "$ROOT/jobs/$STAGE.py" ]] || die "no job for stage '$STAGE' in $ROOT/jobs"
[[ "$DEPLOY_MODE" == client || "$DEPLOY_MODE" == cluster ]] || die "--deploy-mode must be client or cluster"

# the package zip for --py-files (rewritten only when the sources changed)
ZIP="$("$PYTHON" -m lakemine package --out "$ROOT/dist" --stage "$STAGE" | sed -n 's/^package: \(.*\) (.*/\1/p')"
[[ -f "$ZIP" ]] || die "could not build the package zip with $PYTHON -m lakemine package"

if [[ "$OFFLINE" == 1 ]]; then
  DELTA=(--jars "$(ls "$ROOT"/.jars/*.jar 2>/dev/null | paste -sd, -)")
  [[ "${DELTA[1]}" == *delta-spark_* ]] || die "no Delta jars in $ROOT/.jars: run scripts/setup.sh"
else
  DELTA=(--packages io.delta:delta-spark_2.13:4.0.1)
fi

JOB_ARGS=("$@")
FILES=()
if [[ -n "${LAKEMINE_CONFIG:-}" ]]; then
  [[ -f "$LAKEMINE_CONFIG" ]] || die "LAKEMINE_CONFIG=$LAKEMINE_CONFIG: no such file"
  FILES=(--files "$LAKEMINE_CONFIG")
  # in cluster mode the driver finds shipped files in its working directory
  if [[ "$DEPLOY_MODE" == cluster ]]; then JOB_ARGS+=(--config "$(basename "$LAKEMINE_CONFIG")");
  else JOB_ARGS+=(--config "$LAKEMINE_CONFIG"); fi
fi

CMD=("$SPARK_SUBMIT" --master "$MASTER" --deploy-mode "$DEPLOY_MODE" --name "lakemine-$STAGE"
     --properties-file "$ROOT/infra/spark/spark-defaults.conf" "${DELTA[@]}" "${CONFS[@]}" "${FILES[@]}"
     --py-files "$ZIP" "$ROOT/jobs/$STAGE.py" "${JOB_ARGS[@]}")
if [[ "$DRY_RUN" == 1 ]]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
exec "${CMD[@]}"
