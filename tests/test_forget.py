"""`lakemine forget` (issue 19): after it, no file under the lake holds an erased id (Parquet
pages decompressed), no Delta version from before can be read back, models trained on the
customer are flagged without their training-data copy, ops/erasures holds keyed hashes only,
and every other customer's rows are as they were."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyspark.sql.functions as F
import pytest
from pyspark.testing import assertDataFrameEqual

from conftest import clean_lake, copy_lake, ingest_files, run_features, write_lines
from lakemine.cli import main
from lakemine.core import privacy, storage
from lakemine.core.errors import UsageError
from lakemine.io import schemas
from lakemine.orchestration import dags
from lakemine.stages import forget

pytestmark = pytest.mark.slow

KEY = "a-test-erasure-key"
PLANTED = "Q-ERASE-8841"  # a customer whose id cannot occur by chance anywhere else in the lake
HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"


def _strings(column: pa.ChunkedArray):
    """Every string value in a Parquet column, nested lists, structs and maps included."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        yield from (v for v in column.to_pylist() if v is not None)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind) or pa.types.is_struct(kind):
        for value in column.to_pylist():
            yield from _flatten(value)


def _flatten(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(k)
            yield from _flatten(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _flatten(v)


def _holding(root: Path, token: str, quoted_only: bool) -> list[str]:
    """Files under `root` that hold `token` as a field: in their bytes (for a numeric id only
    as a quoted string outside Parquet, since numbers such as file sizes may equal it), or as
    (part of) a string value of a Parquet column, its pages decompressed."""
    field = re.escape(token) + r"(\.0+)?"
    raw = re.compile(rf"[\"']{field}[\"']" if quoted_only else rf"(?<![0-9A-Za-z]){field}(?![0-9A-Za-z])")
    value = re.compile(rf"(?<![0-9A-Za-z]){field}(?![0-9A-Za-z])")
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if raw.search(data.decode("latin-1")):
            found.append(str(path.relative_to(root)))
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            if any(value.search(s) for name in table.column_names for s in _strings(table[name])):
                found.append(f"{path.relative_to(root)} (a value)")
    return found


@pytest.fixture(scope="module")
def erased(scored_lake, tmp_path_factory):
    """A copy of the scored lake with a planted customer's lines (sales, a line with a bad
    date, a line cut short) landed, cleaned and featured; the rows of everyone else before the
    erasure; `lakemine forget` of the planted customer and of a real one with scores,
    recommendations and a model trained on its features."""
    tmp = tmp_path_factory.mktemp("forget")
    lake, cfg = copy_lake(*scored_lake[:2], tmp / "lake")
    as_of = scored_lake[2]
    when = f"{as_of.month}/{as_of.day}/{as_of.year} 10:15"
    write_lines(tmp / "landing" / "late.csv", [
        HEADER,
        f"599990,20007,RED MUG,2,{when},1.50,{PLANTED},United Kingdom",
        f"599990,20014,BLUE MUG,1,{when},1.50,{PLANTED},United Kingdom",
        f"599991,20021,GREEN MUG,1,31/31/2099 10:15,1.50,{PLANTED},United Kingdom",  # bad date: silver quarantine
        f'599992,20028,"CUT SHORT,1,{when},1.50,{PLANTED}',  # unclosed quote: bronze quarantine, raw line only
        f"599993,20035,OTHER MUG,many,{when},1.50,12346,United Kingdom",  # someone else's bad line: kept
    ])
    ingest_files(lake, cfg, str(tmp / "landing"))
    clean_lake(lake, cfg)
    run_features(lake, cfg, as_of)
    # a real customer with a score, recommendations and a complete label (so in the model's training data)
    model_dates = scored_lake[3]["split"]["train_dates"] + scored_lake[3]["split"]["val_dates"]
    trained_on = lake.read_table(schemas.GOLD_LABELS).where(F.col("complete") & F.col("as_of").cast("string").isin(model_dates))
    real = lake.read_table(schemas.GOLD_CUSTOMER_SCORES).select("customer_id").distinct() \
        .join(lake.read_table(schemas.GOLD_RECOMMENDATIONS).select("customer_id").distinct(), "customer_id") \
        .join(trained_on.select("customer_id").distinct(), "customer_id").agg(F.min("customer_id")).first()[0]
    assert real is not None
    ids = [PLANTED, real]
    before = {}
    for table, kind in forget.TABLES.items():
        df = lake.read_table(table)
        if kind == forget.CUSTOMER:
            df = df.where(~F.col("customer_id").isin(ids))
        elif kind == forget.BASKETS:
            df = df.withColumn("customer_id", F.when(F.col("customer_id").isin(ids), None).otherwise(F.col("customer_id")))
        before[table] = df.collect()  # kept in Python (small tables): the erasure vacuums the files
    versions = {t: lake.table_version(t) for t in forget.TABLES}
    return lake, cfg, ids, before, versions, scored_lake[0]


def hashes_of(customer: str) -> str:
    return privacy.id_hash(KEY.encode(), customer)


def landing_beside(lake) -> Path:
    """A folder beside the lake for files to land."""
    folder = Path(lake.root).parent / "landing2"
    folder.mkdir(exist_ok=True)
    return folder


def as_of_of(lake):
    return lake.read_table(schemas.GOLD_CUSTOMER_FEATURES).agg(F.max("as_of")).first()[0]


def when_of(lake) -> str:
    """An invoice time on the lake's last day, as the exports write it."""
    last = lake.read_table(schemas.SILVER_TRANSACTIONS).agg(F.max("invoice_date")).first()[0]
    return f"{last.month}/{last.day}/{last.year} 11:30"


def test_hash_column_is_the_keyed_hash_of_the_normalized_id(spark):
    ids = ["12346", " 12346.0 ", "Q-1", "änne-7", None]
    df = spark.createDataFrame([(i,) for i in ids], "id string")
    for key in (b"k", b"a key longer than the sixty-four bytes of a SHA-256 block, hashed first by HMAC"):
        got = [r["h"] for r in df.select(privacy.hash_column(key, F.col("id")).alias("h")).collect()]
        assert got == [privacy.id_hash(key, i) if i is not None else None for i in ids]
    assert privacy.id_hash(b"k", " 12346.0 ") == privacy.id_hash(b"k", "12346")

    # a line of an erased customer: by its CustomerID field, else by a field of its raw text
    # (any characters but the delimiters), else none
    hashes = [privacy.id_hash(b"k", i) for i in ("12346", "änne 7/b")]
    lines = spark.createDataFrame([("12346.0", None), (None, '536365;"änne 7/b";x'), ("99", "99,12346 ,y"),
                                   (None, "no,id,here"), (None, None)], "c string, raw string")
    got = [(r["m"]["hash"], r["m"]["by_field"]) if r["m"] else None
           for r in lines.select(privacy.erased_match(b"k", hashes, F.col("c"), F.col("raw")).alias("m")).collect()]
    assert got == [(hashes[0], True), (hashes[1], False), (hashes[0], False), None, None]


def _forget(argv, monkeypatch, capsys, key=KEY) -> tuple[int, str, str]:
    if key is None:
        monkeypatch.delenv("LAKEMINE_PRIVACY_KEY", raising=False)
    else:
        monkeypatch.setenv("LAKEMINE_PRIVACY_KEY", key)
    code = main(["forget", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_forget_leaves_no_trace_of_the_ids_and_every_other_row_as_it_was(erased, monkeypatch, capsys):
    lake, cfg, ids, before, versions, built_without = erased
    planted, real = ids
    assert _forget(["--customer", planted, "--lake", lake.root], monkeypatch, capsys, key=None)[0] == 2  # no key

    code, out, err = _forget(["--customer", planted, "--customer", f" {real}.0 ", "--lake", lake.root], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    assert "2 customer(s) erased" in out and "models flagged" in out and "(ids set to null, items kept)" in out

    root = Path(lake.root)
    assert _holding(root, planted, quoted_only=False) == []
    assert _holding(root, real, quoted_only=True) == []

    for table, kind in forget.TABLES.items():
        after = lake.read_table(table)
        if kind == forget.RAW:
            ids_of = F.regexp_replace(F.trim(F.col("CustomerID")), r"\.0+$", "")
            assert after.where(ids_of.isin(ids)).count() == 0, table
            assert after.count() < len(before[table]) or table == schemas.SILVER_QUARANTINE, table
        else:
            assertDataFrameEqual(after, before[table])  # others unchanged; baskets keep the items, id null
        with pytest.raises(Exception):  # the versions from before the erasure are gone
            lake.read_table(table, version=versions[table]).count()
        assert not (root / table / "_delta_log" / f"{versions[table]:020d}.json").exists(), table
    assert lake.read_table(schemas.SILVER_QUARANTINE).where("CustomerID = '12346'").count() >= 1

    erasures = lake.read_table(schemas.OPS_ERASURES).collect()
    assert {r["id_hash"] for r in erasures} == {privacy.id_hash(KEY.encode(), i) for i in ids}
    assert {r["key_check"] for r in erasures} == {privacy.key_check(KEY.encode())}
    flagged = [v for v in storage.list_dirs(f"{lake.root}/models/churn")
               if storage.read_json(f"{lake.root}/models/churn/{v}/metadata.json").get("erasure")]
    assert flagged and not any(storage.exists(f"{lake.root}/models/churn/{v}/data") for v in flagged)
    assert dags.choose_training(lake.root, date(2011, 11, 29), 6)[0]  # a Tuesday, not the retraining day

    # a rerun (as after a kill) changes no row and records no second erasure
    counts = {t: lake.read_table(t).count() for t in forget.TABLES}
    code, out, err = _forget(["--customer", real, "--customer", planted, "--lake", lake.root], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    assert {t: lake.read_table(t).count() for t in forget.TABLES} == counts
    assert lake.read_table(schemas.OPS_ERASURES).count() == 2

    # a later export that holds the erased customers again: their lines go to quarantine as
    # `erased`, with the id hashed and the raw line dropped; everyone else's line lands
    resent = landing_beside(lake) / "resent.csv"
    write_lines(resent, [
        HEADER,
        f"599994,20007,RED MUG,3,{when_of(lake)},1.50,{planted},United Kingdom",
        f"599994,20014,BLUE MUG,1,{when_of(lake)},1.50,{real}.0,United Kingdom",
        f'599995,20028,"CUT SHORT,1,{when_of(lake)},1.50,{planted}',
        f"599996,20035,OTHER MUG,4,{when_of(lake)},1.50,12347,United Kingdom",
    ])
    monkeypatch.delenv("LAKEMINE_PRIVACY_KEY", raising=False)
    with pytest.raises(UsageError, match="erasure key"):
        ingest_files(lake, cfg, str(resent))
    monkeypatch.setenv("LAKEMINE_PRIVACY_KEY", "another key")
    with pytest.raises(UsageError, match="not the one"):
        ingest_files(lake, cfg, str(resent))
    monkeypatch.setenv("LAKEMINE_PRIVACY_KEY", KEY)
    run = ingest_files(lake, cfg, str(resent))
    assert run.rows_out == 1 and run.quarantine_reasons == {"erased": 3}, (run.rows_out, run.quarantine_reasons)
    quarantined = lake.read_table(schemas.BRONZE_QUARANTINE).where("reason = 'erased'").collect()
    assert sorted(r["CustomerID"] for r in quarantined) == sorted([hashes_of(planted), hashes_of(planted), hashes_of(real)])
    assert all(r["_raw"] is None for r in quarantined)
    assert {r["InvoiceNo"] for r in quarantined} == {"599994", None}  # the cut-short line keeps no field
    assert _holding(root, planted, quoted_only=False) == []
    assert _holding(root, real, quoted_only=True) == []

    # the per-customer tables are those of a lake built without the planted customer (the
    # scored lake before the late file landed), less the real customer; the z_ copies of the
    # features are left out: standardized over each date's customers, they moved for everyone
    # when the planted customer's features were computed, and an erasure does not recompute them
    differ = []
    for table, kind in forget.TABLES.items():
        if kind == forget.CUSTOMER:
            after, without = lake.read_table(table), built_without.read_table(table).where(F.col("customer_id") != real)
            if table == schemas.GOLD_CUSTOMER_FEATURES:
                after, without = (df.select([c for c in df.columns if not c.startswith("z_")]) for df in (after, without))
            try:
                assertDataFrameEqual(after, without)
            except AssertionError as exc:
                differ.append(f"{table}: {str(exc)[:600]}")
    assert differ == [], "\n".join(differ)

    # the next features run goes on from where the erasure left gold: customer days were up to
    # date with silver, so nothing is rebuilt and the baskets keep their anonymized items
    baskets = lake.read_table(schemas.GOLD_BASKETS).collect()
    run_features(lake, cfg, as_of_of(lake))
    steps = [json.loads(r["params"]) for r in lake.read_table(schemas.OPS_RUNS).where("stage = 'features'")
             .orderBy(F.desc("started_at")).collect()]
    assert next(s for s in steps if s.get("step") == "aggregates")["mode"] == "noop"
    assertDataFrameEqual(lake.read_table(schemas.GOLD_BASKETS), baskets)


def test_pseudonymized_lake_holds_keyed_hashes_from_silver_on_and_forget_finds_them(lake, cfg, tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("LAKEMINE_PRIVACY_KEY", KEY)
    pcfg = dataclasses.replace(cfg.with_lake(lake.root), privacy=dataclasses.replace(cfg.privacy, pseudonymize=True))
    write_lines(tmp_path / "in" / "day.csv", [
        HEADER,
        "536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850.0,United Kingdom",
        "536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850.0,United Kingdom",
        "536366,22633,HAND WARMER UNION JACK,6,12/1/2010 8:28,1.85,13047,United Kingdom",
        "536367,84879,ASSORTED COLOUR BIRD,32,12/1/2010 8:34,1.69,12583,France",
        "536368,22960,JAM MAKING SET,x,12/1/2010 8:34,4.25,12583,France",  # bad number: silver quarantine
    ])
    ingest_files(lake, pcfg, str(tmp_path / "in"))
    clean_lake(lake, pcfg)
    silver = {r["customer_id"] for r in lake.read_table(schemas.SILVER_TRANSACTIONS).collect()}
    assert silver == {hashes_of(i) for i in ("17850", "13047", "12583")}
    assert {r["CustomerID"] for r in lake.read_table(schemas.BRONZE_TRANSACTIONS).collect()} == {"17850.0", "13047", "12583"}
    assert [r["CustomerID"] for r in lake.read_table(schemas.SILVER_QUARANTINE).collect()] == ["12583"]  # raw, as bronze

    result = forget.run(lake, pcfg, forget.ForgetParams.from_config(pcfg, customers=("12583",))).result
    assert {t: n for t, n in result.rows.items() if n} == {schemas.BRONZE_TRANSACTIONS: 2, schemas.SILVER_TRANSACTIONS: 1, schemas.SILVER_QUARANTINE: 1}, \
        result.rows
    assert {r["customer_id"] for r in lake.read_table(schemas.SILVER_TRANSACTIONS).collect()} == \
        {hashes_of(i) for i in ("17850", "13047")}
    assert _holding(Path(lake.root), "12583", quoted_only=True) == []

