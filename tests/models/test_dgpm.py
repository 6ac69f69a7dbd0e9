"""DGPM (framework ``dgpm``): the assignment softmax over cosines and the group representation
against numpy; the prediction MLP's parameters sum_g a_g W_g against numpy over r_b and r_grp;
the memory's write against numpy (training only) and its gradient update; FinalMLP refused;
the run-report accessors; option errors; config round trip; a few training steps with dnn and
dcn; mixed precision; SavedModel == Keras (no write when serving)."""
import numpy as np
import pytest

from personalized_fixtures import (assert_round_trip, assert_saved_model_equals_keras, assert_trains, batch, build,
                                   relu, rows, schema)

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from models.factory import build_model
from models.frameworks.personalized import DGPM, GroupMemory
from models.layers import global_policy
from models.options import OptionError


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def hand_assignment(u, keys, temperature=1.0):
    cos = (u / np.linalg.norm(u, axis=1, keepdims=True)) @ (keys / np.linalg.norm(keys, axis=1, keepdims=True)).T
    return softmax(cos / temperature)


def mixed_layer(layer, x, a, act=relu):
    """act(x (sum_g a_g W_g) + sum_g a_g b_g) per sample, from one ConditionedDense's stacked weights."""
    kernels, biases = layer.kernels.numpy(), layer.biases.numpy()
    groups = a.shape[1]
    w = kernels.reshape(kernels.shape[0], groups, -1).transpose(1, 0, 2)  # W_g [in, out]
    return act(np.stack([x[i] @ np.einsum("g,gio->io", a[i], w) for i in range(len(x))]) + a @ biases)


def test_assignment_is_a_softmax_over_cosines_and_r_the_weighted_group_embeddings():
    m = build("dgpm", num_groups=5, temperature=0.5)
    assert isinstance(m, DGPM) and m.user_fields == [0, 1] and m.user_features() == ["user", "age"]
    x = batch(2)[0]
    u = rows(m, x, "user", "age")  # the user-side fields, concatenated
    keys, negatives = m.group_embeddings()
    assert keys.shape == (5, 6) and negatives is None
    a, r = (t.numpy() for t in m.assignment(m.embedding(x)))
    np.testing.assert_allclose(a, hand_assignment(u, keys, 0.5), rtol=1e-5)
    np.testing.assert_allclose(r, a @ keys, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.group_assignment(x).numpy(), a, rtol=1e-6)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("group_input", [True, False])
def test_prediction_parameters_are_the_groups_mixed_by_the_weights(group_input):
    m = build("dgpm", num_groups=3, prediction_units=[4], group_input=group_input)
    x = batch(3)[0]
    emb = m.embedding(x)
    r_b = m.backbone(emb).repr.numpy()  # dnn stays the backbone: DGPM mixes the prediction MLP on r_b
    a, r = (t.numpy() for t in m.assignment(emb))
    inputs = np.concatenate([r_b, r], axis=1) if group_input else r_b
    h = mixed_layer(m.predictor.layers_[0], inputs, a)
    want = mixed_layer(m.predictor.head, h, a, act=lambda v: v)
    np.testing.assert_allclose(m(x, return_forward=True).logits["click"].numpy(), want, rtol=1e-4, atol=1e-5)
    assert not hasattr(m.predictor.layers_[0], "kernel")  # no shared W_0: the groups' parameters only


def test_the_write_moves_each_key_toward_its_users_in_training_only():
    m = build("dgpm", num_groups=4, memory_update="write", write_rate=0.5)
    assert not m.memory.keys.trainable and not m.memory.trainable_variables
    x = batch(4)[0]
    keys = m.group_embeddings()[0]
    m(x, training=False)
    np.testing.assert_array_equal(m.group_embeddings()[0], keys)  # serving never writes
    u = rows(m, x, "user", "age")
    a = hand_assignment(u, keys)
    m(x, training=True)
    want = keys + 0.5 / len(u) * (a.T @ u - a.sum(axis=0)[:, None] * keys)  # e_g += rate/B sum_i a_ig (u_i - e_g)
    np.testing.assert_allclose(m.group_embeddings()[0], want, rtol=1e-5, atol=1e-6)


def test_by_gradient_the_keys_are_trained_weights():
    m = build("dgpm", num_groups=4)
    x, y = batch(5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(y["click"], m(x, training=True)["click"]))
    grad = tape.gradient(loss, m.memory.keys)
    assert m.memory.keys.trainable and float(tf.reduce_sum(tf.abs(grad))) > 0


def test_finalmlp_is_refused():
    with pytest.raises(OptionError, match=r"model\.backbone = 'finalmlp': framework 'dgpm' cannot attach"):
        build_model(schema(), ["click"], backbone="finalmlp", framework="dgpm")


@pytest.mark.parametrize("options,match", [
    ({"memory_update": "moving"}, r"framework_options\.memory_update = 'moving'"),
    ({"write_rate": 1.5}, r"framework_options\.write_rate"),
    ({"num_groups": 0}, r"framework_options\.num_groups"),
    ({"user_roles": ["ad"]}, r"framework_options\.user_roles = \['ad'\]: no embedded field"),
])
def test_bad_options_fail_naming_the_key(options, match):
    with pytest.raises(OptionError, match=match):
        build("dgpm", **options)


@pytest.mark.parametrize("update", ["gradient", "write"])
def test_config_round_trip(update):
    assert_round_trip(build("dgpm", "dcn", num_groups=3, memory_update=update))


@pytest.mark.parametrize("backbone", ["dnn", "dcn"])
def test_trains_a_few_steps(backbone):
    assert_trains(build("dgpm", backbone, num_groups=3, prediction_units=[4]), "group_mlp")


def test_mixed_precision_keeps_the_memory_and_logit_float32():
    with global_policy("mixed_bfloat16"):
        m = build("dgpm", num_groups=3)
        assert m.memory.compute_dtype == "float32" and m.predictor.head.compute_dtype == "float32"
        z = m(batch()[0], return_forward=True).logits["click"]
    assert z.dtype == tf.float32 and np.all(np.isfinite(z.numpy()))
    assert isinstance(m.memory, GroupMemory)


@pytest.mark.slow
def test_saved_model_equals_keras(tmp_path):
    assert_saved_model_equals_keras(tmp_path, "dgpm", "dnn", num_groups=3, prediction_units=[8],
                                    memory_update="write")
