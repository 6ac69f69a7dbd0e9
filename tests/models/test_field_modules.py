"""The hook between the embedding and the backbone: a registered field module's fields join
the embedded ones (``join: fields``), every backbone reads them, and the model keeps them
through a config round trip and the registry refuses a taken name; joined as a representation,
u joins the backbone's output (z = z_b + w_u^T u by hand, heads read concat(r_b, u))."""
import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.factory import build_model, check_model_options
from models.field_modules import FIELD_MODULES, FieldModule, count_added_fields, register_field_module
from models.options import OptionError


def schema_dict():
    return Schema([Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=5),
                   Feature("score", "numeric", "float32", "item", {"type": "identity"}, encoded_dtype="float32")],
                  ["click"]).to_dict()


if "_test_scaled_item" not in FIELD_MODULES:
    @register_field_module("_test_scaled_item")
    class ScaledItem(FieldModule):
        """``copies`` fields, each the item's embedded field times the raw score (a field that
        depends on both the inputs and the embedded fields)."""

        option_defaults = {"copies": 1}
        option_ranges = {"copies": "[1, inf)"}

        @classmethod
        def count_fields(cls, schema_dict, options):
            return options["copies"]

        def _fields(self, inputs, emb, training):
            item = emb.fields[:, :1, :] * tf.cast(inputs["score"], emb.fields.dtype)[:, :, None]
            return tf.tile(item, [1, self.options["copies"], 1])


X = {"item": np.array([[2], [3], [4]], np.int64), "score": np.array([[0.5], [2.0], [-1.0]], np.float32)}


@pytest.mark.parametrize("backbone", ["dnn", "deepfm", "ffm"])
def test_added_fields_reach_the_backbone(backbone):
    tf.keras.utils.set_random_seed(0)
    spec = [{"name": "_test_scaled_item", "copies": 2}]
    model = build_model(schema_dict(), ["click"], backbone=backbone, backbone_options={"dnn_units": [4]}
                        if backbone != "ffm" else {}, embedding_dim=3, field_modules=spec)
    assert count_added_fields(schema_dict(), spec) == 2 and model.backbone.num_fields == 4
    seen = []
    original = model.backbone.call
    model.backbone.call = lambda emb, **kw: seen.append(emb) or original(emb, **kw)
    model(X)
    fields = seen[0].fields.numpy()
    assert fields.shape[1] == 4
    np.testing.assert_allclose(fields[:, 2], fields[:, 0] * X["score"], rtol=1e-6)  # item field x score
    np.testing.assert_allclose(fields[:, 3], fields[:, 2])
    if seen[0].linear is not None:  # first-order terms of added fields are zeros
        np.testing.assert_array_equal(seen[0].linear.numpy()[:, 2:], 0.0)


def test_config_round_trip_keeps_the_modules_and_predictions():
    tf.keras.utils.set_random_seed(1)
    model = build_model(schema_dict(), ["click"], backbone="dnn", backbone_options={"dnn_units": [4]},
                        embedding_dim=3, field_modules=[{"name": "_test_scaled_item"}])
    want = model(X)["click"].numpy()
    clone = type(model).from_config(model.get_config())
    clone(X)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(X)["click"].numpy(), want, rtol=1e-6)
    assert clone.get_config()["field_modules"] == [{"name": "_test_scaled_item"}]


def test_errors_name_the_entry():
    with pytest.raises(OptionError, match=r"field_modules\[0\]\.name = 'nope': unknown"):
        build_model(schema_dict(), ["click"], backbone="dnn", field_modules=[{"name": "nope"}])
    with pytest.raises(OptionError, match=r"field_modules\[0\]\.copies"):
        build_model(schema_dict(), ["click"], backbone="dnn", field_modules=[{"name": "_test_scaled_item",
                                                                              "copies": 0}])
    with pytest.raises(ValueError, match="field module '_test_scaled_item' is registered twice"):
        register_field_module("_test_scaled_item")(type("Other", (FieldModule,), {}))
    with pytest.raises(OptionError, match="model.field_modules: framework 'tf4ctr' has no"):
        from models.factory import check_model_options
        check_model_options("dualmlp", {}, 8, {}, "tf4ctr", {}, field_modules=[{"name": "_test_scaled_item"}])


