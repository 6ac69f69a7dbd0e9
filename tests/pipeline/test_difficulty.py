"""Sample-difficulty analysis (TF4CTR Sec. IV-D, Fig. 10) and grad-norm collection (Fig. 5)."""
import dataclasses
import json
import os
import sys

import numpy as np
import pytest

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from models.factory import build_model
from pipeline.analyses import analysis_callbacks
from pipeline.difficulty import SampleDifficulty, compare_runs, difficulty_counts
from pipeline.predict import predict_labels
from pipeline.train import ModelConfig, TrainConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "models"))
from test_tf4ctr import toy_data, toy_schema  # noqa: E402


def test_counts_against_a_hand_example():
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.95, 0.6, 0.59, 0.3, 0.1, 0.05, 0.4, 0.7, 0.71])
    # positives: p_true = .95 .6 (well), .59 .3 (poor), .1 (mis)
    # negatives: p_true = .95 .6 (well), .3 (poor: .7 -> .3 is the boundary, kept poor), .29 (mis)
    got = difficulty_counts(y, p)
    assert got == {"positive": {"well_classified": 2, "poorly_classified": 2, "misclassified": 1},
                   "negative": {"well_classified": 2, "poorly_classified": 1, "misclassified": 1}}
    assert difficulty_counts(y, p, thresholds=(0.5, 0.9))["positive"] == \
        {"well_classified": 1, "poorly_classified": 2, "misclassified": 2}
    with pytest.raises(ValueError, match="thresholds"):
        difficulty_counts(y, p, thresholds=(0.6, 0.3))
    with pytest.raises(ValueError, match="9 labels but 2"):
        difficulty_counts(y, p[:2])


def _model():
    model = build_model(toy_schema(), ["click"], backbone="dualmlp",
                        backbone_options={"mlp1_units": [16], "mlp2_units": [16, 16]}, embedding_dim=8,
                        framework="tf4ctr")
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    return model


def test_callback_writes_counts_and_grad_norms(tmp_path):
    tf.keras.utils.set_random_seed(1)
    x, y = toy_data(512, seed=1)
    splits = {s: tf.data.Dataset.from_tensor_slices(toy_data(300, seed=seed)).batch(100)
              for s, seed in (("valid", 2), ("test", 3))}
    out = tmp_path / "analysis"
    cb = SampleDifficulty(str(out), splits, "click")
    model = _model()
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(128), epochs=2, callbacks=[cb], verbose=0)
    saved = json.loads((out / "difficulty.json").read_text())
    assert saved["thresholds"] == [0.3, 0.6] and saved["task"] == "click"
    for split, ds in splits.items():
        assert [r["epoch"] for r in saved[split]] == [1, 2]
        yy, pp = predict_labels(model, ds, ["click"])  # the final weights = the last epoch's
        assert saved[split][-1]["positive"] == difficulty_counts(yy["click"], pp["click"])["positive"]
        assert saved[split][-1]["negative"] == difficulty_counts(yy["click"], pp["click"])["negative"]
        total = sum(sum(saved[split][-1][c].values()) for c in ("positive", "negative"))
        assert total == 300
        assert (out / f"difficulty_{split}.png").stat().st_size > 0
    norms = json.loads((out / "grad_norms.json").read_text())
    assert [len(e) for e in norms["grad_norm_zs"]] == [4, 4] and [len(e) for e in norms["grad_norm_zc"]] == [4, 4]
    assert all(v > 0 for e in norms["grad_norm_zs"] for v in e)
    assert (out / "grad_norms.png").stat().st_size > 0
    # side by side with another run (here: itself), as for DualMLP vs TF4CTR
    written = compare_runs({"a": str(tmp_path), "b": str(tmp_path)}, str(tmp_path / "cmp"))
    assert sorted(os.path.basename(w) for w in written) == ["difficulty_test.png", "difficulty_valid.png",
                                                            "grad_norms.png"]
    with pytest.raises(FileNotFoundError, match="difficulty analysis"):
        compare_runs({"a": str(tmp_path / "cmp")}, str(tmp_path / "cmp2"))


