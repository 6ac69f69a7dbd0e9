"""Families of encodings that share how raw values are read, numpy and TF.

* :class:`CategoricalEncoding`: one key per row -> one id; a subclass writes
  ``ids(keys)`` and ``tf_ids(keys, tables)`` for the present keys (vocab, hash).
* :class:`NumericEncoding`: one number per row -> a row of codes; a subclass writes
  ``codes(x)`` and ``tf_codes(v, tables)`` over float64 values, NaN = missing
  (bucketize, mnse, identity).
* :class:`SequenceEncoding`: one list per row -> its last ``max_len`` present elements,
  right-padded with 0; a subclass writes ``element_codes`` and ``tf_element_codes``
  (sequence_vocab, sequence_float).

A missing scalar takes the feature's ``default`` (a raw value, encoded like any other)
when it has one (:meth:`NumericEncoding.fill` may say otherwise), else the padding id;
a missing value of a ``required`` feature fails naming the rows.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from features.encodings.base import Encoding, int_option
from features.encodings.values import (categorical_keys, key_of, list_parts, missing_required, numeric_values,
                                       pack_last, tf_column, tf_keys, tf_missing_value, tf_numbers)
from features.schema import PAD_ID

_NP_DTYPES = {"int64": np.int64, "float32": np.float32}


class CategoricalEncoding(Encoding):
    """A scalar categorical value -> one id (0 when missing and no default)."""

    kinds = ("categorical", "numeric")
    dtypes = ("string", "int64")
    reads = "keys"

    def ids(self, keys: np.ndarray) -> np.ndarray:
        """Ids (int64, >= 1) of present keys."""
        raise NotImplementedError

    def tf_ids(self, keys, tables: Dict[str, Any]):
        """TF twin of :meth:`ids` (its value at missing keys is masked)."""
        raise NotImplementedError

    def encode(self, values) -> np.ndarray:
        f = self.feature
        keys, missing = categorical_keys(values, f.name)
        missing_required(f, missing)
        if f.default is not None:
            keys[missing] = key_of(f.default)
            missing = np.zeros_like(missing)
        ids = np.zeros(len(keys), dtype=np.int64)
        ids[~missing] = self.ids(keys[~missing])
        return ids[:, None]

    def tf_encode(self, x, tables: Dict[str, Any]):
        import tensorflow as tf

        keys, missing = tf_keys(tf_column(x))
        if self.feature.default is not None:
            return self.tf_ids(tf.where(missing, key_of(self.feature.default), keys), tables)[:, None]
        return tf.where(missing, tf.constant(PAD_ID, tf.int64), self.tf_ids(keys, tables))[:, None]

    def example(self, i: int, n: int) -> Any:
        """Made-up keys: ``i`` (int64) or ``<feature>-<i>`` (the feature's default is not used)."""
        return self.as_raw(str(i) if self.feature.dtype == "int64" else f"{self.feature.name}-{i}")


class NumericEncoding(Encoding):
    """A scalar number -> a row of codes; missing -> :meth:`fill`, else NaN for ``codes``."""

    kinds = ("numeric",)
    dtypes = ("int64", "float32")

    def fill(self) -> Optional[float]:
        """The value a missing number takes before encoding (None: stays NaN)."""
        return None if self.feature.default is None else float(self.feature.default)

    def codes(self, x: np.ndarray) -> np.ndarray:
        """float64 values [n] (NaN = missing) -> [n, width] codes."""
        raise NotImplementedError

    def tf_codes(self, v, tables: Dict[str, Any]):
        """TF twin of :meth:`codes` for a float64 tensor [n]."""
        raise NotImplementedError

    def encode(self, values) -> np.ndarray:
        x = numeric_values(values, self.feature.dtype, self.feature.name)
        missing_required(self.feature, np.isnan(x))
        fill = self.fill()
        if fill is not None:
            x = np.where(np.isnan(x), fill, x)
        return self.codes(x)

    def tf_encode(self, x, tables: Dict[str, Any]):
        import tensorflow as tf

        v = tf_numbers(tf_column(x), self.feature.dtype)
        fill = self.fill()
        if fill is not None:
            v = tf.where(tf.math.is_nan(v), tf.constant(fill, tf.float64), v)
        return self.tf_codes(v, tables)

    def example(self, i: int, n: int) -> Any:
        """The feature's default (even rows) and default + i (odd rows) when it has one, else
        the encoding's :meth:`example_number`."""
        d = self.feature.default
        if d is None:
            return super().example(i, n)
        return self.as_raw(float(d) if i % 2 == 0 else float(d) + i)


class SequenceEncoding(Encoding):
    """A list per row -> its last ``max_len`` present elements' codes, right-padded with 0
    (missing elements are dropped; a missing list is all padding)."""

    kinds = ("sequence",)
    list_valued = True
    options = frozenset({"max_len"})

    @classmethod
    def max_len(cls, spec, params: Dict[str, Any]) -> int:
        return int_option(spec, params, "max_len", required=True)

    def element_codes(self, flat: np.ndarray, null: Optional[np.ndarray],
                      lengths: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Flat list elements -> (codes of the present elements, missing-element mask)."""
        raise NotImplementedError

    def tf_element_codes(self, flat, tables: Dict[str, Any]):
        """TF twin of :meth:`element_codes`: (codes of every element, missing mask)."""
        raise NotImplementedError

    def encode(self, values) -> np.ndarray:
        flat, null, lengths, missing_rows = list_parts(values, self.feature.name)
        missing_required(self.feature, missing_rows)
        codes, missing = self.element_codes(flat, null, lengths)
        rows = np.repeat(np.arange(len(lengths)), lengths)
        return pack_last(rows[~missing], codes, len(lengths), self.params["max_len"],
                         _NP_DTYPES[self.encoded_dtype])

    def tf_encode(self, x, tables: Dict[str, Any]):
        """Dense, without ragged ops: the ``k``-th kept element is the first whose running count
        of present elements reaches ``skip + k`` (``skip`` = present elements beyond ``max_len``),
        found by one batched binary search; a search past the row's end reads a padding column.
        The running count is a product with a triangular matrix: quadratic in the request's list
        length, yet faster than TF's cumsum kernel for lists of up to a few hundred elements."""
        import tensorflow as tf

        if isinstance(x, tf.RaggedTensor):
            x = x.to_tensor(default_value=tf_missing_value(x.dtype))
        vals, missing = self.tf_element_codes(tf.convert_to_tensor(x), tables)
        max_len = self.params["max_len"]
        present = tf.cast(tf.logical_not(missing), tf.float32)
        length = tf.shape(present)[1]
        upper = tf.linalg.band_part(tf.ones(tf.stack([length, length])), 0, -1)
        seen = tf.cast(tf.matmul(present, upper), tf.int32)  # present elements so far (a cumsum, faster here)
        skip = tf.maximum(tf.cast(tf.reduce_sum(present, axis=1, keepdims=True), tf.int32) - max_len, 0)
        col = tf.raw_ops.LowerBound(sorted_inputs=seen, values=skip + tf.range(1, max_len + 1), out_type=tf.int32)
        return tf.gather(tf.pad(vals, [[0, 0], [0, 1]]), col, batch_dims=1)

    def example(self, i: int, n: int) -> List[Any]:
        """Lists of varying length, ``(i + 3) mod (max_len + 2)``: short, full, longer than
        ``max_len`` and empty, of :meth:`example_element` values."""
        return [self.as_raw(self.example_element(i, j)) for j in range((i + 3) % (self.params["max_len"] + 2))]

    def example_element(self, i: int, j: int) -> Any:
        """Element ``j`` of the ``i``-th example list (a number or a key)."""
        return float(1000 * i + j)
