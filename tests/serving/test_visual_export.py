"""Visual semantic IDs served (Tencent §3.2): a model trained a few steps with visual_id instead of
ad_id exports; its SavedModel equals Keras on raw requests carrying visual_id (also a new
creative's, and a missing one), and the export's ``visual_semantic_id`` signature, the Beam job's
encoder, gives the job's IDs for the catalogue and an ID for a creative never seen in training."""
import glob
import json
import os

import numpy as np
import pandas as pd
import pytest

from serving_fixtures import encode_rows

import tensorflow as tf

from features import visual_ids as V
from features.encoders import INT_MISSING
from features.schema import Schema
from models.factory import build_model
from pipeline.data import make_dataset
from pipeline.simulator.images import render_images
from serving.clients import LocalModelServer, RequestBuilder
from serving.export import export_model
from serving.layout import read_export_metadata
from serving.signatures import raw_inputs

TASKS = ["click", "conversion"]
VISUAL_FEATURES = ["user_id", "gender", "item_id", "category", "campaign_id", "visual_id", "price", "bid",
                   "position", "hist_item"]  # ad_id replaced by the visual semantic ID


def _subset(data_dir, features):
    """The data's schema restricted to ``features`` (what a training config's ``features`` builds)."""
    d = Schema.load(data_dir).to_dict()
    return Schema.from_dict({**d, "features": [f for f in d["features"] if f["name"] in features]})


@pytest.mark.slow
def test_visual_ids_export_serves_like_keras_and_hashes_new_creatives(sim_raw, sim_visual_data, tmp_path):
    schema = _subset(sim_visual_data, VISUAL_FEATURES)
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema.to_dict(), TASKS, backbone="dnn", backbone_options={"dnn_units": [16]},
                        embedding_dim=8)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                  loss={t: "binary_crossentropy" for t in TASKS})
    model.fit(make_dataset(sim_visual_data, "train", 256, schema=schema, labels=TASKS, sample_weight=None).take(5),
              epochs=1, verbose=0)
    export_dir = str(tmp_path / "visual" / "1")
    info = export_model(model, schema, TASKS, sim_visual_data, export_dir, warmup_batch_sizes=(1,))
    assert info["signatures"][V.SIGNATURE] == {"inputs": ["images"], "outputs": ["visual_id"],
                                               "image_shape": [32, 32, 3], "dtype": "uint8"}
    assert V.SIGNATURE in read_export_metadata(export_dir)["signatures"]
    served = tf.saved_model.load(export_dir).signatures[V.SIGNATURE]

    # the served encoder gives the Beam job's IDs for the catalogue ...
    images = np.load(os.path.join(sim_raw, "item_images.npy"))
    table = pd.read_parquet(os.path.join(sim_visual_data, V.ID_TABLE))
    np.testing.assert_array_equal(served(images=tf.constant(images))["visual_id"].numpy(), table["visual_id"])
    # ... and an ID for a creative never seen in training: close to the item it looks like
    visual = np.stack(pd.read_parquet(os.path.join(sim_raw, "items.parquet"))["visual"].to_numpy())
    look_alike = np.clip(visual[5] + 0.01, 0.0, 1.0)[None].astype(np.float32)
    new_image = render_images(look_alike, 32, 0.02, np.random.default_rng(7))
    assert not (new_image[0] == images).all(axis=(1, 2, 3)).any()
    new_id = int(served(images=tf.constant(new_image))["visual_id"].numpy()[0])
    encoder = V.VisualEncoder.from_bytes(open(os.path.join(sim_visual_data, V.ENCODER_DIR, V.PARAMS_FILE),
                                              "rb").read())
    assert new_id == encoder.encode(new_image)[0]
    assert V.hamming(np.array([new_id]), table["visual_id"].to_numpy()[[5]])[0] <= 2

    # raw requests carry visual_id (the catalogue's, the new creative's, a missing one): SavedModel == Keras
    frame = pd.read_parquet(sorted(glob.glob(os.path.join(sim_raw, "ads", "*.parquet")))[-1]).tail(32)
    ids = dict(zip(table["item_id"], table["visual_id"]))
    frame["visual_id"] = [ids[k] for k in frame["item_id"]]
    columns = [r.name for r in raw_inputs(schema)]
    assert "visual_id" in columns and "ad_id" not in columns
    rows = [{c: (list(v) if isinstance(v, np.ndarray) else v) for c, v in zip(columns, values)}
            for values in frame[columns].itertuples(index=False)]
    rows[0]["visual_id"], rows[1]["visual_id"] = new_id, int(INT_MISSING)
    encoded = encode_rows(schema, sim_visual_data, rows)
    assert (encoded["visual_id"][1] == 0).all()  # a missing ID: every MNSE digit is padding
    want = {t: p.numpy().reshape(-1) for t, p in model({k: tf.constant(v) for k, v in encoded.items()},
                                                       training=False).items() if t in TASKS}
    assert np.std(want["click"]) > 1e-4, "degenerate model: parity would be vacuous"
    got = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))
    for task in TASKS:
        np.testing.assert_allclose(got[task], want[task], rtol=0, atol=1e-6)
    meta = json.load(open(os.path.join(export_dir, "assets.extra", "ctrflow_serving.json")))
    assert meta["signatures"] == sorted(info["signatures"])


def test_an_export_without_the_visual_feature_has_no_encoder_signature(sim_visual_data, tmp_path):
    schema = _subset(sim_visual_data, ["user_id", "ad_id"])
    model = build_model(schema.to_dict(), ["click"], backbone="dnn", backbone_options={"dnn_units": [4]},
                        embedding_dim=4)
    info = export_model(model, schema, ["click"], sim_visual_data, str(tmp_path / "m" / "1"), warmup_batch_sizes=(1,))
    assert sorted(info["signatures"]) == ["encoded", "serving_default"]
    assert list(tf.saved_model.load(str(tmp_path / "m" / "1")).signatures) == ["serving_default", "encoded"]
