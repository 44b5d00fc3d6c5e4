"""`lakemine report`: one self-contained HTML page about the lake for one logical date.

`write_report(lake, cfg, as_of)` reads ops/runs, the quarantines, gold/segment_profiles,
gold/association_rules, the latest churn model's metadata, gold/customer_scores and ops/drift,
and writes `<lake>/reports/<as_of>/report.html`. Every table is aggregated in Spark (groupBy,
limit) and only small results reach the driver. Plots are matplotlib figures embedded as PNG
data URIs and the CSS is inline, so the page needs nothing but itself. A section whose table
is missing, or has no rows for `as_of`, says so and names the command that fills it.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import numbers
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import pandas as pd
import pyspark.sql.functions as F
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from pyspark.sql import DataFrame, Window

from lakemine import artifacts, schemas
from lakemine.config import Config
from lakemine.errors import LakemineError, StageError
from lakemine.features import LOG_FEATURES, FEATURES
from lakemine.lake import Lake
from lakemine.train import MODEL_KIND, load_metadata, model_versions

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SCORE_BINS = 20
TOP_RULES = 15
SCATTER_RULES = 5000  # the scatter shows at most this many rules, the highest lift first
DPI = 144  # PNG pixels per inch; shown at 96 CSS px per inch, so sharp on dense screens too
CSS_PX_PER_INCH = 96
SEGMENT_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                   "#9c755f", "#bab0ac")
OK_COLOUR, WARN_COLOUR = "#4e79a7", "#e15759"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1280px; margin: 0 auto; padding: 24px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 8px; }
h2 { font-size: 19px; margin: 0 0 10px; padding-top: 18px; border-top: 2px solid #d0d7de; }
h3 { font-size: 15px; margin: 14px 0 6px; }
section { margin-top: 26px; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 8px 0 12px; }
.meta dt { color: #57606a; } .meta dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
.row { display: flex; flex-wrap: wrap; gap: 18px 28px; align-items: flex-start; }
.row > * { min-width: 0; }
figure { margin: 0; flex: 0 1 auto; max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { color: #57606a; font-size: 12px; margin-top: 2px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { padding: 3px 9px; border-bottom: 1px solid #d8dee4; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.warn td { background: #ffebe9; } tr.best td { background: #dafbe1; }
p.na { color: #9a6700; background: #fff8c5; border: 1px solid #d4a72c66; padding: 6px 10px; border-radius: 4px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
.note { color: #57606a; font-size: 13px; }
"""


@dataclass
class _Source:
    """Reads tables at one pinned Delta version each, and remembers the versions for the header."""

    lake: Lake
    versions: dict[str, int] = field(default_factory=dict)

    def table(self, name: str) -> DataFrame | None:
        if name not in self.versions:
            version = self.lake.table_version(name)
            if version is None:
                return None
            self.versions[name] = version
        return self.lake.read_table(name, self.versions[name])

    def rows_for(self, name: str, as_of: date) -> DataFrame | None:
        """The table's rows for `as_of` (maybe none); None when the table is missing."""
        df = self.table(name)
        return None if df is None else df.where(F.col("as_of") == F.lit(as_of))


