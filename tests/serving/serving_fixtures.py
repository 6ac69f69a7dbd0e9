"""Small fitted features, raw request rows, tiny models and run directories for the serving tests.

Features are fitted the way the Beam job does (``features.encoders.build_feature`` on
train statistics of a raw frame written to ``tmp_path``), every encoding type is
present, one raw column (``price``) feeds two features, and the request rows hold
unknown categories, missing optional values, ragged / empty / too-long sequences and
missing dense vectors. Keras inputs are the Beam encoder's (``NumpyEncoder``) output.
"""
import json
import os

import numpy as np
import pandas as pd

import serving  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features import encoders as E
from features.schema import Schema
from models.factory import build_model
from pipeline.preprocess_config import FeatureSpec

TASKS = ["click", "conversion"]
SEQ_LEN, VEC_DIM = 5, 4

SPECS = [
    FeatureSpec("user_id", "categorical", "string", "personal", {"type": "vocab", "min_count": 2}),
    FeatureSpec("gender", "categorical", "string", "user", {"type": "vocab"}, default="f"),
    FeatureSpec("item_id", "categorical", "string", "item", {"type": "vocab"}, required=True),
    FeatureSpec("ctx", "categorical", "string", "context", {"type": "hash", "num_buckets": 37}),
    FeatureSpec("position", "categorical", "int64", "context", {"type": "vocab"}),
    FeatureSpec("price", "numeric", "float32", "item", {"type": "mnse", "bases": [2, 3], "scale": 10}),
    FeatureSpec("price_bucket", "numeric", "float32", "item", {"type": "bucketize", "num_buckets": 6},
                source="price"),
    FeatureSpec("ad_age", "numeric", "float32", "ad", {"type": "bucketize", "method": "log2sq"}, default=3.0),
    FeatureSpec("exposure", "numeric", "int64", "context", {"type": "bucketize", "boundaries": [1, 2, 4, 8]}),
    FeatureSpec("score", "numeric", "float32", "item", {"type": "identity", "standardize": True}),
    FeatureSpec("hist_item", "sequence", "string", "sequence",
                {"type": "sequence_vocab", "max_len": SEQ_LEN, "share_vocab_with": "item_id"}),
    FeatureSpec("hist_ts", "sequence", "int64", "sequence", {"type": "sequence_float", "max_len": SEQ_LEN}),
    FeatureSpec("user_vec", "dense", "float32", "user", {"type": "dense", "dim": VEC_DIM}),
]

# tiny backbones: the whole parity file must stay fast on 2 shared cores
SMALL = {
    "dnn": {"dnn_units": [16]}, "ipnn": {"dnn_units": [16]}, "widedeep": {"dnn_units": [16]},
    "deepfm": {"dnn_units": [16]},
    "dcn": {"dnn_units": [16], "num_cross_layers": 2}, "dcnv2": {"dnn_units": [16], "num_cross_layers": 2},
    "gdcn": {"dnn_units": [16], "num_cross_layers": 2},
    "xdeepfm": {"dnn_units": [16], "cin_layer_sizes": [8, 8]},
    "autoint+": {"dnn_units": [16], "attention_layers": 1, "att_dim": 8},
    "destine": {"dnn_units": [16], "attention_layers": 1, "att_dim": 8},
    "dualmlp": {"mlp1_units": [16], "mlp2_units": [16]},
    "finalmlp": {"mlp1_units": [16], "mlp2_units": [16], "fs_units": [16]},
    "din": {"dnn_units": [16], "att_units": [8]},
}


def train_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    items = [f"i{k}" for k in rng.zipf(1.6, n) % 40]
    return pd.DataFrame({
        "user_id": [f"u{k}" for k in rng.integers(0, 60, n)],
        "gender": rng.choice(["f", "m", "x"], n).tolist(),
        "item_id": items,
        "ctx": [f"c{k}" for k in rng.integers(0, 100, n)],
        "position": rng.integers(0, 6, n),
        "price": np.round(np.exp(rng.normal(3, 1, n)), 2),
        "ad_age": rng.exponential(30, n),
        "exposure": rng.integers(0, 12, n),
        "score": rng.normal(2.0, 0.5, n),
        "hist_item": [[f"i{k}" for k in rng.zipf(1.6, int(rng.integers(0, 8))) % 40] for _ in range(n)],
        "hist_ts": [np.sort(rng.integers(10 ** 9, 10 ** 9 + 10 ** 6, int(rng.integers(0, 8)))).tolist()
                    for _ in range(n)],
        "user_vec": [rng.normal(size=VEC_DIM).tolist() for _ in range(n)],
        "click": rng.integers(0, 2, n), "conversion": rng.integers(0, 2, n),
    })


