"""FeatureEmbedding: field layout from the schema, values against hand computations
with fixed weights (MNSE per-system sums, padding-free pooling, OOV rows, identity and
dense fields), dims overrides, several tables, L2 and config round-trips."""
import json

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.mnse import mnse_ids
from features.schema import Feature, Schema, SchemaError
from models.embedding import FeatureEmbedding, field_info, plan_fields

MNSE = {"type": "mnse", "bases": [2, 10], "digits": [4, 2], "scale": 1, "signed": True}
MNSE_IDS = 2 + 2 * 4 + 10 * 2 + 2


def schema(**extra_features) -> dict:
    feats = [
        Feature("user", "categorical", "string", "user", {"type": "vocab"}, num_ids=6),
        Feature("price", "numeric", "float32", "item", MNSE, num_ids=MNSE_IDS, width=7),
        Feature("score", "numeric", "float32", "item", {"type": "identity"}, width=1, encoded_dtype="float32"),
        Feature("hist", "sequence", "string", "sequence", {"type": "sequence_vocab", "max_len": 4},
                num_ids=9, width=4),
        Feature("times", "sequence", "float32", "sequence", {"type": "sequence_float", "max_len": 4},
                width=4, encoded_dtype="float32"),
        Feature("vec", "dense", "float32", "user", {"type": "dense", "dim": 3}, width=3, encoded_dtype="float32"),
    ]
    feats += list(extra_features.values())
    return Schema(features=feats, labels=["click"], meta={"uid": "int64"}).to_dict()


def batch():
    return {
        "user": tf.constant([[2], [1], [0], [5]], tf.int64),
        "price": tf.constant(mnse_ids(np.array([11.0, -3.0, np.nan, 99.0]), MNSE)),
        "score": tf.constant([[0.5], [2.0], [0.0], [-1.0]], tf.float32),
        "hist": tf.constant([[5, 3, 0, 0], [0, 0, 0, 0], [7, 0, 0, 0], [1, 8, 8, 2]], tf.int64),
        "times": tf.zeros([4, 4], tf.float32),
        "vec": tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3) / 10),
        "uid": tf.constant([1, 2, 3, 4], tf.int64),
        "click": tf.constant([[1.0], [0.0], [0.0], [1.0]]),  # labels ride along; the layer ignores them
    }


def fixed(layer: FeatureEmbedding, table: int = 0):
    """Give every table distinct, known rows: row r of feature k is r + 100 k + col/10."""
    layer(batch())
    values = {}
    for k, name in enumerate(layer.feature_names):
        w = layer.tables[table][name]
        if "embedding" in w:
            rows, dim = w["embedding"].shape
            emb = (np.arange(rows)[:, None] + 100 * k + np.arange(dim)[None, :] / 10).astype(np.float32)
            lin = (np.arange(rows)[:, None] * 0.01 + k).astype(np.float32)
            w["embedding"].assign(emb), w["linear"].assign(lin)
            values[name] = (emb, lin)
    return values


def test_field_layout_follows_schema():
    layer = FeatureEmbedding(schema(), embedding_dim=4)
    assert layer.field_names == ["user", "price/base2", "price/base10", "price/sign", "score", "hist", "vec"]
    assert layer.field_features == ["user", "price", "price", "price", "score", "hist", "vec"]
    assert layer.num_fields == 7
    out = layer(batch())
    assert out.fields.shape == (4, 7, 4) and out.linear.shape == (4, 7)
    assert len(plan_fields(schema(), ["user", "vec"])) == 2


def test_field_info_gives_each_fields_feature_and_role_in_field_order():
    assert field_info(schema()) == [["user", "user"], ["price", "item"], ["price", "item"], ["price", "item"],
                                    ["score", "item"], ["hist", "sequence"], ["vec", "user"]]
    assert field_info(schema(), ["vec", "user"], added=2) == [["vec", "user"], ["user", "user"],
                                                             ["", "module"], ["", "module"]]


