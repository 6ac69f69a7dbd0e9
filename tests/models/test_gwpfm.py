"""GwPFM (Tencent KDD'24 Eq. 4) and the projection interaction (Eq. 5): hand computations,
FM / FFM / FwFM as special cases, parts and groups from the fields' features and roles,
training through build_model, config round trip and SavedModel parity on raw requests."""
import json
import os
import sys

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models import layers as L
from models.backbones import GwPFM, backbone_class, field_groups, field_parts, get_backbone
from models.embedding import EmbeddedFields, field_info
from models.factory import build_model
from models.options import OptionError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "serving"))

B, F, K = 4, 5, 3
RNG = np.random.default_rng(0)


def fields(width: int, seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).normal(size=(B, F, width)), tf.float32)


def eq4(v: np.ndarray, parts, groups, r: np.ndarray, m=None) -> np.ndarray:
    """Eq. 4 as a double loop in float64: sum_{i<j} (e_{i,P(j)} [M_ij]) * e_{j,P(i)} r_{G(i),G(j)} -> [B, k]
    (with ``m``, {(i, j): M} of Eq. 5); r read symmetrically from its upper triangle."""
    k = v.shape[2] // (max(parts) + 1)
    e = v.astype(np.float64).reshape(v.shape[0], v.shape[1], -1, k)  # e[b, i, p]
    out = np.zeros((v.shape[0], k))
    for i in range(v.shape[1]):
        for j in range(i + 1, v.shape[1]):
            left = e[:, i, parts[j]] if m is None else e[:, i, parts[j]] @ m[(i, j)]
            g, h = sorted((groups[i], groups[j]))
            out += left * e[:, j, parts[i]] * r[g, h]
    return out


def built(layer, x):
    layer(x)
    return layer


# ---- Eq. 4 and its special cases -------------------------------------------------------------------
def test_gwpfm_matches_a_double_loop_of_eq4_with_two_parts_and_three_groups():
    parts, groups = [0, 0, 1, 1, 0], [0, 1, 2, 1, 0]
    x = fields(2 * K)
    layer = built(L.GwPFMInteraction(parts, groups), x)
    np.testing.assert_array_equal(layer.group_weights.numpy(), np.ones((3, 3)))  # r starts at 1
    r = RNG.normal(size=(3, 3)).astype(np.float32)
    layer.group_weights.assign(r)
    np.testing.assert_allclose(layer(x).numpy(), eq4(x.numpy(), parts, groups, r), rtol=1e-5, atol=1e-6)
    # r is symmetric: its lower triangle is never read
    layer.group_weights.assign(np.triu(r) + np.tril(RNG.normal(size=(3, 3)), -1).astype(np.float32))
    np.testing.assert_allclose(layer(x).numpy(), eq4(x.numpy(), parts, groups, r), rtol=1e-5, atol=1e-6)


def test_one_part_and_one_group_is_fm():
    x = fields(K)
    np.testing.assert_allclose(L.GwPFMInteraction([0] * F, [0] * F)(x).numpy(), L.FMInteraction()(x).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_a_part_per_field_and_one_group_is_ffm():
    x = fields(F * K)
    np.testing.assert_allclose(L.GwPFMInteraction(range(F), [0] * F)(x).numpy(),
                               L.FieldAwareInteraction(F)(x).numpy(), rtol=1e-5, atol=1e-6)


def test_one_part_and_a_group_per_field_is_fwfm_with_r_its_pair_weights():
    x = fields(K)
    fwfm = built(L.FieldWeightedInteraction(), x)
    r = RNG.normal(size=(F, F)).astype(np.float32)
    fwfm.pair_weights.assign(r)
    gwpfm = built(L.GwPFMInteraction([0] * F, range(F)), x)
    gwpfm.group_weights.assign(r)
    np.testing.assert_allclose(gwpfm(x).numpy(), fwfm(x).numpy(), rtol=1e-5, atol=1e-6)


# ---- the backbone: parts and groups from the fields ------------------------------------------------
def schema(**extra) -> Schema:
    feats = [
        Feature("user", "categorical", "string", "user", {"type": "vocab"}, num_ids=8),
        Feature("age", "categorical", "string", "user", {"type": "vocab"}, num_ids=5),
        Feature("hour", "categorical", "string", "context", {"type": "vocab"}, num_ids=26),
        Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=12),
        Feature("advertiser", "categorical", "string", "ad", {"type": "vocab"}, num_ids=6),
        Feature("price", "numeric", "float32", "item", {"type": "mnse", "bases": [2, 3], "digits": [3, 2], "scale": 1,
                                                          "signed": False}, num_ids=2 + 2 * 3 + 3 * 2, width=5),
    ]
    return Schema(features=feats, labels=["click", "conv"])


