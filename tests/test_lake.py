from __future__ import annotations

import datetime as dt

import pytest
from pyspark.testing import assertDataFrameEqual

from lakemine.core.config import load_config
from lakemine.core.errors import StageError

DDL = "customer_id string, as_of date, score double"
D1, D2 = dt.date(2011, 1, 1), dt.date(2011, 1, 2)


def test_overwrite_as_of_replaces_only_that_date(spark, lake):
    lake.overwrite_as_of(spark.createDataFrame([("a", D1, 1.0), ("b", D1, 2.0)], DDL), "gold/t", D1)
    lake.overwrite_as_of(spark.createDataFrame([("a", D2, 3.0)], DDL), "gold/t", D2)
    version = lake.overwrite_as_of(spark.createDataFrame([("c", D1, 9.0)], DDL), "gold/t", D1)
    assert version == 2 == lake.table_version("gold/t")
    assertDataFrameEqual(lake.read_table("gold/t"), spark.createDataFrame([("c", D1, 9.0), ("a", D2, 3.0)], DDL))
    assertDataFrameEqual(lake.read_table("gold/t", version=0),
                         spark.createDataFrame([("a", D1, 1.0), ("b", D1, 2.0)], DDL))
    assert [r["version"] for r in lake.history("gold/t").collect()] == [2, 1, 0]


def test_replace_batches_is_idempotent(spark, lake):
    ddl = "x string, _batch_id string"
    lake.replace_batches(spark.createDataFrame([("1", "b1"), ("2", "b1")], ddl), "bronze/t", ["b1"])
    lake.replace_batches(spark.createDataFrame([("3", "b2")], ddl), "bronze/t", ["b2"])
    lake.replace_batches(spark.createDataFrame([("1", "b1"), ("2", "b1")], ddl), "bronze/t", ["b1"])
    assertDataFrameEqual(lake.read_table("bronze/t"),
                         spark.createDataFrame([("1", "b1"), ("2", "b1"), ("3", "b2")], ddl))


def test_merge_into_upserts_on_keys_and_reruns_leave_the_same_rows(spark, lake):
    keys = ["customer_id", "as_of"]
    lake.merge_into(spark.createDataFrame([("a", D1, 0.1), ("b", D1, 0.2)], DDL), "gold/s", keys)
    update = spark.createDataFrame([("b", D1, 0.5), ("c", D1, 0.7)], DDL)
    lake.merge_into(update, "gold/s", keys)
    lake.merge_into(update, "gold/s", keys)
    expected = spark.createDataFrame([("a", D1, 0.1), ("b", D1, 0.5), ("c", D1, 0.7)], DDL)
    assertDataFrameEqual(lake.read_table("gold/s"), expected)


def test_reading_a_missing_table_names_it(lake):
    with pytest.raises(StageError, match="table gold/nope does not exist in lake"):
        lake.read_table("gold/nope")
    assert lake.table_version("gold/nope") is None


def _another_writer(spark, path: str) -> None:
    """A commit by someone else (its own commit metadata, as another process would have)."""
    (spark.createDataFrame([("z", D2, 9.9)], DDL).write.format("delta").mode("append")
     .option("userMetadata", "another writer").save(path))


