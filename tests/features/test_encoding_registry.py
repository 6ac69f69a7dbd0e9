"""The encoding registry (``features/encodings/``): names are unique, each class states what the
rest of the code used to hard-code, and a new encoding is one class — the example of
``features/encodings/base.py``'s docstring, run as written — that the spec checks, the
build, both encoders, the model's embedding and the serving signature pick up."""
import re
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from features import encoders as E
from features.encodings import ENCODINGS, Encoding, base, encoding_class, register_encoding
from features.schema import Schema
from models.embedding import plan_fields
from pipeline.preprocess_config import FeatureSpec
from serving.signatures import raw_inputs

# what the code hard-coded before the encodings were classes (encoders.py, models/embedding.py,
# serving/signatures.py): the classes must say the same
BEFORE = {  # type: (list-valued, field kind, encoded dtype, request shape)
    "vocab": (False, "lookup", "int64", "scalar"), "hash": (False, "lookup", "int64", "scalar"),
    "bucketize": (False, "lookup", "int64", "scalar"), "mnse": (False, "mnse", "int64", "scalar"),
    "identity": (False, "scale", "float32", "scalar"),
    "sequence_vocab": (True, "pooled", "int64", "list"), "sequence_float": (True, None, "float32", "list"),
    "dense": (True, "project", "float32", "vector"),
}


def test_builtin_encodings_state_what_was_hard_coded():
    assert set(E.ENCODING_TYPES) == set(BEFORE)
    for name, (list_valued, field_kind, dtype, shape) in BEFORE.items():
        cls = encoding_class(name)
        assert (cls.name, cls.list_valued, cls.field_kind, cls.encoded_dtype) == (name, list_valued, field_kind, dtype)
        assert cls.request_shape({"type": name, "dim": 3, "max_len": 2}) == shape
    assert {n for n, c in ENCODINGS.items() if c.owns_vocabulary} == {"vocab", "sequence_vocab"}


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="encoding 'vocab' is registered twice"):
        @register_encoding("vocab")
        class Other(Encoding):
            pass
    assert ENCODINGS["vocab"].__name__ == "VocabEncoding"


def test_unknown_type_names_the_feature():
    with pytest.raises(E.EncodeError, match="feature 'f': encoding.type 'nope' not in"):
        encoding_class("nope", "f")


@pytest.fixture
def docstring_encoding():
    """Runs the example of ``features/encodings/base.py``'s docstring; unregisters it afterwards."""
    code = textwrap.dedent(base.__doc__.split("::\n", 1)[1].split("\nThen ")[0])
    exec(compile(code, "features/encodings/modulo.py", "exec"), {})
    name = re.search(r'register_encoding\("(\w+)"\)', code).group(1)
    yield name
    ENCODINGS.pop(name)


def test_a_new_encoding_is_one_class(docstring_encoding, tmp_path):
    name = docstring_encoding
    spec = FeatureSpec("shop", "categorical", "int64", "item", {"type": name, "num_buckets": 5})
    assert E.analyzers_needed(spec) == set()
    with pytest.raises(E.EncodeError, match=f"feature 'shop': unknown {name} option.*'size'"):
        E.build_feature(FeatureSpec("shop", "categorical", "int64", "item", {"type": name, "size": 5}), {}, "")
    f = E.build_feature(spec, {}, str(tmp_path))
    assert (f.encoding, f.num_ids, f.width) == ({"type": name, "num_buckets": 5}, 7, 1)
    values = [3, 12, -1, None]
    codes = E.NumpyEncoder(f, str(tmp_path)).encode(values)
    assert codes[:, 0].tolist() == [3 % 5 + 2, 12 % 5 + 2, -1 % 5 + 2, 0]  # missing -> padding 0
    tf_codes = E.make_tf_encoder(f, str(tmp_path))(tf.constant([3, 12, -1, E.INT_MISSING], tf.int64))
    np.testing.assert_array_equal(tf_codes.numpy(), codes)
    schema = Schema(features=[f], labels=["click"])
    assert [(s.name, s.kind) for s in plan_fields(schema.to_dict())] == [("shop", "lookup")]
    assert [(r.name, r.shape) for r in raw_inputs(schema)] == [("shop", "scalar")]
