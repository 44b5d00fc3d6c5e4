"""`lakemine forget`: erase customers from the lake, history and model copies included.

For each erased id (GDPR art. 17):

1. its keyed hash goes to `ops/erasures` first (never the id), so whatever happens next, the
   id is known as erased;
2. every churn model whose training or validation dates hold the customer's features is
   flagged in its metadata (`erasure`) and its Parquet copy of the training data
   (`models/churn/<version>/data/`) is deleted; the next scheduled day retrains. A model
   search's data copy left by a killed `lakemine tune` (`models/tune/<run>/`) is deleted too;
3. its rows are deleted from every table holding customer rows: bronze and silver lines and
   their quarantines (raw lines included), customer days, features, labels, segments, scores
   and recommendations. Baskets keep their items with the customer id set to null, so rules
   and forecasts stay what they were;
4. every table it touched loses the versions from before the erasure: VACUUM with no
   retention deletes the old data files, a checkpoint is written at the new version and the
   Delta log's older commit files (whose statistics may name the id) are deleted. Time travel
   to a version before the erasure is no longer possible on those tables.

The rows are matched through a MERGE against a small table of the ids, so no id ends up in a
commit's recorded predicate. Every step is idempotent: a run killed anywhere and re-run with
the same ids finishes the job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Callable

import pyspark.sql.functions as F
from delta.tables import DeltaTable

from lakemine.core import privacy, storage
from lakemine.core.config import Config, PrivacyConfig, StageParams
from lakemine.core.errors import UsageError
from lakemine.io import schemas
from lakemine.io.lake import COMMIT_METADATA, Lake
from lakemine.io.runs import Run, record_run
from lakemine.stages import features as features_stage

STAGE = "forget"
MODEL_KIND = "churn"
RAW = "raw"           # a raw-string table (bronze, quarantines): CustomerID as read, and the raw line
CUSTOMER = "customer"  # a table with a customer_id column: rows deleted
BASKETS = "baskets"   # gold/baskets: the id set to null, the items kept
# table -> how its rows name a customer
TABLES: dict[str, str] = {
    schemas.BRONZE_TRANSACTIONS: RAW,
    schemas.BRONZE_QUARANTINE: RAW,
    schemas.SILVER_TRANSACTIONS: CUSTOMER,
    schemas.SILVER_QUARANTINE: RAW,
    schemas.GOLD_BASKETS: BASKETS,
    schemas.GOLD_CUSTOMER_DAYS: CUSTOMER,
    schemas.GOLD_CUSTOMER_FEATURES: CUSTOMER,
    schemas.GOLD_LABELS: CUSTOMER,
    schemas.GOLD_CUSTOMER_SEGMENTS: CUSTOMER,
    schemas.GOLD_CUSTOMER_SCORES: CUSTOMER,
    schemas.GOLD_RECOMMENDATIONS: CUSTOMER,
}
_LOG_FILE = re.compile(r"^\.?(\d{20})\.")  # a commit, checksum or checkpoint file, or its hidden .crc


@dataclass(frozen=True)
class ForgetParams(PrivacyConfig, StageParams):
    """The privacy section (where the key is), the ids to erase and a progress callback."""

    SECTION = "privacy"
    customers: tuple[str, ...] = ()
    as_of: date | None = None
    progress: Callable[[str], None] | None = None


@dataclass
class Erasure:
    """What `run` did: rows per table (deleted, or anonymized for baskets), the models
    flagged, and per touched table the first version still readable."""

    customers: int
    rows: dict[str, int] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    first_versions: dict[str, int] = field(default_factory=dict)


def read_ids(values: list[str] | None, path: str | None) -> tuple[str, ...]:
    """The ids of --customer and of --from-file (one per line, blank lines and # comments
    skipped), normalized as silver holds them, in order, without repeats."""
    given = list(values or [])
    if path:
        if not storage.exists(path):
            raise UsageError(f"--from-file {path}: no such file")
        text = storage.read_bytes(path).decode("utf-8-sig")
        given += [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    ids = tuple(dict.fromkeys(privacy.normalize_id(v) for v in given if privacy.normalize_id(v)))
    if not ids:
        raise UsageError("no customer to forget: give --customer ID (repeatable) or --from-file F")
    return ids


def _condition(kind: str, raw_line: bool = True) -> str:
    """The MERGE condition of a table kind: `t` the table, `s` the ids (id, pattern). A raw
    table matches the parsed id and, with `raw_line`, a line that did not parse into fields
    (no CustomerID) whose raw text holds the id as a field."""
    if kind == RAW:
        parsed = "regexp_replace(trim(t.CustomerID), '\\\\.0+$', '') = s.id"
        return f"{parsed} OR (t.CustomerID IS NULL AND t._raw RLIKE s.pattern)" if raw_line else parsed
    # the id, or its keyed hash where privacy.pseudonymize wrote that (either, should it have changed)
    return "t.customer_id IN (s.id, s.hash)"


def _ids_frame(spark, hashes: dict[str, str]):
    """(name and id: the id, hash: its keyed hash, pattern: the id as a field of a raw line)."""
    rows = [(i, i, h, f"(^|[^0-9A-Za-z]){re.escape(i)}(\\.0+)?([^0-9A-Za-z]|$)") for i, h in hashes.items()]
    return spark.createDataFrame(rows, "name string, id string, hash string, pattern string")


def _matches(lake: Lake, table: str, kind: str, ids) -> dict[str, int]:
    """Rows of `table` per erased id (before anything is deleted)."""
    df = lake.read_table(table)
    condition = _condition(kind, "_raw" in df.columns)
    counts = df.alias("t").join(ids.alias("s"), F.expr(condition)).groupBy("s.name").count().collect()
    return {r["name"]: r["count"] for r in counts}


def _erase(lake: Lake, table: str, kind: str, ids) -> int:
    """Delete (or, for baskets, anonymize) the erased ids' rows of `table`; rows touched."""
    condition = _condition(kind, "_raw" in lake.read_table(table).columns)
    version = lake.commit(table, lambda: _merge(lake, table, ids, condition, kind))
    metrics = lake.operation_metrics(table, version)  # {} when the MERGE matched nothing (no commit)
    touched = int(metrics.get("numTargetRowsDeleted", 0)) + int(metrics.get("numTargetRowsUpdated", 0))
    if touched and _table_property(lake, table, "delta.enableDeletionVectors") == "true":
        # deleted rows would stay in their files, marked by deletion vectors: rewrite those files
        lake.spark.sql(f"REORG TABLE delta.`{lake.path(table)}` APPLY (PURGE)")
    return touched


