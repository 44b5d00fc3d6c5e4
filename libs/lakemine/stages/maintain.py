"""`lakemine maintain`: OPTIMIZE (compaction) and VACUUM every Delta table of the lake.

VACUUM keeps the files that any version of the last `maintain.retention_hours` needs, so time
travel within that window keeps working. Rows never change: re-running changes nothing but
file layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable

from lakemine.core import storage
from lakemine.core.config import Config, MaintainConfig, StageParams
from lakemine.io.lake import Lake
from lakemine.io.runs import Run, record_run

STAGE = "maintain"


@dataclass(frozen=True)
class MaintainParams(MaintainConfig, StageParams):
    """The maintain section of the config (retention_hours), the tables (None: every table
    under the lake root), the date recorded in ops/runs (None: today) and a progress callback."""

    SECTION = "maintain"
    tables: tuple[str, ...] | None = None
    as_of: date | None = None
    progress: Callable[[str], None] | None = None


@dataclass(frozen=True)
class TableUpkeep:
    table: str
    files_compacted: int      # small files OPTIMIZE replaced
    files_written: int        # files OPTIMIZE wrote in their place
    files_deleted: int        # data files VACUUM removed from storage
    bytes_deleted: int
    version: int


def run(lake: Lake, cfg: Config, p: MaintainParams) -> Run:
    """OPTIMIZE then VACUUM each table; `Run.result` lists a TableUpkeep per table."""
    hours, tables, progress = p.retention_hours, p.tables, p.progress
    as_of = p.as_of or datetime.now(timezone.utc).date()
    done: list[TableUpkeep] = []
    with record_run(lake, STAGE, as_of, {"retention_hours": hours}) as run:
        names = list(tables) if tables is not None else lake.tables()
        for i, table in enumerate(names, 1):
            if progress:
                progress(f"[{i}/{len(names)}] {table}")
            run.inputs[table] = lake.table_version(table)
            compaction = lake.optimize(table)
            files_before, bytes_before = storage.data_files(lake.path(table))
            lake.vacuum(table, hours)
            files_after, bytes_after = storage.data_files(lake.path(table))
            version = lake.table_version(table)
            run.outputs[table] = version
            done.append(TableUpkeep(table, compaction["files_removed"], compaction["files_added"],
                                    files_before - files_after, bytes_before - bytes_after, version))
        run.message = (f"{len(done)} tables: {sum(t.files_compacted for t in done):,} small files compacted, "
                       f"{sum(t.files_deleted for t in done):,} unreferenced files "
                       f"({sum(t.bytes_deleted for t in done) / 1e6:,.1f} MB) vacuumed, retention {hours} h")
        run.result = done
    return run
