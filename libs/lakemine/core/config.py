"""Typed configuration: packaged defaults, then a user file, then LAKEMINE_* environment variables.

`load_config(path, env)` returns a frozen `Config`. Every value is validated at load; a bad
value raises `ConfigError` naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

import yaml

from lakemine.core.errors import ConfigError
from lakemine.core.sources import SourceProfile, parse_profiles

ENV_PREFIX = "LAKEMINE_"

# The sections declare names and types only: every value, default included, comes from
# defaults.yaml (then the user's file, then the environment), through one validation path
# (`_build`), which command-line overrides take too (`StageParams.from_config`).


def _section(name: str, spec: str) -> type:
    """A frozen dataclass of typed fields from "field: type; field: type; ..." (types: str,
    int, float, bool, dict, tuple[str, ...], tuple[int, ...], and any of them | None)."""
    kinds = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "tuple": tuple, "None": None}
    fields = []
    for item in spec.split(";"):
        field, kind = (s.strip() for s in item.split(":", 1))
        fields.append((field, eval(kind, {"__builtins__": {}}, kinds)))  # noqa: S307 - a literal of this module
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__module__ = __name__  # so pickling (Spark, Horovod) finds it here
    return cls


SparkConfig = _section("SparkConfig", "master: str; app_name: str; shuffle_partitions: int; driver_memory: str; "
                       "ui: bool; log_level: str; delta_jars: str; jars_dir: str | None; delta_packages: str; java_options: str; "
                       "conf: dict")
GenerateConfig = _section("GenerateConfig", "customers: int; days: int; seed: int; dirty_rate: float; format: str; "
                          "files: int | None; population: str")
IngestConfig = _section("IngestConfig", "suffixes: tuple[str, ...]; xlsx_max_mb: int")
CleanConfig = _section("CleanConfig", "date_formats: tuple[str, ...]; missing_customer: str; outlier_policy: str; "
                       "max_unit_price: float; max_quantity: int")
FeaturesConfig = _section("FeaturesConfig", "horizon_days: int; training_snapshots: int; snapshot_spacing_days: int; "
                          "top_categories: int; window_days: int; service_codes: tuple[str, ...]; service_pattern: str")
FpgrowthConfig = _section("FpgrowthConfig", "min_support: float; min_confidence: float; window_days: int; "
                          "max_itemsets: int; max_length: int | None; engine: str; groups: int | None")
KmeansConfig = _section("KmeansConfig", "k: int | None; k_range: tuple[int, ...]; seed: int; n_init: int; "
                        "max_iter: int; tol: float; sample_size: int; columns: tuple[str, ...]")
TrainConfig = _section("TrainConfig", "backend: str; workers: int; epochs: int; batch_size: int; learning_rate: float; "
                       "warmup_epochs: int; patience: int; cache_rows: int; hidden: tuple[int, ...]; dropout: float; "
                       "batch_norm: bool; activation: str; weight_decay: float; val_fraction: float; seed: int; "
                       "gbt_trees: int; gbt_depth: int; params: str")
TuneConfig = _section("TuneConfig", "trials: int; seed: int; epochs: int; depths: tuple[int, ...]; widths: tuple[int, ...]; "
                      "activations: tuple[str, ...]; dropouts: tuple[float, ...]; learning_rate: tuple[float, ...]; "
                      "weight_decay: tuple[float, ...]")
ForecastConfig = _section("ForecastConfig", "volume_share: float; max_items: int; min_weeks: int; window_weeks: int; "
                          "horizon_weeks: int; backtest_weeks: int; season_weeks: int; interval: float")
RecommendConfig = _section("RecommendConfig", "top_n: int; history_baskets: int; regular_baskets: int; evaluate: bool")
ScoreConfig = _section("ScoreConfig", "drift_bins: int; drift_warn_psi: float")
MaintainConfig = _section("MaintainConfig", "retention_hours: int")
PrivacyConfig = _section("PrivacyConfig", "pseudonymize: bool; key_env: str; key_file: str | None")
RunConfig = _section("RunConfig", "dirty_rate: float; k_range: tuple[int, ...]")
OrchestrationConfig = _section("OrchestrationConfig", "input: str; source: str | None; conn_id: str; retries: int; retry_delay_minutes: int; "
                               "max_retry_delay_minutes: int; task_timeout_minutes: int; train_weekday: int; "
                               "spark_conf: dict; jobs_dir: str | None; dist_dir: str | None")


@dataclass(frozen=True)
class Config:
    lake: str
    spark: SparkConfig
    generate: GenerateConfig
    ingest: IngestConfig
    clean: CleanConfig
    features: FeaturesConfig
    fpgrowth: FpgrowthConfig
    kmeans: KmeansConfig
    recommend: RecommendConfig
    forecast: ForecastConfig
    train: TrainConfig
    tune: TuneConfig
    score: ScoreConfig
    maintain: MaintainConfig
    privacy: PrivacyConfig
    run: RunConfig
    orchestration: OrchestrationConfig
    # source profiles by name: the built-in UCI layouts plus the user's
    sources: dict[str, SourceProfile] = dataclasses.field(default_factory=dict)

    def with_lake(self, lake: str | None) -> "Config":
        return self if lake is None else dataclasses.replace(self, lake=lake)


_CHOICES: dict[str, tuple[str, ...]] = {
    "spark.delta_jars": ("local", "packages"),
    "spark.log_level": ("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"),
    "generate.format": ("csv", "parquet"),
    "generate.population": ("growing", "stationary"),
    "clean.missing_customer": ("quarantine", "keep"),
    "clean.outlier_policy": ("quarantine", "cap"),
    "fpgrowth.engine": ("pfp", "mllib"),
    "train.backend": ("horovod", "torch"),
    "train.activation": ("relu", "leaky_relu", "gelu", "tanh"),
    "train.params": ("config", "best"),
}
_POSITIVE = {
    "spark.shuffle_partitions",
    "generate.customers", "generate.days", "generate.files", "features.window_days",
    "clean.max_unit_price",
    "ingest.xlsx_max_mb",
    "clean.max_quantity",
    "features.horizon_days",
    "features.snapshot_spacing_days",
    "features.top_categories",
    "fpgrowth.max_itemsets", "fpgrowth.max_length", "fpgrowth.groups",
    "kmeans.n_init", "kmeans.max_iter", "kmeans.tol", "kmeans.sample_size",
    "orchestration.retry_delay_minutes",
    "orchestration.max_retry_delay_minutes",
    "orchestration.task_timeout_minutes",
    "train.workers",
    "train.epochs",
    "train.batch_size",
    "train.learning_rate",
    "train.patience",
    "recommend.top_n", "recommend.history_baskets", "recommend.regular_baskets",
    "forecast.max_items", "forecast.min_weeks", "forecast.horizon_weeks", "forecast.backtest_weeks",
    "forecast.season_weeks",
    "train.gbt_depth",
    "tune.trials", "tune.epochs",
    "score.drift_bins",
    "score.drift_warn_psi",
}
_NON_NEGATIVE = {
    "maintain.retention_hours", "train.warmup_epochs", "train.dropout", "features.training_snapshots",
    "orchestration.retries", "orchestration.train_weekday", "train.cache_rows", "fpgrowth.window_days",
    "train.gbt_trees", "forecast.window_weeks", "train.weight_decay",
}
# dotted key -> (low, high, low inclusive, high inclusive, how to say it)
_RANGES: dict[str, tuple[float, float, bool, bool, str]] = {
    "train.val_fraction": (0, 1, True, False, "in [0, 1)"),
    "train.dropout": (0, 1, True, False, "in [0, 1)"),
    "train.learning_rate": (0, 1, False, True, "in (0, 1]"),
    "generate.dirty_rate": (0, 0.1, True, True, "between 0 and 0.1 (a rate per defect type)"),
    "run.dirty_rate": (0, 0.1, True, True, "between 0 and 0.1 (a rate per defect type)"),
    "fpgrowth.min_support": (0, 1, False, True, "in (0, 1]"),
    "fpgrowth.min_confidence": (0, 1, True, True, "in [0, 1]"),
    "forecast.volume_share": (0, 1, False, True, "in (0, 1]"),
    "forecast.interval": (0, 1, False, False, "in (0, 1)"),
    "orchestration.train_weekday": (0, 6, True, True, "0 (Monday) to 6 (Sunday)"),
}
_K_RANGES = {"kmeans.k_range", "run.k_range"}
_SECTIONS: dict[str, type] = {
    "spark": SparkConfig,
    "generate": GenerateConfig,
    "ingest": IngestConfig,
    "clean": CleanConfig,
    "features": FeaturesConfig,
    "fpgrowth": FpgrowthConfig,
    "kmeans": KmeansConfig,
    "recommend": RecommendConfig,
    "forecast": ForecastConfig,
    "train": TrainConfig,
    "tune": TuneConfig,
    "score": ScoreConfig,
    "maintain": MaintainConfig,
    "privacy": PrivacyConfig,
    "run": RunConfig,
    "orchestration": OrchestrationConfig,
}


def _defaults() -> dict:
    text = resources.files("lakemine.core").joinpath("defaults.yaml").read_text(encoding="utf-8")
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
        if key not in base and where != "sources.":
            allowed = ", ".join(sorted(base))
            raise ConfigError(f"config key '{dotted}' is unknown; allowed here: {allowed}")
        if key in base and isinstance(base[key], dict) and key not in ("conf", "spark_conf", "columns"):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a mapping")
            merged[key] = _merge(base[key], value, dotted + ".")
        else:
            merged[key] = value
    return merged


def _said(dotted: str, value: Any, option: bool) -> str:
    """How an error names a value: the config key, or the command-line option that gave it."""
    if option:
        return f"--{dotted.split('.', 1)[1].replace('_', '-')} {value}:"
    return f"config key '{dotted}' has value {value!r};"


def _coerce(dotted: str, value: Any, kind: Any, said: str) -> Any:
    """`value` as the annotated type `kind` (str, int, float, bool, dict, tuple[str | int | float, ...],
    or any of them | None)."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
    elif value is None:
        raise ConfigError(f"config key '{dotted}' is empty; expected {getattr(kind, '__name__', kind)}")
    origin = typing.get_origin(kind) or kind
    try:
        if origin is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin is tuple:
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError
            if typing.get_args(kind)[0] is float:
                if any(isinstance(v, bool) for v in value):
                    raise ValueError
                return tuple(float(v) for v in value)
            if typing.get_args(kind)[0] is int:
                if any(isinstance(v, bool) or int(v) != v or int(v) <= 0 for v in value):
                    raise ValueError
                return tuple(int(v) for v in value)
            return tuple(str(v) for v in value)
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): str(v) for k, v in value.items()}
        return str(value)
    except (TypeError, ValueError):
        name = getattr(origin, "__name__", str(kind))
        raise ConfigError(f"{said} expected {name}") from None