def fit_features(root: str, specs=SPECS, **schema_fields) -> tuple:
    """Write a raw train frame under ``root``, fit the features on it -> (data_dir, Schema);
    ``schema_fields``: more fields of the Schema (meta columns, side columns)."""
    raw_path = os.path.join(root, "raw.parquet")
    train_frame().to_parquet(raw_path)
    frame = pd.read_parquet(raw_path)
    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir, exist_ok=True)
    feats = {}
    for spec in E.sort_for_build(list(specs)):
        col = frame[spec.source or spec.name]
        values = [list(v) for v in col] if spec.kind in ("sequence", "dense") else col
        feats[spec.name] = E.build_feature(spec, E.compute_stats(spec, values), data_dir)
    schema = Schema(features=[feats[s.name] for s in specs], labels=list(TASKS), **schema_fields)
    schema.save(os.path.join(data_dir, "schema.json"))
    return data_dir, schema


def request_rows(n: int = 40, seed: int = 1) -> list:
    """Raw request rows with OOV values, missing optional values (absent or None) and
    ragged sequences (empty, None, longer than max_len, with missing elements)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        r = {
            "user_id": f"u{int(rng.integers(0, 80))}",  # u60.. never seen: OOV
            "gender": ["f", "m", "x", "unseen", None][i % 5],
            "item_id": f"i{int(rng.integers(0, 45))}",
            "ctx": f"c{int(rng.integers(0, 300))}",
            "position": int(rng.integers(0, 9)),
            "price": [float(np.round(np.exp(rng.normal(3, 1)), 2)), None, 0.0, 1234.5][i % 4],
            "ad_age": [float(rng.exponential(30)), None, 1e6, -1.0][i % 4],
            "exposure": [int(rng.integers(0, 20)), None][i % 2],
            "score": float(rng.normal(2.0, 0.5)),
            "hist_item": [None, [], [f"i{k}" for k in rng.integers(0, 45, 9)], ["i1", None, "nope", "i2"],
                          [f"i{int(rng.integers(0, 45))}"]][i % 5],
            "hist_ts": [[1, 2, 3], None, list(range(10 ** 9, 10 ** 9 + 7)), []][i % 4],
            "user_vec": None if i % 6 == 5 else rng.normal(size=VEC_DIM).tolist(),
        }
        if i % 7 == 3:
            del r["gender"], r["score"], r["hist_ts"]  # absent keys: missing optional features
        rows.append(r)
    return rows


def encode_rows(schema: Schema, data_dir: str, rows: list) -> dict:
    """What the Beam job writes for ``rows``: {feature: encoded array} (the Keras inputs)."""
    out = {}
    for f in schema.features:
        out[f.name] = E.NumpyEncoder(f, data_dir).encode([r.get(f.raw_column) for r in rows])
    return out


def perturb(model, seed: int = 0, scale: float = 0.3) -> None:
    """Give zero-initialised trainable weights (multi-task heads, first-order terms, biases)
    random values, so outputs differ between rows and tasks and parity means something (moving
    statistics keep their values: a random variance or update count would be meaningless)."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        if not np.any(v.numpy()):
            v.assign(rng.normal(0.0, scale, v.shape).astype(v.dtype.as_numpy_dtype))


def tiny_model(schema: Schema, backbone: str, encoded: dict, tasks=TASKS, seed: int = 0, options=None):
    tf.keras.utils.set_random_seed(seed)
    model = build_model(schema.to_dict(), tasks, backbone=backbone, backbone_options=options or SMALL.get(backbone, {}),
                        embedding_dim=4)
    model(encoded, training=False)
    perturb(model, seed)
    return model


def keras_predict(model, encoded: dict, tasks=TASKS) -> dict:
    out = model({k: tf.constant(v) for k, v in encoded.items()}, training=False)
    return {t: out[t].numpy().reshape(-1) for t in tasks}


def make_run_dir(root: str, model, schema: Schema, tasks, data_dir: str, backbone: str, options=None) -> str:
    """A completed run directory in the layout of ``serving/run_artifacts.py``."""
    run_dir = os.path.join(root, "runs", f"{backbone}-run")
    os.makedirs(run_dir, exist_ok=True)
    spec = {"schema": schema.to_dict(), "tasks": list(tasks),
            "model": {"backbone": backbone, "backbone_options": options or SMALL.get(backbone, {}), "embedding_dim": 4,
                      "embedding_options": {}, "framework": "none", "framework_options": {}}}
    with open(os.path.join(run_dir, "model.json"), "w") as fh:
        json.dump(spec, fh)
    model.save_weights(os.path.join(run_dir, "weights", "model"))
    with open(os.path.join(run_dir, "run.json"), "w") as fh:
        json.dump({"data_dir": data_dir, "schema_fingerprint": Schema.load(data_dir).fingerprint()}, fh)
    with open(os.path.join(run_dir, "done.json"), "w") as fh:
        json.dump({"best": {}}, fh)
    return run_dir
