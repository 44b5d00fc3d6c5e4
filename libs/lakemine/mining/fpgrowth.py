"""`lakemine fpgrowth`: gold/baskets into gold/frequent_itemsets and gold/association_rules.

Two engines with MLlib's definitions (an itemset is frequent when it is in at least
ceil(min_support * baskets) baskets; rules have one consequent item; support, confidence
and lift as in `pyspark.ml.fpm.FPGrowth`):

* `pfp` (default): parallel FP-growth on Spark. Frequent items are ranked by count and dealt
  into groups; baskets are reduced to their ranked frequent items (numpy over Arrow batches)
  and identical ones counted; every such basket sends each group it touches the prefix of
  its ranked items up to that group's last item, with its count, so each group holds exactly
  the baskets (truncated) needed to count the itemsets whose least frequent item is in the
  group. Groups are mined in parallel by pyfim's C FP-growth (weighted transactions) inside
  `applyInPandas`; rules are made in Spark. Before any itemset is made, each group counts its
  itemsets without making them (pyfim's pattern spectrum, which counts the subsets of long
  shared baskets by combinatorics): a few long baskets bought twice make 2^length itemsets,
  and a group with more than --max-itemsets stops the run there, not in a worker out of memory.
* `mllib`: `pyspark.ml.fpm.FPGrowth`, kept for comparison (slow on long baskets).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import date, timedelta

import pandas as pd
import pyspark.sql.functions as F
from pyspark.sql import DataFrame, Window

from lakemine.core.config import Config, FpgrowthConfig, StageParams
from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, deterministic_run_id, record_run

log = logging.getLogger(__name__)

STAGE = "fpgrowth"
ITEMSETS_SCHEMA = "items array<string>, freq long"


@dataclass(frozen=True)
class MiningParams(FpgrowthConfig, StageParams):
    """The fpgrowth section of the config (support, confidence, window, limits, engine,
    groups), checked as the config is, and the logical date (None: the latest basket's)."""

    SECTION = "fpgrowth"
    as_of: date | None = None


class TooManyItemsets(StageError):
    """The itemsets would exceed --max-itemsets: the message names the support to raise."""


def min_count(n_baskets: int, min_support: float) -> int:
    """MLlib's threshold: ceil(min_support * n), at least 1."""
    return max(1, math.ceil(min_support * n_baskets))


def _transactions(pdf: pd.DataFrame) -> dict:
    """A group's distinct prefixes with their multiplicities (pyfim takes a dict). pyfim reports
    no itemset made only of items that are in every transaction (in a group's prefixes that is
    common); one empty transaction changes no count and removes that case."""
    tracts = {tuple(t.tolist()): int(c) for t, c in zip(pdf["prefix"], pdf["n"])}
    tracts[()] = 1
    return tracts


def _fim_args(min_cnt: int, max_length: int | None) -> dict:
    # single items come from the item counts
    kwargs = {"target": "s", "supp": -min_cnt, "zmin": 2}
    if max_length:
        kwargs["zmax"] = max_length
    return kwargs


def _count_group(min_cnt: int, max_length: int | None, limit: int):
    """applyInPandas function: one row per group, `itemsets` (how many itemsets of two or more
    items its prefixes hold, counted without making them) and `cut` (the largest count that
    more than `limit` of them reach; 0 when they are `limit` or fewer)."""
    import fim

    def count(pdf: pd.DataFrame) -> pd.DataFrame:
        spectrum = fim.fpgrowth(_transactions(pdf), report="#", **_fim_args(min_cnt, max_length))
        by_freq: dict[int, float] = {}
        for (_size, freq), k in spectrum.items():
            by_freq[int(freq)] = by_freq.get(int(freq), 0.0) + k
        total, cut, reached = sum(by_freq.values()), 0, 0.0
        for freq in sorted(by_freq, reverse=True):
            reached += by_freq[freq]
            if reached > limit:
                cut = freq
                break
        # the counts are floats (2^60 and more for long shared baskets); clamp to a long
        return pd.DataFrame({"g": [int(pdf["g"].iloc[0])], "itemsets": [int(min(total, 2.0**62))], "cut": [cut]})

    return count


def _mine_group(min_cnt: int, max_length: int | None, n_groups: int):
    import fim

    def mine(pdf: pd.DataFrame) -> pd.DataFrame:
        group = int(pdf["g"].iloc[0])
        out_items, out_freq = [], []
        for items, freq in fim.fpgrowth(_transactions(pdf), report="a", **_fim_args(min_cnt, max_length)):
            # an itemset belongs to the group of its least frequent (highest-ranked) item
            if max(items) % n_groups == group:
                out_items.append(sorted(int(i) for i in items))
                out_freq.append(int(freq))
        return pd.DataFrame({
            "ranks": pd.Series(out_items, dtype=object),
            "freq": pd.Series(out_freq, dtype="int64"),
        })

    return mine


def _rank_baskets(item_of: list[str]):
    """mapInArrow function: `items` (array of strings) -> `r`, the sorted distinct ranks of the
    basket's frequent items (rank = index in `item_of`), with numpy over whole Arrow batches."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    value_set = pa.array(item_of, pa.string())

    def rank(batches):
        for batch in batches:
            items = batch.column(0)
            ranks = pc.index_in(items.flatten(), value_set=value_set)  # null: not frequent
            keep = pc.is_valid(ranks)
            r = pc.filter(ranks, keep).to_numpy(zero_copy_only=False).astype(np.int64)
            basket = pc.filter(pc.list_parent_indices(items), keep).to_numpy(zero_copy_only=False)
            order = np.lexsort((r, basket))
            r, basket = r[order], basket[order]
            first = np.ones(len(r), dtype=bool)  # drop an item repeated within a basket
            first[1:] = (r[1:] != r[:-1]) | (basket[1:] != basket[:-1])
            r, basket = r[first], basket[first]
            offsets = np.zeros(len(items) + 1, dtype=np.int32)
            np.cumsum(np.bincount(basket, minlength=len(items)), out=offsets[1:])
            yield pa.RecordBatch.from_arrays([pa.ListArray.from_arrays(pa.array(offsets), pa.array(r))], ["r"])

    return rank


class GroupOverflow(Exception):
    """A group's prefixes alone hold more than the limit's itemsets (`itemsets` of them; `cut`
    the largest count more than the limit reach there: the support must exceed it)."""

    def __init__(self, itemsets: int, cut: int):
        super().__init__(f"{itemsets} itemsets, cut {cut}")
        self.itemsets, self.cut = itemsets, cut


def mine_itemsets_pfp(baskets: DataFrame, min_cnt: int, groups: int, max_length: int | None = None,
                      limit: int | None = None) -> DataFrame:
    """Frequent itemsets (items sorted, freq) of the `items` column by parallel FP-growth. With
    `limit`, the groups count their itemsets first and `GroupOverflow` is raised when one holds
    more (every itemset a group counts is frequent in all the baskets, so more are certain)."""
    spark = baskets.sparkSession
    # Frequent items are few; like MLlib, count them once and bring them to the driver, so the
    # rank lookups below are small literal tables rather than recomputed aggregations.
    frequent = (
        baskets.select(F.explode("items").alias("item"))
        .groupBy("item").agg(F.count(F.lit(1)).alias("freq"))
        .where(F.col("freq") >= min_cnt)
        .collect()
    )
    ordered = sorted(((r["item"], int(r["freq"])) for r in frequent), key=lambda x: (-x[1], x[0]))
    singles = spark.createDataFrame([([item], freq) for item, freq in ordered], ITEMSETS_SCHEMA)
    if max_length == 1 or len(ordered) < 2:
        return singles
    item_of = [item for item, _ in ordered]
    # Each basket as its sorted frequent-item ranks, then identical ones counted: once
    # baskets hold only frequent items few distinct ones remain (1M generated baskets at
    # support 0.01: 71), so the prefixes below are made per distinct basket, not per basket.
    ranked = (
        baskets.select("items")
        .mapInArrow(_rank_baskets(item_of), "r array<long>")
        .where(F.size("r") > 0)
        .groupBy("r").agg(F.count(F.lit(1)).alias("n"))
    )
    # for each group the basket touches: the prefix up to that group's last item
    grp = F.transform("r", lambda x: x % groups)
    prefixes = ranked.select(
        "n",
        F.explode(
            F.transform(
                F.array_distinct(grp),
                lambda g: F.struct(
                    g.alias("g"),
                    F.slice("r", 1, F.size("r") - F.array_position(F.reverse(grp), g) + 1).alias("prefix"),
                ),
            )
        ).alias("p"),
    ).select("p.g", "p.prefix", "n")
    weighted = prefixes.groupBy("g", "prefix").agg(F.sum("n").alias("n"))
    if limit is not None:
        # the prefixes are made once for the count and the mining (blocks freed with the frame)
        weighted = weighted.localCheckpoint(eager=True)
        counts = weighted.groupBy("g").applyInPandas(
            _count_group(min_cnt, max_length, limit), "g long, itemsets long, cut long"
        ).where(F.col("itemsets") > limit).orderBy(F.desc("cut"), F.desc("itemsets")).limit(1).collect()
        if counts:
            raise GroupOverflow(int(counts[0]["itemsets"]), int(counts[0]["cut"]))
    mined = weighted.groupBy("g").applyInPandas(
        _mine_group(min_cnt, max_length, groups), "ranks array<long>, freq long"
    )
    names = F.transform("ranks", lambda r: F.element_at(F.col("item_of"), (r + 1).cast("int")))
    item_names = spark.createDataFrame([(item_of,)], "item_of array<string>")
    pairs_and_more = mined.crossJoin(F.broadcast(item_names)).select(
        F.array_sort(names).alias("items"), "freq"
    )
    return singles.unionByName(pairs_and_more)


def mine_itemsets_mllib(baskets: DataFrame, min_support: float, min_confidence: float) -> tuple[DataFrame, DataFrame]:
    from pyspark.ml.fpm import FPGrowth

    model = FPGrowth(itemsCol="items", minSupport=min_support, minConfidence=min_confidence).fit(baskets)
    itemsets = model.freqItemsets.select(F.array_sort("items").alias("items"), F.col("freq").cast("long"))
    rules = model.associationRules.select(
        F.array_sort("antecedent").alias("antecedent"),
        "consequent",
        F.col("support").cast("double"),
        F.col("confidence").cast("double"),
        F.col("lift").cast("double"),
    )
    return itemsets, rules


def association_rules(itemsets: DataFrame, n_baskets: int, min_confidence: float) -> DataFrame:
    """Rules X -> {y} from frequent itemsets, as MLlib defines them.

    support = freq(X u {y}) / n, confidence = freq(X u {y}) / freq(X),
    lift = confidence / (freq({y}) / n).
    """
    multi = itemsets.where(F.size("items") >= 2)
    candidates = multi.select(
        F.col("freq").alias("union_freq"),
        "items",
        F.explode("items").alias("y"),
    ).select(
        F.array_remove("items", F.col("y")).alias("antecedent"),
        F.array(F.col("y")).alias("consequent"),
        "union_freq",
        "y",
    )
    antecedents = itemsets.select(F.col("items").alias("antecedent"), F.col("freq").alias("ante_freq"))
    singles = itemsets.where(F.size("items") == 1).select(F.col("items")[0].alias("y"), F.col("freq").alias("y_freq"))
    rules = candidates.join(antecedents, "antecedent").join(F.broadcast(singles), "y")
    confidence = F.col("union_freq") / F.col("ante_freq")
    return rules.select(
        "antecedent",
        "consequent",
        (F.col("union_freq") / F.lit(float(n_baskets))).alias("support"),
        confidence.alias("confidence"),
        (confidence / (F.col("y_freq") / F.lit(float(n_baskets)))).alias("lift"),
    ).where(F.col("confidence") >= F.lit(min_confidence))


def too_many(found: int, p: MiningParams, cut: int, n_baskets: int, at_least: bool = False) -> str:
    """TooManyItemsets' message: how many, and the support that keeps at most --max-itemsets
    (at least that one, when `found` and `cut` are lower bounds)."""
    return (f"{'at least ' if at_least else ''}{found:,} frequent itemsets exceed --max-itemsets {p.max_itemsets:,} "
            f"at support {p.min_support}; raise --min-support to at least {(cut + 1) / n_baskets:.6f}")


def mine(baskets: DataFrame, n_baskets: int, p: MiningParams, default_groups: int) -> tuple[DataFrame, DataFrame]:
    """(itemsets: items, freq, support; rules: antecedent, consequent, support, confidence, lift).
    Raises TooManyItemsets (pfp) when the itemsets certainly exceed `p.max_itemsets` before
    making them; the caller checks the exact count."""
    if n_baskets == 0:
        spark = baskets.sparkSession
        return (
            spark.createDataFrame([], "items array<string>, freq long, support double"),
            spark.createDataFrame([], "antecedent array<string>, consequent array<string>, support double, confidence double, lift double"),
        )
    if p.engine == "mllib":
        itemsets, rules = mine_itemsets_mllib(baskets, p.min_support, p.min_confidence)
    else:
        try:
            itemsets = mine_itemsets_pfp(baskets, min_count(n_baskets, p.min_support), p.groups or default_groups,
                                         p.max_length, limit=p.max_itemsets)
        except GroupOverflow as e:
            raise TooManyItemsets(too_many(e.itemsets, p, e.cut, n_baskets, at_least=True)) from None
        rules = None
    itemsets = itemsets.withColumn("support", F.col("freq") / F.lit(float(n_baskets)))
    if rules is None:
        rules = association_rules(itemsets, n_baskets, p.min_confidence)
    return itemsets, rules


def item_descriptions(silver: DataFrame) -> DataFrame:
    """stock_code, description: each item's most frequent description (ties: the greatest)."""
    counted = (
        silver.where(F.col("description").isNotNull())
        .groupBy("stock_code", "description").count()
    )
    return counted.groupBy("stock_code").agg(
        F.max_by("description", F.struct("count", F.col("description"))).alias("description"))


def describe_rules(rules: DataFrame, descriptions: DataFrame) -> DataFrame:
    """`rules` with antecedent_descriptions (in antecedent order) and consequent_description,
    "" for an item without one. Joined on stock_code like any two tables, so no map of every
    item's name is built on the driver or broadcast (it grows with the catalogue)."""
    key = ["antecedent", "consequent"]
    named = F.struct("pos", F.coalesce(F.col("description"), F.lit("")).alias("name"))
    antecedents = (
        rules.select(*key, F.posexplode("antecedent").alias("pos", "stock_code"))
        .join(descriptions, "stock_code", "left")
        .groupBy(*key)
        .agg(F.transform(F.array_sort(F.collect_list(named)), lambda x: x["name"]).alias("antecedent_descriptions"))
    )
    consequents = descriptions.select(F.col("stock_code").alias("_code"), F.col("description").alias("_name"))
    return (
        rules.join(antecedents, key, "left")
        .join(consequents, F.col("consequent")[0] == F.col("_code"), "left")
        .select(
            *rules.columns,
            F.coalesce("antecedent_descriptions", F.array().cast("array<string>")).alias("antecedent_descriptions"),
            F.coalesce(F.col("_name"), F.lit("")).alias("consequent_description"),
        )
    )


def support_cut(itemsets: DataFrame, keep: int) -> int:
    """The freq of the (keep + 1)-th most frequent itemset: the largest freq that more than
    `keep` itemsets reach. From the counts per freq value (summed in freq order on an
    executor), so one number, not `keep` itemsets, comes to the driver."""
    per_freq = itemsets.groupBy("freq").agg(F.count(F.lit(1)).alias("n"))
    order = Window.orderBy(F.desc("freq")).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    reached = per_freq.withColumn("reached", F.sum("n").over(order))
    return int(reached.where(F.col("reached") > keep).agg(F.max("freq")).first()[0])


def select_baskets(baskets: DataFrame, as_of: date, window_days: int) -> DataFrame:
    """Baskets dated in (as_of - window_days, as_of]; window_days 0 = every basket up to as_of."""
    day = F.col("invoice_date")
    if window_days == 0:
        return baskets.where(day.isNull() | (day <= F.lit(as_of)))
    start = as_of - timedelta(days=window_days)
    return baskets.where((day > F.lit(start)) & (day <= F.lit(as_of)))


def select_lines(silver: DataFrame, as_of: date, window_days: int) -> DataFrame:
    """Silver lines dated in the mining window (see `select_baskets`)."""
    day = F.col("invoice_date")
    if window_days == 0:
        return silver.where(day <= F.lit(as_of))
    return silver.where((day > F.lit(as_of - timedelta(days=window_days))) & (day <= F.lit(as_of)))


def run(lake: Lake, cfg: Config, p: MiningParams) -> Run:
    """Mine gold/baskets for `p.as_of`; writes itemsets and rules (replacing that as_of)."""
    spark = lake.spark
    as_of, window_days = p.as_of, p.window_days
    version = lake.table_version(schemas.GOLD_BASKETS)
    silver_version = lake.table_version(schemas.SILVER_TRANSACTIONS)
    baskets_all = lake.read_table(schemas.GOLD_BASKETS, version)
    if as_of is None:
        as_of = baskets_all.agg(F.max("invoice_date")).first()[0]
    params = {k: v for k, v in asdict(p).items() if k != "as_of"}
    inputs = {schemas.GOLD_BASKETS: version, schemas.SILVER_TRANSACTIONS: silver_version}
    with record_run(lake, STAGE, as_of, params) as run:
        run.run_id = deterministic_run_id(STAGE, as_of, params, inputs)
        run.inputs.update(inputs)
        baskets = select_baskets(baskets_all, as_of, window_days).select("items").cache()
        try:
            n = baskets.count()
            run.rows_in = n
            default_groups = max(2, 2 * spark.sparkContext.defaultParallelism)
            itemsets, rules = mine(baskets, n, p, default_groups)
            itemsets = itemsets.cache()
            found = itemsets.count()
            if found > p.max_itemsets:
                cut = support_cut(itemsets, p.max_itemsets)
                raise TooManyItemsets(too_many(found, p, cut, n))
            stamp = [F.lit(as_of).alias("as_of"), F.lit(run.run_id).alias("run_id")]
            run.outputs[schemas.GOLD_FREQUENT_ITEMSETS] = lake.overwrite_as_of(
                itemsets.select("items", "freq", "support", *stamp), schemas.GOLD_FREQUENT_ITEMSETS, as_of
            )
            run.rows_out = found
            # item names as the window's lines give them (silver is partitioned by date: the window's files only)
            silver = select_lines(lake.read_table(schemas.SILVER_TRANSACTIONS, silver_version), as_of, window_days)
            described = describe_rules(rules.select(*rules.columns, *stamp), item_descriptions(silver))
            run.outputs[schemas.GOLD_ASSOCIATION_RULES] = lake.overwrite_as_of(
                described, schemas.GOLD_ASSOCIATION_RULES, as_of
            )
            rules_written = lake.rows_written(schemas.GOLD_ASSOCIATION_RULES, run.outputs[schemas.GOLD_ASSOCIATION_RULES])
            run.message = f"{found:,} itemsets, {rules_written:,} rules from {n:,} baskets"
        finally:
            baskets.unpersist()
    return run
