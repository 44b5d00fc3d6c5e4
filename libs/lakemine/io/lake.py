"""All Delta I/O. Stages name tables ("silver/transactions"); only this module builds paths.

Writes are idempotent by construction: `overwrite_as_of` and `replace_batches` replace exactly
the rows of one logical date or batch (Delta `replaceWhere`), `merge_into` upserts on keys.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from lakemine.core import storage
from lakemine.core.errors import StageError
from lakemine.io import schemas

log = logging.getLogger(__name__)

# Delta copies this session setting into the commitInfo.userMetadata of every commit made while
# it is set (a DataFrame write's own userMetadata option wins over it)
COMMIT_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
TAGGED_HISTORY = 64  # how far back a write looks for its own commit
_COMMIT_FILE = re.compile(r"^(\d{20})\.json$")  # a Delta log's commit file: <version>.json


def _write_tag(user_metadata: str | None) -> str | None:
    """The write tag a commit's userMetadata carries (None for any other metadata)."""
    try:
        meta = json.loads(user_metadata) if user_metadata else None
    except ValueError:
        return None
    return meta.get("write") if isinstance(meta, dict) else None


# Delta's optimistic-concurrency failures: another writer committed first, this commit was not made
CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
             "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
             "ProtocolChangedException", "DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED")


def conflict(exc: BaseException) -> str | None:
    """One line naming the Delta write conflict `exc` is ("ConcurrentAppendException: Files
    were added ..."), None when it is none."""
    text = f"{type(exc).__name__}: {exc}"
    found = re.search(r"(\w+Exception): (?:\[\w+\] )?(?:\w+Exception: )?([^\n]*)", text[text.find("[DELTA_"):]
                      if "[DELTA_" in text else text)
    if not any(c in text for c in CONFLICTS):
        return None
    if found is None or not any(c in found.group(1) for c in CONFLICTS):
        return text.splitlines()[0][:200]
    sentence = found.group(2).split(". ")[0].rstrip(".")
    return f"Delta {found.group(1)}: {sentence}"[:240]


