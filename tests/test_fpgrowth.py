from __future__ import annotations

import random
from collections import Counter
from itertools import combinations

import pyspark.sql.functions as F
import pytest
from pyspark.testing import assertDataFrameEqual

from lakemine.io import schemas
from lakemine.mining.fpgrowth import (
    MiningParams,
    TooManyItemsets,
    describe_rules,
    item_descriptions,
    min_count,
    mine,
    support_cut,
)
from lakemine.mining.fpgrowth import run as run_fpgrowth

SEED_BASKETS = [
    ["milk", "bread", "diaper"],
    ["cola", "bread", "diaper", "beer"],
    ["milk", "diaper", "beer", "eggs"],
    ["bread", "milk", "diaper", "beer"],
    ["bread", "milk", "diaper", "cola"],
]
ITEMSETS_DDL = "items array<string>, freq long, support double"
RULES_DDL = "antecedent array<string>, consequent array<string>, support double, confidence double, lift double"


def baskets_df(spark, baskets):
    return spark.createDataFrame([(sorted(set(b)),) for b in baskets], "items array<string>")


def brute_force(baskets, min_support, min_confidence):
    """Every subset of every basket counted: the reference for itemsets and rules."""
    n = len(baskets)
    counts = Counter()
    for b in baskets:
        items = sorted(set(b))
        for k in range(1, len(items) + 1):
            counts.update(combinations(items, k))
    cut = min_count(n, min_support)
    frequent = {s: c for s, c in counts.items() if c >= cut}
    rules = []
    for s, c in frequent.items():
        if len(s) < 2:
            continue
        for y in s:
            a = tuple(x for x in s if x != y)
            conf = c / frequent[a]
            if conf >= min_confidence:
                rules.append((list(a), [y], c / n, conf, conf / (frequent[(y,)] / n)))
    return [(list(s), c, c / n) for s, c in frequent.items()], rules


@pytest.mark.parametrize("engine", ["pfp", "mllib"])
def test_seed_example_gives_nine_itemsets(spark, engine):
    itemsets, _ = mine(baskets_df(spark, SEED_BASKETS), 5, MiningParams.from_config(None, min_support=0.6, min_confidence=0.5, engine=engine), default_groups=3)
    expected = spark.createDataFrame([
        (["milk"], 4, 0.8), (["bread"], 4, 0.8), (["diaper"], 5, 1.0), (["beer"], 3, 0.6),
        (["bread", "milk"], 3, 0.6), (["diaper", "milk"], 4, 0.8), (["bread", "diaper"], 4, 0.8),
        (["beer", "diaper"], 3, 0.6), (["bread", "diaper", "milk"], 3, 0.6),
    ], ITEMSETS_DDL)
    assertDataFrameEqual(itemsets, expected)


@pytest.mark.parametrize("engine,groups", [("pfp", 1), ("pfp", 3), ("pfp", 7), ("mllib", None)])
def test_itemsets_and_rules_equal_a_brute_force_count(spark, engine, groups):
    rng = random.Random(7)
    items = [f"i{k:02d}" for k in range(14)]
    weights = [0.5 ** (k / 3) for k in range(14)]
    baskets = []
    for _ in range(400):
        size = rng.randint(1, 7)
        basket = set(rng.choices(items, weights, k=size)) | {"always"}  # one item in every basket
        baskets.append(basket)
    p = MiningParams.from_config(None, min_support=0.04, min_confidence=0.3, engine=engine, groups=groups)
    itemsets, rules = mine(baskets_df(spark, baskets), len(baskets), p, default_groups=4)
    ref_sets, ref_rules = brute_force(baskets, 0.04, 0.3)
    assert len(ref_sets) > 100
    assertDataFrameEqual(itemsets, spark.createDataFrame(ref_sets, ITEMSETS_DDL), rtol=1e-12)
    assertDataFrameEqual(rules, spark.createDataFrame(ref_rules, RULES_DDL), rtol=1e-9)


def test_pfp_and_mllib_give_identical_tables_on_generated_baskets(gold_lake):
    lake, _, _, _ = gold_lake
    baskets = lake.read_table(schemas.GOLD_BASKETS).select("items").cache()
    n = baskets.count()
    pfp = mine(baskets, n, MiningParams.from_config(None, min_support=0.01, min_confidence=0.2, engine="pfp"), default_groups=4)
    mllib = mine(baskets, n, MiningParams.from_config(None, min_support=0.01, min_confidence=0.2, engine="mllib"), default_groups=4)
    assertDataFrameEqual(pfp[0], mllib[0], rtol=1e-12)
    assertDataFrameEqual(pfp[1], mllib[1], rtol=1e-9)
    assert pfp[0].where(F.size("items") >= 2).count() > 0


@pytest.fixture
def mining_lake(spark, lake, lake_cfg, gold_lake):
    """A private copy of the generated gold baskets and silver, for stage runs that write."""
    src, _, _, _ = gold_lake
    for table in (schemas.GOLD_BASKETS, schemas.SILVER_TRANSACTIONS):
        lake.overwrite(src.read_table(table), table)
    return lake, lake_cfg


