"""``request_check``: one guarded assertion over a raw request that still fails naming the
input, the feature(s) and the rows of the first failing check, in order (batch sizes first)."""
import math

import numpy as np
import pytest

import serving  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from serving.signatures import RawInput, request_check

INPUTS = [
    RawInput("item_id", "string", "scalar", None, True, ("item_id",)),
    RawInput("price", "float32", "scalar", None, False, ("price", "price_bucket")),
    RawInput("vec", "float32", "vector", 3, False, ("vec",)),
    RawInput("hist", "float32", "list", None, False, ("hist",)),
]
SPEC = {r.name: r.tensor_spec() for r in INPUTS}


@tf.function(input_signature=[SPEC])
def checked(raw):
    with tf.control_dependencies([request_check(raw, INPUTS)]):
        return tf.identity(raw["price"])


def _request(**changes):
    raw = {"item_id": np.array(["a", "b", "c"], dtype=object), "price": np.array([1.0, math.nan, 2.0], np.float32),
           "vec": np.array([[1, 2, 3], [math.nan] * 3, [0, 0, 0]], np.float32),  # a missing vector is all NaN
           "hist": np.array([[1, 2, math.nan], [math.nan] * 3, [4, math.nan, math.nan]], np.float32)}  # trailing NaN
    raw.update(changes)
    return {k: tf.constant(v) for k, v in raw.items()}


def test_valid_request_passes():
    np.testing.assert_array_equal(checked(_request()).numpy(), np.array([1.0, math.nan, 2.0], np.float32))


@pytest.mark.parametrize("change,message", [
    ({"item_id": np.array(["a", "", "c"], dtype=object)}, r"required feature item_id has no value.*rows:\] \[1\]"),
    ({"price": np.array([1.0, 2.0, -math.inf], np.float32)},
     r"feature price, price_bucket \(raw input price\) holds an infinite value.*rows:\] \[2\]"),
    ({"vec": np.array([[1, 2, 3], [1, math.nan, 3], [0, 0, 0]], np.float32)},
     r"feature vec \(raw input vec\) holds NaN inside a dense vector.*rows:\] \[1\]"),
    ({"hist": np.array([[1, 2, 3], [math.nan, 5, math.nan], [math.nan, math.nan, 6]], np.float32)},
     r"feature hist \(raw input hist\) holds NaN before a real element.*rows:\] \[1 2\]"),
    ({"hist": np.array([[1, math.inf, 3], [0, 0, 0], [0, 0, 0]], np.float32)},
     r"feature hist \(raw input hist\) holds an infinite value.*rows:\] \[0\]"),
])
def test_bad_value_fails_naming_the_feature_and_rows(change, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        checked(_request(**change))


def test_first_failing_check_is_reported():
    both = {"item_id": np.array(["", "b", "c"], dtype=object), "price": np.array([math.inf, 1, 2], np.float32)}
    with pytest.raises(tf.errors.InvalidArgumentError, match="required feature item_id") as err:
        checked(_request(**both))
    assert "infinite" not in str(err.value)
    odd = dict(both, vec=np.zeros([2, 3], np.float32))  # a batch size mismatch comes before any value check
    with pytest.raises(tf.errors.InvalidArgumentError, match="raw input vec has another batch size than raw input "
                                                             "item_id"):
        checked(_request(**odd))


def test_eager_call_checks_too():
    request_check(_request(), INPUTS)
    with pytest.raises(tf.errors.InvalidArgumentError, match="required feature item_id"):
        request_check(_request(item_id=np.array(["a", "b", ""], dtype=object)), INPUTS)
