"""The serving graph: raw request features -> the Beam job's encodings -> the model -> probabilities.

:class:`ServingModule` is the ``tf.Module`` that ``serving.export`` saves. It has two
signatures, both returning one probability per task (``{task: [batch] float32}``):

* ``serving_default`` (:data:`RAW_SIGNATURE`) takes raw feature values as a request
  carries them, keyed by raw column (:func:`raw_inputs`): scalars ``[batch]``,
  behaviour sequences ``[batch, length]`` (any length: right-padded with the missing
  marker, the encoder keeps the last ``max_len`` real elements), dense vectors
  ``[batch, dim]``. Missing values are the markers of :mod:`features.encoders`:
  ``""`` for strings, NaN for floats, :data:`~features.encoders.INT_MISSING` for
  int64. The feature encoders (:func:`features.encoders.make_tf_encoder`, parity-tested
  against the Beam job's numpy encoder) run in the graph, so unknown categories map
  to OOV and missing optional values take the schema default exactly as in training.
  A required feature whose value is missing in any row fails the request with an
  assertion naming the feature and the rows, and so does a value the Beam job would
  quarantine (:func:`request_check`): an infinite float anywhere, NaN inside a
  dense vector that is not missing as a whole (a missing vector is all NaN), or NaN
  before a real element of a sequence (only trailing NaN is padding).
* ``encoded`` (:data:`ENCODED_SIGNATURE`) takes the already-encoded features keyed by
  feature name, ``[batch, width]`` in the schema's encoded dtype (what the TFRecords
  hold), for callers that run the Beam encoding themselves.

When the model reads a visual semantic ID that the data directory's encoder computes
(``visual_encoder/``, ``features/visual_ids_tf.py``), a third signature, ``visual_semantic_id``,
is that encoder: creative images -> the ID a request carries, so new ads get theirs without
retraining.

Both fill the model's side inputs (``features.schema.SIDE_INPUTS``: ``_source`` = 1 (ad),
``_group`` = -1 (unknown), ``_user`` = ``""`` / -1), which training reads from the data's
meta columns: clients never send them and the signatures' inputs do not include them.
A schema without a side column has no such input, in training and at serving alike.

Only what serving needs is saved: the model is called with ``training=False``, only
the task outputs of its ``{task: prob}`` dict are served (extra outputs are dropped),
and only the variables the two traced signatures read are tracked (discriminators,
auxiliary towers and other train-step-only weights are not exported). The encoders
are tracked, so vocabulary files are copied into the SavedModel's ``assets/`` and the
export works without the data directory.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from features.encoders import INT_MISSING, make_tf_encoder
from features.encodings import encoding_of
from features.schema import Feature, Schema, SchemaError, SideColumn
from features.visual_ids import SIGNATURE as VISUAL_SIGNATURE
from features.visual_ids_tf import served_encoder

RAW_SIGNATURE = "serving_default"
ENCODED_SIGNATURE = "encoded"
RAW_DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}
MISSING = {"string": "", "int64": int(INT_MISSING), "float32": math.nan}


@dataclasses.dataclass(frozen=True)
class RawInput:
    """One input of the raw signature: a raw column and the features encoded from it.

    shape: ``scalar`` ([batch]), ``list`` ([batch, any length], a behaviour sequence)
    or ``vector`` ([batch, width], a dense feature).
    """

    name: str
    dtype: str
    shape: str
    width: Optional[int]
    required: bool
    features: Tuple[str, ...]
    defaults: Tuple[Any, ...] = ()

    @property
    def missing(self):
        """The value that marks this input missing in a request."""
        return MISSING[self.dtype]

    def tensor_spec(self) -> tf.TensorSpec:
        dims = {"scalar": [None], "list": [None, None], "vector": [None, self.width]}[self.shape]
        return tf.TensorSpec(dims, RAW_DTYPES[self.dtype], name=self.name)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RawInput":
        d = dict(d)
        return cls(**{**d, "features": tuple(d["features"]), "defaults": tuple(d.get("defaults", ()))})


def _shape_of(f: Feature) -> Tuple[str, Optional[int]]:
    """(request shape, width of a vector) of a feature, as its encoding says (``request_shape``)."""
    shape = encoding_of(f).request_shape(f.encoding)
    return shape, f.width if shape == "vector" else None


def raw_inputs(schema: Schema) -> List[RawInput]:
    """The raw signature's inputs, one per raw column (features sharing a column share it)."""
    by_col: Dict[str, List[Feature]] = {}
    for f in schema.features:
        by_col.setdefault(f.raw_column, []).append(f)
    out = []
    for col, feats in by_col.items():
        shapes = {_shape_of(f) for f in feats}
        dtypes = {f.dtype for f in feats}
        if len(shapes) > 1 or len(dtypes) > 1:
            raise SchemaError(f"raw column '{col}' feeds features {[f.name for f in feats]} with different "
                              f"dtypes {sorted(dtypes)} or shapes {sorted(map(str, shapes))}: one request key "
                              "cannot carry both")
        (shape, width), = shapes
        if feats[0].dtype not in RAW_DTYPES:
            raise SchemaError(f"feature '{feats[0].name}': raw dtype '{feats[0].dtype}' not in {sorted(RAW_DTYPES)}")
        out.append(RawInput(name=col, dtype=feats[0].dtype, shape=shape, width=width,
                            required=any(f.required for f in feats), features=tuple(f.name for f in feats),
                            defaults=tuple(f.default for f in feats)))
    return out


