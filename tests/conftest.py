"""One SparkSession (local[2], UI off, 2 shuffle partitions, Delta on) for the whole run, and a
fresh lake folder per test."""

from __future__ import annotations

import os

os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
from pathlib import Path

import pytest

from lakemine.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cfg() -> Config:
    env = {
        "LAKEMINE_SPARK__MASTER": "local[2]",
        "LAKEMINE_SPARK__SHUFFLE_PARTITIONS": "2",
        "LAKEMINE_SPARK__DRIVER_MEMORY": "2g",
    }
    return load_config(env=env)


@pytest.fixture(scope="session")
def spark(cfg):
    from lakemine.spark import session

    s = session(cfg)
    yield s
    s.stop()


@pytest.fixture
def lake(spark, tmp_path):
    from lakemine.lake import Lake

    return Lake.at(spark, str(tmp_path / "lake"))


@pytest.fixture
def lake_cfg(cfg, lake) -> Config:
    return cfg.with_lake(lake.root)


def write_lines(path: Path, lines: list[str], bom: bool = False, newline: str = "\n") -> Path:
    """Write a small raw CSV file exactly as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = newline.join(lines) + newline
    raw = data.encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
    return path


@pytest.fixture
def venv_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def gold_lake(spark, cfg, tmp_path_factory):
    """Generated data (400 customers, a year) through ingest, clean and features, once per run.

    Returns (lake, cfg, truth DataFrame of planted groups, manifest). Tests must not write to it.
    """
    from lakemine.clean import clean
    from lakemine.features import run_features
    from lakemine.generate import GenerateParams, generate
    from lakemine.ingest import ingest
    from lakemine.lake import Lake

    root = tmp_path_factory.mktemp("gold")
    manifest = generate(spark, str(root / "raw"), GenerateParams(customers=400, days=365, seed=3))
    lake = Lake.at(spark, str(root / "lake"))
    lake_cfg = cfg.with_lake(lake.root)
    ingest(lake, lake_cfg, str(root / "raw"))
    clean(lake, lake_cfg)
    run_features(lake, lake_cfg)
    truth = spark.read.parquet(str(root / "raw" / "_truth" / "customers"))
    return lake, lake_cfg, truth, manifest
