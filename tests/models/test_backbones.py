"""Backbones: hand-computed interaction terms, the registry, branches, config
round-trips, mixed precision, SavedModel, and learning a toy interaction problem."""
import json

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.mnse import mnse_ids
from features.schema import Feature, Schema
from models import layers as L
from models.backbones import BACKBONES, BackboneOutput, backbone_class, get_backbone
from models.ctr_model import CTRModel
from models.embedding import EmbeddedFields, SequenceRows

N_USERS, N_ITEMS, N_CTX, SEQ_LEN, VEC_DIM = 20, 20, 8, 5, 4
PRICE_ENC = {"type": "mnse", "bases": [2, 3], "digits": [5, 3], "scale": 1, "signed": True}
TWO_BRANCH = {"widedeep", "deepfm", "dcn", "dcnv2", "xdeepfm", "autoint+", "destine", "dualmlp", "finalmlp", "gdcn"}

# small sizes so every backbone trains in a few seconds on 2 shared cores
SMALL = {
    "dnn": {"dnn_units": [32, 32]}, "ipnn": {"dnn_units": [32, 32]},
    "widedeep": {"dnn_units": [32, 32]}, "deepfm": {"dnn_units": [32, 32]},
    "dcn": {"dnn_units": [32, 32], "num_cross_layers": 2},
    "dcnv2": {"dnn_units": [32, 32], "num_cross_layers": 2},
    "gdcn": {"dnn_units": [32, 32], "num_cross_layers": 2},
    "xdeepfm": {"dnn_units": [32, 32], "cin_layer_sizes": [16, 16]},
    "autoint+": {"dnn_units": [32, 32], "attention_layers": 2, "att_dim": 8},
    "destine": {"dnn_units": [32, 32], "attention_layers": 2, "att_dim": 8},
    "dualmlp": {"mlp1_units": [32], "mlp2_units": [32, 32]},
    "finalmlp": {"mlp1_units": [32, 16], "mlp2_units": [32, 32], "fs_units": [16]},
    "din": {"dnn_units": [32, 32], "att_units": [16]},
}


def toy_schema() -> dict:
    feats = [
        Feature("user", "categorical", "string", "user", {"type": "vocab"}, num_ids=N_USERS + 2),
        Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=N_ITEMS + 2),
        Feature("ctx", "categorical", "string", "context", {"type": "hash"}, num_ids=N_CTX + 2),
        Feature("price", "numeric", "float32", "item", PRICE_ENC, num_ids=2 + 2 * 5 + 3 * 3 + 2, width=9),
        Feature("score", "numeric", "float32", "item", {"type": "identity"}, width=1, encoded_dtype="float32"),
        Feature("hist", "sequence", "string", "sequence",
                {"type": "sequence_vocab", "max_len": SEQ_LEN, "share_vocab_with": "item"},  # DIN's keys
                num_ids=N_ITEMS + 2, width=SEQ_LEN),
        Feature("vec", "dense", "float32", "user", {"type": "dense", "dim": VEC_DIM}, width=VEC_DIM,
                encoded_dtype="float32"),
    ]
    return Schema(features=feats, labels=["click", "conv"], meta={"uid": "int64"}).to_dict()


def toy_data(n: int, seed: int):
    """Encoded batches whose click logit is a user x item dot product plus main effects."""
    truth = np.random.default_rng(1234)  # the same hidden world for every split
    user_vec, item_vec = truth.normal(size=(N_USERS, 3)), truth.normal(size=(N_ITEMS, 3))
    user_bias, item_bias = truth.normal(size=N_USERS), truth.normal(size=N_ITEMS)
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, N_USERS, n), rng.integers(0, N_ITEMS, n)
    price = rng.uniform(-20, 30, n)
    score = rng.random(n).astype(np.float32)
    lengths = rng.integers(0, SEQ_LEN + 1, n)
    hist = np.where(np.arange(SEQ_LEN)[None, :] < lengths[:, None], rng.integers(2, N_ITEMS + 2, (n, SEQ_LEN)), 0)
    logit = 1.5 * np.sum(user_vec[u] * item_vec[i], axis=1) + user_bias[u] + item_bias[i] + (score - 0.5)
    click = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    x = {"user": (u + 2)[:, None], "item": (i + 2)[:, None], "ctx": rng.integers(2, N_CTX + 2, (n, 1)),
         "price": mnse_ids(price, PRICE_ENC), "score": score[:, None], "hist": hist.astype(np.int64),
         "vec": rng.normal(size=(n, VEC_DIM)).astype(np.float32), "uid": u.astype(np.int64),
         "click": click[:, None]}  # a label column in the batch: the model must ignore it
    x = {k: (v.astype(np.int64) if v.dtype.kind == "i" else v) for k, v in x.items()}
    labels = {"click": click[:, None], "conv": (click * (rng.random(n) < 0.5))[:, None].astype(np.float32)}
    return x, labels


