"""Typed configuration: packaged defaults, then a user file, then LAKEMINE_* environment variables.

`load_config(path, env)` returns a frozen `Config`. Every value is validated at load; a bad
value raises `ConfigError` naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Mapping

import yaml

from lakemine.errors import ConfigError

ENV_PREFIX = "LAKEMINE_"


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "lakemine"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    ui: bool = False
    log_level: str = "WARN"
    delta_jars: str = "local"
    jars_dir: str | None = None
    delta_packages: str = "io.delta:delta-spark_2.13:4.0.1"
    conf: dict = field(default_factory=dict)


@dataclass(frozen=True)
class IngestConfig:
    suffixes: tuple = (".csv", ".parquet", ".txt")


@dataclass(frozen=True)
class CleanConfig:
    date_formats: tuple = ()
    missing_customer: str = "quarantine"
    outlier_policy: str = "quarantine"
    max_unit_price: float = 10000.0
    max_quantity: int = 100000


@dataclass(frozen=True)
class FeaturesConfig:
    horizon_days: int = 90
    training_snapshots: int = 2
    snapshot_spacing_days: int = 30


@dataclass(frozen=True)
class TrainConfig:
    backend: str = "horovod"
    workers: int = 2
    epochs: int = 30
    batch_size: int = 4096
    learning_rate: float = 0.001
    warmup_epochs: int = 1
    patience: int = 4
    cache_rows: int = 2_000_000
    hidden: tuple = (64, 32)
    dropout: float = 0.1
    batch_norm: bool = False
    val_fraction: float = 0.2
    seed: int = 42


@dataclass(frozen=True)
class ScoreConfig:
    drift_bins: int = 10
    drift_warn_psi: float = 0.2


@dataclass(frozen=True)
class MaintainConfig:
    retention_hours: int = 168


@dataclass(frozen=True)
class OrchestrationConfig:
    input: str = "./landing"
    conn_id: str = "spark_default"
    retries: int = 2
    retry_delay_minutes: int = 2
    max_retry_delay_minutes: int = 30
    task_timeout_minutes: int = 60
    train_weekday: int = 6
    spark_conf: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    lake: str = "./lake"
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    maintain: MaintainConfig = field(default_factory=MaintainConfig)
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)

    def with_lake(self, lake: str | None) -> "Config":
        return self if lake is None else dataclasses.replace(self, lake=lake)


_CHOICES: dict[str, tuple[str, ...]] = {
    "spark.delta_jars": ("local", "packages"),
    "spark.log_level": ("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"),
    "clean.missing_customer": ("quarantine", "keep"),
    "clean.outlier_policy": ("quarantine", "cap"),
    "train.backend": ("horovod", "torch"),
}
_POSITIVE = {
    "spark.shuffle_partitions",
    "clean.max_unit_price",
    "clean.max_quantity",
    "features.horizon_days",
    "features.snapshot_spacing_days",
    "orchestration.retry_delay_minutes",
    "orchestration.max_retry_delay_minutes",
    "orchestration.task_timeout_minutes",
    "train.workers",
    "train.epochs",
    "train.batch_size",
    "train.learning_rate",
    "train.patience",
    "score.drift_bins",
    "score.drift_warn_psi",
}
_NON_NEGATIVE = {
    "maintain.retention_hours", "train.warmup_epochs", "train.dropout", "features.training_snapshots",
    "orchestration.retries", "orchestration.train_weekday", "train.cache_rows",
}
_FRACTIONS = {"train.val_fraction", "train.dropout"}
_SECTIONS: dict[str, type] = {
    "spark": SparkConfig,
    "ingest": IngestConfig,
    "clean": CleanConfig,
    "features": FeaturesConfig,
    "train": TrainConfig,
    "score": ScoreConfig,
    "maintain": MaintainConfig,
    "orchestration": OrchestrationConfig,
}


def _defaults() -> dict:
    text = resources.files("lakemine").joinpath("defaults.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _read_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return data


def _env_overrides(env: Mapping[str, str]) -> dict:
    """LAKEMINE_LAKE=x and LAKEMINE_SECTION__KEY=value (YAML-parsed, so numbers and lists work)."""
    out: dict = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "JARS_DIR":
            continue
        key = name[len(ENV_PREFIX):].lower()
        value = yaml.safe_load(raw) if raw.strip() else raw
        if "__" in key:
            section, sub = key.split("__", 1)
            out.setdefault(section, {})[sub] = value
        elif key == "lake":
            out["lake"] = raw
    return out


def _merge(base: dict, over: dict, where: str = "") -> dict:
    merged = dict(base)
    for key, value in over.items():
        dotted = f"{where}{key}"
        if key not in base:
            allowed = ", ".join(sorted(base))
            raise ConfigError(f"config key '{dotted}' is unknown; allowed here: {allowed}")
        if isinstance(base[key], dict) and key not in ("conf", "spark_conf"):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a mapping")
            merged[key] = _merge(base[key], value, dotted + ".")
        else:
            merged[key] = value
    return merged


def _coerce(dotted: str, value: Any, default: Any) -> Any:
    if value is None:
        return None
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is tuple:
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError
            if default and all(isinstance(v, int) for v in default):
                if any(isinstance(v, bool) or int(v) != v or int(v) <= 0 for v in value):
                    raise ValueError
                return tuple(int(v) for v in value)
            return tuple(str(v) for v in value)
        if kind is dict:
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): str(v) for k, v in value.items()}
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config key '{dotted}' has value {value!r}; expected {kind.__name__}"
        ) from None


def _build(section_cls: type, values: dict, section: str):
    kwargs = {}
    for f in dataclasses.fields(section_cls):
        dotted = f"{section}.{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is None:
            default = ""
        value = _coerce(dotted, values.get(f.name), default)
        if dotted in _CHOICES and value not in _CHOICES[dotted]:
            allowed = ", ".join(_CHOICES[dotted])
            raise ConfigError(f"config key '{dotted}' has value {value!r}; allowed: {allowed}")
        if dotted in _POSITIVE and not value > 0:
            raise ConfigError(f"config key '{dotted}' has value {value!r}; must be > 0")
        if dotted in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"config key '{dotted}' has value {value!r}; must be >= 0")
        if dotted == "orchestration.train_weekday" and value > 6:
            raise ConfigError(f"config key '{dotted}' has value {value!r}; must be 0 (Monday) to 6 (Sunday)")
        if dotted in _FRACTIONS and not 0 <= value < 1:
            raise ConfigError(f"config key '{dotted}' has value {value!r}; must be in [0, 1)")
        kwargs[f.name] = value
    return section_cls(**kwargs)


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults < file at `path` < environment (`os.environ` when `env` is None)."""
    data = _defaults()
    if path:
        data = _merge(data, _read_file(path))
    data = _merge(data, _env_overrides(os.environ if env is None else env))
    sections = {name: _build(cls, data.get(name) or {}, name) for name, cls in _SECTIONS.items()}
    if not sections["clean"].date_formats:
        raise ConfigError("config key 'clean.date_formats' is empty; give at least one pattern")
    return Config(lake=str(data["lake"]), **sections)
