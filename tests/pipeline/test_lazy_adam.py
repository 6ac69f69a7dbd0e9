"""Lazy Adam (``optimizer.name: lazy_adam``, pipeline/optimizers.py): Keras' Adam on dense
gradients; on an embedding lookup's sparse gradient an update of the looked-up rows only, against
a numpy hand computation; where it differs from Adam; with l2, clipping, loss scaling and
MirroredStrategy; a run through ``pipeline.train.train`` resumed exactly; its config."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError, from_dict
from pipeline.optimizers import LazyAdam, make_optimizer
from pipeline.train import TrainConfig, train
from pipeline.train_config import OptimizerConfig
from train_helpers import REPO, killed_then_resumed, train_config

# the hyper-parameters as the optimizer holds them (float32: 1 - b2 is 0.99998713e-3, not 1e-3)
B1, B2, EPS, LR = (float(np.float32(x)) for x in (0.9, 0.999, 1e-7, 0.05))
TABLE0 = (np.arange(12, dtype=np.float32).reshape(6, 2) / 10 - 0.4)
# per step: the rows looked up (with repeats) and the upstream gradient of each lookup
STEPS = [([0, 2, 0], [[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]]),
         ([3, 3], [[-1.0, 0.5], [-0.5, 2.0]]),
         ([0, 5], [[0.2, -0.1], [1.5, -3.0]])]


def _optimizer(**cfg):
    return make_optimizer(from_dict(OptimizerConfig, cfg))


def _sparse_steps(opt, steps=STEPS, lookup=tf.gather, table0=TABLE0):
    """``opt`` on a table through lookups of ``steps``; per step the table, m and v after it."""
    table = tf.Variable(table0)
    out = []
    for ids, upstream in steps:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(lookup(table, tf.constant(ids)) * tf.constant(upstream, tf.float32))
        grad = tape.gradient(loss, table)
        assert isinstance(grad, tf.IndexedSlices)
        opt.apply_gradients([(grad, table)])
        inner = getattr(opt, "inner_optimizer", opt)
        out.append(tuple(x.numpy().copy() for x in (table, inner.get_slot(table, "m"), inner.get_slot(table, "v"))))
    return out


def _lazy_by_hand(steps=STEPS, l2=0.0):
    """The lazy update in float64: per step (w, m, v), only the rows looked up changed."""
    w, m, v, out = TABLE0.astype(np.float64), np.zeros(TABLE0.shape), np.zeros(TABLE0.shape), []
    for t, (ids, upstream) in enumerate(steps, 1):
        g = np.zeros_like(w)
        np.add.at(g, ids, np.array(upstream))  # repeats summed
        rows = sorted(set(ids))
        g[rows] += l2 * w[rows]
        m[rows] = B1 * m[rows] + (1 - B1) * g[rows]
        v[rows] = B2 * v[rows] + (1 - B2) * g[rows] ** 2
        w[rows] -= LR * np.sqrt(1 - B2 ** t) / (1 - B1 ** t) * m[rows] / (np.sqrt(v[rows]) + EPS)
        out.append((w.copy(), m.copy(), v.copy()))
    return out


def test_dense_gradients_are_adams_exactly():
    """Four steps on a dense weight: bit-identical to Keras' legacy Adam (its own kernel)."""
    def run(opt):
        w = tf.Variable([[0.3, -1.2, 2.0], [0.01, 0.5, -0.7]])
        for k in range(4):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.sin(w * (k + 1.0)) + w * w)
            opt.apply_gradients([(tape.gradient(loss, w), w)])
        return w.numpy(), opt.get_slot(w, "m").numpy(), opt.get_slot(w, "v").numpy()

    for got, want in zip(run(_optimizer(name="lazy_adam", learning_rate=LR)),
                         run(tf.keras.optimizers.legacy.Adam(LR))):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("lookup", [tf.gather, tf.nn.embedding_lookup], ids=["gather", "embedding_lookup"])
def test_sparse_gradients_update_the_looked_up_rows_only(lookup):
    """Three steps with a repeated row (step 1: row 0 twice) and rows left out (row 0 at step 2;
    rows 1 and 4 always): the looked-up rows follow the formula (repeats summed, the step counter's
    bias correction), every other row keeps its weights and its moments bit for bit."""
    got = _sparse_steps(_optimizer(name="lazy_adam", learning_rate=LR), lookup=lookup)
    want = _lazy_by_hand()
    before = (TABLE0, np.zeros_like(TABLE0), np.zeros_like(TABLE0))
    for (ids, _), step_got, step_want in zip(STEPS, got, want):
        untouched = [r for r in range(len(TABLE0)) if r not in ids]
        for x_got, x_want, x_before in zip(step_got, step_want, before):
            np.testing.assert_allclose(x_got, x_want, rtol=2e-6, atol=1e-7)
            np.testing.assert_array_equal(x_got[untouched], x_before[untouched])
        before = step_got
    np.testing.assert_array_equal(got[-1][0][[1, 4]], TABLE0[[1, 4]])