def encoded_specs(schema: Schema) -> Dict[str, tf.TensorSpec]:
    """The encoded signature's inputs: {feature: TensorSpec([None, width], encoded dtype)}."""
    return {f.name: tf.TensorSpec([None, f.width], tf.int64 if f.is_integer else tf.float32, name=f.name)
            for f in schema.features}


def side_defaults(side: Sequence[Tuple[str, SideColumn]], batch: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The side inputs ``(key, SideColumn)`` at their serving values, ``[batch]`` each (module docstring)."""
    return {key: tf.fill([batch], tf.constant(c.default, RAW_DTYPES[c.dtype])) for key, c in side}


def missing_mask(x: tf.Tensor, dtype: str) -> tf.Tensor:
    """Per-row missing flags of a raw input: scalars [batch]; lists / vectors are missing
    when every element is the marker (or the row is empty)."""
    if dtype == "string":
        m = tf.equal(x, "")
    elif dtype == "float32":
        m = tf.math.is_nan(x)
    else:
        m = tf.equal(x, tf.constant(INT_MISSING, tf.int64))
    return tf.reduce_all(m, axis=1) if x.shape.rank == 2 else m


def bad_value_rows(x: tf.Tensor, r: RawInput) -> Dict[str, tf.Tensor]:
    """{what is wrong: per-row flags} of the float values of raw input ``r`` that the Beam job
    would quarantine but the missing markers cannot explain (see the module docstring)."""
    if r.dtype != "float32":
        return {}
    inf, nan = tf.math.is_inf(x), tf.math.is_nan(x)
    if r.shape == "scalar":
        return {"an infinite value": inf}
    out = {"an infinite value": tf.reduce_any(inf, axis=1)}
    if r.shape == "vector":
        out["NaN inside a dense vector (a missing vector is all NaN)"] = tf.logical_and(
            tf.reduce_any(nan, axis=1), tf.logical_not(tf.reduce_all(nan, axis=1)))
    else:
        # only trailing NaN <=> no NaN among the first (number of real elements) positions
        real = tf.reduce_sum(tf.cast(tf.logical_not(nan), tf.int32), axis=1, keepdims=True)
        out["NaN before a real element of a sequence (only trailing NaN is padding)"] = tf.reduce_any(
            tf.logical_and(nan, tf.range(tf.shape(x)[1]) < real), axis=1)
    return out


def _assert_no_rows(flags: tf.Tensor, message: str):
    """An assertion that no row is flagged; its error names ``message`` and the rows (no quotes
    in ``message``: TF escapes them when it prints the assertion's data)."""
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(flags)), [message, tf.where(flags)[:, 0]], summarize=20)


