"""The report page: inline CSS, tables, figures embedded as PNG data URIs, and the seven sections,
built from the plain values `data.gather` returns. Nothing here imports Spark.

A section whose table is missing, or has no rows for the date, says so and names the command
that fills it.
"""

from __future__ import annotations

import base64
import io
import math
import numbers
from datetime import date
from html import escape
from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.figure import Figure

from lakemine.report import figures

if TYPE_CHECKING:  # data imports Spark; only its types are needed here
    from lakemine.report.data import (
        Drift,
        Forecasts,
        Missing,
        Quality,
        Recommendations,
        Report,
        Rules,
        Scores,
        Segments,
        Training,
    )

DPI = 144  # PNG pixels per inch; shown at 96 CSS px per inch, so sharp on dense screens too
CSS_PX_PER_INCH = 96
NAV = (("quality", "Data quality"), ("segments", "Segments"), ("rules", "Rules"), ("recommendations", "Recommendations"),
       ("forecasts", "Forecasts"), ("training", "Training"),
       ("scores", "Scores"), ("drift", "Drift"))

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


# ---------------------------------------------------------------- building blocks


def _e(value) -> str:
    return escape(str(value), quote=True)


def _fmt(value, digits: int = 3) -> str:
    """A cell's text: integers with thousands separators, reals to `digits` places, "–" for none/NaN."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
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
    """The figure as an <img> with a base64 PNG data URI, sized in CSS px to the figure's inches."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    width, height = (round(x * CSS_PX_PER_INCH) for x in fig.get_size_inches())
    return (f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
            f'alt="{_e(alt)}">{cap}</figure>')


def _facts(pairs: list[tuple[str, object]]) -> str:
    return '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs) + "</dl>"


def _row(*parts: str) -> str:
    return '<div class="row">' + "".join(parts) + "</div>"


def _note(text_html: str) -> str:
    return f'<p class="note">{text_html}</p>'


def _not_available(missing: Missing, as_of: date) -> str:
    return (f'<p class="na">not available: {_e(missing.table)} has no rows for {_e(as_of.isoformat())} — '
            f"run <code>{_e(missing.command)}</code></p>")


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{_e(section_id)}"><h2>{_e(title)}</h2>{body}</section>'


def _segment_name(segment, labels: dict[int, str]) -> str:
    if segment is None:
        return "no segment"
    label = labels.get(int(segment))
    return f"{segment} · {label}" if label else str(segment)


def _model_note(version: str, others: str = "") -> str:
    return f"Model <code>{_e(version)}</code>{others}"


# ---------------------------------------------------------------- sections


def _runs_part(q: Quality, as_of: date) -> str:
    if q.runs_missing:
        return _not_available(q.runs_missing, as_of)
    rows = []
    for r in q.runs:
        accounted = r["rows_out"] + r["rows_quarantined"] + r["rows_duplicate"]
        rows.append([r["stage"], r["status"], r["as_of"].isoformat() if r["as_of"] else "–",
                     r["finished_at"].strftime("%Y-%m-%d %H:%M:%S") if r["finished_at"] else "–",
                     r["rows_in"], r["rows_out"], r["rows_quarantined"], r["rows_duplicate"],
                     "yes" if accounted == r["rows_in"] else f"no ({accounted - r['rows_in']:+,})"])
    headers = ["stage", "status", "as_of", "finished (UTC)", "rows in", "rows out", "quarantined", "duplicates",
               "in = out + quarantined + duplicates"]
    return _table(headers, rows, "runs", ["" if r["status"] == "succeeded" else "warn" for r in q.runs])


def _quarantine_part(q: Quality, as_of: date) -> str:
    notes = "".join(_not_available(m, as_of) for m in q.quarantine_missing)
    if not q.quarantined:
        return notes or _note("No rows quarantined.")
    chart = _figure(figures.quarantine_figure(q.quarantined), "quarantined rows by reason")
    table = _table(["table", "reason", "rows"], [list(c) for c in q.quarantined], "quarantine-reasons")
    return notes + _row(chart, table)


def _quality_section(q: Quality, as_of: date) -> str:
    body = ("<h3>Latest ingest and clean runs</h3>" + _runs_part(q, as_of)
            + "<h3>Quarantined rows by reason</h3>" + _quarantine_part(q, as_of))
    return _section("quality", "1. Data quality", body)


