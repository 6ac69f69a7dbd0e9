"""Rec4Ad's representation analysis (pipeline/representations.py, Fig. 7-8): the sample of both
sources, the separation measure, and the files a training run writes."""
import json

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.factory import build_model
from pipeline.representations import SourceRepresentations, fisher_separation_auc, source_sample


def test_separation_auc_tells_mixed_from_separated_sources():
    rng = np.random.default_rng(0)
    source = (np.arange(2000) % 2).astype(np.int64)
    mixed = rng.normal(size=(2000, 5))
    separated = mixed + 3.0 * source[:, None] * np.array([1, 0, 0, 0, 0])
    assert fisher_separation_auc(mixed, source) == pytest.approx(0.5, abs=0.05)
    assert fisher_separation_auc(separated, source) > 0.95


def _data(n=120):
    x = {"item": (np.arange(n) % 7)[:, None], "_source": (np.arange(n) % 3 == 0).astype(np.int64)}
    return tf.data.Dataset.from_tensor_slices((x, {"click": (np.arange(n) % 2).astype(np.float32)[:, None]})).batch(32)


def test_source_sample_takes_up_to_n_rows_of_each_source():
    sample = source_sample(_data(), 25)
    assert (sample["_source"] == 1).sum() == 25 and (sample["_source"] == 0).sum() == 25
    only_ads = tf.data.Dataset.from_tensor_slices(({"item": np.zeros((8, 1), np.int64),
                                                    "_source": np.ones(8, np.int64)}, np.zeros(8))).batch(4)
    assert source_sample(only_ads, 5) is None


def test_a_training_run_writes_the_discriminator_curve_and_the_projections(tmp_path):
    schema = Schema([Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=7)], ["click"],
                    meta={"src": "int64"}, source_column="src").to_dict()
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema, ["click"], backbone="dnn", backbone_options={"dnn_units": [8]}, embedding_dim=4,
                        framework="rec4ad", framework_options={"d": 4})
    model.compile(tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    callback = SourceRepresentations(str(tmp_path), _data(), rows_per_source=30, every_batches=2)
    model.fit(_data(), epochs=2, verbose=0, callbacks=[callback])
    curve = json.loads((tmp_path / "discriminator_auc.json").read_text())
    assert [(r["epoch"], r["step"]) for r in curve] == [(1, 2), (1, 4), (2, 6), (2, 8)]  # 4 batches per epoch
    source = callback.sample["_source"]
    x_inv, _ = model.representations(callback.sample, training=False, source=tf.constant(source))
    from pipeline.metrics import auc
    assert curve[-1]["auc"] == pytest.approx(auc(source, model.source_probability(x_inv).numpy()))
    result = json.loads((tmp_path / "representations.json").read_text())
    assert result["rows"] == {"ad": 30, "rec": 30} and set(result["separation_auc"]) == {"x_inv", "x_con"}
    assert (tmp_path / "representations.png").stat().st_size > 0 and (tmp_path / "discriminator_auc.png").exists()


def test_the_run_report_shows_the_analyses_written_while_training(tmp_path):
    from pipeline.evaluate import _analyses_section

    assert _analyses_section(str(tmp_path)) == ""
    (tmp_path / "analysis").mkdir()
    for name in ("discriminator_auc.png", "discriminator_auc.json", "representations.png", "representations.json"):
        (tmp_path / "analysis" / name).write_text("x")
    text = _analyses_section(str(tmp_path))
    assert "![discriminator_auc](analysis/discriminator_auc.png)" in text
    assert "![representations](analysis/representations.png)" in text
    assert "[representations.json](analysis/representations.json)" in text
