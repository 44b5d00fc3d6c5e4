"""`lakemine recommend`: association rules into gold/recommendations, with a held-out evaluation.

**Recommendations.** A customer's history is the items of their last `history_baskets` baskets
on or before as_of. A rule X -> {y} of gold/association_rules (mined for as_of) applies when
the history holds all of X. Item y's score for the customer is the highest confidence of the
rules that apply and recommend it; ties go to the higher lift, then the smaller stock code.
Items the customer buys regularly (in at least `regular_baskets` of those history baskets) are
left out: they need no recommending. The `top_n` best go to gold/recommendations, each with
the rule that scored it.

**Evaluation** (ops/recommend_eval). Every identified customer with at least two baskets in the
mining window has their last basket hidden (a time split per customer: everything the
recommender sees is older than what it is judged on). Rules are mined again with the same
FP-growth parameters from the window's baskets without the hidden ones, so no hidden basket
reaches a rule, and each customer gets recommendations from their baskets before the hidden
one. The re-mining keeps the mining's threshold in baskets, ceil(min_support x window baskets),
rather than the fraction: its itemsets are then a subset of the mined ones, so it stays within
the limit the mining kept (on a small lake the fraction of fewer baskets can fall to one
basket, where every subset of every basket is frequent).

Judged against the hidden basket's items that are not among the customer's regular ones
(what a recommendation could add), over the customers whose hidden basket holds any: hit
rate@K (share with at least one recommended item bought) and MAP@K (mean average precision,
AP@K = sum of precision@k at each hit / min(relevant items, K)), K = `top_n`. The same for
the baseline, the items in most of the training baskets with the same exclusions, and for the
two together: the rules' items first, then popular ones in the places left.

Everything is joins and window ranks in Spark: nothing per customer or per item comes to the
driver.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from datetime import date

import pyspark.sql.functions as F
from pyspark.sql import DataFrame, Window

from lakemine.core.config import Config, RecommendConfig, StageParams
from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, deterministic_run_id, record_run
from lakemine.mining import fpgrowth

log = logging.getLogger(__name__)

STAGE = "recommend"
RULES, POPULAR, FILLED = "rules", "popular items", "rules, then popular items"


@dataclass(frozen=True)
class RecommendParams(RecommendConfig, StageParams):
    """The recommend section of the config (top_n, history_baskets, regular_baskets, evaluate)
    and the rules' date (None: the latest mined)."""

    SECTION = "recommend"
    as_of: date | None = None


def history(baskets: DataFrame, n_baskets: int, regular_baskets: int) -> DataFrame:
    """customer_id, items (every item of the customer's last `n_baskets` baskets), regular (the
    items in at least `regular_baskets` of them): identified customers' baskets only."""
    last = Window.partitionBy("customer_id").orderBy(F.desc("invoice_date"), F.desc("basket_id"))
    recent = (baskets.where(F.col("customer_id").isNotNull())
              .withColumn("_n", F.row_number().over(last)).where(F.col("_n") <= n_baskets))
    per_item = (recent.select("customer_id", F.explode("items").alias("item"))
                .groupBy("customer_id", "item").agg(F.count(F.lit(1)).alias("baskets")))
    return per_item.groupBy("customer_id").agg(
        F.array_sort(F.collect_list("item")).alias("items"),
        F.array_sort(F.collect_list(F.when(F.col("baskets") >= regular_baskets, F.col("item")))).alias("regular"))


def recommend(hist: DataFrame, rules: DataFrame, top_n: int) -> DataFrame:
    """customer_id, rank (1 = best), stock_code, score (confidence), lift, antecedent: the
    `top_n` items the rules that apply to each customer's history recommend, regular items left
    out. A rule is found through its antecedent's first item, so the join grows with the
    customers' items and the rules that could apply, not customers x rules."""
    keyed = rules.select("antecedent", F.col("consequent")[0].alias("stock_code"), F.col("confidence").alias("score"),
                         "lift", F.col("antecedent")[0].alias("_first"))
    candidates = (hist.select("customer_id", "items", "regular", F.explode("items").alias("_first"))
                  .join(keyed, "_first")
                  .where((F.size(F.array_except("antecedent", "items")) == 0)
                         & ~F.array_contains("regular", F.col("stock_code"))))
    best = Window.partitionBy("customer_id", "stock_code").orderBy(F.desc("score"), F.desc("lift"), "antecedent")
    per_item = candidates.withColumn("_r", F.row_number().over(best)).where(F.col("_r") == 1)
    order = Window.partitionBy("customer_id").orderBy(F.desc("score"), F.desc("lift"), "stock_code")
    return (per_item.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top_n)
            .select("customer_id", "rank", "stock_code", "score", "lift", "antecedent"))


