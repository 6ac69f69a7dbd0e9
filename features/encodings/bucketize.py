"""``bucketize``: a number -> ``2 + #{boundaries <= x}``; methods and rules in
``features/bucketize.py``.

``encoding: {type: bucketize, method: quantile, num_buckets: 10}`` (boundaries from the
train ``quantiles``), ``{boundaries: [...]}`` (method ``boundaries``) or
``{method: log2sq, max_id: ...}`` (``max_id`` defaults to the id of the train maximum).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from features import bucketize
from features.encodings.base import Fitted, int_option, register_encoding, statistic
from features.encodings.families import NumericEncoding
from features.encodings.values import EncodeError
from features.schema import Feature

_METHOD_OPTIONS = {"quantile": {"num_buckets"}, "boundaries": {"boundaries"}, "log2sq": {"max_id"}}


def _method(params: Dict[str, Any]) -> str:
    return params.get("method", "boundaries" if "boundaries" in params else "quantile")


@register_encoding("bucketize")
class BucketizeEncoding(NumericEncoding):
    options = frozenset({"method", "num_buckets", "boundaries", "max_id"})

    @classmethod
    def check(cls, spec, params) -> None:
        method = _method(params)
        if method not in bucketize.METHODS:
            raise EncodeError(spec.name, f"bucketize method {method!r} not in {bucketize.METHODS}")
        extra = sorted(set(params) - _METHOD_OPTIONS[method] - {"method"})
        if extra:
            raise EncodeError(spec.name, f"bucketize method '{method}' takes no {extra}")
        if method == "boundaries":
            try:
                bucketize.check_boundaries(params.get("boundaries", []))
            except (TypeError, ValueError) as exc:
                raise EncodeError(spec.name, str(exc)) from None

    @classmethod
    def statistics(cls, spec, params) -> set:
        method = _method(params)
        need = method == "quantile" or (method == "log2sq" and params.get("max_id") is None)
        return {"quantiles"} if need else set()

    @classmethod
    def fit(cls, spec, params, stats, out_dir) -> Fitted:
        cls.check(spec, params)
        method = _method(params)
        if method == "log2sq":
            max_id = int_option(spec, params, "max_id", low=bucketize.LOG2SQ_MIN_MAX_ID)
            if max_id is None:
                max_id = bucketize.log2sq_max_id(statistic(spec, stats, "quantiles"))
            return Fitted({"method": method, "max_id": max_id}, num_ids=max_id + 1)
        if method == "quantile":
            nb = int_option(spec, params, "num_buckets", bucketize.DEFAULT_NUM_BUCKETS)
            bounds = bucketize.quantile_boundaries(statistic(spec, stats, "quantiles"), nb)
            res = {"method": method, "num_buckets": nb, "boundaries": bounds}
        else:
            res = {"method": method, "boundaries": bucketize.check_boundaries(params["boundaries"])}
        return Fitted(res, num_ids=len(res["boundaries"]) + bucketize.FIRST_ID + 1)

    def __init__(self, feature: Feature, data_dir: str):
        super().__init__(feature, data_dir)
        self.boundaries = bucketize.resolve_boundaries(self.params)

    def codes(self, x):
        return bucketize.bucket_ids(x, self.boundaries)[:, None]

    def tf_codes(self, v, tables):
        return bucketize.tf_bucket_ids(v, self.boundaries)[:, None]

    def example_number(self, i, n):
        """The finite boundaries in turn over the ``n`` examples (``i`` when there are none)."""
        b = self.boundaries[np.isfinite(self.boundaries)]
        return float(b[(i * len(b)) // max(n, 1)]) if len(b) else float(i)
