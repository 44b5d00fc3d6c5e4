"""lakemine tune: the seeded search, its trials as Spark tasks, ops/tune_trials, train --params best."""

from __future__ import annotations

import dataclasses
import json
from datetime import date

import pytest
import torch

from conftest import copy_lake
from lakemine.cli import main
from lakemine.core import storage
from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.learning import tune
from lakemine.learning.model import ChurnMLP


def test_trials_are_drawn_from_the_space_by_the_seed(cfg):
    p = tune.TuneParams.from_config(cfg, trials=40, seed=3)
    trials = tune.trial_settings(p, cfg.train)
    assert trials == tune.trial_settings(p, cfg.train)
    assert trials[1:] != tune.trial_settings(dataclasses.replace(p, seed=4), cfg.train)[1:]
    t = cfg.train
    assert trials[0] == {"hidden": list(t.hidden), "activation": t.activation, "dropout": t.dropout,
                         "batch_norm": t.batch_norm, "learning_rate": t.learning_rate, "weight_decay": t.weight_decay}
    assert len(trials) == 41
    for s in trials[1:]:
        assert len(s["hidden"]) in p.depths and s["hidden"][0] in p.widths
        assert s["hidden"][1:] == [max(tune.MIN_WIDTH, s["hidden"][0] >> i) for i in range(1, len(s["hidden"]))]
        assert s["activation"] in p.activations and s["dropout"] in p.dropouts
        assert p.learning_rate[0] * 0.999 <= s["learning_rate"] <= p.learning_rate[1] * 1.001
        assert p.weight_decay[0] * 0.999 <= s["weight_decay"] <= p.weight_decay[1] * 1.001
    # forty draws reach every activation, both batch-norm settings and every depth
    assert {s["activation"] for s in trials[1:]} == set(p.activations)
    assert {s["batch_norm"] for s in trials[1:]} == {False, True}
    assert {len(s["hidden"]) for s in trials[1:]} == set(p.depths)


def test_the_network_takes_the_searched_activation():
    for name, cls in (("relu", torch.nn.ReLU), ("leaky_relu", torch.nn.LeakyReLU), ("gelu", torch.nn.GELU),
                      ("tanh", torch.nn.Tanh)):
        net = ChurnMLP(5, (8, 4), 0.0, True, name)
        assert sum(isinstance(m, cls) for m in net.modules()) == 2
        assert net(torch.zeros(3, 5)).shape == (3,)
    with pytest.raises(ValueError, match="allowed"):
        ChurnMLP(5, (8,), activation="swish")


def test_the_search_is_deterministic_and_train_takes_its_winner(learn_lake, tmp_path, capsys):
    lake, cfg = copy_lake(*learn_lake, tmp_path / "lake")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, gbt_trees=5, patience=2))
    with pytest.raises(StageError, match="run `lakemine tune` first"):
        tune.best_trial(lake, date(2030, 1, 1))

    p = tune.TuneParams.from_config(cfg, trials=3, epochs=4, seed=5)
    first = tune.run(lake, cfg, p)
    table = [r.asDict() for r in lake.read_table(schemas.OPS_TUNE_TRIALS).orderBy("model", "trial").collect()]
    trials = [r for r in table if r["model"] == tune.MLP]
    assert [r["trial"] for r in trials] == [0, 1, 2, 3]
    assert {r["model"] for r in table} - {tune.MLP} == {"logistic regression (Spark ML)", "gradient-boosted trees (Spark ML)"}
    settings = tune.trial_settings(p, cfg.train)
    for r in trials:
        assert r["error"] is None and 0.5 < r["val_auc"] <= 1 and r["val_log_loss"] > 0, r
        assert json.loads(r["params"]) == settings[r["trial"]]
        assert 1 <= r["best_epoch"] <= r["epochs_run"] <= 4
    assert {r["run_id"] for r in table} == {first.run_id} and {r["as_of"] for r in table} == {first.as_of}
    # the copy of the training data is gone with the search
    assert not storage.exists(f"{lake.root}/models/tune/{first.run_id}")

    # the same search again keeps the rows; on another copy of the lake it trains the same trials
    # to the same metrics (Spark ML's baselines may differ in the last digits)
    second = tune.run(lake, cfg, p)
    assert (second.run_id, second.status) == (first.run_id, "noop")
    assert [r.asDict() for r in lake.read_table(schemas.OPS_TUNE_TRIALS).orderBy("model", "trial").collect()] == table
    other, _ = copy_lake(*learn_lake, tmp_path / "other")
    third = tune.run(other, cfg, p)
    assert (third.run_id, third.status) == (first.run_id, "succeeded")
    redone = [r.asDict() for r in other.read_table(schemas.OPS_TUNE_TRIALS).orderBy("model", "trial").collect()]
    assert [r for r in redone if r["model"] == tune.MLP] == trials
    for a, b in zip(redone, table):
        assert a["model"] == b["model"] and a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-3)

    # train --params best prepares the winner's network (--write-spec stops before training)
    best = tune.ranked(table)[0]
    spec = tmp_path / "spec.json"
    capsys.readouterr()
    code = main(["train", "--lake", lake.root, "--params", "best", "--write-spec", str(spec)])
    assert code == 0, capsys.readouterr().err
    written = json.loads(spec.read_text())
    winner = json.loads(best["params"])
    for key in tune.SEARCHED:
        assert written[key] == winner[key], key
    # and the training date's search must exist: none on or before an earlier date
    with pytest.raises(StageError, match="no search on or before"):
        tune.best_trial(lake, first.as_of.replace(year=first.as_of.year - 5))

    # `lakemine run`'s learning steps: the search (the same one: a noop), then train with its
    # winner on 2 Horovod workers, then score
    from argparse import Namespace

    import pyspark.sql.functions as F

    from lakemine.cli import Console
    from lakemine.pipeline import Timings, _learn

    latest = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES).agg(F.max("as_of")).first()[0]
    searched = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, trials=3, epochs=4, seed=5))
    learned = _learn(lake, searched, Namespace(epochs=4, workers=2, verbose=False), Console(quiet=True), Timings(), latest,
                     trainable=True)
    assert learned.tuned.startswith("already searched") and learned.scored > 0
    meta = learned.meta
    assert meta["tuned_from"]["trial"] == best["trial"] and meta["tuned_from"]["run_id"] == first.run_id
    assert meta["architecture"]["activation"] == winner["activation"]
    assert meta["architecture"]["hidden"] == winner["hidden"] and meta["params"]["weight_decay"] == winner["weight_decay"]

    # the report's training section shows the search: every trial best first, then the baselines,
    # and which trial the model was trained with
    from test_report import Page

    from lakemine.report import write_report

    text = open(write_report(lake, cfg), encoding="utf-8").read()
    assert f"trained with the settings of trial {best['trial']} (<code>train --params best</code>)" in text
    page = Page(text)
    shown = page.tables["search"][1:]
    assert [row[0] for row in shown] == [str(r["trial"]) for r in tune.ranked(table)] + [
        "gradient-boosted trees (Spark ML)", "logistic regression (Spark ML)"]
    assert page.image_by_alt["validation AUC of every trial of the model search"].startswith("data:image/png;base64,")