def test_it_differs_from_adam_in_the_momentum_of_rows_left_out():
    """The same sparse gradients under Keras' Adam: rows never looked up stay put in both; a row
    looked up at every step moves alike; row 0, left out at step 2, moves by its momentum under
    Adam (lr_2 * b1 m / (sqrt(b2 v) + eps), its moments decay) and not at all under lazy Adam."""
    steps = [([0, 2], [[1.0, -2.0], [0.5, 0.25]]), ([2], [[0.3, 0.1]]), ([0, 2], [[0.2, -0.1], [1.5, -3.0]])]
    lazy = _sparse_steps(_optimizer(name="lazy_adam", learning_rate=LR), steps)
    adam = _sparse_steps(_optimizer(name="adam", learning_rate=LR), steps)
    for (wl, ml, vl), (wa, ma, va) in zip(lazy, adam):
        np.testing.assert_array_equal(wl[[1, 3, 4, 5]], TABLE0[[1, 3, 4, 5]])
        np.testing.assert_array_equal(wa[[1, 3, 4, 5]], TABLE0[[1, 3, 4, 5]])
        np.testing.assert_allclose(wl[2], wa[2], rtol=1e-6)
    (w1, m1, v1), (w2l, m2l, v2l), (w2a, m2a, v2a) = lazy[0], lazy[1], adam[1]
    np.testing.assert_array_equal(w2l[0], w1[0])
    np.testing.assert_array_equal(m2l[0], m1[0])
    lr2 = LR * np.sqrt(1 - B2 ** 2) / (1 - B1 ** 2)
    np.testing.assert_allclose(w2a[0], w1[0] - lr2 * B1 * m1[0] / (np.sqrt(B2 * v1[0]) + EPS), rtol=1e-6)
    np.testing.assert_allclose(m2a[0], B1 * m1[0], rtol=1e-6)
    assert np.abs(w2a[0] - w1[0]).min() > 1e-3
    assert np.abs(lazy[2][0][0] - adam[2][0][0]).min() > 1e-4  # and the paths stay apart


def test_l2_decays_the_looked_up_rows_only():
    """Coupled l2 under lazy Adam: g + l2 * w on the looked-up rows (a repeated row decays
    once), the gradient stays sparse, the other rows keep still (Adam's l2 decays every row)."""
    got = _sparse_steps(_optimizer(name="lazy_adam", learning_rate=LR, l2=0.3))
    for step_got, step_want in zip(got, _lazy_by_hand(l2=0.3)):
        for x_got, x_want in zip(step_got, step_want):
            np.testing.assert_allclose(x_got, x_want, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(got[-1][0][[1, 4]], TABLE0[[1, 4]])


@pytest.mark.parametrize("clip", [{"clipnorm": 100.0}, {"options": {"clipvalue": 100.0}},
                                  {"options": {"global_clipnorm": 100.0}}], ids=lambda c: str(c))
def test_clipping_keeps_the_gradient_sparse(clip):
    """Clip options that do not bind: the lazy update of the hand computation, unchanged."""
    got = _sparse_steps(_optimizer(name="lazy_adam", learning_rate=LR, **clip))
    for step_got, step_want in zip(got, _lazy_by_hand()):
        for x_got, x_want in zip(step_got, step_want):
            np.testing.assert_allclose(x_got, x_want, rtol=2e-6, atol=1e-7)


def test_under_loss_scaling_it_is_the_same_update():
    """Wrapped in a LossScaleOptimizer (as mixed_float16 runs are): the scaled loss's unscaled
    sparse gradient reaches lazy Adam, same updates, rows left out untouched."""
    opt = tf.keras.mixed_precision.LossScaleOptimizer(_optimizer(name="lazy_adam", learning_rate=LR))
    table = tf.Variable(TABLE0)
    for (ids, upstream), (w, m, v) in zip(STEPS, _lazy_by_hand()):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, ids) * tf.constant(upstream, tf.float32))
            scaled = opt.get_scaled_loss(loss)
        grad, = opt.get_unscaled_gradients([tape.gradient(scaled, table)])
        assert isinstance(grad, tf.IndexedSlices)
        opt.apply_gradients([(grad, table)])
        np.testing.assert_allclose(table.numpy(), w, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(opt.inner_optimizer.get_slot(table, "m").numpy(), m, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(table.numpy()[[1, 4]], TABLE0[[1, 4]])


_MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    from features import _tfenv
    import tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipeline.optimizers import LazyAdam
    ids = tf.constant([[0, 2], [0, 5]])  # replica 0 looks up rows 0, 2; replica 1 rows 0, 5
    upstream = tf.constant([[[1.0, -2.0], [0.5, 0.25]], [[3.0, 1.0], [-1.0, 0.5]]])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2) / 10 - 0.4)
        opt = LazyAdam(0.05)
    data = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((ids, upstream)).batch(2))

    @tf.function
    def step(batch):
        def replica(i, u):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(table, i) * u)
            grad = tape.gradient(loss, table)
            assert isinstance(grad, tf.IndexedSlices)
            opt.apply_gradients([(grad, table)])
        strategy.run(replica, args=batch)

    for batch in data:
        for _ in range(2):
            step(batch)
    copies = [t.numpy().tolist() for t in table.values]
    print("RESULT" + json.dumps({"replicas": strategy.num_replicas_in_sync, "copies": copies}))
