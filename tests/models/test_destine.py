"""DESTINE (Xu et al., CIKM'21): the disentangled self-attention against numpy, the
whitening's invariance, seeded attention dropout, the backbone's residual modes and
branches, and a CTRModel with it training a few steps and exporting."""
import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from models import layers as L
from models.backbones import get_backbone
from models.embedding import EmbeddedFields
from models.options import OptionError

from test_backbones import _model, toy_data

B, F, D = 2, 3, 4


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def fields(seed=0, shape=(B, F, D)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def set_known_weights(layer, e, seed=1):
    """Builds ``layer`` on ``e`` and gives every weight a known random value (biases non-zero)."""
    layer(e)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.7 for w in layer.get_weights()])
    return {w.name.split("/")[-2] + "/" + w.name.split("/")[-1].split(":")[0]: w.numpy().astype(np.float64)
            for w in layer.weights}


def hand_attention(e, w, heads, att_dim, unary, scale):
    """(pairwise [B, H, F, F], unary [B, H, 1, F], output [B, F, H * a]) from the weights, head by head."""
    e = e.astype(np.float64)
    pair, una, outs = [], [], []
    for h in range(heads):
        cols = slice(h * att_dim, (h + 1) * att_dim)
        q, k = e @ w["query/kernel"][:, cols], e @ w["key/kernel"][:, cols]
        v = e @ w["value/kernel"][:, cols] + w["value/bias"][cols]
        qc, kc = q - q.mean(axis=1, keepdims=True), k - k.mean(axis=1, keepdims=True)  # whitening
        scores = np.einsum("bia,bja->bij", qc, kc) / (np.sqrt(att_dim) if scale else 1.0)
        p = softmax(scores)  # over j
        if unary == "linear":
            u = softmax(e @ w["unary/kernel"][:, h])  # [B, F]: w_h^T e_j, over j
        else:
            q2 = e @ w["unary_query/kernel"][:, cols] + w["unary_query/bias"][cols]
            u = softmax(np.einsum("ba,bja->bj", q2.mean(axis=1), k))  # mu_q'^T k_j
        pair.append(p), una.append(u[:, None, :])
        outs.append(np.einsum("bij,bja->bia", p + u[:, None, :], v))
    out = np.concatenate(outs, axis=-1) + e @ w["residual/kernel"] + w["residual/bias"]
    return np.stack(pair, axis=1), np.stack(una, axis=1), out


@pytest.mark.parametrize("heads, unary, scale", [(1, "linear", False), (1, "linear", True),
                                                  (2, "linear", True), (2, "mean_query", False)])
def test_attention_matches_hand_computation(heads, unary, scale):
    """alpha_ij = softmax_j((q_i - mu_q)^T (k_j - mu_k)) + softmax_j(u_j), e~_i = sum_j alpha_ij v_j + W_R e_i,
    per head on its own slice (two heads: a reshape that mixed fields and heads fails)."""
    att_dim = 3
    e = fields()
    layer = L.DisentangledSelfAttention(att_dim, heads, unary, use_scale=scale, dropout=0.5)
    w = set_known_weights(layer, e)
    pairwise, unary_w, out = hand_attention(e, w, heads, att_dim, unary, scale)
    got_p, got_u = layer.attention_weights(e)
    np.testing.assert_allclose(got_p.numpy(), pairwise, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_u.numpy(), unary_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer(e, training=False).numpy(), out, rtol=1e-5, atol=1e-5)  # no dropout
    assert out.shape == (B, F, heads * att_dim)
    # both terms matter: neither weight matrix is uniform, and each row of alpha sums to 2
    assert np.ptp(pairwise) > 0.05 and np.ptp(unary_w) > 0.05
    np.testing.assert_allclose((pairwise + unary_w).sum(axis=-1), 2.0, rtol=1e-6)


@pytest.mark.parametrize("unary", L.UNARY_TERMS)
def test_whitening_makes_weights_invariant_to_a_common_shift(unary):
    """Shifting every field by one vector c moves every q_i by W_Q c and every k_j by W_K c:
    the whitened pairwise term does not move (plain attention, without whitening, does). The
    linear unary softmax w^T (e_j + c) does not move either, so, each row of alpha summing to 2,
    the output moves by exactly 2 W_V c + W_R c; the mean_query unary mu_q'^T k_j reads the
    queries' mean, which the shift moves: that term is where the common part goes."""
    e, c = fields(), np.random.default_rng(7).normal(size=(1, 1, D)).astype(np.float32) * 3
    layer = L.DisentangledSelfAttention(2, 2, unary)
    w = set_known_weights(layer, e)
    (pair, una), (pair_c, una_c) = layer.attention_weights(e), layer.attention_weights(e + c)
    np.testing.assert_allclose(pair_c.numpy(), pair.numpy(), rtol=1e-4, atol=1e-6)
    q, k = e @ w["query/kernel"][:, :2], e @ w["key/kernel"][:, :2]
    qs, ks = (e + c) @ w["query/kernel"][:, :2], (e + c) @ w["key/kernel"][:, :2]
    plain, plain_shifted = softmax(np.einsum("bia,bja->bij", q, k)), softmax(np.einsum("bia,bja->bij", qs, ks))
    assert np.abs(plain - plain_shifted).max() > 1e-2  # the check above is not vacuous
    if unary == "mean_query":
        assert np.abs(una_c.numpy() - una.numpy()).max() > 1e-2
        return
    np.testing.assert_allclose(una_c.numpy(), una.numpy(), rtol=1e-4, atol=1e-6)
    shift = 2 * (c[0] @ w["value/kernel"]) + c[0] @ w["residual/kernel"]
    np.testing.assert_allclose(layer(e + c).numpy(), layer(e).numpy() + shift, rtol=1e-4, atol=1e-4)


