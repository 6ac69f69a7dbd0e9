"""PEPNet (framework ``pepnet``): Gate NU's 2 * sigmoid against numpy; EPNet's field scaling and
PPNet's hidden-unit scaling against numpy on the model's own embeddings; the stop-gradient (the
gates train the domain / prior fields they read, never the general embeddings); the ablations;
option errors; config round trip; a few training steps with dnn and dcn; mixed precision;
SavedModel == Keras."""
import numpy as np
import pytest

from personalized_fixtures import (assert_round_trip, assert_saved_model_equals_keras, assert_trains, batch, build,
                                   dense, relu, rows, sigmoid)

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from models.frameworks.personalized import GateNU, PEPNet, PPNetMLP
from models.layers import Tower, global_policy
from models.options import OptionError

RNG = np.random.default_rng(0)
FIELD_ORDER = ("user", "age", "item", "pos")


def gate(layer: GateNU, x):
    """gamma * sigmoid(ReLU(x W + b) W' + b') (Eq. 1-2)."""
    return layer.gamma * sigmoid(dense(layer.out, relu(dense(layer.hidden, x))))


def test_gate_nu_is_gamma_times_sigmoid_of_a_relu_layer():
    x = RNG.normal(size=(8, 5)).astype("float32")
    layer = GateNU(3, hidden_units=4)
    layer(x)
    layer.hidden.bias.assign(RNG.normal(size=4))
    layer.out.bias.assign(RNG.normal(size=3))
    delta = layer(x).numpy()
    np.testing.assert_allclose(delta, gate(layer, x), rtol=1e-5)
    assert delta.shape == (8, 3) and np.all((delta > 0) & (delta < 2)) and delta.max() > 1.0  # it can amplify
    wide = GateNU(3, 4, gamma=3.0)
    wide(x)
    wide.set_weights(layer.get_weights())
    np.testing.assert_allclose(wide(x).numpy(), 1.5 * delta, rtol=1e-5)


def test_epnet_scales_each_field_by_the_domain_gate_and_ppnet_each_hidden_layer():
    m = build("pepnet", gate_units=4)
    assert isinstance(m, PEPNet) and m.domain_fields == [3] and m.prior_fields == [0, 1]
    x = batch(2)[0]
    e = rows(m, x, *FIELD_ORDER)  # E, flat [B, 4 * 3]
    delta = gate(m.epnet, np.concatenate([rows(m, x, "pos"), e], axis=1))  # Eq. 3: [E(F_d), sg(E)]
    assert delta.shape == (len(e), 4)
    o_ep = (e.reshape(-1, 4, 3) * delta[:, :, None]).reshape(len(e), -1)  # Eq. 4, one scale per field
    emb = m.embedding(x)
    np.testing.assert_allclose(m.personalized_fields(emb.fields).numpy().reshape(len(e), -1), o_ep, rtol=1e-5)
    p = np.concatenate([rows(m, x, "user", "age"), o_ep], axis=1)  # Eq. 5: [E(F_prior), sg(O_ep)]
    layer = m.mlp
    h = relu(dense(layer.dense[0], o_ep)) * gate(layer.gates[0], p)  # Eq. 6-8: dnn's MLP, gated
    np.testing.assert_allclose(m(x, return_forward=True).logits["click"].numpy(), dense(layer.head, h),
                               rtol=1e-4, atol=1e-5)


def test_the_gates_train_their_prior_fields_but_not_the_general_embeddings():
    m = build("pepnet", "dcn", gate_units=4)
    x, y = batch(3)
    tables = {f: m.embedding.tables[0][f]["embedding"] for f in FIELD_ORDER}

    def norms(loss_of):
        with tf.GradientTape() as tape:
            loss = loss_of()
        grads = tape.gradient(loss, list(tables.values()))
        return {f: 0.0 if g is None else float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g))))
                for f, g in zip(tables, grads)}

    def epnet_gate():
        return tf.reduce_sum(m.domain_gate(m.embedding(x).fields))

    def ppnet_gates():
        fields = m.embedding(x).fields
        p = m.gate_input(fields, m.personalized_fields(fields))
        return tf.add_n([tf.reduce_sum(g(p)) for g in m.mlp.gates])

    ep, pp = norms(epnet_gate), norms(ppnet_gates)
    assert ep["pos"] > 0 and ep["user"] == ep["age"] == ep["item"] == 0.0, ep  # only E(F_d) has a gradient
    assert pp["user"] > 0 and pp["age"] > 0 and pp["item"] == pp["pos"] == 0.0, pp  # E(F_prior) only: sg(O_ep)
    loss = norms(lambda: tf.reduce_mean(tf.keras.losses.binary_crossentropy(y["click"], m(x, training=True)["click"])))
    assert all(v > 0 for v in loss.values()), loss  # the general path still trains every table


def test_ablations_switch_a_part_off():
    x = batch(4)[0]
    no_ep = build("pepnet", epnet=False)
    assert no_ep.epnet is None and not no_ep.domain_fields
    fields = no_ep.embedding(x).fields
    np.testing.assert_array_equal(no_ep.personalized_fields(fields).numpy(), fields.numpy())
    no_pp = build("pepnet", "dcn", ppnet=False, prediction_units=[5])
    assert isinstance(no_pp.mlp, Tower) and not isinstance(no_pp.mlp, PPNetMLP) and not no_pp.prior_fields
    emb = no_pp.embedding(x)
    r_b = no_pp.backbone(emb._replace(fields=no_pp.personalized_fields(emb.fields))).repr
    np.testing.assert_allclose(no_pp(x, return_forward=True).logits["click"].numpy(), no_pp.mlp(r_b)[1].numpy(),
                               rtol=1e-6)
    assert build("pepnet", domain_roles=[]).domain_fields == []  # EPNet on sg(E) alone


@pytest.mark.parametrize("options,match", [
    ({"prior_roles": ["ads"]}, r"framework_options\.prior_roles = \['ads'\]: expected a list of roles"),
    ({"domain_roles": ["ad"]}, r"framework_options\.domain_roles = \['ad'\]: no embedded field"),
    ({"gamma": 0.0}, r"framework_options\.gamma"),
    ({"gate_units": 0}, r"framework_options\.gate_units"),
])
def test_bad_options_fail_naming_the_key(options, match):
    with pytest.raises(OptionError, match=match):
        build("pepnet", **options)


@pytest.mark.parametrize("backbone", ["dnn", "dcn"])
def test_config_round_trip(backbone):
    assert_round_trip(build("pepnet", backbone, gate_units=4, gamma=1.5))


@pytest.mark.parametrize("backbone", ["dnn", "dcn"])
def test_trains_a_few_steps(backbone):
    assert_trains(build("pepnet", backbone, gate_units=4), "epnet")


def test_mixed_precision_keeps_the_gates_and_logit_float32():
    with global_policy("mixed_bfloat16"):
        m = build("pepnet", "dcn", gate_units=4)
        assert m.epnet.compute_dtype == "float32" and m.mlp.gates[0].compute_dtype == "float32"
        z = m(batch()[0], return_forward=True).logits["click"]
    assert z.dtype == tf.float32 and np.all(np.isfinite(z.numpy()))


@pytest.mark.slow
def test_saved_model_equals_keras(tmp_path):
    assert_saved_model_equals_keras(tmp_path, "pepnet", "dcn", gate_units=8, prediction_units=[8])
