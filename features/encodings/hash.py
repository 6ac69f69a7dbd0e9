"""``hash``: a categorical value -> ``1 + Fingerprint64(key) mod num_buckets``; rules in
``features/hashing.py``. ``encoding: {type: hash, num_buckets: N}``; no statistics."""
from __future__ import annotations

from features import hashing
from features.encodings.base import Fitted, int_option, register_encoding
from features.encodings.families import CategoricalEncoding


@register_encoding("hash")
class HashEncoding(CategoricalEncoding):
    options = frozenset({"num_buckets"})

    @classmethod
    def fit(cls, spec, params, stats, out_dir) -> Fitted:
        n = int_option(spec, params, "num_buckets", required=True)
        return Fitted({"num_buckets": n}, num_ids=n + 1)

    def ids(self, keys):
        return hashing.hash_ids(keys, self.params["num_buckets"])

    def tf_ids(self, keys, tables):
        return hashing.tf_hash_ids(keys, self.params["num_buckets"])
