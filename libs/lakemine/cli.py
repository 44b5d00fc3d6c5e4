"""The `lakemine` command line: parses options, opens the session and lake, calls the stages.

Exit codes: 0 done; 2 bad arguments or unusable input (one line saying what and where);
1 anything else (the stage and table named). `--verbose` adds Spark's logs and tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import date
from typing import Callable

from lakemine import __version__
from lakemine.core.config import Config, load_config, packaged_defaults
from lakemine.core.errors import LakemineError, UsageError
from lakemine.io import schemas

log = logging.getLogger("lakemine")


class Console:
    """What the CLI tells people: progress lines and summaries, on stderr and stdout."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def step(self, stage: str, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {stage:<8} {text}", file=sys.stderr, flush=True)

    def out(self, text: str = "") -> None:
        print(text, flush=True)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date in YYYY-MM-DD form") from None


# The option types only parse; what a value may be is checked once, by the config's rules
# (`StageParams.from_config`), for options, config files and environment variables alike.


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def _range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split("-", 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a range like 2-10") from None
    return lo, hi


def _positive_int(text: str) -> int:
    """For the options that are not stage parameters (show --limit)."""
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be > 0")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lake", metavar="PATH_OR_URI", help="lake root (default from config: ./lake)")
    p.add_argument("--as-of", type=_date, metavar="YYYY-MM-DD", help="logical date (default: the latest date in the data)")
    p.add_argument("--config", metavar="FILE", help="YAML file overriding the packaged defaults")
    p.add_argument("-v", "--verbose", action="store_true", help="show Spark's logs and full tracebacks")


def _generate_options(p: argparse.ArgumentParser, d: Config, dirty_rate: float) -> None:
    g = d.generate
    p.add_argument("--customers", type=_int, help=f"customers to simulate (default from config: {g.customers})")
    p.add_argument("--days", type=_int, help=f"days of history (default from config: {g.days})")
    p.add_argument("--seed", type=_int, help=f"random seed; same seed, same files (default from config: {g.seed})")
    p.add_argument("--dirty-rate", type=_float, metavar="R",
                   help=f"probability per line of each defect type (default from config: {dirty_rate}; 0.01 dirties ~9%% of lines)")
    p.add_argument("--format", choices=("csv", "parquet"), help=f"file format (default from config: {g.format})")
    p.add_argument("--files", type=_int, help="number of output files (default: one per 5,000 customers)")
    p.add_argument("--population", choices=("growing", "stationary"),
                   help=f"growing: every customer starts within the period; stationary: as many leave as arrive, "
                        f"for drift checks (default from config: {g.population})")


