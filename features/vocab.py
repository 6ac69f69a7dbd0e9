"""Categorical vocabularies with a min-count threshold and an OOV id.

Semantics (``encoding: {type: vocab}`` and the element look-up of ``sequence_vocab``):

* A raw value is compared as its *key*: strings as they are, integers as their
  decimal string (``7`` and ``"7"`` are the same value; see
  ``features.encoders.categorical_keys``).
* The vocabulary is every key whose count on the TRAIN split is ``>= min_count``
  (default 1), ordered by count descending then key ascending, cut to the first
  ``max_size`` entries when given. Keys holding a line break cannot be stored one
  per line and are left out (they encode as OOV).
* Ids: 0 = missing / padding, 1 = OOV (unseen in train, or below ``min_count``),
  vocabulary entries from 2 in vocabulary order; ``num_ids = len(vocab) + 2``.
* The vocabulary file holds one key per line in id order (UTF-8, ``\\n``
  separated), so line ``i`` is id ``i + 2``. The TF table reads the same file.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import pandas as pd

from features.schema import OOV_ID

if TYPE_CHECKING:  # TF is imported lazily where it is used (serving): Beam workers never load it
    import tensorflow as tf

FIRST_ID = 2  # ids below are padding (0) and OOV (1)


def build_vocab(counts: Dict[str, int], min_count: int = 1, max_size: Optional[int] = None) -> List[str]:
    """Keys with count >= ``min_count``, by count desc then key, at most ``max_size``."""
    kept = [(k, c) for k, c in counts.items()
            if c >= min_count and k != "" and "\n" not in k and "\r" not in k]
    kept.sort(key=lambda kc: (-kc[1], kc[0]))
    if max_size is not None:
        kept = kept[:max_size]
    return [k for k, _ in kept]


def write_vocab(path: str, keys: List[str]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(keys))


def read_vocab(path: str) -> List[str]:
    """Keys of a vocabulary file in id order (split on ``\\n`` only, as TF does)."""
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    return text.split("\n") if text else []


class VocabLookup:
    """Vectorised key -> id look-up (a pandas hash index; unseen keys -> OOV)."""

    def __init__(self, keys: List[str]):
        self.size = len(keys)
        self._index = pd.Index(np.asarray(keys, dtype=object), dtype=object)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        pos = self._index.get_indexer(keys).astype(np.int64)
        return np.where(pos < 0, OOV_ID, pos + FIRST_ID)


def tf_vocab_table(path: str, size: int) -> tf.lookup.StaticHashTable:
    """A TF table key -> id built from the vocabulary file (an asset when saved): line ``i``
    holds id ``i + FIRST_ID`` and unknown keys get ``OOV_ID``, so a look-up is one op."""
    import tensorflow as tf

    if size == 0:  # TF initialises no table from an empty file or empty tensors: hold only
        # the key "", which encoders mask as missing before any look-up
        init = tf.lookup.KeyValueTensorInitializer(tf.constant([""]), tf.constant([OOV_ID], tf.int64))
    else:
        init = tf.lookup.TextFileInitializer(
            path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, vocab_size=size, value_index_offset=FIRST_ID)
    return tf.lookup.StaticHashTable(init, default_value=OOV_ID)


def tf_vocab_lookup(table: tf.lookup.StaticHashTable, keys: tf.Tensor) -> tf.Tensor:
    """Ids of string keys (any shape), as :meth:`VocabLookup.lookup`."""
    return table.lookup(keys)
