"""The report's plots: matplotlib figures built from plain values and small pandas frames.

Nothing here imports Spark; `data` reads the lake and `html` embeds each Figure as a PNG.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

SEGMENT_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                   "#9c755f", "#bab0ac")
NO_SEGMENT_COLOUR = "#8c8c8c"
OK_COLOUR, WARN_COLOUR = "#4e79a7", "#e15759"
HISTOGRAM_COLOUR = "#4e79a7"
LAYER_COLOURS = {"bronze": "#b07aa1", "silver": "#4e79a7"}  # quarantine bars by the layer of their table


def _segment_colour(segment) -> str:
    """The colour of a segment number in every plot; grey for customers without a segment."""
    return NO_SEGMENT_COLOUR if segment is None else SEGMENT_COLOURS[int(segment) % len(SEGMENT_COLOURS)]


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


def quarantine_figure(counts: list[tuple[str, str, int]]) -> Figure:
    """One bar per (table, reason, rows), coloured by the table's layer, in the order given."""
    layers = [table.split("/")[0] for table, _, _ in counts]
    fig, _ = _hbar([f"{reason} ({layer})" for layer, (_, reason, _) in zip(layers, counts)], [c[2] for c in counts],
                   [LAYER_COLOURS[layer] for layer in layers], [f"{c[2]:,}" for c in counts],
                   "Rows quarantined by reason (bronze: ingest, silver: clean)", "rows quarantined")
    return fig


def segment_sizes_figure(segments: list[int], names: list[str], sizes: list[int]) -> Figure:
    """One bar per segment with its customers and share of all."""
    total = sum(sizes)
    fig, _ = _hbar(names, sizes, [_segment_colour(s) for s in segments],
                   [f"{n:,} ({n / total:.0%})" for n in sizes], "Segment sizes", "customers", width=4.6)
    return fig