INFO = field_info(schema(), added=1)  # user, age, hour, item, advertiser, price/base2, price/base3, a module's field


def test_default_parts_split_ad_fields_from_the_rest_and_groups_follow_roles():
    assert [f for f, _ in INFO] == ["user", "age", "hour", "item", "advertiser", "price", "price", ""]
    assert field_parts(INFO, "ad") == [0, 0, 0, 1, 1, 1, 1, 0]  # the module's field joins the non-ad part
    # one group per role (user, context, the module) and every item / ad field in one
    assert field_groups(INFO, None) == [0, 0, 1, 2, 2, 2, 2, 3]
    # listed groups first; unlisted fields keep their role's group
    assert field_groups(INFO, [["hour", "user"], ["age"]]) == [0, 1, 0, 2, 2, 2, 2, 3]
    assert field_groups(INFO, [["user"], ["age", "item"]]) == [0, 1, 2, 1, 3, 3, 3, 4]
    assert field_parts(INFO, [["user", "age", "hour"], ["item", "advertiser"], ["price"]]) == [0, 0, 0, 1, 1, 2, 2, 0]


@pytest.mark.parametrize("key, value, message", [
    ("parts", [["user", "age", "hour", "item"], ["advertiser", "price", "nope"]], "'nope' is not an embedded feature"),
    ("parts", [["user", "age", "hour"], ["item", "advertiser"]], r"features \['price'\] are in no part"),
    ("parts", [["user", "age", "hour", "item"], ["item", "advertiser", "price"]], "'item' is listed twice"),
    ("groups", [["user"], ["hours"]], "groups: 'hours' is not an embedded feature"),
    ("groups", [["user"], ["age", "user"]], "groups: feature 'user' is listed twice"),
])
def test_bad_parts_and_groups_fail_naming_the_feature(key, value, message):
    with pytest.raises(OptionError, match=message):
        get_backbone("gwpfm", len(INFO), K, INFO, **{key: value})


@pytest.mark.parametrize("options, message", [
    ({"parts": "fields"}, r"backbone_options\.parts = 'fields': expected a non-empty list of non-empty lists"),
    ({"parts": [["user"], []]}, r"parts = .*expected a non-empty list of non-empty lists"),
    ({"groups": ["user", "age"]}, r"groups = .*expected a non-empty list of non-empty lists"),
    ({"projection": 1}, r"projection = 1: expected true or false"),
])
def test_malformed_options_fail_when_the_config_is_checked(options, message):
    with pytest.raises(OptionError, match=message):
        GwPFM.check_options(options)


def test_the_ad_parts_need_ad_and_other_fields():
    only_users = [["user", "user"], ["age", "user"]]
    with pytest.raises(OptionError, match="parts = 'ad' .* no field has an item / ad role"):
        get_backbone("gwpfm", 2, K, only_users)
    get_backbone("gwpfm", 2, K, only_users, parts=[["user", "age"]])  # explicit parts: fine


