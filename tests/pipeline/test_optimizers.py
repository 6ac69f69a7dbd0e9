"""The optimizer a config builds (pipeline/optimizers.py): the ``step`` learning-rate schedule
(PyTorch's StepLR per epoch), the coupled weight decay ``l2`` (PyTorch Adam's weight_decay)
against hand computations, the clip options, a resumed run equal to an uninterrupted one, and
bad options failing with the key named."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError, from_dict
from pipeline.optimizers import learning_rate_at, make_optimizer
from pipeline.train import RunBackup, TrainConfig, train
from pipeline.train_config import OptimizerConfig
from train_helpers import killed_then_resumed, train_config


def _optimizer(steps_per_epoch=None, **cfg):
    return make_optimizer(from_dict(OptimizerConfig, cfg), steps_per_epoch)


def _steps(opt, w, grad_fn, n):
    """``n`` updates of the variable ``w`` by ``opt`` with gradients ``grad_fn(w)``; w after each."""
    out = []
    for _ in range(n):
        with tf.GradientTape() as tape:
            loss = grad_fn(w)
        opt.apply_gradients([(tape.gradient(loss, w), w)])
        out.append(w.numpy().copy())
    return out


def test_step_schedule_is_steplr_per_epoch_and_is_what_the_optimizer_applies():
    """lr in epoch e = 0.002 * 0.8 ** floor(e / 2) with 3 steps an epoch: SGD on a loss of
    gradient 1 moves w by exactly the step's lr, and learning_rate_at says the same."""
    steps, every = 3, 2
    opt = _optimizer(steps, name="sgd", learning_rate=0.002, schedule={"type": "step", "every_epochs": every,
                                                                       "factor": 0.8})
    w = tf.Variable(0.0)
    path = np.array([0.0] + _steps(opt, w, lambda v: v, 5 * steps), np.float64)
    want = np.array([0.002 * 0.8 ** ((t // steps) // every) for t in range(5 * steps)])
    np.testing.assert_allclose(-np.diff(path), want, rtol=1e-5)
    np.testing.assert_allclose([learning_rate_at(opt, t) for t in range(5 * steps)], want, rtol=1e-6)
    assert _optimizer(None, learning_rate=0.002).learning_rate.numpy() == pytest.approx(0.002)  # type none


def _adam(w, grads_of, steps, lr, l2=0.0, decoupled=0.0, b1=0.9, b2=0.999, eps=1e-7):
    """Keras' legacy Adam by hand (epsilon outside the bias correction), with coupled
    (g + l2 w) or decoupled (w <- w - lr wd w, AdamW) weight decay."""
    w, m, v, out = np.array(w, np.float64), 0.0, 0.0, []
    for t in range(1, steps + 1):
        g = grads_of(w) + l2 * w
        w = w - lr * decoupled * w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        out.append(w)
    return out


def test_l2_is_coupled_weight_decay_as_pytorch_adam():
    """Three Adam steps on 0.5 ||w - c||^2 with l2 = 0.5 equal Adam on g + l2 w (PyTorch's
    Adam(weight_decay)), not AdamW's decoupled decay, nor no decay."""
    w0, c = np.array([3.0, -0.2, 0.05]), np.array([1.0, 1.0, 1.0])
    opt = _optimizer(learning_rate=0.1, l2=0.5)
    w = tf.Variable(w0, dtype=tf.float32)
    got = _steps(opt, w, lambda v: 0.5 * tf.reduce_sum((v - c) ** 2), 3)
    coupled = _adam(w0, lambda x: x - c, 3, 0.1, l2=0.5)
    np.testing.assert_allclose(got, coupled, rtol=1e-5, atol=1e-6)
    for other in (_adam(w0, lambda x: x - c, 3, 0.1, decoupled=0.5), _adam(w0, lambda x: x - c, 3, 0.1)):
        assert np.abs(np.array(other) - np.array(coupled)).max() > 1e-3  # vs a tolerance of ~3e-5


def test_l2_decays_every_row_of_an_embedding_table():
    """An embedding lookup's sparse gradient: with l2 the rows not looked up decay too (Adam on
    the dense g + l2 w), without it they do not move on the first step."""
    table0 = np.arange(10, dtype=np.float64).reshape(5, 2) / 10 - 0.3
    looked_up = np.zeros_like(table0)
    looked_up[[0, 1]] = 1.0
    for l2 in (0.0, 0.1):
        table = tf.Variable(table0, dtype=tf.float32)
        got = _steps(_optimizer(learning_rate=0.01, l2=l2), table,
                     lambda t: tf.reduce_sum(tf.gather(t, [0, 1])), 2)
        np.testing.assert_allclose(got, _adam(table0, lambda x: looked_up, 2, 0.01, l2=l2), rtol=1e-5, atol=1e-7)
        assert np.array_equal(got[0][2:], table0[2:].astype(np.float32)) == (l2 == 0.0)


@pytest.mark.parametrize("clip", [{"clipnorm": 1.0}, {"options": {"clipvalue": 0.5}},
                                  {"options": {"global_clipnorm": 1.0}}], ids=lambda c: str(c))
def test_clip_options_clip_as_keras_then_l2_is_added(clip):
    """Each clip option updates as Keras' own clip argument of the legacy SGD; with l2 the
    decay joins after clipping (PyTorch: clip_grad_norm_, then the step adds wd * w)."""
    key, value = next(iter(clip.get("options", clip).items()))
    w0 = np.array([3.0, 4.0])  # the gradient of 0.5 ||w||^2 is w: norm 5
    keras = tf.keras.optimizers.legacy.SGD(0.1, **{key: value})
    want = _steps(keras, tf.Variable(w0, dtype=tf.float32), lambda v: 0.5 * tf.reduce_sum(v * v), 2)
    got = _steps(_optimizer(name="sgd", learning_rate=0.1, **clip), tf.Variable(w0, dtype=tf.float32),
                 lambda v: 0.5 * tf.reduce_sum(v * v), 2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    if key != "clipvalue":  # by norm: the clipped gradient is w / 5, then + l2 w
        w = tf.Variable(w0, dtype=tf.float32)
        _steps(_optimizer(name="sgd", learning_rate=0.1, l2=0.3, **clip), w, lambda v: 0.5 * tf.reduce_sum(v * v), 1)
        np.testing.assert_allclose(w.numpy(), w0 - 0.1 * (w0 / 5 + 0.3 * w0), rtol=1e-6)


@pytest.mark.parametrize("bad, key", [
    ({"schedule": {"type": "cosine"}}, r"optimizer\.schedule\.type = 'cosine': expected one of"),
    ({"schedule": {"type": "step", "every_epochs": 0, "factor": 0.8}}, r"optimizer\.schedule\.every_epochs = 0"),
    ({"schedule": {"type": "step", "every_epochs": 8, "factor": 1.5}}, r"optimizer\.schedule\.factor = 1\.5"),
    ({"schedule": {"type": "step", "factor": 0.8}}, r"optimizer\.schedule: every_epochs: required with type 'step'"),
    ({"schedule": {"every_epochs": 8}}, r"optimizer\.schedule: every_epochs: apply to type 'step' only"),
    ({"schedule": {"type": "step", "every_epochs": 8, "factor": 0.8, "gamma": 1}},
     r"optimizer\.schedule: unknown option\(s\) \['gamma'\]"),
    ({"l2": -1e-6}, r"optimizer\.l2 = -1e-06"),
], ids=["type", "every_epochs", "factor", "missing", "extra", "unknown", "l2"])
def test_bad_schedule_or_l2_fails_naming_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(TrainConfig, {"data_dir": "d", "optimizer": bad})
    with pytest.raises(ConfigError, match=key.replace(r"optimizer\.", r"phase_optimizers\.d\.")):
        from_dict(TrainConfig, {"data_dir": "d", "phase_optimizers": {"d": bad}})


@pytest.mark.slow
@pytest.mark.parametrize("killed_after", [1, 3])
def test_a_resumed_run_has_the_uninterrupted_runs_rates_and_weights(sim_data, tmp_path, monkeypatch, killed_after):
    """The step schedule (every epoch by 0.5) and l2: a run killed after epoch 1's backup, or
    after the last epoch's (nothing left to fit, but the best weights still to restore), and
    started again ends with the uninterrupted run's history (its lr per epoch among it) and
    weights. (The kill by SIGKILL, in a subprocess: tests/reliability/test_resume.py; restoring
    the best weights of a run with no epoch left: test_a_run_with_no_epoch_left_...)"""
    opt = {"learning_rate": 0.004, "l2": 1e-3, "schedule": {"type": "step", "every_epochs": 1, "factor": 0.5}}

    def config(name):
        return train_config(sim_data, tmp_path / "runs", run_name=name, epochs=3, steps_per_epoch=5,
                            optimizer=opt, early_stopping={"patience": 10},
                            **{"model.backbone_options": {"dnn_units": [16], "dnn_dropout": 0.2}})

    straight = train(config("straight"))
    np.testing.assert_allclose(straight["history"]["lr"], [0.004 * 0.5 ** e for e in range(3)], rtol=1e-6)

    resumed = killed_then_resumed(config("killed"), killed_after, monkeypatch)
    assert resumed["history"] == straight["history"]
    a, b = (tf.train.load_checkpoint(str(tmp_path / "runs" / n / "weights" / "model")) for n in ("straight", "killed"))
    # the model's weights; a run resumed with no epoch left never builds its optimizer's slots, which
    # a completed run's later use never reads (warm starts begin a fresh optimizer)
    keys = [k for k in a.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"
            and not (killed_after == 3 and k.startswith("optimizer/"))]
    assert len(keys) > 4
    for key in keys:
        np.testing.assert_array_equal(b.get_tensor(key), a.get_tensor(key), err_msg=key)


def test_a_run_with_no_epoch_left_ends_with_its_best_weights(tmp_path):
    """A run killed after its last epoch's backup skips fit on restart; it must still end as fit
    does, with the early stopping's best weights restored (not the last epoch's)."""
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
    last = [w.copy() for w in model.get_weights()]
    best = [w + 1.0 for w in last]
    stopping = tf.keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", restore_best_weights=True)
    checkpoint = tf.keras.callbacks.ModelCheckpoint("unused", monitor="val_auc", mode="max")
    state = {"epoch": 3, "history": {"val_auc": [0.7, 0.6, 0.5]}, "stopped": False,
             "early_stopping": {"wait": 2, "stopped_epoch": 0, "best": 0.7, "best_epoch": 0}, "checkpoint_best": 0.7}
    backup = RunBackup(str(tmp_path), stopping, checkpoint, resumed=(state, best))
    backup.end_without_fit(model)
    for got, want in zip(model.get_weights(), best):
        np.testing.assert_array_equal(got, want)
