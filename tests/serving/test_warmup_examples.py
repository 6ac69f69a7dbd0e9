"""Example raw rows (``serving.warmup.example_rows``): the warm-up records' rows and the demo's
example request. Each encoding makes its own example values (``Encoding.example``).

``warmup_examples_golden.json`` holds ``example_rows`` of the schema below (every encoding,
string / int64 / float32 raw dtypes, defaults, a shared raw column, an empty vocabulary) as
the code gave them before the encodings made their own examples (the ``if type == ...`` chain
of ``serving/warmup.py``); they must not change. Other tests check the values against each
encoding's rule by hand, and that a new encoding gets its family's examples.
"""
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from features import encoders as E
from features.schema import Feature, Schema
from pipeline.preprocess_config import FeatureSpec
from serving.clients import RequestBuilder
from serving.warmup import example_rows

GOLDEN = os.path.join(os.path.dirname(__file__), "warmup_examples_golden.json")
SIZES = (1, 7, 16)  # the default, one cycle of every sequence length, what export_model uses


def _spec(name, kind, dtype, enc, **kw):
    return FeatureSpec(name, kind, dtype, "user", enc, **kw)


def _frame(n=60):
    i = np.arange(n)
    return pd.DataFrame({
        "user": [f"u{k}" for k in i % 9 + i % 4],  # u0..u11, uneven counts
        "gender": ["f", "m", "x"][:1] * 20 + ["m"] * 25 + ["x"] * 15,
        "item_int": (i * 7) % 13 - 3,
        "rare": [f"r{k}" for k in i],  # every key once: min_count 1000 leaves an empty vocabulary
        "ctx": [f"c{k}" for k in i],
        "ctx_int": i * 11,
        "price": np.round(1.5 + (i % 17) * 3.25, 2),
        "ad_age": (i % 10) * 4.5,
        "exposure": i % 12,
        "score": 2.0 + (i % 5) * 0.25,
        "clicks": i % 9,
        "raw_num": i * 0.5,
        "count_def": i % 4,
        "hist_user": [[f"u{(k + j) % 12}" for j in range(k % 6)] for k in i],
        "hist_int": [[int((k * 7 + j) % 13 - 3) for j in range(k % 4)] for k in i],
        "hist_rare": [[f"h{k}"] for k in i],
        "hist_ts": [[10 ** 9 + k * 100 + j for j in range(k % 5)] for k in i],
        "ts_f": [[k + 0.25 * j for j in range(k % 3)] for k in i],
        "emb": [[float(k % 3), -0.5 * k, 1.0] for k in i],
    })


SPECS = [
    _spec("user", "categorical", "string", {"type": "vocab", "min_count": 2}),
    _spec("gender", "categorical", "string", {"type": "vocab"}, default="f"),
    _spec("item_int", "categorical", "int64", {"type": "vocab"}),
    _spec("rare", "categorical", "string", {"type": "vocab", "min_count": 1000}),
    _spec("ctx", "categorical", "string", {"type": "hash", "num_buckets": 37}),
    _spec("ctx_int", "categorical", "int64", {"type": "hash", "num_buckets": 100}),
    _spec("price", "numeric", "float32", {"type": "mnse", "bases": [2, 3], "scale": 10}),
    _spec("price_bucket", "numeric", "float32", {"type": "bucketize", "num_buckets": 6}, source="price"),
    _spec("ad_age", "numeric", "float32", {"type": "bucketize", "method": "log2sq"}, default=3.0),
    _spec("exposure", "numeric", "int64", {"type": "bucketize", "boundaries": [1, 2, 4, 8]}),
    _spec("score", "numeric", "float32", {"type": "identity", "standardize": True}),
    _spec("clicks", "numeric", "int64", {"type": "identity", "standardize": True}),
    _spec("raw_num", "numeric", "float32", {"type": "identity"}),
    _spec("count_def", "numeric", "int64", {"type": "identity", "standardize": True}, default=3),
    _spec("hist_user", "sequence", "string", {"type": "sequence_vocab", "max_len": 5, "share_vocab_with": "user"}),
    _spec("hist_int", "sequence", "int64", {"type": "sequence_vocab", "max_len": 3}),
    _spec("hist_rare", "sequence", "string", {"type": "sequence_vocab", "max_len": 2, "min_count": 1000}),
    _spec("hist_ts", "sequence", "int64", {"type": "sequence_float", "max_len": 4}),
    _spec("ts_f", "sequence", "float32", {"type": "sequence_float", "max_len": 2}),
    _spec("emb", "dense", "float32", {"type": "dense", "dim": 3}),
]


def fit(root, specs, frame):
    """Fit ``specs`` on ``frame`` as the Beam job does -> (data_dir, Schema)."""
    feats = {}
    for spec in E.sort_for_build(list(specs)):
        col = frame[spec.source or spec.name]
        values = [list(v) for v in col] if spec.kind in ("sequence", "dense") else col
        feats[spec.name] = E.build_feature(spec, E.compute_stats(spec, values), root)
    return root, Schema(features=[feats[s.name] for s in specs], labels=["click"])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return fit(str(tmp_path_factory.mktemp("warmup-examples")), SPECS, _frame())


def _typed(rows):
    """Values with their Python type, so 1 and 1.0 differ (the request builder treats them apart)."""
    def t(v):
        return [t(e) for e in v] if isinstance(v, list) else (type(v).__name__, v)
    return [{k: t(v) for k, v in r.items()} for r in rows]