def test_the_embedding_is_p_times_k_wide():
    cls = backbone_class("gwpfm")
    assert cls.input_embedding_dim(7, K) == 2 * K
    assert cls.input_embedding_dim(7, K, {"parts": [["user"], ["item"], ["price"]]}) == 3 * K
    model = build_model(schema().to_dict(), ["click"], backbone="gwpfm", embedding_dim=K,
                        backbone_options={"parts": [["user", "age"], ["hour"], ["item", "advertiser", "price"]]})
    assert model.embedding.embedding_dim == 3 * K and model.backbone.interaction.field_parts == [0, 0, 1, 2, 2, 2, 2]


def test_backbone_is_first_order_plus_phi_and_its_repr_the_k_vector():
    """Backbone-level special cases: the gwpfm backbone with one part and one group gives fm's output."""
    info = INFO[:6]
    emb = EmbeddedFields(fields(K)[:, :1].numpy().repeat(6, axis=1) + RNG.normal(size=(B, 6, K)).astype(np.float32),
                         tf.constant(RNG.normal(size=(B, 6)), tf.float32))
    everything = [[f for f, _ in info]]
    gw = get_backbone("gwpfm", 6, K, info, parts=everything, groups=everything)
    fm = get_backbone("fm", 6, K)
    out, want = gw(emb), fm(emb)
    np.testing.assert_allclose(out.repr.numpy(), want.repr.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.logit.numpy(), want.logit.numpy(), rtol=1e-5, atol=1e-6)
    assert out.repr.shape == (B, K)
    np.testing.assert_allclose(out.logit.numpy()[:, 0], emb.linear.numpy().sum(1) + out.repr.numpy().sum(1),
                               rtol=1e-5)


# ---- the projection interaction (Eq. 5) ---------------------------------------------------------------
FAMILY = {  # layer with projection -> (input width, P(i), G(i), pair-weight variable name or None)
    "fm": (lambda p: L.FMInteraction(projection=p), K, [0] * F, None, None),
    "fwfm": (lambda p: L.FieldWeightedInteraction(projection=p), K, [0] * F, list(range(F)), "pair_weights"),
    "ffm": (lambda p: L.FieldAwareInteraction(F, projection=p), F * K, list(range(F)), None, None),
    "gwpfm": (lambda p: L.GwPFMInteraction([0, 1, 1, 0, 1], [0, 1, 0, 2, 1], projection=p), 2 * K,
              [0, 1, 1, 0, 1], [0, 1, 0, 2, 1], "group_weights"),
}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_projection_with_identity_matrices_is_the_plain_interaction(name):
    make, width, _, _, weights = FAMILY[name]
    x = fields(width, seed=1)
    plain, projected = built(make(False), x), built(make(True), x)
    pairs = F * (F - 1) // 2
    np.testing.assert_array_equal(projected.projection_matrices.numpy(), np.broadcast_to(np.eye(K), (pairs, K, K)))
    if weights:  # the same non-trivial pair weights in both
        r = RNG.normal(size=getattr(plain, weights).shape).astype(np.float32)
        getattr(plain, weights).assign(r), getattr(projected, weights).assign(r)
    np.testing.assert_allclose(projected(x).numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_projection_with_random_matrices_matches_eq5(name):
    make, width, parts, groups, weights = FAMILY[name]
    x = fields(width, seed=2)
    layer = built(make(True), x)
    m = RNG.normal(size=layer.projection_matrices.shape).astype(np.float32)
    layer.projection_matrices.assign(m)
    r = np.ones((F, F), np.float32)
    if weights:
        r = RNG.normal(size=getattr(layer, weights).shape).astype(np.float32)
        getattr(layer, weights).assign(r)
    rows, cols = np.triu_indices(F, k=1)
    by_pair = {(i, j): m[p] for p, (i, j) in enumerate(zip(rows, cols))}
    want = eq4(x.numpy(), parts, groups or [0] * F, r, by_pair)
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["fm", "fwfm", "ffm", "gwpfm"])
def test_every_fm_family_backbone_takes_the_projection_option(name):
    info = INFO[:6]
    cls = backbone_class(name)
    emb = EmbeddedFields(tf.constant(RNG.normal(size=(B, 6, cls.input_embedding_dim(6, K))), tf.float32),
                         tf.constant(RNG.normal(size=(B, 6)), tf.float32))
    bb = get_backbone(name, 6, K, info, projection=True)
    bb(emb)
    assert bb.interaction.projection and bb.interaction.projection_matrices.shape == (15, K, K)
    assert bb.get_config()["projection"] is True


