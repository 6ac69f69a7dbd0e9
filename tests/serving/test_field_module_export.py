"""Tencent's field modules exported for TF Serving: TIM (behaviour sequences and their gaps sent raw,
encoded in the graph) and the similarity encoding (the two pretrained vectors sent raw, the cosine,
its quantisation and MNSE codes computed in the graph), each trained a few steps on the simulator's
data: the SavedModel's raw-feature signature gives the Keras model's predictions on the
Beam-encoded rows."""
import numpy as np
import pytest

from serving_fixtures import encode_rows
from test_din_export import raw_rows

import tensorflow as tf

from features.schema import Schema
from models.factory import build_model
from pipeline.data import make_dataset
from serving.clients import LocalModelServer, RequestBuilder
from serving.export import export_model

TASKS = ["click"]
NOT_PRETRAINED = ["user_id", "age_bucket", "gender", "city", "device", "occupation", "item_id", "category", "brand",
                  "ad_id", "campaign_id", "price", "bid", "ad_age_days", "position", "hour", "weekday",
                  "exposure_count", "hist_category", "hist_item"]
CASES = {"tim": dict(field_modules=[{"name": "tim"}]),
         "similarity_encoding": dict(field_modules=[{"name": "similarity_encoding"}],
                                     embedding_options={"features": NOT_PRETRAINED})}


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(CASES))
def test_field_module_export_equals_keras(sim_raw, sim_data, tmp_path, module):
    schema = Schema.load(sim_data)
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema.to_dict(), TASKS, backbone="dcnv2",
                        backbone_options={"dnn_units": [16], "num_cross_layers": 1}, embedding_dim=8, **CASES[module])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    ds = make_dataset(sim_data, "train", batch_size=256, labels=TASKS, sample_weight=None)
    model.fit(ds.take(5), epochs=1, verbose=0)
    rows = raw_rows(sim_raw, schema)
    rows[0]["hist_gap"] = []
    rows[1] = {**rows[1], "user_pretrained": [0.0] * 16}  # a zero vector: no cosine, the padding codes
    encoded = encode_rows(schema, sim_data, rows)
    want = model({k: tf.constant(v) for k, v in encoded.items()}, training=False)["click"].numpy().reshape(-1)
    assert np.std(want) > 1e-4, "degenerate model: parity would be vacuous"
    # the module's own output varies over the rows: parity covers it
    emb = model.embedded({k: tf.constant(v) for k, v in encoded.items()})
    u = model.added_fields.representation({k: tf.constant(v) for k, v in encoded.items()}, emb).numpy()
    assert np.std(u, axis=0).max() > 1e-4
    export_dir = str(tmp_path / module / "1")
    export_model(model, schema, TASKS, sim_data, export_dir, warmup_batch_sizes=(1,))
    got = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))["click"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
