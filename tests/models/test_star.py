"""STAR (models/frameworks/star, Sheng et al. CIKM'21) against numpy: a star layer is
(W ⊙ W_p)^T x + b + b_p, partitioned normalization uses each domain's batch moments in training
and its own bias-corrected moving statistics at inference, the whole model is PN -> star FCN +
auxiliary network; a domain-p row's loss has no gradient on domain q's weights and its prediction
does not change with them; every backbone trains; option errors; config round trips; mixed
precision."""
from __future__ import annotations

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.backbones import backbone_class
from models.factory import build_model, check_model_options, custom_objects
from models.frameworks.star import STAR, PartitionedNormalization, StarDense, StarFCN
from models.layers import global_policy
from models.options import OptionError

SIZES = {"gender": 5, "user": 9, "item": 11, "ctx": 6}  # gender ids 2..4: domains 1..3, 0 = unknown
B = 40
R = 4


def schema() -> dict:
    feats = [Feature(f, "categorical", "string", {"gender": "user", "user": "personal", "item": "item",
                                                  "ctx": "context"}[f], {"type": "vocab"}, num_ids=n)
             for f, n in SIZES.items()]
    return Schema(features=feats, labels=["click"]).to_dict()


def batch(seed=0, n=B):
    rng = np.random.default_rng(seed)
    x = {f: rng.integers(0, k, (n, 1)).astype(np.int64) for f, k in SIZES.items()}
    x["gender"][:5, 0] = [0, 1, 2, 3, 4]
    return x, {"click": rng.integers(0, 2, (n, 1)).astype(np.float32)}


def randomize(layer, seed=0):
    """Every weight of ``layer`` random, domain-specific ones too (they start at 1 and 0)."""
    rng = np.random.default_rng(seed)
    for v in layer.trainable_variables:
        v.assign(rng.normal(1.0 if "gamma" in v.name or "domain_kernel" in v.name else 0.0, 0.5,
                            v.shape).astype(np.float32))


def build(backbone="dnn", seed=0, steps=2, **options):
    """STAR on the tiny schema, trained ``steps`` steps (moving statistics and weights move), every
    weight then randomized so no hand computation passes on initial values."""
    tf.keras.utils.set_random_seed(seed)
    deep = {"dnn_units": [6, 5]} if "dnn_units" in backbone_class(backbone).defaults else {}
    m = build_model(schema(), ["click"], backbone=backbone, backbone_options=deep, embedding_dim=3,
                    embedding_options={"initializer_stddev": 0.5}, framework="star",
                    framework_options={"domain_feature": "gender", "aux_units": [4], **options})
    m.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"},
              run_eagerly=True)  # a few tiny steps: tracing would cost more than running them
    x, y = batch(seed)
    m(x)
    if steps:
        m.fit(x, y, batch_size=20, epochs=1, steps_per_epoch=steps, verbose=0)
    randomize(m, seed)
    return m


def logit(model, x):
    return model(x, training=False, return_forward=True).logits["click"].numpy()


# ---- numpy ---------------------------------------------------------------------------------------
def relu(v):
    return np.maximum(v, 0.0)


def star_dense(layer, x, domain):
    w, wd = layer.kernel.numpy(), layer.domain_kernel.numpy()
    b, bd = layer.bias.numpy(), layer.domain_bias.numpy()
    return np.stack([x[i] @ (w * wd[d]) + b + bd[d] for i, d in enumerate(domain)])


def pn(layer, x, domain, mean, var):
    g, gd, b, bd = (layer.gamma.numpy(), layer.domain_gamma.numpy(), layer.beta.numpy(), layer.domain_beta.numpy())
    return g * gd[domain] * (x - mean[domain]) / np.sqrt(var[domain] + layer.epsilon) + b + bd[domain]


def star_numpy(m, x):
    """The module docstring's equations, the FCN on the flattened embeddings (backbone dnn)."""
    domain = m.domains.index(x).numpy()
    emb = m.embedding(x).fields.numpy()
    h = emb.reshape(len(domain), -1)
    if m.norm is not None:
        mean, var = (t.numpy() for t in m.norm.moving.read())
        h = pn(m.norm, h, domain if m.norm.num_domains > 1 else 0 * domain, mean, var)
    for layer in m.fcn.star:
        h = relu(star_dense(layer, h, domain))
    z = star_dense(m.fcn.logit, h, domain)
    if m.options["auxiliary"]:
        read = emb if m.aux_fields is None else emb[:, m.aux_fields]  # aux_features: their fields only
        a = np.concatenate([m.domain_embedding.embeddings.numpy()[domain], read.reshape(len(domain), -1)], axis=1)
        for d in m.aux.mlp.dense:
            a = relu(a @ d.kernel.numpy() + d.bias.numpy())
        z = z + a @ m.aux.head.kernel.numpy() + m.aux.head.bias.numpy()
    return z


