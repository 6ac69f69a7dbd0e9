"""APG (framework ``apg``): a generated layer h = act(x U S(z) V + b(z)) against numpy with the
generator, the over-parameterised U / V and the generator's output bias; the self-wise condition;
the condition read from the user-side fields only; the generated MLP as dnn's own MLP and as the
prediction MLP on another backbone's r_b; option errors; config round trip; a few training steps
with dnn and dcn; mixed precision; SavedModel == Keras."""
import numpy as np
import pytest

from personalized_fixtures import (assert_round_trip, assert_saved_model_equals_keras, assert_trains, batch, build,
                                   dense, relu, rows)

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from models.frameworks.personalized import APG, GeneratedMLP
from models.layers import global_policy
from models.options import OptionError

RNG = np.random.default_rng(0)


def weights(layer) -> dict:
    return {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in layer.weights}


def generated_layer(layer, x, c, act=relu):
    """act(x U S(c) V + c B) of one ConditionedDense (rank K, shared U / V, no shared kernel), by hand."""
    w = weights(layer)
    u, v = (w["u"], w["v"]) if "u" in w else (w["u_left"] @ w["u_right"], w["v_left"] @ w["v_right"])
    k = u.shape[1]
    s = w["kernels"].reshape(k, c.shape[1], k).transpose(1, 0, 2)  # S_h [K, K] per coefficient h
    out = np.stack([x[i] @ u @ np.einsum("h,hkl->kl", c[i], s) @ v for i in range(len(x))])
    return act(out + c @ w["biases"])


def perturbed(layer):
    for v in layer.trainable_variables:
        if not np.any(v.numpy()):
            v.assign(RNG.normal(0.0, 0.5, v.shape))
    return layer


def test_generated_layer_is_u_s_of_z_v_with_the_generators_output_bias():
    """Sec. 3.3: S(z), b(z) = A G(z) + a from the layer's own generator, U = U_l U_r, V = V_l V_r."""
    x, z = RNG.normal(size=(6, 7)).astype("float32"), RNG.normal(size=(6, 4)).astype("float32")
    mlp = GeneratedMLP(units=(3,), rank=2, overparam=4, generator_units=(5,))
    mlp((x, z))
    perturbed(mlp)
    h, logit = (t.numpy() for t in mlp((x, z)))
    gen = mlp.generators[0].dense[0]
    c = np.concatenate([relu(dense(gen, z)), np.ones((6, 1))], axis=1)  # [G(z), 1]: the 1 carries a
    assert mlp.dense[0].kernels.shape == (2, 6 * 2)  # S_h for the 5 generator units and the constant
    want = generated_layer(mlp.dense[0], x, c)
    np.testing.assert_allclose(h, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logit, dense(mlp.head, want), rtol=1e-4, atol=1e-5)
    # z changes every sample's parameters; with G(z) = 0 the layer is the static U S_0 V + b_0
    other = mlp((x, z + 1.0))[0].numpy()
    assert np.max(np.abs(other - h)) > 1e-3


def test_self_wise_condition_is_each_layers_own_input():
    x = RNG.normal(size=(5, 4)).astype("float32")
    mlp = GeneratedMLP(units=(3, 2), rank=2, overparam=None, generator_units=(), self_wise=True)
    mlp((x, np.zeros((5, 0), "float32")))
    perturbed(mlp)
    h, _ = mlp((x, np.zeros((5, 0), "float32")))
    one = np.ones((5, 1))
    h1 = generated_layer(mlp.dense[0], x, np.concatenate([x, one], axis=1))
    h2 = generated_layer(mlp.dense[1], h1, np.concatenate([h1, one], axis=1))
    np.testing.assert_allclose(h.numpy(), h2, rtol=1e-4, atol=1e-5)


def test_dnn_is_replaced_by_the_generated_mlp_conditioned_on_the_user_fields():
    m = build("apg", generator_units=[4], rank=2, overparam=3)
    assert m.backbone is None and m.mlp.units == [6] and isinstance(m, APG)
    x = batch(2)[0]
    z = rows(m, x, "user", "age")  # personal + user roles, in field order
    emb = m.embedding(x)
    np.testing.assert_allclose(m.condition(emb).numpy(), z, rtol=1e-6)
    flat = rows(m, x, "user", "age", "item", "pos")  # dnn's input: every field
    c = np.concatenate([relu(dense(m.mlp.generators[0].dense[0], z)), np.ones((len(z), 1))], axis=1)
    want = dense(m.mlp.head, generated_layer(m.mlp.dense[0], flat, c))
    np.testing.assert_allclose(m(x, return_forward=True).logits["click"].numpy(), want, rtol=1e-4, atol=1e-5)
    # an item id changes the input, never the generated parameters
    moved = dict(x, item=(x["item"] + 1) % 11)
    np.testing.assert_allclose(m.condition(m.embedding(moved)).numpy(), z, rtol=1e-6)


def test_over_another_backbone_the_generated_mlp_is_the_prediction_mlp_on_r_b():
    m = build("apg", "dcn", prediction_units=[5, 3], generator_units=[], rank=2, overparam=0)
    assert m.mlp.units == [5, 3] and m.mlp.dense[0].overparam is None
    x = batch(3)[0]
    emb = m.embedding(x)
    r_b = m.backbone(emb).repr
    _, want = m.mlp((r_b, m.condition(emb)))
    np.testing.assert_allclose(m(x, return_forward=True).logits["click"].numpy(), want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("options,match", [
    ({"rank": 8, "overparam": 4}, r"framework_options\.overparam = 4: .* at least the rank"),
    ({"user_roles": ["nobody"]}, r"framework_options\.user_roles = \['nobody'\]: expected a list of roles"),
    ({"user_roles": ["sequence"]}, r"framework_options\.user_roles = \['sequence'\]: no embedded field"),
    ({"condition": "item"}, r"framework_options\.condition = 'item'"),
    ({"generator_activation": "nope"}, r"framework_options\.generator_activation"),
])
def test_bad_options_fail_naming_the_key(options, match):
    with pytest.raises(OptionError, match=match):
        build("apg", **options)


def test_dnn_batch_norm_cannot_be_made_generated():
    from personalized_fixtures import schema
    from models.factory import build_model

    with pytest.raises(OptionError, match=r"backbone_options\.dnn_batch_norm"):
        build_model(schema(), ["click"], backbone="dnn", backbone_options={"dnn_batch_norm": True}, framework="apg")


@pytest.mark.parametrize("condition", ["user", "self"])
def test_config_round_trip(condition):
    assert_round_trip(build("apg", condition=condition, generator_units=[4], rank=2, overparam=3))


@pytest.mark.parametrize("backbone", ["dnn", "dcn"])
def test_trains_a_few_steps(backbone):
    assert_trains(build("apg", backbone, generator_units=[4], prediction_units=[4]), "apg")


def test_mixed_precision_keeps_the_condition_and_logit_float32():
    with global_policy("mixed_bfloat16"):
        m = build("apg", generator_units=[4])
        assert m.mlp.generators[0].dense[0].compute_dtype == "float32" and m.mlp.head.compute_dtype == "float32"
        z = m(batch()[0], return_forward=True).logits["click"]
    assert z.dtype == tf.float32 and np.all(np.isfinite(z.numpy()))


@pytest.mark.slow
def test_saved_model_equals_keras(tmp_path):
    assert_saved_model_equals_keras(tmp_path, "apg", "dnn", generator_units=[8])