# ---- through the pipeline's model: training, config, SavedModel -----------------------------------------
OPTIONS = {"projection": True, "parts": [["user", "age", "hour"], ["item", "advertiser", "price"]],
           "groups": [["user"], ["age", "hour"]]}


def toy(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = {"user": rng.integers(2, 8, (n, 1)), "age": rng.integers(2, 5, (n, 1)), "hour": rng.integers(2, 26, (n, 1)),
         "item": rng.integers(2, 12, (n, 1)), "advertiser": rng.integers(2, 6, (n, 1)),
         "price": rng.integers(2, 14, (n, 5))}
    y = ((x["user"] + x["item"]) % 3 == 0).astype(np.float32)
    return x, {"click": y, "conv": y * (x["hour"] % 2)}


def test_gwpfm_with_projection_trains_and_round_trips_its_config():
    tf.keras.utils.set_random_seed(0)
    x, y = toy()
    model = build_model(schema().to_dict(), ["click", "conv"], backbone="gwpfm", embedding_dim=K,
                        backbone_options=OPTIONS)
    model.compile(tf.keras.optimizers.Adam(0.05), loss={t: "binary_crossentropy" for t in y})
    model(x, training=False)  # builds
    before = [v.numpy().copy() for v in (model.backbone.interaction.group_weights,
                                         model.backbone.interaction.projection_matrices)]
    history = model.fit(x, y, batch_size=64, epochs=3, verbose=0).history["loss"]
    assert history[-1] < history[0]
    after = (model.backbone.interaction.group_weights, model.backbone.interaction.projection_matrices)
    assert all(not np.allclose(b, a.numpy()) for b, a in zip(before, after))  # r and M learn
    clone = type(model).from_config(json.loads(json.dumps(model.get_config())))
    clone(x, training=False)
    clone.set_weights(model.get_weights())
    for t in y:
        np.testing.assert_array_equal(clone(x, training=False)[t].numpy(), model(x, training=False)[t].numpy())


def test_saved_model_equals_keras_on_raw_requests(tmp_path):
    from serving_fixtures import TASKS, encode_rows, fit_features, keras_predict, perturb, request_rows
    from serving.clients import LocalModelServer, RequestBuilder
    from serving.export import export_model

    data_dir, fitted = fit_features(str(tmp_path))
    rows = request_rows()
    encoded = encode_rows(fitted, data_dir, rows)
    tf.keras.utils.set_random_seed(0)
    model = build_model(fitted.to_dict(), TASKS, backbone="gwpfm", embedding_dim=4,
                        backbone_options={"projection": True, "groups": [["user_id", "gender"], ["ctx"]]})
    model(encoded, training=False)
    perturb(model)
    interaction = model.backbone.interaction
    interaction.projection_matrices.assign(interaction.projection_matrices
                                           + 0.3 * tf.random.normal(interaction.projection_matrices.shape))
    expected = keras_predict(model, encoded)
    export_dir = str(tmp_path / "gwpfm" / "1")
    export_model(model, fitted, TASKS, data_dir, export_dir, warmup_batch_sizes=(1,))
    raw = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(fitted).tensors(rows))
    for t in TASKS:
        assert np.std(expected[t]) > 1e-3
        np.testing.assert_allclose(raw[t], expected[t], rtol=0, atol=1e-5)