def test_the_callers_schema_dict_stays_plain():
    """Keras wraps the dicts and lists a layer holds; the model keeps its own copy, so the
    caller's dict is unchanged and the parsed schemas still serialise."""
    import json

    schema = schema_dict()
    before = json.dumps(schema, sort_keys=True)
    model = build_model(schema, ["click"], backbone="dnn", backbone_options={"dnn_units": [4]}, embedding_dim=3)
    model(X)
    assert json.dumps(schema, sort_keys=True) == before
    assert model.embedding.schema.fingerprint() == model.schema.fingerprint() == Schema.from_dict(schema).fingerprint()


# ---- join: representation (u joined to the backbone's output) vs fields --------------------------
def _representation_model(tasks, heads="additive", backbone="dnn"):
    tf.keras.utils.set_random_seed(4)
    schema = schema_dict()
    schema["labels"] = list(tasks)
    model = build_model(schema, tasks, backbone=backbone, backbone_options={"dnn_units": [4]}, embedding_dim=3,
                        heads=heads, field_modules=[{"name": "_test_scaled_item", "copies": 2,
                                                     "join": "representation"}])
    model(X)
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # zero-initialised heads too: every term shows
        v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
    return model


def test_representation_join_adds_the_linear_term_of_u_by_hand():
    model = _representation_model(["click"])
    assert model.backbone.num_fields == 2 and count_added_fields(schema_dict(), model.field_module_specs) == 0
    emb = model.embedding(X)
    out = model.backbone(emb)  # the backbone sees the embedded fields only
    item = emb.fields.numpy()[:, 0] * X["score"]  # the module's field, twice: u = [item, item]
    u = np.concatenate([item, item], axis=1)
    w = model.added_fields.representation_logit.kernel.numpy()
    z = out.logit.numpy() + u @ w  # z = z_b + w_u^T u
    got = model(X)["click"].numpy()
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-z)), rtol=1e-5)
    joined = model.added_fields.join(out, X, emb)
    np.testing.assert_allclose(joined.repr.numpy(), np.concatenate([out.repr.numpy(), u], axis=1), rtol=1e-6)


@pytest.mark.parametrize("heads", ["additive", "towers"])
def test_heads_read_the_backbone_representation_joined_with_u(heads):
    tasks = ["click", "conversion"]
    model = _representation_model(tasks, heads=heads)
    emb = model.embedding(X)
    joined = model.added_fields.join(model.backbone(emb), X, emb)
    assert joined.repr.shape[1] == 4 + 2 * 3  # r_b [B, 4] and u [B, 2 * 3]
    want = model.task_heads(joined)
    got = model(X)
    for t in tasks:
        np.testing.assert_allclose(got[t].numpy(), 1 / (1 + np.exp(-want[t].numpy())), rtol=1e-5)
    if heads == "additive":  # z_t = z + w_t^T concat(r_b, u) + b_t
        h = model.task_heads.task_heads["click"]
        z = joined.logit.numpy() + joined.repr.numpy() @ h.kernel.numpy() + h.bias.numpy()
        np.testing.assert_allclose(want["click"].numpy(), z, rtol=1e-5)
    else:  # each tower's first layer reads concat(r_b, u)
        assert model.task_heads.towers["click"].weights[0].shape[0] == 10


def test_fields_join_leaves_the_backbone_output_alone():
    tf.keras.utils.set_random_seed(5)
    model = build_model(schema_dict(), ["click"], backbone="dnn", backbone_options={"dnn_units": [4]},
                        embedding_dim=3, field_modules=[{"name": "_test_scaled_item"}])  # the base's default: fields
    assert model.added_fields.modules[0].join == "fields" and model.added_fields.representation_logit is None
    emb = model.added_fields(X, model.embedding(X))
    out = model.backbone(emb)
    assert model.added_fields.join(out, X, emb) is out
    np.testing.assert_allclose(model(X)["click"].numpy(), 1 / (1 + np.exp(-out.logit.numpy())), rtol=1e-5)


def test_join_is_checked_with_the_module_options():
    with pytest.raises(OptionError, match=r"model\.field_modules\[0\]\.join = 'backbone': expected one of"):
        check_model_options("dnn", {}, 8, {}, "none", {}, field_modules=[{"name": "_test_scaled_item",
                                                                        "join": "backbone"}])
    assert check_model_options("dnn", {}, 8, {}, "none", {}, field_modules=[
        {"name": "_test_scaled_item", "copies": 2.0}])["field_modules"] == [{"name": "_test_scaled_item", "copies": 2}]
