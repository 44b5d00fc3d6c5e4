from __future__ import annotations

from datetime import date, timedelta

import pyspark.sql.functions as F
import pytest
from pyspark.testing import assertDataFrameEqual

from lakemine.io import schemas
from lakemine.mining import fpgrowth, recommend
from lakemine.mining.recommend import RecommendParams

BASKETS = "basket_id string, customer_id string, invoice_date date, items array<string>"


def test_average_precision_at_k(spark):
    """AP@k: the precision at each hit, summed, over min(relevant items, k)."""
    rows = [(["a", "b", "c", "d"], ["b", "d", "e"], 4, (1 / 2 + 2 / 4) / 3),
            (["a", "b", "c", "d"], ["b", "d", "e"], 2, (1 / 2) / 2),
            (["b", "a"], ["b"], 2, 1.0),
            ([], ["b"], 3, 0.0),
            (["x", "y", "z"], ["z", "y", "x"], 3, 1.0)]
    df = spark.createDataFrame([(i, r, rel) for i, (r, rel, _, _) in enumerate(rows)],
                               "i int, recs array<string>, relevant array<string>")
    got = df.select("i", *[recommend.average_precision("recs", "relevant", k).alias(f"k{k}") for k in (2, 3, 4)]).collect()
    for r in sorted(got):
        recs, rel, k, want = rows[r["i"]]
        assert r[f"k{k}"] == pytest.approx(want), (recs, rel, k)


def test_the_held_out_baskets_never_reach_the_rules(spark):
    """Each of 40 customers buys A and X twice, then X with Y: Y is only ever in the hidden last
    baskets. Rules mined with the hidden baskets would recommend Y on X (and hit every time);
    the evaluation's rules cannot."""
    day = date(2024, 1, 1)
    rows = []
    for c in range(40):
        rows += [(f"{c}-1", f"c{c}", day, ["A", "X"]), (f"{c}-2", f"c{c}", day + timedelta(days=1), ["A", "X"]),
                 (f"{c}-3", f"c{c}", day + timedelta(days=2), ["X", "Y"])]
    rows.append(("guest-1", None, day, ["A", "X"]))
    baskets = spark.createDataFrame(rows, BASKETS)
    training, hidden = recommend.evaluation_split(baskets)
    assert sorted(r["basket_id"] for r in hidden.collect()) == sorted(f"{c}-3" for c in range(40))
    assert training.join(hidden, "basket_id").count() == 0 and training.count() + hidden.count() == baskets.count()

    mining = fpgrowth.MiningParams.from_config(min_support=0.01, min_confidence=0.2, engine="mllib")
    p = RecommendParams.from_config(top_n=3, history_baskets=5, regular_baskets=2)
    by = {r["method"]: r for r in recommend.evaluate(baskets, mining, p, default_groups=2)}
    assert by["rules"]["customers"] == 40 and by["rules"]["training_baskets"] == 81
    assert by["rules"]["hit_rate"] == by["rules"]["map_at_k"] == 0.0
    # the same judging with rules that saw the hidden baskets: every customer hit (so the test can fail)
    _, leaked = fpgrowth.mine(baskets.select("items"), baskets.count(), mining, 2)
    hist = recommend.history(training, 5, 2).join(hidden.select("customer_id"), "customer_id")
    assert recommend.judge(recommend.recommend(hist, leaked, 3), hidden, hist, 3)["hit_rate"] == 1.0


def test_recommendations_exclude_regular_items_and_rank_by_confidence_then_lift(spark):
    day = date(2024, 3, 1)
    baskets = spark.createDataFrame([
        ("1", "c1", day, ["A", "R"]), ("2", "c1", day + timedelta(days=1), ["B", "R"]),
        ("3", "c1", day - timedelta(days=30), ["OLD"]),  # beyond the last 2 baskets: not history
    ], BASKETS)
    rules = spark.createDataFrame([
        (["A"], ["P"], 0.6, 2.0), (["A", "B"], ["Q"], 0.9, 1.5), (["B"], ["Q"], 0.4, 9.0),
        (["A"], ["R"], 0.99, 5.0),  # R is regular for c1
        (["OLD"], ["S"], 1.0, 1.0), (["A", "Z"], ["T"], 1.0, 1.0),  # antecedents not in the history
        (["B"], ["U"], 0.6, 3.0),
    ], "antecedent array<string>, consequent array<string>, confidence double, lift double")
    hist = recommend.history(baskets, 2, 2)
    assert [(r["items"], r["regular"]) for r in hist.collect()] == [(["A", "B", "R"], ["R"])]
    got = [(r["rank"], r["stock_code"], r["score"], r["antecedent"]) for r in recommend.recommend(hist, rules, 10).collect()]
    assert sorted(got) == [(1, "Q", 0.9, ["A", "B"]), (2, "U", 0.6, ["B"]), (3, "P", 0.6, ["A"])]
    assert sorted((r["rank"], r["stock_code"]) for r in recommend.recommend(hist, rules, 2).collect()) == [(1, "Q"), (2, "U")]
    pop = recommend.popular(hist, spark.createDataFrame([("9", None, day, ["R", "A", "P"]), ("8", None, day, ["R", "P"])],
                                                        BASKETS), 2)
    assert sorted((r["rank"], r["stock_code"]) for r in pop.collect()) == [(1, "P"), (2, "A")]
    both = recommend.filled(recommend.recommend(hist, rules, 10), pop, 4)
    assert sorted((r["rank"], r["stock_code"]) for r in both.collect()) == [(1, "Q"), (2, "U"), (3, "P"), (4, "A")]