def _check(dotted: str, value: Any, said: str) -> None:
    """The value rules of one key (choices, signs, ranges); ConfigError saying `said` first."""
    if value is None:
        return
    if dotted in _CHOICES and value not in _CHOICES[dotted]:
        allowed = ", ".join(_CHOICES[dotted])
        raise ConfigError(f"{said} allowed: {allowed}")
    if dotted in _POSITIVE and not value > 0:
        raise ConfigError(f"{said} must be > 0")
    if dotted in _NON_NEGATIVE and value < 0:
        raise ConfigError(f"{said} must be >= 0")
    if dotted in _RANGES:
        low, high, low_in, high_in, say = _RANGES[dotted]
        if not ((low <= value) if low_in else (low < value)) or not ((value <= high) if high_in else (value < high)):
            raise ConfigError(f"{said} must be {say}")
    if dotted in _K_RANGES and not (len(value) == 2 and 2 <= value[0] <= value[1]):
        raise ConfigError(f"{said} needs [low, high] with 2 <= low <= high")
    if dotted.startswith("tune."):
        _check_search_space(dotted, value, said)
    if dotted == "kmeans.k" and value < 2:
        raise ConfigError(f"{said} must be at least 2")
    if dotted == "features.service_pattern" and value:
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"{said} not a regular expression ({exc})") from None
    if dotted == "clean.date_formats" and not value:
        raise ConfigError("config key 'clean.date_formats' is empty; give at least one pattern")


