"""The HTML report: every section of a scored lake with its numbers, the score histogram's bars
as tall as its customer counts, notes in place of what a partial lake lacks, and a real browser
(headless Chromium) loading every embedded plot."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyspark.sql.functions as F
import pytest
from PIL import Image, ImageColor

from conftest import clean_lake, copy_lake, ingest_files
from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.report import write_report
from lakemine.report.data import SCORE_BINS, score_histogram
from lakemine.report.figures import HISTOGRAM_COLOUR
from lakemine.report.html import CSS_PX_PER_INCH, DPI

pytestmark = pytest.mark.slow

SECTIONS = ["1. Data quality", "2. Customer segments", "3. Association rules", "4. Recommendations",
            "5. Demand forecasts", "6. Churn model training", "7. Churn scores", "8. Feature drift"]
# segments: sizes + centres; rules: scatter; recommendations: held-out evaluation; forecasts: items'
# history and forecast; training: loss + AUC; scores: all + per segment; drift: PSI. Data quality adds
# the quarantine-by-reason chart when any row was quarantined.
PLOTS_OF_A_SCORED_LAKE = 2 + 1 + 1 + 1 + 2 + 2 + 1
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium")
# Counts, once the page has loaded, the images the browser decoded, and notes each one's pixel size.
IMAGE_PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  document.body.dataset.images = images.length;
  document.body.dataset.loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.sizes = images.map(function (i) { return i.naturalWidth + "x" + i.naturalHeight; }).join(" ");
});
</script>"""


