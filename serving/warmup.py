"""Warm-up requests (``assets.extra/tf_serving_warmup_requests``) and example raw rows.

TF Serving replays the ``PredictionLog`` records of that TFRecord file when it loads a
version, before the version takes traffic, so the first real requests do not pay for
graph initialisation, table loading and kernel selection. One record per batch size
(default 1 and 64 candidates; TF Serving reads at most 1000 records).

:func:`example_rows` makes plausible raw rows from the schema and its vocabularies: each
encoding gives its own values (``Encoding.example`` in ``features/encodings/``): known
vocabulary keys (so warm-up touches the tables' real entries), bucket boundaries,
defaults, sequences of varying length. They also serve as the demo's example request.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from features.encodings import encoding_of
from features.schema import Schema
from serving.clients import RequestBuilder
from serving.signatures import raw_inputs

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF Serving ignores records past this


def example_rows(schema: Schema, data_dir: str, n: int = 1) -> List[Dict[str, Any]]:
    """``n`` raw rows (dicts keyed by raw column) with a value for every input: each raw
    column's first feature's encoding makes them (``Encoding.example``)."""
    encodings = {}
    for r in raw_inputs(schema):
        f = schema.feature(r.features[0])
        encodings[r.name] = encoding_of(f)(f, data_dir)
    return [{col: enc.example(i, n) for col, enc in encodings.items()} for i in range(n)]


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
