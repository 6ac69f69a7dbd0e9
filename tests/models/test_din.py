"""DIN (Zhou et al., KDD'18), Rec4Ad's Base: the activation unit and the pooled interest
against a numpy hand computation (Eq. 3), padding, Dice in training and inference mode
(Eq. 8-9), the sequence rows of the embedding, gradients, config round trips, DIN under the
frameworks none and tf4ctr, mixed precision and the error for a schema without sequences."""
import json

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema, SchemaError
from models import layers as L
from models.backbones import get_backbone
from models.embedding import EmbeddedFields, FeatureEmbedding, SequenceRows, plan_sequences
from models.factory import build_model
from models.field_modules import FieldModule, register_field_module

N_USERS, N_ITEMS, N_CATS, SEQ_LEN = 20, 30, 6, 5
SMALL = {"dnn_units": [16, 8], "att_units": [8, 4]}


def schema(shared: bool = True) -> dict:
    """user, item, category, two behaviour sequences (sharing the vocabularies of item and
    category when ``shared``) and a float."""
    def seq(name, target, n):
        enc = {"type": "sequence_vocab", "max_len": SEQ_LEN, **({"share_vocab_with": target} if shared else {})}
        return Feature(name, "sequence", "string", "sequence", enc, num_ids=n + 2, width=SEQ_LEN)

    feats = [Feature("user", "categorical", "string", "user", {"type": "vocab"}, num_ids=N_USERS + 2),
             Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=N_ITEMS + 2),
             Feature("category", "categorical", "string", "item", {"type": "vocab"}, num_ids=N_CATS + 2),
             seq("hist_item", "item", N_ITEMS), seq("hist_cat", "category", N_CATS),
             Feature("score", "numeric", "float32", "item", {"type": "identity"}, width=1, encoded_dtype="float32")]
    return Schema(features=feats, labels=["click"]).to_dict()


def data(n: int, seed: int):
    """Clicks that depend on whether the candidate item is in the user's history."""
    rng = np.random.default_rng(seed)
    item = rng.integers(2, N_ITEMS + 2, n)
    lengths = rng.integers(0, SEQ_LEN + 1, n)
    pad = np.arange(SEQ_LEN)[None, :] >= lengths[:, None]
    hist = np.where(pad, 0, rng.integers(2, N_ITEMS + 2, (n, SEQ_LEN)))
    cat_of = lambda ids: np.where(ids == 0, 0, 2 + ids % N_CATS)  # noqa: E731
    seen = (hist == item[:, None]).any(axis=1) | (rng.random(n) < 0.1)
    click = (rng.random(n) < np.where(seen, 0.8, 0.2)).astype(np.float32)[:, None]
    x = {"user": rng.integers(2, N_USERS + 2, (n, 1)), "item": item[:, None], "category": cat_of(item)[:, None],
         "hist_item": hist, "hist_cat": cat_of(hist), "score": rng.random((n, 1)).astype(np.float32)}
    return {k: (v.astype(np.int64) if v.dtype.kind == "i" else v) for k, v in x.items()}, {"click": click}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def dice_np(s, mean, var, alpha, eps=1e-8):
    p = sigmoid((s - mean) / np.sqrt(var + eps))
    return p * s + (1.0 - p) * alpha * s


def dense_np(layer, x):
    return x @ layer.kernel.numpy().astype(np.float64) + layer.bias.numpy().astype(np.float64)


def set_random(layer, rng, scale=0.5):
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * scale for w in layer.get_weights()])


