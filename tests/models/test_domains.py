"""User domains from a categorical feature (models/domains.py) and the experts framework's
``domain_feature`` option (MMoE / PLE by user group, GPRec §IV-A3): the id -> domain map, the
in-graph selection against a hand one-hot selection, MMoE by domain against a numpy computation,
a row's prediction and gradient touching only its own domain's gate and tower, the gates
analysis per row's domain, option errors and config round trips."""
from __future__ import annotations

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.domains import domains_of, select_domain
from models.factory import build_model, check_model_options
from models.options import OptionError

SIZES = {"gender": 5, "user": 9, "item": 11}  # gender: ids 2, 3, 4 are values -> 4 domains with unknown
B = 32


def schema() -> Schema:
    feats = [Feature("gender", "categorical", "string", "user", {"type": "vocab"}, num_ids=SIZES["gender"]),
             Feature("user", "categorical", "string", "personal", {"type": "vocab"}, num_ids=SIZES["user"]),
             Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=SIZES["item"]),
             Feature("hist", "sequence", "string", "sequence", {"type": "sequence_vocab"}, num_ids=11, width=3),
             Feature("price", "numeric", "float32", "item", {"type": "identity"}, encoded_dtype="float32")]
    return Schema(features=feats, labels=["click", "conv"])


def batch(seed=0, n=B):
    rng = np.random.default_rng(seed)
    x = {f: rng.integers(0, SIZES[f], (n, 1)).astype(np.int64) for f in SIZES}
    x["gender"][:6, 0] = [0, 1, 2, 3, 4, 4]  # every domain present
    x["hist"] = rng.integers(0, 11, (n, 3)).astype(np.int64)
    x["price"] = rng.normal(size=(n, 1)).astype(np.float32)
    y = {t: rng.integers(0, 2, (n, 1)).astype(np.float32) for t in ("click", "conv")}
    return x, y


