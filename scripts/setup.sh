#!/usr/bin/env bash
# lakemine set-up: Java check, .venv with the pinned stack, Horovod built from its sdist
# (C++17 patch, PyTorch + Gloo, wheel cached), Delta jars fetched with Maven.
# Idempotent: a second run checks stamps and returns in seconds.
#
#   scripts/setup.sh            set up (or verify) everything
#   LAKEMINE_FORCE_SETUP=1 ...  redo every step
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
JARS="$ROOT/.jars"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/lakemine"
HOROVOD_VERSION=0.28.1
DELTA_VERSION=4.0.1
PETASTORM_VERSION=0.13.1
FORCE="${LAKEMINE_FORCE_SETUP:-0}"
T0=$SECONDS

say() { printf '[setup %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 2; }

# --- Java 17 or 21 -----------------------------------------------------------------
java_major() {
  command -v java >/dev/null 2>&1 || { echo 0; return; }
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print v[1]; exit}'
}
JMAJ="$(java_major)"
if [[ "$JMAJ" != 17 && "$JMAJ" != 21 ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "Java 17 not found (found: ${JMAJ}); installing openjdk-17-jre-headless with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
    JMAJ="$(java_major)"
    [[ "$JMAJ" == 17 ]] || die "installed openjdk-17-jre-headless but 'java -version' still reports ${JMAJ}; put Java 17 first on PATH"
  else
    die "Spark 4.0 needs Java 17 or 21 (found: ${JMAJ}). Install it, e.g. 'sudo apt-get install openjdk-17-jre-headless', and re-run."
  fi
fi
say "java ${JMAJ} ok"

# --- Python ------------------------------------------------------------------------
PY=""
for cand in python3.11 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(0 if (3,10) <= sys.version_info[:2] <= (3,12) else 1)'; then
    PY="$(command -v "$cand")"; break
  fi
done
[[ -n "$PY" ]] || die "needs Python 3.10-3.12 (3.11 verified); none found on PATH"

# --- fast path: everything was set up by this very script and nothing it reads changed ---
DEPS_HASH="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
LOCALFS_SRC="$ROOT/infra/java/lakemine/hadoop/NioLocalFileSystem.java"
LOCALFS_JAR="$JARS/local/lakemine-localfs.jar"
READY_HASH="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" "$ROOT/infra/maven/pom.xml" "$LOCALFS_SRC" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
READY="$VENV/.lakemine-ready"
if [[ "$FORCE" != 1 && "$(cat "$READY" 2>/dev/null)" == "$READY_HASH" && -x "$VENV/bin/lakemine" \
      && -d "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/horovod/torch" \
      && -f "$JARS/delta-spark_2.13-${DELTA_VERSION}.jar" ]] \
      && { [[ -f "$LOCALFS_JAR" ]] || ! command -v javac >/dev/null 2>&1; } \
      && { command -v chromium >/dev/null 2>&1 || [[ "$(id -u)" != 0 ]]; }; then
  say "already set up (.venv, horovod, .jars); LAKEMINE_FORCE_SETUP=1 redoes every step"
  exit 0
fi
rm -f "$READY"

# --- virtual environment with the pinned stack ---------------------------------------
STAMP="$VENV/.lakemine-deps"
if [[ "$FORCE" == 1 || ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$DEPS_HASH" ]]; then
  [[ -x "$VENV/bin/python" ]] || { say "creating .venv with $PY"; "$PY" -m venv "$VENV"; }
  say "installing pinned Python packages (first run downloads torch and airflow: minutes)"
  "$VENV/bin/pip" install -q --upgrade "pip<25" >/dev/null
  "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt"
  "$VENV/bin/pip" install -q --no-deps "petastorm==${PETASTORM_VERSION}"
  # The Airflow Spark provider pulls pyspark-client, which ships the same 'pyspark'
  # package; make sure the full 4.0.x distribution is the one on disk.
  if ! "$VENV/bin/python" -c 'import pyspark, os, sys; sys.exit(0 if pyspark.__version__ == "4.0.1" and os.path.isdir(os.path.join(os.path.dirname(pyspark.__file__), "jars")) else 1)'; then
    say "restoring full pyspark 4.0.1 over pyspark-client"
    "$VENV/bin/pip" install -q --force-reinstall --no-deps "pyspark==4.0.1"
  fi
  "$VENV/bin/pip" install -q --no-deps -e "$ROOT"
  echo "$DEPS_HASH" > "$STAMP"
else
  say "python packages up to date (.venv)"
fi

# --- Horovod from sdist, cached wheel ------------------------------------------------
TORCH_V="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
PYTAG="$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE/wheels/horovod-${HOROVOD_VERSION}-torch${TORCH_V}-${PYTAG}"
if [[ "$FORCE" == 1 ]] || ! "$VENV/bin/python" -c 'import horovod.torch' >/dev/null 2>&1; then
  if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1 || [[ "$FORCE" == 1 ]]; then
    command -v cmake >/dev/null 2>&1 || die "building Horovod needs cmake 3.x and a C++ compiler (apt-get install cmake g++)"
    say "building Horovod ${HOROVOD_VERSION} from sdist against torch ${TORCH_V} (about 3 minutes on 2 cores)"
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$BUILD" "horovod==${HOROVOD_VERSION}"
    tar -xzf "$BUILD/horovod-${HOROVOD_VERSION}.tar.gz" -C "$BUILD"
    SRC="$BUILD/horovod-${HOROVOD_VERSION}"
    # torch >= 2.1 headers need C++17; the upstream fix was never released for 0.28.1.
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
    grep -q 'CMAKE_CXX_STANDARD 17' "$SRC/horovod/torch/CMakeLists.txt" || die "Horovod C++17 patch did not apply"
    GPU_OPS=()
    if command -v nvcc >/dev/null 2>&1; then GPU_OPS=(HOROVOD_GPU_OPERATIONS=NCCL); say "nvcc found: building with NCCL"; fi
    mkdir -p "$WHEEL_DIR"
    env CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
        HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=GLOO "${GPU_OPS[@]}" \
        MAKEFLAGS="-j$(nproc)" \
        "$VENV/bin/pip" wheel -q --no-build-isolation --no-deps -w "$WHEEL_DIR" "$SRC" > "$BUILD/build.log" 2>&1 \
      || { tail -40 "$BUILD/build.log" >&2; die "Horovod build failed (log above)"; }
  else
    say "using cached Horovod wheel from $WHEEL_DIR"
  fi
  "$VENV/bin/pip" install -q --no-deps --force-reinstall "$WHEEL_DIR"/horovod-*.whl
  # horovod's runtime deps, without the [spark] extra (it pins pyarrow<11)
  "$VENV/bin/pip" install -q cloudpickle psutil pyyaml packaging
fi
CHECK="$("$VENV/bin/horovodrun" --check-build 2>&1)"
echo "$CHECK" | grep -q '\[X\] PyTorch' || die "horovodrun --check-build does not list PyTorch: $CHECK"
echo "$CHECK" | grep -q '\[X\] Gloo' || die "horovodrun --check-build does not list Gloo: $CHECK"
say "horovod ${HOROVOD_VERSION} ok (PyTorch, Gloo)"

# --- Delta jars through Maven ----------------------------------------------------------
if [[ "$FORCE" == 1 || ! -f "$JARS/delta-spark_2.13-${DELTA_VERSION}.jar" || ! -f "$JARS/delta-storage-${DELTA_VERSION}.jar" ]]; then
  command -v mvn >/dev/null 2>&1 || die "fetching the Delta jars needs Maven (apt-get install maven)"
  say "fetching Delta ${DELTA_VERSION} jars with Maven into .jars/"
  mkdir -p "$JARS"
  MVN_LOG="$(mktemp)"
  mvn -q -B -Dstyle.color=never -f "$ROOT/infra/maven/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$JARS" -DincludeScope=runtime >"$MVN_LOG" 2>&1 \
    || { tail -20 "$MVN_LOG" >&2; die "Maven could not fetch io.delta:delta-spark_2.13:${DELTA_VERSION} (is Maven Central reachable?)"; }
  rm -f "$MVN_LOG"
else
  say "delta jars present (.jars)"
fi

# --- the local file system without a chmod process per file (infra/java) ----------------
# Local-mode sessions set fs.file.impl to it when the jar is there (lakemine.io.spark); without
# it (no javac: a JRE only) they use Hadoop's own, which starts a chmod for every file written.
if [[ "$FORCE" == 1 || ! -f "$LOCALFS_JAR" || "$LOCALFS_SRC" -nt "$LOCALFS_JAR" ]]; then
  if command -v javac >/dev/null 2>&1; then
    say "building .jars/local/lakemine-localfs.jar (javac)"
    SPARK_JARS="$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
    CLASSES="$(mktemp -d)"
    if javac -nowarn --release 17 -cp "$SPARK_JARS/*" -d "$CLASSES" "$LOCALFS_SRC"; then
      mkdir -p "$JARS/local"
      (cd "$CLASSES" && jar cf "$LOCALFS_JAR.tmp" .) && mv "$LOCALFS_JAR.tmp" "$LOCALFS_JAR"
    else
      say "javac could not build $LOCALFS_SRC: local sessions keep Hadoop's chmod per file"
    fi
    rm -rf "$CLASSES"
  else
    say "no javac (a JRE only): local sessions keep Hadoop's chmod per file (slower writes)"
  fi
else
  say "local file system jar present (.jars/local)"
fi

# --- headless Chromium for the report test (Debian's package) ---------------------------
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  say "chromium present (report rendering test)"
elif [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  say "installing Debian's chromium with apt-get (headless rendering test of the HTML report)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null \
    || die "apt-get could not install chromium (needed by tests/test_report.py)"
else
  say "WARNING: chromium not found and not root: 'sudo apt-get install chromium' to run the report rendering test"
fi

"$VENV/bin/python" -c 'import pyspark, delta, pyarrow, numpy, petastorm, torch, airflow; assert pyspark.__version__.startswith("4.0."), pyspark.__version__; assert pyarrow.__version__ == "14.0.2", pyarrow.__version__; assert numpy.__version__ < "2", numpy.__version__' \
  || die "the installed stack does not match the pins (see requirements.txt)"
echo "$READY_HASH" > "$READY"
say "ready: .venv/bin/lakemine, .venv/bin/spark-submit, .venv/bin/airflow"