def _table_property(lake: Lake, table: str, name: str) -> str | None:
    properties = DeltaTable.forPath(lake.spark, lake.path(table)).detail().first()["properties"] or {}
    return properties.get(name)


def _merge(lake: Lake, table: str, ids, condition: str, kind: str) -> None:
    merge = DeltaTable.forPath(lake.spark, lake.path(table)).alias("t").merge(ids.alias("s"), condition)
    if kind == BASKETS:
        merge = merge.whenMatchedUpdate(set={"customer_id": "CAST(NULL AS STRING)"})
    else:
        merge = merge.whenMatchedDelete()
    merge.execute()


def _cut_history(lake: Lake, table: str, run_id: str, mark: dict | None = None) -> int:
    """VACUUM with no retention, a marker commit (its commit metadata `mark`, when given), a
    checkpoint at it and the log's older files deleted: the table's first readable version
    from now on (returned)."""
    lake.vacuum(table, 0)
    path = lake.path(table)
    previous = lake.spark.conf.get(COMMIT_METADATA, None)
    if mark is not None:
        lake.spark.conf.set(COMMIT_METADATA, json.dumps(mark))
    try:
        lake.spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('lakemine.erasure' = '{run_id}')")
    finally:
        if mark is not None:
            lake.spark.conf.unset(COMMIT_METADATA) if previous is None else lake.spark.conf.set(COMMIT_METADATA, previous)
    jvm = lake.spark.sparkContext._jvm
    log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(lake.spark._jsparkSession, path)
    log.checkpoint()
    first = int(storage.read_json(f"{path}/_delta_log/_last_checkpoint")["version"])
    latest = lake.table_version(table)
    if first != latest:  # the checkpoint must be of the marker commit, after every erasure commit
        raise RuntimeError(f"{table}: checkpoint at version {first}, expected {latest}")
    for name in storage.list_files(f"{path}/_delta_log"):
        m = _LOG_FILE.match(name)
        if m and int(m.group(1)) < first:
            storage.delete(f"{path}/_delta_log/{name}")
    # the sidecars of V2 checkpoints: a classic checkpoint (the default) uses none, so those
    # left belong to the deleted ones; a V2 checkpoint's own are kept
    sidecars = f"{path}/_delta_log/_sidecars"
    if storage.exists(sidecars) and _table_property(lake, table, "delta.checkpointPolicy") != "v2":
        for name in storage.list_files(sidecars):
            storage.delete(f"{sidecars}/{name}")
    return first