def test_fixture_covers_every_encoding(fitted):
    assert {f.encoding["type"] for f in fitted[1].features} == set(E.ENCODING_TYPES)
    assert fitted[1].feature("rare").encoding["vocab_size"] == 0
    assert fitted[1].feature("hist_rare").encoding["vocab_size"] == 0


@pytest.mark.parametrize("n", SIZES)
def test_example_rows_unchanged(fitted, n):
    with open(GOLDEN, encoding="utf-8") as fh:
        golden = json.load(fh)[str(n)]
    assert _typed(example_rows(fitted[1], fitted[0], n)) == _typed(golden)


def test_examples_follow_each_encoding_by_hand(fitted):
    data_dir, schema = fitted
    rows = example_rows(schema, data_dir, 16)
    user_keys = open(os.path.join(data_dir, "vocab/user.txt"), encoding="utf-8").read().split("\n")
    score = schema.feature("score").encoding
    for i, r in enumerate(rows):
        assert r["user"] == user_keys[i % len(user_keys)]  # real vocabulary entries, in id order
        assert r["gender"] in ("f", "m", "x")  # a vocab feature's default is not used
        assert (r["ctx"], r["ctx_int"], r["rare"]) == (f"ctx-{i}", i, f"rare-{i}")  # hash; empty vocabulary
        assert r["price"] == i + 1.0 and r["raw_num"] == i + 1.0  # mnse, plain identity
        assert r["ad_age"] == (3.0 if i % 2 == 0 else 3.0 + i)  # the default, and beside it
        assert r["exposure"] == [1, 2, 4, 8][i // 4]  # each boundary, in turn
        assert r["score"] == score["mean"] + score["std"] * (i / 16 - 0.5)  # around the train mean
        length = (i + 3) % 7  # max_len 5: 3, 4, 5, 6 (longer than max_len), 0, 1, 2
        assert r["hist_user"] == [user_keys[(i + j) % len(user_keys)] for j in range(length)]
        assert r["hist_ts"] == [1000 * i + j for j in range((i + 3) % 6)]
        assert r["emb"] == [((i + j) % 7) / 7.0 - 0.5 for j in range(3)]
    assert rows[8]["score"] == score["mean"]
    assert isinstance(rows[0]["clicks"], int) and isinstance(rows[0]["hist_ts"][0], int)


INT_SPECS = [
    _spec("rare_int", "categorical", "int64", {"type": "vocab", "min_count": 1000}),
    _spec("hist_rare_int", "sequence", "int64", {"type": "sequence_vocab", "max_len": 3, "min_count": 1000}),
    _spec("emb_int", "dense", "int64", {"type": "dense", "dim": 3}),
]


def test_int64_empty_vocabulary_and_int64_dense_give_valid_requests(tmp_path):
    """Examples a client could send: integers for int64 features, also with an empty vocabulary."""
    frame = pd.DataFrame({"rare_int": np.arange(20), "hist_rare_int": [[k] for k in range(20)],
                          "emb_int": [[k, 1, 2] for k in range(20)]})
    data_dir, schema = fit(str(tmp_path), INT_SPECS, frame)
    rows = example_rows(schema, data_dir, 7)
    tensors = RequestBuilder.from_schema(schema).tensors(rows)
    assert {k: v.dtype for k, v in tensors.items()} == {k: np.dtype(np.int64) for k in ("rare_int", "hist_rare_int",
                                                                                        "emb_int")}
    assert [r["rare_int"] for r in rows] == list(range(7))
    assert [len(r["hist_rare_int"]) for r in rows] == [3, 4, 0, 1, 2, 3, 4]
    assert rows[0]["emb_int"] == [-1, -1, -1]  # floor of -0.5, -0.36, -0.21
    for f in schema.features:  # and both encoders take them, alike
        codes = E.NumpyEncoder(f, data_dir).encode([r[f.name] for r in rows])
        x = tf.ragged.constant([r[f.name] for r in rows], tf.int64) if f.kind == "sequence" else tensors[f.name]
        np.testing.assert_array_equal(E.make_tf_encoder(f, data_dir)(x).numpy(), codes, err_msg=f.name)


def test_a_new_encoding_gets_its_familys_examples():
    from features.encodings.base import Encoding
    from features.encodings.families import CategoricalEncoding, NumericEncoding, SequenceEncoding

    class Plain(Encoding):
        pass

    class Category(CategoricalEncoding):
        pass

    class Number(NumericEncoding):
        pass

    class Events(SequenceEncoding):
        pass

    def make(cls, kind, dtype, encoding, **kw):
        return cls(Feature("f", kind, dtype, "user", encoding, **kw), "")

    assert [make(Plain, "numeric", "float32", {}).example(i, 3) for i in range(3)] == [1.0, 2.0, 3.0]
    assert [make(Category, "categorical", "string", {}).example(i, 2) for i in range(2)] == ["f-0", "f-1"]
    assert [make(Category, "categorical", "int64", {}).example(i, 2) for i in range(2)] == [0, 1]
    assert [make(Number, "numeric", "int64", {}, default=5).example(i, 3) for i in range(3)] == [5, 6, 5]
    events = make(Events, "sequence", "float32", {"max_len": 2}, width=2)
    assert [events.example(i, 4) for i in range(4)] == [[0.0, 1.0, 2.0], [], [2000.0], [3000.0, 3001.0]]
