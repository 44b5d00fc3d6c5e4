"""Churn training: the training set, Horovod on Spark (2 real processes, Gloo), TorchDistributor,
checkpoint resumption, and the model folder."""

from __future__ import annotations

import hashlib
import io
import json
import math
from datetime import date

import pyspark.sql.functions as F
import pytest
import torch

from conftest import GBT_TREES, copy_lake, run_features
from lakemine.core import storage
from lakemine.core.errors import StageError
from lakemine.io import schemas
from lakemine.learning import train
from lakemine.learning.model import ChurnMLP
from lakemine.learning.train import TrainParams, effective_batch_size, lr_scale
from lakemine.learning.trainset import input_columns, latest_segment_model, training_frame
from lakemine.learning.worker import auc_from_histogram, auc_histogram, in_memory_passes, logit_offset, roc_auc
from lakemine.stages.features import Z_FEATURES


def test_roc_auc_matches_hand_counted_pairs():
    # positives 0.9, 0.4; negatives 0.5, 0.1, 0.4: pairs won 3 + (1 + 0.5 tie) = 4.5 of 6
    assert roc_auc([1, 1, 0, 0, 0], [0.9, 0.4, 0.5, 0.1, 0.4]) == pytest.approx(4.5 / 6)


def test_the_histogram_auc_equals_the_exact_one_to_the_bin_width():
    """Validation AUC from fixed-size histograms summed over ranks (no gathered predictions):
    exact when ties share a bin and other scores do not, within 1e-4 on 20,000 scores, and the
    same whether the rows sit on one rank or are split over three."""
    import numpy as np

    logit = lambda p: np.log(np.asarray(p) / (1 - np.asarray(p)))  # noqa: E731
    h = auc_histogram(logit([0.9, 0.4, 0.5, 0.1, 0.4]), [1, 1, 0, 0, 0])
    half = len(h) // 2
    assert auc_from_histogram(h[half:], h[:half]) == pytest.approx(4.5 / 6, abs=1e-12)
    rng = np.random.default_rng(0)
    y = rng.random(20_000) < 0.3
    z = rng.normal(0, 1.5, 20_000) + 0.8 * y
    whole = auc_histogram(z, y)
    split = sum(auc_histogram(z[i::3], y[i::3]) for i in range(3))
    assert np.array_equal(whole, split)
    assert abs(auc_from_histogram(whole[half:], whole[:half]) - roc_auc(y, z)) < 1e-4


def test_model_is_a_plain_module_giving_one_logit_per_row():
    net = ChurnMLP(5, (8, 4), dropout=0.0, batch_norm=True)
    assert net(torch.zeros(3, 5)).shape == (3,)
    assert not any("horovod" in type(m).__module__ for m in net.modules())


def test_training_frame_splits_by_time_and_uses_only_complete_labels(learn_lake):
    lake, cfg = learn_lake
    labels = lake.read_table(schemas.GOLD_LABELS)
    features = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES)
    complete = sorted(r["as_of"] for r in labels.where("complete").select("as_of").distinct().collect())
    assert len(complete) == 3  # 150, 120 and 90 days before the end; the end itself is incomplete
    segments = latest_segment_model(lake, cfg.kmeans.columns)
    frame, split = training_frame(features, labels, segments, complete[-1], 0.2, 42)
    assert split.kind == "time"
    assert split.train_dates == [d.isoformat() for d in complete[:-1]]
    assert split.val_dates == [complete[-1].isoformat()]
    by_split = {r["split"]: r for r in frame.groupBy("split").agg(F.min("as_of").alias("lo"), F.max("as_of").alias("hi")).collect()}
    assert by_split["train"]["hi"] < by_split["val"]["lo"] == complete[-1]
    inputs = input_columns(segments)
    assert inputs == list(Z_FEATURES) + [f"segment_{i}" for i in range(segments.k)]
    one_hot = frame.select(sum(F.col(f"segment_{i}") for i in range(segments.k)).alias("s")).distinct().collect()
    assert [r["s"] for r in one_hot] == [1.0]


def test_training_frame_falls_back_to_a_seeded_customer_split(learn_lake):
    lake, cfg = learn_lake
    labels = lake.read_table(schemas.GOLD_LABELS)
    features = lake.read_table(schemas.GOLD_CUSTOMER_FEATURES)
    first = labels.where("complete").agg(F.min("as_of")).first()[0]
    frame, split = training_frame(features, labels, None, first, 0.2, 7)
    again, _ = training_frame(features, labels, None, first, 0.2, 7)
    assert split.kind == "customer"
    rows = {(r["customer_id"], r["split"]) for r in frame.select("customer_id", "split").collect()}
    assert rows == {(r["customer_id"], r["split"]) for r in again.select("customer_id", "split").collect()}
    share = sum(1 for _, s in rows if s == "val") / len(rows)
    assert 0.1 < share < 0.3