# ---------------------------------------------------------------- HTML and figure helpers


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if value != value:
            return "–"
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.{digits}g}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: list[str], rows: list[list], table_id: str, row_classes: list[str] | None = None) -> str:
    """An HTML table; numbers are formatted and right-aligned, everything is escaped."""

    def cell(tag: str, value) -> str:
        numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
        cls = ' class="num"' if numeric else ""
        return f"<{tag}{cls}>{_e(_fmt(value))}</{tag}>"

    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        attr = f' class="{_e(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(cell("td", v) for v in row) + "</tr>")
    return f'<table id="{_e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _figure(fig: Figure, alt: str, caption: str | None = None) -> str:
    """The figure as an <img> with a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    width, height = (round(x * CSS_PX_PER_INCH) for x in fig.get_size_inches())
    return (f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
            f'alt="{_e(alt)}">{cap}</figure>')


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="both", color="#e6e6e6", linewidth=0.6)
    ax.set_axisbelow(True)


def _hbar(labels: list[str], values: list[float], colours: list[str], notes: list[str], title: str,
          xlabel: str, width: float = 5.6) -> tuple[Figure, object]:
    """Horizontal bars, first label on top, each bar annotated with its note."""
    fig = _new_figure(width, 0.9 + 0.3 * len(labels))
    ax = fig.add_subplot()
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, values, color=colours)
    ax.set_yticks(ys, labels)
    for y, v, note in zip(ys, values, notes):
        ax.annotate(note, (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8,
                    bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none"})
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9.5, loc="left")
    _style(ax)
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.15)
    return fig, ax


def _not_available(table: str, as_of: date, command: str) -> str:
    return (f'<p class="na">not available: {_e(table)} has no rows for {_e(as_of.isoformat())} — '
            f"run <code>{_e(command)}</code></p>")


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{_e(section_id)}"><h2>{_e(title)}</h2>{body}</section>'


def _colour(segment) -> str:
    return "#8c8c8c" if segment is None else SEGMENT_COLOURS[int(segment) % len(SEGMENT_COLOURS)]


def _segment_name(segment, labels: dict[int, str]) -> str:
    if segment is None:
        return "no segment"
    label = labels.get(int(segment))
    return f"{segment} · {label}" if label else str(segment)


# ---------------------------------------------------------------- aggregations (Spark side)


def score_histogram(scores: DataFrame, bins: int = SCORE_BINS) -> pd.DataFrame:
    """Counts of churn_probability in `bins` equal bins of [0, 1] per segment: segment, bin, count.

    Bin i holds i/bins <= p < (i+1)/bins; p = 1 falls in the last bin. Only bins x segments
    rows reach the driver, however many customers were scored.
    """
    b = F.least(F.floor(F.col("churn_probability") * bins), F.lit(bins - 1)).cast("int")
    return (
        scores.where(F.col("churn_probability").isNotNull())
        .groupBy("segment", b.alias("bin")).agg(F.count(F.lit(1)).alias("count"))
        .toPandas()
    )


def _latest_runs(runs: DataFrame, stages: tuple[str, ...]) -> list:
    """The latest succeeded run of each stage (else its latest run of any status)."""
    order = Window.partitionBy("stage").orderBy(F.desc(F.col("status") == "succeeded"), F.desc("finished_at"))
    latest = (runs.where(F.col("stage").isin(list(stages)))
              .withColumn("_n", F.row_number().over(order)).where(F.col("_n") == 1).collect())
    by_stage = {r["stage"]: r for r in latest}
    return [by_stage[s] for s in stages if s in by_stage]


def _pick_version(available: list[str], preferred: list[str | None]) -> str:
    """The first preferred version that is available, else the first available."""
    return next((v for v in preferred if v and v in available), available[0])


# ---------------------------------------------------------------- sections


def _runs_part(src: _Source, as_of: date) -> str:
    runs = src.table(schemas.OPS_RUNS)
    latest = _latest_runs(runs, ("ingest", "clean")) if runs is not None else []
    if not latest:
        return _not_available(schemas.OPS_RUNS, as_of, "lakemine ingest")
    rows = []
    for r in latest:
        accounted = r["rows_out"] + r["rows_quarantined"] + r["rows_duplicate"]
        rows.append([r["stage"], r["status"], r["as_of"].isoformat() if r["as_of"] else "–",
                     r["finished_at"].strftime("%Y-%m-%d %H:%M:%S") if r["finished_at"] else "–",
                     r["rows_in"], r["rows_out"], r["rows_quarantined"], r["rows_duplicate"],
                     "yes" if accounted == r["rows_in"] else f"no ({accounted - r['rows_in']:+,})"])
    headers = ["stage", "status", "as_of", "finished (UTC)", "rows in", "rows out", "quarantined", "duplicates",
               "in = out + quarantined + duplicates"]
    return _table(headers, rows, "runs", ["" if r["status"] == "succeeded" else "warn" for r in latest])


def _quarantine_part(src: _Source, as_of: date) -> str:
    notes, counts = [], []
    sources = ((schemas.BRONZE_QUARANTINE, "lakemine ingest"), (schemas.SILVER_QUARANTINE, "lakemine clean"))
    for table, command in sources:
        df = src.table(table)
        if df is None:
            notes.append(_not_available(table, as_of, command))
            continue
        for r in df.groupBy("reason").agg(F.count(F.lit(1)).alias("rows")).collect():
            counts.append((table, r["reason"] or "(none)", int(r["rows"])))
    if not counts:
        return "".join(notes) or '<p class="note">No rows quarantined.</p>'
    counts.sort(key=lambda c: (-c[2], c[0], c[1]))
    colours = {schemas.BRONZE_QUARANTINE: "#b07aa1", schemas.SILVER_QUARANTINE: "#4e79a7"}
    fig, _ = _hbar([f"{reason} ({table.split('/')[0]})" for table, reason, _ in counts], [c[2] for c in counts],
                   [colours[c[0]] for c in counts], [f"{c[2]:,}" for c in counts],
                   "Rows quarantined by reason (bronze: ingest, silver: clean)", "rows quarantined")
    table = _table(["table", "reason", "rows"], [list(c) for c in counts], "quarantine-reasons")
    return "".join(notes) + '<div class="row">' + _figure(fig, "quarantined rows by reason") + table + "</div>"


def _quality_section(src: _Source, as_of: date) -> str:
    body = ("<h3>Latest ingest and clean runs</h3>" + _runs_part(src, as_of)
            + "<h3>Quarantined rows by reason</h3>" + _quarantine_part(src, as_of))
    return _section("quality", "1. Data quality", body)


def _centres_figure(pdf: pd.DataFrame, features: list[str], colours: list[str]) -> Figure:
    """Small multiples: one panel per feature, one bar per segment centre."""
    ncols = min(3, len(features))
    nrows = -(-len(features) // ncols)
    fig = _new_figure(2.25 * ncols, 0.4 + 2.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, f in zip(axes, features):
        ax.bar(range(len(pdf)), pdf[f], color=colours)
        ax.set_xticks(range(len(pdf)), [str(s) for s in pdf["segment"]])
        if f in LOG_FEATURES and (pdf[f] > 0).all():  # heavy-tailed: one wholesale segment dwarfs the rest
            ax.set_yscale("log")
            decades = math.log10(pdf[f].max() / pdf[f].min())
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades < 2 else (1.0,)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f + (" (log scale)" if ax.get_yscale() == "log" else ""), fontsize=9)
        ax.tick_params(labelsize=8)
        _style(ax)
    for ax in axes[len(features):]:
        ax.set_visible(False)
    fig.suptitle("Segment centres in original units (x: segment)", fontsize=10)
    return fig


def _segments_section(src: _Source, as_of: date) -> str:
    title = "2. Customer segments"
    profiles = src.rows_for(schemas.GOLD_SEGMENT_PROFILES, as_of)
    pdf = profiles.orderBy("segment").toPandas() if profiles is not None else None
    if pdf is None or pdf.empty:
        return _section("segments", title, _not_available(schemas.GOLD_SEGMENT_PROFILES, as_of, "lakemine kmeans"))
    features = [f for f in FEATURES if f in pdf.columns and pdf[f].notna().any()]
    total = int(pdf["size"].sum())
    labels = dict(zip(pdf["segment"].astype(int), pdf["segment_label"]))
    names = [_segment_name(int(s), labels) for s in pdf["segment"]]
    colours = [_colour(s) for s in pdf["segment"]]

    fig, _ = _hbar(names, list(pdf["size"]), colours, [f"{n:,} ({n / total:.0%})" for n in pdf["size"]],
                   "Segment sizes", "customers", width=4.6)
    sizes = _figure(fig, "segment sizes")
    centres = _figure(_centres_figure(pdf, features, colours), "segment centres per feature") if features else ""

    rows = [[int(r["segment"]), r["segment_label"], int(r["size"]), float(r["size"] / total)]
            + [None if pd.isna(r[f]) else float(r[f]) for f in features] for _, r in pdf.iterrows()]
    table = _table(["segment", "label", "customers", "share"] + features, rows, "segments")
    silhouette = float(pdf["silhouette"].iloc[0]) if "silhouette" in pdf else None
    note = f'<p class="note">k = {len(pdf)}, silhouette {_e(_fmt(silhouette))}, {total:,} customers.</p>'
    body = note + '<div class="row">' + sizes + centres + "</div>" + table
    return _section("segments", title, body)


def _item_names(codes, descriptions) -> str:
    descriptions = list(descriptions) if descriptions is not None else [""] * len(codes)
    return " + ".join(f"{d} ({c})" if d else str(c) for c, d in zip(codes, descriptions))


def _rules_section(src: _Source, as_of: date) -> str:
    title = "3. Association rules"
    rules = src.rows_for(schemas.GOLD_ASSOCIATION_RULES, as_of)
    n = rules.count() if rules is not None else 0
    if n == 0:
        return _section("rules", title, _not_available(schemas.GOLD_ASSOCIATION_RULES, as_of, "lakemine fpgrowth"))
    described = "antecedent_descriptions" in rules.columns and "consequent_description" in rules.columns
    cols = ["antecedent", "consequent", "support", "confidence", "lift"]
    cols += ["antecedent_descriptions", "consequent_description"] if described else []
    ordered = rules.orderBy(F.desc("lift"), F.desc("support"), F.desc("confidence"))
    top = ordered.select(*cols).limit(TOP_RULES).collect()
    points = ordered.select("support", "confidence", "lift").limit(SCATTER_RULES).toPandas()

    fig = _new_figure(5.6, 3.9)
    ax = fig.add_subplot()
    dots = ax.scatter(points["support"], points["confidence"], c=points["lift"], cmap="viridis", s=22,
                      alpha=0.85, edgecolors="none")
    ax.scatter([r["support"] for r in top], [r["confidence"] for r in top], s=70, facecolors="none",
               edgecolors="#e15759", linewidths=1.2, label=f"top {len(top)} by lift")
    fig.colorbar(dots, ax=ax, label="lift")
    ax.set_xlabel("support")
    ax.set_ylabel("confidence")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    shown = f"{len(points):,} of {n:,} rules" if len(points) < n else f"{n:,} rules"
    ax.set_title(f"Support vs confidence ({shown})", fontsize=10)
    _style(ax)

    rows = []
    for i, r in enumerate(top, 1):
        lhs = _item_names(r["antecedent"], r["antecedent_descriptions"] if described else None)
        rhs = _item_names(r["consequent"], [r["consequent_description"]] if described else None)
        rows.append([i, lhs, rhs, float(r["support"]), float(r["confidence"]), float(r["lift"])])
    table = _table(["#", "if a basket has", "it also has", "support", "confidence", "lift"], rows, "rules")
    scatter = _figure(fig, "association rules: support vs confidence coloured by lift")
    body = (f'<p class="note">{n:,} rules for {_e(as_of.isoformat())}; the {len(top)} with the highest lift:</p>'
            f'<div class="row">{scatter}{table}</div>')
    return _section("rules", title, body)


def _epoch_axes(fig: Figure, best: int | None, title: str, ylabel: str):
    ax = fig.add_subplot()
    if best is not None:
        ax.axvline(best, color="#e15759", linestyle=":", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    _style(ax)
    return ax


def _loss_figure(history: list[dict], best: int | None) -> Figure:
    fig = _new_figure(5.0, 3.2)
    ax = _epoch_axes(fig, best, "Loss per epoch", "loss (class-weighted BCE)")
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=4, label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", ms=4, label="validation")
    ax.legend(fontsize=8, frameon=False)
    return fig


def _auc_figure(history: list[dict], best: int | None, baseline_auc: float | None) -> Figure:
    fig = _new_figure(5.0, 3.2)
    ax = _epoch_axes(fig, best, "Validation AUC per epoch", "AUC")
    ax.plot([h["epoch"] for h in history], [h["val_auc"] for h in history], marker="o", ms=4, color="#59a14f",
            label="validation AUC")
    if baseline_auc is not None:
        ax.axhline(baseline_auc, color="#555", linestyle="--", linewidth=1,
                   label=f"logistic-regression baseline {baseline_auc:.3f}")
    best_row = next((h for h in history if h["epoch"] == best), None)
    if best_row is not None:
        ax.plot([best], [best_row["val_auc"]], marker="*", ms=14, color="#e15759", linestyle="none",
                label=f"best epoch {best}")
    ax.legend(fontsize=8, frameon=False)
    return fig


def _training_section(lake: Lake, meta: dict | None) -> str:
    title = "4. Churn model training"
    if meta is None:
        note = (f'<p class="na">not available: no churn model under {_e(lake.root)}/models/{MODEL_KIND} — '
                f"run <code>lakemine train</code></p>")
        return _section("training", title, note)
    history = sorted(meta.get("history") or [], key=lambda h: h["epoch"])
    best = (meta.get("epochs") or {}).get("best")  # 1-based, as in history
    validation, baseline = meta.get("validation") or {}, meta.get("baseline") or {}
    rows_meta, epochs = meta.get("rows") or {}, meta.get("epochs") or {}
    facts = [
        ("model version", meta.get("model_version")), ("trained at", meta.get("trained_at")),
        ("labels as of", meta.get("as_of")), ("backend", f"{meta.get('backend')} x {meta.get('world_size')} workers"),
        ("rows", f"{rows_meta.get('train', 0):,} train / {rows_meta.get('val', 0):,} validation"),
        ("epochs", f"best {best} of {epochs.get('run')} run (at most {epochs.get('max')})"),
    ]
    facts_html = '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>"
    summary = _table(
        ["model", "validation AUC", "validation log loss"],
        [["churn MLP (best epoch)", validation.get("auc"), validation.get("log_loss")],
         [baseline.get("model", "baseline"), baseline.get("auc"), baseline.get("log_loss")]],
        "training-summary",
    )
    if not history:
        return _section("training", title, facts_html + summary + '<p class="note">The metadata has no history.</p>')
    rows = [[h["epoch"], h.get("train_loss"), h.get("val_loss"), h.get("val_log_loss"), h.get("val_auc")]
            for h in history]
    epochs_table = _table(["epoch", "train loss", "val loss", "val log loss", "val AUC"], rows, "epochs",
                          ["best" if h["epoch"] == best else "" for h in history])
    loss = _figure(_loss_figure(history, best), "training and validation loss per epoch")
    auc = _figure(_auc_figure(history, best, baseline.get("auc")), "validation AUC per epoch with the baseline")
    body = (facts_html + '<div class="row">' + loss + auc + "</div>"
            + '<div class="row">' + summary + epochs_table + "</div>")
    return _section("training", title, body)


def _segment_labels(src: _Source, lake: Lake, version: str, as_of: date) -> dict[int, str]:
    """Names of the segments a model scored with: the profiles of its k-means snapshot."""
    try:
        seg = load_metadata(lake, version).get("segment_model")
    except (LakemineError, OSError, ValueError):  # model folder gone or unreadable: numbers alone still read
        seg = None
    snapshot = date.fromisoformat(seg["as_of"]) if seg and seg.get("as_of") else as_of
    profiles = src.rows_for(schemas.GOLD_SEGMENT_PROFILES, snapshot)
    if profiles is None:
        return {}
    return {int(r["segment"]): r["segment_label"] for r in profiles.select("segment", "segment_label").collect()}


def _bin_counts(hist: pd.DataFrame) -> pd.Series:
    return hist.groupby("bin")["count"].sum().reindex(range(SCORE_BINS), fill_value=0)


def _histogram_figure(hist: pd.DataFrame, customers: int) -> Figure:
    fig = _new_figure(5.0, 3.2)
    ax = fig.add_subplot()
    ax.bar([i / SCORE_BINS for i in range(SCORE_BINS)], _bin_counts(hist).to_numpy(), width=1 / SCORE_BINS,
           align="edge", color="#4e79a7", edgecolor="white", linewidth=0.6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("churn probability")
    ax.set_ylabel("customers")
    ax.set_title(f"All {customers:,} customers", fontsize=10)
    _style(ax)
    return fig


def _segment_histograms_figure(hist: pd.DataFrame, stats: list, labels: dict[int, str]) -> Figure:
    """One outline per segment, as shares of the segment, so small segments stay visible."""
    fig = _new_figure(5.0, 3.2)
    ax = fig.add_subplot()
    edges = [i / SCORE_BINS for i in range(SCORE_BINS + 1)]
    for r in stats:
        seg = r["segment"]
        counts = _bin_counts(hist[hist["segment"].isna()] if seg is None else hist[hist["segment"] == seg]).to_numpy()
        ax.stairs(counts / max(1, counts.sum()), edges, color=_colour(seg), linewidth=1.6,
                  label=f"{_segment_name(seg, labels)} (n={r['customers']:,})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("churn probability")
    ax.set_ylabel("share of the segment's customers")
    ax.set_title("Per segment", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return fig


def _scores_section(src: _Source, lake: Lake, as_of: date, model_version: str | None) -> tuple[str, str | None]:
    """The section and the model version it shows (None when there are no scores)."""
    title = "5. Churn scores"
    scores = src.rows_for(schemas.GOLD_CUSTOMER_SCORES, as_of)
    scored = [] if scores is None else (
        scores.groupBy("model_version").agg(F.max("scored_at").alias("at")).orderBy(F.desc("at")).collect())
    if not scored:
        return _section("scores", title, _not_available(schemas.GOLD_CUSTOMER_SCORES, as_of, "lakemine score")), None
    available = [r["model_version"] for r in scored]
    version = _pick_version(available, [model_version])
    scores = scores.where(F.col("model_version") == F.lit(version))
    labels = _segment_labels(src, lake, version, as_of)

    hist = score_histogram(scores)
    summary = scores.rollup("segment").agg(
        F.grouping("segment").alias("total"), F.count(F.lit(1)).alias("customers"),
        F.avg("churn_probability").alias("mean"), F.percentile_approx("churn_probability", 0.5).alias("median"),
        F.avg((F.col("churn_probability") >= 0.5).cast("double")).alias("at_risk"),
    ).orderBy("total", F.col("segment").asc_nulls_last()).collect()
    stats, overall = [r for r in summary if not r["total"]], next(r for r in summary if r["total"])

    overall_fig = _figure(_histogram_figure(hist, overall["customers"]), "histogram of churn probability")
    segment_fig = _figure(_segment_histograms_figure(hist, stats, labels), "churn probability per segment")

    rows = [[_segment_name(r["segment"], labels), r["customers"], r["mean"], r["median"], r["at_risk"]] for r in stats]
    rows.append(["all", overall["customers"], overall["mean"], overall["median"], overall["at_risk"]])
    table = _table(["segment", "customers", "mean probability", "median", "share ≥ 0.5"], rows, "scores")
    others = [v for v in available if v != version]
    note = f'<p class="note">Model <code>{_e(version)}</code>' + (
        f" (also scored for this date: {', '.join(_e(v) for v in others)})" if others else "") + ".</p>"
    body = note + '<div class="row">' + overall_fig + segment_fig + table + "</div>"
    return _section("scores", title, body), version


def _drift_section(src: _Source, as_of: date, warn_psi: float, preferred: list[str | None]) -> str:
    title = "6. Feature drift"
    drift = src.rows_for(schemas.OPS_DRIFT, as_of)
    available = [] if drift is None else [
        r["model_version"] for r in drift.select("model_version").distinct().orderBy(F.desc("model_version")).collect()]
    if not available:
        return _section("drift", title, _not_available(schemas.OPS_DRIFT, as_of, "lakemine score"))
    version = _pick_version(available, preferred)
    pdf = (drift.where(F.col("model_version") == F.lit(version)).select("feature", "psi", "status")
           .orderBy(F.desc("psi")).toPandas())
    warned = pdf["psi"] > warn_psi

    fig, ax = _hbar(list(pdf["feature"]), list(pdf["psi"]), [WARN_COLOUR if w else OK_COLOUR for w in warned],
                    [f"{v:.3f}" for v in pdf["psi"]],
                    f"PSI per feature ({int(warned.sum())} of {len(pdf)} above {warn_psi:g})",
                    "population stability index (PSI) vs the training snapshot")
    ax.axvline(warn_psi, color="#333", linestyle="--", linewidth=1, label=f"warn above PSI {warn_psi:g}")
    ax.legend(fontsize=8, frameon=False, loc="lower right")

    rows = [[r["feature"], float(r["psi"]), r["status"]] for _, r in pdf.iterrows()]
    table = _table(["feature", "PSI", "status"], rows, "drift", ["warn" if w else "" for w in warned])
    note = (f'<p class="note">Model <code>{_e(version)}</code>; PSI below 0.1 is stable, 0.1–0.2 moderate, '
            f"above {warn_psi:g} flagged.</p>")
    body = note + '<div class="row">' + _figure(fig, "PSI per feature") + table + "</div>"
    return _section("drift", title, body)


# ---------------------------------------------------------------- the page


def _default_as_of(src: _Source) -> date:
    """The latest as_of in gold/customer_features, else the last silver date, else the latest run's, else today."""
    for table, column in ((schemas.GOLD_CUSTOMER_FEATURES, "as_of"), (schemas.SILVER_TRANSACTIONS, "invoice_date"),
                          (schemas.OPS_RUNS, "as_of")):
        df = src.table(table)
        latest = df.agg(F.max(column)).first()[0] if df is not None else None
        if latest is not None:
            return latest
    return datetime.now(timezone.utc).date()