# ---- the activation unit (Eq. 3) and Dice (Eq. 8-9) against hand computations ---------------
def _unit_case(seed=0, b=3, length=4, d=3):
    rng = np.random.default_rng(seed)
    keys, query = rng.normal(size=(b, length, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
    unit = L.ActivationUnit([5, 4], activation="dice")
    unit(keys, query, mask)
    set_random(unit, rng)  # alpha and the moving statistics too (positive variances below)
    for act in unit.mlp.acts:
        act.moving.variance.assign(rng.uniform(0.5, 2.0, act.moving.variance.shape).astype(np.float32))
        act.moving.updates.assign(3.0)
    return unit, keys, query, mask


def test_activation_unit_matches_hand_computation():
    unit, keys, query, mask = _unit_case()
    interest, weights = unit(keys, query, mask, training=False)
    k = keys.astype(np.float64)
    q = np.broadcast_to(query[:, None, :], keys.shape).astype(np.float64)
    h = np.concatenate([k, q, k - q, k * q], axis=-1)
    for dense, act in zip(unit.mlp.dense, unit.mlp.acts):  # inference: the moving statistics
        h = dice_np(dense_np(dense, h), *[t.numpy() for t in act.moving.read()], act.alpha.numpy())
    w = dense_np(unit.score, h)[..., 0] * mask  # no softmax
    np.testing.assert_allclose(weights.numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(interest.numpy(), np.einsum("bl,bld->bd", w, k), rtol=1e-5, atol=1e-6)
    assert not np.allclose(w[0].sum(), 1.0)  # the paper keeps the intensity: no normalisation


def test_padding_weighs_exactly_zero_and_is_not_renormalised():
    unit, keys, query, mask = _unit_case(seed=1)
    keys_inf = keys.copy()
    keys_inf[~mask] = 1e3  # whatever the padding rows hold
    interest, weights = unit(keys_inf, query, mask, training=False)
    assert np.all(weights.numpy()[~mask] == 0.0)
    np.testing.assert_array_equal(interest.numpy()[2], np.zeros(3))  # all padding: zeros
    # row 1 with only its two real behaviours: the same weights (none rescaled), the same interest;
    # atol: a batch of another shape takes other float32 kernels (one-ulp differences near 0.01)
    short, w_short = unit(keys[1:2, :2], query[1:2], mask[1:2, :2], training=False)
    np.testing.assert_allclose(weights.numpy()[1, :2], w_short.numpy()[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(interest.numpy()[1], short.numpy()[0], rtol=1e-6, atol=1e-7)


def test_dice_training_uses_batch_statistics_and_updates_moving_ones():
    rng = np.random.default_rng(2)
    s = rng.normal(1.0, 2.0, size=(6, 4, 3)).astype(np.float32)  # stats over every axis but the last
    dice = L.Dice(momentum=0.9)
    dice(s)
    alpha = np.array([0.1, -0.3, 0.25], np.float32)
    dice.alpha.assign(alpha)
    got = dice(s, training=True).numpy()
    flat = s.reshape(-1, 3).astype(np.float64)
    mean, var = flat.mean(axis=0), flat.var(axis=0)  # the batch's, biased, as batch normalisation
    np.testing.assert_allclose(got, dice_np(s, mean, var, alpha), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dice.moving.mean.numpy(), 0.1 * mean, rtol=1e-5)  # from 0, momentum 0.9
    np.testing.assert_allclose(dice.moving.variance.numpy(), 0.1 * var, rtol=1e-5)
    s2 = rng.normal(-1.0, 0.5, size=(6, 4, 3)).astype(np.float32)
    dice(s2, training=True)
    flat2 = s2.reshape(-1, 3).astype(np.float64)
    mean = (0.09 * mean + 0.1 * flat2.mean(axis=0)) / 0.19  # bias-corrected: / (1 - 0.9^2)
    var = (0.09 * var + 0.1 * flat2.var(axis=0)) / 0.19
    # inference reads the (corrected) moving statistics, not the batch's
    np.testing.assert_allclose(dice(s, training=False).numpy(), dice_np(s, mean, var, alpha), rtol=1e-5, atol=1e-6)


def test_dice_and_activation_unit_config_round_trip():
    rng = np.random.default_rng(3)
    unit, keys, query, mask = _unit_case(seed=3)
    unit = L.ActivationUnit([6], activation="prelu", dropout=0.1, batch_norm=True, l2_reg=0.01)
    unit(keys, query, mask)
    set_random(unit, rng)
    clone = L.ActivationUnit.from_config(json.loads(json.dumps(unit.get_config())))
    clone(keys, query, mask)
    clone.set_weights(unit.get_weights())
    for a, b in zip(unit(keys, query, mask, training=False), clone(keys, query, mask, training=False)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    dice = L.Dice(epsilon=1e-3, momentum=0.5)
    assert L.Dice.from_config(dice.get_config()).get_config() == dice.get_config()


# ---- the embedding's sequence rows and the backbone --------------------------------------------
def test_embedding_gives_sequence_rows_from_the_sequence_table():
    x, _ = data(8, seed=4)
    emb_layer = FeatureEmbedding(schema(), embedding_dim=4, linear=False, sequences=True)
    emb = emb_layer(x)
    assert FeatureEmbedding(schema(), embedding_dim=4)(x).sequences is None  # not asked: not computed
    assert plan_sequences(schema()) == [("hist_item", "item"), ("hist_cat", "category")]
    seq = emb.sequences[0]
    table = emb_layer.tables[0]["hist_item"]["embedding"].numpy()
    np.testing.assert_array_equal(seq.rows.numpy(), table[x["hist_item"]])
    np.testing.assert_array_equal(seq.mask.numpy(), x["hist_item"] != 0)
    np.testing.assert_array_equal(seq.target.numpy(), table[x["item"][:, 0]])  # the sequence's table
    assert emb_layer.field_names[seq.field] == "hist_item"
    # the field DIN replaces is the mean of the non-padding rows
    n = np.maximum((x["hist_item"] != 0).sum(axis=1, keepdims=True), 1)
    np.testing.assert_allclose(emb.fields.numpy()[:, seq.field],
                               (table[x["hist_item"]] * (x["hist_item"] != 0)[..., None]).sum(axis=1) / n, rtol=1e-6)


def test_din_replaces_each_sequence_field_with_its_interest():
    rng = np.random.default_rng(5)
    b, f, d, length = 4, 3, 2, 3
    fields = rng.normal(size=(b, f, d)).astype(np.float32)
    seqs = tuple(SequenceRows(rng.normal(size=(b, length, d)).astype(np.float32),
                              rng.random((b, length)) < 0.7, rng.normal(size=(b, d)).astype(np.float32), i)
                 for i in (2, 0))
    emb = EmbeddedFields(tf.constant(fields), None, seqs)
    bb = get_backbone("din", f, d, **SMALL)
    out = bb(emb, training=False)
    want = fields.copy()
    for unit, s in zip(bb.attention["din"], seqs):
        want[:, s.field] = unit(s.rows, s.target, s.mask, training=False)[0].numpy()
    h, logit = bb.towers["din"](want.reshape(b, -1), training=False)
    np.testing.assert_allclose(out.logit.numpy(), logit.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out.repr.numpy(), h.numpy(), rtol=1e-6)  # r_b: the last hidden layer
    assert out.repr.shape == (b, 8) and len(bb.attention["din"]) == 2
    assert bb.options["dnn_activation"] == "dice" and get_backbone("din", f, d).options["dnn_units"] == (200, 80)
    assert get_backbone("din", f, d).options["att_units"] == (80, 40)


def test_gradient_reaches_the_sequence_table_through_the_attention():
    x, y = data(32, seed=6)
    model = build_model(schema(), ["click"], backbone="din", backbone_options=SMALL, embedding_dim=4)
    with tf.GradientTape() as tape:
        p = model(x, training=True)["click"]
        loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(y["click"], p))
    table = model.embedding.tables[0]["hist_item"]["embedding"]
    grad = tf.convert_to_tensor(tape.gradient(loss, table)).numpy()
    # the mean-pooled field is replaced, so every gradient here came through Eq. 3 (keys and query)
    # (a query of an empty history weighs nothing: no gradient)
    queries = x["item"][(x["hist_item"] != 0).any(axis=1), 0]
    touched = np.unique(np.concatenate([x["hist_item"][x["hist_item"] != 0], queries]))
    assert np.all(np.abs(grad[touched]).sum(axis=1) > 0)
    untouched = np.setdiff1d(np.arange(N_ITEMS + 2), touched)
    assert np.all(grad[untouched] == 0)


def test_config_round_trip_and_checkpoint_give_equal_outputs(tmp_path):
    x, _ = data(16, seed=7)
    model = build_model(schema(), ["click"], backbone="din", backbone_options=SMALL, embedding_dim=4)
    model(x, training=False)
    set_random(model, np.random.default_rng(7), scale=0.3)
    for w in model.weights:
        if "moving_variance" in w.name or "moving_updates" in w.name:
            w.assign(tf.abs(w) + 0.5)
    want = model(x, training=False)["click"].numpy()
    clone = type(model).from_config(json.loads(json.dumps(model.get_config())))
    clone(x, training=False)
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(x, training=False)["click"].numpy(), want)
    assert np.std(want) > 1e-3
    # a checkpoint read before the first call (serving's load_model, a resumed run) also restores
    # the activation units, which that call makes; expect_partial would hide a miss
    model.save_weights(str(tmp_path / "ckpt"))
    fresh = build_model(schema(), ["click"], backbone="din", backbone_options=SMALL, embedding_dim=4)
    fresh.load_weights(str(tmp_path / "ckpt")).expect_partial()
    np.testing.assert_array_equal(fresh(x, training=False)["click"].numpy(), want)


@register_field_module("_test_din_item_copy")
class ItemCopy(FieldModule):
    """Adds one field: the item's embedded field again."""

    @classmethod
    def count_fields(cls, schema_dict, options):
        return 1

    def _fields(self, inputs, emb, training):
        return emb.fields[:, 1:2]


def test_field_modules_pass_the_sequences_through():
    x, _ = data(8, seed=10)
    model = build_model(schema(), ["click"], backbone="din", backbone_options=SMALL, embedding_dim=4,
                        field_modules=[{"name": "_test_din_item_copy"}])
    base = model.embedding(x)
    emb = model.added_fields(x, base)
    assert emb.fields.shape[1] == base.fields.shape[1] + 1 and emb.sequences is base.sequences
    assert model(x, training=False)["click"].shape == (8, 1)


# ---- frameworks, precision, errors ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("framework, options", [("none", SMALL), ("tf4ctr", {**SMALL, "simple_units": [8]})])
def test_din_trains_under_a_framework(framework, options):
    tf.keras.utils.set_random_seed(8)
    x, y = data(256, seed=8)
    model = build_model(schema(), ["click"], backbone="din", backbone_options=options, embedding_dim=4,
                        framework=framework)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    model(x, training=False)
    before = {w.name: w.numpy().copy() for w in model.weights}
    hist = model.fit(x, y, batch_size=64, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(hist)) and hist[-1] < hist[0]
    units = [u for branch in model.backbone.attention.values() for u in branch]
    assert len(units) == (4 if framework == "tf4ctr" else 2)  # a unit per sequence (per branch)
    for unit in units:  # every unit trained, and its Dice statistics moved
        for w in unit.weights:
            assert not np.array_equal(w.numpy(), before[w.name]), w.name


@pytest.mark.parametrize("ssem", ["share", "gm", "moe"])
def test_tf4ctr_ssem_modes_keep_the_sequences(ssem):
    """SSEM's gates rebuild the embedded fields; the branches still get the behaviour rows."""
    x, _ = data(8, seed=11)
    model = build_model(schema(), ["click"], backbone="din", backbone_options={**SMALL, "simple_units": [8]},
                        embedding_dim=4, framework="tf4ctr", framework_options={"ssem": ssem})
    simple, complex_ = model.ssem(x)
    assert simple.sequences is not None and complex_.sequences is not None
    assert np.all(np.isfinite(model(x, training=False)["click"].numpy()))


def test_tf4ctr_needs_two_branches_of_din():
    with pytest.raises(ValueError, match="two-branch backbone.*'din'"):
        build_model(schema(), ["click"], backbone="din", backbone_options=SMALL, embedding_dim=4, framework="tf4ctr")


def test_mixed_bfloat16_keeps_attention_input_and_logits_float32():
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        x, _ = data(16, seed=9)
        model = build_model(schema(), ["click"], backbone="din", backbone_options=SMALL, embedding_dim=4)
        out = model(x, training=False)["click"]
        unit = model.backbone.attention["din"][0]
        assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))
        assert [d.compute_dtype for d in unit.mlp.dense] == ["float32", "bfloat16"]
        assert unit.score.compute_dtype == "float32" and unit.mlp.acts[1].compute_dtype == "bfloat16"
        assert unit.mlp.acts[1].moving.mean.dtype == tf.float32
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_schema_without_a_sequence_target_pair_is_a_clear_error():
    with pytest.raises(SchemaError, match=r"share_vocab_with.*'item \(vocab\)'.*'hist_item \(sequence_vocab\)'"):
        build_model(schema(shared=False), ["click"], backbone="din", backbone_options=SMALL)
    build_model(schema(shared=False), ["click"], backbone="dnn")  # other backbones do not ask
    bb = get_backbone("din", 3, 2, **SMALL)
    with pytest.raises(ValueError, match="sequences=True"):
        bb(EmbeddedFields(tf.zeros((2, 3, 2)), None))
    with pytest.raises(ValueError, match=r"att_activation = 'dicey'"):
        get_backbone("din", 3, 2, att_activation="dicey")
