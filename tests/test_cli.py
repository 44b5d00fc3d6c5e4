from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import HOUSEHOLD_PROFILE, REPO, write_lines
from lakemine.cli import main
from lakemine.io import schemas

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"


def test_missing_input_exits_2_with_one_line(tmp_path, capsys):
    code = main(["ingest", "--input", str(tmp_path / "nope"), "--lake", str(tmp_path / "lake")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"lakemine ingest: error: {tmp_path / 'nope'}: no such file or directory"]
    assert not (tmp_path / "lake").exists()


def test_wrong_columns_exit_2_naming_the_file(spark, tmp_path, capsys):
    path = write_lines(tmp_path / "orders.csv", ["order,sku", "1,2"])
    code = main(["ingest", "--input", str(path), "--lake", str(tmp_path / "lake")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lakemine")]
    assert code == 2
    assert len(err) == 1 and "orders.csv: columns ['order', 'sku'] match no source profile" in err[0]
    assert not (tmp_path / "lake").exists()


def test_clean_without_bronze_exits_1_naming_the_table(spark, tmp_path, capsys):
    code = main(["clean", "--lake", str(tmp_path / "lake")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lakemine")]
    assert code == 1
    assert err == [f"lakemine clean: failed: table bronze/transactions does not exist in lake {tmp_path / 'lake'}"]


@pytest.mark.parametrize("argv", [["ingest"], ["clean", "--as-of", "2011-13-01"], ["generate", "--out", "x", "--dirty-rate", "2"]])
def test_bad_arguments_exit_2(argv, capsys):
    """argparse refuses what does not parse (SystemExit 2); a value outside the config's rules
    is refused by the same check as a config file (exit 2, before anything starts)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_config_value_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("clean:\n  outlier_policy: drop\n")
    code = main(["clean", "--config", str(path), "--lake", str(tmp_path / "lake")])
    assert code == 2
    assert "'clean.outlier_policy' has value 'drop'; allowed: quarantine, cap" in capsys.readouterr().err


def test_run_generates_ingests_cleans_and_summarizes(spark, tmp_path, capsys):
    lake = tmp_path / "lake"
    code = main(["run", "--lake", str(lake), "--customers", "40", "--days", "60", "--dirty-rate", "0.01"])
    out = capsys.readouterr().out
    assert code == 0
    for expected in ("silver/transactions", "quarantined by reason", "conservation (this run)", "wall time per stage",
                     "not trained: no complete churn labels", "report: ", "recommendations: ",
                     "held-out last baskets of", "demand forecasts: "):
        assert expected in out
    from lakemine.io.lake import Lake

    assert Lake.at(spark, str(lake)).exists(schemas.SILVER_TRANSACTIONS)


def to_household_shape(raw_dir, out_dir) -> None:
    """Generated UCI-layout exports rewritten as another retailer's: household, basket, product,
    quantity, line sales value, ISO timestamp, store; no description. Lines that do not parse
    into the eight fields are copied as they are (ingest quarantines them either way)."""
    import csv
    import io
    from datetime import datetime

    out_dir.mkdir(parents=True)
    for src in sorted(raw_dir.glob("*.csv")):
        text = src.read_bytes().decode("utf-8", errors="surrogateescape").splitlines()
        out = ["household_key,BASKET_ID,PRODUCT_ID,QUANTITY,SALES_VALUE,TRANS_TIMESTAMP,STORE_ID"]
        for line in text[1:]:
            fields = next(csv.reader(io.StringIO(line)), [])
            if len(fields) != 8 or '"' in line:
                out.append(line)
                continue
            invoice, stock, _, qty, when, price, customer, country = fields
            try:
                total = f"{int(qty) * float(price):.2f}"
            except ValueError:
                total = price
            try:
                when = datetime.strptime(when, "%m/%d/%Y %H:%M").isoformat(sep=" ")
            except ValueError:
                pass
            out.append(",".join([customer, invoice, stock, qty, total, when, country]))
        (out_dir / src.name).write_bytes("\n".join(out).encode("utf-8", errors="surrogateescape") + b"\n")


@pytest.mark.slow
def test_run_with_input_in_a_second_schema_trains_scores_and_reports(spark, tmp_path, capsys):
    """`lakemine run --input --source` on a year of exports in another retailer's schema
    (line totals, negative-quantity returns, London times, no descriptions): every stage, the
    training snapshots, a Horovod model against the baseline, scores, drift and the report."""
    from lakemine.core import storage
    from lakemine.io.lake import Lake
    from lakemine.stages.generate import GenerateParams, generate

    raw, lake_dir = tmp_path / "raw", tmp_path / "lake"
    generate(spark, str(raw), GenerateParams.from_config(None, customers=300, days=300, seed=9, dirty_rate=0.005))
    to_household_shape(raw, tmp_path / "household")
    (tmp_path / "profile.yaml").write_text(HOUSEHOLD_PROFILE)
    code = main(["run", "--input", str(tmp_path / "household"), "--source", "household", "--lake", str(lake_dir),
                 "--epochs", "4", "--config", str(tmp_path / "profile.yaml"), "--skip-slow"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    out = captured.out
    for expected in ("association rules as of", "customer segments", "churn model", "validation AUC",
                     "logistic-regression baseline", "scores written: ", "wall time per stage", "recommendations: "):
        assert expected in out, expected
    # --skip-slow (the 40-customer run above has both): no held-out evaluation, no forecast
    assert "held-out" not in out and "demand forecasts" not in out and "forecast skipped (--skip-slow)" in captured.err
    for stage in ("features", "fpgrowth", "recommend", "kmeans", "train", "score", "report"):
        assert f"\n  {stage:<10}" in out, stage
    assert "training snapshots: " in captured.err  # progress on stderr
    lake = Lake.at(spark, str(lake_dir))
    dates = sorted(r["as_of"] for r in lake.read_table(schemas.GOLD_CUSTOMER_FEATURES).select("as_of").distinct().collect())
    assert len(dates) == 3 and (dates[-1] - dates[1]).days == 90 and (dates[1] - dates[0]).days == 30
    scored = lake.read_table(schemas.GOLD_CUSTOMER_SCORES).select("as_of").distinct().collect()
    assert [r["as_of"] for r in scored] == [dates[-1]]
    report = out.split("report: ", 1)[1].split()[0]
    assert report == f"{lake.root}/reports/{dates[-1]}/report.html" and storage.exists(report)
    assert {r["_source"] for r in lake.read_table(schemas.BRONZE_TRANSACTIONS).select("_source").distinct().collect()} == {
        "household"}
    assert lake.read_table(schemas.SILVER_TRANSACTIONS).where("is_return").count() > 0


def _spark_submit(env: dict, master: str) -> list[str]:
    """The spark-submit command line a user runs (Delta jars and conf from lakemine.orchestration.submit)."""
    submit_args = subprocess.run(
        [sys.executable, "-m", "lakemine.orchestration.submit"], check=True, capture_output=True, text=True, env=env
    ).stdout.split()
    env["PYSPARK_PYTHON"] = sys.executable
    return [str(REPO / ".venv" / "bin" / "spark-submit"), "--master", master, *submit_args]


@pytest.mark.slow
def test_package_prints_a_submit_line_that_runs(tmp_path, venv_env, capsys):
    """`lakemine package`: the zip for --py-files, and the printed spark-submit line works as printed."""
    import shlex
    import zipfile

    write_lines(tmp_path / "raw" / "a.csv", [HEADER, "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom"])
    lake = tmp_path / "lake"
    assert main(["ingest", "--input", str(tmp_path / "raw"), "--lake", str(lake)]) == 0
    capsys.readouterr()
    assert main(["package", "--out", str(tmp_path / "dist"), "--master", "local[1]", "--stage", "clean",
                 "--lake", str(lake)]) == 0
    out = capsys.readouterr().out.splitlines()
    zip_path = out[0].split("package: ", 1)[1].split(" (")[0]
    assert "lakemine/cli.py" in zipfile.ZipFile(zip_path).namelist()
    line = shlex.split(out[1])
    assert line[0] == "spark-submit" and line[line.index("--py-files") + 1] == zip_path
    proc = subprocess.run(line, capture_output=True, text=True, env=venv_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clean: status=succeeded in=1 out=1" in proc.stdout

    # the edge-node script: package, properties file, Delta jars (--offline) and the config shipped
    (tmp_path / "c.yaml").write_text("maintain:\n  retention_hours: 200\n")
    env = dict(venv_env, LAKEMINE_CONFIG=str(tmp_path / "c.yaml"))
    proc = subprocess.run([str(REPO / "infra" / "submit" / "submit.sh"), "--master", "local[1]", "--offline",
                           "maintain", "--lake", str(lake), "--table", "bronze/transactions"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "maintain: status=succeeded" in proc.stdout and "retention 200 h" in proc.stdout, proc.stdout


SESSION_PROBE = """
import json, sys
from lakemine.core.config import load_config
from lakemine.io.spark import session

def probe(spark):
    return {k: spark.conf.get(k, None) for k in ("spark.sql.shuffle.partitions", "spark.ui.enabled")}

cluster = session(load_config(None), submitted=True)  # the packaged defaults: nothing set by the user
user = session(load_config(sys.argv[1]), submitted=True)  # the user's config sets shuffle partitions
print("PROBE", json.dumps({"cluster": probe(cluster), "user": probe(user), "shared": probe(cluster)}))
"""


@pytest.mark.slow
def test_a_submitted_session_keeps_the_cluster_settings_unless_the_user_config_sets_them(tmp_path, venv_env):
    """Under spark-submit the cluster's spark.sql.shuffle.partitions and spark.ui.enabled stand
    (lakemine's local defaults 8 and false do not override them); a config that sets shuffle
    partitions gets them, also when a session already runs, without changing that session."""
    (tmp_path / "probe.py").write_text(SESSION_PROBE)
    (tmp_path / "user.yaml").write_text("spark:\n  shuffle_partitions: 5\n")
    proc = subprocess.run(
        [*_spark_submit(venv_env, "local[1]"), "--conf", "spark.sql.shuffle.partitions=37", "--conf", "spark.ui.enabled=true",
         "--conf", "spark.ui.port=0", str(tmp_path / "probe.py"), str(tmp_path / "user.yaml")],
        capture_output=True, text=True, env=venv_env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.split("PROBE ", 1)[1])
    assert probe["cluster"] == {"spark.sql.shuffle.partitions": "37", "spark.ui.enabled": "true"}
    assert probe["user"] == {"spark.sql.shuffle.partitions": "5", "spark.ui.enabled": "true"}
    assert probe["shared"] == probe["cluster"]


def test_a_second_config_in_one_process_gets_its_sql_settings_in_a_child_session(spark, cfg, caplog):
    """getOrCreate would hand back the running session and drop the new config's settings: the
    SQL ones now apply to a child session (the shared one keeps its own), static ones differing
    are named in a warning."""
    from lakemine.core.config import load_config
    from lakemine.io.spark import session

    other = load_config(env={"LAKEMINE_SPARK__MASTER": "local[2]", "LAKEMINE_SPARK__SHUFFLE_PARTITIONS": "3",
                             "LAKEMINE_SPARK__DRIVER_MEMORY": "3g"})
    with caplog.at_level("WARNING", logger="lakemine.io.spark"):
        child = session(other)
    assert child.conf.get("spark.sql.shuffle.partitions") == "3"
    assert spark.conf.get("spark.sql.shuffle.partitions") == str(cfg.spark.shuffle_partitions)
    assert child.sparkContext is spark.sparkContext
    assert f"spark.driver.memory=3g (running: {cfg.spark.driver_memory})" in caplog.text
    assert session(cfg) is spark  # same settings: the running session itself


def test_the_driver_jvm_hands_its_free_heap_back_before_training_processes_start(spark):
    """`release_free_heap`: after a query that grew the heap, a full collection gives the
    committed heap it no longer needs back to the system (what train and tune call first)."""
    from lakemine.io.spark import release_free_heap

    spark.range(4_000_000).selectExpr("cast(id * 7919 as string) s").orderBy("s").selectExpr("count(*)").collect()
    runtime = spark._jvm.java.lang.Runtime.getRuntime()
    before = runtime.totalMemory()
    freed = release_free_heap(spark)
    assert freed > 0 and runtime.totalMemory() < before


HEAP_PROBE = """
import json
from lakemine.core.config import load_config
from lakemine.io.spark import release_free_heap, session

spark = session(load_config(env={}))  # the packaged defaults, their JVM options included
jvm = spark._jvm
args = [a for a in jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments() if a.startswith("-XX")]
bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
    jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
ratios = lambda: [bean.getVMOption(n).getValue() for n in ("MinHeapFreeRatio", "MaxHeapFreeRatio")]
spark.range(8_000_000).selectExpr("cast(id * 7919 as string) s").orderBy("s").selectExpr("count(*)").collect()
runtime, was = jvm.java.lang.Runtime.getRuntime(), ratios()
before = runtime.totalMemory()
freed = release_free_heap(spark)
print("PROBE", json.dumps({"args": args, "before": before, "after": runtime.totalMemory(), "freed": freed,
                           "ratios": [was, ratios()]}))
"""


@pytest.mark.slow
def test_the_default_jvm_options_driver_hands_its_free_heap_back(tmp_path, venv_env):
    """With lakemine's default JVM options (the parallel collector) the driver gives its free heap
    back too: that collector resizes on `System.gc()` only with
    `-XX:+UseAdaptiveSizePolicyWithSystemGC`, and `release_free_heap` lowers the heap's free ratios
    for that one collection, then puts them back (without the flag: 15 MiB of 653 given back)."""
    (tmp_path / "probe.py").write_text(HEAP_PROBE)
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py")], capture_output=True, text=True, env=venv_env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.split("PROBE ", 1)[1])
    assert {"-XX:+UseParallelGC", "-XX:+UseAdaptiveSizePolicyWithSystemGC"} <= set(probe["args"]), probe["args"]
    assert probe["freed"] > 0 and probe["after"] < probe["before"], probe
    assert probe["ratios"][0] == probe["ratios"][1], "the heap free ratios were not put back"