def _segments_section(s: Segments, as_of: date) -> str:
    title = "2. Customer segments"
    if s.missing:
        return _section("segments", title, _not_available(s.missing, as_of))
    pdf = s.profiles
    total = int(pdf["size"].sum())
    labels = dict(zip(pdf["segment"].astype(int), pdf["segment_label"]))
    names = [_segment_name(int(seg), labels) for seg in pdf["segment"]]
    sizes = _figure(figures.segment_sizes_figure(list(pdf["segment"]), names, list(pdf["size"])), "segment sizes")
    centres = (_figure(figures.centres_figure(pdf, s.features, s.log_features), "segment centres per feature")
               if s.features else "")
    rows = [[int(r["segment"]), r["segment_label"], int(r["size"]), float(r["size"] / total)]
            + [None if pd.isna(r[f]) else float(r[f]) for f in s.features] for _, r in pdf.iterrows()]
    table = _table(["segment", "label", "customers", "share"] + s.features, rows, "segments")
    silhouette = float(pdf["silhouette"].iloc[0]) if "silhouette" in pdf else None
    note = _note(f"k = {len(pdf)}, silhouette {_e(_fmt(silhouette))}, {total:,} customers.")
    return _section("segments", title, note + _row(sizes, centres) + table)


def _item_names(codes, descriptions) -> str:
    descriptions = list(descriptions) if descriptions is not None else [""] * len(codes)
    return " + ".join(f"{d} ({c})" if d else str(c) for c, d in zip(codes, descriptions))


def _rules_section(rules: Rules, as_of: date) -> str:
    title = "3. Association rules"
    if rules.missing:
        return _section("rules", title, _not_available(rules.missing, as_of))
    rows = []
    for i, r in enumerate(rules.top, 1):
        lhs = _item_names(r["antecedent"], r["antecedent_descriptions"] if rules.described else None)
        rhs = _item_names(r["consequent"], [r["consequent_description"]] if rules.described else None)
        rows.append([i, lhs, rhs, float(r["support"]), float(r["confidence"]), float(r["lift"])])
    table = _table(["#", "if a basket has", "it also has", "support", "confidence", "lift"], rows, "rules")
    scatter = _figure(figures.rules_figure(rules.points, rules.top, rules.total),
                      "association rules: support vs confidence coloured by lift")
    note = _note(f"{rules.total:,} rules for {_e(as_of.isoformat())}; the {len(rules.top)} with the highest lift:")
    return _section("rules", title, note + _row(scatter, table))


def _recommendations_section(r: Recommendations, as_of: date) -> str:
    title = "4. Recommendations"
    if r.missing:
        return _section("recommendations", title, _not_available(r.missing, as_of))
    note = _note(f"{r.rows:,} recommendations for {r.customers:,} customers from the rules of {_e(as_of.isoformat())} "
                 "(score: the best applying rule's confidence; items a customer buys regularly left out).")
    top = _table(["item", "description", "customers", "mean score"],
                 [[t["stock_code"], t["description"], t["customers"], float(t["mean_score"])] for t in r.top],
                 "recommended-items")
    if not r.evaluation:
        return _section("recommendations", title, note + _note("No held-out evaluation for this date "
                                                               "(<code>lakemine recommend --no-evaluate</code>).") + top)
    k = r.evaluation[0]["k"]
    table = _table(["method", "customers", f"hit rate@{k}", f"MAP@{k}", "coverage"],
                   [[e["method"], e["customers"], e["hit_rate"], e["map_at_k"], e["coverage"]] for e in r.evaluation],
                   "recommend-eval")
    chart = _figure(figures.recommendation_eval_figure(r.evaluation), "held-out hit rate and MAP: rules vs popular items")
    how = _note("Each customer's last basket hidden; rules mined again without the hidden baskets; judged on the hidden "
                "items the customer does not buy regularly. Coverage: share of those customers given any recommendation.")
    return _section("recommendations", title, note + _row(chart, table + how) + "<h3>Most recommended items</h3>" + top)


