"""IV (IV4Rec, framework ``iv``): the first-stage decomposition against least squares by hand,
the recombination against the weighting networks by hand, the treatment fields replaced before
the backbone, the loss (BCE + the weighting networks' L2) by hand, which weights the gradient
reaches, option errors, the config round trip, training with two backbones, a forward pass over
every backbone, and SavedModel (raw features) == Keras."""
import os
import sys

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.backbones import BACKBONES
from models.factory import build_model
from models.frameworks.iv import IV, Recombination, first_stage
from models.options import OptionError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "serving"))
from serving_fixtures import SMALL  # noqa: E402

N_USERS, N_ITEMS, N_CATS, SEQ = 20, 30, 5, 6


def toy_schema(**extra) -> dict:
    feats = [
        Feature("user", "categorical", "string", "user", {"type": "vocab"}, num_ids=N_USERS + 2),
        Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=N_ITEMS + 2),
        Feature("cat", "categorical", "string", "item", {"type": "vocab"}, num_ids=N_CATS + 2),
        Feature("hist_item", "sequence", "string", "sequence",
                {"type": "sequence_vocab", "max_len": SEQ, "share_vocab_with": "item"}, num_ids=N_ITEMS + 2,
                width=SEQ),
        Feature("hist_cat", "sequence", "string", "sequence",
                {"type": "sequence_vocab", "max_len": SEQ, "share_vocab_with": "cat"}, num_ids=N_CATS + 2,
                width=SEQ),
        Feature("tags", "sequence", "string", "item", {"type": "sequence_vocab", "max_len": 3}, num_ids=9,
                width=3),  # a sequence sharing no vocabulary: not a default instrument
    ]
    return Schema(features=feats, labels=["click"], **extra).to_dict()


def toy_data(n: int, seed: int):
    """Clicks driven by the candidate matching the user's history (the hidden world is fixed)."""
    truth = np.random.default_rng(7)
    item_cat = truth.integers(0, N_CATS, N_ITEMS)
    item_bias, user_taste = truth.normal(size=N_ITEMS), truth.integers(0, N_CATS, N_USERS)
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, N_USERS, n), rng.integers(0, N_ITEMS, n)
    lengths = rng.integers(0, SEQ + 1, n)
    hist = np.zeros((n, SEQ), np.int64)
    for r in range(n):  # earlier clicks: mostly items of the user's favourite category
        liked = np.flatnonzero(item_cat == user_taste[u[r]])
        pool = liked if liked.size and rng.random() < 0.8 else np.arange(N_ITEMS)
        hist[r, :lengths[r]] = rng.choice(pool, lengths[r]) + 2
    hist_cat = np.where(hist > 0, item_cat[np.maximum(hist - 2, 0)] + 2, 0)
    logit = item_bias[i] + 2.0 * (item_cat[i] == user_taste[u]) - 1.0
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)[:, None]
    x = {"user": (u + 2)[:, None], "item": (i + 2)[:, None], "cat": (item_cat[i] + 2)[:, None],
         "hist_item": hist, "hist_cat": hist_cat, "tags": rng.integers(0, 9, (n, 3))}
    return {k: np.asarray(v, np.int64) for k, v in x.items()}, {"click": click}


def iv_model(backbone="dnn", embedding_dim=4, seed=0, **options) -> IV:
    tf.keras.utils.set_random_seed(seed)
    return build_model(toy_schema(), ["click"], backbone=backbone, backbone_options=SMALL.get(backbone, {}),
                       embedding_dim=embedding_dim, framework="iv", framework_options=options)


def tensors(x: dict) -> dict:
    return {k: tf.constant(v) for k, v in x.items()}


def hand_gate(layer: Recombination, part: str, x: np.ndarray) -> np.ndarray:
    """sigma(w^T tanh-MLP(x) + b) from the layer's weights."""
    mlp, out = layer.gates[part]
    h = x
    for dense in mlp.dense:
        w, b = (v.numpy() for v in dense.weights)
        h = np.tanh(h @ w + b)
    w, b = (v.numpy() for v in out.weights)
    return 1.0 / (1.0 + np.exp(-(h @ w + b)))


