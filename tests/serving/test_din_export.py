"""DIN exported for TF Serving: trained a few steps on the simulator's preprocessed data, the
SavedModel's raw-feature signature (behaviour sequences sent raw, encoded in the graph)
gives the Keras model's predictions on the Beam-encoded rows."""
import glob
import os

import numpy as np
import pandas as pd
import pytest

from serving_fixtures import encode_rows

import tensorflow as tf

from features.schema import Schema
from models.factory import build_model
from pipeline.data import make_dataset
from serving.clients import LocalModelServer, RequestBuilder
from serving.export import export_model
from serving.signatures import raw_inputs

TASKS = ["click"]


def raw_rows(sim_raw: str, schema: Schema, n: int = 64) -> list:
    """``n`` rows of the raw ads log (the latest, whose users have histories), request-shaped
    (lists for sequences), one with an empty history."""
    frame = pd.read_parquet(sorted(glob.glob(os.path.join(sim_raw, "ads", "*.parquet")))[-1]).tail(n)
    columns = [r.name for r in raw_inputs(schema)]
    rows = [{c: (list(v) if isinstance(v, np.ndarray) else v) for c, v in zip(columns, values)}
            for values in frame[columns].itertuples(index=False)]
    rows[0] = {**rows[0], "hist_item": [], "hist_category": []}
    return rows


@pytest.mark.slow
def test_din_export_equals_keras(sim_raw, sim_data, tmp_path):
    schema = Schema.load(sim_data)
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema.to_dict(), TASKS, backbone="din", backbone_options={"dnn_units": [16], "att_units": [8]},
                        embedding_dim=8)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    ds = make_dataset(sim_data, "train", batch_size=256, labels=TASKS, sample_weight=None)
    model.fit(ds.take(5), epochs=1, verbose=0)
    rows = raw_rows(sim_raw, schema)
    assert sum(len(r["hist_item"]) > 0 for r in rows) > len(rows) // 2  # the attention has behaviours to read
    encoded = encode_rows(schema, sim_data, rows)
    want = model({k: tf.constant(v) for k, v in encoded.items()}, training=False)["click"].numpy().reshape(-1)
    assert np.std(want) > 1e-4, "degenerate model: parity would be vacuous"
    export_dir = str(tmp_path / "din" / "1")
    export_model(model, schema, TASKS, sim_data, export_dir, warmup_batch_sizes=(1,))
    got = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))["click"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