def logloss(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fixed_emb(batch=3, fields=4, dim=5, seed=0):
    """Fields, first-order terms and one behaviour sequence (length 4, some padding) for field 1."""
    rng = np.random.default_rng(seed)
    seq = SequenceRows(tf.constant(rng.normal(size=(batch, 4, dim)), tf.float32), rng.random((batch, 4)) < 0.7,
                       tf.constant(rng.normal(size=(batch, dim)), tf.float32), 1)
    return EmbeddedFields(tf.constant(rng.normal(size=(batch, fields, dim)), tf.float32),
                          tf.constant(rng.normal(size=(batch, fields)), tf.float32), (seq,))


# ---- hand computations -------------------------------------------------------------------
def test_fm_second_order_matches_hand_computation():
    emb = fixed_emb()
    fm = get_backbone("fm", num_fields=4, embedding_dim=5)
    fm(emb)  # builds
    fm.first_order.bias.assign([0.3])
    out = fm(emb)
    v, w = emb.fields.numpy().astype(np.float64), emb.linear.numpy().astype(np.float64)
    second = 0.5 * (v.sum(axis=1) ** 2 - (v ** 2).sum(axis=1)).sum(axis=1)  # per sample, never over the batch
    pairs = sum((v[:, i] * v[:, j]).sum(axis=1) for i in range(4) for j in range(i + 1, 4))
    np.testing.assert_allclose(second, pairs, rtol=1e-6)
    np.testing.assert_allclose(out.logit.numpy()[:, 0], 0.3 + w.sum(axis=1) + second, rtol=1e-5)
    assert out.repr.shape == (3, 5)


def test_fwfm_weights_field_pairs_and_starts_as_fm():
    emb = fixed_emb()
    fwfm = get_backbone("fwfm", num_fields=4, embedding_dim=5)
    fm = get_backbone("fm", num_fields=4, embedding_dim=5)
    np.testing.assert_allclose(fwfm(emb).logit.numpy(), fm(emb).logit.numpy(), rtol=1e-5)
    r = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    fwfm.interaction.pair_weights.assign(r)
    v = emb.fields.numpy()
    want = sum(r[i, j] * (v[:, i] * v[:, j]).sum(axis=1) for i in range(4) for j in range(i + 1, 4))
    np.testing.assert_allclose(fwfm(emb).logit.numpy()[:, 0], emb.linear.numpy().sum(axis=1) + want, rtol=1e-5)


def test_ffm_uses_field_aware_vectors():
    f, k = 3, 2
    assert backbone_class("ffm").input_embedding_dim(f, k) == f * k
    emb = fixed_emb(batch=2, fields=f, dim=f * k)
    out = get_backbone("ffm", num_fields=f, embedding_dim=k)(emb)
    v = emb.fields.numpy().reshape(2, f, f, k)  # v[b, i, j] = feature i's vector against field j
    want = sum((v[:, i, j] * v[:, j, i]).sum(axis=1) for i in range(f) for j in range(i + 1, f))
    np.testing.assert_allclose(out.logit.numpy()[:, 0], emb.linear.numpy().sum(axis=1) + want, rtol=1e-5)


def test_inner_product_pairs():
    emb = fixed_emb()
    got = L.InnerProduct()(emb.fields).numpy()
    v = emb.fields.numpy()
    want = np.stack([(v[:, i] * v[:, j]).sum(axis=1) for i in range(4) for j in range(i + 1, 4)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cross_layers_match_their_equations():
    rng = np.random.default_rng(5)
    x0, xl = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    v1 = L.VectorCross()
    v1(x0, xl)
    w, b = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    v1.w.assign(w), v1.b.assign(b)
    np.testing.assert_allclose(v1(x0, xl).numpy(), x0 * (xl @ w)[:, None] + b + xl, rtol=1e-5)
    g = L.GatedCross()
    g(x0, xl)
    wc, bc, wg = (rng.normal(size=(6, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32),
                  rng.normal(size=(6, 6)).astype(np.float32))
    g.cross.kernel.assign(wc), g.cross.bias.assign(bc), g.gate.kernel.assign(wg)
    want = x0 * (xl @ wc + bc) / (1 + np.exp(-(xl @ wg))) + xl
    np.testing.assert_allclose(g(x0, xl).numpy(), want, rtol=1e-4, atol=1e-5)
    low = L.CrossNetwork("matrix", num_layers=2, projection_dim=2)
    low(x0)
    assert [tuple(w.shape) for w in low.layers_[0].trainable_weights][:2] == [(6, 2), (2, 6)]


def test_cin_layer_matches_equation():
    b, m, d, h = 2, 3, 4, 5
    fields = np.random.default_rng(7).normal(size=(b, m, d)).astype(np.float32)
    cin = L.CIN([h], split_half=False)
    cin(fields)
    kernel, bias = cin.maps[0].kernel.numpy(), cin.maps[0].bias.numpy()  # [(H_0 * m), H_1]
    w = kernel.reshape(m, m, h)
    x1 = np.einsum("bid,bjd,ijh->bhd", fields, fields, w) + bias[None, :, None]
    np.testing.assert_allclose(cin(fields).numpy(), x1.sum(axis=2), rtol=1e-4, atol=1e-5)
    assert L.CIN([4, 6, 3]).output_dim == 2 + 3 + 3


def test_multi_head_bilinear_term():
    rng = np.random.default_rng(9)
    o1, o2 = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    layer = L.MultiHeadBilinear(num_heads=2)
    layer([o1, o2])
    w = layer.kernel.numpy()  # [2, 2, 3]
    want = sum(np.einsum("ba,ac,bc->b", o1[:, 2 * h:2 * h + 2], w[h], o2[:, 3 * h:3 * h + 3]) for h in range(2))
    np.testing.assert_allclose(layer([o1, o2]).numpy()[:, 0], want, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        L.MultiHeadBilinear(num_heads=4)([o1, o2])


B, F, D = 5, 3, 4  # batch, fields, embedding width of the round-trip inputs


def _fields(rng, width=D):
    return tf.constant(rng.normal(size=(B, F, width)), tf.float32)


def _flat(rng):
    return tf.constant(rng.normal(size=(B, F * D)), tf.float32)


# (layer with non-default options, inputs -> call arguments): a config key that from_config drops
# or misreads changes the rebuilt layer's output (or its weights, so set_weights fails)
ROUND_TRIP = [
    (lambda: L.MLP([8, 4], activation="tanh", dropout=0.1, batch_norm=True, l2_reg=0.01), lambda r: (_flat(r),)),
    (lambda: L.Tower([8], activation="elu"), lambda r: (_flat(r),)),
    (lambda: L.FirstOrder(), lambda r: (tf.constant(r.normal(size=(B, F)), tf.float32),)),
    (lambda: L.FMInteraction(), lambda r: (_fields(r),)),
    (lambda: L.FieldWeightedInteraction(), lambda r: (_fields(r),)),
    (lambda: L.FieldAwareInteraction(F), lambda r: (_fields(r, F * 2),)),
    (lambda: L.FMInteraction(projection=True), lambda r: (_fields(r),)),
    (lambda: L.FieldAwareInteraction(F, projection=True), lambda r: (_fields(r, F * 2),)),
    (lambda: L.GwPFMInteraction([0, 1, 0], [1, 0, 1], projection=True), lambda r: (_fields(r, 2 * D),)),
    (lambda: L.InnerProduct(), lambda r: (_fields(r),)),
    (lambda: L.VectorCross(), lambda r: (_flat(r), _flat(r))),
    (lambda: L.GatedCross(), lambda r: (_flat(r), _flat(r))),
    (lambda: L.CrossNetwork("matrix", 2, projection_dim=3, diag_scale=0.5), lambda r: (_flat(r),)),
    (lambda: L.CrossNetwork("gated", 3), lambda r: (_flat(r),)),
    (lambda: L.CIN([4, 2], split_half=False, activation="tanh"), lambda r: (_fields(r),)),
    (lambda: L.InteractingLayer(8, 4, use_residual=False, use_scale=True, layer_norm=True), lambda r: (_fields(r),)),
    (lambda: L.DisentangledSelfAttention(3, 2, "mean_query", use_scale=False, dropout=0.3), lambda r: (_fields(r),)),
    (lambda: L.DisentangledSelfAttention(5, 1, "linear", use_residual=False), lambda r: (_fields(r),)),
    (lambda: L.FeatureSelection([8], context_fields=[0, 2], activation="tanh"), lambda r: (_fields(r),)),
    (lambda: L.MultiHeadBilinear(3), lambda r: ([tf.constant(r.normal(size=(B, 6)), tf.float32),
                                                 tf.constant(r.normal(size=(B, 9)), tf.float32)],)),
]


def _outputs(layer, args):
    out = layer(*args, training=False) if "training" in layer.call.__code__.co_varnames else layer(*args)
    return [t.numpy() for t in tf.nest.flatten(out)]


@pytest.mark.parametrize("make, inputs", ROUND_TRIP, ids=[f"{i:02d}-{type(m()).__name__}" for i, (m, _) in
                                                          enumerate(ROUND_TRIP)])
def test_layer_config_round_trip(make, inputs):
    """A layer rebuilt with ``from_config`` (JSON round trip) and given the original's weights
    computes the original's outputs on the same input."""
    rng = np.random.default_rng(11)
    layer, args = make(), inputs(rng)
    _outputs(layer, args)  # build
    # non-zero everywhere, so zero-initialised biases or contexts cannot hide a difference
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in layer.get_weights()])
    want = _outputs(layer, args)
    clone = type(layer).from_config(json.loads(json.dumps(layer.get_config())))
    _outputs(clone, args)
    clone.set_weights(layer.get_weights())
    got = _outputs(clone, args)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


# ---- registry and protocol ------------------------------------------------------------------
def test_registry_names_and_errors():
    assert set(BACKBONES) == {"lr", "fm", "ffm", "fwfm", "gwpfm", "dnn", "ipnn", "widedeep", "deepfm", "dcn", "dcnv2",
                              "xdeepfm", "autoint+", "destine", "gdcn", "dualmlp", "finalmlp", "din"}
    assert backbone_class("DCNv2") is backbone_class("dcnv2")
    with pytest.raises(ValueError, match="unknown backbone 'dcn3'.*known"):
        get_backbone("dcn3", 4, 8)
    with pytest.raises(ValueError, match=r"backbone_options\.dnn_unit: unknown option.*dnn_units"):
        get_backbone("deepfm", 4, 8, dnn_unit=[8])
    with pytest.raises(ValueError, match="structure"):
        get_backbone("dcnv2", 4, 8, structure="mixed")
    with pytest.raises(ValueError, match="fields"):
        get_backbone("dnn", 5, 5)(fixed_emb())


def test_defaults_follow_the_papers():
    d = get_backbone("dcnv2", 4, 16)
    assert d.options["dnn_units"] == (400, 400, 400) and d.options["num_cross_layers"] == 3
    assert d.options["dnn_dropout"] == 0.0 and d.options["dnn_batch_norm"] is False
    assert get_backbone("xdeepfm", 4, 16).options["cin_layer_sizes"] == (200, 200, 200)
    a = get_backbone("autoint+", 4, 16).options
    assert (a["attention_layers"], a["num_heads"], a["att_dim"], a["use_residual"]) == (3, 2, 32, True)
    assert get_backbone("dualmlp", 4, 16).options["mlp1_units"] == (400,)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_branches(name):
    f = 4
    k = backbone_class(name).input_embedding_dim(f, 6)
    emb = fixed_emb(batch=3, fields=f, dim=k)
    info = [["u", "user"], ["i", "item"], ["c", "context"], ["a", "ad"]]  # read by backbones with uses_field_info
    bb = get_backbone(name, f, 6, info, **SMALL.get(name, {}))
    out = bb(emb, training=False)
    assert isinstance(out, BackboneOutput) and out.logit.shape == (3, 1) and out.repr.shape[0] == 3
    assert out.logit.dtype == tf.float32 and out.repr.dtype == tf.float32
    if name not in TWO_BRANCH:
        assert bb.branches is None
        with pytest.raises(TypeError, match="single branch"):
            bb(emb, branches=True)
        return
    assert len(bb.branches) == 2
    simple, deep = bb(emb, training=False, branches=True)
    for part in (simple, deep):
        assert part.logit.shape == (3, 1) and part.repr.shape[0] == 3
    assert out.repr.shape[1] == simple.repr.shape[1] + deep.repr.shape[1]
    fused = simple.logit + deep.logit
    if name == "finalmlp":
        fused += bb.bilinear([simple.repr, deep.repr])
    np.testing.assert_allclose(out.logit.numpy(), fused.numpy(), rtol=1e-5, atol=1e-6)


def test_branches_accept_separate_complex_embeddings():
    """TF4CTR's SER: a narrower table for the simple branch, another for the complex one,
    through the layer's own __call__ (so it is built and tracked as usual)."""
    bb = get_backbone("deepfm", 4, 8, dnn_units=[16])
    easy, hard = fixed_emb(dim=4, seed=1), fixed_emb(dim=8, seed=2)
    simple, deep = bb(easy, branches=True, complex_emb=hard)
    assert bb.built and bb.trainable_weights
    assert simple.repr.shape == (3, 4) and deep.repr.shape == (3, 16)
    np.testing.assert_allclose(deep.logit.numpy(),
                               bb(fixed_emb(dim=4), branches=True, complex_emb=hard)[1].logit.numpy())


def test_dcnv2_stacked_is_one_branch():
    bb = get_backbone("dcnv2", 4, 5, structure="stacked", dnn_units=[8], projection_dim=2)
    assert bb.branches is None
    out = bb(fixed_emb())
    assert out.repr.shape == (3, 8)


# ---- CTRModel -------------------------------------------------------------------------------
def _model(name, tasks=("click",), **kw):
    return CTRModel(toy_schema(), list(tasks), backbone=name, backbone_options=SMALL.get(name, {}),
                    embedding_dim=8, **kw)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_config_round_trip_gives_identical_predictions(name):
    x, _ = toy_data(64, seed=3)
    model = _model(name, tasks=("click", "conv"))
    before = model(x, training=False)
    config = json.loads(json.dumps(model.get_config()))  # the config is plain JSON
    clone = CTRModel.from_config(config)
    clone(x, training=False)
    clone.set_weights(model.get_weights())
    after = clone(x, training=False)
    for t in ("click", "conv"):
        assert before[t].shape == (64, 1) and before[t].dtype == tf.float32
        np.testing.assert_array_equal(before[t].numpy(), after[t].numpy())


def test_model_option_errors():
    with pytest.raises(ValueError, match="lacks"):
        CTRModel(toy_schema(), ["purchase"])
    with pytest.raises(ValueError, match=r"embedding_options: unknown option\(s\) \['dim'\]"):
        CTRModel(toy_schema(), ["click"], embedding_options={"dim": 3})


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_embeddings_and_logits_float32(policy):
    """Only MLP hidden layers after the first take the mixed policy (models.layers)."""
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        x, _ = toy_data(16, seed=4)
        for name in sorted(BACKBONES):
            model = _model(name, tasks=("click", "conv"))
            out = model(x, training=False)
            assert model.embedding(x).fields.dtype == tf.float32, name
            for t in ("click", "conv"):
                assert out[t].dtype == tf.float32 and np.all(np.isfinite(out[t].numpy())), name
        tower = _model("dnn").backbone.tower
        assert [d.compute_dtype for d in tower.mlp.dense] == ["float32", policy[6:]]
        assert tower.head.compute_dtype == "float32"
        assert tf.keras.mixed_precision.global_policy().name == policy  # the scope restored it
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_precision_placement_moves_the_first_layer_then_the_embeddings_to_bf16():
    """placement hidden: only the MLP layers after the first in bf16; mlp: the first too; embeddings:
    the fields handed on in bf16 as well. Logits stay float32, and each step away from float32
    changes the prediction (same weights), by less than bf16's rounding can explain."""
    x, _ = toy_data(64, seed=6)
    built = {}
    for placement in L.PLACEMENTS:
        with L.mixed_precision("mixed_bfloat16", placement):
            built[placement] = {name: _model(name) for name in ("dnn", "deepfm", "dcnv2")}
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored
    reference = {name: _model(name) for name in ("dnn", "deepfm", "dcnv2")}  # float32
    for name, model in reference.items():
        model(x, training=False)
    firsts = {p: built[p]["dnn"].backbone.tower.mlp.dense[0].compute_dtype for p in L.PLACEMENTS}
    assert firsts == {"hidden": "float32", "mlp": "bfloat16", "embeddings": "bfloat16"}
    for placement, models_ in built.items():
        for name, model in models_.items():
            model(x, training=False)
            model.set_weights(reference[name].get_weights())
            fields = model.embedding(x).fields
            assert fields.dtype == (tf.bfloat16 if placement == "embeddings" else tf.float32), (placement, name)
            got, want = model(x, training=False)["click"].numpy(), reference[name](x, training=False)["click"].numpy()
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, atol=0.02)
    # the first layer's rounding shows in the DNN's output; the embeddings' in DeepFM's FM part
    outputs = {p: built[p][n](x, training=False)["click"].numpy() for p in L.PLACEMENTS for n in ("dnn",)}
    assert np.abs(outputs["mlp"] - outputs["hidden"]).max() > 0
    deepfm = {p: built[p]["deepfm"](x, training=False)["click"].numpy() for p in ("mlp", "embeddings")}
    assert np.abs(deepfm["embeddings"] - deepfm["mlp"]).max() > 0
    with pytest.raises(ValueError, match="precision placement 'logits' not in"):
        with L.mixed_precision("mixed_bfloat16", "logits"):
            pass
    with L.mixed_precision("float32", "embeddings"):  # nothing is mixed: the fields stay float32
        assert L.embedding_output_dtype() is None and L.mlp_layer_policy(0).compute_dtype == "float32"


def test_savedmodel_export_matches_keras(tmp_path):
    x, _ = toy_data(32, seed=5)
    model = _model("xdeepfm", tasks=("click", "conv"))
    want = model(x, training=False)
    model.save(str(tmp_path / "m"), save_format="tf")
    loaded = tf.keras.models.load_model(str(tmp_path / "m"))
    got = loaded(x, training=False)
    for t in ("click", "conv"):
        np.testing.assert_allclose(got[t].numpy(), want[t].numpy(), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_learns_toy_interactions(name):
    tf.keras.utils.set_random_seed(11)
    x, y = toy_data(6000, seed=1)
    xv, yv = toy_data(2000, seed=2)
    model = _model(name)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02), loss={"click": "binary_crossentropy"})
    ds = tf.data.Dataset.from_tensor_slices((x, {"click": y["click"]})).shuffle(6000, seed=1).batch(200).repeat()
    model.fit(ds, steps_per_epoch=150, epochs=1, verbose=0)
    p = model.predict(xv, batch_size=2000, verbose=0)["click"]
    base = logloss(yv["click"], np.full_like(yv["click"], y["click"].mean()))
    loss = logloss(yv["click"], p)
    print(f"{name}: valid logloss {loss:.4f} vs base rate {base:.4f}")
    # LR sees only the main effects; every other backbone must also pick up the user x item term
    assert loss < (0.97 if name == "lr" else 0.85) * base, (name, loss, base)