# ---- the first stage ----------------------------------------------------------------------------
def test_first_stage_is_the_least_squares_projection_on_the_instruments():
    rng = np.random.default_rng(0)
    t, z = rng.normal(size=(16, 6)), rng.normal(size=(16, 2, 6))
    fitted = first_stage(tf.constant(t, tf.float32), tf.constant(z, tf.float32), ridge=0.0).numpy()
    for b in range(16):  # by hand: t_hat = Z^T c with c = argmin ||Z^T c - t||
        coef = np.linalg.lstsq(z[b].T, t[b], rcond=None)[0]
        np.testing.assert_allclose(fitted[b], z[b].T @ coef, atol=1e-5)
    residual = t - fitted
    np.testing.assert_allclose(np.einsum("bkd,bd->bk", z, residual), 0.0, atol=1e-5)  # residual _|_ span(Z)
    assert np.min(np.linalg.norm(residual, axis=1)) > 0.1  # k < d: a proper part of t, not all of it


def test_first_stage_ridge_and_empty_instruments_by_hand():
    rng = np.random.default_rng(1)
    t, z = rng.normal(size=(8, 5)), rng.normal(size=(8, 3, 5))
    z[3] = 0.0  # a user without history: no instrument, no fitted part
    ridge = 0.1
    fitted = first_stage(tf.constant(t, tf.float32), tf.constant(z, tf.float32), ridge).numpy()
    for b in range(8):
        gram = z[b] @ z[b].T
        lam = ridge * np.trace(gram) / 3 + 1e-12
        coef = np.linalg.solve(gram + lam * np.eye(3), z[b] @ t[b])
        np.testing.assert_allclose(fitted[b], z[b].T @ coef, atol=1e-5)
    assert np.all(np.isfinite(fitted)) and np.all(fitted[3] == 0.0)


# ---- the recombination --------------------------------------------------------------------------
def test_recombination_weights_the_two_parts_by_hand():
    rng = np.random.default_rng(2)
    t, z = rng.normal(size=(10, 4)).astype(np.float32), rng.normal(size=(10, 2, 4)).astype(np.float32)
    layer = Recombination([5, 3], "tanh", ridge=0.0)
    out = {k: v.numpy() for k, v in layer(tf.constant(t), tf.constant(z)).items()}
    for v in layer.trainable_variables:  # non-zero biases: the two networks differ
        v.assign(rng.normal(0.0, 0.5, v.shape))
    out = {k: v.numpy() for k, v in layer(tf.constant(t), tf.constant(z)).items()}
    np.testing.assert_allclose(out["fitted"] + out["residual"], t, atol=1e-6)
    x = np.concatenate([t, z.reshape(10, 8)], axis=1)
    a_c, a_n = hand_gate(layer, "causal", x), hand_gate(layer, "noncausal", x)
    np.testing.assert_allclose(out["causal_weight"], a_c, atol=1e-6)
    np.testing.assert_allclose(out["noncausal_weight"], a_n, atol=1e-6)
    assert np.max(np.abs(a_c - a_n)) > 0.05
    np.testing.assert_allclose(out["reconstructed"], a_c * out["fitted"] + a_n * out["residual"], atol=1e-6)


def perturbed(model, x) -> None:
    """Build ``model`` on ``x`` and give its zero-initialised weights non-zero values."""
    model(tensors(x))
    rng = np.random.default_rng(3)
    for v in model.trainable_variables:
        if not np.any(v.numpy()):
            v.assign(rng.normal(0.0, 0.3, v.shape))


def test_treatment_fields_are_replaced_before_the_backbone():
    x, _ = toy_data(32, 0)
    model = iv_model()
    perturbed(model, x)
    assert model.instrument_names == ["hist_item", "hist_cat"] and model.treatment_names == ["item", "cat"]
    assert not model.treatment_targets  # dnn reads no sequence rows
    emb = model.embedding(tensors(x))
    parts = model.decompose(tensors(x), emb)
    fields = model.reconstructed(tensors(x), emb).fields.numpy()
    for i, name in enumerate(model.embedding.field_features):
        want = parts[name]["reconstructed"].numpy() if name in parts else emb.fields[:, i].numpy()
        np.testing.assert_allclose(fields[:, i], want, atol=1e-7, err_msg=name)
    # Z: the masked mean of each history's rows (zeros for an empty one), by hand
    table = model.embedding.tables[0]["hist_item"]["embedding"].numpy()
    ids = x["hist_item"]
    mask = (ids > 0)[..., None]
    z_hand = (table[ids] * mask).sum(1) / np.maximum(mask.sum(1), 1)
    np.testing.assert_allclose(model.instruments(tensors(x))[:, 0].numpy(), z_hand, atol=1e-7)
    # the served output is the base model's on the replaced fields
    out = model.task_heads(model.backbone(emb._replace(fields=tf.constant(fields))))["click"]
    np.testing.assert_allclose(model(tensors(x))["click"].numpy(), tf.sigmoid(out).numpy(), atol=1e-6)