def request_check(raw: Mapping[str, tf.Tensor], inputs: Sequence[RawInput]) -> tf.Tensor:
    """One op asserting that a raw request is valid: equal batch sizes, required inputs present
    in every row, no value the Beam job would quarantine (:func:`bad_value_rows`).

    A valid request runs a few vectorised ops and one branch; only an invalid one runs the
    per-check assertions, in order (batch sizes first), so its error names the first failing
    check's input, feature(s) and rows."""
    names = [r.name for r in inputs]
    sizes = tf.stack([tf.shape(raw[n], out_type=tf.int64)[0] for n in names])
    problems = []  # (message, per-row flags)
    for r in inputs:
        feats = ", ".join(r.features)
        if r.required:
            problems.append((f"required feature {feats} has no value in the request (raw input {r.name}); rows:",
                             missing_mask(raw[r.name], r.dtype)))
        for what, flags in bad_value_rows(raw[r.name], r).items():
            problems.append((f"feature {feats} (raw input {r.name}) holds {what}, which the training data would "
                             "have quarantined; rows:", flags))
    bad = [tf.reduce_any(tf.not_equal(sizes, sizes[0]))] + [tf.reduce_any(f) for _, f in problems]
    valid = tf.logical_not(tf.reduce_any(tf.stack(bad)))

    def report():
        done = []
        for n, size in zip(names[1:], tf.unstack(sizes)[1:]):
            with tf.control_dependencies(done):
                done = [tf.debugging.assert_equal(size, sizes[0], message=f"raw input {n} has another batch size "
                                                                            f"than raw input {names[0]}")]
        for message, flags in problems:
            with tf.control_dependencies(done):
                done = [_assert_no_rows(flags, message)]
        with tf.control_dependencies(done):
            return tf.constant(False)

    return tf.cond(valid, lambda: tf.constant(True), report)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Plain (untracked) metadata of a :class:`ServingModule`."""

    tasks: Tuple[str, ...]
    inputs: Tuple[RawInput, ...]
    features: Tuple[Feature, ...]
    side: Tuple[Tuple[str, SideColumn], ...]  # the side inputs filled with their serving values


class ServingModule(tf.Module):
    """The exported object: feature encoders, the model's serving variables, two signatures.

    ``example`` (raw tensors keyed like the raw signature) is run eagerly once before
    tracing, so a model whose weights were restored lazily (``load_weights`` before it
    was built) creates and restores its variables outside the traced functions.
    """

    def __init__(self, model: tf.keras.Model, schema: Schema, tasks: Sequence[str], data_dir: str,
                 example: Mapping[str, tf.Tensor]):
        super().__init__(name="ctrflow_serving")
        self._plan = _Plan(tuple(tasks), tuple(raw_inputs(schema)), tuple(schema.features),
                           tuple(schema.side_columns().items()))
        self.encoders = {f.name: make_tf_encoder(f, data_dir) for f in schema.features}
        self._model_fn = lambda encoded: model(encoded, training=False)  # untracked: only read variables are kept
        self._predict_encoded(self._encode(dict(example)))  # builds (and restores) the model eagerly
        raw_spec = {r.name: r.tensor_spec() for r in self._plan.inputs}
        self.serve_raw = tf.function(self._serve_raw, input_signature=[raw_spec])
        self.serve_encoded = tf.function(self._predict_encoded, input_signature=[encoded_specs(schema)])
        concrete = [self.serve_raw.get_concrete_function(), self.serve_encoded.get_concrete_function()]
        seen, kept = set(), []
        for fn in concrete:
            for v in fn.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    kept.append(v)
        self.model_variables = kept
        visual = served_encoder(data_dir, [r.name for r in self._plan.inputs])
        self.visual_encoder, self.visual_manifest = visual if visual else (None, None)

    def signatures(self) -> Dict[str, Any]:
        """{signature name: concrete function} for ``tf.saved_model.save``: the two above, and
        ``visual_semantic_id`` when the data directory holds the encoder of a raw input."""
        out = {RAW_SIGNATURE: self.serve_raw.get_concrete_function(),
               ENCODED_SIGNATURE: self.serve_encoded.get_concrete_function()}
        if self.visual_encoder is not None:
            out[VISUAL_SIGNATURE] = self.visual_encoder.signatures[VISUAL_SIGNATURE]
        return out

    def _serve_raw(self, raw):
        return self._predict_encoded(self._encode(raw))

    def _encode(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Raw tensors -> encoded features, released when :func:`request_check` has passed.
        The encoders run alongside the check (they cannot fail, whatever the values): only
        the model waits for it."""
        check = request_check(raw, self._plan.inputs)
        by_name = {f.name: f for f in self._plan.features}
        encoded = {name: enc(raw[by_name[name].raw_column]) for name, enc in self.encoders.items()}
        with tf.control_dependencies([check]):
            return {name: tf.identity(x) for name, x in encoded.items()}

    def _predict_encoded(self, encoded):
        batch = tf.shape(next(iter(encoded.values())))[0]
        out = self._model_fn({**encoded, **side_defaults(self._plan.side, batch)})
        missing = [t for t in self._plan.tasks if t not in out]
        if missing:
            raise ValueError(f"the model's outputs {sorted(out)} lack the task(s) {missing}")
        return {t: tf.reshape(tf.cast(out[t], tf.float32), [-1]) for t in self._plan.tasks}


def signature_keys(fn) -> Dict[str, Tuple[str, tf.TensorSpec]]:
    """{request key: (Python keyword, TensorSpec)} of a loaded signature function.

    Request keys are the SignatureDef's input names (what TF Serving matches); calling
    the function in process needs the keyword TF derived from them (``a.b`` -> ``a_b``).
    """
    return {spec.name: (kw, spec) for kw, spec in fn.structured_input_signature[1].items()}

