"""Side inputs at serving: the signatures fill ``_source`` / ``_group`` / ``_user`` with their
serving values (ad, unknown group, unknown user) and never take them from a client."""
import re
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from features.schema import Schema
from serving.clients import LocalModelServer, RequestBuilder, RequestError
from serving.export import export_model, saved_model_cli
from serving.signatures import ENCODED_SIGNATURE, RAW_SIGNATURE, raw_inputs, signature_keys
from serving_fixtures import encode_rows, fit_features, keras_predict, tiny_model

SIDE = dict(meta={"src": "int64", "grp": "int64", "uk": "int64"}, source_column="src", group_column="grp",
            user_column="uk")
PROBED = ["source", "group", "user"]


class SideProbe(tf.keras.Model):
    """Serves the side inputs it reads as its outputs ``source`` / ``group`` / ``user``."""

    def call(self, inputs, training=None):
        return {k[1:]: tf.cast(tf.reshape(inputs[k], [-1, 1]), tf.float32) for k in ("_source", "_group", "_user")}


@pytest.fixture(scope="module")
def side(tmp_path_factory):
    """(data_dir, schema with source / group / user columns, export dir of a SideProbe)."""
    root = tmp_path_factory.mktemp("side")
    data_dir, schema = fit_features(str(root), **SIDE)
    export_dir = str(root / "export" / "probe" / "1")
    export_model(SideProbe(), schema, PROBED, data_dir, export_dir, warmup_batch_sizes=(1,))
    return data_dir, schema, export_dir


def test_side_columns_of_a_schema():
    assert Schema([], ["click"], **SIDE).side_columns() == {
        "_source": ("src", "int64", 1), "_group": ("grp", "int64", -1), "_user": ("uk", "int64", -1)}
    assert Schema([], ["click"], meta={"u": "float32"}, user_column="u").side_columns() == {
        "_user": ("u", "float32", -1.0)}
    assert Schema([], ["click"], meta={"w": "float32"}, weight_columns=["w"]).side_columns() == {}


def test_signatures_fill_the_serving_values(side, rows):
    data_dir, schema, export_dir = side
    server = LocalModelServer(export_dir)
    via_raw = server.predict(RequestBuilder.from_schema(schema).tensors(rows))  # no side input in the request
    via_encoded = server.predict(encode_rows(schema, data_dir, rows), signature_name=ENCODED_SIGNATURE)
    for out in (via_raw, via_encoded):
        np.testing.assert_array_equal(out["source"], np.ones(len(rows)))  # ad
        np.testing.assert_array_equal(out["group"], -np.ones(len(rows)))  # unknown
        np.testing.assert_array_equal(out["user"], -np.ones(len(rows)))  # unknown int64 key


def test_signature_inputs_are_unchanged(side):
    """The SavedModel's signature inputs are the raw columns / encoded features alone, as the
    SavedModel loader and ``saved_model_cli show`` see them; a client cannot send a side input."""
    _, schema, export_dir = side
    raw = sorted(r.name for r in raw_inputs(schema))
    want = {RAW_SIGNATURE: raw, ENCODED_SIGNATURE: sorted(schema.feature_names)}
    loaded = tf.saved_model.load(export_dir)
    shown = subprocess.run([saved_model_cli(), "show", "--dir", export_dir, "--all"], capture_output=True,
                           text=True, check=True).stdout
    sections = dict(re.findall(r"signature_def\['([^']+)'\]:(.*?)(?=signature_def\[|\Z)", shown, re.S))
    for name, inputs in want.items():
        assert sorted(signature_keys(loaded.signatures[name])) == inputs
        assert sorted(re.findall(r"inputs\['([^']+)'\]", sections[name])) == inputs
    assert not [k for k in raw if k.startswith("_")]
    with pytest.raises(RequestError, match="_source"):
        RequestBuilder.from_schema(schema).tensors([{"item_id": "i1", "_source": 0}])


def test_a_ctr_model_serves_as_in_keras_beside_side_columns(side, rows, tmp_path):
    """Models that do not read the side inputs are unaffected by them."""
    data_dir, schema, _ = side
    encoded = encode_rows(schema, data_dir, rows)
    model = tiny_model(schema, "dnn", encoded)
    export_dir = str(tmp_path / "ctr" / "1")
    export_model(model, schema, ["click", "conversion"], data_dir, export_dir, warmup_batch_sizes=(1,))
    got = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))
    for task, want in keras_predict(model, encoded).items():
        np.testing.assert_allclose(got[task], want, rtol=0, atol=1e-6)