def _forecasts_section(f: Forecasts, as_of: date) -> str:
    title = "5. Demand forecasts"
    if f.missing:
        return _section("forecasts", title, _not_available(f.missing, as_of))
    note = _note(f"Weekly units of {f.items:,} best-selling items for {f.weeks} weeks from the forecast of "
                 f"{_e(f.as_of.isoformat())} (statsmodels ETS per item, {f.interval:.0%} prediction intervals).")
    chart = _figure(figures.forecast_figure(f.plots, f.interval), "weekly units sold and forecast for the items "
                    "with the most forecast units") if f.plots else ""
    if f.backtest:
        backtest = _table(["method", "items", "mean MASE", "median MASE", "mean sMAPE"],
                          [[b["method"], b["items"], b["mean_mase"], b["median_mase"], b["mean_smape"]] for b in f.backtest],
                          "forecast-backtest")
        methods = {b["method"] for b in f.backtest}
        lacking = "" if "seasonal naive" in methods else (
            " Seasonal naive is absent: the history before the backtest holds less than one season.")
        backtest += _note("Backtest: the last weeks of the history hidden, the models fitted again on the weeks before. "
                          "MASE below 1: better than the naive one-week-ahead forecast in sample." + lacking)
    else:
        backtest = _note("No backtest for this date: the items' histories are too short.")
    per_item = _table(["item", "description", "forecast units", "model", "MASE ets", "MASE naive", "MASE seasonal naive"],
                      [[r["stock_code"], r["description"], float(r["units"]), r["model"], r["ets"], r["naive"],
                        r["seasonal naive"]] for r in f.per_item], "forecast-items")
    return _section("forecasts", title, note + _row(chart) + "<h3>Backtest</h3>" + backtest
                    + "<h3>Items with the most forecast units</h3>" + per_item)


def _training_facts(meta: dict, best: int | None) -> str:
    rows_meta, epochs = meta.get("rows") or {}, meta.get("epochs") or {}
    return _facts([
        ("model version", meta.get("model_version")), ("trained at", meta.get("trained_at")),
        ("labels as of", meta.get("as_of")), ("backend", f"{meta.get('backend')} x {meta.get('world_size')} workers"),
        ("rows", f"{rows_meta.get('train', 0):,} train / {rows_meta.get('val', 0):,} validation"),
        ("epochs", f"best {best} of {epochs.get('run')} run (at most {epochs.get('max')})"),
    ])


def _search_part(rows: list[dict], meta: dict | None) -> str:
    """The latest model search: AUC per trial against the baselines, and its best trials."""
    from lakemine.learning.tune import MLP, ranked

    if not rows:
        return ("<h3>Model search</h3>" + _note("No model search on or before this date: <code>lakemine tune</code> "
                                                 "(the weekly_insights DAG runs it) searches the network's settings."))
    order = ranked(rows)
    baselines = {r["model"]: r["val_auc"] for r in rows if r["model"] != MLP and r["val_auc"] is not None}
    tuned = (meta or {}).get("tuned_from") or {}
    chosen = tuned.get("trial") if tuned.get("run_id") == rows[0]["run_id"] else None
    failed = [r for r in rows if r["model"] == MLP and r["error"]]
    note = _note(f"The search of {_e(rows[0]['as_of'])} (seed {rows[0]['seed']}): {len(order)} trials finished"
                 + (f", {len(failed)} failed" if failed else "") + ", each a single-process trainer in one Spark task on "
                 "the training split; trial 0 is the config's own settings. "
                 + ("The churn model above was trained with the settings of trial "
                    f"{chosen} (<code>train --params best</code>)." if chosen is not None else
                    "The churn model above was trained with the config's settings."))
    shown = order[:10]
    table = _table(["trial", "validation AUC", "log loss", "hidden", "activation", "dropout", "batch norm",
                    "learning rate", "weight decay", "best epoch"],
                   [[r["trial"], r["val_auc"], r["val_log_loss"], r["hidden"], r["activation"], r["dropout"],
                     "on" if r["batch_norm"] else "off", f"{r['learning_rate']:.3g}", f"{r['weight_decay']:.3g}",
                     f"{r['best_epoch']} of {r['epochs_run']}"] for r in shown]
                   + [[r["model"], r["val_auc"], r["val_log_loss"], "", "", "", "", "", "", ""]
                      for r in sorted(rows, key=lambda r: r["model"]) if r["model"] != MLP],
                   "search", ["best" if r["trial"] == chosen else "" for r in shown] + [""] * len(baselines))
    chart = _figure(figures.search_figure(order, baselines, chosen), "validation AUC of every trial of the model search")
    return "<h3>Model search</h3>" + note + _row(chart, table)


