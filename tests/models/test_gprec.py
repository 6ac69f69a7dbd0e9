"""GPRec (models/frameworks/gprec): the group classifier, the Gumbel masks and Eq. 6 against numpy,
each loss of Eq. 20 and the total against hand computations, theta_1 frozen for L_G^Con, each
strategy against a recomposition of its parts, every strategy x backbone training, the served
call, the ablation flags, config round trips, errors and the analysis API."""
from __future__ import annotations

import json

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models import layers as L
from models.factory import build_model
from models.frameworks.gprec import (DEFAULTS, GPRec, GroupClassifier, GroupEmbedding, GumbelMasks,
                                     mean_probability_logit)
from models.options import OptionError

SIZES = {"uid": 12, "gender": 4, "age": 5, "item": 10, "cat": 6, "ad": 8, "ctx": 5}
ROLES = {"uid": "personal", "gender": "user", "age": "user", "item": "item", "cat": "item", "ad": "ad",
         "ctx": "context"}
G, D, B = 3, 4, 16
SMALL = {"num_groups": G, "classifier_units": [5], "personal_units": [6], "prediction_units": [6, 4],
         "dp_units": [3]}
BACKBONE_OPTIONS = {"dnn": {"dnn_units": [8]}, "dcn": {"dnn_units": [8], "num_cross_layers": 1},
                    "gdcn": {"dnn_units": [8], "num_cross_layers": 1},
                    "finalmlp": {"mlp1_units": [8], "mlp2_units": [8], "fs_units": [8]},
                    "destine": {"dnn_units": [8], "attention_layers": 1, "att_dim": 4}}
PAIR_BACKBONES = ["dnn", "dcn", "gdcn", "finalmlp", "destine"]  # the paper's (Tables II-III)


def schema(drop=()) -> dict:
    feats = [Feature(f, "categorical", "string", ROLES[f], {"type": "vocab"}, num_ids=n)
             for f, n in SIZES.items() if f not in drop]
    feats.append(Feature("score", "numeric", "float32", "item", {"type": "identity"}, width=1,
                         encoded_dtype="float32"))
    return Schema(features=feats, labels=["click", "conv"]).to_dict()


def batch(n=B, seed=0):
    rng = np.random.default_rng(seed)
    x = {f: rng.integers(0, k, (n, 1)).astype(np.int64) for f, k in SIZES.items()}
    x["score"] = rng.normal(size=(n, 1)).astype(np.float32)
    return x, {"click": rng.integers(0, 2, (n, 1)).astype(np.float32)}


def perturb(model, seed=0, scale=0.3):
    """Random values for zero-initialised weights (biases), so a hand computation that ignored
    them would fail, and group embeddings large enough to matter."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        if not np.any(v.numpy()) or "group_embedding" in v.name:
            v.assign(rng.normal(0.0, scale, v.shape).astype(np.float32))


def gprec(backbone="dnn", drop=(), seed=0, **options) -> GPRec:
    tf.keras.utils.set_random_seed(seed)
    m = build_model(schema(drop), ["click"], backbone=backbone, backbone_options=BACKBONE_OPTIONS[backbone],
                    embedding_dim=D, embedding_options={"initializer_stddev": 0.3}, framework="gprec",
                    framework_options={**SMALL, **options})
    m(batch()[0], training=False)
    perturb(m, seed)
    return m


def compiled(model, lr=0.0, optimizer=tf.keras.optimizers.SGD, eager=False):
    """Compiled with BCE; ``eager`` runs the steps eagerly (the same train_step without tracing it,
    which costs a tiny model ~10 s of CPU: the pairs below would take minutes)."""
    model.compile(optimizer=optimizer(lr), loss={"click": "binary_crossentropy"}, run_eagerly=eager)
    return model


def relu(x):
    return np.maximum(x, 0.0)


def mlp(kernels, biases, x):
    """A ReLU MLP whose last layer is linear."""
    for i, (w, b) in enumerate(zip(kernels, biases)):
        x = x @ w + b
        x = relu(x) if i < len(kernels) - 1 else x
    return x


def f1_numpy(model, x):
    return mlp([k.numpy() for k in model.f1.kernels], [b.numpy() for b in model.f1.biases], x)


def bce(z, y):
    z, y = np.asarray(z, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def log_softmax(z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def r_g_numpy(m1, p, n, pooling="concat"):
    """Eq. 6: group i's pattern m^1_i p_i + (1 - m^1_i) n_i, concatenated or summed."""
    patterns = m1[..., None] * p[None] + (1.0 - m1)[..., None] * n[None]
    return patterns.reshape(len(m1), -1) if pooling == "concat" else patterns.sum(axis=1)


