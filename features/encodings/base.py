"""The encoding protocol and registry: one class per encoding, registered by name.

An encoding turns one raw column into model input. Its class holds, in one place:

* what a spec may say: ``kinds`` and raw ``dtypes`` it accepts, the ``options`` of its
  ``encoding:`` mapping (anything else is an error naming the feature and the key);
* what it reads and yields: ``reads`` (raw values, or list elements, compared as
  categorical ``"keys"`` or parsed as ``"numbers"``), ``list_valued`` (one list per row:
  a behaviour sequence or a dense vector; ``list_length`` when every list has a fixed
  length), ``encoded_dtype`` (how the TFRecords store it), ``field_kind`` (how
  ``models/embedding.py`` embeds it: lookup | mnse | scale | pooled | project, or None
  for no embedding field) and :meth:`Encoding.fields` (the fields' names and column
  ranges);
* fitting (class methods, spec -> schema entry): :meth:`Encoding.check` (the option checks
  that need no data, run when the job is planned), :meth:`Encoding.statistics` (which train
  statistics of :data:`STATISTICS` the Beam job accumulates for it) and
  :meth:`Encoding.fit` (spec options + those statistics -> the resolved parameters stored
  in ``schema.json``, ``num_ids`` and ``width``; may write files such as vocabularies);
* encoding (an instance per schema feature, built from the Feature and the data
  directory): :meth:`Encoding.encode` (numpy, vectorised: the Beam job) and
  :meth:`Encoding.tf_encode` with its :meth:`Encoding.tf_tables` (TF ops: the serving
  graph). The two must give equal outputs on equal inputs.
* examples (an instance): :meth:`Encoding.example` (the ``i``-th of ``n`` plausible raw
  values, for TF Serving's warm-up requests and the demo's example request); the base and
  the families give defaults, an encoding overrides where it knows its values better.

Ids follow the schema contract (``features/schema.py``): 0 = missing / padding,
1 = OOV, real values from 2. Raw values are canonicalised once, for every encoding, by
``features/encodings/values.py``; most encodings subclass a family of
``features/encodings/families.py`` (scalar categorical, scalar numeric, sequence) and
write only what is theirs.

Adding an encoding is one new file in this folder: every module here is imported by
``features/encodings/__init__.py``, and its ``@register_encoding("name")`` makes
``encoding: {type: name, ...}`` usable in a preprocess config, in the Beam job, in the
serving graph and in the model's embedding (a taken name fails). For example, a scalar
categorical encoding of integers needs its options, its fitting and the id of a key, numpy
and TF (``features/encodings/modulo.py``)::

    import numpy as np

    from features.encodings.base import Fitted, int_option, register_encoding
    from features.encodings.families import CategoricalEncoding


    @register_encoding("modulo")
    class ModuloEncoding(CategoricalEncoding):
        dtypes = ("int64",)
        options = frozenset({"num_buckets"})

        @classmethod
        def fit(cls, spec, params, stats, out_dir):
            n = int_option(spec, params, "num_buckets", required=True)
            return Fitted({"num_buckets": n}, num_ids=n + 2)

        def ids(self, keys):
            return keys.astype(np.int64) % self.params["num_buckets"] + 2

        def tf_ids(self, keys, tables):
            import tensorflow as tf
            return tf.strings.to_number(keys, tf.int64) % self.params["num_buckets"] + 2

Then add the encoding to the golden fixture of ``tests/features/test_encodings_golden.py``
(codes through both encoders). TensorFlow is imported inside TF methods only: the Beam
workers import every encoding and never load TensorFlow.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Dict, FrozenSet, List, Optional, Tuple, Type

import numpy as np

from features.registry import registrar
from features.encodings.values import EncodeError
from features.schema import Feature

if TYPE_CHECKING:
    import tensorflow as tf

STATISTICS = ("counts", "quantiles", "moments")  # what the Beam job accumulates over the TRAIN split
ENCODINGS: Dict[str, Type["Encoding"]] = {}


# class decorator: register an Encoding subclass as ``encoding: {type: name}`` (a taken name fails)
register_encoding = registrar(ENCODINGS, "encoding", attr="name")


def encoding_class(name: Any, feature: str = "") -> Type["Encoding"]:
    """The class registered as ``name``; an unknown name fails naming the feature."""
    if not isinstance(name, str) or name not in ENCODINGS:
        raise EncodeError(feature, f"encoding.type {name!r} not in {tuple(ENCODINGS)}")
    return ENCODINGS[name]


def encoding_of(item) -> Type["Encoding"]:
    """The encoding class of a Feature or a feature spec (by its ``encoding.type``)."""
    enc = item.encoding
    return encoding_class(enc.get("type") if isinstance(enc, dict) else None, item.name)


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What fitting resolves: the parameters stored in ``schema.json`` (``type`` aside), the
    embedding table size (0 for float encodings) and the values per example."""

    params: Dict[str, Any]
    num_ids: int = 0
    width: int = 1


