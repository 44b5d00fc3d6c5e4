from __future__ import annotations

import pytest

from lakemine.config import TrainConfig, load_config
from lakemine.errors import ConfigError


def test_defaults_load_with_the_documented_values():
    cfg = load_config(env={})
    assert cfg.lake == "./lake"
    assert cfg.spark.master == "local[*]"
    assert cfg.spark.delta_jars == "local"
    assert cfg.clean.outlier_policy == "quarantine"
    assert cfg.clean.date_formats[0] == "M/d/yyyy H:mm"
    assert cfg.features.horizon_days == 90
    assert cfg.train == TrainConfig() and cfg.train.batch_size == 4096  # defaults.yaml and the code agree


def test_file_then_environment_override_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lake: /data/lake\nclean:\n  outlier_policy: cap\n  max_unit_price: 500\n")
    cfg = load_config(str(path), env={"LAKEMINE_CLEAN__MAX_UNIT_PRICE": "750", "LAKEMINE_SPARK__UI": "true"})
    assert (cfg.lake, cfg.clean.outlier_policy, cfg.clean.max_unit_price, cfg.spark.ui) == (
        "/data/lake", "cap", 750.0, True)


def test_bad_choice_names_the_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"'clean.outlier_policy' has value 'drop'; allowed: quarantine, cap"):
        load_config(env={"LAKEMINE_CLEAN__OUTLIER_POLICY": "drop"})


def test_unknown_key_is_refused_with_the_allowed_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("clean:\n  outlier_polcy: cap\n")
    with pytest.raises(ConfigError, match=r"'clean.outlier_polcy' is unknown; allowed here: .*outlier_policy"):
        load_config(str(path), env={})


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LAKEMINE_SPARK__SHUFFLE_PARTITIONS": "0"}, r"'spark.shuffle_partitions' .* must be > 0"),
        ({"LAKEMINE_SPARK__SHUFFLE_PARTITIONS": "many"}, r"'spark.shuffle_partitions' .* expected int"),
        ({"LAKEMINE_CLEAN__DATE_FORMATS": "[]"}, r"'clean.date_formats' is empty"),
    ],
)
def test_bad_values_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_missing_config_file_is_a_usage_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"), env={})