def _already_cut(lake: Lake, table: str) -> bool:
    """Whether the table's log starts and ends at its last checkpoint: an earlier forget cut
    its history and nothing was committed since (a run killed after its MERGE, or after its
    marker commit, has commits after the checkpoint and is cut again)."""
    log = f"{lake.path(table)}/_delta_log"
    if not storage.exists(f"{log}/_last_checkpoint"):
        return False
    first = int(storage.read_json(f"{log}/_last_checkpoint")["version"])
    versions = [int(m.group(1)) for m in map(_LOG_FILE.match, storage.list_files(log)) if m]
    return bool(versions) and min(versions) == first == lake.table_version(table)


def _flag_models(lake: Lake, ids, run_id: str, now: datetime) -> list[str]:
    """Flag each churn model trained on an erased customer's features and delete its copy of
    the training data; the versions flagged (by this run or an earlier one)."""
    searches = f"{lake.root}/models/tune"  # a search deletes its data copy when it ends; one killed may not have
    for run in storage.list_dirs(searches) if storage.exists(searches) else []:
        storage.delete_dir(f"{searches}/{run}")
    root = f"{lake.root}/models/{MODEL_KIND}"
    if not storage.exists(root) or not lake.exists(schemas.GOLD_CUSTOMER_FEATURES):
        return []
    features = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES).join(ids, F.col("customer_id").isin(F.col("id"), F.col("hash")))
    seen_dates = {r["as_of"].isoformat() for r in features.select("as_of").distinct().collect()}
    flagged = []
    for version in sorted(storage.list_dirs(root)):
        meta_path = f"{root}/{version}/metadata.json"
        if not storage.exists(meta_path):  # a training run that never finished: its data copy goes
            storage.delete_dir(f"{root}/{version}/data")
            continue
        meta = storage.read_json(meta_path)
        split = meta.get("split") or {}
        dates = set(split.get("train_dates") or []) | set(split.get("val_dates") or [])
        if meta.get("erasure"):
            flagged.append(version)
            if storage.exists(f"{root}/{version}/data"):
                storage.delete_dir(f"{root}/{version}/data")
            continue
        if not dates & seen_dates:
            continue
        if storage.exists(f"{root}/{version}/data"):
            storage.delete_dir(f"{root}/{version}/data")
        meta["erasure"] = {"run_id": run_id, "at": now.isoformat(), "training_data": "deleted",
                           "note": "trained on data that included an erased customer: retrain"}
        storage.write_json(meta_path, meta)
        flagged.append(version)
    return flagged


def _staging(lake: Lake, ids: tuple[str, ...]) -> int:
    """Delete the workbook sheets staged as CSV under <lake>/_staging that hold an erased id."""
    root = f"{lake.root}/_staging/xlsx"
    if not storage.exists(root):
        return 0
    patterns = [re.compile(f"(^|[^0-9A-Za-z]){re.escape(i)}(\\.0+)?([^0-9A-Za-z]|$)".encode()) for i in ids]
    removed = 0
    for name in storage.list_files(root):
        data = storage.read_bytes(f"{root}/{name}")
        if any(p.search(data) for p in patterns):
            storage.delete(f"{root}/{name}")
            removed += 1
    return removed