def cos(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---- layers ------------------------------------------------------------------------------------
def test_per_group_classifier_is_g_independent_mlps_with_a_softmax_per_group():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    layer = GroupClassifier(3, [4], outputs=2)
    layer(x)
    for v in layer.biases:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    log_s = layer(x).numpy()
    assert log_s.shape == (5, 3, 2)
    for g in range(3):  # group g's own MLP [4] -> 2, then a softmax over its pair
        w = [k.numpy()[g] for k in layer.kernels]
        b = [v.numpy()[g] for v in layer.biases]
        np.testing.assert_allclose(log_s[:, g], log_softmax(mlp(w, b, x), axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(log_s).sum(-1), 1.0, rtol=1e-6)  # S positive, s^1 + s^0 = 1
    single = GroupClassifier(3, [4], outputs=1)
    w = single(x).numpy()
    np.testing.assert_allclose(np.exp(w[..., 0]).sum(axis=1), 1.0, rtol=1e-6)  # GPRec-1: softmax over groups
    trunk = GroupClassifier(3, [4], outputs=2, mode="shared_trunk")
    got = trunk(x).numpy()
    heads = trunk.heads(trunk.trunk(x)).numpy().reshape(5, 3, 2)
    np.testing.assert_allclose(got, log_softmax(heads, axis=2), rtol=1e-5, atol=1e-6)
    assert trunk.get_config()["mode"] == "shared_trunk" and not hasattr(trunk, "kernels")


def test_gumbel_masks_range_seeding_and_deterministic_inference():
    rng = np.random.default_rng(2)
    log_s = log_softmax(rng.normal(size=(6, 4, 2)), axis=2).astype(np.float32)
    layer = GumbelMasks(temperature=0.5)
    infer = layer(log_s).numpy()
    want = np.exp(log_softmax(log_s / 0.5, axis=2))[..., 0]  # softmax(log s / tau), no noise
    np.testing.assert_allclose(infer[..., 0], want, rtol=1e-5)
    np.testing.assert_array_equal(infer[..., 1], 1.0 - infer[..., 0])  # Eq. 4
    np.testing.assert_array_equal(layer(log_s, training=False).numpy(), infer)

    def draw(step):
        with L.step_seed(tf.constant([7, step], tf.int64)):
            return layer(log_s, training=True).numpy()

    first, again, other = draw(1), draw(1), draw(2)
    np.testing.assert_array_equal(first, again)  # a function of (seed, step)
    assert not np.allclose(first, other) and not np.allclose(first, infer)
    for m in (first, other):
        assert np.all((m >= 0) & (m <= 1))
        np.testing.assert_array_equal(m[..., 1], 1.0 - m[..., 0])
    # at a low temperature the noisy masks are near binary
    cold = GumbelMasks(0.05)
    with L.step_seed(tf.constant([7, 1], tf.int64)):
        m = cold(log_s, training=True).numpy()[..., 0]
    assert np.mean(np.minimum(m, 1 - m) < 0.01) > 0.8
    with pytest.raises(ValueError, match="temperature"):
        GumbelMasks(0.0)


@pytest.mark.parametrize("pooling", ["concat", "sum"])
def test_group_representation_is_eq6(pooling):
    rng = np.random.default_rng(3)
    m1 = rng.random((5, 3)).astype(np.float32)
    masks = np.stack([m1, 1.0 - m1], axis=-1)
    layer = GroupEmbedding(3, 4, pooling=pooling)
    layer(masks)
    p, n = layer.positive.numpy(), layer.negative.numpy()
    assert not np.allclose(p, n)  # each drawn on its own
    np.testing.assert_allclose(layer(masks).numpy(), r_g_numpy(m1, p, n, pooling), rtol=1e-5, atol=1e-7)
    # Eq. 9: the contrasting representation swaps m^1 and m^0
    np.testing.assert_allclose(layer(masks[..., ::-1].copy()).numpy(), r_g_numpy(1.0 - m1, p, n, pooling),
                               rtol=1e-5, atol=1e-7)
    assert layer.width == (12 if pooling == "concat" else 4)
    single = GroupEmbedding(3, 4, dual=False, pooling="sum")
    w = rng.random((5, 3)).astype(np.float32)
    np.testing.assert_allclose(single(w).numpy(), w @ single.positive.numpy(), rtol=1e-5, atol=1e-7)  # DGPM's sum_i w_i e_i
    assert single.negative is None


# ---- objectives --------------------------------------------------------------------------------
def _objectives(model, x, y, training=False):
    y = {k: tf.constant(v) for k, v in y.items()}
    forward = model(x, training=training, return_forward=True)
    return forward, {k: float(o.value) for k, o in model.objectives(x, y, forward, None).items()}


@pytest.mark.parametrize("orthogonal", ["signed", "squared"])
def test_each_loss_and_the_eq20_total_match_hand_computations(orthogonal):
    model = compiled(gprec(lambda1=0.7, lambda2=0.3, lambda3=0.2, backbone_loss_weight=0.5,
                           orthogonal_loss=orthogonal), eager=True)
    x, y = batch(seed=4)
    rep = model.representations(x, training=False)
    _, got = _objectives(model, x, y)
    m1 = model.group_assignment(x).numpy()
    p, n = model.group_embeddings()
    r_g = r_g_numpy(m1, p, n)
    np.testing.assert_allclose(rep.r_G.numpy(), r_g, rtol=1e-5, atol=1e-6)
    e_v = rep.e_v.numpy()
    l_g = bce(f1_numpy(model, np.concatenate([r_g, e_v], 1)), y["click"])  # Eq. 7-8
    l_con = bce(f1_numpy(model, np.concatenate([r_g_numpy(1 - m1, p, n), e_v], 1)), y["click"])  # Eq. 9-11
    c = cos(r_g, rep.r_P.numpy())  # Eq. 13
    l_o = np.mean(c) if orthogonal == "signed" else np.mean(c ** 2)
    l_b = bce(rep.z_b.numpy(), y["click"])
    prob = model(x)["click"].numpy()
    l_major = float(np.mean(-(y["click"] * np.log(prob) + (1 - y["click"]) * np.log(1 - prob))))
    for key, want in (("group", l_g), ("group_contrast", l_con), ("orthogonal", l_o), ("backbone", l_b),
                      ("ctr", l_major)):
        np.testing.assert_allclose(got[key], want, rtol=1e-4, atol=1e-6, err_msg=key)
    assert abs(l_g - l_con) > 1e-3 and l_o != 0  # the hand values tell the branches apart
    total = l_major + 0.7 * l_g - 0.3 * l_con + 0.2 * l_o + 0.5 * l_b  # Eq. 20 (+ the script's term)
    logs = model.test_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-4)
    np.testing.assert_allclose(logs["group_contrast_loss"], l_con, rtol=1e-4)


def test_a_training_step_descends_eq20_with_the_steps_gumbel_noise():
    """One eager SGD step: the update is -lr times the gradient of L_major + l1 L_G - l2 L_G^Con
    + l3 L_O at the step's seeded Gumbel masks, and the logged total is that weighted sum."""
    from models.steps import step_randomness

    model = gprec(lambda1=0.7, lambda2=0.3, lambda3=0.2)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss={"click": "binary_crossentropy"}, run_eagerly=True)
    x, y = batch(seed=5)
    y = {k: tf.constant(v) for k, v in y.items()}
    variables = model.trainable_variables
    with step_randomness(model), tf.GradientTape() as tape:
        forward = model(x, training=True, return_forward=True)
        objectives = model.objectives(x, y, forward, None)
        total = tf.add_n([o.value * o.weight for o in objectives.values()])
    grads = tape.gradient(total, variables)
    values = {k: float(o.value) for k, o in objectives.items()}
    before = [v.numpy() for v in variables]
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], values["ctr"] + 0.7 * values["group"] - 0.3 * values["group_contrast"]
                               + 0.2 * values["orthogonal"], rtol=1e-5)
    for v, b, g in zip(variables, before, grads):
        want = b if g is None else b - 0.1 * tf.convert_to_tensor(g).numpy()
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-4, atol=1e-6, err_msg=v.name)


