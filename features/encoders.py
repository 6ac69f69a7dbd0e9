"""Feature encodings: build from train statistics, encode with numpy (Beam) or TF (serving).

One feature spec + train statistics -> a resolved :class:`features.schema.Feature`
(``build_feature``); the Feature alone (+ the vocabulary files under ``out_dir``)
reproduces the encoding in two twins held equal by parity tests:
:class:`NumpyEncoder` (vectorised, for the Beam job) and :func:`make_tf_encoder`
(TF ops and lookup tables, for the SavedModel serving graph). TensorFlow is
imported by the TF twin only, on first use: the Beam workers never load it.

Each encoding type is one class in ``features/encodings/`` (registered by name; its
module says what it does and ``features/encodings/base.py`` how to add one): vocab,
hash, bucketize, mnse, identity, sequence_vocab, sequence_float, dense. Ids: 0 =
missing / padding, 1 = OOV, real values from 2. This module holds what is common to
them: the spec checks, the statistics, the build and the two encoders' entry points.
Raw values are canonicalised by ``features/encodings/values.py`` (re-exported here:
``categorical_keys``, ``numeric_values``, ``FlatLists``, ``INT_MISSING``): a missing
scalar takes the feature's ``default`` (a raw value, encoded like any other) when it
has one, else the padding id / 0.0.

Errors. ``NumpyEncoder.encode`` raises :class:`EncodeError` naming the feature and
the bad rows (``.rows``) for values it cannot encode (a non-numeric string in a
numeric feature, a dense list of the wrong length, a missing value of a
``required`` feature) so the Beam job can quarantine those rows. The TF encoder
never fails a request: it encodes what it can (missing -> default / padding;
non-integral floats in a categorical tensor are truncated; ragged dense rows of
the wrong length are padded / cut).
"""
from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Dict, Tuple, Type

import numpy as np
import pandas as pd

from features.encodings import ENCODINGS, Encoding, encoding_class, encoding_of
from features.encodings.values import (INT_MISSING, EncodeError, FlatLists, categorical_keys, element_keys, key_of,
                                       list_parts, numeric_values)
from features.schema import Feature

if TYPE_CHECKING:  # TF is imported lazily, by the TF encoder only: Beam workers never load it
    import tensorflow as tf

__all__ = ["ENCODING_TYPES", "INT_MISSING", "EncodeError", "FlatLists", "NumpyEncoder", "analyzers_needed",
           "build_feature", "categorical_keys", "compute_stats", "count_values", "make_tf_encoder", "numeric_values",
           "sort_for_build", "spec_encoding"]
ENCODING_TYPES = tuple(ENCODINGS)  # the built-in encodings (the registry may hold more)


def compute_stats(spec, values) -> Dict[str, object]:
    """The train statistics :func:`build_feature` needs, computed in memory from one column
    of raw values (the Beam job computes the same with combiners over chunks): for fitting
    features on a DataFrame in notebooks, tests and benchmarks."""
    need, stats = analyzers_needed(spec), {}
    if "counts" in need:
        stats["counts"] = count_values(spec, values)
    if need & {"quantiles", "moments"}:
        x = numeric_values(values, spec.dtype)
        x = x[np.isfinite(x)]
        stats["quantiles"] = np.sort(x)
        stats["moments"] = {"count": x.size, "mean": float(x.mean()) if x.size else 0.0,
                            "var": float(x.var()) if x.size else 0.0}
    return stats


def count_values(spec, values) -> Dict[str, int]:
    """Counts of the non-missing keys in a batch (list elements for list-valued encodings,
    per-row lists or :class:`FlatLists`): the per-batch part of the ``counts`` statistic,
    to be summed by the Beam job."""
    if encoding_of(spec).list_valued:
        flat, null, lengths, _ = list_parts(values, spec.name)
        keys, missing = element_keys(flat, null, lengths, spec.name)
    else:
        keys, missing = categorical_keys(values, spec.name)
    counts = pd.Series(keys[~missing], dtype=object).value_counts(sort=False)
    return {k: int(c) for k, c in counts.items()}


# ---- specs -> Features ---------------------------------------------------------
def spec_encoding(spec) -> Tuple[Type[Encoding], Dict[str, Any]]:
    """(encoding class, options) of a spec, with the type, options, kind, dtype, default
    and name checked."""
    if not isinstance(spec.encoding, dict):
        raise EncodeError(spec.name, f"encoding must be a mapping, got {spec.encoding!r}")
    p = dict(spec.encoding)
    cls = encoding_class(p.pop("type", None), spec.name)
    unknown = sorted(set(p) - cls.options)
    if unknown:
        raise EncodeError(spec.name, f"unknown {cls.name} option(s) {unknown}; known: {sorted(cls.options)}")
    if spec.kind not in cls.kinds:
        raise EncodeError(spec.name, f"encoding {cls.name} needs kind in {cls.kinds}, got '{spec.kind}'")
    if spec.dtype not in cls.dtypes:
        raise EncodeError(spec.name, f"encoding {cls.name} needs dtype in {cls.dtypes}, got '{spec.dtype}'")
    if cls.list_valued and spec.default is not None:
        raise EncodeError(spec.name, f"{cls.name} takes no default: a missing list encodes as padding / zeros")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", spec.name):
        raise EncodeError(spec.name, "feature names may hold only letters, digits, '_', '.', '-'")
    cls.check(spec, p)
    return cls, p


