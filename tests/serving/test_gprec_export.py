"""GPRec's export serves the prediction alone: the SavedModel's raw-feature signature equals the
Keras prediction, and it reads the group classifier, E_G and f_2 but no weight of f_1 (the group
predictor that only L_G and L_G^Con read)."""
import numpy as np
import tensorflow as tf

from models.factory import build_model
from serving.clients import LocalModelServer, RequestBuilder
from serving.export import export_model
from serving.signatures import RAW_SIGNATURE
from serving_fixtures import encode_rows, fit_features, keras_predict, perturb, request_rows


def test_gprec_exports_the_prediction_without_f1(tmp_path):
    data_dir, schema = fit_features(str(tmp_path))  # user_id is role personal, gender and user_vec role user
    rows = request_rows()
    encoded = encode_rows(schema, data_dir, rows)
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema.to_dict(), ["click"], backbone="dnn", backbone_options={"dnn_units": [8]},
                        embedding_dim=4, framework="gprec",
                        framework_options={"num_groups": 3, "classifier_units": [4], "personal_units": [4],
                                           "prediction_units": [8], "strategy": "dp", "dp_units": [3]})
    assert model.user_features() == ["user_id", "gender", "user_vec"]
    model({k: tf.constant(v) for k, v in encoded.items()}, training=False)
    perturb(model)
    export_dir = str(tmp_path / "gprec" / "1")
    export_model(model, schema, ["click"], data_dir, export_dir, warmup_batch_sizes=(1,))

    loaded = tf.saved_model.load(export_dir)
    read = {v.name for v in loaded.signatures[RAW_SIGNATURE].graph.variables} or \
        {t.name for t in loaded.signatures[RAW_SIGNATURE].captured_inputs}
    for part in ("group_classifier", "group_embedding", "personal", "f_y"):
        assert [n for n in read if part in n], part
    assert model.f1.built and not [n for n in read if "group_predictor" in n]  # f_1 is training-only

    got = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))
    want = keras_predict(model, encoded, ["click"])["click"]
    np.testing.assert_allclose(got["click"], want, rtol=0, atol=1e-6)