def popular(hist: DataFrame, baskets: DataFrame, top_n: int) -> DataFrame:
    """customer_id, rank, stock_code: the items in most of `baskets` (ties: the smaller code)
    that are not among the customer's regular items."""
    counts = baskets.select(F.explode("items").alias("stock_code")).groupBy("stock_code").agg(
        F.count(F.lit(1)).alias("n"))
    # enough of the most popular items that top_n remain after any customer's exclusions
    longest = hist.agg(F.max(F.size("regular"))).first()[0] or 0
    ranked = counts.withColumn("_p", F.row_number().over(Window.orderBy(F.desc("n"), "stock_code")))
    head = ranked.where(F.col("_p") <= top_n + longest)
    picks = (hist.select("customer_id", "regular").crossJoin(F.broadcast(head))
             .where(~F.array_contains("regular", F.col("stock_code"))))
    order = Window.partitionBy("customer_id").orderBy("_p")
    return (picks.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top_n)
            .select("customer_id", "rank", "stock_code"))


def filled(recs: DataFrame, fallback: DataFrame, top_n: int) -> DataFrame:
    """customer_id, rank, stock_code: `recs` in their order, then the `fallback` items not
    among them, `top_n` in all (rules where they apply, popular items in the places left)."""
    both = (recs.select("customer_id", "stock_code", "rank", F.lit(0).alias("_src"))
            .unionByName(fallback.select("customer_id", "stock_code", "rank", F.lit(1).alias("_src"))))
    once = both.withColumn("_d", F.row_number().over(Window.partitionBy("customer_id", "stock_code").orderBy("_src", "rank")))
    order = Window.partitionBy("customer_id").orderBy("_src", "rank")
    return (once.where(F.col("_d") == 1).withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top_n)
            .select("customer_id", "rank", "stock_code"))


