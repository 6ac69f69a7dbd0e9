"""``ctrflow export``: a trained run -> a SavedModel version in TF Serving's layout.

    BASE/
      models.config                  ModelServerConfig for every model under BASE
      <model_name>/<version>/        one SavedModel per export (versions 1, 2, ...; the last N kept)
        saved_model.pb, variables/   signatures ``serving_default`` (raw features) and ``encoded``; with a
                                     visual semantic ID among the raw inputs, ``visual_semantic_id``
                                     (creative images -> the ID, the preprocess job's encoder)
        assets/                      the vocabulary files the in-graph encoders read
        assets.extra/
          tf_serving_warmup_requests PredictionLog records TF Serving replays at load time
          ctrflow_serving.json       the request contract: raw inputs, tasks, example row, provenance

The export reads the run's model and its data directory (vocabularies) through
``serving/run_artifacts.py``, builds :class:`serving.signatures.ServingModule` and saves
it; the SavedModel then needs neither the run nor the data directory.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any, Dict, Optional, Sequence

import tensorflow as tf

from features import outputs
from features.schema import Schema
from models.layers import mixed_precision
from serving import layout
from serving.clients import LocalModelServer, RequestBuilder, parse_rest_response
from serving.layout import read_export_metadata
from serving.run_artifacts import load_model, run_data_dir
from serving.signatures import ENCODED_SIGNATURE, RAW_SIGNATURE, ServingModule, raw_inputs
from serving.warmup import example_rows, warmup_requests, write_warmup_requests

METADATA_FILE = layout.METADATA_FILE
PRECISIONS = ("float32", "mixed_bfloat16")  # Keras policies a served model may be rebuilt in


def export_model(model: tf.keras.Model, schema: Schema, tasks: Sequence[str], data_dir: str,
                 export_dir: str, model_name: str = "model", warmup_batch_sizes: Sequence[int] = (1, 64),
                 metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Save ``model`` (built from ``schema``) with the raw-feature and encoded-feature signatures
    into ``export_dir`` (which must not exist), with warm-up requests and the request contract."""
    if os.path.exists(export_dir):
        raise FileExistsError(f"export directory '{export_dir}' already exists")
    inputs = raw_inputs(schema)
    builder = RequestBuilder(inputs)
    rows = example_rows(schema, data_dir, n=16)
    example = {k: tf.constant(v) for k, v in builder.tensors(rows[:2]).items()}
    module = ServingModule(model, schema, tasks, data_dir, example)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    warm = write_warmup_requests(export_dir, warmup_requests(builder, rows, model_name, warmup_batch_sizes))
    signatures = {RAW_SIGNATURE: {"inputs": [r.name for r in inputs], "outputs": list(tasks)},
                  ENCODED_SIGNATURE: {"inputs": sorted(schema.feature_names),
                                      "outputs": list(tasks)}}
    if module.visual_manifest:  # a new creative's visual semantic ID, from the preprocess job's encoder
        m = module.visual_manifest
        signatures[m["signature"]] = {"inputs": [m["input"]], "outputs": [m["column"]],
                                      "image_shape": [int(d) for d in m["image_shape"]], "dtype": "uint8"}
    meta = {"model_name": model_name, "tasks": list(tasks), "raw_inputs": [r.to_dict() for r in inputs],
            "signatures": sorted(signatures), "example_row": rows[0],
            "model_schema_fingerprint": schema.fingerprint(),
            "exported": datetime.datetime.now().isoformat(timespec="seconds"),
            "tensorflow": tf.__version__, "num_variables": len(module.model_variables), **(metadata or {})}
    with open(os.path.join(export_dir, METADATA_FILE), "w") as fh:
        json.dump(meta, fh, indent=2, default=str)
    return {"export_dir": export_dir, "model_name": model_name, "tasks": list(tasks),
            "signatures": signatures, "warmup_requests": warm}


