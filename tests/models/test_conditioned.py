"""ConditionedDense / ConditionedMLP (models.layers): per-sample parameters W_0 + sum_h c_h W_h
against numpy, the low-rank form U S(c) V, and the MLP's generator feeding every layer."""
import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from models import layers as L

RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, 4)).astype("float32")
C = RNG.normal(size=(5, 3)).astype("float32")


def _weights(layer, name):
    return {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in layer.weights}[name]


def test_full_rank_is_the_per_sample_kernel_mixture():
    layer = L.ConditionedDense(2)
    layer((X, C))  # builds the weights
    w0, b0 = _weights(layer, "kernel"), _weights(layer, "bias")
    layer.biases.assign(RNG.normal(size=(3, 2)).astype("float32"))  # make the bias mixture visible
    y = layer((X, C)).numpy()
    kernels = _weights(layer, "kernels").reshape(4, 3, 2).transpose(1, 0, 2)  # W_h [in, out] per h
    biases = _weights(layer, "biases")
    for i in range(len(X)):
        w = w0 + np.einsum("h,hio->io", C[i], kernels)
        np.testing.assert_allclose(y[i], X[i] @ w + b0 + C[i] @ biases, rtol=1e-5, atol=1e-5)


def test_low_rank_is_u_s_of_c_v_without_shared_kernel():
    layer = L.ConditionedDense(2, rank=2, shared_kernel=False, activation="relu")
    y = layer((X, C)).numpy()
    assert not hasattr(layer, "kernel")
    u, v, biases = _weights(layer, "u"), _weights(layer, "v"), _weights(layer, "biases")
    s = _weights(layer, "kernels").reshape(2, 3, 2).transpose(1, 0, 2)  # S_h [K, K] per h
    for i in range(len(X)):
        w = u @ np.einsum("h,hkl->kl", C[i], s) @ v
        np.testing.assert_allclose(y[i], np.maximum(X[i] @ w + C[i] @ biases, 0), rtol=1e-5, atol=1e-5)


def test_overparam_is_the_low_rank_layer_of_the_factor_products():
    """APG's over-parameterisation: U = U_l U_r, V = V_l V_r through the inner width P."""
    layer = L.ConditionedDense(2, rank=2, shared_kernel=False, overparam=5)
    y = layer((X, C)).numpy()
    assert not hasattr(layer, "u") and _weights(layer, "u_left").shape == (4, 5)
    u = _weights(layer, "u_left") @ _weights(layer, "u_right")
    v = _weights(layer, "v_left") @ _weights(layer, "v_right")
    plain = L.ConditionedDense(2, rank=2, shared_kernel=False)
    plain((X, C))
    plain.set_weights([u, v, _weights(layer, "kernels"), _weights(layer, "biases")])
    np.testing.assert_allclose(y, plain((X, C)).numpy(), rtol=1e-5, atol=1e-6)
    clone = L.ConditionedDense.from_config(layer.get_config())
    clone((X, C))
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone((X, C)).numpy(), y, rtol=1e-6)


def test_zero_coefficients_give_the_shared_dense_layer():
    layer = L.ConditionedDense(3, activation="tanh")
    y = layer((X, np.zeros_like(C))).numpy()
    np.testing.assert_allclose(y, np.tanh(X @ _weights(layer, "kernel") + _weights(layer, "bias")), rtol=1e-5)


def test_mlp_generator_feeds_every_layer_and_round_trips():
    mlp = L.ConditionedMLP((4, 3), generator_units=(2,), name="f_y")
    h, logit = mlp((X, C))
    assert h.shape == (5, 3) and logit.shape == (5, 1)
    c = mlp.generator(C).numpy()
    x = X
    for layer in mlp.layers_:
        x = layer((x, c))
    np.testing.assert_allclose(logit.numpy(), mlp.head((x, c)).numpy(), rtol=1e-6)
    # the condition changes the output of every sample through the generated parameters
    _, other = mlp((X, C + 1.0))
    assert not np.allclose(logit.numpy(), other.numpy())
    clone = L.ConditionedMLP.from_config(mlp.get_config())
    clone((X, C))
    clone.set_weights(mlp.get_weights())
    np.testing.assert_allclose(clone((X, C))[1].numpy(), logit.numpy(), rtol=1e-6)


def test_generator_gets_gradient_from_the_loss():
    mlp = L.ConditionedMLP((4,), generator_units=(2,))
    with tf.GradientTape() as tape:
        _, logit = mlp((X, C))
        loss = tf.reduce_mean(tf.square(logit))
    grads = tape.gradient(loss, mlp.generator.trainable_variables)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_bad_sizes_fail():
    with pytest.raises(ValueError, match="rank"):
        L.ConditionedDense(2, rank=0)
    with pytest.raises(ValueError, match="overparam"):
        L.ConditionedDense(2, rank=4, overparam=3)
    with pytest.raises(ValueError, match="overparam"):
        L.ConditionedDense(2, overparam=3)
