"""The peer pipeline of bench/e2e.py: what `lakemine run` does, single-node, with the tools a
user would pick for small data, on the same raw files.

* ingest: pandas `read_csv` (pyarrow engine, every field a string); lines with the wrong
  number of fields come back through `on_bad_lines` and are quarantined as
  `bad_field_count`, empty lines as `blank_line`, a repeated header as `repeated_header`;
* clean: exact duplicates dropped and counted, the same trimming, number and date parsing
  (the date formats from lakemine's config, translated to strptime), the same reason codes
  in the same order, returns marked;
* features: baskets, RFM + behaviour features, z-scores, scaler and churn labels for the
  latest date and the training snapshots lakemine builds (same horizon, count and spacing);
* fpgrowth: pyfim's FP-growth, itemsets and rules (MLlib's definitions), rule descriptions;
* kmeans: scikit-learn KMeans over the same k range, n_init and seed, k chosen by the same
  silhouette (squared Euclidean, Spark's closed form);
* train: lakemine's own network (`lakemine.learning.model.ChurnMLP`) from in-memory tensors, the same
  split, class weight, global batch, learning-rate warm-up and epochs, validation every
  epoch, plus a scikit-learn logistic-regression baseline and the drift reference;
* score: plain torch inference, calibrated like lakemine, and the PSI of every feature.

Every stage writes its outputs as Parquet (or the model files) under --work. Progress lines
on stderr have lakemine's format ("[  12.3s] stage    text") so bench/e2e.py attributes
memory samples to stages the same way for both; --result gets the timings and counts (JSON).

    .venv/bin/python bench/e2e_peers.py --input DIR --work DIR --result FILE [--epochs N]

Only lakemine's config loader and network are imported (neither imports Spark); the
constants below mirror lakemine's and bench/e2e.py checks that they still do.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

T0 = time.monotonic()

import fim  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from peer_common import FEATURES, LOG_FEATURES, RAW_COLUMNS, RAW_COLUMNS_II, TOP_CATEGORIES, strptime_format  # noqa: E402,F401
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from lakemine.core.config import load_config  # noqa: E402
from lakemine.learning.model import ChurnMLP  # noqa: E402

# mirrors of lakemine constants (bench/e2e.py asserts they are equal)
# unknown_source: rows of a file no source profile maps; the peers read the UCI layouts only
REASONS = ("unknown_source", "missing_invoice", "missing_stock_code", "bad_date", "bad_number", "missing_customer",
           "negative_quantity", "zero_quantity", "bad_return", "bad_price", "extreme_price", "extreme_quantity")
MIN_YEAR, MAX_YEAR = 1990, 2100
Z_FEATURES = tuple(f"z_{f}" for f in FEATURES)
SEGMENT_FEATURES = ("z_recency_days", "z_frequency", "z_monetary", "z_tenure_days", "z_mean_basket_size")
K_RANGE = (2, 8)  # what `lakemine run` passes to the kmeans stage
N_INIT, KMEANS_SEED, KMEANS_MAX_ITER, KMEANS_TOL = 5, 42, 100, 1e-6
MIN_SUPPORT, MIN_CONFIDENCE = 0.01, 0.5  # MiningParams defaults
MIN_STEPS_PER_EPOCH, MIN_BATCH = 20, 16  # lakemine.learning.train
FLOOR = 1e-4  # lakemine.learning.drift
STAGES = ("ingest", "clean", "features", "fpgrowth", "kmeans", "train", "score")


def step(stage: str, text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {stage:<8} {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- ingest


def input_files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """As lakemine: a file as given, or a folder walked recursively, names starting with _ or
    . skipped, only the configured suffixes."""
    if path.is_file():
        return [path]
    found = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).parts
        if p.is_file() and not any(part.startswith(("_", ".")) for part in rel) and p.name.lower().endswith(suffixes):
            found.append(p)
    return found


def read_raw(files: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows with the eight raw columns as strings, '' for an empty field; ingest quarantine)."""
    parts, bad = [], []
    for f in files:
        if f.suffix.lower() == ".parquet":
            df = pd.read_parquet(f).astype("string").fillna("").astype(object)
        else:
            invalid: list[str] = []
            df = pd.read_csv(
                f, dtype=str, engine="pyarrow", keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig",
                on_bad_lines=lambda row: invalid.append(row.text) or "skip",
            )
            bad += [(t, "blank_line" if not t.strip() else "bad_field_count", f.name) for t in invalid]
        df.columns = [c.strip() for c in df.columns]
        if sorted(df.columns) == sorted(RAW_COLUMNS_II):
            df = df.rename(columns=dict(zip(RAW_COLUMNS_II, RAW_COLUMNS)))
        elif sorted(df.columns) != sorted(RAW_COLUMNS):
            raise SystemExit(f"{f}: columns {list(df.columns)} match neither UCI layout")
        df = df[list(RAW_COLUMNS)]
        df["_source_file"] = f.name
        parts.append(df)
    rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    quarantine = pd.DataFrame(bad, columns=["_raw", "reason", "_source_file"])
    return rows, quarantine