def _check_default(spec, cls: Type[Encoding]) -> None:
    d = spec.default
    if d is None:
        return
    ok = (key_of(d) not in (None, "")) if cls.reads == "keys" else (
        isinstance(d, (int, float)) and not isinstance(d, bool) and np.isfinite(d))
    if not ok:
        raise EncodeError(spec.name, f"default {d!r} is not a valid raw value for encoding {cls.name}")


def analyzers_needed(spec) -> set:
    """Train statistics ``build_feature`` needs: a subset of {counts, quantiles, moments}."""
    cls, p = spec_encoding(spec)
    return cls.statistics(spec, p)


def sort_for_build(specs) -> list:
    """Specs ordered so that every ``share_vocab_with`` target is built before its users."""
    by_name = {s.name: s for s in specs}
    sharers = []
    for s in specs:
        target = s.encoding.get("share_vocab_with") if isinstance(s.encoding, dict) else None
        if target is None:
            continue
        t = by_name.get(target)
        if t is None:
            raise EncodeError(s.name, f"share_vocab_with names '{target}', which is not a feature")
        owner = ENCODINGS.get(t.encoding.get("type"))
        if owner is None or not owner.owns_vocabulary or t.encoding.get("share_vocab_with"):
            raise EncodeError(s.name, f"share_vocab_with '{target}' must be a vocab or sequence_vocab "
                                      "feature with its own vocabulary")
        sharers.append(s)
    return [s for s in specs if s not in sharers] + sharers


def build_feature(spec, stats: dict, out_dir: str) -> Feature:
    """Resolve a spec with TRAIN statistics into a Feature; writes vocabulary files."""
    cls, p = spec_encoding(spec)
    _check_default(spec, cls)
    try:
        fitted = cls.fit(spec, p, stats, out_dir)
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, EncodeError):
            raise
        raise EncodeError(spec.name, str(exc)) from None
    return Feature(name=spec.name, kind=spec.kind, dtype=spec.dtype, role=spec.role,
                   encoding={"type": cls.name, **fitted.params}, num_ids=fitted.num_ids, width=fitted.width,
                   encoded_dtype=cls.encoded_dtype, required=spec.required, default=spec.default,
                   source=spec.source)


# ---- the two encoders ------------------------------------------------------------
class NumpyEncoder:
    """Vectorised numpy encoding of one feature's raw batches, for the Beam job."""

    def __init__(self, feature: Feature, data_dir: str):
        self.feature = feature
        self.encoding = encoding_of(feature)(feature, data_dir)

    def encode(self, values) -> np.ndarray:
        """Raw values of one batch -> [n, width] int64 or float32."""
        return self.encoding.encode(values)


def _tf_module_name(name: str) -> str:
    return "encode_" + re.sub(r"\W", "_", name)


@functools.lru_cache(maxsize=None)
def _tf_encoder_class() -> type:
    """:class:`TFEncoder`, defined on first use so that importing this module (as every Beam
    worker does) does not import TensorFlow."""
    import tensorflow as tf

    class TFEncoder(tf.Module):
        """Raw tensor -> [batch, width] encoded tensor inside a TF graph (see module docstring).

        A ``tf.Module`` so the encoding's tables (and the vocabulary files they read) are
        tracked (saved as SavedModel assets) when the encoder is attached to an exported module.
        """

        def __init__(self, feature: Feature, data_dir: str):
            super().__init__(name=_tf_module_name(feature.name))
            self.feature = feature
            self._encoding = encoding_of(feature)(feature, data_dir)
            self._tables = self._encoding.tf_tables()

        def __call__(self, x):
            return self._encoding.tf_encode(x, self._tables)

    TFEncoder.__qualname__ = "TFEncoder"
    return TFEncoder


def __getattr__(name: str):
    """``encoders.TFEncoder`` resolves (importing TensorFlow) only when it is asked for."""
    if name == "TFEncoder":
        return _tf_encoder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_tf_encoder(feature: Feature, data_dir: str) -> tf.Module:
    """The TF twin of :class:`NumpyEncoder` (equal outputs on the same inputs)."""
    return _tf_encoder_class()(feature, data_dir)