def export_run(run_dir: str, base: str, keep: int = 3, model_name: Optional[str] = None,
               warmup_batch_sizes: Sequence[int] = (1, 64), overwrite: bool = False,
               precision: str = "float32", placement: str = "hidden") -> Dict[str, Any]:
    """Export a completed run as the next version of ``BASE/<model_name>`` (default: the run
    directory's name), keep its last ``keep`` exported versions and add the model to
    ``BASE/models.config`` (merged: what a user set there is kept).

    ``precision`` is the Keras policy the served model is rebuilt in (:data:`PRECISIONS`):
    ``mixed_bfloat16`` computes the MLP hidden layers after the first in bfloat16 (more with
    ``placement``, ``models.layers.PLACEMENTS``), as in training (``models/layers.py``), from
    the same float32 weights; outputs stay float32.
    Worth it only on CPUs with bfloat16 units (AVX512-BF16, AMX): elsewhere it is emulated
    (``docs/benchmarks.md``, Serving latency, for speed and the difference to float32).

    ``BASE/<model_name>`` must be export's own folder (``features.outputs`` marker) or new;
    someone else's is refused unless ``overwrite`` (it is then adopted: nothing in it is
    deleted but versions export wrote)."""
    run_dir = os.path.abspath(run_dir)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    with mixed_precision(precision, placement):  # layers take their compute dtype when built
        model, schema, tasks = load_model(run_dir)
    data_dir = run_data_dir(run_dir)
    name = layout.check_model_name(model_name or re.sub(r"[^A-Za-z0-9_.\-]", "_", os.path.basename(run_dir)))
    base = os.path.abspath(os.path.expanduser(base))
    if not os.path.exists(base):
        outputs.open_output(base, "export")
    model_base = os.path.join(base, name)
    outputs.open_output(model_base, "export", inputs=[run_dir, data_dir], overwrite=overwrite)
    version = layout.next_version(model_base)
    staging = layout.staging_dir(model_base, version)
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted export
    try:
        info = export_model(model, schema, tasks, data_dir, staging, model_name=name,
                            warmup_batch_sizes=warmup_batch_sizes,
                            metadata={"run_dir": run_dir, "data_dir": os.path.abspath(data_dir), "version": version,
                                      "precision": precision})
        export_dir = layout.publish(staging, model_base, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    removed = layout.prune_versions(model_base, keep)
    config, warning = layout.merge_models_config(base, name)
    if warning:
        print(f"ctrflow export: warning: {warning}", file=sys.stderr, flush=True)
    info.update(export_dir=export_dir, version=version, base=base, model_base=model_base,
                versions=layout.list_versions(model_base), removed_versions=removed, models_config=config,
                warnings=[warning] if warning else [],
                warmup_requests=os.path.join(export_dir, os.path.relpath(info["warmup_requests"], staging)),
                run_dir=run_dir)
    return info


def saved_model_cli() -> str:
    """The ``saved_model_cli`` next to the running Python (the venv's bin)."""
    path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    found = path if os.path.exists(path) else shutil.which("saved_model_cli")
    if not found:
        raise FileNotFoundError(f"saved_model_cli not found beside {sys.executable} nor on PATH")
    return found


def describe_export(info: Dict[str, Any]) -> str:
    """``saved_model_cli show --all`` of an export and one prediction from raw features
    (the export's example row sent as a REST body through :class:`LocalModelServer`)."""
    export_dir = info["export_dir"]
    cmd = [saved_model_cli(), "show", "--dir", export_dir, "--all"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    meta = read_export_metadata(export_dir)
    body = RequestBuilder.from_export(export_dir).rest_json([meta["example_row"]])
    server = LocalModelServer(export_dir, model_name=meta["model_name"], version=meta.get("version"))
    reply = server.predict_rest(body)
    probs = parse_rest_response(reply, meta["tasks"])
    url = f"http://localhost:8501/v1/models/{meta['model_name']}:predict"
    lines = [f"$ saved_model_cli show --dir {export_dir} --all", res.stdout.rstrip(), "",
             f"one prediction from raw features (the REST body for POST {url}):", body, "reply: " + reply.strip(),
             "probabilities: " + ", ".join(f"{t}={float(p[0]):.6f}" for t, p in probs.items())]
    return "\n".join(lines)
