"""A real Spark standalone cluster on 127.0.0.1: one master and two workers of one core each,
started from the pyspark distribution's own `bin/spark-class`, as `sbin/start-master.sh` and
`start-worker.sh` do (pip's pyspark ships `spark-class` but not those two scripts).

Against it, as a user on an edge node would run them (`lakemine` processes whose config names
the spark:// master): ingest and clean of generated data, compared row for row with the same
stages in local mode; and Horovod training with its two processes placed on the two
executors, the ranks ending with the same parameters.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_lake

pytestmark = pytest.mark.slow

LAKEMINE = [sys.executable, "-m", "lakemine"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandaloneCluster:
    """Master + workers as child processes (each in its own process group); `stop()` ends them
    all, also after a failed start."""

    def __init__(self, root: Path, workers: int = 2, cores: int = 1, memory: str = "1536m"):
        import pyspark

        self.spark_home = Path(pyspark.__file__).parent
        self.spark_class = self.spark_home / "bin" / "spark-class"
        self.root = root
        self.n_workers, self.cores, self.memory = workers, cores, memory
        self.port, self.ui_port = _free_port(), _free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.worker_dirs = [root / f"worker-{i}" for i in range(workers)]

    def _env(self) -> dict:
        env = dict(os.environ)
        env.update(SPARK_HOME=str(self.spark_home), SPARK_LOCAL_IP="127.0.0.1", SPARK_NO_DAEMONIZE="1",
                   PYSPARK_PYTHON=sys.executable, SPARK_DAEMON_MEMORY="512m")
        return env

    def _spawn(self, name: str, *args: str) -> None:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as fh:
            self.procs.append(subprocess.Popen([str(self.spark_class), *args], stdout=fh, stderr=subprocess.STDOUT,
                                               env=self._env(), cwd=self.root, start_new_session=True))

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as resp:
            return json.load(resp)

    def start(self, timeout: float = 180) -> None:
        self._spawn("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(self.ui_port))
        for i, work in enumerate(self.worker_dirs):
            work.mkdir(parents=True)
            self._spawn(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                        "--cores", str(self.cores), "--memory", self.memory, "--work-dir", str(work),
                        "--webui-port", str(_free_port()))
        deadline = time.monotonic() + timeout
        while True:
            dead = [log.name for p, log in zip(self.procs, self.logs) if p.poll() is not None]
            if dead:
                raise RuntimeError(f"standalone cluster: {', '.join(dead)} exited\n{self.log_tail()}")
            try:
                alive = [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]
                if len(alive) == self.n_workers:
                    return
            except OSError:
                pass  # the master's UI is not up yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"standalone cluster: {self.n_workers} workers not registered after {timeout:.0f} s\n"
                                   f"{self.log_tail()}")
            time.sleep(1)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            out += [f"--- {log.name}", *text[-lines:]]
        return "\n".join(out)

    def app_dirs(self) -> list[list[Path]]:
        """Per worker, the executor folders (<work dir>/<app id>/<executor id>) it ran."""
        return [sorted(p for p in work.glob("app-*/*") if p.is_dir()) for work in self.worker_dirs]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = StandaloneCluster(tmp_path_factory.mktemp("standalone"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster_config(cluster, tmp_path_factory) -> Path:
    """A lakemine config for the cluster: the master URL, executors of one core each."""
    path = tmp_path_factory.mktemp("cluster-config") / "lakemine.yaml"
    path.write_text(yaml.safe_dump({"spark": {
        "master": cluster.url, "shuffle_partitions": 4, "driver_memory": "1g",
        "conf": {"spark.executor.memory": "1g", "spark.executor.cores": "1", "spark.cores.max": "2",
                 "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}}}))
    return path


def _lakemine(*args: str, config: Path, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEMINE_")}
    env["PYARROW_IGNORE_TIMEZONE"] = "1"
    proc = subprocess.run([*LAKEMINE, *args, "--config", str(config)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, f"lakemine {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _executors_since(cluster: StandaloneCluster, before: list[list[Path]]) -> list[list[Path]]:
    return [[d for d in now if d not in old] for now, old in zip(cluster.app_dirs(), before)]


def test_both_workers_registered_with_one_core_each(cluster):
    state = cluster.state()
    workers = [w for w in state["workers"] if w["state"] == "ALIVE"]
    assert len(workers) == 2
    assert [w["cores"] for w in workers] == [1, 1]
    assert state["url"] == cluster.url


def test_ingest_and_clean_on_the_cluster_match_local_mode(cluster, cluster_config, spark, cfg, tmp_path):
    from conftest import clean_lake, ingest_files
    from lakemine.io import schemas
    from lakemine.io.lake import Lake

    raw, remote_root = tmp_path / "raw", tmp_path / "cluster-lake"
    from lakemine.stages.generate import GenerateParams, generate

    manifest = generate(spark, str(raw), GenerateParams.from_config(None, customers=150, days=60, seed=9, dirty_rate=0.01,
                                                                    files=3))
    before = cluster.app_dirs()
    _lakemine("ingest", "--input", str(raw), "--lake", str(remote_root), config=cluster_config)
    _lakemine("clean", "--lake", str(remote_root), config=cluster_config)

    # both stages ran as cluster applications with an executor on each worker
    executors = _executors_since(cluster, before)
    assert all(len(e) == 2 for e in executors), executors

    remote = Lake.at(spark, str(remote_root))
    local = Lake.at(spark, str(tmp_path / "local-lake"))
    local_cfg = cfg.with_lake(local.root)
    ingest_files(local, local_cfg, str(raw))
    clean_lake(local, local_cfg)

    bronze = remote.read_table(schemas.BRONZE_TRANSACTIONS).count()
    quarantined = remote.read_table(schemas.BRONZE_QUARANTINE).count()
    assert bronze + quarantined == manifest["data_lines"]
    runs = {r["stage"]: r for r in remote.read_table(schemas.OPS_RUNS).collect()}
    assert runs["ingest"]["status"] == runs["clean"]["status"] == "succeeded"
    c = runs["clean"]
    assert (c["rows_in"], c["rows_out"], c["rows_quarantined"]) == (
        bronze, remote.read_table(schemas.SILVER_TRANSACTIONS).count(), remote.read_table(schemas.SILVER_QUARANTINE).count())

    def rows(lake, table, drop=("_ingested_at",)):
        df = lake.read_table(table)
        return df.drop(*[col for col in drop if col in df.columns])

    counts = {}
    for table in (schemas.SILVER_TRANSACTIONS, schemas.SILVER_QUARANTINE, schemas.BRONZE_QUARANTINE):
        a, b = rows(remote, table), rows(local, table)
        counts[table] = a.count()
        assert counts[table] == b.count(), table
        assert a.exceptAll(b).count() == 0 and b.exceptAll(a).count() == 0, table
    assert counts[schemas.SILVER_TRANSACTIONS] > 0 and counts[schemas.BRONZE_QUARANTINE] > 0, counts


def test_horovod_ranks_run_on_the_two_executors_and_agree(cluster, cluster_config, learn_lake, tmp_path):
    lake, _ = copy_lake(*learn_lake, tmp_path / "lake")
    before = cluster.app_dirs()
    out = _lakemine("train", "--lake", lake.root, "--backend", "horovod", "--workers", "2", "--epochs", "3",
                    "--batch-size", "64", config=cluster_config)
    assert re.search(r"horovod x 2", out), out[-2000:]
    versions = sorted(p.name for p in (tmp_path / "lake" / "models" / "churn").iterdir())
    meta = json.loads((tmp_path / "lake" / "models" / "churn" / versions[-1] / "metadata.json").read_text())

    assert meta["world_size"] == 2 and meta["backend"] == "horovod"
    assert set(meta["rank_digests"]) == {"0", "1"}
    assert meta["rank_digests"]["0"] == meta["rank_digests"]["1"]
    assert len(meta["history"]) == 3

    # each rank's working folder is an executor folder of a different worker
    executors = _executors_since(cluster, before)
    assert all(len(e) == 1 for e in executors), executors
    workdirs = {Path(p["workdir"]).resolve() for p in meta["placement"].values()}
    assert workdirs == {e[0].resolve() for e in executors}