def test_din_attention_queries_are_decomposed_too():
    x, _ = toy_data(32, 1)
    model = iv_model("din")
    perturbed(model, x)
    for v in model.embedding.trainable_variables:  # rows of norm ~1: attention weights that differ
        v.assign(v * 30.0)
    assert model.treatment_targets == {"hist_item_target": 0, "hist_cat_target": 1}
    emb = model.embedding(tensors(x))
    parts = model.decompose(tensors(x), emb)
    new = model.reconstructed(tensors(x), emb)
    for key, j in model.treatment_targets.items():
        np.testing.assert_allclose(new.sequences[j].target.numpy(), parts[key]["reconstructed"].numpy(), atol=1e-7)
        assert np.max(np.abs(new.sequences[j].target.numpy() - emb.sequences[j].target.numpy())) > 1e-4
        np.testing.assert_array_equal(new.sequences[j].rows.numpy(), emb.sequences[j].rows.numpy())
    out = model.task_heads(model.backbone(new))["click"]
    np.testing.assert_allclose(model(tensors(x))["click"].numpy(), tf.sigmoid(out).numpy(), atol=1e-6)
    queried = model.backbone(new._replace(fields=emb.fields)).logit.numpy()  # the queries alone move the logit
    assert np.max(np.abs(queried - model.backbone(emb).logit.numpy())) > 1e-3


# ---- the loss and the gradient ------------------------------------------------------------------
def test_loss_is_the_compiled_bce_plus_the_weighting_networks_l2_by_hand():
    x, y = toy_data(64, 1)
    model = iv_model(gate_l2=0.05)
    model.compile(optimizer="sgd", loss={"click": "binary_crossentropy"})
    forward = model(tensors(x), return_forward=True)
    loss = float(model.objectives(tensors(x), tensors(y), forward, None)["ctr"].value)
    p = np.clip(tf.sigmoid(forward.logits["click"]).numpy(), 1e-7, 1 - 1e-7)
    bce = -np.mean(y["click"] * np.log(p) + (1 - y["click"]) * np.log(1 - p))
    l2 = 0.05 * sum(float(np.sum(v.numpy() ** 2)) for v in model.variable_groups()["iv"] if "kernel" in v.name)
    assert l2 > 1e-3
    np.testing.assert_allclose(loss, bce + l2, rtol=1e-5)


def test_gradient_reaches_treatments_and_weighting_networks_not_the_instruments():
    x, y = toy_data(64, 2)
    model = iv_model()
    model(tensors(x))
    emb = model.embedding
    tables = {n: emb.tables[0][n]["embedding"] for n in ("item", "cat", "hist_item", "hist_cat", "user")}
    with tf.GradientTape(persistent=True) as tape:
        parts = model.decompose(tensors(x), emb(tensors(x)))
        through = tf.add_n([tf.reduce_sum(p["reconstructed"] ** 2) for p in parts.values()])
        loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(y["click"], model(tensors(x))["click"]))
    grads = dict(zip(tables, tape.gradient(through, list(tables.values()))))
    assert np.abs(tf.convert_to_tensor(grads["item"]).numpy()).sum() > 0
    assert np.abs(tf.convert_to_tensor(grads["cat"]).numpy()).sum() > 0
    for name in ("hist_item", "hist_cat"):  # exogenous: stop_gradient
        assert grads[name] is None or not np.any(tf.convert_to_tensor(grads[name]).numpy()), name
    for v, g in zip(model.variable_groups()["iv"], tape.gradient(loss, model.variable_groups()["iv"])):
        assert g is not None and np.abs(g.numpy()).sum() > 0, v.name
    for v, g in zip(model.backbone.trainable_variables, tape.gradient(loss, model.backbone.trainable_variables)):
        assert g is not None, v.name