# ---- layers ------------------------------------------------------------------------------------------
def test_a_star_layer_is_the_shared_times_the_domain_kernel_plus_both_biases():
    rng = np.random.default_rng(0)
    layer = StarDense(3, R)
    x = rng.normal(size=(B, 5)).astype(np.float32)
    domain = rng.integers(0, R, B)
    layer(x, domain)
    randomize(layer)
    got = layer(x, tf.constant(domain)).numpy()
    np.testing.assert_allclose(got, star_dense(layer, x, domain), rtol=1e-5, atol=1e-6)
    # the shared layer for every domain while the domain weights are at their initial 1 and 0
    fresh = StarDense(3, R)
    fresh(x, domain)
    np.testing.assert_allclose(fresh(x, domain).numpy(), x @ fresh.kernel.numpy(), rtol=1e-5, atol=1e-6)


def test_the_star_fcn_is_relu_star_layers_then_a_star_logit():
    rng = np.random.default_rng(1)
    fcn = StarFCN([4, 3], R)
    x = rng.normal(size=(B, 6)).astype(np.float32)
    domain = rng.integers(0, R, B)
    fcn(x, domain)
    randomize(fcn, 1)
    h = relu(star_dense(fcn.star[1], relu(star_dense(fcn.star[0], x, domain)), domain))
    np.testing.assert_allclose(fcn(x, domain).numpy(), star_dense(fcn.logit, h, domain), rtol=1e-4, atol=1e-5)


def test_partitioned_normalization_uses_domain_batch_moments_in_training_and_domain_moving_statistics_after():
    rng = np.random.default_rng(2)
    layer = PartitionedNormalization(R, momentum=0.9)
    batches = [(rng.normal(3.0, 2.0, (B, 5)).astype(np.float32), rng.integers(0, R - 1, B)) for _ in range(3)]
    batches[0][1][:3] = R - 1  # domain 3 only in the first batch
    layer(batches[0][0], batches[0][1])
    randomize(layer, 2)
    acc = {r: [np.zeros(5), np.zeros(5), 0] for r in range(R)}
    for x, domain in batches:
        got = layer(x, tf.constant(domain), training=True).numpy()
        mean = np.stack([x[domain == r].mean(axis=0) if (domain == r).any() else np.zeros(5) for r in range(R)])
        var = np.stack([x[domain == r].var(axis=0) if (domain == r).any() else np.ones(5) for r in range(R)])
        np.testing.assert_allclose(got, pn(layer, x, domain, mean, var), rtol=1e-4, atol=1e-4)
        for r in set(domain.tolist()):  # the moving averages of the domains in the batch
            acc[r] = [0.9 * acc[r][0] + 0.1 * mean[r], 0.9 * acc[r][1] + 0.1 * var[r], acc[r][2] + 1]
    # inference: each domain's own bias-corrected moving statistics
    x, domain = rng.normal(size=(B, 5)).astype(np.float32), np.arange(B) % R
    assert [acc[r][2] for r in range(R)] == [3, 3, 3, 1]
    mean = np.stack([acc[r][0] / (1 - 0.9 ** acc[r][2]) for r in range(R)])
    var = np.stack([acc[r][1] / (1 - 0.9 ** acc[r][2]) for r in range(R)])
    np.testing.assert_allclose(var[3], batches[0][0][:3].var(axis=0), rtol=1e-5)  # one update: its batch's own
    np.testing.assert_allclose(layer(x, tf.constant(domain)).numpy(), pn(layer, x, domain, mean, var),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(layer.moving.updates.numpy()[:, 0], [3, 3, 3, 1])


# ---- the model -------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"normalization": "batch"}, {"normalization": "none", "auxiliary": False},
                                     {"aux_features": ["item"]}])
def test_star_over_dnn_is_pn_then_the_star_fcn_plus_the_auxiliary_network(options):
    m = build(**options)
    assert m.backbone is None  # dnn: the FCN reads the embeddings, STAR as published
    assert m.fcn.units == [6, 5]  # the backbone's dnn_units
    x = batch(3)[0]
    assert m.aux_fields == ([2] if "aux_features" in options else None)
    want = star_numpy(m, x)
    np.testing.assert_allclose(logit(m, x), want, rtol=1e-4, atol=1e-4)
    assert np.std(want) > 1e-2


