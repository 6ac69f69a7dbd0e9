"""``identity``: a number passed through as float32 [n, 1].

``encoding: {type: identity, standardize: false}``; ``standardize: true`` gives
``(x - mean) / std`` with the train moments (statistic ``moments``; std 1 when the
variance is 0). Missing -> ``default`` if set, else the train mean when standardizing
(output 0), else 0.0. The model embeds it as value * a learned vector.
"""
from __future__ import annotations

import numpy as np

from features.encodings.base import Fitted, bool_option, register_encoding, statistic
from features.encodings.families import NumericEncoding
from features.encodings.values import EncodeError


@register_encoding("identity")
class IdentityEncoding(NumericEncoding):
    options = frozenset({"standardize"})
    encoded_dtype = "float32"
    field_kind = "scale"

    @classmethod
    def statistics(cls, spec, params) -> set:
        return {"moments"} if params.get("standardize") else set()

    @classmethod
    def fit(cls, spec, params, stats, out_dir) -> Fitted:
        res = {"standardize": bool(bool_option(spec, params, "standardize", False))}
        if res["standardize"]:
            m = statistic(spec, stats, "moments")
            if not m.get("count"):
                raise EncodeError(spec.name, "no training values to standardize with")
            var = float(m["var"])
            res.update(mean=float(m["mean"]), std=float(np.sqrt(var)) if var > 0 and np.isfinite(var) else 1.0)
        return Fitted(res)

    def fill(self) -> float:
        if self.feature.default is not None:
            return float(self.feature.default)
        return self.params["mean"] if self.params["standardize"] else 0.0

    def codes(self, x):
        if self.params["standardize"]:
            x = (x - self.params["mean"]) / self.params["std"]
        return x.astype(np.float32)[:, None]

    def tf_codes(self, v, tables):
        import tensorflow as tf

        if self.params["standardize"]:
            v = (v - self.params["mean"]) / self.params["std"]
        return tf.cast(v, tf.float32)[:, None]

    def example_number(self, i, n):
        """Standardized: from mean - std / 2 to mean + std / 2 over the ``n`` examples."""
        if not self.params["standardize"]:
            return super().example_number(i, n)
        return self.params["mean"] + self.params["std"] * (i / max(n, 1) - 0.5)
