"""``sequence_vocab``: a list of raw values -> vocabulary ids [n, max_len] int64.

``encoding: {type: sequence_vocab, max_len: L}`` with an own vocabulary over the flattened
train lists (``min_count``, ``max_size``) or ``share_vocab_with`` another feature's (so
behaviour ids equal the target item's ids). Missing elements are dropped, the LAST
``max_len`` elements (the most recent) are kept in order and right-padded with 0.
"""
from __future__ import annotations

from features.encodings.base import Fitted, register_encoding
from features.encodings.families import SequenceEncoding
from features.encodings.values import element_keys, tf_keys
from features.encodings.vocab import OPTIONS, Vocabulary


@register_encoding("sequence_vocab")
class SequenceVocabEncoding(Vocabulary, SequenceEncoding):
    dtypes = ("string", "int64")
    options = OPTIONS | SequenceEncoding.options
    reads = "keys"
    field_kind = "pooled"

    @classmethod
    def fit(cls, spec, params, stats, out_dir) -> Fitted:
        max_len = cls.max_len(spec, params)
        res, num_ids = cls.fit_vocabulary(spec, params, stats, out_dir)
        return Fitted({**res, "max_len": max_len}, num_ids=num_ids, width=max_len)

    def element_codes(self, flat, null, lengths):
        keys, missing = element_keys(flat, null, lengths, self.feature.name)
        return self.lookup(keys[~missing]), missing

    def tf_element_codes(self, flat, tables):
        keys, missing = tf_keys(flat)
        return self.tf_lookup(keys, tables), missing

    def example_element(self, i, j):
        """Its vocabulary's keys in turn; for an empty vocabulary made-up keys (all OOV):
        ``k<j>``, or ``j`` when the raw values are int64."""
        key = self.example_key(i + j)
        if key is not None:
            return key
        return j if self.feature.dtype == "int64" else f"k{j}"