def _training_section(t: Training) -> str:
    title = "6. Churn model training"
    meta = t.meta
    search = _search_part(t.search, meta)
    if meta is None:
        note = (f'<p class="na">not available: no churn model under {_e(t.model_dir)} — '
                f"run <code>lakemine train</code></p>")
        return _section("training", title, note + search)
    history = sorted(meta.get("history") or [], key=lambda h: h["epoch"])
    best = (meta.get("epochs") or {}).get("best")  # 1-based, as in history
    validation, baseline = meta.get("validation") or {}, meta.get("baseline") or {}
    facts = _training_facts(meta, best)
    summary = _table(
        ["model", "validation AUC", "validation log loss"],
        [["churn MLP (best epoch)", validation.get("auc"), validation.get("log_loss")],
         *[[b.get("model", "baseline"), b.get("auc"), b.get("log_loss")] for b in meta.get("baselines") or [baseline]]],
        "training-summary",
    )
    if not history:
        return _section("training", title, facts + summary + _note("The metadata has no history.") + search)
    rows = [[h["epoch"], h.get("train_loss"), h.get("val_loss"), h.get("val_log_loss"), h.get("val_auc")]
            for h in history]
    epochs_table = _table(["epoch", "train loss", "val loss", "val log loss", "val AUC"], rows, "epochs",
                          ["best" if h["epoch"] == best else "" for h in history])
    loss = _figure(figures.loss_figure(history, best), "training and validation loss per epoch")
    others = {b["model"]: b["auc"] for b in (meta.get("baselines") or [baseline]) if b.get("auc") is not None}
    auc = _figure(figures.auc_figure(history, best, others), "validation AUC per epoch with the baselines")
    return _section("training", title, facts + _row(loss, auc) + _row(summary, epochs_table) + search)


def _score_row(name: str, r: dict) -> list:
    return [name, r["customers"], r["mean"], r["median"], r["at_risk"]]


def _scores_section(s: Scores, as_of: date) -> str:
    title = "7. Churn scores"
    if s.missing:
        return _section("scores", title, _not_available(s.missing, as_of))
    overall = _figure(figures.histogram_figure(s.histogram, s.bins, s.overall["customers"]),
                      "histogram of churn probability")
    series = [(r["segment"], f"{_segment_name(r['segment'], s.labels)} (n={r['customers']:,})") for r in s.segments]
    per_segment = _figure(figures.segment_histograms_figure(s.histogram, s.bins, series),
                          "churn probability per segment")
    rows = [_score_row(_segment_name(r["segment"], s.labels), r) for r in s.segments]
    rows.append(_score_row("all", s.overall))
    table = _table(["segment", "customers", "mean probability", "median", "share ≥ 0.5"], rows, "scores")
    others = f" (also scored for this date: {', '.join(_e(v) for v in s.others)})" if s.others else ""
    return _section("scores", title, _note(_model_note(s.version, others) + ".") + _row(overall, per_segment, table))


def _drift_section(d: Drift, as_of: date, warn_psi: float) -> str:
    title = "8. Feature drift"
    if d.missing:
        return _section("drift", title, _not_available(d.missing, as_of))
    warned = d.psi["status"] == "warn"
    rows = [[r["feature"], float(r["psi"]), r["status"]] for _, r in d.psi.iterrows()]
    table = _table(["feature", "PSI", "status"], rows, "drift", ["warn" if w else "" for w in warned])
    note = _note(_model_note(d.version) + f"; PSI below 0.1 is stable, 0.1–0.2 moderate, above {warn_psi:g} flagged. "
                 "Compared: the customers with a sale in the trailing window, on both sides. Lifetime totals and "
                 "age-like features grow with the customers' age, so above the threshold they are marked "
                 "\"info\", not warned on.")
    return _section("drift", title, note + _row(_figure(figures.drift_figure(d.psi, warn_psi), "PSI per feature"), table))


# ---------------------------------------------------------------- the page


def _header(report: Report) -> str:
    model = report.training.meta
    facts = _facts([("lake", report.lake_root), ("as_of", report.as_of.isoformat()),
                    ("generated at", report.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
                    ("churn model", model["model_version"] if model else "none")])
    read = _table(["table", "Delta version read"], [[t, v] for t, v in sorted(report.versions.items())], "versions")
    nav = "<nav>" + "".join(f'<a href="#{i}">{_e(t)}</a>' for i, t in NAV) + "</nav>"
    return (f"<header><h1>lakemine report — {_e(report.as_of.isoformat())}</h1>"
            f'{_row(facts, f"<div><b>Delta versions read</b>{read}</div>")}{nav}</header>')


def page(report: Report, warn_psi: float) -> str:
    """The whole HTML page for `report`; drift above `warn_psi` is flagged."""
    as_of = report.as_of
    sections = [
        _quality_section(report.quality, as_of),
        _segments_section(report.segments, as_of),
        _rules_section(report.rules, as_of),
        _recommendations_section(report.recommendations, as_of),
        _forecasts_section(report.forecasts, as_of),
        _training_section(report.training),
        _scores_section(report.scores, as_of),
        _drift_section(report.drift, as_of, warn_psi),
    ]
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>lakemine report {_e(as_of.isoformat())}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        + _header(report) + "".join(sections) + "</body></html>\n"
    )
