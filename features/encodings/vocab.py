"""``vocab``: a categorical value -> its vocabulary id (OOV 1); rules in ``features/vocab.py``.

``encoding: {type: vocab, min_count: 1, max_size: null}`` fits a vocabulary on the TRAIN
counts (statistic ``counts``) and writes it to ``vocab/<feature>.txt``; or
``share_vocab_with: <feature>`` reuses another feature's vocabulary file (so behaviour ids
equal the target item's ids; it must be built first, see ``sort_for_build``).
:class:`Vocabulary` is that fitting and look-up, shared with ``sequence_vocab``.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from features import vocab
from features.encodings.base import Fitted, int_option, register_encoding, statistic
from features.encodings.families import CategoricalEncoding
from features.encodings.values import EncodeError
from features.schema import Feature

OPTIONS = frozenset({"min_count", "max_size", "share_vocab_with"})


def vocab_path(name: str) -> str:
    """A feature's vocabulary file, relative to the data directory."""
    return f"vocab/{name}.txt"


class Vocabulary:
    """Mixin: a vocabulary fitted on train counts (or shared), looked up numpy and TF."""

    owns_vocabulary = True

    @classmethod
    def statistics(cls, spec, params: Dict[str, Any]) -> set:
        return set() if params.get("share_vocab_with") else {"counts"}

    @classmethod
    def fit_vocabulary(cls, spec, params: Dict[str, Any], stats, out_dir: str) -> Tuple[Dict[str, Any], int]:
        """(resolved vocabulary parameters, num_ids); writes the vocabulary file."""
        target = params.get("share_vocab_with")
        if target is not None:
            own = sorted({"min_count", "max_size"} & set(params))
            if own:
                raise EncodeError(spec.name, f"{own} cannot be combined with share_vocab_with")
            rel = vocab_path(target)
            if not os.path.exists(os.path.join(out_dir, rel)):
                raise EncodeError(spec.name, f"share_vocab_with '{target}': no vocabulary at "
                                             f"{os.path.join(out_dir, rel)}; build '{target}' first (sort_for_build)")
            keys = vocab.read_vocab(os.path.join(out_dir, rel))
            return {"share_vocab_with": target, "vocab_file": rel, "vocab_size": len(keys)}, len(keys) + vocab.FIRST_ID
        min_count = int_option(spec, params, "min_count", 1)
        max_size = int_option(spec, params, "max_size")
        counts = statistic(spec, stats, "counts")
        keys = vocab.build_vocab({str(k): int(c) for k, c in counts.items()}, min_count, max_size)
        rel = vocab_path(spec.name)
        vocab.write_vocab(os.path.join(out_dir, rel), keys)
        res = {"min_count": min_count, "max_size": max_size, "vocab_file": rel, "vocab_size": len(keys)}
        return res, len(keys) + vocab.FIRST_ID

    def __init__(self, feature: Feature, data_dir: str):
        super().__init__(feature, data_dir)
        self.vocab_keys = _load_vocab(feature, data_dir)

    @functools.cached_property
    def _lookup(self) -> vocab.VocabLookup:
        return vocab.VocabLookup(self.vocab_keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        return self._lookup.lookup(keys)

    def tf_tables(self) -> Dict[str, Any]:
        path = os.path.join(self.data_dir, self.params["vocab_file"])
        return {"vocab": vocab.tf_vocab_table(path, len(self.vocab_keys))}

    @staticmethod
    def tf_lookup(keys, tables: Dict[str, Any]):
        return vocab.tf_vocab_lookup(tables["vocab"], keys)

    def example_key(self, k: int) -> Optional[str]:
        """The ``k``-th vocabulary key, cycling (so warm-up touches the table's real entries);
        None for an empty vocabulary."""
        return self.vocab_keys[k % len(self.vocab_keys)] if self.vocab_keys else None


def _load_vocab(feature: Feature, data_dir: str) -> List[str]:
    path = os.path.join(data_dir, feature.encoding["vocab_file"])
    try:
        keys = vocab.read_vocab(path)
    except FileNotFoundError:
        raise EncodeError(feature.name, f"vocabulary file not found: '{path}'") from None
    if len(keys) != feature.encoding["vocab_size"]:
        raise EncodeError(feature.name, f"vocabulary '{path}' has {len(keys)} entries, "
                                        f"the schema says {feature.encoding['vocab_size']}")
    return keys


@register_encoding("vocab")
class VocabEncoding(Vocabulary, CategoricalEncoding):
    options = OPTIONS

    @classmethod
    def fit(cls, spec, params, stats, out_dir) -> Fitted:
        res, num_ids = cls.fit_vocabulary(spec, params, stats, out_dir)
        return Fitted(res, num_ids=num_ids)

    def ids(self, keys):
        return self.lookup(keys)

    def tf_ids(self, keys, tables):
        return self.tf_lookup(keys, tables)

    def example(self, i, n):
        """Its vocabulary's keys in turn; the family's made-up keys for an empty vocabulary."""
        key = self.example_key(i)
        return super().example(i, n) if key is None else self.as_raw(key)