def test_a_write_returns_the_version_it_made_when_another_writer_commits_right_after(spark, lake, monkeypatch):
    """A concurrent commit landing between a write and its version lookup (injected here as a
    real second append straight after the real save) must not be taken for the write's own:
    lineage and row counts follow the version the write made (issue 16)."""
    from pyspark.sql.readwriter import DataFrameWriter

    lake.overwrite(spark.createDataFrame([("a", D1, 1.0)], DDL), "gold/c")
    real_save, injected = DataFrameWriter.save, []

    def save_then_another_writer(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        if not injected:
            injected.append(True)
            _another_writer(spark, lake.path("gold/c"))

    monkeypatch.setattr(DataFrameWriter, "save", save_then_another_writer)
    ours = lake.append(spark.createDataFrame([("b", D1, 2.0), ("c", D1, 3.0)], DDL), "gold/c")
    monkeypatch.undo()
    assert injected and lake.table_version("gold/c") == ours + 1
    assert lake.rows_written("gold/c", ours) == 2
    assert lake.rows_written("gold/c") == 1  # the latest commit is the other writer's
    assertDataFrameEqual(lake.read_table("gold/c", ours),
                         spark.createDataFrame([("a", D1, 1.0), ("b", D1, 2.0), ("c", D1, 3.0)], DDL))


def test_a_merge_returns_the_version_it_made_when_another_writer_commits_right_after(spark, lake, monkeypatch):
    from delta.tables import DeltaMergeBuilder

    keys = ["customer_id", "as_of"]
    lake.merge_into(spark.createDataFrame([("a", D1, 0.1)], DDL), "gold/m", keys)
    real_execute, injected = DeltaMergeBuilder.execute, []

    def execute_then_another_writer(self):
        out = real_execute(self)
        if not injected:
            injected.append(True)
            _another_writer(spark, lake.path("gold/m"))
        return out

    monkeypatch.setattr(DeltaMergeBuilder, "execute", execute_then_another_writer)
    ours = lake.merge_into(spark.createDataFrame([("b", D1, 0.2)], DDL), "gold/m", keys)
    monkeypatch.undo()
    assert injected and lake.table_version("gold/m") == ours + 1
    assertDataFrameEqual(lake.read_table("gold/m", ours),
                         spark.createDataFrame([("a", D1, 0.1), ("b", D1, 0.2)], DDL))
    # the tag is gone from the session once the merge is done
    assert spark.conf.get("spark.databricks.delta.commitInfo.userMetadata", None) is None


def test_versions_and_commit_metrics_read_from_the_log_agree_with_deltas_history(spark, lake):
    """table_version, version_of_write and rows_written read the log's commit files, not
    Delta's history: the same versions and counts, across writes, merges, a write that changes
    nothing and a compaction."""
    keys = ["customer_id", "as_of"]
    assert lake.table_version("gold/h") is None
    made = [
        lake.overwrite_as_of(spark.createDataFrame([("a", D1, 1.0), ("b", D1, 2.0)], DDL), "gold/h", D1),
        lake.merge_into(spark.createDataFrame([("b", D1, 5.0), ("c", D1, 7.0)], DDL), "gold/h", keys),
        lake.overwrite_as_of(spark.createDataFrame([("d", D2, 3.0)], DDL), "gold/h", D2),
    ]
    lake.optimize("gold/h")
    history = {r["version"]: r for r in lake.history("gold/h").collect()}
    assert lake.table_version("gold/h") == max(history)
    for version in made:
        metrics = history[version]["operationMetrics"]
        expected = int(metrics.get("numOutputRows", 0)) - int(metrics.get("numCopiedRows", 0))
        assert lake.rows_written("gold/h", version) == expected
    # metrics of a commit this Lake did not make come from its commit file too
    fresh = type(lake).at(spark, lake.root)
    assert [fresh.rows_written("gold/h", v) for v in made] == [lake.rows_written("gold/h", v) for v in made]
    assert (lake.rows_written("gold/h", made[0]), lake.rows_written("gold/h", made[2])) == (2, 1)
    assert [v for v, _ in lake.commit_metadata("gold/h", 50)] == sorted(history, reverse=True)


def test_spark_jvms_get_the_configured_java_options_which_this_jvm_accepts():
    """`spark.java_options` (by default: HotSpot may compile methods over 8,000 bytes of
    bytecode, as Spark's generated code for clean's wide rows is; the parallel collector) reach
    the local session's driver, the spark-submit lines lakemine builds and the DAG's tasks; this
    machine's java starts with them and takes them as set. The suite's own JVMs run without
    them (conftest)."""
    import subprocess

    from lakemine.io.spark import settings
    from lakemine.orchestration.dags import dag_settings
    from lakemine.orchestration.jars import submit_args

    cfg = load_config(env={})
    options = cfg.spark.java_options
    assert options == "-XX:-DontCompileHugeMethods -XX:+UseParallelGC -XX:+UseAdaptiveSizePolicyWithSystemGC"
    local = settings(cfg)
    assert local["spark.driver.extraJavaOptions"].startswith(options + " -Dlog4j2.configurationFile=")
    assert "-Dlog4j2" not in settings(cfg, quiet=False)["spark.driver.extraJavaOptions"]
    args = submit_args(cfg)
    assert f"spark.driver.extraJavaOptions={options}" in args and f"spark.executor.extraJavaOptions={options}" in args
    conf = dag_settings(env={}).conf
    assert conf["spark.driver.extraJavaOptions"].startswith(options + " ") and conf["spark.executor.extraJavaOptions"] == options
    # submit.sh reads no lakemine config: its properties file names the same options
    from lakemine.orchestration.jars import REPO_ROOT

    props = dict(line.split(None, 1) for line in (REPO_ROOT / "infra" / "spark" / "spark-defaults.conf").read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    assert props["spark.driver.extraJavaOptions"].strip() == props["spark.executor.extraJavaOptions"].strip() == options
    # none configured: no option at all, the driver keeps only its log4j file
    none = load_config(env={"LAKEMINE_SPARK__JAVA_OPTIONS": '""'})
    assert not any("JavaOptions" in a for a in submit_args(none))
    assert settings(none)["spark.driver.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=")
    flags = subprocess.run(["java", *options.split(), "-XX:+PrintFlagsFinal", "-version"], capture_output=True,
                           text=True, check=True).stdout
    taken = {line.split()[1]: line.split()[3] for line in flags.splitlines() if line.split()[:1] == ["bool"]}
    assert taken["DontCompileHugeMethods"] == "false" and taken["UseParallelGC"] == "true", "java did not take the options"
    assert taken["UseAdaptiveSizePolicyWithSystemGC"] == "true", "java did not take the options"


def test_local_sessions_set_file_modes_without_a_chmod_process(spark, lake, cfg):
    """Local mode writes file:// through lakemine's NioLocalFileSystem (setup builds it): the
    modes Hadoop's own gives (0644 files, 0755 folders under its 022 umask), through java.nio
    instead of a chmod process per file."""
    import os
    import stat

    from lakemine.io.spark import settings
    from lakemine.orchestration.jars import LOCAL_FS_CLASS, local_fs_jar

    assert local_fs_jar(cfg) is not None, "scripts/setup.sh did not build .jars/local/lakemine-localfs.jar"
    assert settings(cfg)["spark.hadoop.fs.file.impl"] == LOCAL_FS_CLASS
    assert "spark.hadoop.fs.file.impl" not in settings(cfg, submitted=True)  # a cluster's own file system stands
    jvm = spark.sparkContext._jvm
    fs = jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI("file:///"), spark.sparkContext._jsc.hadoopConfiguration())
    assert fs.getClass().getName() == LOCAL_FS_CLASS

    lake.overwrite(spark.createDataFrame([("a", D1, 1.0), ("b", D2, 2.0)], DDL), "gold/t", partition_by=("as_of",))
    root = lake.path("gold/t")
    modes = {}
    for folder, dirs, files in os.walk(root):
        modes[os.path.relpath(folder, root)] = stat.S_IMODE(os.stat(folder).st_mode)
        for name in files:
            modes[os.path.relpath(os.path.join(folder, name), root)] = stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
    parquet = [k for k in modes if k.endswith(".parquet")]
    assert len(parquet) == 2 and {modes[k] for k in parquet} == {0o644}
    assert modes["as_of=2011-01-01"] == modes["as_of=2011-01-02"] == 0o755
    assert lake.read_table("gold/t").count() == 2


def test_bronze_and_silver_keep_statistics_of_their_lineage_columns_only(spark, lake):
    """The tables written a row per line keep Delta's per-file statistics of the columns in
    schemas.STATS_COLUMNS only, set when lakemine creates the table and kept by later batches;
    other tables keep Delta's default (every column here)."""
    import json

    from lakemine.io import schemas

    ddl = "InvoiceNo string, Description string, _source_file string, _line long, _batch_id string"
    bronze, lineage = schemas.BRONZE_TRANSACTIONS, {"_batch_id", "_source_file", "_line"}

    def stats(table):
        log = spark.read.json(lake.path(table) + "/_delta_log/*.json").where("add IS NOT NULL")
        return [json.loads(r["stats"]) for r in log.select("add.stats").collect()]

    def properties(table):
        return spark.sql(f"DESCRIBE DETAIL delta.`{lake.path(table)}`").first()["properties"]

    lake.replace_batches(spark.createDataFrame([("1", "MUG", "f.csv", 2, "b1"), ("2", "BAG", "f.csv", 3, "b1")], ddl), bronze, ["b1"])
    lake.replace_batches(spark.createDataFrame([("3", "JAR", "g.csv", 2, "b2")], ddl), bronze, ["b2"])
    lake.overwrite(spark.createDataFrame([("a", D1, 1.0)], DDL), "gold/t")

    assert properties(bronze)["delta.dataSkippingStatsColumns"] == "_batch_id,_source_file,_line"
    files = [set(s["minValues"]) for s in stats(bronze)]
    assert len(files) >= 2 and all(f == lineage for f in files)  # the second batch's file too
    assert lake.read_table(bronze).where("_batch_id = 'b2'").count() == 1
    assert "delta.dataSkippingStatsColumns" not in properties("gold/t")
    assert [set(s["minValues"]) for s in stats("gold/t")] == [{"customer_id", "as_of", "score"}]
