"""Hashing for huge categorical vocabularies (``encoding: {type: hash, num_buckets: N}``).

Semantics: a value's key (the same key as for vocabularies: strings as they are,
integers as their decimal string) goes to bucket ``FarmHash Fingerprint64(utf8(key))
mod num_buckets``; ids are ``1 + bucket`` in ``1..num_buckets`` and 0 is missing,
so ``num_ids = num_buckets + 1``. No statistics are needed.

TF side: ``tf.strings.to_hash_bucket_fast`` (Fingerprint64 mod N). Numpy side:
``farmhash.fingerprint64`` from the ``pyfarmhash`` package, checked bit-identical
to TF's fingerprint (tests hold them equal); it keeps TensorFlow ops out of the
Beam workers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import farmhash
import numpy as np

if TYPE_CHECKING:  # TF is imported lazily where it is used (serving): Beam workers never load it
    import tensorflow as tf


def hash_ids(keys: np.ndarray, num_buckets: int) -> np.ndarray:
    """ids 1..num_buckets of string keys (numpy, bit-identical to :func:`tf_hash_ids`)."""
    fp = np.fromiter(map(farmhash.fingerprint64, keys), dtype=np.uint64, count=len(keys))
    return (fp % np.uint64(num_buckets)).astype(np.int64) + 1


def tf_hash_ids(keys: tf.Tensor, num_buckets: int) -> tf.Tensor:
    import tensorflow as tf

    return tf.strings.to_hash_bucket_fast(keys, num_buckets) + 1
