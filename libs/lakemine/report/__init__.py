"""`lakemine report`: one self-contained HTML page about the lake for one logical date.

`run` reads ops/runs, the quarantines, gold/segment_profiles, gold/association_rules,
gold/recommendations with ops/recommend_eval, the latest
churn model's metadata, gold/customer_scores and ops/drift, and writes
`<lake>/reports/<as_of>/report.html`. Every table is aggregated in Spark (groupBy, limit) and only
small results reach the driver. Plots are matplotlib figures embedded as PNG data URIs and the CSS
is inline, so the page needs nothing but itself. A section whose table is missing, or has no rows
for `as_of`, says so and names the command that fills it.

Three parts: `data` (the Spark reads, returning plain values), `figures` (matplotlib) and `html`
(the page); only `data` touches Spark.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone

from lakemine.core import storage
from lakemine.core.config import Config
from lakemine.io.lake import Lake
from lakemine.io.runs import Run
from lakemine.report import data, html

log = logging.getLogger(__name__)

STAGE = "report"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class ReportParams:
    """The logical date to report on; None: the latest as_of in gold/customer_features."""

    as_of: date | None = None


def run(lake: Lake, cfg: Config, p: ReportParams) -> Run:
    """Write `<lake>/reports/<as_of>/report.html` and return a succeeded Run whose `.result` is
    its path. Nothing goes to ops/runs: the report writes no table. An empty lake (no ops/runs):
    StageError.
    """
    result = Run(stage=STAGE, as_of=p.as_of, params={})
    report = data.gather(lake, p.as_of)
    page = html.page(report, cfg.score.drift_warn_psi)
    path = f"{lake.root}/reports/{report.as_of.isoformat()}/{REPORT_FILE}"
    storage.write_bytes(path, page.encode("utf-8"))
    log.info("report for %s written to %s (%d bytes)", report.as_of, path, len(page))
    result.as_of, result.status, result.result = report.as_of, "succeeded", path
    result.message = f"report written to {path}"
    result.finished_at = datetime.now(timezone.utc)
    return result


def write_report(lake: Lake, cfg: Config, as_of: date | None = None) -> str:
    """`run` for `as_of` (None: the latest in gold/customer_features); the page's path."""
    return run(lake, cfg, ReportParams(as_of=as_of)).result