def centres_figure(profiles: pd.DataFrame, features: list[str], log_features: frozenset[str]) -> Figure:
    """Small multiples: one panel per feature, one bar per segment centre (profiles: segment and
    one column per feature)."""
    colours = [_segment_colour(s) for s in profiles["segment"]]
    ncols = min(3, len(features))
    nrows = -(-len(features) // ncols)
    fig = _new_figure(2.25 * ncols, 0.4 + 2.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, f in zip(axes, features):
        ax.bar(range(len(profiles)), profiles[f], color=colours)
        ax.set_xticks(range(len(profiles)), [str(s) for s in profiles["segment"]])
        if f in log_features and (profiles[f] > 0).all():  # heavy-tailed: one wholesale segment dwarfs the rest
            _log_axis(ax, profiles[f].max() / profiles[f].min())
        ax.set_title(f + (" (log scale)" if ax.get_yscale() == "log" else ""), fontsize=9)
        ax.tick_params(labelsize=8)
        _style(ax)
    for ax in axes[len(features):]:
        ax.set_visible(False)
    fig.suptitle("Segment centres in original units (x: segment)", fontsize=10)
    return fig


def _log_axis(ax, spread: float) -> None:
    """A log y axis with plain-number labels; 1-2-5 ticks when the values span under two decades."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if math.log10(spread) < 2 else (1.0,)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def rules_figure(points: pd.DataFrame, top: list[dict], total: int) -> Figure:
    """Support vs confidence of `points` coloured by lift, the `top` rules circled; `total`: all rules."""
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
    shown = f"{len(points):,} of {total:,} rules" if len(points) < total else f"{total:,} rules"
    ax.set_title(f"Support vs confidence ({shown})", fontsize=10)
    _style(ax)
    return fig


def recommendation_eval_figure(evaluation: list[dict]) -> Figure:
    """Hit rate@K and MAP@K of each method (evaluation: dicts of method, k, hit_rate, map_at_k),
    side by side."""
    fig = _new_figure(5.0, 3.0)
    ax = fig.add_subplot()
    k = evaluation[0]["k"]
    metrics = ((f"hit rate@{k}", "hit_rate"), (f"MAP@{k}", "map_at_k"))
    width = 0.8 / len(evaluation)
    for i, (row, colour) in enumerate(zip(evaluation, SEGMENT_COLOURS)):
        xs = [m + (i - (len(evaluation) - 1) / 2) * width for m in range(len(metrics))]
        values = [row[key] for _, key in metrics]
        ax.bar(xs, values, width=width * 0.95, color=colour, label=row["method"])
        for x, v in zip(xs, values):
            ax.annotate(f"{v:.3f}", (x, v), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(range(len(metrics)), [name for name, _ in metrics])
    ax.set_ylim(0, max(1e-9, max(r["hit_rate"] for r in evaluation)) * 1.2)
    ax.set_title(f"Held-out last baskets of {evaluation[0]['customers']:,} customers", fontsize=9.5, loc="left")
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    ax.grid(axis="x", visible=False)
    return fig


def forecast_figure(plots: list[dict], interval: float) -> Figure:
    """Small multiples, one per item (plots: dicts of stock_code, description, history with
    week_start and units, forecast with week_start, forecast, lower and upper): weekly units
    sold, then the forecast with its prediction interval shaded."""
    cols = min(3, len(plots))
    rows = math.ceil(len(plots) / cols)
    fig = _new_figure(3.4 * cols, 2.3 * rows)
    for i, item in enumerate(plots):
        ax = fig.add_subplot(rows, cols, i + 1)
        hist, fc = item["history"], item["forecast"]
        ax.plot(pd.to_datetime(hist["week_start"]), hist["units"], color=HISTOGRAM_COLOUR, linewidth=1.2, label="sold")
        when = pd.to_datetime(fc["week_start"])
        ax.fill_between(when, fc["lower"], fc["upper"], color=WARN_COLOUR, alpha=0.18, linewidth=0,
                        label=f"{interval:.0%} interval")
        ax.plot(when, fc["forecast"], color=WARN_COLOUR, linewidth=1.4, marker=".", markersize=4, label="forecast")
        name = str(item["description"] or "")[:28]
        ax.set_title(f"{item['stock_code']} {name}", fontsize=8.5, loc="left")
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")
        _style(ax)
        if i == 0:
            ax.legend(fontsize=7, frameon=False, loc="upper left")
    return fig


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


def loss_figure(history: list[dict], best: int | None) -> Figure:
    """Train and validation loss per epoch (history: dicts with epoch, train_loss, val_loss); `best` marked."""
    fig = _new_figure(5.0, 3.2)
    ax = _epoch_axes(fig, best, "Loss per epoch", "loss (class-weighted BCE)")
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=4, label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", ms=4, label="validation")
    ax.legend(fontsize=8, frameon=False)
    return fig


def auc_figure(history: list[dict], best: int | None, baselines: dict[str, float]) -> Figure:
    """Validation AUC per epoch (history: dicts with epoch, val_auc), the best epoch starred and
    each baseline's AUC (model name -> AUC) as a line."""
    fig = _new_figure(5.0, 3.2)
    ax = _epoch_axes(fig, best, "Validation AUC per epoch", "AUC")
    ax.plot([h["epoch"] for h in history], [h["val_auc"] for h in history], marker="o", ms=4, color="#59a14f",
            label="validation AUC")
    for (model, auc), (colour, style) in zip(baselines.items(), (("#555", "--"), ("#b07aa1", ":"), ("#9c755f", "-."))):
        ax.axhline(auc, color=colour, linestyle=style, linewidth=1, label=f"{model.split(' (')[0]} baseline {auc:.3f}")
    best_row = next((h for h in history if h["epoch"] == best), None)
    if best_row is not None:
        ax.plot([best], [best_row["val_auc"]], marker="*", ms=14, color="#e15759", linestyle="none",
                label=f"best epoch {best}")
    ax.legend(fontsize=8, frameon=False)
    return fig


def search_figure(trials: list[dict], baselines: dict[str, float], chosen: int | None) -> Figure:
    """Validation AUC of every finished trial (dicts with trial, val_auc), best first, the
    trial a model was trained with (`chosen`) and the config's own (trial 0) marked, and each
    baseline's AUC as a line."""
    fig = _new_figure(5.6, 3.2)
    ax = fig.add_subplot()
    colours = ["#e15759" if t["trial"] == chosen else ("#f28e2b" if t["trial"] == 0 else "#4e79a7") for t in trials]
    ax.bar(range(len(trials)), [t["val_auc"] for t in trials], color=colours)
    ax.set_xticks(range(len(trials)), [str(t["trial"]) for t in trials], fontsize=7)
    for (model, auc), (colour, style) in zip(baselines.items(), (("#555", "--"), ("#b07aa1", ":"))):
        ax.axhline(auc, color=colour, linestyle=style, linewidth=1, label=f"{model.split(' (')[0]} {auc:.3f}")
    low = min([t["val_auc"] for t in trials] + list(baselines.values()))
    high = max([t["val_auc"] for t in trials] + list(baselines.values()))
    ax.set_ylim(max(0.0, low - 0.6 * (high - low) - 0.005), min(1.0, high + 0.3 * (high - low) + 0.005))
    ax.set_xlabel("trial, best first (orange: the config's settings; red: the trained model's)")
    ax.set_ylabel("validation AUC")
    ax.set_title("Model search: validation AUC per trial", fontsize=9.5, loc="left")
    _style(ax)
    if baselines:
        ax.legend(fontsize=8, frameon=False, loc="lower left")
    return fig


def _bin_counts(hist: pd.DataFrame, bins: int) -> pd.Series:
    return hist.groupby("bin")["count"].sum().reindex(range(bins), fill_value=0)


def _probability_axes(fig: Figure, title: str, ylabel: str):
    ax = fig.add_subplot()
    ax.set_xlim(0, 1)
    ax.set_xlabel("churn probability")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    _style(ax)
    return ax


def histogram_figure(hist: pd.DataFrame, bins: int, customers: int) -> Figure:
    """Bars of customers per probability bin (hist: segment, bin, count; summed over segments)."""
    fig = _new_figure(5.0, 3.2)
    ax = _probability_axes(fig, f"All {customers:,} customers", "customers")
    ax.bar([i / bins for i in range(bins)], _bin_counts(hist, bins).to_numpy(), width=1 / bins,
           align="edge", color=HISTOGRAM_COLOUR, edgecolor="white", linewidth=0.6)
    return fig


def segment_histograms_figure(hist: pd.DataFrame, bins: int, series: list[tuple[int | None, str]]) -> Figure:
    """One outline per (segment, legend label) in `series`, as shares of the segment, so small
    segments stay visible (hist: segment, bin, count)."""
    fig = _new_figure(5.0, 3.2)
    ax = _probability_axes(fig, "Per segment", "share of the segment's customers")
    edges = [i / bins for i in range(bins + 1)]
    for seg, label in series:
        part = hist[hist["segment"].isna()] if seg is None else hist[hist["segment"] == seg]
        counts = _bin_counts(part, bins).to_numpy()
        ax.stairs(counts / max(1, counts.sum()), edges, color=_segment_colour(seg), linewidth=1.6, label=label)
    ax.legend(fontsize=8, frameon=False)
    return fig


def drift_figure(psi: pd.DataFrame, warn_psi: float) -> Figure:
    """PSI per feature (psi: feature, psi, status, highest first): warnings in the warning
    colour, lifetime and age-like features above `warn_psi` ("info": expected to grow) in grey."""
    status = psi["status"] if "status" in psi else pd.Series(["warn" if v > warn_psi else "ok" for v in psi["psi"]])
    colours = {"warn": WARN_COLOUR, "info": NO_SEGMENT_COLOUR}
    info = int((status == "info").sum())
    fig, ax = _hbar(list(psi["feature"]), list(psi["psi"]), [colours.get(s, OK_COLOUR) for s in status],
                    [f"{v:.3f}" for v in psi["psi"]],
                    f"PSI per feature ({int((status == 'warn').sum())} of {len(psi)} warn"
                    + (f"; {info} lifetime or age-like above {warn_psi:g}, grey" if info else "") + ")",
                    "population stability index (PSI) vs the training snapshot")
    ax.axvline(warn_psi, color="#333", linestyle="--", linewidth=1, label=f"warn above PSI {warn_psi:g}")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return fig
