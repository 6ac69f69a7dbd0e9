"""models.layers.dropout: the ``bits`` dropout (16-bit integer draws against a threshold, one
multiply, custom gradient) keeps Keras' semantics, draws per step seed, computes in the compute
dtype and trains like the previous ``uniform`` (tf.nn stateless_dropout) implementation."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from models import layers as L

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "pipeline"))
from train_helpers import train_config  # noqa: E402
SEED = tf.constant([7, 11], tf.int64)


def _drop(x, rate, seed=SEED, impl=None):
    with L.step_seed(seed):
        return L.dropout(x, rate, impl)


def _positive(shape, dtype=tf.float32, seed=0):
    """Values in [1, 2): a zero of the output is a dropped unit."""
    return tf.cast(tf.random.stateless_uniform(shape, [seed, 1], 1.0, 2.0), dtype)


def test_threshold_is_rate_on_the_1_65536_grid_and_degenerate_rates_are_refused():
    assert L.dropout_threshold(0.0) == 0
    assert L.dropout_threshold(0.5) == 32768
    assert L.dropout_threshold(0.2) == 13107  # drop probability 13107 / 65536 = 0.19999695
    for rate in (0.1, 0.2, 0.3, 0.75, 0.9, 2 ** -16, 1 - 2 ** -16):
        assert abs(L.dropout_threshold(rate) / 65536 - rate) <= 2 ** -17
    for rate in (1e-6, 1 - 1e-6, 1.0, -0.1):
        with pytest.raises(ValueError, match="dropout rate"):
            L.dropout_threshold(rate)


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5, 0.7])
def test_drop_rate_is_the_thresholds_exact_probability(rate):
    """Over 2^22 units (an odd count too: the last 32-bit draw's half is cut) the empirical
    drop rate is T / 65536 within 5 binomial standard deviations (~1e-3 at 0.2), and the two
    16-bit halves of one 32-bit draw are independent (both dropped: p^2)."""
    p = L.dropout_threshold(rate) / 65536
    for shape in ([2048, 2048], [1023, 4097]):
        dropped = (_drop(tf.ones(shape), rate).numpy() == 0).reshape(-1)
        n = dropped.size
        assert abs(dropped.mean() - p) <= 5 * np.sqrt(p * (1 - p) / n), (shape, dropped.mean(), p)
    pairs = dropped[:n - n % 2].reshape(-1, 2)
    both, m = (pairs[:, 0] & pairs[:, 1]).mean(), len(pairs)
    assert abs(both - p * p) <= 5 * np.sqrt(p * p * (1 - p * p) / m), (both, p * p)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
def test_kept_units_are_scaled_as_keras_does_and_gradient_is_dy_mask_scale(dtype):
    """Kept values are x * (1 / (1 - rate) in x's dtype), exactly Keras' (tf.nn.dropout's) values,
    within one rounding of x / (1 - rate); the gradient is dy * mask * scale, the mask read from the
    forward output."""
    rate = 0.3
    x = tf.Variable(_positive([64, 50], dtype))
    dy = _positive([64, 50], dtype, seed=3)
    with tf.GradientTape() as tape:
        y = _drop(x, rate)
        loss = tf.reduce_sum(tf.cast(y * dy, tf.float32))
    assert y.dtype == dtype
    grad = tape.gradient(loss, x)
    y, xv, dyv = y.numpy(), x.numpy(), dy.numpy()
    kept = y != 0
    assert 0.6 < kept.mean() < 0.8
    scale = tf.constant(1 / (1 - rate), dtype).numpy()
    np.testing.assert_array_equal(y[kept], (xv * scale)[kept])
    keras = tf.nn.dropout(x, rate).numpy()  # a mask of its own: compare where both kept
    both = kept & (keras != 0)
    np.testing.assert_array_equal(y[both], keras[both])
    eps = {tf.float32: 2 ** -23, tf.bfloat16: 2 ** -7, tf.float16: 2 ** -10}[dtype]
    exact = xv.astype(np.float64) / (1 - rate)
    assert np.all(np.abs(y[kept].astype(np.float64) - exact[kept]) <= 2 * eps * exact[kept])
    mask_scale = np.where(kept, scale, np.zeros_like(scale))
    np.testing.assert_array_equal(grad.numpy(), dyv * mask_scale)


def test_same_step_same_mask_next_step_another_and_ops_draw_apart():
    x = tf.ones([256, 64])
    first, again = _drop(x, 0.5), _drop(x, 0.5)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert np.mean(first.numpy() != _drop(x, 0.5, tf.constant([7, 12], tf.int64)).numpy()) > 0.3
    with L.step_seed(SEED):  # two dropout ops in one step draw from folds of their own
        a, b = L.dropout(x, 0.5), L.dropout(x, 0.5)
    assert np.mean(a.numpy() != b.numpy()) > 0.3
    np.testing.assert_array_equal(a.numpy(), first.numpy())


def test_graph_dynamic_shape_and_eager_draw_the_same_mask():
    x = _positive([33, 7])  # odd size: the last 32-bit draw's second half is cut

    @tf.function(input_signature=[tf.TensorSpec([None, 7])])
    def dynamic(v):
        return _drop(v, 0.4)

    np.testing.assert_array_equal(dynamic(x).numpy(), _drop(x, 0.4).numpy())


def test_identity_at_inference_and_rate_zero():
    x = _positive([32, 16])
    np.testing.assert_array_equal(_drop(x, 0.0).numpy(), x.numpy())
    mlp = L.MLP([16, 8], dropout=0.5)
    clean = L.MLP([16, 8], dropout=0.0)
    mlp(x), clean(x)
    clean.set_weights(mlp.get_weights())
    with L.step_seed(SEED):
        np.testing.assert_array_equal(mlp(x, training=False).numpy(), clean(x, training=True).numpy())
        assert np.abs(mlp(x, training=True).numpy() - clean(x).numpy()).max() > 1e-3


def test_outside_a_step_the_draw_is_stateful_and_seeded():
    x = tf.ones([128, 32])
    tf.random.set_seed(5)
    a = L.dropout(x, 0.5).numpy()
    b = L.dropout(x, 0.5).numpy()
    tf.random.set_seed(5)
    np.testing.assert_array_equal(L.dropout(x, 0.5).numpy(), a)
    assert np.mean(a != b) > 0.3 and set(np.unique(a)) == {0.0, 2.0}


def test_uniform_impl_is_the_previous_stateless_dropout():
    x = _positive([64, 32])
    with L.step_seed(SEED, dropout_impl="uniform"):
        got = L.dropout(x, 0.2)
    want = tf.nn.experimental.stateless_dropout(x, 0.2, tf.random.experimental.stateless_fold_in(SEED, 1))
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert np.mean(got.numpy() != _drop(x, 0.2).numpy()) > 0.1  # bits draws another mask
    with pytest.raises(ValueError, match="dropout_impl"):
        L.step_seed(SEED, dropout_impl="keras").__enter__()


def test_step_randomness_takes_the_compiled_impl():
    from models.steps import step_randomness

    x = _positive([64, 32])
    model = types.SimpleNamespace(optimizer=types.SimpleNamespace(iterations=tf.Variable(4, dtype=tf.int64)))
    outs = {}
    for impl in (None, "bits", "uniform"):
        if impl:
            model.dropout_impl = impl
        with step_randomness(model):
            outs[impl] = L.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(outs[None], outs["bits"])
    assert np.mean(outs["bits"] != outs["uniform"]) > 0.3


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_masks_in_the_compute_dtype_without_float32(policy):
    """An MLP's hidden layers (the mixed policy) drop in the compute dtype, and the traced dropout
    of a 16-bit tensor holds no float32 tensor and no cast (mask and scale built in 16 bits)."""
    with L.global_policy(policy):
        mlp = L.MLP([16, 8, 4], dropout=0.5)
    compute = tf.as_dtype(mlp.dense[1].compute_dtype)
    assert compute != tf.float32
    x = _positive([32, 16])
    with L.step_seed(SEED):
        y = mlp(x, training=True)
    assert y.dtype == compute and np.isfinite(y.numpy().astype(np.float32)).all()

    graph = tf.function(lambda v: _drop(v, 0.2)).get_concrete_function(tf.TensorSpec([32, 16], compute)).graph
    dtypes = {t.dtype for op in graph.get_operations() for t in op.outputs}
    assert tf.float32 not in dtypes and "Cast" not in {op.type for op in graph.get_operations()}, dtypes


def _train_step(x, w, rate):
    with L.step_seed(SEED), tf.GradientTape() as tape:
        loss = tf.reduce_sum(L.dropout(x * w, rate) ** 2)
    return loss, tape.gradient(loss, w)


def test_mirrored_strategy_one_device_matches_no_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x = _positive([64, 16])
    with strategy.scope():
        w = tf.Variable(tf.ones([16]))
    step = tf.function(lambda: strategy.run(_train_step, args=(x, w, 0.2)))
    loss, grad = step()
    want_loss, want_grad = _train_step(x, tf.Variable(tf.ones([16])), 0.2)
    np.testing.assert_allclose(loss.numpy(), want_loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), want_grad.numpy(), rtol=1e-6)


_TWO_REPLICAS = r"""
import features._tfenv  # noqa: F401
import numpy as np
import tensorflow as tf
cpu, = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from models import layers as L
from models.steps import step_randomness

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    w = tf.Variable(tf.ones([64]))
    model = type("M", (), {"optimizer": type("O", (), {"iterations": tf.Variable(3, dtype=tf.int64)})()})()

def replica():
    with step_randomness(model), tf.GradientTape() as tape:
        y = L.dropout(tf.ones([128, 64]) * w, 0.5)
        loss = tf.reduce_sum(y)
    return y, tape.gradient(loss, w)

ys, grads = tf.function(lambda: strategy.run(replica))()
a, b = [t.numpy() for t in strategy.experimental_local_results(ys)]
g = strategy.reduce("SUM", grads, axis=None).numpy()  # the replicas' gradients summed (as an optimizer does)
for y in (a, b):
    assert set(np.unique(y)) == {0.0, 2.0} and 0.45 < (y == 0).mean() < 0.55
assert np.mean(a != b) > 0.4, "replicas draw masks of their own"
np.testing.assert_array_equal(g, a.sum(0) + b.sum(0))
print("ok")
"""


def test_mirrored_strategy_two_logical_cpus_each_replica_draws_its_own_mask():
    """Two replicas in sync fold their id into the step's seed: distinct masks, each a correct
    dropout, and the summed gradient is each replica's dy * mask * scale summed."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _TWO_REPLICAS], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_mlp_config_round_trips_and_rebuilt_layer_drops_the_same():
    x = _positive([16, 12])
    mlp = L.MLP([8, 4], dropout=0.25, name="m")
    mlp(x)
    again = L.MLP.from_config(mlp.get_config())
    again(x)
    again.set_weights(mlp.get_weights())
    assert again.get_config() == mlp.get_config()
    with L.step_seed(SEED):
        a = mlp(x, training=True)
    with L.step_seed(SEED):
        b = again(x, training=True)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_train_config_dropout_impl_is_checked(tmp_path):
    from pipeline.config import ConfigError

    assert train_config(str(tmp_path), tmp_path).dropout_impl == "bits"
    assert train_config(str(tmp_path), tmp_path, dropout_impl="uniform").dropout_impl == "uniform"
    with pytest.raises(ConfigError, match="dropout_impl"):
        train_config(str(tmp_path), tmp_path, dropout_impl="keras")


def test_a_run_recorded_before_dropout_impl_resumes_only_as_uniform(tmp_path):
    """Its config.yaml has no dropout_impl: it ran tf.nn's stateless dropout."""
    import dataclasses

    from pipeline import runs

    new = dataclasses.asdict(train_config(str(tmp_path), tmp_path))
    old = {k: v for k, v in new.items() if k != "dropout_impl"}
    assert runs.config_differences(old, new) == ["dropout_impl"]
    assert runs.config_differences(old, {**new, "dropout_impl": "uniform"}) == []
    assert runs.config_differences(new, new) == []


@pytest.mark.slow
def test_bits_dropout_trains_like_the_previous_uniform_dropout(sim_data, tmp_path):
    """A DNN with dropout 0.2 on the simulator, 3 seeds, paired: the ``bits`` and ``uniform``
    implementations reach the same best validation AUC within noise."""
    from pipeline.train import train

    aucs = {}
    for impl in ("bits", "uniform"):
        for seed in (1, 2, 3):
            cfg = train_config(sim_data, tmp_path, run_name=f"{impl}-{seed}", seed=seed, dropout_impl=impl,
                               **{"model.backbone_options.dnn_dropout": 0.2})
            aucs[impl, seed] = max(train(cfg)["history"]["val_auc"])
    diffs = [aucs["bits", s] - aucs["uniform", s] for s in (1, 2, 3)]
    print("best val_auc", aucs)
    assert min(aucs.values()) > 0.6, aucs
    assert abs(np.mean(diffs)) < 0.005 and max(abs(d) for d in diffs) < 0.01, aucs