def _check_search_space(dotted: str, value: Any, said: str) -> None:
    """The tune section's lists: none empty, each value allowed, ranges as [low, high]."""
    if isinstance(value, tuple) and not value:
        raise ConfigError(f"{said} is empty; give at least one value")
    allowed = _CHOICES["train.activation"]
    if dotted == "tune.activations" and not set(value) <= set(allowed):
        raise ConfigError(f"{said} allowed: {', '.join(allowed)}")
    if dotted == "tune.dropouts" and not all(0 <= v < 1 for v in value):
        raise ConfigError(f"{said} each must be in [0, 1)")
    if dotted in ("tune.learning_rate", "tune.weight_decay") and not (
            len(value) == 2 and 0 < value[0] <= value[1] and (dotted != "tune.learning_rate" or value[1] <= 1)):
        raise ConfigError(f"{said} needs [low, high] with 0 < low <= high" + (" <= 1" if dotted == "tune.learning_rate" else "")
                          + " (drawn log-uniformly between)")


def _build(section_cls: type, values: dict, section: str, options: frozenset[str] = frozenset()):
    """The section dataclass from `values`, every key typed and checked; a key the section
    has but `values` lacks is an error (defaults.yaml must name every key). Errors about the
    keys in `options` name the command-line option that gave the value."""
    hints = typing.get_type_hints(section_cls)
    kwargs = {}
    for f in dataclasses.fields(section_cls):
        dotted = f"{section}.{f.name}"
        if f.name not in values:
            raise ConfigError(f"config key '{dotted}' has no value (the packaged defaults.yaml must set it)")
        said = _said(dotted, values[f.name], f.name in options)
        value = _coerce(dotted, values[f.name], hints[f.name], said)
        _check(dotted, value, said)
        kwargs[f.name] = value
    return section_cls(**kwargs)