def test_mnse_field_is_the_sum_per_numeral_system():
    layer = FeatureEmbedding(schema(), embedding_dim=3)
    emb, lin = fixed(layer)["price"]
    out = layer(batch())
    ids = mnse_ids(np.array([11.0, -3.0, np.nan, 99.0]), MNSE)
    for f, (start, stop) in zip((1, 2, 3), [(0, 4), (4, 6), (6, 7)]):  # binary, decimal, sign
        want = emb[ids[:, start:stop]].sum(axis=1)
        np.testing.assert_allclose(out.fields.numpy()[:, f], want, rtol=1e-6)
        np.testing.assert_allclose(out.linear.numpy()[:, f], lin[ids[:, start:stop], 0].sum(axis=1), rtol=1e-6)
    # 11 = 1011b: the binary field sums four distinct position rows, not digit rows shared across positions
    assert len(set(ids[0, :4])) == 4


def test_sequence_mean_pooling_excludes_padding():
    layer = FeatureEmbedding(schema(), embedding_dim=3)
    emb, lin = fixed(layer)["hist"]
    got = layer(batch()).fields.numpy()[:, 5]
    np.testing.assert_allclose(got[0], (emb[5] + emb[3]) / 2, rtol=1e-6)
    np.testing.assert_allclose(got[1], np.zeros(3))  # all padding
    np.testing.assert_allclose(got[2], emb[7], rtol=1e-6)
    np.testing.assert_allclose(got[3], (emb[1] + 2 * emb[8] + emb[2]) / 4, rtol=1e-6)
    summed = FeatureEmbedding(schema(), embedding_dim=3, pooling={"hist": "sum"})
    emb2, _ = fixed(summed)["hist"]
    np.testing.assert_allclose(summed(batch()).fields.numpy()[0, 5], emb2[5] + emb2[3], rtol=1e-6)
    rows, mask = layer.sequence_embeddings(batch(), "hist")
    assert rows.shape == (4, 4, 3) and mask.numpy()[0].tolist() == [True, True, False, False]


def test_oov_row_and_out_of_range_ids():
    layer = FeatureEmbedding(schema(), embedding_dim=3)
    emb, lin = fixed(layer)["user"]
    assert emb.shape == (6, 3)  # num_ids rows: padding 0, OOV 1, values 2..5
    x = batch()
    x["user"] = tf.constant([[1], [17], [-4], [0]], tf.int64)
    got = layer(x)
    np.testing.assert_allclose(got.fields.numpy()[:3, 0], np.stack([emb[1]] * 3))  # OOV and out of range
    np.testing.assert_allclose(got.fields.numpy()[3, 0], emb[0])  # a scalar's "missing" row is learned
    np.testing.assert_allclose(got.linear.numpy()[:, 0], lin[[1, 1, 1, 0], 0])


def test_identity_and_dense_fields():
    layer = FeatureEmbedding(schema(), embedding_dim=3)
    fixed(layer)
    x = batch()
    out = layer(x)
    w = layer.tables[0]
    v, wl = w["score"]["embedding"].numpy()[0], w["score"]["linear"].numpy()[0, 0]
    score = x["score"].numpy()
    np.testing.assert_allclose(out.fields.numpy()[:, 4], score * v[None, :], rtol=1e-6)
    np.testing.assert_allclose(out.linear.numpy()[:, 4], score[:, 0] * wl, rtol=1e-6)
    proj = w["vec"]["project"]
    want = x["vec"].numpy() @ proj.kernel.numpy() + proj.bias.numpy()
    np.testing.assert_allclose(out.fields.numpy()[:, 6], want, rtol=1e-5)
    np.testing.assert_allclose(out.linear.numpy()[:, 6], x["vec"].numpy() @ w["vec"]["linear"].kernel.numpy()[:, 0],
                               rtol=1e-5)


def test_dims_override_projects_to_the_shared_width():
    layer = FeatureEmbedding(schema(), embedding_dim=4, dims={"user": 7})
    out = layer(batch())
    w = layer.tables[0]["user"]
    assert w["embedding"].shape == (6, 7) and out.fields.shape == (4, 7, 4)
    ids = batch()["user"].numpy()[:, 0]
    want = w["embedding"].numpy()[ids] @ w["to_dim"].kernel.numpy()
    np.testing.assert_allclose(out.fields.numpy()[:, 0], want, rtol=1e-5)


def test_independent_tables():
    layer = FeatureEmbedding(schema(), embedding_dim=4, num_tables=2)
    a, b = layer(batch(), table=0), layer(batch(), table=1)
    single = FeatureEmbedding(schema(), embedding_dim=4)
    single(batch())
    assert len(layer.trainable_weights) == 2 * len(single.trainable_weights)
    assert not np.allclose(a.fields.numpy()[:, 0], b.fields.numpy()[:, 0])
    with pytest.raises(ValueError, match="table 2 out of range"):
        layer(batch(), table=2)