class Page(HTMLParser):
    """The section headings, image sources (and by alt text), the <img> sizes, link targets and the
    cells of every table (by id)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.image_by_alt: dict[str, str] = {}
        self.image_sizes: list[tuple[int, int]] = []
        self.links: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._rows = self._row = self._cell = self._h2 = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._rows = self.tables.setdefault(a.get("id"), [])
        elif tag == "tr" and self._rows is not None:
            self._row = []
            self._rows.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "h2":
            self._h2 = []
        elif tag == "img":
            self.images.append(a.get("src", ""))
            self.image_by_alt[a.get("alt")] = a.get("src", "")
            self.image_sizes.append((int(a["width"]), int(a["height"])))
        for name in ("src", "href"):
            if name in a and tag != "img":
                self.links.append(a[name])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._rows = self._row = None
        elif tag == "h2":
            self.headings.append("".join(self._h2).strip())
            self._h2 = None

    def handle_data(self, data):
        for part in (self._cell, self._h2):
            if part is not None:
                part.append(data)

    def rows(self, table_id: str) -> list[dict[str, str]]:
        header, *body = self.tables[table_id]
        return [dict(zip(header, row)) for row in body]


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def png(src: str) -> Image.Image:
    """The image of a PNG data URI."""
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def bar_heights(image: Image.Image, colour: str, bins: int) -> np.ndarray:
    """The pixel height of each of `bins` equal-width bars of `colour` drawn over an x axis from 0
    to 1: the pixels of that colour in the column through each bin's centre. The axis ends are its
    outermost tick marks, found just below the axis line."""
    rgb = np.asarray(image.convert("RGB")).astype(int)
    dark = (rgb < 80).all(axis=2)
    y_axis = int(dark.sum(axis=0).argmax())  # the y axis line is the darkest column
    per_row = dark[:, y_axis:].sum(axis=1)
    x_axis = int(np.flatnonzero(per_row >= 0.9 * per_row.max()).max())  # the x axis line's lowest row
    ticks = np.flatnonzero(dark[x_axis + 3, y_axis - 3:]) + y_axis - 3
    centres = ticks.min() + (np.arange(bins) + 0.5) * (ticks.max() - ticks.min()) / bins
    bars = (rgb == ImageColor.getrgb(colour)).all(axis=2)
    return bars[:, centres.round().astype(int)].sum(axis=0)


def assert_self_contained(text: str, page: Page) -> None:
    """Every image a PNG data URI, every link in-page, no stylesheet or script from elsewhere."""
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    assert all(link.startswith("#") for link in page.links), page.links
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text)
    assert "url(" not in text and "@import" not in text and "<link" not in text


@pytest.fixture(scope="module")
def scored(scored_lake, tmp_path_factory):
    """A copy of the scored lake (rules, recommendations, forecasts, scores) and its report."""
    lake, cfg = copy_lake(*scored_lake[:2], tmp_path_factory.mktemp("report") / "lake")
    quarantined = sum(lake.read_table(t).count() for t in (schemas.BRONZE_QUARANTINE, schemas.SILVER_QUARANTINE))
    expected_plots = PLOTS_OF_A_SCORED_LAKE + (1 if quarantined else 0)
    return lake, cfg, scored_lake[2], scored_lake[3], write_report(lake, cfg), expected_plots


def test_score_histogram_counts_equal_numpy_per_segment(spark):
    rng = np.random.default_rng(7)
    p = np.concatenate([rng.random(400), [0.0, 1.0]])
    segment = [None if i % 11 == 0 else int(s) for i, s in enumerate(rng.integers(0, 3, len(p)))]
    df = spark.createDataFrame([(float(x), s) for x, s in zip(p, segment)], "churn_probability double, segment int")
    got = score_histogram(df, bins=20)
    assert got["count"].sum() == len(p)
    for seg in (0, 1, 2, None):
        mask = np.array([s == seg for s in segment])
        expected, _ = np.histogram(p[mask], bins=20, range=(0.0, 1.0))
        part = got[got["segment"].isna()] if seg is None else got[got["segment"] == seg]
        counts = part.set_index("bin")["count"].reindex(range(20), fill_value=0).to_numpy()
        np.testing.assert_array_equal(counts, expected, err_msg=f"segment {seg}")


def test_report_of_a_scored_lake_has_every_section_and_the_lake_numbers(scored):
    lake, cfg, as_of, meta, path, expected_plots = scored
    assert path == f"{lake.root}/reports/{as_of.isoformat()}/report.html"
    text = Path(path).read_text(encoding="utf-8")
    page = Page(text)
    assert page.headings == SECTIONS
    assert text.count("<img") == len(page.images) == expected_plots
    assert_self_contained(text, page)
    assert "not available" not in text

    header = {r["table"]: int(r["Delta version read"]) for r in page.rows("versions")}
    assert header == {t: lake.table_version(t) for t in header}
    assert {schemas.OPS_RUNS, schemas.GOLD_CUSTOMER_SCORES, schemas.OPS_DRIFT} <= set(header)

    runs = {r["stage"]: r for r in page.rows("runs")}
    for row in lake.read_table(schemas.OPS_RUNS).where(F.col("stage").isin("ingest", "clean")).collect():
        shown = runs[row["stage"]]
        assert [number(shown[c]) for c in ("rows in", "rows out", "quarantined", "duplicates")] == [
            row["rows_in"], row["rows_out"], row["rows_quarantined"], row["rows_duplicate"]]

    sizes = {r["segment"]: r["count"] for r in lake.read_table(schemas.GOLD_CUSTOMER_SEGMENTS)
             .where(F.col("as_of") == as_of).groupBy("segment").count().collect()}
    assert {int(r["segment"]): int(number(r["customers"])) for r in page.rows("segments")} == sizes

    rules = lake.read_table(schemas.GOLD_ASSOCIATION_RULES).where(F.col("as_of") == as_of)
    shown_rules = page.rows("rules")
    assert len(shown_rules) == min(15, rules.count())
    lifts = [number(r["lift"]) for r in shown_rules]
    assert lifts == sorted(lifts, reverse=True)
    assert lifts[0] == pytest.approx(rules.agg(F.max("lift")).first()[0], abs=5e-4)

    evals = lake.read_table(schemas.OPS_RECOMMEND_EVAL).where(F.col("as_of") == as_of).orderBy("method").collect()
    assert [(r["method"], int(number(r["customers"])), number(r["hit rate@10"]), number(r["MAP@10"]))
            for r in page.rows("recommend-eval")] == [
        (r["method"], r["customers"], pytest.approx(r["hit_rate"], abs=5e-4), pytest.approx(r["map_at_k"], abs=5e-4))
        for r in evals]
    most = lake.read_table(schemas.GOLD_RECOMMENDATIONS).where(F.col("as_of") == as_of).groupBy("stock_code").count()
    shown = page.rows("recommended-items")
    assert shown and int(number(shown[0]["customers"])) == most.agg(F.max("count")).first()[0]

    backtest = lake.read_table(schemas.OPS_FORECAST_BACKTEST).where(F.col("as_of") == as_of)
    mean_mase = {r["method"]: r["m"] for r in backtest.groupBy("method").agg(F.avg("mase").alias("m")).collect()}
    shown = {r["method"]: (int(number(r["items"])), number(r["mean MASE"])) for r in page.rows("forecast-backtest")}
    assert shown == {m: (4, pytest.approx(v, abs=5e-4)) for m, v in mean_mase.items()}  # one year: no seasonal naive
    units = (lake.read_table(schemas.GOLD_DEMAND_FORECAST).where(F.col("as_of") == as_of)
             .groupBy("stock_code").agg(F.sum("forecast").alias("u")).orderBy(F.desc("u")).collect())
    assert [(r["item"], number(r["forecast units"])) for r in page.rows("forecast-items")] == [
        (u["stock_code"], pytest.approx(u["u"], abs=0.5)) for u in units]

    epochs = page.rows("epochs")
    assert [int(r["epoch"]) for r in epochs] == [h["epoch"] for h in meta["history"]]
    assert [number(r["val AUC"]) for r in epochs] == pytest.approx([h["val_auc"] for h in meta["history"]], abs=5e-4)

    scores = lake.read_table(schemas.GOLD_CUSTOMER_SCORES).where(F.col("as_of") == as_of).toPandas()
    means = scores.groupby("segment")["churn_probability"].mean()
    shown_means = {int(r["segment"].split(" ")[0]): number(r["mean probability"])
                   for r in page.rows("scores") if r["segment"] != "all"}
    assert shown_means == pytest.approx(means.to_dict(), abs=5e-4)
    overall = next(r for r in page.rows("scores") if r["segment"] == "all")
    assert int(number(overall["customers"])) == len(scores)

    drift = lake.read_table(schemas.OPS_DRIFT).where(F.col("as_of") == as_of).orderBy(F.desc("psi")).collect()
    assert [(r["feature"], number(r["PSI"]), r["status"]) for r in page.rows("drift")] == [
        (r["feature"], pytest.approx(r["psi"], abs=5e-4), r["status"]) for r in drift]


def test_the_score_histogram_plot_draws_the_customers_of_each_bin(scored):
    lake, _, as_of, _, path, _ = scored
    page = Page(Path(path).read_text(encoding="utf-8"))
    heights = bar_heights(png(page.image_by_alt["histogram of churn probability"]), HISTOGRAM_COLOUR, SCORE_BINS)

    p = lake.read_table(schemas.GOLD_CUSTOMER_SCORES).where(F.col("as_of") == as_of).toPandas()["churn_probability"]
    counts, _ = np.histogram(p, bins=SCORE_BINS, range=(0.0, 1.0))
    assert counts.max() > 0 and heights.max() > 100, (counts, heights)
    # pixels proportional to customers, but for the ~3 px of each bar that its white edge and antialiasing cover
    np.testing.assert_allclose(heights, counts * heights.max() / counts.max(), atol=5)
    assert (heights[counts == 0] == 0).all(), (counts, heights)


def test_report_of_an_ingested_and_cleaned_lake_notes_what_is_missing(spark, lake, lake_cfg, tmp_path):
    from lakemine.stages.features import latest_date
    from lakemine.stages.generate import GenerateParams, generate

    manifest = generate(spark, str(tmp_path / "raw"), GenerateParams.from_config(None, customers=40, days=60, seed=5, dirty_rate=0.02))
    ingest_files(lake, lake_cfg, str(tmp_path / "raw"))
    clean_lake(lake, lake_cfg)
    last_day = latest_date(lake)

    path = write_report(lake, lake_cfg)
    assert path == f"{lake.root}/reports/{last_day.isoformat()}/report.html"
    text = Path(path).read_text(encoding="utf-8")
    page = Page(text)
    assert page.headings == SECTIONS
    for table, command in ((schemas.GOLD_SEGMENT_PROFILES, "kmeans"), (schemas.GOLD_ASSOCIATION_RULES, "fpgrowth"),
                           (schemas.GOLD_RECOMMENDATIONS, "recommend"), (schemas.GOLD_DEMAND_FORECAST, "forecast"),
                           (schemas.GOLD_CUSTOMER_SCORES, "score"), (schemas.OPS_DRIFT, "score")):
        assert (f"not available: {table} has no rows for {last_day.isoformat()} — "
                f"run <code>lakemine {command}</code>") in text
    assert f"not available: no churn model under {lake.root}/models/churn — run <code>lakemine train</code>" in text

    injected = manifest["injected"]
    expected = {
        ("bronze/quarantine", "blank_line"): injected["blank_line"],
        ("bronze/quarantine", "bad_field_count"): injected["truncated_line"],
        ("silver/quarantine", "negative_quantity"): injected["negative_quantity"],
        ("silver/quarantine", "bad_date"): injected["bad_date"],
        ("silver/quarantine", "bad_number"): injected["bad_number"],
        ("silver/quarantine", "extreme_price"): injected["extreme_price"],
    }
    expected = {k: n for k, n in expected.items() if n}
    assert expected, "the generated data should have quarantined rows"
    assert {(r["table"], r["reason"]): int(number(r["rows"])) for r in page.rows("quarantine-reasons")} == expected
    runs = {r["stage"]: r for r in page.rows("runs")}
    assert int(number(runs["ingest"]["rows in"])) == manifest["data_lines"]
    assert int(number(runs["clean"]["duplicates"])) == injected["duplicate"]
    assert text.count("<img") == len(page.images) == 1  # the quarantine chart alone
    assert_self_contained(text, page)


def test_a_report_of_an_empty_lake_names_what_to_run(lake, lake_cfg):
    with pytest.raises(StageError, match=r"no ops/runs table; run `lakemine ingest`"):
        write_report(lake, lake_cfg)
    assert not (Path(lake.root) / "reports").exists()


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_headless_chromium_loads_every_embedded_plot(scored, tmp_path):
    *_, path, expected_plots = scored
    page = tmp_path / "report.html"
    page.write_text(Path(path).read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE + "</body>"), encoding="utf-8")

    dom = chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri()).stdout
    images = re.search(r'data-images="(\d+)"', dom)
    loaded = re.search(r'data-loaded="(\d+)"', dom)
    assert images and loaded, dom[-500:]
    assert int(loaded.group(1)) == int(images.group(1)) == expected_plots > 0
    # the browser decoded each plot whole: the PNG's own size, DPI / 96 times the size the page shows
    served = Page(page.read_text(encoding="utf-8"))
    decoded = [png(src).size for src in served.images]
    sizes = re.search(r'data-sizes="([\dx ]+)"', dom)
    assert sizes and [tuple(map(int, s.split("x"))) for s in sizes.group(1).split()] == decoded, dom[-500:]
    np.testing.assert_allclose(np.array(decoded), np.array(served.image_sizes) * DPI / CSS_PX_PER_INCH, atol=1)

    shot = tmp_path / "report.png"
    chromium("--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri())
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 4000)
