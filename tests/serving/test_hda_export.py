"""HDA's export serves the calibrated score without a group input: the SavedModel's raw-feature
signature equals the Keras model called without ``_group``, whose head / tail group comes from
the head user ids learned from training rows (unknown users: long-tail), and the discriminator,
read only in training, is not in the served graph."""
import numpy as np
import tensorflow as tf

from models.factory import build_model
from serving.clients import LocalModelServer, RequestBuilder
from serving.export import export_model
from serving.signatures import RAW_SIGNATURE
from serving_fixtures import encode_rows, fit_features, keras_predict, perturb, request_rows


def test_hda_serves_the_calibrated_score_with_the_learned_groups(tmp_path):
    data_dir, schema = fit_features(str(tmp_path), meta={"grp": "int64"}, group_column="grp")
    rows = request_rows()
    encoded = encode_rows(schema, data_dir, rows)
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema.to_dict(), ["click"], backbone="dnn", backbone_options={"dnn_units": [16]},
                        embedding_dim=4, framework="hda", framework_options={"top_k": 20})
    users = encoded["user_id"].reshape(-1)
    head = (users % 2 == 0) & (users > 1)  # even known ids are head users
    model.groups.fill(users, head.astype(np.int64))
    model({**encoded, "_group": head.astype(np.int64)}, training=False)
    perturb(model)
    for v in model.calibrator.trainable_variables:  # a calibration that differs between the groups
        v.assign(tf.fill(v.shape, 0.7))
    export_dir = str(tmp_path / "hda" / "1")
    export_model(model, schema, ["click"], data_dir, export_dir, warmup_batch_sizes=(1,))

    loaded = tf.saved_model.load(export_dir)
    read = {v.name for v in loaded.signatures[RAW_SIGNATURE].graph.variables} or \
        {t.name for t in loaded.signatures[RAW_SIGNATURE].captured_inputs}
    # calibration (a_g), the head ids, stage 2's model, the mapped tables E_sh and the mapping T
    for served in ("a_g", "is_head", "specific_backbone", "table_0", "row_of_id", "logits"):
        assert [n for n in read if served in n], served
    assert not [n for n in read if "discriminator" in n]
    got = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))["click"]
    want = keras_predict(model, encoded, ["click"])["click"]  # no _group: looked up by user id
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    told = keras_predict(model, {**encoded, "_group": head.astype(np.int64)}, ["click"])["click"]
    np.testing.assert_allclose(told, want, atol=1e-7)  # the learned ids give the training groups
    as_tail = keras_predict(model, {**encoded, "_group": np.zeros_like(users)}, ["click"])["click"]
    assert np.abs(as_tail - want)[head].min() > 1e-4  # and the group changes a head user's score
    np.testing.assert_allclose(as_tail[~head], want[~head], atol=1e-7)
