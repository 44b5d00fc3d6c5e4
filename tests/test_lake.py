from __future__ import annotations

import datetime as dt

import pytest
from pyspark.testing import assertDataFrameEqual

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
