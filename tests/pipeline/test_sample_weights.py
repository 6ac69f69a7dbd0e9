"""The batch contract: weighted batches (inputs, labels, {task: weight}) and the side inputs.

A small TFRecord fixture with a weight column, side columns (source, group, user key) and
other meta columns is read by ``pipeline.data.make_dataset``; a CTRModel compiled as
``pipeline/train.py`` compiles it (``compile_model``) is evaluated and fitted on it.
"""
import dataclasses
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from features.schema import Feature, Schema, SchemaError
from pipeline.data import make_dataset
from pipeline.predict import predict_labels

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_helpers import train_config  # noqa: E402

TASKS = ["click", "conv"]
N = 48  # rows of the train split, in 2 shards


def columns(n=N) -> dict:
    """Row r's stored values, by column (what the fixture writes)."""
    r = np.arange(n)
    return {"item": 2 + r % 10, "x": (r / n).astype(np.float32), "click": (r % 2).astype(np.float32),
            "conv": (r % 3 == 0).astype(np.float32), "uid": 100 + r % 5, "grp": r % 2, "src": (r // 2) % 2,
            "wt": (0.5 + r % 4).astype(np.float32), "ctr_true": (r / 100).astype(np.float32),
            "zero": np.zeros(n, np.float32)}


SCHEMA = Schema(
    features=[Feature("item", "categorical", "int64", "item", {"type": "vocab"}, num_ids=12),
              Feature("x", "numeric", "float32", "context", {"type": "identity"}, encoded_dtype="float32")],
    labels=TASKS, meta={"uid": "int64", "grp": "int64", "src": "int64", "wt": "float32", "ctr_true": "float32",
                        "zero": "float32"},
    user_column="uid", group_column="grp", source_column="src", weight_columns=["wt"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train: 2 gzip shards of 24 rows (``columns``); valid and test: the same rows in one shard."""
    root = tmp_path_factory.mktemp("weighted")
    SCHEMA.save(str(root / "schema.json"))
    cols = columns()
    floats = {k for k, v in cols.items() if v.dtype == np.float32}
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for split, shards in (("train", 2), ("valid", 1), ("test", 1)):
        os.makedirs(root / split)
        for s, rows in enumerate(np.array_split(np.arange(N), shards)):
            with tf.io.TFRecordWriter(str(root / split / f"part-{s:05d}-of-{shards:05d}.tfrecord.gz"), options) as w:
                for r in rows:
                    w.write(tf.train.Example(features=tf.train.Features(feature={
                        k: tf.train.Feature(float_list=tf.train.FloatList(value=[v[r]])) if k in floats else
                        tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v[r])]))
                        for k, v in cols.items()})).SerializeToString())
    return str(root)


def one_batch(data_dir, **kw):
    return next(iter(make_dataset(data_dir, "train", N, shuffle=False, deterministic=True, cycle_length=1, **kw)))


# ---- the reader ------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [False, True])
def test_weight_column_read_into_three_tuples(data_dir, cache):
    batch = one_batch(data_dir, cache=cache)
    assert len(batch) == 3
    _, labels, weights = batch
    assert sorted(weights) == TASKS  # one entry per task, as Keras' per-task losses take them
    for t in TASKS:
        assert weights[t].shape == (N,) and weights[t].dtype == tf.float32
        np.testing.assert_array_equal(weights[t].numpy(), columns()["wt"])  # the schema's weight column
        np.testing.assert_array_equal(labels[t].numpy()[:, 0], columns()[t])


def test_sample_weight_names_the_column_or_turns_weights_off(data_dir):
    _, _, weights = one_batch(data_dir, sample_weight="ctr_true", labels=["conv"])
    assert list(weights) == ["conv"]
    np.testing.assert_array_equal(weights["conv"].numpy(), columns()["ctr_true"])
    assert len(one_batch(data_dir, sample_weight=None)) == 2
    unweighted = dataclasses.replace(SCHEMA, weight_columns=[])
    assert len(one_batch(data_dir, schema=unweighted)) == 2  # no weight column: (inputs, labels) as before
    with pytest.raises(SchemaError, match=r"sample_weight = 'nope'.*weight columns \['wt'\]"):
        one_batch(data_dir, sample_weight="nope")


def test_auto_multiplies_every_weight_column(data_dir):
    """Importance weights compose: with two weight columns declared, ``auto`` reads their product."""
    two = dataclasses.replace(SCHEMA, weight_columns=["wt", "ctr_true"])
    _, _, weights = one_batch(data_dir, schema=two)
    np.testing.assert_allclose(weights["conv"].numpy(), columns()["wt"] * columns()["ctr_true"], rtol=1e-6)


def test_train_config_sample_weight_is_checked_at_start(data_dir, tmp_path):
    from pipeline.train import resolve

    resolve(train_config(data_dir, tmp_path, sample_weight="ctr_true"))
    with pytest.raises(SchemaError, match="sample_weight = 'wt_typo'"):
        resolve(train_config(data_dir, tmp_path, sample_weight="wt_typo"))


@pytest.mark.parametrize("cache", [False, True])
def test_side_inputs_carry_the_stored_values_under_fixed_keys(data_dir, cache):
    inputs = one_batch(data_dir, cache=cache)[0]
    cols = columns()
    for key, column in (("_source", "src"), ("_group", "grp"), ("_user", "uid")):
        assert inputs[key].shape == (N,) and inputs[key].dtype == tf.int64, key
        np.testing.assert_array_equal(inputs[key].numpy(), cols[column])
    bare = dataclasses.replace(SCHEMA, user_column=None, group_column=None, source_column=None)
    assert not [k for k in one_batch(data_dir, schema=bare)[0] if k.startswith("_")]  # only the schema's


def test_prediction_ignores_the_weights(data_dir):
    model = _model()
    weighted = make_dataset(data_dir, "test", 20, shuffle=False, deterministic=True)
    plain = make_dataset(data_dir, "test", 20, shuffle=False, deterministic=True, sample_weight=None)
    (y1, p1), (y2, p2) = (predict_labels(model, ds, TASKS) for ds in (weighted, plain))
    for t in TASKS:
        np.testing.assert_array_equal(y1[t], columns()[t])
        np.testing.assert_array_equal(p1[t], p2[t])


# ---- the weighted loss -----------------------------------------------------------------------
def _model(data_dir=None, tmp_path=None, **overrides):
    """A small CTRModel over both tasks, built; compiled as pipeline/train.py does when given a data dir."""
    from models.factory import build_model
    from pipeline.train import compile_model

    tf.keras.utils.set_random_seed(1)
    model = build_model(SCHEMA.to_dict(), TASKS, backbone="dnn", backbone_options={"dnn_units": [8]},
                        embedding_dim=4)
    cols = columns()
    model({"item": tf.constant(cols["item"][:, None]), "x": tf.constant(cols["x"][:, None])}, training=False)
    if data_dir is not None:
        compile_model(model, train_config(data_dir, tmp_path, tasks=TASKS, **overrides), TASKS)
    return model


def _hand_losses(model, batch, lam):
    """Per task sum_i w_i * bce_i / B (Keras' SUM_OVER_BATCH_SIZE) and the total sum_t lam_t * L_t,
    in float64 from the model's probabilities; also the weighted mean sum w bce / sum w."""
    x, y, w = batch
    p = model(x, training=False)
    per_task, mean = {}, {}
    for t in TASKS:
        yt = y[t].numpy()[:, 0].astype(np.float64)
        pt = np.clip(p[t].numpy()[:, 0].astype(np.float64), 1e-7, 1 - 1e-7)
        bce = -(yt * np.log(pt) + (1 - yt) * np.log(1 - pt))
        wt = w[t].numpy().astype(np.float64)
        per_task[t], mean[t] = (wt * bce).sum() / len(bce), (wt * bce).sum() / wt.sum()
    return per_task, sum(lam[t] * per_task[t] for t in TASKS) + float(sum(model.losses)), mean


def test_weighted_loss_is_the_hand_computation(data_dir, tmp_path):
    lam = {"click": 1.0, "conv": 0.5}
    model = _model(data_dir, tmp_path, task_losses={"conv": {"weight": lam["conv"]}})
    ds = make_dataset(data_dir, "train", N, shuffle=False, deterministic=True)  # one batch of N rows
    batch = next(iter(ds))
    per_task, total, weighted_mean = _hand_losses(model, batch, lam)
    logs = model.evaluate(ds, return_dict=True, verbose=0)
    for t in TASKS:
        assert logs[f"{t}_loss"] == pytest.approx(per_task[t], rel=1e-5)
        assert abs(per_task[t] - weighted_mean[t]) > 1e-3  # SUM_OVER_BATCH_SIZE, not a weighted mean
    assert logs["loss"] == pytest.approx(total, rel=1e-5)
    unweighted = model.evaluate(make_dataset(data_dir, "train", N, shuffle=False, sample_weight=None),
                                return_dict=True, verbose=0)
    assert abs(unweighted["loss"] - total) > 1e-3  # the weights reached the loss
    # the training step logs the same loss (computed before its update) from the same batch
    history = model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0).history
    assert history["loss"][0] == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_zero_weights_leave_the_model_unchanged(data_dir, tmp_path, optimizer):
    """A fit step on a batch whose weights are all 0 has a zero gradient: SGD and Adam (train.py's
    default: m = v = 0 after the first step, so the step m / (sqrt(v) + eps) is 0) change no weight,
    while the same step with the real weights does."""
    def step(sample_weight):
        model = _model(data_dir, tmp_path, optimizer={"name": optimizer, "learning_rate": 0.1})
        before = [w.numpy().copy() for w in model.weights]
        ds = make_dataset(data_dir, "train", N, shuffle=False, sample_weight=sample_weight)
        model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 1
        return [np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights)]

    assert all(step("zero"))
    assert not all(step("wt"))


def test_train_reads_the_configured_weights(data_dir, tmp_path):
    """``train`` end to end on weighted batches: with all-zero weights no step moves the model,
    so every epoch's exact validation LogLoss is the same; with the data's weights it changes."""
    from pipeline.train import train

    def val_logloss(sample_weight):
        cfg = train_config(data_dir, tmp_path, run_name=f"w-{sample_weight}", sample_weight=sample_weight,
                           batch_size=16, eval_batch_size=N, epochs=3, tasks=TASKS,
                           **{"early_stopping.patience": 5})
        return train(cfg)["history"]["val_logloss"]

    frozen = val_logloss("zero")
    assert len(frozen) == 3 and len(set(frozen)) == 1
    assert len(set(val_logloss("auto"))) == 3
