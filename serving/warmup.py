"""Warm-up requests (``assets.extra/tf_serving_warmup_requests``) and example raw rows.

TF Serving replays the ``PredictionLog`` records of that TFRecord file when it loads a
version, before the version takes traffic, so the first real requests do not pay for
graph initialisation, table loading and kernel selection. One record per batch size
(default 1 and 64 candidates; TF Serving reads at most 1000 records).

:func:`example_rows` makes plausible raw rows from the schema alone: known vocabulary
keys (so warm-up touches the tables' real entries), bucket boundaries, defaults,
sequences of varying length. They also serve as the demo's example request.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from features import bucketize, vocab
from features.schema import Feature, Schema
from serving.clients import RequestBuilder
from serving.signatures import raw_inputs

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF Serving ignores records past this


def _number(f: Feature, i: int, n: int) -> float:
    enc = f.encoding
    if f.default is not None:
        return float(f.default) if i % 2 == 0 else float(f.default) + i
    if enc["type"] == "bucketize":
        b = bucketize.resolve_boundaries(enc)
        b = b[np.isfinite(b)]
        return float(b[(i * len(b)) // max(n, 1)]) if len(b) else float(i)
    if enc["type"] == "identity" and enc.get("standardize"):
        return enc["mean"] + enc["std"] * (i / max(n, 1) - 0.5)
    return float(i + 1)


def _value(f: Feature, keys: List[str], i: int, n: int) -> Any:
    etype = f.encoding["type"]
    if etype in ("vocab", "sequence_vocab"):
        if etype == "sequence_vocab":
            length = (i + 3) % (f.width + 2)  # short, full, longer than max_len and empty
            return [_cast(f, keys[(i + j) % len(keys)] if keys else f"k{j}") for j in range(length)]
        return _cast(f, keys[i % len(keys)] if keys else f"{f.name}-{i}")
    if etype == "hash":
        return _cast(f, str(i) if f.dtype == "int64" else f"{f.name}-{i}")
    if etype == "sequence_float":
        return [_cast(f, float(1000 * i + j)) for j in range((i + 3) % (f.width + 2))]
    if etype == "dense":
        return [((i + j) % 7) / 7.0 - 0.5 for j in range(f.width)]
    return _cast(f, _number(f, i, n))


def _cast(f: Feature, v):
    if f.dtype == "int64":
        return int(v) if isinstance(v, str) else int(np.floor(v))
    if f.dtype == "float32":
        return float(v)
    return str(v)


def example_rows(schema: Schema, data_dir: str, n: int = 1) -> List[Dict[str, Any]]:
    """``n`` raw rows (dicts keyed by raw column) with a value for every input."""
    keys = {}
    for f in schema.features:
        vf = f.encoding.get("vocab_file")
        if vf:
            keys[f.name] = vocab.read_vocab(os.path.join(data_dir, vf))
    first = {r.name: schema.feature(r.features[0]) for r in raw_inputs(schema)}
    return [{col: _value(f, keys.get(f.name, []), i, n) for col, f in first.items()} for i in range(n)]


def warmup_requests(builder: RequestBuilder, rows: Sequence[Dict[str, Any]], model_name: str,
                    batch_sizes: Sequence[int] = (1, 64)) -> List[predict_pb2.PredictRequest]:
    """One PredictRequest per batch size, cycling through ``rows``."""
    if len(batch_sizes) > MAX_RECORDS:
        raise ValueError(f"TF Serving reads at most {MAX_RECORDS} warm-up records")
    return [builder.grpc_request([rows[i % len(rows)] for i in range(b)], model_name) for b in batch_sizes]


def write_warmup_requests(export_dir: str, requests: Sequence[predict_pb2.PredictRequest]) -> str:
    """Write the PredictionLog records TF Serving replays at load time."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as w:
        for req in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
            w.write(log.SerializeToString())
    return path


def read_warmup_requests(export_dir: str) -> List[predict_pb2.PredictRequest]:
    """The PredictRequests of an export's warm-up file."""
    out = []
    for rec in tf.data.TFRecordDataset(os.path.join(export_dir, WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog.FromString(rec.numpy())
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"warm-up record of type {log.WhichOneof('log_type')}, expected predict_log")
        out.append(log.predict_log.request)
    return out