class Encoding:
    """The protocol (see the module docstring). Class attributes describe the encoding;
    an instance encodes one schema feature."""

    name: ClassVar[str] = ""  # set by register_encoding
    kinds: ClassVar[Tuple[str, ...]] = ()
    dtypes: ClassVar[Tuple[str, ...]] = ()
    options: ClassVar[FrozenSet[str]] = frozenset()
    reads: ClassVar[str] = "numbers"  # "keys" | "numbers"
    list_valued: ClassVar[bool] = False
    encoded_dtype: ClassVar[str] = "int64"
    field_kind: ClassVar[Optional[str]] = "lookup"
    owns_vocabulary: ClassVar[bool] = False  # another feature may name it in share_vocab_with

    # ---- fitting (spec -> schema entry) ---------------------------------------------------
    @classmethod
    def check(cls, spec, params: Dict[str, Any]) -> None:
        """The checks of the spec's options that need no statistics, run when the job is planned
        (before any work, so a bad spec never reaches a Beam worker); raises EncodeError."""

    @classmethod
    def statistics(cls, spec, params: Dict[str, Any]) -> set:
        """The train statistics (a subset of :data:`STATISTICS`) :meth:`fit` needs."""
        return set()

    @classmethod
    def fit(cls, spec, params: Dict[str, Any], stats: Dict[str, Any], out_dir: str) -> Fitted:
        """Spec options (``type`` removed) + train statistics -> :class:`Fitted`."""
        raise NotImplementedError

    @classmethod
    def list_length(cls, params: Dict[str, Any]) -> Optional[int]:
        """The length every list must have (list-valued encodings), None for any length."""
        return None

    @classmethod
    def request_shape(cls, params: Dict[str, Any]) -> str:
        """How a serving request carries the raw value: scalar ([batch]), list ([batch, any
        length], missing-marker padded) or vector ([batch, list_length])."""
        if not cls.list_valued:
            return "scalar"
        return "list" if cls.list_length(params) is None else "vector"

    @classmethod
    def fields(cls, feature: Feature) -> List[Tuple[str, int, int]]:
        """(field name, first column, column stop) of each embedding field of ``feature``."""
        return [(feature.name, 0, feature.width)]

    # ---- encoding (schema feature -> codes) ----------------------------------------------
    def __init__(self, feature: Feature, data_dir: str):
        self.feature = feature
        self.params = feature.encoding
        self.data_dir = data_dir

    def encode(self, values) -> np.ndarray:
        """Raw values of one batch -> [n, width] int64 or float32 (numpy, for the Beam job).
        Values it cannot encode raise :class:`EncodeError` naming the rows (quarantined)."""
        raise NotImplementedError

    def tf_tables(self) -> Dict[str, Any]:
        """TF resources (lookup tables) :meth:`tf_encode` reads; the serving module tracks
        them, so the files they read are saved as SavedModel assets."""
        return {}

    def tf_encode(self, x, tables: Dict[str, Any]) -> tf.Tensor:
        """Raw tensor (ragged for sequences) -> [batch, width] (TF, for the serving graph).
        Never fails a request: what it cannot encode becomes missing / padding."""
        raise NotImplementedError

    # ---- examples (instance -> plausible raw values) --------------------------------------
    def example(self, i: int, n: int) -> Any:
        """The ``i``-th of ``n`` plausible raw values of the feature, as a client sends it: the
        warm-up requests and the demo's example request (``serving/warmup.py``). This default
        is the number :meth:`example_number` in the raw dtype; families override it (keys,
        lists, vectors) and encodings where they know better (vocabulary keys, boundaries)."""
        return self.as_raw(self.example_number(i, n))

    def example_number(self, i: int, n: int) -> float:
        """The number of the ``i``-th example: ``i + 1`` unless the encoding knows its range."""
        return float(i + 1)

    def as_raw(self, v) -> Any:
        """``v`` (a number or a key) in the feature's raw dtype; int64 floors numbers."""
        if self.feature.dtype == "int64":
            return int(v) if isinstance(v, str) else int(np.floor(v))
        if self.feature.dtype == "float32":
            return float(v)
        return str(v)


# ---- option and statistic checks shared by fit() methods -------------------------------------
def int_option(spec, params: Dict[str, Any], key: str, default: Optional[int] = None, low: int = 1,
               required: bool = False) -> Optional[int]:
    """``params[key]`` as an integer >= ``low`` (None when absent and not required)."""
    v = params.get(key, default)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise EncodeError(spec.name, f"encoding.{key} must be an integer >= {low}, got {v!r}")
    return v


def bool_option(spec, params: Dict[str, Any], key: str, default: Optional[bool] = None) -> Optional[bool]:
    """``params[key]`` as true / false (None when absent and no default)."""
    v = params.get(key, default)
    if v is not None and not isinstance(v, bool):
        raise EncodeError(spec.name, f"encoding.{key} must be true or false, got {v!r}")
    return v


def statistic(spec, stats: Optional[Dict[str, Any]], key: str):
    """The train statistic ``key``; fails naming it when the caller did not provide it."""
    if not stats or stats.get(key) is None:
        raise EncodeError(spec.name, f"needs the train statistic '{key}' (see analyzers_needed)")
    return stats[key]