def ingest(files: list[Path], out: Path) -> tuple[pd.DataFrame, dict]:
    rows, bad = read_raw(files)
    raw = rows[list(RAW_COLUMNS)]
    blank = (raw == "").all(axis=1)
    header = (raw == pd.Series(RAW_COLUMNS, index=list(RAW_COLUMNS))).all(axis=1) | (
        raw == pd.Series(RAW_COLUMNS_II, index=list(RAW_COLUMNS))).all(axis=1)
    reason = np.select([blank, header], ["blank_line", "repeated_header"], default="")
    flagged = rows[reason != ""].assign(reason=reason[reason != ""])
    flagged = flagged.assign(_raw=flagged[list(RAW_COLUMNS)].agg(",".join, axis=1) if len(flagged) else "")
    quarantine = pd.concat([bad, flagged[["_raw", "reason", "_source_file"]]], ignore_index=True)
    bronze = rows[reason == ""].reset_index(drop=True)
    bronze.to_parquet(out / "bronze_transactions.parquet", index=False)
    quarantine.to_parquet(out / "bronze_quarantine.parquet", index=False)
    counts = {"rows_in": len(rows) + len(bad), "rows_out": len(bronze), "rows_quarantined": len(quarantine),
              "quarantine_reasons": quarantine["reason"].value_counts().to_dict()}
    return bronze, counts


# ----------------------------------------------------------------------------------- clean


def parse_timestamps(s: pd.Series, formats: tuple[str, ...]) -> pd.Series:
    """The first format that parses, else NaT; years outside 1990-2100 count as unparsed."""
    ts = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    todo = s.notna()
    for fmt in formats:
        if not todo.any():
            break
        py = strptime_format(fmt)
        parsed = pd.to_datetime(s[todo], format=py, errors="coerce", utc="%z" in py)
        if "%z" in py:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        ts.loc[parsed.index] = parsed.astype("datetime64[ns]")
        todo = todo & ts.isna()
    return ts.where(ts.dt.year.between(MIN_YEAR, MAX_YEAR))


def blank_to_null(s: pd.Series) -> pd.Series:
    t = s.str.strip(" ")  # Spark's trim: spaces only
    return t.where(t != "")


def clean(bronze: pd.DataFrame, cfg, out: Path) -> tuple[pd.DataFrame, dict]:
    c = cfg.clean
    raw = bronze[list(RAW_COLUMNS)]
    dedup = raw.drop_duplicates()
    duplicates = len(raw) - len(dedup)
    t = {col: blank_to_null(dedup[col]) for col in RAW_COLUMNS}
    invoice = t["InvoiceNo"].str.upper()
    is_return = invoice.str.startswith("C", na=False).astype(bool)
    q = pd.to_numeric(t["Quantity"], errors="coerce")
    q = q.where((q == np.floor(q)) & (q.abs() <= 2**31 - 1))
    price = pd.to_numeric(t["UnitPrice"], errors="coerce")
    price = price.where(np.isfinite(price))
    ts = parse_timestamps(t["InvoiceDate"], tuple(c.date_formats))
    customer = t["CustomerID"].str.replace(r"\.0+$", "", regex=True)
    stock = t["StockCode"].str.upper()

    checks = [
        ("missing_invoice", invoice.isna()),
        ("missing_stock_code", stock.isna()),
        ("bad_date", ts.isna()),
        ("bad_number", q.isna() | price.isna()),
    ]
    if c.missing_customer == "quarantine":
        checks.append(("missing_customer", customer.isna()))
    checks += [
        ("negative_quantity", ~is_return & (q < 0)),
        ("zero_quantity", q == 0),
        ("bad_return", is_return & (q > 0)),
        ("bad_price", price < 0),
    ]
    if c.outlier_policy != "cap":
        checks += [("extreme_price", price > c.max_unit_price), ("extreme_quantity", q.abs() > c.max_quantity)]
    reason = pd.Series(np.select([m.to_numpy() for _, m in checks], [code for code, _ in checks], default=""),
                       index=dedup.index)
    if c.outlier_policy == "cap":
        price = price.clip(upper=c.max_unit_price)
        q = q.clip(-c.max_quantity, c.max_quantity)
    good = reason == ""
    qg, pg, tg = q[good].astype("int32"), price[good], ts[good]
    silver = pd.DataFrame({
        "invoice_no": invoice[good], "stock_code": stock[good], "description": t["Description"][good],
        "quantity": qg, "invoice_ts": tg, "invoice_date": tg.dt.normalize(), "unit_price": pg,
        "line_amount": (qg * pg).round(2), "customer_id": customer[good], "country": t["Country"][good],
        "is_return": is_return[good],
    }).reset_index(drop=True)
    quarantine = dedup[~good].assign(reason=reason[~good])
    silver.to_parquet(out / "silver_transactions.parquet", index=False)
    quarantine.to_parquet(out / "silver_quarantine.parquet", index=False)
    counts = {"rows_in": len(raw), "rows_out": len(silver), "rows_quarantined": len(quarantine),
              "rows_duplicate": duplicates, "quarantine_reasons": quarantine["reason"].value_counts().to_dict()}
    return silver, counts


