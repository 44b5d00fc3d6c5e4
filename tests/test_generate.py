from __future__ import annotations

import csv
import hashlib
import json

import pyspark.sql.functions as F
import pytest

from lakemine.io.schemas import RAW_COLUMNS
from lakemine.stages.generate import EXPECTED_OUTCOME, GenerateParams, bundle_items, generate


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.glob("online_retail_*")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "a"
    manifest = generate(spark, str(out), GenerateParams.from_config(None, customers=240, days=200, seed=11, dirty_rate=0.01, files=3))
    return out, manifest


def test_generate_is_deterministic_for_a_seed(spark, small, tmp_path):
    out, manifest = small
    again = tmp_path / "b"
    assert generate(spark, str(again), GenerateParams.from_config(None, customers=240, days=200, seed=11, dirty_rate=0.01, files=3)) == manifest
    assert digest(again) == digest(out)
    other = tmp_path / "c"
    generate(spark, str(other), GenerateParams.from_config(None, customers=240, days=200, seed=12, dirty_rate=0.01, files=3))
    assert digest(other) != digest(out)


def test_each_file_has_one_header_and_the_manifest_counts_lines(small):
    out, manifest = small
    files = sorted(out.glob("online_retail_*.csv"))
    assert [f.name for f in files] == manifest["files"] and len(files) == 3
    data_lines = 0
    for f in files:
        lines = f.read_text().splitlines()
        assert lines[0] == ",".join(RAW_COLUMNS)
        assert lines.count(lines[0]) == 1
        data_lines += len(lines) - 1
    assert data_lines == manifest["data_lines"]
    blanks = sum(1 for f in files for line in f.read_text().splitlines() if line == "")
    assert blanks == manifest["injected"]["blank_line"] > 0


def test_every_defect_type_is_injected_near_its_rate(small):
    _, manifest = small
    assert set(manifest["injected"]) == set(EXPECTED_OUTCOME)
    for kind, n in manifest["injected"].items():
        assert 0.5 * 0.01 * manifest["records"] < n < 1.5 * 0.01 * manifest["records"], kind


def test_planted_bundles_are_bought_together(spark, small):
    out, _ = small
    rows = [r for f in sorted(out.glob("*.csv")) for r in csv.DictReader(f.open()) if r.get("InvoiceNo")]
    baskets: dict[str, set] = {}
    for r in rows:
        baskets.setdefault(r["InvoiceNo"], set()).add(r["StockCode"])
    n = len(baskets)
    for bundle in bundle_items():
        together = sum(1 for items in baskets.values() if set(bundle) <= items)
        assert together / n > 0.02, bundle
    # the tail of wholesale invoices: hundreds of lines each
    assert max(len(items) for items in baskets.values()) >= 150


def test_truth_has_every_group_with_distinct_behaviour(spark, small):
    out, manifest = small
    truth = spark.read.parquet(str(out / "_truth" / "customers"))
    assert truth.count() == 240
    assert set(manifest["planted"]["groups"]) == {"champions", "loyal", "new", "at_risk", "wholesale"}
    by_group = {r["group"]: r for r in truth.groupBy("group").agg(
        F.avg(F.datediff("end_day", "first_day")).alias("active_days")).collect()}
    assert by_group["new"]["active_days"] < by_group["champions"]["active_days"]


def test_parquet_output_has_the_layout_columns(spark, tmp_path):
    manifest = generate(spark, str(tmp_path / "p"), GenerateParams.from_config(None, customers=50, days=60, seed=3, dirty_rate=0.02, format="parquet"))
    df = spark.read.parquet(str(tmp_path / "p" / manifest["files"][0]))
    assert tuple(df.columns) == RAW_COLUMNS
    assert df.count() == manifest["data_lines"]
    assert "blank_line" not in manifest["injected"]
    assert json.loads((tmp_path / "p" / "_manifest.json").read_text()) == manifest