def _command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand with the options every command takes (--lake, --as-of, --config, -v)."""
    p = sub.add_parser(name, **kwargs)
    _common(p)
    return p


INPUT_HELP = "export file, folder or glob, Delta table folder, or table:NAME (a metastore table)"
STAGES = ("ingest", "clean", "features", "fpgrowth", "recommend", "forecast", "kmeans", "tune", "train", "score",
          "report", "maintain")


def build_parser() -> argparse.ArgumentParser:
    """The parser. Options left out are None: the stage's parameters then come from the config
    (defaults.yaml, the --config file, LAKEMINE_* variables); help texts quote the packaged
    defaults."""
    d = packaged_defaults()
    parser = argparse.ArgumentParser(
        prog="lakemine",
        description="Retail data mining on Spark and Delta Lake: raw exports -> bronze -> silver -> gold.",
        epilog="Every stage takes --lake, --as-of and --config. Exit codes: 0 done, 2 bad arguments or "
        "unusable input, 1 anything else. Environment: LAKEMINE_<SECTION>__<KEY> overrides config.",
    )
    parser.add_argument("--version", action="version", version=f"lakemine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(sub, "generate", help="write synthetic raw line items (UCI Online Retail layout)",
                       description="Write deterministic raw line items with planted bundles, customer groups and "
                       "churn, plus _manifest.json (what was planted and injected) and _truth/.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (files there named online_retail_*.csv are replaced)")
    _generate_options(p, d, d.generate.dirty_rate)

    p = _command(sub, "ingest", help="raw files into bronze/transactions",
                       description="Read CSV (plain, .gz or .bz2; any encoding, delimiter and decimal separator a "
                       "source profile declares), Parquet, a Delta table folder or a metastore table into "
                       "bronze/transactions; unreadable lines go to bronze/quarantine with a reason. Content already "
                       "ingested is skipped. A file's source profile is --source or the one its header matches "
                       f"(built in: {', '.join(d.sources)}; add yours under `sources` in --config).")
    p.add_argument("--input", required=True, metavar="PATH", help=INPUT_HELP)
    p.add_argument("--source", metavar="NAME", help="the source profile of every input (default: detected from each header)")

    p = _command(sub, "inspect", help="read a sample of an export and say how to ingest it",
                       description="Print the encoding, delimiter, header and columns of an export, the source profile "
                       "that matches it or a suggested one (YAML) for an unknown schema, which date formats parse its "
                       "timestamps, and the share of sampled lines each quarantine reason would take. Writes nothing to "
                       "the lake.")
    p.add_argument("--input", required=True, metavar="PATH", help=INPUT_HELP + " (a folder or glob: its first file)")
    p.add_argument("--source", metavar="NAME", help="check the export against this profile instead of detecting one")
    p.add_argument("--write", metavar="FILE", help="save the matched or suggested profile as a config file for --config")
    p.add_argument("--sample", type=_positive_int, default=5000, metavar="N", help="data lines to sample (default 5000)")

    p = _command(sub, "clean", help="bronze into silver/transactions",
                       description="Type, trim and validate bronze rows into silver/transactions; exact duplicate lines "
                       "are removed and counted; failing rows go to silver/quarantine with a reason code. Only the bronze "
                       "batches silver does not hold yet are read (silver is rewritten on the dates they carry); silver "
                       "is rebuilt from all of bronze when it is new, the clean settings or source profiles changed, or a "
                       "corrected file superseded a batch. The summary says which.")

    p = _command(sub, "features", help="silver into gold baskets, customer features and labels",
                       description="Build gold/baskets (every sales invoice), and for --as-of: gold/customer_features "
                       "(RFM and behaviour, using only rows on or before as-of, with standardized z_ copies), "
                       "gold/feature_scaler and gold/labels (churned = no purchase in the horizon after as-of).")
    p.add_argument("--horizon-days", type=_int, metavar="H", help=f"churn horizon in days (default from config: {d.features.horizon_days})")
    p.add_argument("--training-snapshots", type=_int, metavar="N",
                   help="also (re)build N earlier snapshots whose labels are now complete: as-of minus the horizon, "
                   f"then features.snapshot_spacing_days ({d.features.snapshot_spacing_days}) further back each "
                   f"(default from config: {d.features.training_snapshots}; 0 = only --as-of)")

    p = _command(sub, "fpgrowth", help="gold/baskets into frequent itemsets and association rules",
                       description="Exact frequent itemsets and single-consequent rules with MLlib's definitions. The "
                       "default engine (pfp) shards baskets by item groups and mines each group with pyfim's C "
                       "FP-growth in parallel; --engine mllib uses pyspark.ml.fpm.FPGrowth.")
    f = d.fpgrowth
    p.add_argument("--min-support", type=_float, metavar="S",
                   help=f"minimum support, a fraction of baskets (default from config: {f.min_support})")
    p.add_argument("--min-confidence", type=_float, metavar="C", help=f"minimum rule confidence (default from config: {f.min_confidence})")
    p.add_argument("--window-days", type=_int, metavar="W",
                   help=f"baskets of the W days up to as-of; 0 = all (default from config: {f.window_days})")
    p.add_argument("--max-itemsets", type=_int, metavar="N",
                   help=f"stop with a message naming the support to use when more itemsets are found (default from config: {f.max_itemsets:,})")
    p.add_argument("--max-length", type=_int, metavar="L", help="longest itemset to mine (default: no limit)")
    p.add_argument("--engine", choices=("pfp", "mllib"), help=f"mining engine (default from config: {f.engine})")
    p.add_argument("--groups", type=_int, help="item groups for pfp (default: 2 x Spark parallelism)")

    p = _command(sub, "recommend", help="association rules into per-customer recommendations, evaluated on held-out baskets",
                       description="For each identified customer, the items the association rules mined for --as-of "
                       "(default: the latest) recommend from the customer's last baskets, scored by the best applying "
                       "rule's confidence (ties: lift), leaving out items the customer buys regularly, into "
                       "gold/recommendations. Then each customer's last basket is hidden, rules are mined again without "
                       "those baskets, and hit rate@K and MAP@K of the rules and of the most popular items go to "
                       "ops/recommend_eval.")
    r = d.recommend
    p.add_argument("--top-n", type=_int, metavar="N",
                   help=f"items per customer, and the K of the evaluation (default from config: {r.top_n})")
    p.add_argument("--history-baskets", type=_int, metavar="B",
                   help=f"the customer's last B baskets are matched against the rules (default from config: {r.history_baskets})")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_const", const=False,
                   help="skip the held-out evaluation (it mines the rules a second time)")

    p = _command(sub, "forecast", help="weekly demand forecasts for the best-selling items, backtested",
                       description="Weekly units per item (weeks from Monday; sales lines of silver without service "
                       "lines) for the best sellers that make --volume-share of the units, fitted per item in parallel "
                       "with statsmodels' ETS (the lowest-AICc of simple, damped-trend and, with two seasons of history, "
                       "seasonal models), forecast --horizon-weeks after the last complete week up to --as-of with "
                       "prediction intervals, into gold/demand_forecast. The last --backtest-weeks are also hidden and "
                       "forecast again; MAE, MASE and sMAPE of the model and of the naive and seasonal-naive baselines "
                       "go to ops/forecast_backtest.")
    fc = d.forecast
    p.add_argument("--volume-share", type=float, metavar="S",
                   help=f"forecast the best sellers that make this share of units (default from config: {fc.volume_share})")
    p.add_argument("--max-items", type=_int, metavar="N", help=f"at most N items (default from config: {fc.max_items})")
    p.add_argument("--horizon-weeks", type=_int, metavar="H", help=f"weeks to forecast (default from config: {fc.horizon_weeks})")
    p.add_argument("--backtest-weeks", type=_int, metavar="B",
                   help=f"weeks hidden and forecast for the backtest (default from config: {fc.backtest_weeks})")
    p.add_argument("--season-weeks", type=_int, metavar="M",
                   help=f"seasonal period in weeks (default from config: {fc.season_weeks})")

    p = _command(sub, "kmeans", help="customer features into segments",
                       description="K-means (seeded k-means++ and Lloyd) on the standardized features of --as-of; k given by "
                       "--k or chosen by the best silhouette over --k-range, on a sample of at most kmeans.sample_size "
                       "customers; the chosen k refined on every customer in Spark. Writes gold/customer_segments, "
                       "gold/segment_profiles (centres in original units, readable labels) and the model.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--k", type=_int, help="number of segments")
    km = d.kmeans
    group.add_argument("--k-range", type=_range, metavar="LO-HI", help="candidate k (default from config: %d-%d)" % km.k_range)
    p.add_argument("--seed", type=_int, help=f"K-means seed (default from config: {km.seed})")
    p.add_argument("--n-init", type=_int, help=f"k-means++ runs per k, the lowest cost kept (default from config: {km.n_init})")

    p = _command(sub, "tune", help="seeded random search over the churn MLP's settings, trials in parallel as Spark tasks",
                       description="Build train's training set (same dates, split and seed) and train one MLP per trial, "
                       "each a single-process trainer in one Spark task reading the split through Petastorm, as many "
                       "at once as there are task slots. Trial 0 is the config's train settings; the others draw "
                       "hidden layers (depth, width), activation (relu, leaky_relu, gelu, tanh), dropout, batch norm, "
                       "learning rate and weight decay from the tune section, seeded. Every trial's settings, "
                       "validation AUC and log loss go to ops/tune_trials beside the logistic-regression and "
                       "gradient-boosted-trees baselines on the same split. `lakemine train --params best` then "
                       "trains the winner on the configured workers.",
                       epilog="Why Spark tasks and not Horovod: the network is small, so a trial is seconds of "
                       "arithmetic and a per-step allreduce would cost more than the step; independent trials fill "
                       "every core with no communication, and one process makes each trial reproducible.")
    tu = d.tune
    p.add_argument("--trials", type=_int, metavar="N", help=f"random trials besides the config's own (default from config: {tu.trials})")
    p.add_argument("--seed", type=_int, help=f"seed of the draws (default from config: {tu.seed})")
    p.add_argument("--epochs", type=_int, metavar="E", help=f"at most E epochs per trial (default from config: {tu.epochs})")

    p = _command(sub, "train", help="features and labels into a churn model (Petastorm -> Horovod or TorchDistributor)",
                       description="Build the training set (standardized features + labels + segment one-hot; earlier "
                       "as_of dates train and the latest validates, or a seeded customer split when one date has "
                       "complete labels), write it as Parquet under <lake>/models/churn/<version>/data, and train the "
                       "MLP on --workers processes that each read their own Petastorm shard. Horovod "
                       "(horovod.spark.run, ring-allreduce; Gloo on CPU, NCCL on GPU) or TorchDistributor (DDP). "
                       "Early stopping on validation AUC; a checkpoint every epoch, resumed when re-run with the same "
                       "inputs. Writes state_dict.pt and metadata.json (with a logistic-regression baseline).",
                       epilog="Defaults come from the config's train section. GPU nodes without Spark: "
                       "`lakemine train --write-spec spec.json`, then `horovodrun -np N python -m lakemine.learning.train "
                       "--spec spec.json`, then `lakemine train` again to record the finished model.")
    tr = d.train
    p.add_argument("--backend", choices=("horovod", "torch"), help=f"launcher (default from config: {tr.backend})")
    p.add_argument("--workers", type=_int, metavar="N", help=f"training processes, one Spark task each (default from config: {tr.workers})")
    p.add_argument("--epochs", type=_int, metavar="E", help=f"at most E epochs (default from config: {tr.epochs}; early stopping may end sooner)")
    p.add_argument("--batch-size", type=_int, metavar="B", help=f"rows per step per worker (default from config: {tr.batch_size}; fewer on small sets)")
    p.add_argument("--learning-rate", type=_float, metavar="LR", help=f"per-worker Adam rate, scaled by workers (default from config: {tr.learning_rate})")
    p.add_argument("--patience", type=_int, metavar="P", help=f"epochs without a better validation AUC before stopping (default from config: {tr.patience})")
    p.add_argument("--seed", type=_int, help=f"seed of the split, the initial weights and the shuffling (default from config: {tr.seed})")
    p.add_argument("--params", choices=("config", "best"),
                   help="network and optimizer settings: the config's, or the best trial of the latest `lakemine tune` "
                   f"on or before the training date (default from config: {tr.params})")
    p.add_argument("--write-spec", metavar="FILE", help="prepare the data and write the worker spec for horovodrun, then stop")

    p = _command(sub, "score", help="score customers with a churn model into gold/customer_scores (MERGE)",
                       description="Score gold/customer_features of --as-of (default: the latest) with a churn model "
                       "(default: the latest trained) through an iterator-of-batches Arrow UDF, MERGE into "
                       "gold/customer_scores on (customer_id, as_of, model_version), and write the population "
                       "stability index of every feature against the training snapshot to ops/drift (warning above "
                       f"score.drift_warn_psi, default {d.score.drift_warn_psi}).")
    p.add_argument("--model-version", metavar="V", help="a folder name under <lake>/models/churn/ (default: the latest)")

    p = _command(sub, "run", help="the whole pipeline in one local session, then the report",
                       description="Generate data when no --input is given, then ingest, clean, features (as-of and "
                       f"its training snapshots), fpgrowth (the config's fpgrowth section: support {d.fpgrowth.min_support}), "
                       "recommend (with its held-out evaluation), forecast (weekly demand of the best sellers), "
                       "kmeans (k by silhouette over run.k_range, %d-%d), tune (the model search), train " % d.run.k_range +
                       "(the search's best settings), score and drift, write <lake>/reports/<as_of>/report.html, and "
                       "print a summary: rows per table, quarantine by reason, rules, segments, model AUC against "
                       "the baseline, scores, drift warnings, wall time per stage.",
                       epilog="Re-running with the same input leaves the same rows: ingested files are skipped and "
                       "every stage replaces its own as_of.")
    p.add_argument("--input", metavar="PATH", help=INPUT_HELP + " instead of generated data")
    p.add_argument("--source", metavar="NAME", help="the source profile of every input (default: detected from each header)")
    _generate_options(p, d, d.run.dirty_rate)
    p.add_argument("--epochs", type=_int, metavar="E", help=f"at most E training epochs (default from config: {tr.epochs})")
    p.add_argument("--workers", type=_int, metavar="N", help=f"training processes (default from config: {tr.workers})")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--skip-slow", action="store_true",
                   help="skip the slow parts: the recommendations' held-out evaluation, the demand forecasts and "
                   "the model search (train then takes the config's settings)")

    p = _command(sub, "report", help="write <lake>/reports/<as_of>/report.html with its plots",
                       description="A self-contained HTML page (plots embedded): data quality, segments, top rules "
                       "by lift, training curves against the baseline, score distributions, drift per feature.")

    p = _command(sub, "maintain", help="OPTIMIZE and VACUUM every Delta table",
                       description="Compact small files (OPTIMIZE) and delete files no version within the retention "
                       "needs (VACUUM) in every table under the lake root. Rows never change.")
    p.add_argument("--retention-hours", type=_int, metavar="H",
                   help=f"keep files needed by versions of the last H hours (default from config: {d.maintain.retention_hours})")
    p.add_argument("--table", action="append", metavar="LAYER/NAME", help="only this table (repeatable)")

    p = _command(sub, "forget", help="erase customers everywhere: tables, raw lines, model data copies, old versions",
                       description="Erase customers (GDPR art. 17): their rows leave every table holding customer "
                       "rows (bronze and silver lines and quarantines, customer days, features, labels, segments, "
                       "scores, recommendations); baskets keep their items without the id. Models trained on them "
                       "are flagged and lose their copy of the training data (the next scheduled day retrains). "
                       "Every touched table loses its versions from before the erasure (VACUUM with no retention, "
                       "a checkpoint, the older log files deleted): time travel to them ends. ops/erasures keeps a "
                       "keyed hash of each id, never the id.",
                       epilog="The key of the hash comes from the environment variable named by privacy.key_env "
                       f"(default {d.privacy.key_env}) or the file privacy.key_file, never from the config or the "
                       "lake. Run it while no other stage writes to the lake.")
    p.add_argument("--customer", action="append", metavar="ID", help="a customer id as silver holds it (repeatable)")
    p.add_argument("--from-file", metavar="F", help="a file of customer ids, one per line (# starts a comment)")

    p = _command(sub, "package", help="build the zip that spark-submit --py-files ships, and print the submit line",
                       description="Zip the lakemine package (same sources, same bytes) into --out and print the "
                       "spark-submit line that runs a stage with it: the master, the Delta jars or packages and "
                       "conf (from the config's spark.delta_jars), --py-files and jobs/<stage>.py.",
                       epilog="On a cluster the Python on every node needs lakemine's dependencies (torch, pyfim, "
                       "petastorm, horovod); the zip carries lakemine itself. See infra/submit/submit.sh.")
    p.add_argument("--out", default="dist", metavar="DIR", help="folder for the zip (default dist)")
    p.add_argument("--master", default="yarn", metavar="URL",
                   help="master for the printed line: yarn, spark://HOST:7077, k8s://https://HOST:443, local[*] (default yarn)")
    p.add_argument("--stage", default="ingest", choices=STAGES, help="stage of the printed line (default ingest)")

    p = _command(sub, "show", help="print rows of a lake table")
    p.add_argument("table", help="e.g. silver/transactions")
    p.add_argument("--limit", type=_positive_int, default=20, help="rows to print (default 20)")
    p.add_argument("--version", dest="table_version", type=int, metavar="V", help="read the table at this Delta version")

    p = _command(sub, "history", help="print the Delta history of a lake table")
    p.add_argument("table")
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)
    if not verbose:  # pyspark logs every analysis error as JSON before raising it
        logging.getLogger("DataFrameQueryContextLogger").setLevel(logging.CRITICAL)


def _open(cfg: Config, args: argparse.Namespace, submitted: bool):
    from lakemine.io.lake import Lake
    from lakemine.io.spark import session

    spark = session(cfg, submitted=submitted, quiet=not args.verbose)
    return Lake.at(spark, cfg.lake)


def _print_run(console: Console, run) -> None:
    parts = [f"status={run.status}", f"in={run.rows_in:,}", f"out={run.rows_out:,}",
             f"quarantined={run.rows_quarantined:,}"]
    if run.rows_duplicate:
        parts.append(f"duplicates={run.rows_duplicate:,}")
    console.out(f"{run.stage}: " + " ".join(parts) + f"  (run {run.run_id})")
    for reason, n in sorted(run.quarantine_reasons.items()):
        console.out(f"  quarantined {reason:<20} {n:>10,}")
    if run.message:
        console.out(f"  {run.message}")


def cmd_generate(args, cfg, console, submitted) -> int:
    from lakemine.io.spark import session
    from lakemine.stages.generate import GenerateParams, generate

    p = GenerateParams.from_config(cfg, customers=args.customers, days=args.days, seed=args.seed,
                                   dirty_rate=args.dirty_rate, format=args.format, files=args.files,
                                   population=args.population)
    spark = session(cfg, submitted=submitted, quiet=not args.verbose)
    console.step("generate", f"{p.customers:,} customers x {p.days} days, seed {p.seed} -> {args.out}")
    manifest = generate(spark, args.out, p)
    console.out(f"generate: {manifest['data_lines']:,} lines in {len(manifest['files'])} file(s) under {args.out}")
    injected = {k: v for k, v in manifest["injected"].items() if v}
    if injected:
        console.out("  injected defects: " + ", ".join(f"{k}={v:,}" for k, v in sorted(injected.items())))
    return 0


def _check_local_input(path: str) -> None:
    """Fail fast, before Spark starts, on a local input path that does not exist."""
    import glob
    import os

    from lakemine.core import storage

    if storage.is_uri(path) or path.startswith("table:"):
        return
    if not os.path.exists(path) and not glob.glob(path):
        raise UsageError(f"{path}: no such file or directory")


def cmd_ingest(args, cfg, console, submitted) -> int:
    from lakemine.stages import ingest

    _check_local_input(args.input)
    p = ingest.IngestParams.from_config(cfg, input=args.input, as_of=args.as_of, source=args.source)
    lake = _open(cfg, args, submitted)
    console.step("ingest", f"{args.input} -> {lake.path(schemas.BRONZE_TRANSACTIONS)}")
    run = ingest.run(lake, cfg, p)
    _print_run(console, run)
    for path, why in sorted(run.result.skipped.items()):
        console.out(f"  skipped {path}: {why}")
    return 0


def cmd_inspect(args, cfg, console, submitted) -> int:
    from lakemine.stages import inspect

    _check_local_input(args.input)
    if args.source is not None and args.source not in cfg.sources:
        raise UsageError(f"--source {args.source}: no such profile; configured: {', '.join(sorted(cfg.sources))}")
    lake = _open(cfg, args, submitted)
    found = inspect.inspect(lake.spark, cfg, args.input, args.source, args.sample)
    console.out(inspect.format_report(found))
    if args.write:
        from lakemine.core import storage

        storage.write_text(args.write, found.yaml.replace("THIS_FILE", args.write))
        console.out(f"profile written to {args.write}: use it with --config {args.write}")
    return 0


def cmd_clean(args, cfg, console, submitted) -> int:
    from lakemine.stages import clean

    p = clean.CleanParams.from_config(cfg, as_of=args.as_of)
    lake = _open(cfg, args, submitted)
    console.step("clean", f"{schemas.BRONZE_TRANSACTIONS} -> {schemas.SILVER_TRANSACTIONS}")
    _print_run(console, clean.run(lake, cfg, p))
    return 0


def cmd_features(args, cfg, console, submitted) -> int:
    from lakemine.stages import features

    p = features.FeatureParams.from_config(cfg, as_of=args.as_of, horizon_days=args.horizon_days,
                                           training_snapshots=args.training_snapshots)
    lake = _open(cfg, args, submitted)
    console.step("features", f"{schemas.SILVER_TRANSACTIONS} -> gold baskets, features, labels")
    for run in features.run(lake, cfg, p).result:
        _print_run(console, run)
    return 0


def cmd_fpgrowth(args, cfg, console, submitted) -> int:
    from lakemine.mining import fpgrowth

    p = fpgrowth.MiningParams.from_config(
        cfg, as_of=args.as_of, min_support=args.min_support, min_confidence=args.min_confidence,
        window_days=args.window_days, max_itemsets=args.max_itemsets, max_length=args.max_length,
        groups=args.groups, engine=args.engine)
    lake = _open(cfg, args, submitted)
    console.step("fpgrowth", f"{schemas.GOLD_BASKETS} -> itemsets and rules (engine {p.engine}, support {p.min_support})")
    _print_run(console, fpgrowth.run(lake, cfg, p))
    return 0


def cmd_recommend(args, cfg, console, submitted) -> int:
    from lakemine.mining import recommend

    p = recommend.RecommendParams.from_config(cfg, as_of=args.as_of, top_n=args.top_n, history_baskets=args.history_baskets,
                                              evaluate=args.evaluate)
    lake = _open(cfg, args, submitted)
    console.step("recommend", f"{schemas.GOLD_ASSOCIATION_RULES} -> {schemas.GOLD_RECOMMENDATIONS} (top {p.top_n})")
    run = recommend.run(lake, cfg, p)
    _print_run(console, run)
    width = max((len(r["method"]) for r in run.result or []), default=0)
    for r in run.result or []:
        console.out(f"  {r['method']:<{width}}  hit rate@{r['k']} {r['hit_rate']:.3f}  MAP@{r['k']} {r['map_at_k']:.4f}  "
                    f"coverage {r['coverage']:.3f}  ({r['customers']:,} held-out baskets)")
    return 0


def cmd_forecast(args, cfg, console, submitted) -> int:
    from lakemine.learning import forecast

    p = forecast.ForecastParams.from_config(
        cfg, as_of=args.as_of, volume_share=args.volume_share, max_items=args.max_items,
        horizon_weeks=args.horizon_weeks, backtest_weeks=args.backtest_weeks, season_weeks=args.season_weeks)
    lake = _open(cfg, args, submitted)
    console.step("forecast", f"{schemas.SILVER_TRANSACTIONS} -> {schemas.GOLD_DEMAND_FORECAST} "
                             f"({p.horizon_weeks} weeks, items making {p.volume_share:.0%} of units, at most {p.max_items})")
    run = forecast.run(lake, cfg, p)
    _print_run(console, run)
    for r in run.result or []:
        console.out(f"  {r['method']:<14}  mean MASE {r['mean_mase']:.3f}  median {r['median_mase']:.3f}  "
                    f"mean sMAPE {r['mean_smape']:.3f}  ({r['items']:,} items)")
    return 0


def cmd_kmeans(args, cfg, console, submitted) -> int:
    from lakemine.mining import kmeans

    k_range = args.k_range if args.k is None else None
    p = kmeans.KMeansParams.from_config(cfg, as_of=args.as_of, k=args.k, k_range=k_range, seed=args.seed,
                                        n_init=args.n_init)
    lake = _open(cfg, args, submitted)
    console.step("kmeans", f"{schemas.GOLD_CUSTOMER_FEATURES} -> segments (k {p.k or '%d-%d' % p.k_range})")
    _print_run(console, kmeans.run(lake, cfg, p))
    return 0


def cmd_tune(args, cfg, console, submitted) -> int:
    from lakemine.learning import tune

    p = tune.TuneParams.from_config(cfg, trials=args.trials, seed=args.seed, epochs=args.epochs, as_of=args.as_of)
    lake = _open(cfg, args, submitted)
    console.step("tune", f"{schemas.GOLD_CUSTOMER_FEATURES} + {schemas.GOLD_LABELS} -> {schemas.OPS_TUNE_TRIALS} "
                         f"({p.trials} trials + the config's, seed {p.seed}, at most {p.epochs} epochs each)")
    run = tune.run(lake, cfg, p)
    _print_run(console, run)
    console.out(format_trials(run.result))
    return 0


def format_trials(rows: list[dict]) -> str:
    """The search as a table, best first, the baselines at the end."""
    from lakemine.learning.tune import MLP, ranked

    lines = ["  trial  val AUC  log loss  epochs  seconds  settings"]
    for r in ranked(rows) + [r for r in rows if r["model"] == MLP and r["error"]]:
        metrics = (f"{r['val_auc']:7.4f}  {r['val_log_loss']:8.4f}  {r['best_epoch']:>2}/{r['epochs_run']:<3}"
                   if not r["error"] else f"{'failed':>7}  {'':8}  {'':6}")
        settings = r["error"] or (f"hidden {r['hidden']} {r['activation']}, dropout {r['dropout']:g}, "
                                  f"batch norm {'on' if r['batch_norm'] else 'off'}, lr {r['learning_rate']:.3g}, "
                                  f"weight decay {r['weight_decay']:.3g}")
        lines.append(f"  {r['trial']:>5}  {metrics}  {_secs(r['seconds'])}  {settings}")
    for r in rows:
        if r["model"] != MLP:
            lines.append(f"  {'':>5}  {r['val_auc']:7.4f}  {r['val_log_loss']:8.4f}  {'':6}  {_secs(r['seconds'])}  {r['model']}")
    return "\n".join(lines)


def _secs(seconds: float | None) -> str:
    return f"{seconds:7.1f}" if seconds is not None else f"{'-':>7}"


def cmd_train(args, cfg, console, submitted) -> int:
    from lakemine.learning import train

    p = train.TrainParams.from_config(cfg, backend=args.backend, workers=args.workers, epochs=args.epochs,
                                      batch_size=args.batch_size, learning_rate=args.learning_rate,
                                      patience=args.patience, seed=args.seed, params=args.params, as_of=args.as_of,
                                      spec_out=args.write_spec, verbose=args.verbose)
    lake = _open(cfg, args, submitted)
    console.step("train", f"{schemas.GOLD_CUSTOMER_FEATURES} + {schemas.GOLD_LABELS} -> churn model "
                 f"({p.backend} x {p.workers}, at most {p.epochs} epochs)")
    run = train.run(lake, cfg, p)
    _print_run(console, run)
    if run.result:
        console.out(format_training(run.result))
    return 0


def format_training(meta: dict) -> str:
    lines = [f"  model folder: models/churn/{meta['model_version']}  "
             f"({meta['rows']['train']:,} train / {meta['rows']['val']:,} validation rows, split by {meta['split']['kind']})",
             "  epoch  train loss  val loss  val AUC"]
    for h in meta["history"]:
        mark = "  <- best" if h["epoch"] == meta["epochs"]["best"] else ""
        lines.append(f"  {h['epoch']:>5}  {h['train_loss']:>10.4f}  {h['val_loss']:>8.4f}  {h['val_auc']:>7.4f}{mark}")
    lines.append(f"  validation AUC {meta['validation']['auc']:.4f}, log loss {meta['validation']['log_loss']:.4f}; "
                 f"logistic-regression baseline AUC {meta['baseline']['auc']:.4f}, log loss {meta['baseline']['log_loss']:.4f}")
    for b in meta.get("baselines", [])[1:]:
        lines.append(f"  {b['model']} baseline AUC {b['auc']:.4f}, log loss {b['log_loss']:.4f}")
    return "\n".join(lines)


def cmd_score(args, cfg, console, submitted) -> int:
    from lakemine.learning import score

    p = score.ScoreParams.from_config(cfg, model_version=args.model_version, as_of=args.as_of)
    lake = _open(cfg, args, submitted)
    console.step("score", f"{schemas.GOLD_CUSTOMER_FEATURES} -> {schemas.GOLD_CUSTOMER_SCORES} "
                 f"(model {args.model_version or 'latest'})")
    run = score.run(lake, cfg, p)
    _print_run(console, run)
    console.out("  feature              PSI  status")
    for d in run.result:
        console.out(f"  {d.feature:<18} {d.psi:6.3f}  {d.status}")
    return 0


def cmd_run(args, cfg, console, submitted) -> int:
    from lakemine.pipeline import run_pipeline

    if args.input:
        _check_local_input(args.input)
    lake = _open(cfg, args, submitted)
    summary = run_pipeline(lake, cfg, args, console)
    console.out(summary)
    return 0


def cmd_report(args, cfg, console, submitted) -> int:
    from lakemine import report

    lake = _open(cfg, args, submitted)
    console.step("report", f"{lake.root} -> reports/")
    console.out(f"report: {report.run(lake, cfg, report.ReportParams(as_of=args.as_of)).result}")
    return 0


def cmd_maintain(args, cfg, console, submitted) -> int:
    from lakemine.stages import maintain

    p = maintain.MaintainParams.from_config(cfg, retention_hours=args.retention_hours, as_of=args.as_of,
                                            tables=tuple(args.table) if args.table else None,
                                            progress=lambda text: console.step("maintain", text))
    lake = _open(cfg, args, submitted)
    if args.table:
        missing = [t for t in args.table if not lake.exists(t)]
        if missing:
            raise UsageError(f"{', '.join(missing)}: no such Delta table in lake {lake.root}")
    console.step("maintain", f"OPTIMIZE and VACUUM under {lake.root}")
    run = maintain.run(lake, cfg, p)
    _print_run(console, run)
    console.out(f"  {'table':<26} {'compacted':>9} {'written':>8} {'vacuumed':>9} {'MB freed':>9}  version")
    for t in run.result:
        console.out(f"  {t.table:<26} {t.files_compacted:>9,} {t.files_written:>8,} {t.files_deleted:>9,} "
                    f"{t.bytes_deleted / 1e6:>9.2f}  {t.version}")
    return 0


def cmd_forget(args, cfg, console, submitted) -> int:
    from lakemine.stages import forget

    ids = forget.read_ids(args.customer, args.from_file)
    p = forget.ForgetParams.from_config(cfg, customers=ids, as_of=args.as_of,
                                        progress=lambda text: console.step("forget", text))
    lake = _open(cfg, args, submitted)
    run = forget.run(lake, cfg, p)
    _print_run(console, run)
    erasure = run.result
    console.out(f"  {'table':<26} {'rows':>8}  first version now")
    for table, first in erasure.first_versions.items():
        rows = erasure.rows.get(table, 0)
        console.out(f"  {table:<26} {rows:>8,}  {first}" + ("  (ids set to null, items kept)" if table == "gold/baskets" else ""))
    if erasure.models:
        console.out(f"  models flagged, training data deleted: {', '.join(erasure.models)} (retrained on the next "
                    "scheduled day)")
    console.out(f"  ops/erasures: {erasure.customers} keyed hash(es); versions before the erasure are gone (no time travel to them)")
    return 0


def cmd_package(args, cfg, console, submitted) -> int:
    import os
    import shlex

    from lakemine.orchestration.dags import build_py_files
    from lakemine.orchestration.jars import PACKAGE_JOB, jobs_dir, submit_args

    path = build_py_files(os.path.abspath(os.path.join(args.out, f"lakemine-{__version__}-py.zip")))
    console.out(f"package: {path} ({os.path.getsize(path) / 1024:,.0f} KiB)")
    jobs = jobs_dir(cfg)
    entry = [str(jobs / f"{args.stage}.py")] if jobs is not None else [str(PACKAGE_JOB), args.stage]
    line = ["spark-submit", "--master", args.master, *submit_args(cfg), "--py-files", path,
            *entry, "--lake", args.lake or cfg.lake]
    if args.stage == "ingest":
        line += ["--input", "INPUT"]
    if args.config:
        line += ["--config", os.path.abspath(args.config)]
    if args.as_of:
        line += ["--as-of", args.as_of.isoformat()]
    console.out(" ".join(shlex.quote(a) for a in line))
    return 0


def cmd_show(args, cfg, console, submitted) -> int:
    lake = _open(cfg, args, submitted)
    df = lake.read_table(args.table, version=args.table_version)
    df.show(args.limit, truncate=60)
    return 0


def cmd_history(args, cfg, console, submitted) -> int:
    lake = _open(cfg, args, submitted)
    rows = lake.history(args.table).select("version", "timestamp", "operation", "operationMetrics").collect()
    for r in rows:
        metrics = {k: v for k, v in (r["operationMetrics"] or {}).items() if k in ("numOutputRows", "numDeletedRows", "numFiles", "numAddedFiles", "numRemovedFiles")}
        console.out(f"{r['version']:>5}  {r['timestamp']}  {r['operation']:<18} {json.dumps(metrics, sort_keys=True)}")
    return 0


COMMANDS: dict[str, Callable] = {
    "generate": cmd_generate,
    "ingest": cmd_ingest,
    "inspect": cmd_inspect,
    "clean": cmd_clean,
    "features": cmd_features,
    "fpgrowth": cmd_fpgrowth,
    "recommend": cmd_recommend,
    "forecast": cmd_forecast,
    "kmeans": cmd_kmeans,
    "tune": cmd_tune,
    "train": cmd_train,
    "score": cmd_score,
    "run": cmd_run,
    "report": cmd_report,
    "maintain": cmd_maintain,
    "forget": cmd_forget,
    "package": cmd_package,
    "show": cmd_show,
    "history": cmd_history,
}


def main(argv: list[str] | None = None, submitted: bool = False) -> int:
    """Run one command; returns the exit code. `submitted=True` from jobs/ under spark-submit."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    console = Console()
    stage = args.command
    try:
        cfg = load_config(args.config).with_lake(args.lake)
        return COMMANDS[stage](args, cfg, console, submitted)
    except UsageError as exc:
        print(f"lakemine {stage}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except LakemineError as exc:
        print(f"lakemine {stage}: failed: {exc}", file=sys.stderr)
        if args.verbose:
            raise
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lakemine {stage}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI promises no bare traceback
        from lakemine.io.lake import conflict

        clash = conflict(exc)
        if clash:
            print(f"lakemine {stage}: failed: another run committed to the same table first ({clash}); every commit "
                  "of this run is whole or absent, rerun it", file=sys.stderr)
            if args.verbose:
                raise
            return 1
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"lakemine {stage}: failed: {type(exc).__name__}: {first} (run with --verbose for details)", file=sys.stderr)
        if args.verbose:
            raise
        return 1