""")


@pytest.mark.slow
def test_mirrored_strategy_applies_the_all_reduced_sparse_gradient():
    """Two replicas (two logical CPUs), each looking up its own rows: the all-reduced slices
    (row 0 from both) make the single-device update of the whole batch on every copy."""
    out = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": REPO})
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, out.stderr[-3000:]
    got = json.loads(line[len("RESULT"):])
    assert got["replicas"] == 2
    steps = [([0, 2, 0, 5], [[1.0, -2.0], [0.5, 0.25], [3.0, 1.0], [-1.0, 0.5]])] * 2
    want = _lazy_by_hand(steps)[-1][0]
    for copy in got["copies"]:
        np.testing.assert_allclose(copy, want, rtol=2e-6, atol=1e-6)  # float32 sums of two replicas: ~1 ulp of the 0.1-sized steps
        np.testing.assert_array_equal(np.array(copy, np.float32)[[1, 3, 4]], TABLE0[[1, 3, 4]])


def test_config_selects_it_and_bad_options_name_the_key():
    cfg = from_dict(TrainConfig, {"data_dir": "d", "optimizer": {"name": "lazy_adam", "learning_rate": 0.01,
                                                                 "options": {"beta_2": 0.99}}})
    opt = make_optimizer(cfg.optimizer)
    assert type(opt) is LazyAdam and opt.get_config()["beta_2"] == pytest.approx(0.99)
    assert type(LazyAdam.from_config(opt.get_config())) is LazyAdam
    for bad, key in [({"options": {"beta2": 0.99}}, r"optimizer\.options\.beta2: unknown option of optimizer "
                                                    r"'lazy_adam'"),
                     ({"options": {"amsgrad": True}}, r"optimizer\.options\.amsgrad = True: lazy_adam has no AMSGrad"),
                     ({"options": {"epsilon": -1.0}}, r"optimizer\.options\.epsilon = -1\.0")]:
        with pytest.raises(ConfigError, match=key):
            from_dict(TrainConfig, {"data_dir": "d", "optimizer": {"name": "lazy_adam", **bad}})
    with pytest.raises(ConfigError, match=r"phase_optimizers\.d\.options\.amsgrad"):
        from_dict(TrainConfig, {"data_dir": "d", "phase_optimizers": {"d": {"name": "lazy_adam",
                                                                              "options": {"amsgrad": True}}}})
    with pytest.raises(ValueError, match="no AMSGrad"):
        LazyAdam(amsgrad=True)


@pytest.mark.slow
def test_a_run_trains_with_it_and_resumes_exactly(sim_data, tmp_path, monkeypatch):
    """``optimizer.name: lazy_adam`` through ``pipeline.train.train``: the embedding tables' sparse
    gradients reach its sparse update; a run killed after epoch 1's backup and started again ends
    with the uninterrupted run's history and weights (the optimizer's moments among them)."""
    sparse_calls = []
    apply_sparse = LazyAdam._resource_apply_sparse

    def counted(self, *args, **kwargs):
        sparse_calls.append(1)
        return apply_sparse(self, *args, **kwargs)

    monkeypatch.setattr(LazyAdam, "_resource_apply_sparse", counted)

    def config(name):
        return train_config(sim_data, tmp_path / "runs", run_name=name, epochs=2, steps_per_epoch=4,
                            optimizer={"name": "lazy_adam", "learning_rate": 0.004}, early_stopping={"patience": 10},
                            **{"model.backbone_options": {"dnn_units": [16]}})

    straight = train(config("straight"))
    assert sparse_calls  # traced: the tables' gradients arrived sparse
    assert straight["history"]["loss"][-1] < straight["history"]["loss"][0]  # it learns

    resumed = killed_then_resumed(config("killed"), 1, monkeypatch)
    assert resumed["history"] == straight["history"]
    a, b = (tf.train.load_checkpoint(str(tmp_path / "runs" / n / "weights" / "model")) for n in ("straight", "killed"))
    keys = [k for k in a.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert any("optimizer/" in k for k in keys) and len(keys) > 4
    for key in keys:
        np.testing.assert_array_equal(b.get_tensor(key), a.get_tensor(key), err_msg=key)