def _grad(model, objective, x, y, variables):
    y = {k: tf.constant(v) for k, v in y.items()}
    with tf.GradientTape() as tape:
        forward = model(x, training=True, return_forward=True)
        value = model.objectives(x, y, forward, None)[objective].value
    return [None if g is None else tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, variables)]


def _moves(grads) -> bool:
    return any(g is not None and np.any(g != 0) for g in grads)


@pytest.mark.parametrize("item_gradient", [False, True])
def test_theta1_is_frozen_for_the_contrast_which_still_trains_the_groups(item_gradient):
    model = compiled(gprec(contrast_item_gradient=item_gradient))
    x, y = batch(seed=6)
    f1 = model.f1.trainable_variables
    groups = model.group_embedding.trainable_variables + model.classifier.trainable_variables
    items = [model.embedding.tables[0][f]["embedding"] for f in ("item", "cat", "ad")]
    users = [model.embedding.tables[0][f]["embedding"] for f in ("uid", "gender", "age")]
    con = _grad(model, "group_contrast", x, y, f1 + groups + items + users)
    k, j = len(f1), len(f1) + len(groups)
    assert all(g is None or not np.any(g) for g in con[:k])  # Eq. 10: theta_1 fixed
    assert all(_moves([g]) for g in con[k:j])  # p, n and every layer of g get a gradient
    assert _moves(con[j + len(items):])  # through g, the user embeddings too
    assert _moves(con[j:j + len(items)]) == item_gradient  # E_v only when asked
    group = _grad(model, "group", x, y, f1 + groups + items)
    assert all(_moves([g]) for g in group)  # L_G trains f_1, E_G, g and E_v


