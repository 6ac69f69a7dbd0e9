"""A tiny schema, batches and checks shared by the tests of APG, PEPNet and DGPM
(``models/frameworks/personalized``): a personal field (user id), a profile field, an item and a
context field; the clicks depend on user x item."""
import os
import sys

import numpy as np

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.factory import build_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "serving"))

FIELDS = {"user": ("personal", 9), "age": ("user", 5), "item": ("item", 11), "pos": ("context", 4)}
SMALL = {"dnn": {"dnn_units": [6]}, "dcn": {"dnn_units": [6], "num_cross_layers": 1}}


def schema() -> dict:
    return Schema(features=[Feature(n, "categorical", "string", role, {"type": "vocab"}, num_ids=k)
                            for n, (role, k) in FIELDS.items()], labels=["click"]).to_dict()


def batch(seed: int = 0, n: int = 16):
    rng = np.random.default_rng(seed)
    x = {n_: rng.integers(0, k, (n, 1)).astype(np.int64) for n_, (_, k) in FIELDS.items()}
    return x, {"click": ((x["user"] + x["item"]) % 3 == 0).astype(np.float32)}


def build(framework: str, backbone: str = "dnn", seed: int = 0, **options):
    """A small model, called once, its zero-initialised weights made non-zero."""
    tf.keras.utils.set_random_seed(seed)
    model = build_model(schema(), ["click"], backbone=backbone, backbone_options=SMALL[backbone], embedding_dim=3,
                        embedding_options={"initializer_stddev": 0.5}, framework=framework,
                        framework_options=options)
    model(batch()[0])
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        if not np.any(v.numpy()):
            v.assign(rng.normal(0.0, 0.3, v.shape).astype(np.float32))
    return model


def rows(model, x, *features) -> np.ndarray:
    """The embedding rows of ``features`` for batch ``x``, concatenated [B, len * d]."""
    tables = model.embedding.tables[0]
    return np.concatenate([tables[f]["embedding"].numpy()[x[f][:, 0]] for f in features], axis=1)


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def dense(layer, x):
    return x @ layer.kernel.numpy() + layer.bias.numpy()


def logit(model, x) -> np.ndarray:
    return model(x, training=False, return_forward=True).logits["click"].numpy()


def assert_round_trip(model) -> None:
    """get_config -> from_config gives the same outputs with the same weights."""
    x = batch(5)[0]
    clone = type(model).from_config(model.get_config())
    clone(x)
    clone.set_weights(model.get_weights())
    assert clone.get_config() == model.get_config()
    np.testing.assert_allclose(clone(x)["click"].numpy(), model(x)["click"].numpy(), rtol=1e-6)


def assert_trains(model, group: str) -> None:
    """Three Adam steps: finite losses, and the framework's own weights (``group``) move."""
    x, y = batch(1, n=96)
    model.compile(tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    before = [v.numpy().copy() for v in model.variable_groups()[group]]
    assert before, group
    loss = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss)), loss
    assert all(not np.allclose(b, v.numpy()) for b, v in zip(before, model.variable_groups()[group]))


def assert_saved_model_equals_keras(tmp_path, framework: str, backbone: str, **options) -> None:
    """The export's raw-feature signature serves what the Keras model predicts."""
    from serving_fixtures import TASKS, encode_rows, fit_features, keras_predict, perturb, request_rows
    from serving.clients import LocalModelServer, RequestBuilder
    from serving.export import export_model

    data_dir, fitted = fit_features(str(tmp_path))
    requests = request_rows()
    encoded = encode_rows(fitted, data_dir, requests)
    tf.keras.utils.set_random_seed(0)
    model = build_model(fitted.to_dict(), TASKS[:1], backbone=backbone, backbone_options={"dnn_units": [8]},
                        embedding_dim=4, framework=framework, framework_options=options)
    model(encoded, training=False)
    perturb(model)
    expected = keras_predict(model, encoded, TASKS[:1])
    export_dir = str(tmp_path / framework / "1")
    export_model(model, fitted, TASKS[:1], data_dir, export_dir, warmup_batch_sizes=(1,))
    served = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(fitted).tensors(requests))
    assert np.std(expected[TASKS[0]]) > 1e-3
    np.testing.assert_allclose(served[TASKS[0]], expected[TASKS[0]], rtol=0, atol=1e-5)