def test_training_without_complete_labels_names_what_to_run(learn_lake, tmp_path):
    lake, cfg = copy_lake(*learn_lake, tmp_path / "lake")
    early = date(2000, 1, 1)
    with pytest.raises(StageError, match="no complete labels on or before 2000-01-01"):
        train.run(lake, cfg, TrainParams.from_config(cfg, epochs=1, as_of=early))


@pytest.mark.slow
def test_horovod_ranks_end_identical_and_beat_the_logistic_baseline(trained_lake):
    lake, cfg, run, meta = trained_lake
    assert meta["backend"] == "horovod" and meta["world_size"] == 2
    digests = meta["rank_digests"]
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    assert meta["validation"]["auc"] > meta["baseline"]["auc"]
    # beside logistic regression, gradient-boosted trees on the same split (issue 18)
    logistic, gbt = meta["baselines"]
    assert logistic == meta["baseline"]
    assert gbt["model"] == "gradient-boosted trees (Spark ML)" and (gbt["trees"], gbt["depth"]) == (int(GBT_TREES), 4)
    assert 0.6 < gbt["auc"] <= 1 and 0 < gbt["log_loss"] < 1
    assert meta["inputs"] == {t: lake.table_version(t) for t in meta["inputs"]}
    assert len(meta["history"]) == meta["epochs"]["run"] and 1 <= meta["epochs"]["best"] <= meta["epochs"]["run"]
    best = meta["history"][meta["epochs"]["best"] - 1]
    assert best["val_auc"] == max(h["val_auc"] for h in meta["history"]) == meta["validation"]["auc"]
    rows = meta["rows"]
    # class weighting by the training split's odds, and an offset that takes them back
    w = meta["calibration"]["pos_weight"]
    assert w == pytest.approx((rows["train"] - rows["train_churned"]) / rows["train_churned"])
    for p in (0.05, 0.5, 0.9):
        assert _sigmoid(math.log(w * p / (1 - p)) + meta["calibration"]["logit_offset"]) == pytest.approx(p)
    # 64 per rank, or the largest batch (not below 16) that still gives 2 ranks 20 steps each
    batch = meta["batch_size"]["used"]
    assert meta["batch_size"]["configured"] == 64 and 16 <= batch <= 64
    assert batch == 16 or 2 * 20 * batch <= rows["train"]
    assert batch == 64 or 2 * 20 * (batch + 1) > rows["train"]
    # every rank read its own shard: the epoch's samples add up to the steps of both ranks
    assert all(h["samples"] == 2 * batch * -(-meta["rows"]["train"] // (2 * batch)) for h in meta["history"])
    folder = lake.model_path("churn", meta["model_version"])
    state = torch.load(io.BytesIO(storage.read_bytes(f"{folder}/state_dict.pt")), weights_only=True)
    arch = meta["architecture"]
    net = ChurnMLP(arch["n_inputs"], tuple(arch["hidden"]), arch["dropout"], arch["batch_norm"])
    net.load_state_dict(state)
    assert json.loads(storage.read_bytes(f"{folder}/metadata.json")) == meta
    runs = lake.read_table(schemas.OPS_RUNS).where("stage = 'train'").collect()
    assert [(r["status"], r["rows_in"]) for r in runs] == [("succeeded", meta["rows"]["train"] + meta["rows"]["val"])]


@pytest.mark.slow
def test_rerun_with_more_epochs_resumes_from_the_checkpoint(learn_lake, tmp_path):
    lake, cfg = copy_lake(*learn_lake, tmp_path / "lake")
    params = dict(backend="horovod", workers=2, patience=100)
    first = train.run(lake, cfg, TrainParams.from_config(cfg, epochs=2, **params)).result
    first_dir = lake.model_path("churn", first["model_version"])
    first_files = {name: storage.read_bytes(f"{first_dir}/{name}") for name in ("state_dict.pt", "metadata.json")}
    second = train.run(lake, cfg, TrainParams.from_config(cfg, epochs=4, **params)).result
    # more epochs, other weights: a new version (it used to rewrite the first one's weights, issue 16)
    assert second["model_version"] != first["model_version"] and second["lineage"] == first["lineage"]
    assert second["resumed_from"] == first["model_version"]
    assert {name: storage.read_bytes(f"{first_dir}/{name}") for name in first_files} == first_files
    assert hashlib.sha256(first_files["state_dict.pt"]).hexdigest() == first["weights_sha256"]
    assert len(second["history"]) == 4
    assert second["history"][:2] == first["history"]  # epochs 1-2 were not trained again
    # the features of one training date rebuilt from the same data: new Delta versions, same rows
    labels_before = lake.table_version(schemas.GOLD_LABELS)
    run_features(lake, cfg, date.fromisoformat(first["split"]["train_dates"][0]))
    assert lake.table_version(schemas.GOLD_LABELS) > labels_before
    third = train.run(lake, cfg, TrainParams.from_config(cfg, epochs=4, **params)).result
    assert third["model_version"] == second["model_version"]  # the version follows the rows, not the versions
    assert third["history"] == second["history"]  # finished: a re-run trains nothing
    assert third["inputs"][schemas.GOLD_LABELS] == lake.table_version(schemas.GOLD_LABELS)


@pytest.mark.slow
def test_torch_distributor_reaches_an_auc_comparable_to_horovod(learn_lake, trained_lake, tmp_path):
    lake, cfg = copy_lake(*learn_lake, tmp_path / "lake")
    # cache_rows=0: this run streams its shards from Parquet every epoch, the Horovod one keeps them in memory
    meta = train.run(lake, cfg, TrainParams.from_config(cfg, backend="torch", workers=2, epochs=10, batch_size=64,
                                                        patience=3, cache_rows=0)).result
    horovod = trained_lake[3]
    assert meta["backend"] == "torch" and meta["world_size"] == 2
    assert meta["model_version"] != horovod["model_version"]
    assert meta["rows"] == horovod["rows"]
    assert abs(meta["validation"]["auc"] - horovod["validation"]["auc"]) < 0.03


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_small_training_sets_get_smaller_batches_not_fewer_steps():
    assert effective_batch_size(256, 1_000_000, 2) == 256
    assert effective_batch_size(4096, 1_000, 2) == 25         # 1,000 rows / (2 ranks x 20 steps)
    assert effective_batch_size(4096, 1_000, 1) == 50
    assert effective_batch_size(256, 785, 2) == 19            # 20 steps per epoch per rank
    assert effective_batch_size(64, 2_560, 2) == 64           # exactly 20 steps of the configured batch
    assert effective_batch_size(64, 100_000, 2) == 64
    assert effective_batch_size(256, 680, 2) == 17
    assert effective_batch_size(256, 640, 2) == 16            # 20 steps of 16: the floor exactly
    assert effective_batch_size(256, 639, 2) == 16            # never below 16 ...
    assert effective_batch_size(256, 100, 2) == 16
    assert effective_batch_size(256, 0, 2) == 16
    assert effective_batch_size(8, 100, 2) == 8               # ... nor above what was asked
    assert effective_batch_size(8, 1_000_000, 2) == 8
    # the learning rate scales with the rows of a step over one process's, not with the ranks alone
    assert lr_scale(4096, 1_000_000, 2) == 2                  # each rank takes the configured batch
    assert lr_scale(4096, 1_000, 2) == 1                      # 2 x 25 rows = one process's 50
    assert lr_scale(64, 2_560, 2) == 2
    assert lr_scale(256, 100, 2) == 2                         # the floor: 2 x 16 rows against 16
    assert lr_scale(4096, 1_000, 1) == 1


def test_logit_offset_turns_weighted_odds_back_into_probabilities():
    # class weighting with w = 3 learns odds x3; the offset takes them back
    assert logit_offset(3.0) == pytest.approx(-1.0986, abs=1e-4)
    assert logit_offset(1.0) == 0.0
    for w in (0.25, 1.0, 3.0, 12.5):
        for p in (0.01, 0.2, 0.5, 0.8, 0.99):
            weighted_logit = math.log(w * p / (1 - p))        # what training with pos_weight w converges to
            assert _sigmoid(weighted_logit + logit_offset(w)) == pytest.approx(p, rel=1e-9)


def test_in_memory_passes_cover_every_row_once_per_pass_in_a_seeded_order():
    import torch

    x = torch.arange(10, dtype=torch.float32).reshape(10, 1)
    y = torch.arange(10, dtype=torch.float32)
    batches = in_memory_passes(x, y, 3, seed=7)
    first = [next(batches) for _ in range(3)]           # 10 rows, batch 3: 3 full batches, 1 row dropped
    rows = torch.cat([b[1] for b in first])
    assert len(set(rows.tolist())) == 9
    assert all(torch.equal(bx[:, 0], by) for bx, by in first)     # x and y stay paired
    second = torch.cat([next(batches)[1] for _ in range(3)])
    assert not torch.equal(rows, second)                # a new order each pass
    again = in_memory_passes(x, y, 3, seed=7)
    assert torch.equal(torch.cat([next(again)[1] for _ in range(3)]), rows)
    assert next(in_memory_passes(x[:2], y[:2], 3, seed=1))[1].shape == (2,)   # a shard smaller than a batch

