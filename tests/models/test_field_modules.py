"""The hook between the embedding and the backbone: a registered field module's fields join
the embedded ones, every backbone reads them, and the model keeps them through a config
round trip and the registry refuses a taken name."""
import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.factory import build_model
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