def test_resumed_run_keeps_earlier_epochs(tmp_path):
    out = tmp_path / "analysis"
    out.mkdir()
    counts = {"positive": {}, "negative": {}}
    (out / "difficulty.json").write_text(json.dumps(
        {"task": "click", "thresholds": [0.3, 0.6], "valid": [{"epoch": e, **counts} for e in (1, 2, 3)]}))
    (out / "grad_norms.json").write_text(json.dumps({"grad_norm_zs": [[1.0], [2.0], [3.0]],
                                                     "grad_norm_zc": [[1.0], [2.0], [3.0]]}))
    cb = SampleDifficulty(str(out), {"valid": None}, "click")
    cb.on_train_begin()
    cb.on_epoch_begin(2)  # BackupAndRestore resumes at the third epoch (index 2)
    assert [r["epoch"] for r in cb.records["valid"]] == [1, 2]
    assert cb.grad_norms["grad_norm_zs"] == [[1.0], [2.0]]


def test_analysis_callbacks_selection(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr("pipeline.data.make_dataset", lambda data_dir, split, *a, **k: made.append(split) or split)
    cfg = TrainConfig(data_dir=str(tmp_path), model=ModelConfig(framework="none"), eval_splits=["test", "random"])
    assert analysis_callbacks(cfg, str(tmp_path), ["click"]) == []
    cfg = TrainConfig(data_dir=str(tmp_path), model=ModelConfig(backbone="dualmlp", framework="tf4ctr"),
                      eval_splits=["test", "random"])
    (cb,) = analysis_callbacks(cfg, str(tmp_path / "run"), ["click", "conv"])
    assert isinstance(cb, SampleDifficulty) and cb.task == "click"
    assert list(cb.splits) == ["valid", "test", "random"] and made == ["valid", "test", "random"]
    assert cb.out_dir == str(tmp_path / "run" / "analysis")
    # a baseline asks for it with an `analysis` option
    baseline = dataclasses.replace(cfg, analysis=["difficulty"], model=ModelConfig(backbone="dualmlp"))
    assert len(analysis_callbacks(baseline, str(tmp_path), ["click"])) == 1
    baseline.analysis = ["saliency"]
    with pytest.raises(ValueError, match="unknown analysis"):
        analysis_callbacks(baseline, str(tmp_path), ["click"])


@pytest.mark.slow
def test_on_the_simulator_data(sim_data, tmp_path):
    """The callback built from a training config reads the real splits."""
    from pipeline.data import make_dataset
    from pipeline.train import model_schema, resolve
    from train_helpers import train_config

    cfg = train_config(sim_data, tmp_path, **{"model.backbone": "dualmlp",
                                              "model.backbone_options": {"mlp1_units": [16], "mlp2_units": [16, 16]},
                                              "model.framework": "tf4ctr", "eval_splits": ["test", "random"]})
    schema, tasks, feats = resolve(cfg)
    tf.keras.utils.set_random_seed(2)
    model = build_model(model_schema(schema, feats), tasks, **{k: getattr(cfg.model, k) for k in vars(cfg.model)})
    model.compile(optimizer=tf.keras.optimizers.Adam(0.003), loss={"click": "binary_crossentropy"})
    callbacks = analysis_callbacks(cfg, str(tmp_path / "run"), tasks)
    model.fit(make_dataset(sim_data, "train", 512, shuffle=False, labels=tasks), epochs=2, callbacks=callbacks, verbose=0)
    saved = json.loads((tmp_path / "run" / "analysis" / "difficulty.json").read_text())
    for split in ("valid", "test", "random"):
        assert len(saved[split]) == 2
        counts = saved[split][-1]
        assert sum(counts["negative"].values()) > sum(counts["positive"].values()) > 0
    assert os.path.exists(tmp_path / "run" / "analysis" / "grad_norms.png")