def evaluation_split(baskets: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(training baskets, hidden): each identified customer with at least two baskets has the
    last (by date, then basket id) hidden; every other basket, guests' included, trains."""
    last = Window.partitionBy("customer_id").orderBy(F.desc("invoice_date"), F.desc("basket_id"))
    count = Window.partitionBy("customer_id")
    ranked = (baskets.where(F.col("customer_id").isNotNull())
              .withColumn("_n", F.row_number().over(last)).withColumn("_of", F.count(F.lit(1)).over(count)))
    hidden = ranked.where((F.col("_n") == 1) & (F.col("_of") >= 2)).select(*baskets.columns)
    training = baskets.join(hidden.select("basket_id"), "basket_id", "left_anti")
    return training, hidden


def average_precision(recommended: str, relevant: str, k: int) -> F.Column:
    """AP@k of the array column `recommended` (ranked) against the set `relevant`."""
    hits = F.transform(F.slice(recommended, 1, k), lambda x: F.array_contains(relevant, x).cast("int"))
    precision_at_hits = F.transform(hits, lambda h, i: h * F.aggregate(F.slice(hits, 1, i + 1), F.lit(0), lambda a, b: a + b)
                                    / (i + 1))
    total = F.aggregate(precision_at_hits, F.lit(0.0), lambda a, b: a + b)
    return total / F.least(F.size(relevant), F.lit(k))


def judge(recs: DataFrame, hidden: DataFrame, hist: DataFrame, k: int) -> dict:
    """customers, hit_rate, map_at_k, coverage (share given any recommendation) of `recs`
    against each hidden basket's items that are not the customer's regular ones."""
    relevant = (hidden.select("customer_id", "items").join(hist.select("customer_id", "regular"), "customer_id", "left")
                .select("customer_id", F.array_except("items", F.coalesce("regular", F.array().cast("array<string>")))
                        .alias("relevant"))
                .where(F.size("relevant") > 0))
    ranked = recs.groupBy("customer_id").agg(
        F.transform(F.array_sort(F.collect_list(F.struct("rank", "stock_code"))), lambda s: s["stock_code"]).alias("recs"))
    scored = relevant.join(ranked, "customer_id", "left").select(
        F.coalesce("recs", F.array().cast("array<string>")).alias("recs"), "relevant")
    row = scored.agg(
        F.count(F.lit(1)).alias("customers"),
        F.avg(F.exists("recs", lambda x: F.array_contains("relevant", x)).cast("double")).alias("hit_rate"),
        F.avg(average_precision("recs", "relevant", k)).alias("map_at_k"),
        F.avg((F.size("recs") > 0).cast("double")).alias("coverage"),
    ).first()
    return {"customers": int(row["customers"]), "hit_rate": float(row["hit_rate"] or 0.0),
            "map_at_k": float(row["map_at_k"] or 0.0), "coverage": float(row["coverage"] or 0.0)}


def evaluate(baskets: DataFrame, mining: fpgrowth.MiningParams, p: RecommendParams, default_groups: int) -> list[dict]:
    """Rules against popular items on held-out last baskets (see the module's docstring): one
    dict per method with k, customers, hit_rate, map_at_k, coverage, and the training rules
    and baskets counted."""
    training, hidden = evaluation_split(baskets)
    # Each cached frame is built by an action of its own before a query reads it: Spark 4.0's
    # adaptive execution gives every reference to a cache not yet built a build job of its own
    # (SPARK-57547, fixed in 4.2: the duplicate builds can also mark a cache built before it is,
    # and plan with wrong sizes). The first `judge` read four such caches: the recommendations,
    # the histories (directly and through the recommendations), the rules and the hidden baskets.
    training, hidden = training.cache(), hidden.cache()
    try:
        n = training.count()
        hidden.count()
        # the mining's threshold in baskets; as a fraction of n, its ceiling is that count exactly
        threshold = fpgrowth.min_count(baskets.count(), mining.min_support)
        mining = dataclasses.replace(mining, min_support=min(1.0, (threshold - 0.5) / max(n, 1)))
        _, rules = fpgrowth.mine(training.select("items"), n, mining, default_groups)
        rules = rules.cache()
        hist = history(training, p.history_baskets, p.regular_baskets).join(hidden.select("customer_id"), "customer_id").cache()
        by_rules = recommend(hist, rules, p.top_n).cache()
        try:
            n_rules = rules.count()
            hist.count()
            by_rules.count()
            out = []
            methods = ((RULES, by_rules), (POPULAR, popular(hist, training, p.top_n)),
                       (FILLED, filled(by_rules, popular(hist, training, 2 * p.top_n), p.top_n)))
            for method, recs in methods:
                out.append({"method": method, "k": p.top_n, **judge(recs, hidden, hist, p.top_n),
                            "training_baskets": n, "training_rules": None if method == POPULAR else n_rules})
            return out
        finally:
            for df in (by_rules, rules, hist):
                df.unpersist()
    finally:
        training.unpersist()
        hidden.unpersist()


def run(lake: Lake, cfg: Config, p: RecommendParams) -> Run:
    """Recommendations for `p.as_of` (default: the latest date rules were mined for) from the
    rules mined then, and (with `p.evaluate`) the held-out evaluation; both replace that as_of.
    `Run.result` is the evaluation's rows."""
    if not lake.exists(schemas.GOLD_ASSOCIATION_RULES):
        raise StageError(f"table {schemas.GOLD_ASSOCIATION_RULES} does not exist in lake {lake.root}: "
                         "run `lakemine fpgrowth` first")
    versions = {t: lake.table_version(t) for t in (schemas.GOLD_BASKETS, schemas.GOLD_ASSOCIATION_RULES)}
    as_of = p.as_of
    if as_of is None:  # the latest date mined (itemsets are written even when no rule reaches the confidence)
        as_of = lake.read_table(schemas.GOLD_FREQUENT_ITEMSETS).agg(F.max("as_of")).first()[0]
    mining = _mining_params(lake, as_of, cfg)
    if as_of is None or mining is None:
        raise StageError(f"no fpgrowth run for {as_of or 'any date'} in {schemas.OPS_RUNS}: run `lakemine fpgrowth"
                         f"{f' --as-of {as_of}' if as_of else ''}` first")
    mined = lake.read_table(schemas.GOLD_ASSOCIATION_RULES, versions[schemas.GOLD_ASSOCIATION_RULES]).where(
        F.col("as_of") == F.lit(as_of))
    params = {**{k: v for k, v in asdict(p).items() if k != "as_of"}, "mining": asdict(mining)}
    with record_run(lake, STAGE, as_of, params) as run:
        run.run_id = deterministic_run_id(STAGE, as_of, params, versions)
        run.inputs.update(versions)
        baskets = fpgrowth.select_baskets(lake.read_table(schemas.GOLD_BASKETS, versions[schemas.GOLD_BASKETS]), as_of, 0)
        hist = history(baskets, p.history_baskets, p.regular_baskets).cache()
        try:
            run.rows_in = hist.count()
            recs = recommend(hist, mined.select("antecedent", "consequent", "confidence", "lift"), p.top_n)
            names = mined.select(F.col("consequent")[0].alias("stock_code"),
                                 F.col("consequent_description").alias("description")).dropDuplicates(["stock_code"])
            stamp = [F.lit(as_of).alias("as_of"), F.lit(run.run_id).alias("run_id")]
            out = recs.join(names, "stock_code", "left").select(
                "customer_id", "rank", "stock_code", F.coalesce("description", F.lit("")).alias("description"),
                "score", "lift", F.col("antecedent").alias("because"), *stamp)
            run.outputs[schemas.GOLD_RECOMMENDATIONS] = lake.overwrite_as_of(out, schemas.GOLD_RECOMMENDATIONS, as_of)
            run.rows_out = lake.rows_written(schemas.GOLD_RECOMMENDATIONS, run.outputs[schemas.GOLD_RECOMMENDATIONS])
        finally:
            hist.unpersist()
        run.message = f"{run.rows_out:,} recommendations for {run.rows_in:,} customers"
        if p.evaluate:
            window = fpgrowth.select_baskets(lake.read_table(schemas.GOLD_BASKETS, versions[schemas.GOLD_BASKETS]), as_of,
                                             mining.window_days)
            rows = evaluate(window, mining, p, max(2, 2 * lake.spark.sparkContext.defaultParallelism))
            frame = lake.spark.createDataFrame([(as_of, r["method"], r["k"], r["customers"], r["hit_rate"], r["map_at_k"],
                                                 r["coverage"], r["training_baskets"], r["training_rules"], run.run_id)
                                                for r in rows], schemas.RECOMMEND_EVAL_SCHEMA)
            run.outputs[schemas.OPS_RECOMMEND_EVAL] = lake.overwrite_as_of(frame, schemas.OPS_RECOMMEND_EVAL, as_of)
            run.result = rows
            by = {r["method"]: r for r in rows}
            run.message += (f"; held-out last baskets of {by[RULES]['customers']:,} customers: MAP@{p.top_n} rules "
                            f"{by[RULES]['map_at_k']:.4f} vs popular items {by[POPULAR]['map_at_k']:.4f}, hit rate "
                            f"{by[RULES]['hit_rate']:.3f} vs {by[POPULAR]['hit_rate']:.3f}; rules, then popular items: "
                            f"MAP {by[FILLED]['map_at_k']:.4f}, hit rate {by[FILLED]['hit_rate']:.3f}")
    return run


def _mining_params(lake: Lake, as_of: date | None, cfg: Config) -> fpgrowth.MiningParams | None:
    """The FP-growth parameters of the last successful fpgrowth run for `as_of` (its ops/runs
    row), so the evaluation mines its rules as those were mined; None when there is no such run."""
    if as_of is None or not lake.exists(schemas.OPS_RUNS):
        return None
    rows = (lake.read_table(schemas.OPS_RUNS)
            .where((F.col("stage") == fpgrowth.STAGE) & (F.col("as_of") == F.lit(as_of)) & (F.col("status") == "succeeded"))
            .orderBy(F.desc("finished_at")).select("params").limit(1).collect())
    if not rows:
        return None
    params = fpgrowth.MiningParams.from_config(cfg)
    known = {f.name for f in dataclasses.fields(params)} - {"as_of"}
    return dataclasses.replace(params, **{k: v for k, v in json.loads(rows[0]["params"]).items() if k in known})