def test_attention_dropout_is_seeded_and_training_only():
    e = fields()
    layer = L.DisentangledSelfAttention(3, 2, dropout=0.5)
    clean = L.DisentangledSelfAttention(3, 2, dropout=0.0)
    set_known_weights(layer, e), set_known_weights(clean, e)
    np.testing.assert_allclose(layer(e, training=False).numpy(), clean(e, training=True).numpy(), rtol=1e-6)
    seed = tf.constant([5, 3], tf.int64)
    with L.step_seed(seed):
        first = layer(e, training=True).numpy()
    with L.step_seed(seed):
        again = layer(e, training=True).numpy()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - clean(e).numpy()).max() > 1e-3


# ---- the backbone -------------------------------------------------------------------------------
def emb(seed=0, dim=D):
    return EmbeddedFields(tf.constant(fields(seed, (B, F, dim))), None, None)


def test_defaults_and_options():
    bb = get_backbone("destine", F, 6)
    o = bb.options
    assert (o["attention_layers"], o["num_heads"], o["att_dim"], o["unary"], o["use_scale"], o["att_dropout"],
            o["residual_mode"], o["dnn_units"]) == (3, 2, None, "linear", True, 0.2, "each_layer", (400, 400, 400))
    assert [layer.att_dim for layer in bb.attention] == [6, 6, 6]  # att_dim None: as wide as the embedding
    assert bb.branches == ("attention", "dnn")
    with pytest.raises(OptionError, match=r"backbone_options\.residual_mode"):
        get_backbone("destine", F, 6, residual_mode="every")
    with pytest.raises(OptionError, match=r"backbone_options\.unary"):
        get_backbone("destine", F, 6, unary="mean")
    with pytest.raises(OptionError, match=r"backbone_options\.att_dropout"):
        get_backbone("destine", F, 6, att_dropout=1.0)


@pytest.mark.parametrize("mode", ["each_layer", "last_layer", "none"])
def test_residual_modes_and_relu_after_the_stack(mode):
    """each_layer: every layer adds W_R e^(l-1); last_layer: one W_R e added after the stack;
    none: no residual. Then ReLU, flatten, one linear unit (the attention branch)."""
    x = emb()
    bb = get_backbone("destine", F, D, dnn_units=[8], attention_layers=2, att_dim=3, residual_mode=mode)
    simple, _ = bb(x, branches=True)
    assert [layer.use_residual for layer in bb.attention] == [mode == "each_layer"] * 2
    assert (bb.residual is not None) == (mode == "last_layer")
    h = bb.attention[1](bb.attention[0](x.fields))
    if mode == "last_layer":
        h = h + bb.residual(x.fields)
    want = np.maximum(h.numpy(), 0).reshape(B, -1)
    np.testing.assert_allclose(simple.repr.numpy(), want, rtol=1e-6)
    k, b = (v.numpy() for v in bb.attention_logit.weights)
    np.testing.assert_allclose(simple.logit.numpy(), want @ k + b, rtol=1e-5, atol=1e-6)


def test_without_dnn_it_is_the_attention_only_model():
    x = emb()
    bb = get_backbone("destine", F, D, dnn_units=[], attention_layers=1)
    assert bb.branches is None and bb.tower is None
    out = bb(x)
    assert out.repr.shape == (B, F * 2 * D)
    with pytest.raises(TypeError, match="single branch"):
        bb(x, branches=True)


def test_simple_branch_reads_other_embedding_widths():
    """TF4CTR's SER gives the attention branch a narrower table: the layers build on its width."""
    bb = get_backbone("destine", F, 8, dnn_units=[8], attention_layers=2, residual_mode="last_layer")
    simple, deep = bb(emb(dim=4), branches=True, complex_emb=emb(dim=8))
    assert simple.repr.shape == (B, F * 2 * 8) and deep.repr.shape == (B, 8)


def test_gradients_reach_every_attention_weight():
    """The pairwise (W_Q, W_K), unary, value and residual weights all get a non-zero gradient."""
    x = emb()
    bb = get_backbone("destine", F, D, dnn_units=[8], attention_layers=2, att_dim=3, att_dropout=0.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(bb(x, training=True).logit)
    grads = tape.gradient(loss, bb.trainable_variables)
    for v, g in zip(bb.trainable_variables, grads):
        assert g is not None and np.abs(g.numpy()).max() > 0, v.name


def test_ctr_model_trains_a_few_steps():
    tf.keras.utils.set_random_seed(3)
    x, y = toy_data(512, seed=1)
    model = _model("destine")
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    hist = model.fit(x, {"click": y["click"]}, batch_size=128, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(hist)) and hist[-1] < hist[0], hist