def test_a_domain_p_rows_loss_has_no_gradient_on_domain_q_weights_and_q_weights_leave_p_rows_unchanged():
    m = build()
    x, y = batch(4)
    domain = m.domains.index(x).numpy()
    p, q = 1, 2
    rows = tf.constant((domain == p)[:, None], tf.float32)
    specific = [m.norm.domain_gamma, m.norm.domain_beta, m.domain_embedding.embeddings,
                *[v for layer in [*m.fcn.star, m.fcn.logit] for v in (layer.domain_kernel, layer.domain_bias)]]
    with tf.GradientTape() as tape:
        z = m(x, training=True, return_forward=True).logits["click"]
        loss = tf.reduce_sum(rows * tf.nn.sigmoid_cross_entropy_with_logits(y["click"], z))
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, specific)]
    for v, g in zip(specific, grads):
        assert not np.any(g[q]) and not np.any(g[[r for r in range(R) if r != p]]), v.name
        assert np.any(g[p]), v.name

    before = logit(m, x)
    for v in specific:
        v.assign(tf.tensor_scatter_nd_update(v, [[q]], v[q:q + 1] * 1.5 + 0.2))
    after = logit(m, x)
    np.testing.assert_array_equal(after[domain != q], before[domain != q])
    assert np.all(np.abs(after[domain == q] - before[domain == q]) > 1e-6)


@pytest.mark.parametrize("backbone,options", [("dcnv2", {}), ("deepfm", {}), ("fm", {"fcn_units": [4]}),
                                              ("dnn", {"fcn_input": "representation", "backbone_logit": False})])
def test_star_over_a_backbone_reads_its_representation_adds_its_logit_and_trains(backbone, options):
    """The FCN reads r_b and z = s_m + s_a + z_b: the backbone's first-order terms (DeepFM, FM) are
    kept, so one training step moves every weight; without z_b the backbone's logit unit is unread."""
    m = build(backbone, steps=0, **options)
    x, y = batch(5)
    out = m.backbone(m.embedding(x))
    assert m.fcn.star[0].kernel.shape[0] == out.repr.shape[1]
    m.options["backbone_logit"] = False
    without = logit(m, x)
    m.options["backbone_logit"] = options.get("backbone_logit", True)
    np.testing.assert_allclose(logit(m, x) - without, out.logit.numpy() if m.options["backbone_logit"] else 0.0,
                               rtol=1e-4, atol=1e-5)
    start = [v.numpy().copy() for v in m.trainable_variables]
    history = m.fit(x, y, batch_size=40, epochs=1, steps_per_epoch=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    unmoved = [v.name for a, v in zip(start, m.trainable_variables) if np.array_equal(a, v.numpy())]
    assert unmoved == ([] if m.options["backbone_logit"] else [v.name for v in m.backbone.tower.head.weights])


def test_option_errors_name_the_key():
    with pytest.raises(OptionError, match=r"model\.framework_options\.domain_feature: STAR needs"):
        check_model_options("dnn", {}, 4, {}, "star", {})
    with pytest.raises(OptionError, match=r"framework_options\.normalization = 'layer': expected one of"):
        check_model_options("dnn", {}, 4, {}, "star", {"domain_feature": "gender", "normalization": "layer"})
    with pytest.raises(OptionError, match=r"framework_options\.fcn_units: backbone 'fm' has no dnn_units"):
        build_model(schema(), ["click"], backbone="fm", framework="star", framework_options={"domain_feature": "gender"})
    with pytest.raises(OptionError, match=r"aux_features = \['age'\]: .*missing: \['age'\]"):
        build_model(schema(), ["click"], backbone="dnn", framework="star",
                    framework_options={"domain_feature": "gender", "aux_features": ["age"]})
    with pytest.raises(OptionError, match=r"domain_feature = 'age': the schema has no feature"):
        build_model(schema(), ["click"], backbone="dnn", framework="star", framework_options={"domain_feature": "age"})


@pytest.mark.parametrize("backbone", ["dnn", "dcnv2"])
def test_config_round_trip_gives_equal_outputs(backbone):
    m = build(backbone)
    x = batch(6)[0]
    clone = STAR.from_config(m.get_config())
    clone(x)
    clone.set_weights(m.get_weights())  # moving statistics included
    np.testing.assert_array_equal(clone(x, training=False)["click"].numpy(), m(x, training=False)["click"].numpy())
    assert "STAR" in custom_objects()
    for layer in (m.norm, m.fcn, m.fcn.star[0]):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_under_mixed_precision_the_inputs_of_the_fcn_and_the_logits_stay_float32():
    with global_policy("mixed_bfloat16"):
        m = build(steps=0)
    assert m.norm.compute_dtype == "float32" and m.fcn.star[0].compute_dtype == "float32"
    assert m.fcn.star[1].compute_dtype == "bfloat16" and m.fcn.logit.compute_dtype == "float32"
    z = logit(m, batch()[0])
    assert z.dtype == np.float32 and np.all(np.isfinite(z))