# ---- strategies ----------------------------------------------------------------------------------
def test_input_strategy_is_f_y_on_the_three_representations():
    model = gprec(strategy="input")
    x, _ = batch(seed=7)
    rep = model.representations(x, training=False)
    z = model.f_y(tf.concat([rep.r_b, rep.r_G, rep.r_P], axis=1))[1].numpy()
    np.testing.assert_allclose(model(x)["click"].numpy(), 1 / (1 + np.exp(-z)), rtol=1e-6)
    assert model.f_y.mlp.dense[0].kernel.shape[0] == rep.r_b.shape[1] + 2 * G * D


@pytest.mark.parametrize("personal", [True, False])
def test_ensemble_is_the_mean_of_the_predictors_probabilities(personal):
    model = gprec(strategy="ensemble", personal=personal)
    x, _ = batch(seed=8)
    rep = model.representations(x, training=False)
    parts = [(model.f_b, rep.r_b), (model.f_G, rep.r_G)] + ([(model.f_P, rep.r_P)] if personal else [])
    probs = [1 / (1 + np.exp(-f(r)[1].numpy().astype(np.float64))) for f, r in parts]
    np.testing.assert_allclose(model(x)["click"].numpy(), np.mean(probs, axis=0), rtol=1e-5)  # Eq. 18
    assert (model.f_P is None) != personal


def test_mean_probability_logit_is_stable():
    z = tf.constant([[60.0, -60.0, 0.0], [-80.0, -90.0, -100.0], [1.0, 2.0, -3.0]])
    got = mean_probability_logit(tf.unstack(z, axis=1)).numpy()
    p = 1 / (1 + np.exp(-z.numpy().astype(np.float64)))
    y = p.mean(axis=1)
    np.testing.assert_allclose(got[[0, 2]], np.log(y / (1 - y))[[0, 2]], rtol=1e-6)
    # all three far negative: y = mean(e^z) to double precision, which float32 probabilities lose
    want = np.log(np.mean(np.exp([-80.0, -90.0, -100.0])))
    np.testing.assert_allclose(got[1], want, rtol=1e-6)


def test_dp_with_a_zero_generator_is_the_plain_f_y():
    model = gprec(strategy="dp")
    x, _ = batch(seed=9)
    rep = model.representations(x, training=False)
    with_dp = model(x)["click"].numpy()
    for v in model.f_y.generator.trainable_variables:
        v.assign(tf.zeros_like(v))
    layers = model.f_y.layers_ + [model.f_y.head]
    z = mlp([lay.kernel.numpy() for lay in layers], [lay.bias.numpy() for lay in layers], rep.r_b.numpy())
    np.testing.assert_allclose(model(x)["click"].numpy(), 1 / (1 + np.exp(-z)), rtol=1e-5)  # theta_y alone
    assert not np.allclose(with_dp, 1 / (1 + np.exp(-z)), rtol=1e-3)  # W_DP(r_G, r_P) mattered
    # f_DP reads [r_G, r_P]
    assert model.f_y.generator.dense[0].kernel.shape[0] == 2 * G * D


