"""TIM's temporal-encoding analysis (pipeline/tim_temporal.py, Tencent Sec. 3.1): the attention-logit
contributions and behaviour counts against numpy, a planted decay over time intervals and none
over positions read as such, and the files a training run of configs/train_sim_tim.yaml writes."""
import json
import math
import os

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.factory import build_model
from pipeline.tim_temporal import TIMTemporal, spearman, temporal_profile

L, D, NB = 4, 4, 8


def _model():
    feats = [Feature("category", "categorical", "string", "item", {"type": "vocab"}, num_ids=8),
             Feature("hist_cat", "sequence", "string", "sequence",
                     {"type": "sequence_vocab", "max_len": L, "share_vocab_with": "category"}, num_ids=8, width=L),
             Feature("hist_gap", "sequence", "int64", "sequence", {"type": "sequence_float", "max_len": L},
                     width=L, encoded_dtype="float32")]
    tf.keras.utils.set_random_seed(0)
    return build_model(Schema(feats, ["click"]).to_dict(), ["click"], backbone="dnn",
                       backbone_options={"dnn_units": [4]}, embedding_dim=D,
                       field_modules=[{"name": "tim", "sequence": "hist_cat", "num_buckets": NB}])


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, L + 1, n)
    pad = np.arange(L)[None, :] >= lengths[:, None]
    hist = np.where(pad, 0, rng.integers(2, 8, (n, L)))
    gaps = np.floor(2.0 ** rng.uniform(0, 8, (n, L)))  # log-uniform over 1..255 s: every bucket 1..7
    gaps = np.where(pad, 0, np.sort(gaps, axis=1)[:, ::-1]).astype(np.float32)  # most recent last
    return {"category": rng.integers(2, 8, (n, 1)), "hist_cat": hist, "hist_gap": gaps}


def test_spearman():
    assert spearman(np.arange(5), -np.arange(5) ** 3) == pytest.approx(-1.0)
    assert spearman(np.arange(4), np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    assert spearman(np.arange(2), np.arange(2)) is None and spearman(np.arange(4), np.ones(4)) is None


def test_profile_against_numpy_and_a_planted_decay():
    model, x = _model(), _data()
    model(x)
    tim = model.added_fields.modules[0]
    emb = model.embedding(x)
    # plant: position rows 0 (orthogonal to every target), interval rows falling along the mean target
    # direction from 0 at the target's own row 0 (so the targets v~_t = v_t keep that direction)
    tim.position_table.assign(np.zeros((L + 1, D), np.float32))
    tim.interval_table.assign(np.zeros((NB, D), np.float32))
    target = tim.encode(x, emb).target.numpy()
    direction = target.mean(axis=0) / np.linalg.norm(target.mean(axis=0))
    tim.interval_table.assign((-np.arange(NB)[:, None] * direction[None, :]).astype(np.float32))
    enc = tim.encode(x, emb)
    v = enc.target.numpy().astype(np.float64)
    prof = temporal_profile(tim, x, emb, min_count=1)
    for kind, table, index in (("time_interval", tim.interval_table, enc.buckets),
                               ("position", tim.position_table, enc.positions)):
        p = table.numpy().astype(np.float64)
        want = (v @ p.T).mean(axis=0) / math.sqrt(D)
        got = prof[kind]
        assert got["target_attention_logit"] == pytest.approx(want[0], abs=1e-6)
        np.testing.assert_allclose([e["attention_logit"] for e in got["entries"]], want[1:], atol=1e-6)
        valid = np.asarray(x["hist_cat"]) != 0
        counts = np.bincount(index.numpy()[valid], minlength=len(p))
        assert [e["behaviours"] for e in got["entries"]] == counts[1:].tolist()
        assert got["occupied"] == [k for k in range(1, len(p)) if counts[k] >= 1]
    assert prof["time_interval"]["occupied"] == list(range(1, NB)) and prof["position"]["occupied"] == [1, 2, 3, 4]
    assert prof["time_interval"]["spearman"] == pytest.approx(-1.0)  # the planted decay
    # c(b) = -b |mean target| / sqrt(d): range over b = 1..7
    assert prof["time_interval"]["range"] == pytest.approx(6 * np.linalg.norm(v.mean(axis=0)) / math.sqrt(D))
    assert prof["position"]["range"] == pytest.approx(0.0, abs=1e-9) and prof["position"]["spearman"] is None
    assert prof["time_interval"]["entries"][2]["gap_seconds"] == [7, 15]  # bucket 3
    assert prof["behaviours"] == int((np.asarray(x["hist_cat"]) != 0).sum())


def test_the_callback_writes_json_and_figure(tmp_path):
    model, x = _model(), _data(40)
    ds = tf.data.Dataset.from_tensor_slices((x, {"click": np.zeros((40, 1), np.float32)})).batch(16)
    model(x)
    cb = TIMTemporal(str(tmp_path), ds, rows=30, min_count=1)
    cb.set_model(model)
    cb.on_train_end()
    saved = json.loads((tmp_path / "tim_temporal.json").read_text())
    assert list(saved) == ["tim_0"] and saved["tim_0"]["targets"] == 30
    assert (tmp_path / "tim_temporal.png").stat().st_size > 0
    no_tim = build_model(Schema([Feature("category", "categorical", "string", "item", {"type": "vocab"},
                                         num_ids=8)], ["click"]).to_dict(), ["click"], backbone="lr")
    cb.set_model(no_tim)
    cb.on_train_end()
    assert "no TIM" in json.loads((tmp_path / "tim_temporal.json").read_text())["note"]


@pytest.mark.slow
def test_a_run_of_the_shipped_tim_config_writes_the_analysis(sim_data, tmp_path):
    from pipeline.config import load_config
    from pipeline.train import TrainConfig, train

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config(TrainConfig, os.path.join(repo, "configs", "train_sim_tim.yaml"),
                      {"data_dir": sim_data, "runs_dir": str(tmp_path), "run_name": "tim", "epochs": 1,
                       "steps_per_epoch": 5, "batch_size": 512, "eval_batch_size": 4096, "eval_splits": [],
                       "model.backbone_options.dnn_units": [16], "model.embedding_dim": 8, "verbose": 0})
    train(cfg, "train_sim_tim")
    prof = json.loads((tmp_path / "tim" / "analysis" / "tim_temporal.json").read_text())["tim_0"]
    assert prof["targets"] == 3000 and prof["options"]["num_buckets"] == 32  # the valid split: 10 % of 30 000 rows
    # the simulator's gaps span seconds to days: many buckets and every position are occupied
    assert len(prof["time_interval"]["occupied"]) >= 8 and prof["position"]["occupied"] == list(range(1, 21))
    assert (tmp_path / "tim" / "analysis" / "tim_temporal.png").exists()