def perturb(model, seed=0, scale=0.5):
    """Positive random values for zero-initialised weights: a hand computation ignoring them fails."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        if not np.any(v.numpy()):
            v.assign(np.abs(rng.normal(0.0, scale, v.shape)).astype(np.float32))


def build(framework="mmoe", seed=0, **options):
    tf.keras.utils.set_random_seed(seed)
    m = build_model(schema().to_dict(), ["click"], backbone="dnn", backbone_options={"dnn_units": [4]},
                    embedding_dim=4, embedding_options={"initializer_stddev": 0.5}, framework=framework,
                    framework_options={"tower_units": [3], "domain_feature": "gender", **options})
    m(batch()[0])
    perturb(m, seed)
    return m


def logit(model, x):
    return model(x, training=False, return_forward=True).logits["click"].numpy()


# ---- the domain of a row ------------------------------------------------------------------------
def test_padding_and_oov_form_the_unknown_domain_and_each_value_its_own():
    d = domains_of(schema(), "gender")
    assert d.count == 4 and d.names == ["gender_unknown", "gender_2", "gender_3", "gender_4"]
    ids = np.array([[0], [1], [2], [3], [4], [5], [-3]], np.int64)  # 5 and -3: out of the table -> unknown
    np.testing.assert_array_equal(d.index({"gender": tf.constant(ids)}).numpy(), [0, 0, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(d.one_hot({"gender": tf.constant(ids)}).numpy(), np.eye(4)[[0, 0, 1, 2, 3, 0, 0]])


@pytest.mark.parametrize("feature,match", [
    ("age", r"framework_options\.domain_feature = 'age': the schema has no feature 'age'"),
    ("hist", r"domain_feature = 'hist': .*scalar categorical.*width 3.*\['gender', 'user', 'item'\]"),
    ("price", r"domain_feature = 'price': .*numeric with encoding 'identity'"),
])
def test_a_domain_feature_must_be_a_scalar_categorical_feature(feature, match):
    with pytest.raises(OptionError, match=match):
        domains_of(schema(), feature)


def test_select_domain_equals_a_hand_one_hot_selection():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(B, 4, 3)).astype(np.float32)
    index = rng.integers(0, 4, B)
    got = select_domain(tf.constant(values), tf.constant(index)).numpy()
    np.testing.assert_array_equal(got, np.einsum("br,brh->bh", np.eye(4)[index], values))
    # the other domains' entries get no gradient
    v = tf.Variable(values)
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(select_domain(v, tf.constant(index)))
    np.testing.assert_array_equal(tape.gradient(out, v).numpy(), np.eye(4)[index][:, :, None] * np.ones(3))


# ---- MMoE by domain against numpy ------------------------------------------------------------------
def relu(x):
    return np.maximum(x, 0.0)


def dense(layer, x):
    return x @ layer.kernel.numpy() + layer.bias.numpy()


def mlp(layer, x):
    for d in layer.dense:
        x = relu(dense(d, x))
    return x


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_mmoe_by_domain_scores_each_row_with_its_own_domains_gate_and_tower():
    """MMoE Eq. 5-6 with a gate and tower per gender: z_i = F_{d_i}(sum_e softmax(W_{d_i} x_i)_e h_e(x_i))."""
    m = build("mmoe", experts=[{"table": 0, "count": 3}])
    assert m.routes == ["gender_unknown", "gender_2", "gender_3", "gender_4"]
    assert sorted(m.towers) == sorted(m.routes) and sorted(m.gates) == [f"gate_0_{r}" for r in sorted(m.routes)]
    x = batch(2)[0]
    e = m.embeddings[0](x).fields.numpy().reshape(B, -1)  # the flattened fields every gate and expert reads
    h = np.stack([mlp(m.experts[i].tower.mlp, e) for i in range(3)], axis=1)
    per_domain = []
    for r in m.routes:
        g = softmax(dense(m.gates[f"gate_0_{r}"].out, e))
        t = m.towers[r]
        per_domain.append(dense(t.head, mlp(t.mlp, np.einsum("be,beh->bh", g, h))))
    ids = x["gender"][:, 0]
    domain = np.where(ids >= 2, ids - 1, 0)
    want = np.einsum("br,brk->bk", np.eye(4)[domain], np.stack(per_domain, axis=1))  # the hand one-hot selection
    np.testing.assert_allclose(logit(m, x), want, rtol=1e-4, atol=1e-5)
    assert np.std(want) > 1e-3


# ---- a row reads its own domain only ----------------------------------------------------------------
@pytest.mark.parametrize("framework,options", [("mmoe", {}), ("ple", {}), ("ple", {"levels": 1})])
def test_a_rows_prediction_and_gradient_touch_only_its_own_domains_gate_and_tower(framework, options):
    """Changing domain q's tower and gates leaves every other row's logit as it was, and the other
    rows' loss has no gradient there. A domain's own expert is its own too under CGC (one PLE level);
    with two levels PLE's shared gate mixes every expert, domain q's included, into the shared
    expert above (Eq. 4-5), so other domains read it there, as the paper builds it."""
    m = build(framework, **options)
    x, y = batch(3)
    domain = m.domains.index(x).numpy()
    q = 2  # gender_3
    others = domain != q
    assert others.any() and (~others).any()
    before = logit(m, x)
    route = m.routes[q]
    owned = [m.towers[route], *[g for name, g in m.gates.items() if name.endswith(route)]]
    if options.get("levels") == 1:
        owned += [e for e, p in zip(m.experts, m.plan) if p.owner == q]
    assert len(owned) == {"mmoe": 2, "ple": 3}[framework]  # tower and gate(s) (ple: two levels' gates, or CGC's + expert)
    for layer in owned:
        for v in layer.trainable_variables:
            v.assign(v * 1.7 + 0.3)
    after = logit(m, x)
    np.testing.assert_array_equal(after[others], before[others])
    assert np.all(np.abs(after[~others] - before[~others]) > 1e-6)

    keep = tf.constant(others[:, None], tf.float32)  # the loss of the other domains' rows
    with tf.GradientTape() as tape:
        z = m(x, training=True, return_forward=True).logits["click"]
        loss = tf.reduce_sum(keep * tf.nn.sigmoid_cross_entropy_with_logits(y["click"], z))
    variables = [v for layer in owned for v in layer.trainable_variables]
    grads = tape.gradient(loss, variables + m.towers[m.routes[1]].trainable_variables)
    assert all(g is None or not np.any(tf.convert_to_tensor(g).numpy()) for g in grads[:len(variables)])
    assert any(np.any(tf.convert_to_tensor(g).numpy()) for g in grads[len(variables):])


def test_ple_by_domain_has_one_task_specific_expert_per_domain():
    m = build("ple")
    assert [(e.owner, e.table) for e in m.plan] == [(0, 0), (1, 0), (2, 0), (3, 0), (None, 0)]
    assert sorted(m.gates) == sorted([f"gate_{level}_{r}" for level in (0, 1) for r in m.routes]
                                     + ["gate_0_shared"])


def test_gate_weights_per_table_are_each_rows_own_domains():
    m = build("me")
    x = batch(4)[0]
    weights = m.table_weights(x)["click"].numpy()
    domain = m.domains.index(x).numpy()
    per_domain = {}
    for k, r in enumerate(m.routes):
        per_domain[k] = tf.matmul(m.gates[f"gate_0_{r}"](tf.concat(
            [tf.reshape(m.embeddings[i](x).fields, [B, -1]) for i in range(2)], axis=1)), tf.eye(2)).numpy()
    np.testing.assert_allclose(weights, np.stack([per_domain[d][i] for i, d in enumerate(domain)]), rtol=1e-6)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert [t["owner"] for t in m.describe_tables()] == ["shared", "shared"]


# ---- options ------------------------------------------------------------------------------------------
def test_domain_options_errors_name_the_key():
    with pytest.raises(OptionError, match=r"domain_feature: the domains of 'gender' share one label.*\['click', "
                                          r"'conv'\]"):
        build_model(schema().to_dict(), ["click", "conv"], backbone="dnn", framework="mmoe",
                    framework_options={"domain_feature": "gender"})
    with pytest.raises(OptionError, match=r"model\.framework_options\.domain_feature: .*\['model\.framework_options"
                                          r"\.serve'\]"):
        check_model_options("dnn", {}, 4, {}, "stem_al", {"domain_feature": "gender"})
    with pytest.raises(OptionError, match=r"domain_feature: .*tables\[0\]\.owner"):
        check_model_options("dnn", {}, 4, {}, "mmoe", {"domain_feature": "gender", "tables": [{"owner": "main"}]})
    with pytest.raises(OptionError, match=r"domain_feature = 3: expected"):
        check_model_options("dnn", {}, 4, {}, "mmoe", {"domain_feature": 3})


@pytest.mark.parametrize("framework", ["mmoe", "ple"])
def test_config_round_trip_gives_equal_outputs(framework):
    m = build(framework)
    x = batch(5)[0]
    clone = type(m).from_config(m.get_config())
    clone(x)
    clone.set_weights(m.get_weights())
    np.testing.assert_array_equal(clone(x, training=False)["click"].numpy(), m(x, training=False)["click"].numpy())
    assert clone.get_config()["domain_feature"] == "gender" and clone.served == ["click"]
