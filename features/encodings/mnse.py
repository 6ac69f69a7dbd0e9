"""``mnse``: Multiple Numeral Systems Encoding (Tencent Eq. 2), a number -> one id per digit
of each numeral system; rules and id layout in ``features/mnse.py``.

``encoding: {type: mnse, bases: [2, 3, 10], digits: [...], scale: 1, signed: ...}``:
``digits`` default to what the train range of ``|v| * scale`` needs and ``signed`` to
"train minimum < 0" (statistic ``quantiles``, unless both are given). The model embeds
one field per numeral system (+ one for the sign), the sum of its digit columns.
"""
from __future__ import annotations

import numpy as np

from features import mnse
from features.encodings.base import Fitted, bool_option, register_encoding, statistic
from features.encodings.families import NumericEncoding
from features.encodings.values import EncodeError


@register_encoding("mnse")
class MNSEEncoding(NumericEncoding):
    options = frozenset({"bases", "digits", "scale", "signed"})
    field_kind = "mnse"

    @classmethod
    def statistics(cls, spec, params) -> set:
        return {"quantiles"} if params.get("digits") is None or params.get("signed") is None else set()

    @classmethod
    def fit(cls, spec, params, stats, out_dir) -> Fitted:
        bases = params.get("bases", list(mnse.DEFAULT_BASES))
        scale = params.get("scale", 1)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise EncodeError(spec.name, f"encoding.scale must be a positive number, got {scale!r}")
        mnse.check_bases(bases)
        digits, signed = params.get("digits"), bool_option(spec, params, "signed")
        if digits is None or signed is None:
            sample = np.asarray(statistic(spec, stats, "quantiles"), dtype=np.float64)
            sample = sample[np.isfinite(sample)]
            if sample.size == 0:
                raise EncodeError(spec.name, "no finite training values to size the MNSE digits from")
            if signed is None:
                signed = bool(sample.min() < 0)
            if digits is None:
                top = int(min(np.floor(np.abs(sample).max() * scale), float(mnse.MAX_CODE)))
                digits = [mnse.digits_needed(top, b) for b in bases]
        mnse.check_digits(bases, digits)
        res = {"bases": bases, "digits": digits, "scale": scale, "signed": signed}
        return Fitted(res, num_ids=mnse.num_ids(res), width=mnse.width(res))

    @classmethod
    def fields(cls, feature):
        names = [f"{feature.name}/base{b}" for b in feature.encoding["bases"]] + [f"{feature.name}/sign"]
        return [(names[i], start, stop) for i, (start, stop) in enumerate(mnse.mnse_groups(feature))]

    def codes(self, x):
        return mnse.mnse_ids(x, self.params)

    def tf_codes(self, v, tables):
        return mnse.tf_mnse_ids(v, self.params)