@pytest.fixture
def recommend_lake(spark, lake, lake_cfg, gold_lake):
    """A private copy of the generated gold baskets and silver, with one probe customer per
    planted bundle who has bought only the bundle's first item, and rules mined for it."""
    src, _, _, manifest = gold_lake
    baskets = src.read_table(schemas.GOLD_BASKETS)
    last = baskets.agg(F.max("invoice_date")).first()[0]
    probes = spark.createDataFrame([(f"probe-{b}", f"probe-{b}", last, [bundle[0]])
                                    for b, bundle in enumerate(manifest["planted"]["bundles"])], BASKETS)
    lake.overwrite(baskets.unionByName(probes), schemas.GOLD_BASKETS)
    lake.overwrite(src.read_table(schemas.SILVER_TRANSACTIONS), schemas.SILVER_TRANSACTIONS)
    fpgrowth.run(lake, lake_cfg, fpgrowth.MiningParams.from_config(lake_cfg, min_support=0.01, min_confidence=0.5))
    return lake, lake_cfg, manifest


def test_recommend_recovers_planted_bundles_evaluates_and_is_idempotent(recommend_lake):
    lake, cfg, manifest = recommend_lake
    p = RecommendParams.from_config(cfg, top_n=5)
    first = recommend.run(lake, cfg, p)
    recs = lake.read_table(schemas.GOLD_RECOMMENDATIONS).cache()
    # a customer who bought one item of a bundle is recommended the rest of it, first
    for b, bundle in enumerate(manifest["planted"]["bundles"]):
        top = recs.where(F.col("customer_id") == f"probe-{b}").where(F.col("rank") < len(bundle)).collect()
        assert {r["stock_code"] for r in top} == set(bundle[1:]), (b, bundle, top)
        assert all(r["score"] > 0.9 and r["because"] == [bundle[0]] and r["description"] for r in top)
    # at most top_n per customer, ranked 1..n by score, never an item the customer buys regularly
    per = recs.groupBy("customer_id").agg(F.count(F.lit(1)).alias("n"), F.max("rank").alias("last"))
    assert per.where((F.col("n") > 5) | (F.col("n") != F.col("last"))).count() == 0
    hist = recommend.history(lake.read_table(schemas.GOLD_BASKETS), 5, 2)
    assert recs.join(hist, "customer_id").where(F.array_contains("regular", F.col("stock_code"))).count() == 0
    assert first.rows_out == recs.count() > 0 and recs.select("as_of").distinct().count() == 1
    evals = {r["method"]: r for r in lake.read_table(schemas.OPS_RECOMMEND_EVAL).collect()}
    assert set(evals) == {"rules", "popular items", "rules, then popular items"}
    for r in evals.values():
        assert r["k"] == 5 and r["customers"] > 100 and 0 <= r["map_at_k"] <= r["hit_rate"] <= 1
    assert evals["rules"]["training_rules"] == evals["rules, then popular items"]["training_rules"] > 0
    assert evals["popular items"]["training_rules"] is None
    # popular items fill the places the rules leave: every customer gets K items
    assert evals["rules, then popular items"]["coverage"] == 1.0
    assert evals["rules, then popular items"]["hit_rate"] >= evals["rules"]["hit_rate"]
    assert evals["rules"]["training_baskets"] < lake.read_table(schemas.GOLD_BASKETS).count()
    # the same inputs again: the same rows, the same run id
    second = recommend.run(lake, cfg, p)
    assert second.run_id == first.run_id
    assertDataFrameEqual(lake.read_table(schemas.GOLD_RECOMMENDATIONS), recs)
    assert {r["method"]: r for r in lake.read_table(schemas.OPS_RECOMMEND_EVAL).collect()} == evals
