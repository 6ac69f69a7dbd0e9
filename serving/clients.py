"""TF Serving clients: raw feature dicts -> REST / gRPC Predict requests, and replies -> arrays.

:class:`RequestBuilder` turns rows (one dict of raw feature values per candidate, as
the Beam job would read them) into the raw signature's tensors, checked client-side:

* every key must be a raw input of the model (an unknown key fails naming it);
* values must fit the input's dtype (a string for a float feature, a non-integral
  float for an int64 one, a list for a scalar... fail naming the feature and row);
  integers (and integral floats) for a string feature become their decimal string,
  the key the Beam job uses for them;
* a missing optional value (absent key or None) becomes the missing marker
  (``""`` / NaN / ``INT_MISSING``) so the graph applies the schema default; a missing
  required value fails naming the feature;
* what the Beam job would quarantine fails naming the feature and row, as the raw
  signature would: a NaN or infinite number (or one beyond float32) given as a value
  (None is the way to say "missing"), an integer beyond int64;
* list elements are read as the Beam job reads them: None elements of a sequence are
  dropped, those of a dense vector are 0;
* behaviour sequences may be ragged: they are right-padded with the missing marker to
  the longest in the batch (TF Serving's ``instances`` format needs equal shapes; the
  graph drops the markers, so padding never changes a prediction).

``rest_body`` / ``rest_json`` give TF Serving's row format (``{"instances": [...]}``;
NaN travels as the ``NaN`` literal that TF Serving's JSON parser accepts),
``grpc_request`` a ``tensorflow.serving.PredictRequest``; ``parse_rest_response`` and
``parse_grpc_response`` turn replies into ``{output: np.ndarray}``.

:class:`LocalModelServer` is an in-process stand-in for ``tensorflow_model_server``'s
Predict path over one exported SavedModel: it decodes REST JSON and PredictRequests
the way the model server does (``tensorflow_serving/util/json_tensor.cc``: inputs
converted to the signature's dtype, each ``instances`` object must hold exactly the
signature's keys; ``tf.make_ndarray`` for TensorProtos), calls the signature and
encodes the reply. Tests, the warm-up check and the latency benchmark use it; no
Docker engine is needed.
"""
from __future__ import annotations

import base64
import itertools
import json
import math
import numbers
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from features.encoders import INT_MISSING
from features.errors import UserError
from features.schema import Schema
from serving.layout import read_export_metadata
from serving.signatures import RAW_SIGNATURE, RawInput, raw_inputs, signature_keys

_NP_DTYPES = {"string": object, "int64": np.int64, "float32": np.float32}
_INT64_MAX = np.iinfo(np.int64).max


class RequestError(UserError):
    """A request the model cannot take (a user's mistake: a ``ValueError`` like every
    ``UserError``); ``.feature`` names the feature / input at fault."""

    def __init__(self, feature: str, reason: str, rows: Optional[Sequence[int]] = None):
        self.feature, self.reason = feature, reason
        self.rows = None if rows is None else [int(r) for r in rows]
        where = "" if not self.rows else f" (rows {self.rows[:10]}{' ...' if len(self.rows) > 10 else ''})"
        super().__init__(f"feature '{feature}': {reason}{where}")


class ServingError(RuntimeError):
    """An error reply from the model server (or :class:`LocalModelServer`)."""


def _is_missing(v) -> bool:
    """None, or the int64 missing marker (NaN is a value, which the Beam job quarantines)."""
    if v is None:
        return True
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v == INT_MISSING


def _is_nan(v) -> bool:
    return isinstance(v, (float, np.floating)) and math.isnan(v)


def _scalar(inp: RawInput, v, row: int):
    """One raw value -> the value of the input's dtype (the missing marker for missing)."""
    if _is_missing(v):
        return inp.missing
    bad = isinstance(v, (bool, np.bool_))
    if not bad and inp.dtype == "string":
        if isinstance(v, str):
            return v
        if isinstance(v, bytes):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                return v
        if isinstance(v, numbers.Integral):
            return str(int(v))
        if isinstance(v, numbers.Real) and float(v).is_integer() and abs(v) < 2.0 ** 63:
            return str(int(v))
    elif not bad and inp.dtype == "int64":
        if isinstance(v, numbers.Integral) and -_INT64_MAX <= int(v) <= _INT64_MAX:
            return int(v)
        if isinstance(v, numbers.Real) and float(v).is_integer() and abs(v) < 2.0 ** 63:
            return int(v)
    elif not bad and inp.dtype == "float32" and isinstance(v, numbers.Real):
        return float(v)
    raise RequestError(_feature_label(inp), f"expected {inp.dtype} values, got {type(v).__name__} {v!r}", [row])