# -------------------------------------------------------------------------------- features


def build_baskets(sales: pd.DataFrame) -> pd.DataFrame:
    """One row per sales invoice: basket_id, customer_id, invoice_date, items (distinct, sorted)."""
    sales = sales.assign(customer_id=sales["customer_id"].astype("string"))  # min skips a missing customer
    head = sales.groupby("invoice_no", sort=True).agg(customer_id=("customer_id", "min"),
                                                       invoice_date=("invoice_date", "min"))
    pairs = sales[["invoice_no", "stock_code"]].drop_duplicates().sort_values(["invoice_no", "stock_code"])
    items = pairs.groupby("invoice_no", sort=True)["stock_code"].agg(list)
    return head.assign(items=items).rename_axis("basket_id").reset_index()


def compute_customer_features(silver: pd.DataFrame, as_of: pd.Timestamp, top_categories: int = TOP_CATEGORIES) -> pd.DataFrame:
    """RFM and behaviour features per customer from rows dated on or before `as_of`."""
    hist = silver[(silver["invoice_date"] <= as_of) & silver["customer_id"].notna()]
    sales = hist[~hist["is_return"]]
    invoices = sales.groupby(["customer_id", "invoice_no"], sort=False).agg(
        day=("invoice_date", "min"), n_items=("stock_code", "nunique"), value=("line_amount", "sum"))
    per = invoices.groupby(level="customer_id", sort=False).agg(
        last_day=("day", "max"), first_day=("day", "min"), frequency=("day", "size"),
        mean_basket_size=("n_items", "mean"), mean_basket_value=("value", "mean"), monetary=("value", "sum"))
    lines = sales.groupby("customer_id", sort=False).agg(distinct_items=("stock_code", "nunique"),
                                                          sale_lines=("stock_code", "size"))
    returns = hist[hist["is_return"]].groupby("customer_id", sort=False).size().rename("return_lines")
    spend = sales.groupby("category", sort=False)["line_amount"].sum().reset_index()
    top = spend.sort_values(["line_amount", "category"], ascending=[False, True])["category"].head(top_categories)
    top_spend = sales[sales["category"].isin(top)].groupby("customer_id", sort=False)["line_amount"].sum().rename("top_spend")
    df = per.join(lines, how="inner").join(returns, how="left").join(top_spend, how="left")
    freq = df["frequency"]
    tenure = (as_of - df["first_day"]).dt.days
    out = pd.DataFrame({
        "customer_id": df.index,
        "as_of": as_of,
        "recency_days": (as_of - df["last_day"]).dt.days.to_numpy(),
        "frequency": freq.astype("int64").to_numpy(),
        "monetary": df["monetary"].round(2).to_numpy(),
        "tenure_days": tenure.to_numpy(),
        "mean_basket_size": df["mean_basket_size"].astype(float).to_numpy(),
        "mean_basket_value": df["mean_basket_value"].astype(float).to_numpy(),
        "distinct_items": df["distinct_items"].astype("int64").to_numpy(),
        "return_rate": (df["return_lines"].fillna(0) / df["sale_lines"]).to_numpy(),
        "mean_days_between": np.where(freq > 1, (df["last_day"] - df["first_day"]).dt.days / (freq - 1).clip(lower=1),
                                      tenure.astype(float)),
        "top_category_share": np.where(df["monetary"] > 0, df["top_spend"].fillna(0.0) / df["monetary"], 0.0),
    })
    return out.reset_index(drop=True)


