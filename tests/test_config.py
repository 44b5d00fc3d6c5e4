from __future__ import annotations

import pytest

from lakemine.core.config import load_config
from lakemine.core.errors import ConfigError


def test_defaults_load_with_the_documented_values():
    cfg = load_config(env={})
    assert cfg.lake == "./lake"
    assert cfg.spark.master == "local[*]"
    assert cfg.spark.delta_jars == "local"
    assert cfg.clean.outlier_policy == "quarantine"
    assert cfg.clean.date_formats[0] == "M/d/yyyy H:mm"
    assert cfg.features.horizon_days == 90
    assert cfg.train.batch_size == 4096 and cfg.kmeans.k_range == (2, 10) and cfg.fpgrowth.max_length is None
    assert cfg.run.k_range == (2, 8) and cfg.generate.dirty_rate == 0.0


def test_stage_parameters_and_cli_help_come_from_the_config(tmp_path, capsys):
    """One source of defaults: a config file changes what a stage runs with, a command-line
    option overrides it through the same checks, and --help quotes defaults.yaml."""
    from lakemine.cli import main
    from lakemine.mining.fpgrowth import MiningParams
    from lakemine.mining.kmeans import KMeansParams

    path = tmp_path / "c.yaml"
    path.write_text("fpgrowth:\n  min_support: 0.05\n  max_length: 3\nkmeans:\n  k_range: [3, 5]\n")
    cfg = load_config(str(path), env={})
    p = MiningParams.from_config(cfg, min_confidence=0.7)
    assert (p.min_support, p.min_confidence, p.max_length, p.engine, p.as_of) == (0.05, 0.7, 3, "pfp", None)
    assert KMeansParams.from_config(cfg).candidates() == [3, 4, 5]
    assert KMeansParams.from_config(cfg, k=4).candidates() == [4]
    with pytest.raises(ConfigError, match=r"^--min-support 1.5: must be in \(0, 1\]$"):
        MiningParams.from_config(cfg, min_support=1.5)
    with pytest.raises(SystemExit):
        main(["fpgrowth", "--help"])
    assert "minimum support, a fraction of baskets (default from config: 0.01)" in " ".join(capsys.readouterr().out.split())


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


@pytest.mark.parametrize("argv, message", [
    (["fpgrowth", "--min-support", "2"], "--min-support 2.0: must be in (0, 1]"),
    (["generate", "--out", "x", "--dirty-rate", "0.5"], "--dirty-rate 0.5: must be between 0 and 0.1"),
    (["maintain", "--retention-hours", "-1"], "--retention-hours -1: must be >= 0"),
    (["train", "--workers", "0"], "--workers 0: must be > 0"),
])
def test_command_line_values_are_checked_by_the_config_rules_before_spark_starts(argv, message, tmp_path, capsys):
    from lakemine.cli import main

    assert main([*argv, "--lake", str(tmp_path / "lake")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()
