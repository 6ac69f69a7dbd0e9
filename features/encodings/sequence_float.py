"""``sequence_float``: a list of numbers (e.g. behaviour timestamps) -> [n, max_len] float32.

``encoding: {type: sequence_float, max_len: L}``: missing elements dropped, the last
``max_len`` kept, right-padded with 0.0. Not an embedding field: a module that reads the
sequence itself (e.g. TIM) takes it from the batch.
"""
from __future__ import annotations

from features.encodings.base import Fitted, register_encoding
from features.encodings.families import SequenceEncoding
from features.encodings.values import element_numbers, tf_numbers


@register_encoding("sequence_float")
class SequenceFloatEncoding(SequenceEncoding):
    dtypes = ("int64", "float32")
    encoded_dtype = "float32"
    field_kind = None

    @classmethod
    def fit(cls, spec, params, stats, out_dir) -> Fitted:
        max_len = cls.max_len(spec, params)
        return Fitted({"max_len": max_len}, width=max_len)

    def element_codes(self, flat, null, lengths):
        x, missing = element_numbers(flat, null, lengths, self.feature.dtype, self.feature.name)
        return x[~missing], missing

    def tf_element_codes(self, flat, tables):
        import tensorflow as tf

        v = tf_numbers(flat, self.feature.dtype)
        return tf.cast(v, tf.float32), tf.math.is_nan(v)