def standardize(features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features plus z_ columns (population std; no spread: 0), and the scaler rows."""
    out, scaler = features.copy(), []
    for f in FEATURES:
        x = features[f].astype(float)
        x = np.log1p(x) if f in LOG_FEATURES else x
        mean, std = float(x.mean()), float(x.std(ddof=0))
        out[f"z_{f}"] = (x - mean) / std if std > 0 else 0.0
        scaler.append({"as_of": features["as_of"].iloc[0], "feature": f,
                       "transform": "log1p_zscore" if f in LOG_FEATURES else "zscore", "mean": mean, "std": std})
    return out, pd.DataFrame(scaler)


def compute_labels(silver: pd.DataFrame, features: pd.DataFrame, as_of: pd.Timestamp, horizon: int, data_end) -> pd.DataFrame:
    end = as_of + pd.Timedelta(days=horizon)
    future = silver[~silver["is_return"] & (silver["invoice_date"] > as_of) & (silver["invoice_date"] <= end)]
    bought = set(future["customer_id"].dropna().unique())
    return pd.DataFrame({
        "customer_id": features["customer_id"], "as_of": as_of,
        "churned": (~features["customer_id"].isin(bought)).astype("int32"),
        "horizon_days": horizon, "complete": bool(data_end >= end),
    })


def training_dates(as_of, data_start, horizon: int, snapshots: int, spacing: int) -> list:
    dates = [as_of - timedelta(days=horizon + i * spacing) for i in range(snapshots)]
    return sorted(d for d in dates if d >= data_start + timedelta(days=spacing))


def features_stage(silver: pd.DataFrame, cfg, out: Path) -> dict:
    fc = cfg.features
    # service lines (postage, fees, vouchers) stay out of baskets and features
    code = silver["stock_code"].str.upper()
    service = code.isin([c.upper() for c in fc.service_codes])
    if fc.service_pattern:
        service |= code.str.contains(fc.service_pattern, regex=True)
    silver = silver[~service].copy()
    # product family = the description's last word; computed once per distinct description
    descriptions = pd.Series(silver["description"].dropna().unique())
    family = descriptions.str.strip(" ").str.rsplit(n=1).str[-1].fillna("").str.upper()
    silver["category"] = silver["description"].map(dict(zip(descriptions, family))).fillna("")
    sales = silver[~silver["is_return"]]
    baskets = build_baskets(sales)
    baskets.to_parquet(out / "gold_baskets.parquet", index=False)
    as_of, start, data_end = silver["invoice_date"].max(), silver["invoice_date"].min(), silver["invoice_date"].max()
    dates = training_dates(as_of, start, fc.horizon_days, fc.training_snapshots, fc.snapshot_spacing_days) + [as_of]
    feats, scalers, labels = [], [], []
    for d in dates:
        f, s = standardize(compute_customer_features(silver, d))
        feats.append(f)
        scalers.append(s)
        labels.append(compute_labels(silver, f, d, fc.horizon_days, data_end))
    features, labels = pd.concat(feats, ignore_index=True), pd.concat(labels, ignore_index=True)
    features.to_parquet(out / "gold_customer_features.parquet", index=False)
    pd.concat(scalers, ignore_index=True).to_parquet(out / "gold_feature_scaler.parquet", index=False)
    labels.to_parquet(out / "gold_labels.parquet", index=False)
    return {"baskets": baskets, "features": features, "labels": labels, "scaler": pd.concat(scalers, ignore_index=True),
            "as_of": as_of, "dates": dates,
            "counts": {"baskets": len(baskets), "customer_features": len(features), "labels": len(labels),
                       "as_of": [str(d.date()) for d in dates], "customers_latest": len(feats[-1])}}


# -------------------------------------------------------------------------------- fpgrowth


def fpgrowth_stage(silver: pd.DataFrame, baskets: pd.DataFrame, as_of, out: Path) -> dict:
    chosen = baskets[baskets["invoice_date"].isna() | (baskets["invoice_date"] <= as_of)]
    tracts = chosen["items"].tolist()
    n = len(tracts)
    cut = max(1, math.ceil(MIN_SUPPORT * n))
    sets = fim.fpgrowth(tracts, target="s", supp=-cut, zmin=1, report="a")
    itemsets = pd.DataFrame({"items": [sorted(s) for s, _ in sets], "freq": [int(f) for _, f in sets]})
    itemsets["support"] = itemsets["freq"] / n
    # mode 'o': a rule's support is that of body and head together (MLlib's definition)
    found = fim.fpgrowth(tracts, target="r", supp=-cut, conf=MIN_CONFIDENCE * 100, zmin=2, report="acl", mode="o")
    rules = pd.DataFrame({
        "antecedent": [sorted(body) for _, body, *_ in found], "consequent": [[head] for head, *_ in found],
        "support": [a / n for _, _, a, _, _ in found], "confidence": [c for *_, c, _ in found],
        "lift": [lift for *_, lift in found],
    })
    counted = silver[silver["description"].notna()].groupby(["stock_code", "description"], sort=False).size()
    counted = counted.rename("n").reset_index().sort_values(["stock_code", "n", "description"])
    desc = dict(zip(*counted.drop_duplicates("stock_code", keep="last")[["stock_code", "description"]].to_numpy().T))
    rules["antecedent_descriptions"] = [[desc.get(i, "") for i in a] for a in rules["antecedent"]]
    rules["consequent_description"] = [desc.get(c[0], "") for c in rules["consequent"]]
    itemsets.to_parquet(out / "gold_frequent_itemsets.parquet", index=False)
    rules.to_parquet(out / "gold_association_rules.parquet", index=False)
    return {"baskets": n, "itemsets": len(itemsets), "rules": len(rules)}


# ---------------------------------------------------------------------------------- kmeans


def silhouette_sq(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Spark ClusteringEvaluator's silhouette (squared Euclidean), in its closed form:
    mean squared distance from a point to cluster C = |x|^2 + mean_C |y|^2 - 2 x . mean_C y."""
    sizes = np.bincount(labels, minlength=k).astype(float)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    norms = (x * x).sum(axis=1)
    sq_sums = np.bincount(labels, weights=norms, minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = norms[:, None] + (sq_sums / sizes)[None, :] - 2 * (x @ sums.T) / sizes[None, :]
    own_n = sizes[labels]
    own = d[np.arange(len(x)), labels] * own_n / np.maximum(own_n - 1, 1)
    other = np.where(np.arange(k)[None, :] == labels[:, None], np.inf, np.where(sizes[None, :] > 0, d, np.inf)).min(axis=1)
    s = np.where(own < other, 1 - own / other, np.where(own > other, other / own - 1, 0.0))
    return float(np.where(own_n > 1, s, 0.0).mean())


def label_centre(z: dict[str, float]) -> str:
    if z.get("z_mean_basket_size", 0) > 1.5:
        return "wholesale"
    if z.get("z_recency_days", 0) > 0.75:
        return "at risk"
    if z.get("z_tenure_days", 0) < -0.75:
        return "new"
    if z.get("z_monetary", 0) > 0.5:
        return "high value"
    if z.get("z_monetary", 0) < -0.5:
        return "low value"
    return "regular"


def kmeans_stage(features: pd.DataFrame, scaler: pd.DataFrame, as_of, out: Path) -> tuple[KMeans, dict]:
    latest = features[features["as_of"] == as_of].reset_index(drop=True)
    x = latest[list(SEGMENT_FEATURES)].to_numpy(dtype=np.float64)
    best, scores = None, {}
    for k in range(K_RANGE[0], K_RANGE[1] + 1):
        model = KMeans(n_clusters=k, n_init=N_INIT, random_state=KMEANS_SEED, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL).fit(x)
        scores[k] = silhouette_sq(x, model.labels_, k)
        if best is None or scores[k] > scores[best[0]]:
            best = (k, model)
    k, model = best
    centres = model.cluster_centers_
    labels, seen = [], {}
    for c in centres:
        name = label_centre(dict(zip(SEGMENT_FEATURES, map(float, c))))
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name} {seen[name]}")
    seg = model.labels_
    segments = pd.DataFrame({"customer_id": latest["customer_id"], "as_of": as_of, "segment": seg.astype("int32"),
                             "segment_label": np.array(labels, dtype=object)[seg],
                             "distance": np.sqrt(((x - centres[seg]) ** 2).sum(axis=1))})
    sc = scaler[scaler["as_of"] == as_of].set_index("feature")
    profiles = []
    for i, c in enumerate(centres):
        row = {"segment": i, "segment_label": labels[i], "size": int((seg == i).sum())}
        for name, z in zip(SEGMENT_FEATURES, c):
            f = name[2:]
            v = z * sc.at[f, "std"] + sc.at[f, "mean"]
            row[f] = float(math.expm1(v) if f in LOG_FEATURES else v)
        profiles.append(row)
    segments.to_parquet(out / "gold_customer_segments.parquet", index=False)
    pd.DataFrame(profiles).assign(k=k, silhouette=scores[k], as_of=as_of).to_parquet(out / "gold_segment_profiles.parquet", index=False)
    (out / "kmeans_model.json").write_text(json.dumps({"k": k, "centres": centres.tolist(), "columns": list(SEGMENT_FEATURES)}))
    return model, {"k": k, "silhouette": scores[k], "silhouettes": scores, "customers": len(latest)}


# ------------------------------------------------------------------------------ train/score


def model_inputs(df: pd.DataFrame, km: KMeans) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(inputs as float32 in lakemine's column order: z_ features then the segment one-hot, segment)."""
    seg = km.predict(df[list(SEGMENT_FEATURES)].to_numpy(dtype=np.float64))
    k = km.n_clusters
    x = np.concatenate([df[list(Z_FEATURES)].to_numpy(dtype=np.float32), np.eye(k, dtype=np.float32)[seg]], axis=1)
    return x, seg, list(Z_FEATURES) + [f"segment_{i}" for i in range(k)]


def quantile_edges(df: pd.DataFrame, bins: int) -> dict[str, list[float]]:
    probs = [i / bins for i in range(1, bins)]
    return {f: sorted(set(float(q) for q in np.quantile(df[f].astype(float).dropna(), probs, method="inverted_cdf")))
            for f in FEATURES}


def proportions(df: pd.DataFrame, edges: dict[str, list[float]]) -> dict[str, list[float]]:
    out = {}
    for f, e in edges.items():
        v = df[f].astype(float).dropna().to_numpy()
        counts = np.bincount(np.searchsorted(np.asarray(e), v, side="left"), minlength=len(e) + 1)
        out[f] = (counts / counts.sum()).tolist() if counts.sum() else [0.0] * (len(e) + 1)
    return out


def psi(expected: list[float], actual: list[float]) -> float:
    return float(sum((max(a, FLOOR) - max(e, FLOOR)) * math.log(max(a, FLOOR) / max(e, FLOOR))
                     for e, a in zip(expected, actual)))


def effective_batch_size(batch_size: int, train_rows: int, workers: int) -> int:
    return max(min(MIN_BATCH, batch_size), min(batch_size, train_rows // (workers * MIN_STEPS_PER_EPOCH)))


def train_stage(features: pd.DataFrame, labels: pd.DataFrame, km: KMeans, cfg, out: Path, epochs: int | None) -> dict:
    tc = cfg.train
    train_as_of = labels.loc[labels["complete"], "as_of"].max()
    if pd.isna(train_as_of):
        raise SystemExit("no complete churn labels: the data must span the churn horizon plus the snapshot spacing")
    known = labels[labels["complete"] & (labels["as_of"] <= train_as_of)][["customer_id", "as_of", "churned"]]
    frame = features.merge(known, on=["customer_id", "as_of"])
    dates = sorted(frame["as_of"].unique())
    if len(dates) >= 2:
        is_val = (frame["as_of"] == dates[-1]).to_numpy()
        split = {"kind": "time", "train_dates": [str(pd.Timestamp(d).date()) for d in dates[:-1]],
                 "val_dates": [str(pd.Timestamp(dates[-1]).date())]}
    else:  # lakemine hashes with xxhash64; a seeded pandas hash here (another split, same share)
        bucket = pd.util.hash_pandas_object(frame["customer_id"], index=False, hash_key=f"{tc.seed:016d}") % 10_000
        is_val = (bucket < int(tc.val_fraction * 10_000)).to_numpy()
        split = {"kind": "customer", "train_dates": [str(pd.Timestamp(dates[0]).date())], "val_dates": []}
    x_all, _, inputs = model_inputs(frame, km)
    y_all = frame["churned"].to_numpy(dtype=np.float32)
    xt, yt, xv, yv = x_all[~is_val], y_all[~is_val], x_all[is_val], y_all[is_val]
    for name, y in (("train", yt), ("val", yv)):
        if y.sum() == 0 or y.sum() == len(y):
            raise SystemExit(f"the {name} split has only one class")
    pos_weight = float((yt == 0).sum() / (yt == 1).sum())
    offset = -math.log(pos_weight)
    batch = effective_batch_size(tc.batch_size, len(yt), tc.workers)
    global_batch = batch * tc.workers
    steps = max(1, math.ceil(len(yt) / global_batch))
    warm = tc.warmup_epochs * steps
    max_epochs = epochs or tc.epochs

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(tc.seed)
    net = ChurnMLP(len(inputs), tuple(tc.hidden), tc.dropout, tc.batch_norm)
    opt = torch.optim.Adam(net.parameters(), lr=tc.learning_rate)
    weighted = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight), reduction="sum")
    plain = torch.nn.BCEWithLogitsLoss(reduction="sum")
    x, y = torch.from_numpy(xt), torch.from_numpy(yt)
    vx, vy = torch.from_numpy(xv), torch.from_numpy(yv)
    gen = torch.Generator().manual_seed(tc.seed)
    history, best_auc, best_epoch, bad, best_state, stop_at = [], -1.0, 0, 0, None, None
    order = torch.randperm(len(y), generator=gen)
    pos = 0
    for epoch in range(max_epochs):
        if epochs is None and bad >= tc.patience:
            break
        net.train()
        loss_sum, seen = 0.0, 0
        for s in range(steps):
            g = epoch * steps + s
            scale = 1 + (tc.workers - 1) * min(1.0, g / warm) if warm else tc.workers
            for group in opt.param_groups:
                group["lr"] = tc.learning_rate * scale
            # an endless shuffled stream of full batches, like lakemine's Petastorm reader
            if pos + global_batch > len(y):
                order, pos = torch.cat([order[pos:], torch.randperm(len(y), generator=gen)]), 0
            idx = order[pos:pos + global_batch]
            pos += global_batch
            opt.zero_grad()
            loss = weighted(net(x[idx]), y[idx])
            (loss / len(idx)).backward()
            opt.step()
            loss_sum += float(loss.detach())
            seen += len(idx)
        net.eval()
        with torch.no_grad():
            logits = net(vx)
            val_loss = float(weighted(logits, vy)) / len(vy)
            val_log_loss = float(plain(logits + offset, vy)) / len(vy)
            val_auc = float(roc_auc_score(yv, torch.sigmoid(logits + offset).numpy()))
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "val_loss": val_loss,
                        "val_log_loss": val_log_loss, "val_auc": val_auc})
        if val_auc > best_auc + 1e-4:
            best_auc, best_epoch, bad = val_auc, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad == tc.patience and stop_at is None:
                stop_at = epoch + 1
    if best_state is not None:
        net.load_state_dict(best_state)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    (out / "state_dict.pt").write_bytes(buf.getvalue())

    # unregularized, as Spark ML's default (regParam 0)
    lr = LogisticRegression(C=np.inf, max_iter=100).fit(xt, yt)
    p = np.clip(lr.predict_proba(xv)[:, 1], 1e-7, 1 - 1e-7)
    baseline = {"auc": float(roc_auc_score(yv, p)), "log_loss": float(-(yv * np.log(p) + (1 - yv) * np.log(1 - p)).mean())}
    train_rows = frame[~is_val]
    edges = quantile_edges(train_rows, cfg.score.drift_bins)
    best = history[best_epoch - 1]
    meta = {
        "features": inputs, "architecture": {"n_inputs": len(inputs), "hidden": list(tc.hidden), "dropout": tc.dropout,
                                             "batch_norm": tc.batch_norm},
        "split": split, "rows": {"train": len(yt), "val": len(yv), "train_churned": int(yt.sum()), "val_churned": int(yv.sum())},
        "epochs": {"max": max_epochs, "run": len(history), "best": best_epoch, "fixed": epochs is not None,
                   "early_stop_would_end_at": stop_at},
        "batch_size": {"per_worker_equivalent": batch, "global": global_batch, "steps_per_epoch": steps},
        "calibration": {"pos_weight": pos_weight, "logit_offset": offset}, "history": history,
        "validation": {"auc": best["val_auc"], "log_loss": best["val_log_loss"]},
        "baseline": {"model": "logistic regression (scikit-learn)", **baseline},
        "drift_reference": {"bins": cfg.score.drift_bins, "edges": edges, "expected": proportions(train_rows, edges)},
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    return {"net": net, "meta": meta}


def score_stage(features: pd.DataFrame, as_of, km: KMeans, trained: dict, cfg, out: Path) -> dict:
    meta, net = trained["meta"], trained["net"]
    latest = features[features["as_of"] == as_of].reset_index(drop=True)
    x, seg, _ = model_inputs(latest, km)
    net.eval()
    with torch.no_grad():
        prob = torch.sigmoid(net(torch.from_numpy(x)) + meta["calibration"]["logit_offset"]).numpy().astype(np.float64)
    scores = pd.DataFrame({"customer_id": latest["customer_id"], "as_of": as_of, "churn_probability": prob,
                           "segment": seg.astype("int32"), "model_version": "peer", "scored_at": pd.Timestamp.now()})
    scores.to_parquet(out / "gold_customer_scores.parquet", index=False)
    ref = meta["drift_reference"]
    actual = proportions(latest, ref["edges"])
    drift = {f: psi(ref["expected"][f], actual[f]) for f in ref["edges"]}
    pd.DataFrame([{"feature": f, "psi": v, "status": "warn" if v > cfg.score.drift_warn_psi else "ok"}
                  for f, v in drift.items()]).to_parquet(out / "ops_drift.parquet", index=False)
    return {"scored": len(scores), "drift_warnings": [f for f, v in drift.items() if v > cfg.score.drift_warn_psi]}


# ------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="raw files: a file or a folder (as `lakemine run --input`)")
    ap.add_argument("--work", required=True, help="folder for the outputs (replaced)")
    ap.add_argument("--result", required=True, help="JSON file for timings and counts")
    ap.add_argument("--epochs", type=int, help="train exactly this many epochs (default: the config's maximum "
                    "with the same early stopping as lakemine)")
    ap.add_argument("--until", choices=("features", "score"), default="score",
                    help="stop after this stage (bench/scale.py compares ingest -> features)")
    args = ap.parse_args()

    cfg = load_config()
    out = Path(args.work)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    timings: dict[str, float] = {}

    def timed(stage, fn, *a):
        t0 = time.monotonic()
        try:
            return fn(*a)
        finally:
            timings[stage] = time.monotonic() - t0

    files = input_files(Path(args.input), tuple(s.lower() for s in cfg.ingest.suffixes))
    step("ingest", f"{len(files)} file(s) -> pandas (pyarrow CSV engine)")
    bronze, ingested = timed("ingest", ingest, files, out)
    step("ingest", f"{ingested['rows_out']:,} rows, {ingested['rows_quarantined']:,} quarantined")
    step("clean", "dedupe, types, reason codes")
    silver, cleaned = timed("clean", clean, bronze, cfg, out)
    del bronze
    step("clean", f"{cleaned['rows_out']:,} rows to silver, {cleaned['rows_quarantined']:,} quarantined, "
         f"{cleaned['rows_duplicate']:,} duplicates removed")
    step("features", "baskets, customer features, labels")
    feats = timed("features", features_stage, silver, cfg, out)
    step("features", f"{feats['counts']['customers_latest']:,} customers as of {feats['as_of'].date()}; "
         f"snapshots {feats['counts']['as_of']}")
    if args.until == "features":
        Path(args.result).write_text(json.dumps({"stages": timings, "counts": {
            "ingest": ingested, "clean": cleaned, "features": feats["counts"]}}, indent=2, default=str))
        return 0
    step("fpgrowth", "pyfim fpgrowth")
    mined = timed("fpgrowth", fpgrowth_stage, silver, feats["baskets"], feats["as_of"], out)
    step("fpgrowth", f"{mined['itemsets']:,} itemsets, {mined['rules']:,} rules from {mined['baskets']:,} baskets")
    step("kmeans", f"scikit-learn KMeans, k {K_RANGE[0]}-{K_RANGE[1]}")
    km, segmented = timed("kmeans", kmeans_stage, feats["features"], feats["scaler"], feats["as_of"], out)
    step("kmeans", f"k={segmented['k']} (silhouette {segmented['silhouette']:.3f})")
    step("train", f"torch in memory, {'exactly %d' % args.epochs if args.epochs else 'at most %d' % cfg.train.epochs} epochs")
    trained = timed("train", train_stage, feats["features"], feats["labels"], km, cfg, out, args.epochs)
    m = trained["meta"]
    step("train", f"validation AUC {m['validation']['auc']:.4f} (baseline {m['baseline']['auc']:.4f}), "
         f"best epoch {m['epochs']['best']} of {m['epochs']['run']}")
    step("score", "plain torch inference + PSI")
    scored = timed("score", score_stage, feats["features"], feats["as_of"], km, trained, cfg, out)
    step("score", f"{scored['scored']:,} customers scored")

    result = {
        "stages": timings,
        "counts": {
            "ingest": ingested, "clean": cleaned, "features": feats["counts"], "fpgrowth": mined,
            "kmeans": {k: v for k, v in segmented.items() if k != "silhouettes"},
            "train": {"rows": m["rows"], "epochs": m["epochs"], "batch_size": m["batch_size"],
                      "validation": m["validation"], "baseline": m["baseline"]},
            "score": scored,
        },
        "silhouettes": {str(k): v for k, v in segmented["silhouettes"].items()},
    }
    Path(args.result).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