# ---- training over the backbones ---------------------------------------------------------------
@pytest.mark.parametrize("backbone", PAIR_BACKBONES)
@pytest.mark.parametrize("strategy", ["input", "dp", "ensemble"])
def test_every_strategy_and_backbone_trains(strategy, backbone):
    model = compiled(gprec(backbone, strategy=strategy), lr=0.01, optimizer=tf.keras.optimizers.Adam, eager=True)
    x, y = batch(n=32, seed=10)
    before = [v.numpy() for v in model.trainable_variables]
    hist = model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False).history  # 2 steps
    for key in ("loss", "ctr_loss", "group_loss", "group_contrast_loss", "orthogonal_loss"):
        assert np.isfinite(hist[key][0]), key
    moved = {v.name for v, b in zip(model.trainable_variables, before) if not np.array_equal(v.numpy(), b)}
    for part in ("group_classifier", "group_embedding", "group_predictor", "personal", "embedding"):
        assert [n for n in moved if part in n], part
    out = model(x)["click"].numpy()
    assert out.shape == (32, 1) and np.all((out > 0) & (out < 1))


def test_mixed_precision_trains_and_serves_float32():
    with L.global_policy("mixed_float16"):
        model = compiled(gprec(strategy="dp"), lr=0.01, optimizer=tf.keras.optimizers.Adam, eager=True)
        assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        x, y = batch(n=32, seed=11)
        hist = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
        assert np.all(np.isfinite(hist["loss"]))
        out = model(x)["click"]
        assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))
        assert model.group_embedding.positive.dtype == tf.float32


# ---- serving, ablations, config, errors, API ---------------------------------------------------
def test_the_served_call_is_deterministic_and_a_first_served_call_builds_f1():
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema(), ["click"], backbone="dnn", backbone_options={"dnn_units": [8]}, embedding_dim=D,
                        framework="gprec", framework_options=SMALL)
    x, _ = batch(seed=12)
    served = model(x)["click"].numpy()  # the first call is a served one
    assert model.f1.built and len(model.f1.trainable_variables) == 2 * (len(SMALL["prediction_units"]) + 1)
    np.testing.assert_array_equal(model(x)["click"].numpy(), served)
    forward = model(x, training=False, return_forward=True)
    np.testing.assert_allclose(tf.sigmoid(forward.logits["click"]).numpy(), served, rtol=1e-6)
    assert {"group_logit", "contrast_logit", "r_G", "r_P"} <= set(forward.aux)
    noisy = model(x, training=True)["click"].numpy()
    assert not np.allclose(noisy, served)  # Gumbel noise in training only


def test_ablation_flags_remove_what_they_name():
    x, y = batch(seed=13)
    # GPRec-2: no r_P, no L_O, no personal weights, no personal feature needed
    m = compiled(gprec(personal=False, drop=("uid",)))
    assert m.f2 is None and not [v for v in m.trainable_variables if "personal" in v.name]
    assert m.user_features() == ["gender", "age"]
    _, got = _objectives(m, x, y)
    assert got["orthogonal"] == 0.0 and got["group"] > 0
    # GPRec-4: lambda2 = 0, the contrast branch is not computed; GPRec-3 + 4: no f_1 at all
    m = compiled(gprec(lambda2=0.0))
    forward, got = _objectives(m, x, y, training=True)
    assert "contrast_logit" not in forward.aux and got["group_contrast"] == 0.0 and got["group"] > 0
    m = compiled(gprec(lambda1=0.0, lambda2=0.0, lambda3=0.0))
    forward, got = _objectives(m, x, y, training=True)
    assert m.f1 is None and not [v for v in m.trainable_variables if "group_predictor" in v.name]
    assert got["group"] == got["group_contrast"] == got["orthogonal"] == 0.0 and not forward.aux
    # GPRec-1: one embedding per group, a softmax over the groups, r_G = sum_i w_i e_i, no contrast
    m = compiled(gprec(group_embedding="single"))
    forward, got = _objectives(m, x, y, training=True)
    w = m.group_assignment(x).numpy()
    e, none = m.group_embeddings()
    assert none is None and e.shape == (G, D) and w.shape == (B, G)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(m.representations(x).r_G.numpy(), w @ e, rtol=1e-5, atol=1e-6)
    assert got["group_contrast"] == 0.0 and "contrast_logit" not in forward.aux and m.masks is None
    assert m.f2.width == D  # r_P as wide as the summed r_G
    assert compiled(gprec(group_embedding="single", group_pooling="concat")).f2.width == G * D
    # group_pooling: sum for a large G
    m = gprec(group_pooling="sum")
    rep = m.representations(x)
    assert rep.r_G.shape[1] == rep.r_P.shape[1] == D