def _latest_model(lake: Lake) -> dict | None:
    versions = model_versions(lake)
    return load_metadata(lake, versions[-1]) if versions else None


def _page(lake: Lake, as_of: date, generated_at: datetime, model: dict | None, versions: dict[str, int],
          sections: list[str]) -> str:
    facts = [("lake", lake.root), ("as_of", as_of.isoformat()),
             ("generated at", generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
             ("churn model", model["model_version"] if model else "none")]
    meta = '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>"
    read = _table(["table", "Delta version read"], [[t, v] for t, v in sorted(versions.items())], "versions")
    nav = "<nav>" + "".join(
        f'<a href="#{i}">{_e(t)}</a>' for i, t in (("quality", "Data quality"), ("segments", "Segments"),
                                                  ("rules", "Rules"), ("training", "Training"),
                                                  ("scores", "Scores"), ("drift", "Drift"))) + "</nav>"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>lakemine report {_e(as_of.isoformat())}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f"<header><h1>lakemine report — {_e(as_of.isoformat())}</h1>"
        f'<div class="row">{meta}<div><b>Delta versions read</b>{read}</div></div>{nav}</header>'
        + "".join(sections) + "</body></html>\n"
    )


def write_report(lake: Lake, cfg: Config, as_of: date | None = None) -> str:
    """Write `<lake>/reports/<as_of>/report.html` (default as_of: the latest in
    gold/customer_features) and return its path. Reads ops/runs, both quarantines,
    gold/segment_profiles, gold/association_rules, gold/customer_scores, ops/drift and the latest
    churn model's metadata; a missing part becomes a note in its section. An empty lake (no
    ops/runs): StageError.
    """
    if not lake.exists(schemas.OPS_RUNS):
        raise StageError(
            f"nothing to report: lake {lake.root} has no {schemas.OPS_RUNS} table; run `lakemine ingest` first")
    src = _Source(lake)
    as_of = as_of or _default_as_of(src)
    generated_at = datetime.now(timezone.utc)
    model = _latest_model(lake)
    model_version = model["model_version"] if model else None
    scores_html, scored_version = _scores_section(src, lake, as_of, model_version)
    sections = [
        _quality_section(src, as_of),
        _segments_section(src, as_of),
        _rules_section(src, as_of),
        _training_section(lake, model),
        scores_html,
        _drift_section(src, as_of, cfg.score.drift_warn_psi, [scored_version, model_version]),
    ]
    page = _page(lake, as_of, generated_at, model, src.versions, sections)
    path = f"{lake.root}/reports/{as_of.isoformat()}/{REPORT_FILE}"
    artifacts.write_bytes(path, page.encode("utf-8"))
    log.info("report for %s written to %s (%d bytes)", as_of, path, len(page))
    return path
