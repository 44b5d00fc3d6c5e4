"""`lakemine forget` (issue 19): after it, no file under the lake holds an erased id (Parquet
pages decompressed), no Delta version from before can be read back, models trained on the
customer are flagged without their training-data copy, ops/erasures holds keyed hashes only,
and every other customer's rows are as they were."""

from __future__ import annotations

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
    scores = lake.read_table(schemas.GOLD_CUSTOMER_SCORES).select("customer_id")
    real = scores.join(lake.read_table(schemas.GOLD_RECOMMENDATIONS).select("customer_id"), "customer_id") \
        .agg(F.min("customer_id")).first()[0]
    ids = [PLANTED, real]
    before = {}
    for table, kind in forget.TABLES.items():
        df = lake.read_table(table)
        if kind == forget.CUSTOMER:
            df = df.where(~F.col("customer_id").isin(ids))
        elif kind == forget.BASKETS:
            df = df.withColumn("customer_id", F.when(F.col("customer_id").isin(ids), None).otherwise(F.col("customer_id")))
        before[table] = df.localCheckpoint(eager=True)  # kept in memory: the erasure vacuums the files
    versions = {t: lake.table_version(t) for t in forget.TABLES}
    return lake, cfg, ids, before, versions


def _forget(argv, monkeypatch, capsys, key=KEY) -> tuple[int, str, str]:
    if key is None:
        monkeypatch.delenv("LAKEMINE_PRIVACY_KEY", raising=False)
    else:
        monkeypatch.setenv("LAKEMINE_PRIVACY_KEY", key)
    code = main(["forget", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_forget_leaves_no_trace_of_the_ids_and_every_other_row_as_it_was(erased, monkeypatch, capsys):
    lake, cfg, ids, before, versions = erased
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
            assert after.count() < before[table].count() or table == schemas.SILVER_QUARANTINE, table
        else:
            assertDataFrameEqual(after, before[table])  # others unchanged; baskets keep the items, id null
        with pytest.raises(Exception):  # the versions from before the erasure are gone
            lake.read_table(table, version=versions[table]).count()
    assert lake.read_table(schemas.SILVER_QUARANTINE).where("CustomerID = '12346'").count() >= 1

    hashes = {r["id_hash"] for r in lake.read_table(schemas.OPS_ERASURES).collect()}
    assert hashes == {privacy.id_hash(KEY.encode(), i) for i in ids}
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