def run(lake: Lake, cfg: Config, p: ForgetParams) -> Run:
    """Erase `p.customers`; `Run.result` is an Erasure. Needs the erasure key (see privacy)."""
    key = privacy.load_key(p.key_env, p.key_file, lake.root)
    ids = tuple(dict.fromkeys(privacy.normalize_id(c) for c in p.customers))
    hashes = {i: privacy.id_hash(key, i) for i in ids}
    now = datetime.now(timezone.utc)
    as_of = p.as_of or now.date()
    say = p.progress or (lambda text: None)
    params = {"customers": len(ids), "id_hashes": sorted(hashes.values())}
    if lake.exists(schemas.OPS_ERASURES):
        privacy.require_same_key(key, {r["key_check"] for r in lake.read_table(schemas.OPS_ERASURES).select("key_check").collect()})
    with record_run(lake, STAGE, as_of, params) as run:
        frame = _ids_frame(lake.spark, hashes)
        tables = [t for t in TABLES if lake.exists(t)]
        say(f"counting the rows of {len(ids)} customer(s) in {len(tables)} tables")
        per_id: dict[str, dict[str, int]] = {i: {} for i in ids}
        for table in tables:
            for i, n in _matches(lake, table, TABLES[table], frame).items():
                per_id[i][table] = n
        rows = [(hashes[i], now, run.run_id, per_id[i], privacy.key_check(key)) for i in ids]
        erasures = lake.spark.createDataFrame(rows, schemas.ERASURES_SCHEMA)
        # first: the hashes, so the ids count as erased whatever happens next; an id erased
        # before keeps its first record
        run.outputs[schemas.OPS_ERASURES] = lake.merge_into(erasures, schemas.OPS_ERASURES, ["id_hash"], update_when="false")
        result = Erasure(customers=len(ids))
        say("models trained on these customers")
        result.models = _flag_models(lake, frame, run.run_id, now)
        # gold/customer_days records the silver version it was brought up to; when it was up to
        # date, its marker commit records silver's new first version, so the next features run
        # goes on incrementally (its history before that is gone) and baskets stay as erased
        current = (lake.exists(schemas.SILVER_TRANSACTIONS) and lake.exists(schemas.GOLD_CUSTOMER_DAYS)
                   and features_stage._built_from(lake) == lake.table_version(schemas.SILVER_TRANSACTIONS))
        for i, table in enumerate(tables, 1):
            say(f"[{i}/{len(tables)}] {table}")
            result.rows[table] = _erase(lake, table, TABLES[table], frame)
            if result.rows[table] or not _already_cut(lake, table):
                mark = ({"silver_version": result.first_versions[schemas.SILVER_TRANSACTIONS]}
                        if table == schemas.GOLD_CUSTOMER_DAYS and current else None)
                result.first_versions[table] = _cut_history(lake, table, run.run_id, mark)
            else:  # a rerun with nothing left to delete, on a table already cut: nothing older to purge
                result.first_versions[table] = int(storage.read_json(f"{lake.path(table)}/_delta_log/_last_checkpoint")["version"])
            run.outputs[table] = result.first_versions[table]
        staged = _staging(lake, ids)
        run.rows_in = sum(n for counts in per_id.values() for n in counts.values())
        run.rows_out = sum(result.rows.values())
        run.message = (f"{len(ids)} customer(s) erased: {run.rows_out:,} rows deleted or anonymized in "
                       f"{sum(1 for n in result.rows.values() if n)} tables, {len(result.models)} model(s) flagged"
                       + (f", {staged} staged sheet(s) deleted" if staged else "")
                       + "; versions before the erasure are gone from every customer table")
        run.result = result
    return run