_PLAIN = {"string": (str,), "int64": (int,), "float32": (float, int)}


def _values(inp: RawInput, values, row: int) -> list:
    """:func:`_scalar` over values, with a fast path for values already of a plain
    Python type of the dtype (the marker values among them are markers already)."""
    plain = _PLAIN[inp.dtype]
    return [v if type(v) in plain else _scalar(inp, v, row) for v in values]


def _elements(inp: RawInput, v) -> list:
    """A list's elements as the Beam job reads them: None elements of a sequence dropped,
    those of a dense vector 0."""
    if inp.shape == "vector":
        return [0 if e is None else e for e in v]
    return [e for e in v if e is not None]


def _refuse_non_finite(inp: RawInput, values: list, out: np.ndarray) -> None:
    """Fail naming the rows whose values are NaN (given as a value, not None) or infinite
    (also: beyond float32), which the Beam job would quarantine and the graph refuses."""
    nan = [i for i, v in enumerate(values)
           if _is_nan(v) or (_is_list(v) and any(_is_nan(e) for e in v))]
    if nan:
        raise RequestError(_feature_label(inp), "NaN is not a value (None marks a missing value)", nan)
    inf = np.isinf(out)
    if inf.ndim == 2:
        inf = inf.any(axis=1)
    if inf.any():
        raise RequestError(_feature_label(inp), "an infinite value (or one beyond float32)", np.flatnonzero(inf))