def _dates_in(column: str, dates) -> str:
    """A SQL predicate: `column` is one of `dates`."""
    listed = ", ".join(f"DATE'{d.isoformat()}'" for d in sorted(dates))
    return f"`{column}` IN ({listed})"


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Lake:
    """A lake root (local folder or any Hadoop URI) and the session that reads it."""

    spark: SparkSession
    root: str
    # (table, version) of writes that made no commit: they wrote nothing on top of that version
    _unchanged: set = field(default_factory=set, compare=False, repr=False)
    # (table, version) -> operationMetrics of commits this Lake made, read with their version
    _metrics: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def at(cls, spark: SparkSession, root: str) -> "Lake":
        return cls(spark, storage.absolute(root))

    def with_session(self, spark: SparkSession) -> "Lake":
        """This lake read and written through another session; what it knows of its own
        writes (`rows_written`, `operation_metrics`) is shared."""
        return dataclasses.replace(self, spark=spark, _unchanged=self._unchanged, _metrics=self._metrics)

    def path(self, table: str) -> str:
        return f"{self.root}/{table}"

    def model_path(self, kind: str, version: str) -> str:
        """Folder of a saved model: <lake>/models/<kind>/<version>."""
        return f"{self.root}/models/{kind}/{version}"

    def exists(self, table: str) -> bool:
        return DeltaTable.isDeltaTable(self.spark, self.path(table))

    def read_table(self, table: str, version: int | None = None) -> DataFrame:
        """The table's current rows, or its rows at `version`. Missing table: StageError."""
        if not self.exists(table):
            raise StageError(f"table {table} does not exist in lake {self.root}")
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.path(table))

    def table_version(self, table: str) -> int | None:
        """Current Delta version of `table`, None when it does not exist: the newest commit
        file in its log (what Delta's own snapshot lists), read without a Spark job."""
        versions = self._log_versions(table)
        return versions[-1] if versions else None

    def _log_versions(self, table: str) -> list[int]:
        """The versions whose commit files `table`'s Delta log holds, oldest first."""
        names = storage.list_files(f"{self.path(table)}/_delta_log")
        return sorted(int(m.group(1)) for m in map(_COMMIT_FILE.match, names) if m)

    def _commit_info(self, table: str, version: int) -> dict | None:
        """The commitInfo action of `version`'s commit file (None when the file is gone)."""
        try:
            text = storage.read_bytes(f"{self.path(table)}/_delta_log/{version:020d}.json").decode("utf-8")
        except (FileNotFoundError, OSError):
            return None
        for line in text.splitlines():  # Delta writes commitInfo first
            action = json.loads(line) if line.strip() else {}
            if "commitInfo" in action:
                return action["commitInfo"]
        return None

    def commit_metadata(self, table: str, limit: int) -> list[tuple[int, str | None]]:
        """(version, userMetadata) of `table`'s last `limit` commits, newest first, read from
        its log's commit files ([] when the table does not exist)."""
        found = []
        for version in reversed(self._log_versions(table)[-limit:]):
            info = self._commit_info(table, version)
            if info is not None:
                found.append((version, info.get("userMetadata")))
        return found

    def history(self, table: str) -> DataFrame:
        if not self.exists(table):
            raise StageError(f"table {table} does not exist in lake {self.root}")
        return DeltaTable.forPath(self.spark, self.path(table)).history()

    def tables(self) -> list[str]:
        """Every Delta table under the root, as "layer/name", sorted (models and reports are not tables)."""
        found = []
        for layer in storage.list_dirs(self.root):
            if layer.startswith((".", "_")) or layer in ("models", "reports"):
                continue
            for name in storage.list_dirs(f"{self.root}/{layer}"):
                if storage.exists(f"{self.root}/{layer}/{name}/_delta_log"):
                    found.append(f"{layer}/{name}")
        return sorted(found)

    def optimize(self, table: str) -> dict:
        """OPTIMIZE (bin-packing compaction); returns Delta's file metrics. No commit when
        there is nothing to compact."""
        rows = DeltaTable.forPath(self.spark, self.path(table)).optimize().executeCompaction().collect()
        metrics = rows[0]["metrics"].asDict() if rows else {}
        return {"files_added": int(metrics.get("numFilesAdded", 0)), "files_removed": int(metrics.get("numFilesRemoved", 0))}

    def vacuum(self, table: str, retention_hours: int) -> None:
        """VACUUM: delete files no version of the last `retention_hours` needs. It runs in a
        child session made for this call (its own SQL settings, the same SparkContext), never
        changing the session others share: below Delta's safety default (168 h) the retention
        check is off there, and Delta's file listing asks for 4 tasks per core Spark has, not
        spark.sql.sources.parallelPartitionDiscovery.parallelism's default 10,000 (minutes of
        task scheduling for a small table on one machine) unless that setting was changed."""
        spark = self.spark.newSession()
        if retention_hours < 168:
            spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
        listing = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
        if self.spark.conf.get(listing, "10000") == "10000":
            spark.conf.set(listing, str(max(8, 4 * self.spark.sparkContext.defaultParallelism)))
        DeltaTable.forPath(spark, self.path(table)).vacuum(float(retention_hours))

    def operation_metrics(self, table: str, version: int | None) -> dict:
        """Delta's operationMetrics (strings) of the commit that made `version` (None: the
        latest); {} for the version a write that made no commit returned (see `commit`)."""
        if (table, version) in self._unchanged:
            return {}
        return self._operation_metrics(table, version)

    def _operation_metrics(self, table: str, version: int | None) -> dict:
        """Delta's operationMetrics of the commit that made `version` (None: the latest)."""
        if (table, version) in self._metrics:
            return self._metrics[(table, version)]
        commit = self.table_version(table) if version is None else version
        info = self._commit_info(table, commit) if commit is not None else None
        if info is not None:
            return {k: str(v) for k, v in (info.get("operationMetrics") or {}).items()}
        delta = DeltaTable.forPath(self.spark, self.path(table))
        history = delta.history(1) if version is None else delta.history(TAGGED_HISTORY).where(f"version = {int(version)}")
        rows = history.select("operationMetrics").collect()
        return dict(rows[0]["operationMetrics"] or {}) if rows else {}

    def rows_written(self, table: str, version: int | None = None) -> int:
        """New rows the commit that made `version` of the table wrote (default: its latest
        commit; pass the version a write returned, another writer may have committed since):
        Delta's numOutputRows less the rows it copied from files it rewrote, 0 when none."""
        if (table, version) in self._unchanged:
            return 0
        metrics = self._operation_metrics(table, version)
        return int(metrics.get("numOutputRows", 0)) - int(metrics.get("numCopiedRows", 0))

    def files_touched(self, table: str, version: int) -> tuple[int, int]:
        """(data files added, data files removed) by the commit that made `version` of `table`,
        from Delta's operation metrics; (0, 0) when it has none."""
        if (table, version) in self._unchanged:
            return 0, 0
        metrics = self._operation_metrics(table, version)

        def first(*names: str) -> int:  # WRITE, MERGE and OPTIMIZE name them differently
            return next((int(metrics[n]) for n in names if n in metrics), 0)

        return (first("numFiles", "numTargetFilesAdded", "numAddedFiles", "numFilesAdded"),
                first("numRemovedFiles", "numTargetFilesRemoved", "numFilesRemoved"))

    def partition_columns(self, table: str) -> list[str]:
        """The table's partition columns ([] when it has none or does not exist)."""
        if not self.exists(table):
            return []
        detail = DeltaTable.forPath(self.spark, self.path(table)).detail().first()
        return list(detail["partitionColumns"])

    def _write(self, df: DataFrame, table: str, mode: str, options: dict | None = None,
               partition_by: tuple[str, ...] = (), tag: str | None = None) -> int:
        """Write `df` and return the version this write created (not the table's latest: a
        concurrent writer may have committed after it). The commit's userMetadata (JSON, with
        any the caller gave in `options`) carries a tag that finds it: `tag`, or a new one."""
        options = dict(options or {})
        tag = tag or uuid.uuid4().hex
        meta = json.loads(options["userMetadata"]) if options.get("userMetadata") else {}
        options["userMetadata"] = json.dumps({**meta, "write": tag}, sort_keys=True)
        before = self.table_version(table)
        stats = [c for c in schemas.STATS_COLUMNS.get(table, ()) if c in df.columns]
        if stats and (before is None or (mode == "overwrite" and "replaceWhere" not in options)):
            options.setdefault("delta.dataSkippingStatsColumns", ",".join(stats))
        writer = df.write.format("delta").mode(mode)
        for key, value in options.items():
            writer = writer.option(key, value)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.save(self.path(table))
        return self.version_of_write(table, tag, before)

    def version_of_write(self, table: str, tag: str, before: int | None = None, full_history: bool = False) -> int:
        """The version of `table` whose commit carries write tag `tag`: the latest commit's
        when no one committed since (one log file read), else found further back (among the
        last TAGGED_HISTORY commits, or all with `full_history`). A write that changed nothing
        (Delta makes no commit for a replaceWhere that neither removes nor adds a row) leaves
        `before`, the version it wrote against, remembered as adding nothing."""
        versions = self._log_versions(table)
        for version in reversed(versions if full_history else versions[-TAGGED_HISTORY:]):
            info = self._commit_info(table, version)
            if info is not None and _write_tag(info.get("userMetadata")) == tag:
                # kept: rows_written and files_touched of this commit need no second read
                self._metrics[(table, version)] = {k: str(v) for k, v in (info.get("operationMetrics") or {}).items()}
                return version
        if before is None:
            raise StageError(f"table {table}: this write's commit ({tag}) is not among its last {TAGGED_HISTORY} versions")
        self._unchanged.add((table, before))
        return before

    def commit(self, table: str, action: Callable[[], object], tag: str | None = None) -> int:
        """Run `action` (a Delta MERGE, DELETE or UPDATE on `table`) with its commit tagged
        (`tag`, or a new one) and return the version it created, as `_write` does."""
        tag = tag or uuid.uuid4().hex
        before = self.table_version(table)
        previous = self.spark.conf.get(COMMIT_METADATA, None)
        self.spark.conf.set(COMMIT_METADATA, json.dumps({"write": tag}))
        try:
            action()
        finally:
            if previous is None:
                self.spark.conf.unset(COMMIT_METADATA)
            else:
                self.spark.conf.set(COMMIT_METADATA, previous)
        return self.version_of_write(table, tag, before)

    def overwrite(self, df: DataFrame, table: str, partition_by: tuple[str, ...] = (), options: dict | None = None,
                  tag: str | None = None) -> int:
        """Replace the whole table with `df`, partitioned by `partition_by` (a table partitioned
        otherwise, or with other columns, is replaced schema and all); `options` are Delta's
        (e.g. userMetadata for the commit). Returns the new version."""
        options = dict(options or {})
        if partition_by and self.exists(table) and self.partition_columns(table) != list(partition_by):
            options["overwriteSchema"] = "true"
        return self._write(df, table, "overwrite", options, partition_by, tag)

    def append(self, df: DataFrame, table: str, merge_schema: bool = False) -> int:
        return self._write(df, table, "append", {"mergeSchema": "true"} if merge_schema else None)

    def replace_where(self, df: DataFrame, table: str, predicate: str, merge_schema: bool = False,
                      partition_by: tuple[str, ...] = (), options: dict | None = None, tag: str | None = None) -> int:
        """Replace the rows matching `predicate` with `df` (whose rows must all match it);
        `merge_schema` adds `df`'s new columns to the table (older rows read them as null).
        A missing table is created, partitioned by `partition_by`."""
        if not self.exists(table):
            return self._write(df, table, "overwrite", options, partition_by, tag)
        options = {**(options or {}), "replaceWhere": predicate, **({"mergeSchema": "true"} if merge_schema else {})}
        return self._write(df, table, "overwrite", options, tag=tag)

    def overwrite_as_of(self, df: DataFrame, table: str, as_of: date | list[date], merge_schema: bool = False) -> int:
        """Idempotent write of logical dates (one, or a list in one commit): the table's rows
        of those dates become `df` (with `merge_schema`, columns new to the table are added,
        null in its other dates)."""
        dates = as_of if isinstance(as_of, list) else [as_of]
        return self.replace_where(df, table, _dates_in("as_of", dates), merge_schema=merge_schema, partition_by=("as_of",))

    def replace_dates(self, df: DataFrame, table: str, dates, column: str = "invoice_date",
                      options: dict | None = None, tag: str | None = None) -> int:
        """Idempotent write of whole dates: the table's rows whose `column` is one of `dates`
        become `df`, one file per date; a missing table is created partitioned by `column`, so
        a write touches only those dates' files."""
        return self.replace_where(df.repartition(column), table, _dates_in(column, dates), partition_by=(column,), options=options,
                                  tag=tag)

    def replace_batches(self, df: DataFrame, table: str, batch_ids: list[str]) -> int:
        """Idempotent write of ingest batches: the rows of `batch_ids` become `df` (bronze tables
        from before source profiles gain the new source columns)."""
        listed = ", ".join(_sql_string(b) for b in sorted(batch_ids))
        return self.replace_where(df, table, f"_batch_id IN ({listed})", merge_schema=True)

    def merge_into(
        self, df: DataFrame, table: str, keys: list[str], retries: int = 8,
        update_when: str | None = None, schema=None, target: str | None = None, tag: str | None = None,
    ) -> int:
        """Upsert `df` on `keys`: matched rows updated (only where `update_when` holds, with
        `t.` the table and `s.` the new rows), new rows inserted. `target`, a condition on `t.`
        that every matching row meets (e.g. its date), lets Delta read only the files that
        can hold matches.

        A missing table is first created empty (with `schema`, default `df`'s), so rows only
        ever arrive through MERGE. Retries on Delta's optimistic-concurrency conflicts, so
        concurrent writers of the same keys never leave duplicates.
        """
        for attempt in range(retries + 1):
            try:
                if not self.exists(table):
                    empty = self.spark.createDataFrame([], schema or df.schema)
                    self._write(empty, table, "append")
                condition = " AND ".join([f"t.`{k}` <=> s.`{k}`" for k in keys] + ([f"({target})"] if target else []))
                return self.commit(table, lambda: (
                    DeltaTable.forPath(self.spark, self.path(table))
                    .alias("t")
                    .merge(df.alias("s"), condition)
                    .whenMatchedUpdateAll(condition=update_when)
                    .whenNotMatchedInsertAll()
                    .execute()
                ), tag)
            except Exception as exc:  # Delta raises JVM exceptions wrapped by py4j
                name = type(exc).__name__ + " " + str(exc)[:300]
                retriable = ("Concurrent", "ProtocolChanged", "DELTA_PROTOCOL_CHANGED", "already exists")
                if attempt == retries or not any(r in name for r in retriable):
                    raise
                log.warning("merge into %s conflicted (%s); retry %d", table, name[:80], attempt + 1)
                time.sleep(0.3 * (attempt + 1))
        raise AssertionError("unreachable")
