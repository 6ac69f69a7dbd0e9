"""``dense``: a list of exactly ``dim`` numbers -> [n, dim] float32.

``encoding: {type: dense, dim: D}``: a missing list is zeros and NaN elements are 0.0; a
list of another length is a bad row (numpy) or padded / cut (TF, which never fails a
request). The model projects it to the embedding width.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from features.encodings.base import Encoding, Fitted, int_option, register_encoding
from features.encodings.values import (INT_MISSING, EncodeError, element_numbers, list_parts, missing_required,
                                       tf_numbers)


@register_encoding("dense")
class DenseEncoding(Encoding):
    kinds = ("dense",)
    dtypes = ("int64", "float32")
    options = frozenset({"dim"})
    list_valued = True
    encoded_dtype = "float32"
    field_kind = "project"

    @classmethod
    def list_length(cls, params) -> Optional[int]:
        dim = params.get("dim")
        return dim if isinstance(dim, int) and not isinstance(dim, bool) else None

    @classmethod
    def fit(cls, spec, params, stats, out_dir) -> Fitted:
        dim = int_option(spec, params, "dim", required=True)
        return Fitted({"dim": dim}, width=dim)

    def encode(self, values) -> np.ndarray:
        f, dim = self.feature, self.params["dim"]
        flat, null, lengths, missing_rows = list_parts(values, f.name)
        missing_required(f, missing_rows)
        bad = np.flatnonzero(~missing_rows & (lengths != dim))
        if bad.size:
            raise EncodeError(f.name, f"dense lists must hold exactly {dim} values", bad)
        x, missing = element_numbers(flat, null, lengths, f.dtype, f.name)
        out = np.zeros((len(lengths), dim), dtype=np.float32)
        out[~missing_rows] = np.where(missing, 0.0, x).reshape(-1, dim)
        return out

    def tf_encode(self, x, tables):
        import tensorflow as tf

        dim = self.params["dim"]
        if isinstance(x, tf.RaggedTensor):
            x = x.to_tensor(default_value=tf.constant(np.nan, x.dtype) if x.dtype.is_floating else INT_MISSING,
                            shape=[None, dim])
        x = tf.convert_to_tensor(x)
        if x.shape.rank != 2 or x.shape[1] != dim:
            x = tf.reshape(x, [-1, dim])
        v = tf_numbers(x, self.feature.dtype)
        return tf.cast(tf.where(tf.math.is_nan(v), tf.zeros_like(v), v), tf.float32)

    def example(self, i, n):
        """``dim`` values in [-0.5, 0.36], shifted by ``i`` (int64 floors them)."""
        return [self.as_raw(((i + j) % 7) / 7.0 - 0.5) for j in range(self.params["dim"])]