def test_fpgrowth_stage_finds_planted_bundles_and_is_idempotent(mining_lake, gold_lake):
    lake, cfg = mining_lake
    manifest = gold_lake[3]
    p = MiningParams.from_config(cfg, min_support=0.01, min_confidence=0.5)
    first = run_fpgrowth(lake, cfg, p)
    rules1 = lake.read_table(schemas.GOLD_ASSOCIATION_RULES).collect()
    sets1 = lake.read_table(schemas.GOLD_FREQUENT_ITEMSETS).collect()
    found = {tuple(r["items"]) for r in sets1}
    for bundle in manifest["planted"]["bundles"]:
        assert tuple(sorted(bundle)) in found, bundle
    strong = [r for r in rules1 if r["lift"] > 5 and r["confidence"] > 0.8]
    assert strong and all(r["consequent_description"] for r in strong)
    assert all(len(r["antecedent_descriptions"]) == len(r["antecedent"]) for r in rules1)
    second = run_fpgrowth(lake, cfg, p)
    assert first.run_id == second.run_id
    assertDataFrameEqual(lake.read_table(schemas.GOLD_FREQUENT_ITEMSETS), sets1)
    assertDataFrameEqual(lake.read_table(schemas.GOLD_ASSOCIATION_RULES), rules1)


def test_too_many_itemsets_names_the_support_to_use(mining_lake):
    lake, cfg = mining_lake
    with pytest.raises(TooManyItemsets, match=r"exceed --max-itemsets 10 at support 0.01; raise --min-support to at least 0\.0"):
        run_fpgrowth(lake, cfg, MiningParams.from_config(cfg, min_support=0.01, max_itemsets=10))
    assert not lake.exists(schemas.GOLD_FREQUENT_ITEMSETS)


def test_rules_get_each_items_most_frequent_description_by_joins(spark):
    """Descriptions in antecedent order, the most frequent per item (ties: the greatest), ""
    for an item that has none."""
    lines = [("A", "red cup"), ("A", "red cup"), ("A", "Red Cup"), ("B", "plate"), ("B", "dish"), ("C", None),
             ("D", "fork")]
    silver = spark.createDataFrame(lines, "stock_code string, description string")
    rules = spark.createDataFrame([(["B", "A"], ["D"], 0.5), (["C"], ["A"], 0.25), (["A", "D"], ["E"], 0.1)],
                                  "antecedent array<string>, consequent array<string>, support double")
    got = describe_rules(rules, item_descriptions(silver))
    assert got.columns == ["antecedent", "consequent", "support", "antecedent_descriptions", "consequent_description"]
    assert sorted(tuple(map(lambda v: tuple(v) if isinstance(v, list) else v, r)) for r in got.collect()) == [
        (("A", "D"), ("E",), 0.1, ("red cup", "fork"), ""),
        (("B", "A"), ("D",), 0.5, ("plate", "red cup"), "fork"),
        (("C",), ("A",), 0.25, ("",), "red cup"),
    ]


def test_the_support_cut_is_the_freq_of_the_itemset_past_the_limit(spark):
    rng = random.Random(3)
    freqs = [rng.randint(1, 40) for _ in range(500)]
    itemsets = spark.createDataFrame([([str(i)], f) for i, f in enumerate(freqs)], "items array<string>, freq long")
    ranked = sorted(freqs, reverse=True)
    for keep in (0, 1, 10, 137, 499):
        assert support_cut(itemsets, keep) == ranked[keep], keep


def test_window_days_limits_the_baskets(mining_lake):
    lake, cfg = mining_lake
    baskets = lake.read_table(schemas.GOLD_BASKETS)
    last = baskets.agg(F.max("invoice_date")).first()[0]
    run = run_fpgrowth(lake, cfg, MiningParams.from_config(cfg, min_support=0.05, window_days=30))
    import datetime as dt

    expected = baskets.where((F.col("invoice_date") > F.lit(last - dt.timedelta(days=30))) & (F.col("invoice_date") <= F.lit(last))).count()
    assert run.rows_in == expected < baskets.count()


def test_a_long_basket_bought_twice_stops_before_its_itemsets_are_made(spark, cfg):
    """Two identical 40-item baskets at a two-basket threshold hold 2^40 itemsets: the groups
    count them without making them and the run stops naming a support that works."""
    long_basket = [f"L{i:02d}" for i in range(40)]
    baskets = baskets_df(spark, [long_basket, long_basket, ["a", "b"], ["a", "b"], ["a", "b"]])
    p = MiningParams.from_config(cfg, min_support=0.4, max_itemsets=1000)
    with pytest.raises(TooManyItemsets, match=r"at least [\d,]+ frequent itemsets exceed --max-itemsets 1,000 at "
                                              r"support 0.4; raise --min-support to at least 0\.600000"):
        mine(baskets, 5, p, 4)
    itemsets, _ = mine(baskets, 5, MiningParams.from_config(cfg, min_support=0.6, max_itemsets=1000), 4)
    assert sorted(tuple(r["items"]) for r in itemsets.collect()) == [("a",), ("a", "b"), ("b",)]
