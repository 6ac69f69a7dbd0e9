"""TF4CTR: the Twin Focus loss against hand computations and Eq. 14, SSEM x DFM pairs
training and exporting, VF determinism at inference, the train_step's total loss and
update, the grad-norm logs (Eq. 13), distribution and mixed precision."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.factory import build_model
from models.losses import twin_focus_loss
from models.frameworks.tf4ctr import DEFAULTS, TF4CTR, DFM_MODES, SSEM_MODES, DynamicFusion, SampleSelectionEmbedding

N_USERS, N_ITEMS, N_CTX = 30, 30, 6
SMALL_DUAL = {"mlp1_units": [16], "mlp2_units": [16, 16, 16]}


def toy_schema() -> dict:
    feats = [
        Feature("user", "categorical", "string", "user", {"type": "vocab"}, num_ids=N_USERS + 2),
        Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=N_ITEMS + 2),
        Feature("ctx", "categorical", "string", "context", {"type": "hash"}, num_ids=N_CTX + 2),
        Feature("score", "numeric", "float32", "item", {"type": "identity"}, width=1, encoded_dtype="float32"),
    ]
    return Schema(features=feats, labels=["click", "conv"]).to_dict()


def toy_data(n: int, seed: int):
    """Clicks from a user x item dot product plus main effects (the same hidden world per seed)."""
    truth = np.random.default_rng(99)
    user_vec, item_vec = truth.normal(size=(N_USERS, 3)), truth.normal(size=(N_ITEMS, 3))
    user_bias, item_bias = truth.normal(size=N_USERS), truth.normal(size=N_ITEMS)
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, N_USERS, n), rng.integers(0, N_ITEMS, n)
    score = rng.random(n).astype(np.float32)
    logit = 1.5 * np.sum(user_vec[u] * item_vec[i], axis=1) + user_bias[u] + item_bias[i] + (score - 0.5)
    click = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)[:, None]
    x = {"user": (u + 2)[:, None].astype(np.int64), "item": (i + 2)[:, None].astype(np.int64),
         "ctx": rng.integers(2, N_CTX + 2, (n, 1)).astype(np.int64), "score": score[:, None]}
    return x, {"click": click}


def tf4ctr(backbone="dualmlp", backbone_options=None, embedding_dim=8, **options) -> TF4CTR:
    return build_model(toy_schema(), ["click"], backbone=backbone,
                       backbone_options=SMALL_DUAL if backbone_options is None else backbone_options,
                       embedding_dim=embedding_dim, framework="tf4ctr", framework_options=options)


def logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p / (1.0 - p))


def hand_tf_loss(y, ps, pc, alpha, c, gamma):
    """Eq. 7 with p = probability of the true class."""
    ps_t = np.where(y == 1, ps, 1 - ps)
    pc_t = np.where(y == 1, pc, 1 - pc)
    simple = -np.mean((c + ps_t) ** gamma * np.log(ps_t))
    complex_ = -np.mean(((2 - c) - pc_t) ** gamma * np.log(pc_t))
    return alpha * simple + (1 - alpha) * complex_


# ---- the Twin Focus loss ------------------------------------------------------------------------
@pytest.mark.parametrize("alpha,c,gamma", [(0.25, 0.8, 2.0), (0.25, 0.7, 1.0), (0.5, 0.0, 3.0),
                                           (0.35, 1.0, 2.0), (1.0, 0.5, 0.0)])
def test_twin_focus_loss_matches_hand_computation(alpha, c, gamma):
    rng = np.random.default_rng(int(100 * alpha + 10 * c + gamma))
    y = rng.integers(0, 2, 64).astype(np.float32)
    ps, pc = rng.uniform(0.02, 0.98, 64), rng.uniform(0.02, 0.98, 64)
    got = twin_focus_loss(y[:, None], logit(ps)[:, None], logit(pc)[:, None], alpha, c, gamma)
    np.testing.assert_allclose(float(got), hand_tf_loss(y, ps, pc, alpha, c, gamma), rtol=1e-5)


def test_twin_focus_loss_small_cases_and_weights():
    # one positive at p_s = 0.9, p_c = 0.2: 0.25 * -(1.7^2 log .9) + 0.75 * -((1.2 - .2)^2 log .2)
    want = 0.25 * -(1.7 ** 2 * np.log(0.9)) + 0.75 * -(1.0 ** 2 * np.log(0.2))
    got = twin_focus_loss([[1.0]], [[logit(0.9)]], [[logit(0.2)]], 0.25, 0.8, 2.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # a negative predicted at 0.9 has p_true = 0.1
    want = 0.25 * -(0.9 ** 2 * np.log(0.1)) + 0.75 * -(1.1 ** 2 * np.log(0.1))
    got = twin_focus_loss([[0.0]], [[logit(0.9)]], [[logit(0.9)]], 0.25, 0.8, 2.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # sample weights: sum(w * l) / N, as Keras' SUM_OVER_BATCH_SIZE
    y, ps, pc, w = np.array([1.0, 0.0]), np.array([0.7, 0.4]), np.array([0.6, 0.3]), np.array([2.0, 0.5])
    per = [hand_tf_loss(y[i:i + 1], ps[i:i + 1], pc[i:i + 1], 0.25, 0.8, 2.0) for i in range(2)]
    got = twin_focus_loss(y, logit(ps), logit(pc), 0.25, 0.8, 2.0, sample_weight=w)
    np.testing.assert_allclose(float(got), np.sum(w * per) / 2, rtol=1e-6)
    for bad in ({"alpha": 1.5}, {"c": -0.1}, {"gamma": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            twin_focus_loss([1.0], [0.0], [0.0], **{"alpha": 0.25, "c": 0.8, "gamma": 2.0, **bad})


def eq14_grad(y, p_model, c, gamma, part):
    """dl/dz of one sample's L_simple / L_complex, the closed form behind Eq. 14:
    simple: -s (c + p)^(g-1) (1 - p) [(c + p) + g p log p]
    complex: -s (m - p)^(g-1) (1 - p) [(m - p) - g p log p], p = p of the true class, s = 2y - 1."""
    p = p_model if y == 1 else 1 - p_model
    s = 2 * y - 1
    if part == "simple":
        return -s * (c + p) ** (gamma - 1) * (1 - p) * ((c + p) + gamma * p * np.log(p))
    m = 2 - c
    return -s * (m - p) ** (gamma - 1) * (1 - p) * ((m - p) - gamma * p * np.log(p))


@pytest.mark.parametrize("c,gamma", [(0.8, 2.0), (0.7, 1.0), (0.5, 3.0)])
def test_gradients_match_eq14(c, gamma):
    y = np.array([1, 1, 1, 0, 0, 0], np.float32)
    p = np.array([0.05, 0.5, 0.95, 0.05, 0.5, 0.95])
    z = tf.Variable(logit(p).astype(np.float32))
    for part, alpha in (("simple", 1.0), ("complex", 0.0)):
        with tf.GradientTape() as tape:
            # alpha = 1 leaves L_simple alone (z feeds both encoders here, only one term counts)
            loss = twin_focus_loss(y, z, z, alpha, c, gamma) * len(y)  # the per-sample sum
        got = tape.gradient(loss, z).numpy()
        want = [eq14_grad(y[i], p[i], c, gamma, part) for i in range(len(y))]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_misclassified_sample_gives_simple_encoder_the_smaller_gradient():
    """Sec. III-H: on a hard (misclassified) positive the simple encoder gets a smaller
    gradient than the complex one; on a well-classified one, the larger."""
    for c, gamma in ((0.8, 2.0), (0.7, 1.0), (0.8, 3.0)):
        for p in (0.05, 0.1, 0.2):
            assert abs(eq14_grad(1, p, c, gamma, "simple")) < abs(eq14_grad(1, p, c, gamma, "complex"))
        for p in (0.8, 0.9, 0.97):
            assert abs(eq14_grad(1, p, c, gamma, "simple")) > abs(eq14_grad(1, p, c, gamma, "complex"))
    # the same through TensorFlow, with the paper's weighting alpha = 0.25 (Eq. 15)
    zs, zc = tf.Variable([[float(logit(0.1))]]), tf.Variable([[float(logit(0.1))]])
    with tf.GradientTape() as tape:
        loss = twin_focus_loss([[1.0]], zs, zc, 0.25, 0.8, 2.0)
    gs, gc = tape.gradient(loss, [zs, zc])
    assert gs.numpy()[0, 0] < 0 and gc.numpy()[0, 0] < 0  # both push the logit up
    assert abs(gs.numpy()[0, 0]) < abs(gc.numpy()[0, 0])


# ---- layers ----------------------------------------------------------------------------------
def test_ssem_modes():
    x, _ = toy_data(8, seed=1)
    share = SampleSelectionEmbedding(toy_schema(), embedding_dim=8, mode="share")
    easy, hard = share(x)
    assert easy.fields is hard.fields and easy.fields.shape == (8, 4, 8)
    ser = SampleSelectionEmbedding(toy_schema(), embedding_dim=8, mode="ser")
    easy, hard = ser(x)
    assert easy.fields.shape == (8, 4, 4) and hard.fields.shape == (8, 4, 8)  # easy table at half width
    ser6 = SampleSelectionEmbedding(toy_schema(), embedding_dim=8, mode="ser", simple_embedding_dim=6)
    assert ser6(x)[0].fields.shape == (8, 4, 6)
    gm = SampleSelectionEmbedding(toy_schema(), embedding_dim=8, mode="gm")
    easy, hard = gm(x, training=False)
    emb = gm.complex_embedding(x)
    g = easy.fields / emb.fields  # one gate per sample, Eq. 4
    np.testing.assert_allclose((easy.fields + hard.fields).numpy(), emb.fields.numpy(), atol=1e-6)
    np.testing.assert_allclose(g.numpy(), np.broadcast_to(g.numpy()[:, :1, :1], g.shape), rtol=1e-4)
    assert np.all((g.numpy() > 0) & (g.numpy() < 1))
    moe = SampleSelectionEmbedding(toy_schema(), embedding_dim=8, mode="moe", gate_units=[8], expert_units=[16])
    easy, hard = moe(x, training=False)
    assert easy.fields.shape == hard.fields.shape == (8, 4, 8)
    assert not np.allclose(easy.fields.numpy(), hard.fields.numpy())  # different gates
    with pytest.raises(ValueError, match="ssem 'gate'"):
        SampleSelectionEmbedding(toy_schema(), mode="gate")
    with pytest.raises(ValueError, match="simple_embedding_dim applies to ssem 'ser' only"):
        SampleSelectionEmbedding(toy_schema(), mode="gm", simple_embedding_dim=4)


def test_dfm_modes_and_vf_noise():
    rng = np.random.default_rng(0)
    hs, hc = tf.constant(rng.normal(size=(16, 5)), tf.float32), tf.constant(rng.normal(size=(16, 7)), tf.float32)
    zs, zc = tf.constant(rng.normal(size=(16, 1)), tf.float32), tf.constant(rng.normal(size=(16, 1)), tf.float32)
    np.testing.assert_allclose(DynamicFusion("sum")(hs, zs, hc, zc).numpy(), (zs + zc).numpy())
    wsf = DynamicFusion("wsf")
    np.testing.assert_allclose(wsf(hs, zs, hc, zc).numpy(), (0.5 * zs + 0.5 * zc).numpy(), rtol=1e-6)  # Eq. 8
    vf = DynamicFusion("vf", temperature=0.8)
    inf1, inf2 = vf(hs, zs, hc, zc, training=False), vf(hs, zs, hc, zc, training=False)
    np.testing.assert_array_equal(inf1.numpy(), inf2.numpy())  # no Gumbel noise at inference
    votes = tf.concat([vf.vote_simple(hs), vf.vote_complex(hc)], axis=1) / 0.8
    p = tf.nn.softmax(votes).numpy()
    np.testing.assert_allclose(inf1.numpy(), p[:, :1] * zs.numpy() + p[:, 1:] * zc.numpy(), rtol=1e-5)  # Eq. 9
    tr1, tr2 = vf(hs, zs, hc, zc, training=True), vf(hs, zs, hc, zc, training=True)
    assert not np.allclose(tr1.numpy(), tr2.numpy())  # noise while training
    lo, hi = np.minimum(zs, zc), np.maximum(zs, zc)
    assert np.all((tr1.numpy() >= lo - 1e-6) & (tr1.numpy() <= hi + 1e-6))  # a convex vote of z_s, z_c
    cf = DynamicFusion("cf")
    out = cf(hs, zs, hc, zc)
    np.testing.assert_allclose(out.numpy(), cf.concat_logit(tf.concat([hs, hc], 1)).numpy(), rtol=1e-6)  # Eq. 10
    moef = DynamicFusion("moef")
    out = moef(hs, zs, hc, zc)
    h = tf.concat([hs, hc], 1)
    want = tf.reduce_sum(tf.nn.softmax(moef.gate(h)) * moef.experts(h), axis=1, keepdims=True)  # Eq. 11
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="dfm 'avg'"):
        DynamicFusion("avg")


# ---- the model ---------------------------------------------------------------------------------
def _fit_and_export(model, tmp_path, steps=8, epochs=3, lr=0.01):
    x, y = toy_data(1024, seed=1)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss={"click": "binary_crossentropy"})
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)
    before = model.evaluate(ds, verbose=0, return_dict=True)["loss"]
    hist = model.fit(ds.shuffle(8, seed=1).repeat(), steps_per_epoch=steps, epochs=epochs, verbose=0)
    after = model.evaluate(ds, verbose=0, return_dict=True)["loss"]
    losses = hist.history["loss"]
    assert np.all(np.isfinite(losses)) and after < before, (before, after, losses)
    for key in ("ctr_loss", "tf_loss", "grad_norm_zs", "grad_norm_zc"):
        assert key in hist.history and np.all(np.isfinite(hist.history[key])), key
    xt, _ = toy_data(64, seed=7)
    want = model(xt, training=False)
    assert set(want) == {"click"} and want["click"].shape == (64, 1) and want["click"].dtype == tf.float32
    path = str(tmp_path / "saved")
    tf.saved_model.save(model, path)
    loaded = tf.saved_model.load(path)
    got = loaded(xt, training=False)
    assert set(got) == {"click"}
    np.testing.assert_allclose(got["click"].numpy(), want["click"].numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dfm", DFM_MODES)
@pytest.mark.parametrize("ssem", SSEM_MODES)
def test_every_ssem_dfm_pair_trains_and_exports(ssem, dfm, tmp_path):
    tf.keras.utils.set_random_seed(3)
    _fit_and_export(tf4ctr(ssem=ssem, dfm=dfm, ssem_gate_units=[8], ssem_expert_units=[16]), tmp_path)


@pytest.mark.parametrize("backbone,options,ssem", [
    ("deepfm", {"dnn_units": [16, 16]}, "ser"),
    ("dcnv2", {"dnn_units": [16, 16], "num_cross_layers": 2}, "ser"),
    ("dcnv2", {"dnn_units": [16, 16], "num_cross_layers": 2}, "gm"),
    ("widedeep", {"dnn_units": [16, 16]}, "moe"),
    ("xdeepfm", {"dnn_units": [16], "cin_layer_sizes": [8, 8]}, "ser"),
    ("autoint+", {"dnn_units": [16], "attention_layers": 1, "att_dim": 8}, "ser"),
    ("destine", {"dnn_units": [16], "attention_layers": 2, "att_dim": 8, "residual_mode": "last_layer"}, "ser"),
])
def test_backbone_branches_as_encoders(backbone, options, ssem, tmp_path):
    """Sec. IV-B4: another backbone's explicit and deep branches as the simple and complex
    encoders; with SER the explicit branch reads the half-width easy table."""
    tf.keras.utils.set_random_seed(4)
    model = tf4ctr(backbone=backbone, backbone_options=options, ssem=ssem, dfm="wsf",
                   ssem_gate_units=[8], ssem_expert_units=[16])
    _fit_and_export(model, tmp_path)
    if ssem == "ser":
        x, _ = toy_data(4, seed=2)
        easy, hard = model.ssem(x)
        assert easy.fields.shape[-1] == 4 and hard.fields.shape[-1] == 8


def test_train_step_total_loss_and_update_match_hand_computation():
    """One SGD step: the logged loss is L_ctr + L_TF (Eq. 12) and the update is -lr times
    the gradient of that sum (with BN in training mode on the same batch)."""
    tf.keras.utils.set_random_seed(5)
    x, y = toy_data(64, seed=3)
    model = tf4ctr(ssem="ser", dfm="wsf", alpha=0.25, c=0.7, gamma=1.0)
    model(x, training=False)
    lr = 0.5
    model.compile(optimizer=tf.keras.optimizers.SGD(lr), loss={"click": "binary_crossentropy"})
    bce = tf.keras.losses.BinaryCrossentropy()
    with tf.GradientTape() as tape:
        out = model.logits(x, training=True)
        ctr = bce(y["click"], tf.sigmoid(out.fused))
        l_tf = hand_tf_loss(y["click"][:, 0], tf.sigmoid(out.simple).numpy()[:, 0],
                            tf.sigmoid(out.complex).numpy()[:, 0], 0.25, 0.7, 1.0)
        total = ctr + twin_focus_loss(y["click"], out.simple, out.complex, 0.25, 0.7, 1.0)
    np.testing.assert_allclose(float(total), float(ctr) + l_tf, rtol=1e-5)  # L_TF in TF == by hand
    variables = model.trainable_variables
    grads = tape.gradient(total, variables)
    before = [v.numpy() for v in variables]
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], float(total), rtol=1e-5)
    np.testing.assert_allclose(logs["ctr_loss"], float(ctr), rtol=1e-5)
    np.testing.assert_allclose(logs["tf_loss"], l_tf, rtol=1e-5)
    for v, b, g in zip(variables, before, grads):
        want = b if g is None else b - lr * tf.convert_to_tensor(g).numpy()
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-4, atol=1e-6, err_msg=v.name)


def test_grad_norms_follow_eq13_and_tf_loss_separates_them():
    """Sum fusion trained on L_ctr alone gives both logits the same gradient (Eq. 13),
    |y - sigma(z_s + z_c)|; with L_TF the two differ."""
    tf.keras.utils.set_random_seed(6)
    x, y = toy_data(128, seed=4)
    model = tf4ctr(ssem="share", dfm="sum", tf_loss_weight=0.0)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0), loss={"click": "binary_crossentropy"})
    p = model(x, training=True)["click"].numpy()  # BN in training mode, as in the step
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["grad_norm_zs"], logs["grad_norm_zc"], rtol=1e-5)
    np.testing.assert_allclose(logs["grad_norm_zs"], np.mean(np.abs(y["click"] - p)), rtol=1e-4)
    assert logs["tf_loss"] > 0 and np.isclose(logs["loss"], logs["ctr_loss"])  # logged, not trained on
    model = tf4ctr(ssem="share", dfm="sum")
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0), loss={"click": "binary_crossentropy"})
    logs = model.train_on_batch(x, y, return_dict=True)
    assert not np.isclose(logs["grad_norm_zs"], logs["grad_norm_zc"], rtol=1e-3)


def test_vf_model_is_deterministic_at_inference():
    x, _ = toy_data(64, seed=5)
    model = tf4ctr(ssem="ser", dfm="vf")
    a, b = model(x, training=False)["click"], model.predict(x, verbose=0)["click"]
    np.testing.assert_allclose(a.numpy(), b, rtol=1e-6)
    np.testing.assert_array_equal(a.numpy(), model(x, training=False)["click"].numpy())


def test_config_round_trip_and_defaults():
    x, _ = toy_data(32, seed=6)
    model = tf4ctr(ssem="moe", dfm="moef", alpha=0.35, ssem_gate_units=[8], ssem_expert_units=[16])
    before = model(x, training=False)["click"].numpy()
    config = json.loads(json.dumps(model.get_config()))
    assert config["alpha"] == 0.35 and config["ssem"] == "moe" and config["c"] == DEFAULTS["c"]
    clone = TF4CTR.from_config(config)
    clone(x, training=False)
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(x, training=False)["click"].numpy(), before)
    # the paper's defaults (Sec. IV-A/C, Table III; the authors' best logged runs)
    assert (DEFAULTS["ssem"], DEFAULTS["dfm"], DEFAULTS["alpha"], DEFAULTS["c"], DEFAULTS["gamma"]) == \
        ("ser", "wsf", 0.25, 0.8, 2.0)
    default = build_model(toy_schema(), ["click"], backbone="dualmlp", embedding_dim=16, framework="tf4ctr")
    easy, hard = default.ssem(x)
    assert easy.fields.shape[-1] == 8 and hard.fields.shape[-1] == 16


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="single-task"):
        build_model(toy_schema(), ["click", "conv"], backbone="dualmlp", framework="tf4ctr")
    with pytest.raises(ValueError, match="two-branch backbone"):
        tf4ctr(backbone="dnn", backbone_options={})
    with pytest.raises(ValueError, match="two-branch backbone"):
        tf4ctr(backbone="dcnv2", backbone_options={"structure": "stacked"})
    with pytest.raises(ValueError, match=r"framework_options\.gama: unknown option"):
        tf4ctr(gama=2)
    with pytest.raises(ValueError, match="alpha"):
        tf4ctr(alpha=2.0)
    with pytest.raises(ValueError, match="tf_loss_weight"):
        tf4ctr(tf_loss_weight=-1.0)


def test_mixed_precision_trains():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tf.keras.utils.set_random_seed(7)
        x, y = toy_data(256, seed=8)
        model = tf4ctr(ssem="gm", dfm="vf", ssem_gate_units=[8])
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
        assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        hist = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(64), epochs=2, verbose=0)
        assert np.all(np.isfinite(hist.history["loss"])) and np.all(np.isfinite(hist.history["grad_norm_zc"]))
        out = model(x, training=False)["click"]
        assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


_MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import models
    import tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    from test_tf4ctr import toy_data, tf4ctr
    x, y = toy_data(128, seed=9)
    out, arrays = {}, {}
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                           ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        tf.keras.utils.set_random_seed(1)
        with strategy.scope():
            model = tf4ctr(ssem="ser", dfm="wsf", ssem_batch_norm=False)
            model.compile(optimizer=tf.keras.optimizers.SGD(0.5), loss={"click": "binary_crossentropy"})
            model(x, training=False)  # build the variables in the strategy's scope
        initial = model.get_weights()
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # 4 steps
        logs = model.fit(ds, epochs=1, verbose=0).history
        out[name] = {"logs": {k: v[0] for k, v in logs.items()}, "replicas": strategy.num_replicas_in_sync,
                     "steps": int(model.optimizer.iterations.numpy())}
        arrays.update({f"{name}/init/{i}": w for i, w in enumerate(initial)})
        arrays.update({f"{name}/final/{i}": w for i, w in enumerate(model.get_weights())})
    np.savez(sys.argv[2], **arrays)
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_mirrored_strategy_matches_one_device(tmp_path):
    """Two replicas on half batches take the same steps as one device on whole batches: after
    4 SGD steps every weight matches element-wise, and so do the logged L_TF and grad norms
    (scaled like the compiled loss)."""
    script, weights_file = tmp_path / "mirrored.py", tmp_path / "weights.npz"
    script.write_text(_MIRRORED)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(script), os.path.dirname(__file__), str(weights_file)],
                          capture_output=True, text=True, timeout=600, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    assert out["two"]["replicas"] == 2 and out["one"]["steps"] == out["two"]["steps"] == 4
    for key in ("loss", "ctr_loss", "tf_loss", "grad_norm_zs", "grad_norm_zc"):
        np.testing.assert_allclose(out["two"]["logs"][key], out["one"]["logs"][key], rtol=1e-5, err_msg=key)
    w = np.load(weights_file)
    n = len([k for k in w.files if k.startswith("one/final/")])
    assert n > 0 and n == len([k for k in w.files if k.startswith("two/final/")])
    moved = 0
    for i in range(n):
        np.testing.assert_array_equal(w[f"two/init/{i}"], w[f"one/init/{i}"], err_msg=f"initial weight {i}")
        np.testing.assert_allclose(w[f"two/final/{i}"], w[f"one/final/{i}"], rtol=1e-5, atol=1e-6,
                                   err_msg=f"weight {i} after 4 steps")
        moved += not np.allclose(w[f"one/final/{i}"], w[f"one/init/{i}"])
    assert moved >= n // 2, f"only {moved} of {n} weights changed: the comparison would be vacuous"