def source_defaults() -> dict:
    """The packaged `source_defaults` section: what a source profile leaves out."""
    return dict(_defaults()["source_defaults"])


def packaged_defaults() -> Config:
    """The configuration of defaults.yaml alone (for help texts: what an option falls back to)."""
    return load_config(None, env={})


class StageParams:
    """Mixin for a stage's parameters: a config section's fields (`SECTION`) plus the run's own
    arguments (as_of, input...). `from_config` fills the section's fields from the config and
    takes command-line overrides through the same validation as the config file."""

    SECTION: typing.ClassVar[str]

    @classmethod
    def from_config(cls, cfg: Config | None = None, **overrides):
        """The parameters of `cfg` (None: the packaged defaults) with `overrides` (None = keep)."""
        section = getattr(cfg if cfg is not None else packaged_defaults(), cls.SECTION)
        values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
        given = {k: v for k, v in overrides.items() if v is not None}
        options = frozenset(k for k in given if k in values)
        checked = _build(type(section), {**values, **{k: given[k] for k in options}}, cls.SECTION, options)
        merged = {f.name: getattr(checked, f.name) for f in dataclasses.fields(checked)}
        return cls(**merged, **{k: v for k, v in given.items() if k not in values})


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults < file at `path` < environment (`os.environ` when `env` is None)."""
    data = _defaults()
    if path:
        data = _merge(data, _read_file(path))
    data = _merge(data, _env_overrides(os.environ if env is None else env))
    sections = {name: _build(cls, data.get(name) or {}, name) for name, cls in _SECTIONS.items()}
    profiles = parse_profiles(data.get("sources"), data.get("source_defaults") or {})
    return Config(lake=str(data["lake"]), **sections, sources=profiles)