def _marker_mask(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Where an array of the input's dtype holds the missing marker (numpy twin of
    :func:`serving.signatures.missing_mask`)."""
    if dtype == "string":
        return arr == ""
    if dtype == "float32":
        return np.isnan(arr)
    return arr == INT_MISSING


def _feature_label(inp: RawInput) -> str:
    """The name errors use: the feature, or the raw input when it feeds several features."""
    return inp.features[0] if len(inp.features) == 1 and inp.features[0] == inp.name else inp.name


def _is_list(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


class RequestBuilder:
    """Raw rows -> the raw signature's tensors / REST body / gRPC PredictRequest (see module docstring)."""

    def __init__(self, inputs: Sequence[RawInput], signature_name: str = RAW_SIGNATURE,
                 ignore_unknown: bool = False):
        self.inputs = list(inputs)
        self.by_name = {r.name: r for r in self.inputs}
        self.signature_name = signature_name
        self.ignore_unknown = ignore_unknown

    @classmethod
    def from_schema(cls, schema: Schema, **kw) -> "RequestBuilder":
        return cls(raw_inputs(schema), **kw)

    @classmethod
    def from_export(cls, export_dir: str, **kw) -> "RequestBuilder":
        """From the request contract an export writes to ``assets.extra/ctrflow_serving.json``."""
        meta = read_export_metadata(export_dir)
        return cls([RawInput.from_dict(d) for d in meta["raw_inputs"]], **kw)

    # ---- rows -> tensors ------------------------------------------------------------------
    def tensors(self, rows: Sequence[Mapping[str, Any]]) -> Dict[str, np.ndarray]:
        """Validated, filled and padded numpy arrays keyed by raw input (see module docstring)."""
        if isinstance(rows, Mapping):
            raise TypeError("rows must be a list of dicts (one per candidate), not one dict")
        rows = list(rows)
        if not rows:
            raise ValueError("a request needs at least one row")
        for i, row in enumerate(rows):
            unknown = [k for k in row if k not in self.by_name]
            if unknown and not self.ignore_unknown:
                raise RequestError(unknown[0], f"unknown feature (row {i}); the model takes: "
                                               f"{', '.join(sorted(self.by_name))}")
        return {inp.name: self._column(inp, [row.get(inp.name) for row in rows]) for inp in self.inputs}

    def _column(self, inp: RawInput, values: list) -> np.ndarray:
        dt = _NP_DTYPES[inp.dtype]
        try:
            with np.errstate(over="ignore"):  # float32 overflow -> inf, as the Beam job casts
                out = self._scalars(inp, values, dt) if inp.shape == "scalar" else self._lists(inp, values, dt)
        except OverflowError:  # an int beyond int64 took the fast path: find it and name it
            for i, v in enumerate(values):
                for e in (v if _is_list(v) else [v]):
                    _scalar(inp, e, i)
            raise
        if inp.dtype == "float32":
            _refuse_non_finite(inp, values, out)
        if inp.required:
            missing = _marker_mask(out, inp.dtype)
            if missing.ndim == 2:
                missing = missing.all(axis=1)
            if missing.any():
                raise RequestError(_feature_label(inp), "required value is missing", np.flatnonzero(missing))
        return out

    @staticmethod
    def _scalars(inp: RawInput, values: list, dt) -> np.ndarray:
        bad = [i for i, v in enumerate(values) if _is_list(v) or isinstance(v, dict)]
        if bad:
            raise RequestError(_feature_label(inp), "expected one value per row, got a list", bad)
        plain = _PLAIN[inp.dtype]
        return np.array([v if type(v) in plain else _scalar(inp, v, i) for i, v in enumerate(values)], dtype=dt)

    @staticmethod
    def _lists(inp: RawInput, values: list, dt) -> np.ndarray:
        bad = [i for i, v in enumerate(values) if not (_is_missing(v) or _is_list(v))]
        if bad:
            raise RequestError(_feature_label(inp), "expected a list of values per row", bad)
        lists = [[] if _is_missing(v) else _values(inp, _elements(inp, v), i) for i, v in enumerate(values)]
        if inp.shape == "vector":
            wrong = [i for i, (v, vals) in enumerate(zip(values, lists)) if not _is_missing(v) and len(vals) != inp.width]
            if wrong:
                raise RequestError(_feature_label(inp), f"dense lists must hold exactly {inp.width} values", wrong)
            width = inp.width
        else:
            width = max(1, max(len(vals) for vals in lists))
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        rows = np.repeat(np.arange(len(lists)), lengths)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out = np.full((len(lists), width), inp.missing, dtype=dt)
        out[rows, cols] = np.array(list(itertools.chain.from_iterable(lists)), dtype=dt)
        return out

    # ---- REST ---------------------------------------------------------------------------------
    def rest_body(self, rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """TF Serving's row format: ``{"signature_name": ..., "instances": [{input: value}, ...]}``."""
        cols = self.tensors(rows)
        n = len(next(iter(cols.values())))
        instances = [{k: _json_value(v[i]) for k, v in cols.items()} for i in range(n)]
        return {"signature_name": self.signature_name, "instances": instances}

    def rest_json(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """The POST body for ``/v1/models/<name>[/versions/<v>]:predict``."""
        return json.dumps(self.rest_body(rows), allow_nan=True)

    # ---- gRPC ---------------------------------------------------------------------------------
    def grpc_request(self, rows: Sequence[Mapping[str, Any]], model_name: str,
                     version: Optional[int] = None) -> predict_pb2.PredictRequest:
        """A PredictRequest for ``PredictionService.Predict`` (port 8500)."""
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model_name
        req.model_spec.signature_name = self.signature_name
        if version is not None:
            req.model_spec.version.value = int(version)
        for k, v in self.tensors(rows).items():
            req.inputs[k].CopyFrom(tf.make_tensor_proto(_proto_array(v, self.by_name[k].dtype)))
        return req


def _proto_array(v: np.ndarray, dtype: str) -> np.ndarray:
    if dtype != "string":
        return v
    flat = np.empty(v.size, dtype=object)
    flat[:] = [x.encode("utf-8") if isinstance(x, str) else x for x in v.ravel()]
    return flat.reshape(v.shape)


def _json_value(v):
    """One row of a column -> JSON: exact doubles for float32, ints, UTF-8 strings or
    ``{"b64": ...}`` for bytes that are not UTF-8; lists recurse."""
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(v).decode("ascii")}
    return v


# ---- replies ----------------------------------------------------------------------------------
def parse_rest_response(body: Union[str, bytes, Mapping[str, Any]], output_names: Sequence[str]) -> Dict[str, np.ndarray]:
    """A ``:predict`` reply -> {output: array}. ``output_names`` are the signature's outputs
    (the tasks): with one output TF Serving's row format gives bare values per row."""
    doc = json.loads(body) if isinstance(body, (str, bytes)) else body
    if "error" in doc:
        raise ServingError(doc["error"])
    names = list(output_names)
    if "predictions" in doc:
        preds = doc["predictions"]
        if len(names) == 1:
            return {names[0]: np.asarray(preds, dtype=np.float32)}
        return {n: np.asarray([p[n] for p in preds], dtype=np.float32) for n in names}
    if "outputs" in doc:
        outs = doc["outputs"]
        if len(names) == 1:
            return {names[0]: np.asarray(outs, dtype=np.float32)}
        return {n: np.asarray(outs[n], dtype=np.float32) for n in names}
    raise ServingError(f"reply has neither 'predictions' nor 'outputs': {str(doc)[:200]}")


def parse_grpc_response(response: predict_pb2.PredictResponse) -> Dict[str, np.ndarray]:
    """A PredictResponse -> {output: array}."""
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


# ---- an in-process stand-in for tensorflow_model_server ---------------------------------------
class LocalModelServer:
    """TF Serving's Predict path over one SavedModel, in process (see module docstring)."""

    def __init__(self, export_dir: str, model_name: str = "model", version: Optional[int] = None):
        self.export_dir, self.model_name, self.version = export_dir, model_name, version
        self.loaded = tf.saved_model.load(export_dir)
        self.signatures = dict(self.loaded.signatures)

    def _signature(self, name: str):
        name = name or RAW_SIGNATURE
        if name not in self.signatures:
            raise ServingError(f"Serving signature name: \"{name}\" not found in signature def "
                               f"(has: {sorted(self.signatures)})")
        return self.signatures[name]

    def input_dtypes(self, signature_name: str = RAW_SIGNATURE) -> Dict[str, tf.DType]:
        return {k: spec.dtype for k, (_, spec) in signature_keys(self._signature(signature_name)).items()}

    def output_names(self, signature_name: str = RAW_SIGNATURE) -> List[str]:
        return sorted(self._signature(signature_name).structured_outputs)

    def predict(self, inputs: Mapping[str, Any], signature_name: str = RAW_SIGNATURE) -> Dict[str, np.ndarray]:
        """Call a signature with arrays keyed by request key; inputs are checked against the
        signature's TensorSpecs first, so a wrong key, dtype or rank fails naming the input."""
        fn = self._signature(signature_name)
        keys = signature_keys(fn)
        unknown = sorted(set(inputs) - set(keys))
        if unknown:
            raise RequestError(unknown[0], f"input tensor alias not found in signature; inputs expected: "
                                           f"{sorted(keys)}")
        absent = sorted(set(keys) - set(inputs))
        if absent:
            raise RequestError(absent[0], f"missing input(s) {absent}")
        kwargs = {}
        for key, (kw, spec) in keys.items():
            x = inputs[key]
            t = x if isinstance(x, tf.Tensor) else tf.constant(x)
            if t.dtype != spec.dtype:
                raise RequestError(key, f"expects {spec.dtype.name} values but {t.dtype.name} is provided")
            if not spec.shape.is_compatible_with(t.shape):
                raise RequestError(key, f"expects shape {spec.shape} but got {t.shape}")
            kwargs[kw] = t
        try:
            out = fn(**kwargs)
        except tf.errors.InvalidArgumentError as exc:
            raise ServingError(exc.message) from None
        return {k: v.numpy() for k, v in out.items()}

    # ---- REST ---------------------------------------------------------------------------------
    def predict_rest(self, body: Union[str, bytes]) -> str:
        """A ``:predict`` JSON body -> the JSON reply (``{"error": ...}`` on a bad request)."""
        try:
            doc = json.loads(body)
            sig = doc.get("signature_name", RAW_SIGNATURE)
            dtypes = self.input_dtypes(sig)
            if "instances" in doc:
                inputs, row_format = _decode_instances(doc["instances"], dtypes), True
            elif "inputs" in doc:
                inputs, row_format = _decode_columns(doc["inputs"], dtypes), False
            else:
                raise ServingError("Missing 'inputs' or 'instances' key")
            outputs = self.predict(inputs, sig)
        except (ServingError, RequestError, ValueError) as exc:
            return json.dumps({"error": str(exc)})
        return _encode_reply(outputs, row_format)

    # ---- gRPC ---------------------------------------------------------------------------------
    def predict_grpc(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """A PredictRequest -> PredictResponse; a bad request raises :class:`ServingError`."""
        sig = request.model_spec.signature_name or RAW_SIGNATURE
        try:
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = self.predict(inputs, sig)
        except RequestError as exc:
            raise ServingError(str(exc)) from None
        resp = predict_pb2.PredictResponse()
        resp.model_spec.name = request.model_spec.name or self.model_name
        resp.model_spec.signature_name = sig
        if self.version is not None:
            resp.model_spec.version.value = int(self.version)
        for k, v in outputs.items():
            resp.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return resp


def _json_to(dtype: tf.DType, v, key: str):
    """One JSON leaf -> a value of the signature dtype, as the model server converts it."""
    if dtype == tf.string:
        if isinstance(v, str):
            return v.encode("utf-8")
        if isinstance(v, dict) and set(v) == {"b64"} and isinstance(v["b64"], str):
            return base64.b64decode(v["b64"])
    elif dtype == tf.int64:
        if isinstance(v, int) and not isinstance(v, bool) and -2 ** 63 <= v < 2 ** 63:
            return v
    elif dtype.is_floating:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            digits, top = (24, float(np.finfo(np.float32).max)) if dtype == tf.float32 else (53, math.inf)
            if (abs(v) > 2 ** digits - 1) if isinstance(v, int) else (math.isfinite(v) and abs(v) > top):
                raise ServingError(f"key: {key}: Cannot convert JSON value: {v} to {dtype.name} "
                                   "without loss of precision.")
            return v
    raise ServingError(f"key: {key}: JSON Value: {json.dumps(v)} Type: {type(v).__name__} "
                       f"is not of expected type: {dtype.name}")


def _json_array(value, dtype: tf.DType, key: str) -> np.ndarray:
    def leaves(v):
        if isinstance(v, list):
            return [leaves(x) for x in v]
        return _json_to(dtype, v, key)

    conv = leaves(value)
    np_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
    try:
        arr = np.array(conv, dtype=np_dtype)
    except ValueError:
        raise ServingError(f"key: {key}: lists of unequal sizes") from None
    if np_dtype is object and arr.dtype == object and any(isinstance(x, list) for x in arr.ravel()):
        raise ServingError(f"key: {key}: lists of unequal sizes")
    return arr


def _decode_instances(instances, dtypes: Mapping[str, tf.DType]) -> Dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise ServingError("'instances' must be a non-empty list")
    if not all(isinstance(x, dict) and set(x) != {"b64"} for x in instances):
        if len(dtypes) > 1:
            raise ServingError("instances is a plain list, but expecting list of objects as multiple "
                               "input tensors required as per tensorinfo_map")
        (key, dt), = dtypes.items()
        return {key: _json_array(instances, dt, key)}
    names = set(dtypes)
    per_key: Dict[str, list] = {k: [] for k in dtypes}
    for i, inst in enumerate(instances):
        for k, v in inst.items():
            if k not in dtypes:
                raise ServingError(f"Failed to process element: {i} key: {k} of 'instances' list. "
                                   f"Error: JSON object: does not have named input: {k}")
            per_key[k].append(_json_array(v, dtypes[k], k))
        if set(inst) != names:
            raise ServingError(f"Failed to process element: {i} of 'instances' list. keys must be equal to: "
                               f"{','.join(sorted(names))}")
    out = {}
    for k, arrs in per_key.items():
        if len({a.shape for a in arrs}) > 1:
            raise ServingError(f"key: {k}: Expecting shape {list(arrs[0].shape)} but got "
                               f"{[list(a.shape) for a in arrs if a.shape != arrs[0].shape][0]}")
        out[k] = np.stack(arrs)
    return out


def _decode_columns(inputs, dtypes: Mapping[str, tf.DType]) -> Dict[str, np.ndarray]:
    if not isinstance(inputs, dict):
        (key, dt), = dtypes.items()
        return {key: _json_array(inputs, dt, key)}
    missing = sorted(set(dtypes) - set(inputs))
    if missing:
        raise ServingError(f"Missing named input: {missing[0]} in 'inputs' object.")
    return {k: _json_array(inputs[k], dt, k) for k, dt in dtypes.items()}


def _reply_value(v):
    if isinstance(v, np.ndarray):
        return [_reply_value(x) for x in v]
    if isinstance(v, np.floating):
        return float(repr(v)) if np.isfinite(v) else float(v)  # shortest repr, as model_server writes it
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return v


def _encode_reply(outputs: Mapping[str, np.ndarray], row_format: bool) -> str:
    names = sorted(outputs)
    if row_format:
        n = len(outputs[names[0]])
        if len(names) == 1:
            preds = [_reply_value(outputs[names[0]][i]) for i in range(n)]
        else:
            preds = [{k: _reply_value(outputs[k][i]) for k in names} for i in range(n)]
        return json.dumps({"predictions": preds})
    if len(names) == 1:
        return json.dumps({"outputs": _reply_value(outputs[names[0]])})
    return json.dumps({"outputs": {k: _reply_value(outputs[k]) for k in names}})
