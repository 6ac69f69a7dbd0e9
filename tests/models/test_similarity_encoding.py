"""The similarity encoding embedding (Tencent Sec. 3.3, Eq. 3 then Eq. 2): the cosine against
numpy, the quantisation and MNSE codes of known values, the module's fields equal to the sums of
the known table rows, a zero vector reading the padding rows, option and schema checks, and the
module trained a few steps on the simulator's data with the raw vectors left out of the embedded
fields, kept by a config round trip."""
import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema, SchemaError
from models.factory import build_model
from models.options import OptionError
from models.similarity import SimilarityEncoding, cosine, quantise
from pipeline.data import make_dataset

DIM = 3
SIM_FEATURES = ["user_id", "age_bucket", "gender", "city", "device", "occupation", "item_id", "category", "brand",
                "ad_id", "campaign_id", "price", "bid", "ad_age_days", "position", "hour", "weekday",
                "exposure_count", "hist_category", "hist_item"]  # configs/train_sim_similarity.yaml's


def schema(item_dim: int = DIM) -> dict:
    feats = [Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=5),
             Feature("up", "dense", "float32", "user", {"type": "dense", "dim": DIM}, width=DIM,
                     encoded_dtype="float32"),
             Feature("ip", "dense", "float32", "item", {"type": "dense", "dim": item_dim}, width=item_dim,
                     encoded_dtype="float32")]
    return Schema(features=feats, labels=["click"]).to_dict()


# cosines 1, -1, 0, 0.5, 0.28 (7 / 25) and a zero user vector (no cosine)
X = {"item": np.array([[2], [3], [4], [2], [3], [4]], np.int64),
     "up": np.array([[1, 2, 2], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]], np.float32),
     "ip": np.array([[2, 4, 4], [-3, 0, 0], [0, 5, 0], [1, np.sqrt(3), 0], [7, 24, 0], [1, 1, 1]],
                    np.float32)}
COS = [1.0, -1.0, 0.0, 0.5, 0.28, np.nan]


def test_cosine_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    want = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(cosine(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy(), want,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cosine(X["up"], X["ip"]).numpy(), COS, atol=1e-6)  # NaN for the zero vector


def test_quantisation_of_known_values():
    # (w + 1) / 2 * Q rounded half up: -1 -> 0, 1 -> Q, 0.25 -> 62.5 -> 63
    got = quantise(tf.constant([-1.0, 1.0, 0.0, 0.5, 0.25, -0.25, 1.0000001, np.nan], tf.float64), 100).numpy()
    np.testing.assert_array_equal(got[:7], [0, 100, 50, 75, 63, 38, 100])
    assert np.isnan(got[7])
    np.testing.assert_array_equal(quantise(tf.constant([0.25, 0.3]), 10).numpy(), [6, 7])


def test_mnse_codes_of_known_values():
    module = SimilarityEncoding(schema(), 4, user="up", item="ip")
    assert module.encoding["digits"] == [7, 5, 3]  # what Q = 100 needs in binary, ternary, decimal
    codes = module.codes(X).numpy()
    # 0.28 -> 64 = 1000000 (2) = 02101 (3) = 064 (10); id = offset_b + b * (k - 1) + digit, k = 1 the last
    # digit, offsets 2, 2 + 2 * 7 = 16, 16 + 3 * 5 = 31 (features/mnse.py)
    np.testing.assert_array_equal(codes[4], [15, 12, 10, 8, 6, 4, 2, 28, 27, 23, 19, 17, 51, 47, 35])
    # 0: every digit 0; 100 = 1100100 (2) = 10201 (3) = 100 (10)
    np.testing.assert_array_equal(codes[1], [14, 12, 10, 8, 6, 4, 2, 28, 25, 22, 19, 16, 51, 41, 31])
    np.testing.assert_array_equal(codes[0], [15, 13, 10, 8, 7, 4, 2, 29, 25, 24, 19, 17, 52, 41, 31])
    np.testing.assert_array_equal(codes[5], 0)  # no cosine: padding


def test_the_fields_are_the_sums_of_the_known_rows_per_numeral_system():
    d = 4
    module = SimilarityEncoding(schema(), d, user="up", item="ip")
    table = np.random.default_rng(1).normal(size=module.table.shape).astype(np.float32)
    module.table.assign(table)
    fields = module(X, None).fields.numpy()  # reads the inputs only
    assert fields.shape == (6, 3, d)
    codes = module.codes(X).numpy()
    for f, (a, b) in enumerate([(0, 7), (7, 12), (12, 15)]):
        np.testing.assert_allclose(fields[:, f], table[codes[:, a:b]].sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(fields[5], np.stack([7 * table[0], 5 * table[0], 3 * table[0]]), rtol=1e-6)


def test_options_and_schema_are_checked():
    with pytest.raises(OptionError, match=r"field_modules\[0\]\.bases = \[2, 2\]: bases must be distinct"):
        build_model(schema(), ["click"], backbone="dnn",
                    field_modules=[{"name": "similarity_encoding", "user": "up", "item": "ip", "bases": [2, 2]}])
    with pytest.raises(OptionError, match=r"field_modules\[0\]\.levels = 0"):
        build_model(schema(), ["click"], backbone="dnn",
                    field_modules=[{"name": "similarity_encoding", "user": "up", "item": "ip", "levels": 0}])
    with pytest.raises(SchemaError, match=r"field_modules\[0\]\.user = 'item'"):
        build_model(schema(), ["click"], backbone="dnn",
                    field_modules=[{"name": "similarity_encoding", "user": "item", "item": "ip"}])
    with pytest.raises(SchemaError, match="different widths 3 and 4"):
        build_model(schema(item_dim=4), ["click"], backbone="dnn",
                    field_modules=[{"name": "similarity_encoding", "user": "up", "item": "ip"}])


@pytest.mark.parametrize("join", ["representation", "fields"])
def test_similarity_trains_on_the_simulator_without_the_raw_vectors(sim_data, join):
    tf.keras.utils.set_random_seed(2)
    model = build_model(Schema.load(sim_data).to_dict(), ["click"], backbone="dcnv2",
                        backbone_options={"dnn_units": [16], "num_cross_layers": 1}, embedding_dim=8,
                        embedding_options={"features": SIM_FEATURES},
                        field_modules=[{"name": "similarity_encoding", "join": join}])
    assert "user_pretrained" not in model.embedding.feature_names  # the module reads them from the inputs
    assert model.backbone.num_fields == len(model.embedding.field_names) + (3 if join == "fields" else 0)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    ds = make_dataset(sim_data, "train", batch_size=256, labels=["click"], sample_weight=None)
    x = next(iter(ds))[0]
    module = model.added_fields.modules[0]
    codes = module.codes(x).numpy()
    assert len(np.unique(codes, axis=0)) > 10 and not (codes == 0).any()  # many similarity levels, none missing
    before = module.table.numpy().copy()
    history = model.fit(ds.take(4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.max(np.abs(module.table.numpy() - before)) > 0
    want = model(x, training=False)["click"].numpy()
    clone = type(model).from_config(model.get_config())
    clone(x, training=False)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x, training=False)["click"].numpy(), want, rtol=1e-5, atol=1e-7)
