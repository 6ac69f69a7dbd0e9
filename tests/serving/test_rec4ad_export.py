"""Rec4Ad's export keeps only the ad path and takes no ``source``: the SavedModel's raw-feature
signature equals the Keras ad path, and it reads no weight of the rec branch or the discriminator."""
import numpy as np
import tensorflow as tf

from models.factory import build_model
from serving.clients import LocalModelServer, RequestBuilder
from serving.export import export_model
from serving.signatures import RAW_SIGNATURE, signature_keys
from serving_fixtures import encode_rows, fit_features, keras_predict, perturb, request_rows


def test_rec4ad_serves_the_ad_path_without_a_source(tmp_path):
    data_dir, schema = fit_features(str(tmp_path), meta={"src": "int64"}, source_column="src")
    rows = request_rows()
    encoded = encode_rows(schema, data_dir, rows)
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema.to_dict(), ["click"], backbone="dnn", backbone_options={"dnn_units": [16]},
                        embedding_dim=4, framework="rec4ad", framework_options={"d": 8})
    mixed = dict(encoded, _source=(np.arange(len(rows)) % 2).astype(np.int64))
    model(mixed, training=True)  # every branch built with statistics of both sources
    perturb(model)
    export_dir = str(tmp_path / "rec4ad" / "1")
    export_model(model, schema, ["click"], data_dir, export_dir, warmup_batch_sizes=(1,))

    loaded = tf.saved_model.load(export_dir)
    assert not [k for k in signature_keys(loaded.signatures[RAW_SIGNATURE]) if "source" in k]
    read = {v.name for v in loaded.signatures[RAW_SIGNATURE].graph.variables} or \
        {t.name for t in loaded.signatures[RAW_SIGNATURE].captured_inputs}
    for ad_part in ("sabn/ad_", "inv_ad", "con_ad", "pred_ad"):
        assert [n for n in read if ad_part in n], ad_part
    # the served graph reads no rec-branch or discriminator weight
    assert not [n for n in read if any(p in n for p in ("sabn/rec_", "inv_rec", "pred_rec", "discriminator"))]

    got = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))
    want = keras_predict(model, encoded, ["click"])["click"]
    np.testing.assert_allclose(got["click"], want, rtol=0, atol=1e-6)
    rec_path = model(mixed, training=False, return_forward=False)["click"].numpy().reshape(-1)
    np.testing.assert_allclose(rec_path, want, atol=1e-7)  # a source in the batch changes nothing served