def test_config_round_trip_gives_identical_outputs():
    x, _ = batch(seed=14)
    for options in ({"strategy": "dp", "classifier": "shared_trunk", "orthogonal_loss": "squared"},
                    {"strategy": "ensemble", "group_embedding": "single", "temperature": 0.3}):
        model = gprec(**options)
        before = model(x)["click"].numpy()
        config = json.loads(json.dumps(model.get_config()))
        assert all(config[k] == v for k, v in options.items()) and config["lambda2"] == DEFAULTS["lambda2"]
        clone = GPRec.from_config(config)
        clone(x)
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(clone(x)["click"].numpy(), before)


def test_defaults_are_the_papers():
    o = DEFAULTS
    assert (o["num_groups"], o["temperature"], o["lambda1"], o["lambda2"], o["lambda3"]) == (60, 0.5, 1.0, 0.001, 1e-4)
    assert o["classifier_units"] == [64, 32] and o["prediction_units"] == [64, 32, 16]
    assert (o["classifier"], o["group_embedding"], o["orthogonal_loss"], o["backbone_loss_weight"]) == \
        ("per_group", "dual", "signed", 0.0)
    assert o["group_embedding_stddev"] == 1.0  # ours (the model's docstring says why)
    m = build_model(schema(), ["click"], backbone="dnn", backbone_options={"dnn_units": [8]}, framework="gprec")
    m(batch()[0])
    assert m.group_embedding.positive.shape == (60, 16) and m.f2.width == 960
    assert m.classifier.kernels[0].shape == (60, 3 * 16, 64)  # E_u = uid, gender, age
    assert 0.8 < np.std(m.group_embedding.positive.numpy()) < 1.2


@pytest.mark.parametrize("drop,options,match", [
    ((), {"num_groups": 0}, r"framework_options\.num_groups"),
    ((), {"strategy": "gate"}, r"framework_options\.strategy"),
    ((), {"temperature": 0.0}, r"framework_options\.temperature"),
    ((), {"group_pooling": "max"}, r"framework_options\.group_pooling"),
    ((), {"lambda2": -1.0}, r"framework_options\.lambda2"),
    (("uid",), {}, r"role 'personal'.*personal: false"),
    (("gender", "age"), {}, r"role 'user'"),
    (("item", "cat", "ad"), {}, r"item features"),
])
def test_errors_name_the_option_or_the_missing_features(drop, options, match):
    x_schema = schema(drop)
    if drop == ("item", "cat", "ad"):  # and the item-role float
        x_schema["features"] = [f for f in x_schema["features"] if f["name"] != "score"]
    with pytest.raises(OptionError, match=match):
        build_model(x_schema, ["click"], backbone="dnn", framework="gprec", framework_options=options)


def test_single_task_only():
    with pytest.raises(OptionError, match="single-task"):
        build_model(schema(), ["click", "conv"], backbone="dnn", framework="gprec")


def test_analysis_api():
    model = gprec()
    x, _ = batch(seed=15)
    m1 = model.group_assignment(x)
    assert m1.dtype == tf.float32 and m1.shape == (B, G)
    fields = model.embedding(x).fields.numpy()
    e_u = fields[:, [0, 1, 2]].reshape(B, -1)  # uid (personal) first, then the profile
    w = [k.numpy() for k in model.classifier.kernels]
    b = [v.numpy() for v in model.classifier.biases]
    scores = np.stack([mlp([k[g] for k in w], [v[g] for v in b], e_u) for g in range(G)], axis=1)
    want = np.exp(log_softmax(log_softmax(scores, 2) / DEFAULTS["temperature"], 2))[..., 0]
    np.testing.assert_allclose(m1.numpy(), want, rtol=1e-4, atol=1e-6)
    p, n = model.group_embeddings()
    assert isinstance(p, np.ndarray) and p.shape == n.shape == (G, D)
    assert model.user_features() == ["uid", "gender", "age"]
    groups = model.variable_groups()
    assert {v.ref() for v in groups["group_predictor"]} == {v.ref() for v in model.f1.trainable_variables}
    assert sum(len(v) for v in groups.values()) == len(model.trainable_variables)
