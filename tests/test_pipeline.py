"""Generated dirty data through ingest and clean: every injected defect caught, rows conserved,
re-runs leave identical tables."""

from __future__ import annotations

import pytest
from pyspark.testing import assertDataFrameEqual

from conftest import clean_lake as clean
from conftest import ingest_files as ingest
from lakemine.io import schemas
from lakemine.stages.generate import GenerateParams, generate


@pytest.fixture(scope="module")
def dirty(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("dirty")
    manifest = generate(spark, str(out), GenerateParams.from_config(None, customers=150, days=120, seed=5, dirty_rate=0.01, files=2))
    return out, manifest


def reasons(lake, table):
    return {r["reason"]: r["count"] for r in lake.read_table(table).groupBy("reason").count().collect()}


def test_every_injected_defect_is_caught_with_its_reason(lake, lake_cfg, dirty):
    out, manifest = dirty
    ingest(lake, lake_cfg, str(out))
    cleaned = clean(lake, lake_cfg)
    inj = manifest["injected"]
    assert reasons(lake, schemas.BRONZE_QUARANTINE) == {
        "blank_line": inj["blank_line"], "bad_field_count": inj["truncated_line"]}
    assert reasons(lake, schemas.SILVER_QUARANTINE) == {
        "negative_quantity": inj["negative_quantity"],
        "bad_date": inj["bad_date"],
        "bad_number": inj["bad_number"],
        "extreme_price": inj["extreme_price"],
    }
    assert cleaned.rows_duplicate == inj["duplicate"]
    # guest lines (no customer id) stay in silver and make guest baskets
    assert lake.read_table(schemas.SILVER_TRANSACTIONS).where("customer_id IS NULL").count() == inj["missing_customer"] > 0
    returns = lake.read_table(schemas.SILVER_TRANSACTIONS).where("is_return").count()
    assert returns == manifest["natural_return_lines"] + inj["cancellation"]
    # exact conservation, end to end: the generator's line count against the tables' rows, and
    # ops/runs against the tables it describes
    count = {t: lake.read_table(t).count() for t in (schemas.BRONZE_TRANSACTIONS, schemas.BRONZE_QUARANTINE,
                                                     schemas.SILVER_TRANSACTIONS, schemas.SILVER_QUARANTINE)}
    assert count[schemas.BRONZE_TRANSACTIONS] + count[schemas.BRONZE_QUARANTINE] == manifest["data_lines"]
    assert (count[schemas.SILVER_TRANSACTIONS] + count[schemas.SILVER_QUARANTINE] + inj["duplicate"]
            == count[schemas.BRONZE_TRANSACTIONS])
    runs = {r["stage"]: r for r in lake.read_table(schemas.OPS_RUNS).collect()}
    assert (runs["ingest"]["rows_in"], runs["ingest"]["rows_out"], runs["ingest"]["rows_quarantined"]) == (
        manifest["data_lines"], count[schemas.BRONZE_TRANSACTIONS], count[schemas.BRONZE_QUARANTINE])
    assert (runs["clean"]["rows_out"], runs["clean"]["rows_quarantined"], runs["clean"]["rows_duplicate"]) == (
        count[schemas.SILVER_TRANSACTIONS], count[schemas.SILVER_QUARANTINE], inj["duplicate"])
    assert runs["clean"]["rows_in"] == runs["ingest"]["rows_out"]
    assert runs["clean"]["inputs"] == {"bronze/transactions": runs["ingest"]["outputs"]["bronze/transactions"]}


def test_rerunning_ingest_and_clean_leaves_identical_tables(lake, lake_cfg, dirty):
    out, _ = dirty
    ingest(lake, lake_cfg, str(out))
    clean(lake, lake_cfg)
    tables = (schemas.BRONZE_TRANSACTIONS, schemas.BRONZE_QUARANTINE,
              schemas.SILVER_TRANSACTIONS, schemas.SILVER_QUARANTINE)
    before = {t: lake.read_table(t).drop("_ingested_at").collect() for t in tables}
    again = ingest(lake, lake_cfg, str(out))
    clean(lake, lake_cfg)
    assert again.status == "noop"
    for t in tables:
        assertDataFrameEqual(lake.read_table(t).drop("_ingested_at"), before[t])


def test_written_tables_have_the_declared_schemas(lake, lake_cfg, dirty):
    out, _ = dirty
    ingest(lake, lake_cfg, str(out))
    clean(lake, lake_cfg)
    declared = {
        schemas.BRONZE_TRANSACTIONS: schemas.BRONZE_SCHEMA,
        schemas.BRONZE_QUARANTINE: schemas.QUARANTINE_SCHEMA,
        schemas.SILVER_TRANSACTIONS: schemas.SILVER_SCHEMA,
        schemas.SILVER_QUARANTINE: schemas.QUARANTINE_SCHEMA,
        schemas.OPS_RUNS: schemas.RUNS_SCHEMA,
    }
    for table, schema in declared.items():
        got = [(f.name, f.dataType) for f in lake.read_table(table).schema]
        assert got == [(f.name, f.dataType) for f in schema], table
