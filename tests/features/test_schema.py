"""Schema JSON round-trip: built Features survive save/load and re-encode identically."""
import numpy as np
import pytest

from features import encoders as E
from features.schema import Schema, SchemaError
from pipeline.preprocess_config import FeatureSpec

SPECS = [
    FeatureSpec("user_id", "categorical", "string", "personal", {"type": "vocab", "min_count": 2}, required=True),
    FeatureSpec("ad_id", "categorical", "int64", "ad", {"type": "hash", "num_buckets": 1000}),
    FeatureSpec("price", "numeric", "float32", "item", {"type": "mnse", "bases": [2, 3, 10]}, default=0.0),
    FeatureSpec("clicks", "numeric", "int64", "user", {"type": "bucketize", "method": "log2sq"}),
    FeatureSpec("age", "numeric", "float32", "user", {"type": "bucketize", "num_buckets": 5}, source="raw_age"),
    FeatureSpec("score", "numeric", "float32", "context", {"type": "identity", "standardize": True}),
    FeatureSpec("hist_ads", "sequence", "int64", "sequence",
                {"type": "sequence_vocab", "max_len": 4, "share_vocab_with": "ad_vocab"}),
    FeatureSpec("ad_vocab", "categorical", "int64", "ad", {"type": "vocab"}),
    FeatureSpec("hist_ts", "sequence", "float32", "sequence", {"type": "sequence_float", "max_len": 4}),
    FeatureSpec("user_emb", "dense", "float32", "user", {"type": "dense", "dim": 2}),
]
STATS = {"counts": {"u1": 5, "u2": 2, "u3": 1, "7": 3, "8": 1},
         "quantiles": np.array([-2.5, 0.0, 1.0, 3.0, 17.0, 250.0]),
         "moments": {"count": 6, "mean": 44.0, "var": 8000.0}}
RAW = {
    "user_id": ["u1", "u2", "u3", "zz"],
    "ad_id": [7, 8, 123456789, 0],
    "price": [51.0, -2.5, None, 1e30],
    "clicks": [0, 3, 100, 10 ** 9],
    "age": [18.0, None, 0.0, 300.0],
    "score": [44.0, 0.0, None, -1.0],
    "hist_ads": [[7, 8, 7], None, [1, 2, 3, 4, 7], []],
    "ad_vocab": [7, 8, 9, None],
    "hist_ts": [[1.0, 2.0], None, [1, 2, 3, 4, 5], []],
    "user_emb": [[0.5, 1.0], None, [1.0, 2.0], [0.0, -1.0]],
}


def _build(out_dir):
    feats = [E.build_feature(s, STATS, str(out_dir)) for s in E.sort_for_build(SPECS)]
    return Schema(features=feats, labels=["click"], meta={"uid": "int64", "source": "int64"},
                  user_column="uid", source_column="source")


def test_schema_json_round_trip(tmp_path):
    schema = _build(tmp_path)
    schema.save(str(tmp_path / "schema.json"))
    loaded = Schema.load(str(tmp_path))  # a directory finds its schema.json
    assert loaded == schema
    assert loaded.fingerprint() == schema.fingerprint()
    assert Schema.from_json(loaded.to_json()).to_json() == schema.to_json()
    assert loaded.feature("age").raw_column == "raw_age" and loaded.feature("user_id").required
    assert loaded.feature("hist_ads").encoding["vocab_file"] == "vocab/ad_vocab.txt"


def test_reloaded_features_encode_identically(tmp_path):
    schema = _build(tmp_path)
    schema.save(str(tmp_path / "schema.json"))
    loaded = Schema.load(str(tmp_path / "schema.json"))
    for f0, f1 in zip(schema.features, loaded.features):
        a = E.NumpyEncoder(f0, str(tmp_path)).encode(RAW[f0.name])
        b = E.NumpyEncoder(f1, str(tmp_path)).encode(RAW[f1.name])
        np.testing.assert_array_equal(a, b, err_msg=f0.name)
        assert a.shape == (4, f1.width)


def test_schema_rejects_unknown_keys(tmp_path):
    d = _build(tmp_path).to_dict()
    d["features"][0]["vocab_sise"] = 3
    with pytest.raises(SchemaError, match="user_id.*vocab_sise"):
        Schema.from_dict(d)