# ---- options, config ----------------------------------------------------------------------------
def test_options_name_instruments_and_treatments():
    model = iv_model(instruments=["hist_cat"], treatments=["cat", "item"])
    assert model.instrument_names == ["hist_cat"] and model.treatment_names == ["cat", "item"]
    assert iv_model(instruments=["hist_item"]).treatment_names == ["item"]


@pytest.mark.parametrize("options,match", [
    ({"instruments": ["nope"]}, r"framework_options.instruments\[0\] = 'nope'"),
    ({"instruments": ["item"]}, r"instruments\[0\] = 'item'.*embedded sequence"),
    ({"treatments": ["hist_item"]}, r"treatments\[0\] = 'hist_item'.*single-field"),
    ({"instruments": ["tags"]}, r"treatments: none found"),
    ({"ridge": -1.0}, r"framework_options.ridge"),
    ({"gate_activation": "nope"}, r"framework_options.gate_activation"),
])
def test_bad_options_fail_naming_the_key(options, match):
    with pytest.raises(OptionError, match=match):
        iv_model(**options)


def test_a_schema_without_behaviour_sequences_fails_naming_the_option():
    schema = Schema.from_dict(toy_schema())
    schema = Schema(features=[f for f in schema.features if not f.name.startswith("hist")], labels=["click"])
    with pytest.raises(OptionError, match=r"framework_options.instruments: none found"):
        build_model(schema.to_dict(), ["click"], backbone="dnn", framework="iv")


def test_config_round_trip_gives_the_same_model():
    x, _ = toy_data(16, 3)
    model = iv_model(instruments=["hist_item"], ridge=0.01, gate_units=[6])
    expected = model(tensors(x))["click"].numpy()
    clone = IV.from_config(model.get_config())
    clone(tensors(x))
    clone.set_weights(model.get_weights())
    assert clone.get_config() == model.get_config() and clone.treatment_names == ["item"]
    np.testing.assert_allclose(clone(tensors(x))["click"].numpy(), expected, atol=1e-7)


# ---- training, every backbone, serving ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["dnn", "din"])
def test_trains_a_few_steps(backbone):
    x, y = toy_data(1024, 4)
    model = iv_model(backbone, embedding_dim=8)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    model(tensors({k: v[:2] for k, v in x.items()}))
    before = [v.numpy().copy() for v in model.variable_groups()["iv"]]
    hist = model.fit(x, y, batch_size=256, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(hist)) and hist[-1] < hist[0] - 0.02, hist
    assert all(not np.allclose(a, v.numpy()) for a, v in zip(before, model.variable_groups()["iv"]))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_reads_the_reconstructed_fields(backbone):
    x, _ = toy_data(8, 5)
    model = iv_model(backbone)
    p = model(tensors(x))["click"].numpy()
    assert p.shape == (8, 1) and np.all(np.isfinite(p))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["dnn", "din"])
def test_saved_model_equals_keras(backbone, tmp_path):
    from serving_fixtures import TASKS, encode_rows, fit_features, keras_predict, perturb, request_rows
    from serving.clients import LocalModelServer, RequestBuilder
    from serving.export import export_model

    data_dir, schema = fit_features(str(tmp_path))
    rows = request_rows()
    encoded = encode_rows(schema, data_dir, rows)
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema.to_dict(), TASKS, backbone=backbone, backbone_options={"dnn_units": [16]},
                        embedding_dim=4, framework="iv")
    assert model.instrument_names == ["hist_item"] and model.treatment_names == ["item_id"]
    model(encoded, training=False)
    perturb(model)
    expected = keras_predict(model, encoded)
    export_dir = str(tmp_path / backbone / "1")
    export_model(model, schema, TASKS, data_dir, export_dir, warmup_batch_sizes=(1,))
    raw = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))
    for t in TASKS:
        assert np.std(expected[t]) > 1e-3
        np.testing.assert_allclose(raw[t], expected[t], rtol=0, atol=1e-5, err_msg=t)