def test_l2_on_looked_up_rows():
    layer = FeatureEmbedding(schema(), embedding_dim=3, l2_reg=0.1, features=["user", "hist"])
    values = fixed(layer)
    layer(batch())
    x = batch()
    user_rows = values["user"][0][x["user"].numpy()[:, 0]]
    hist_rows = values["hist"][0][x["hist"].numpy()]  # padding rows are looked up too
    want = 0.1 * (np.square(user_rows).sum() + np.square(hist_rows).sum()) / 4
    np.testing.assert_allclose(float(layer.losses[-1]), want, rtol=1e-5)


def test_schema_errors_name_the_feature():
    with pytest.raises(SchemaError, match="'times'.*not an embedding field"):
        FeatureEmbedding(schema(), features=["user", "times"])
    with pytest.raises(SchemaError, match="lacks"):
        FeatureEmbedding(schema(), features=["nope"])
    odd = Feature("odd", "categorical", "string", "item", {"type": "bloom"}, num_ids=5)
    with pytest.raises(SchemaError, match="'odd'.*encoding type 'bloom'"):
        FeatureEmbedding(schema(odd=odd))
    with pytest.raises(ValueError, match="dims name features that are not embedded"):
        FeatureEmbedding(schema(), dims={"times": 4})
    with pytest.raises(ValueError, match="pooling"):
        FeatureEmbedding(schema(), pooling={"user": "sum"})
    layer = FeatureEmbedding(schema(), embedding_dim=3)
    x = batch()
    del x["score"]
    with pytest.raises(KeyError, match="lacks feature 'score'"):
        layer(x)
    x = batch()
    x["hist"] = x["hist"][:, :3]
    with pytest.raises(ValueError, match="'hist': expected width 4"):
        layer(x)


def test_multi_valued_categorical_is_pooled():
    tags = Feature("tags", "categorical", "string", "item", {"type": "vocab"}, num_ids=5, width=3)
    layer = FeatureEmbedding(schema(tags=tags), embedding_dim=2, features=["tags"])
    layer({"tags": tf.constant([[2, 4, 0]], tf.int64)})
    emb = layer.tables[0]["tags"]["embedding"].numpy()
    got = layer({"tags": tf.constant([[2, 4, 0]], tf.int64)}).fields.numpy()[0, 0]
    np.testing.assert_allclose(got, (emb[2] + emb[4]) / 2, rtol=1e-6)


def test_config_round_trip():
    layer = FeatureEmbedding(schema(), embedding_dim=4, dims={"hist": 2}, num_tables=2, pooling={"hist": "sum"})
    out = layer(batch(), table=1)
    config = json.loads(json.dumps(layer.get_config()))
    clone = FeatureEmbedding.from_config(config)
    clone(batch())
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(batch(), table=1).fields.numpy(), out.fields.numpy())


def test_linear_false_builds_no_first_order_weights_and_same_fields():
    with_linear = FeatureEmbedding(schema(), embedding_dim=4)
    without = FeatureEmbedding(schema(), embedding_dim=4, linear=False)
    a, b = with_linear(batch()), without(batch())
    assert b.linear is None
    assert not [w for w in without.weights if "linear" in w.name]
    assert len(without.weights) < len(with_linear.weights)
    # the field rows are the same construction: copy the shared weights and compare
    shared = {w.name.split("/", 1)[1]: w for w in with_linear.weights if "linear" not in w.name}
    for w in without.weights:
        w.assign(shared[w.name.split("/", 1)[1]])
    np.testing.assert_allclose(without(batch()).fields.numpy(), a.fields.numpy(), atol=1e-7)


def test_ctr_model_builds_first_order_terms_only_for_backbones_that_read_them():
    from models.ctr_model import CTRModel

    dnn = CTRModel(schema(), ["click"], backbone="dnn", backbone_options={"dnn_units": [8]}, embedding_dim=4)
    fm = CTRModel(schema(), ["click"], backbone="fm", embedding_dim=4)
    dnn(batch()), fm(batch())
    assert not [w for w in dnn.weights if "_linear" in w.name]
    assert [w for w in fm.weights if "_linear" in w.name]
