"""A training run's directory: its layout, and reading a completed run's model and data.

    <runs_dir>/<run_name>/
        config.yaml      the resolved training config
        run.json         schema fingerprint, git commit, versions, start time, data directory, machines
        model.json       what rebuilds the model: schema subset, tasks, model config
        weights/         the final (best) weights, TF checkpoint format
        checkpoints/     best-so-far weights during training
        backup/          the latest epoch's model, optimizer, history and callback state:
                         a killed run resumes from here exactly (pipeline/runs.py, write_backup)
        tensorboard/     TensorBoard logs
        history.csv      per-epoch training log (every epoch once, also after a resume)
        done.json        written last: the run completed
        workers/<task>/  logs of the non-chief workers of a multi-worker run
        metrics.json, report.md, *.png   from ``ctrflow evaluate``

``pipeline/runs.py`` writes it (``ctrflow train``); ``ctrflow export`` and ``ctrflow
evaluate`` read it here. It lives in ``serving/`` because export may not import
``pipeline/`` and ``models/`` does no file I/O.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Tuple

import tensorflow as tf
import yaml

from features.errors import UserError
from features.schema import Schema, SchemaError
from models.factory import build_model

CONFIG = "config.yaml"
RUN_INFO = "run.json"
MODEL_SPEC = "model.json"
WEIGHTS = os.path.join("weights", "model")
DONE = "done.json"


class RunError(UserError):
    """A run directory that is not a completed run, or lacks what is read from it."""


def model_spec(run_dir: str) -> Dict[str, Any]:
    """What rebuilds a completed run's model (``model.json``: schema subset, tasks, model config)."""
    if not os.path.exists(os.path.join(run_dir, DONE)):
        raise RunError(f"'{run_dir}' is not a completed run (no {DONE}): train it first")
    with open(os.path.join(run_dir, MODEL_SPEC)) as fh:
        return json.load(fh)


def load_model(run_dir: str) -> Tuple[tf.keras.Model, Schema, List[str]]:
    """Rebuild the trained model of a completed run; returns (model, the schema it was built
    from (parsed; the model holds it as a dict for Keras), the tasks it serves: those that
    evaluation scores and export serves, every trained task unless its framework serves fewer,
    as STEM-AL serves its main task)."""
    spec = model_spec(run_dir)
    schema = Schema.from_dict(spec["schema"])
    # the model gets its own copy: Keras wraps the containers of the dict a layer holds in tracking proxies
    model = build_model(schema.to_dict(), spec["tasks"], **spec["model"])
    model.load_weights(os.path.join(run_dir, WEIGHTS)).expect_partial()
    return model, schema, model.served


def run_info(run_dir: str) -> Dict[str, Any]:
    """The run's ``run.json`` (schema fingerprint, data directory, ...); {} for runs without one."""
    path = os.path.join(run_dir, RUN_INFO)
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def run_data_dir(run_dir: str) -> str:
    """The run's data directory (schema.json + vocabularies), checked against the schema
    fingerprint recorded at training time so a model is never paired with vocabularies
    it was not trained on. From ``run.json``, else the ``data_dir`` of ``config.yaml``."""
    info = run_info(run_dir)
    data_dir = info.get("data_dir")
    if not data_dir or not os.path.exists(os.path.join(data_dir, "schema.json")):
        data_dir = _configured_data_dir(run_dir)
    schema = Schema.load(data_dir)
    want = info.get("schema_fingerprint")
    if want and schema.fingerprint() != want:
        raise SchemaError(f"the schema in '{data_dir}' (fingerprint {schema.fingerprint()}) is not the one run "
                          f"'{run_dir}' was trained on ({want}): its vocabularies would not match the model")
    return data_dir


def _configured_data_dir(run_dir: str) -> str:
    """``data_dir`` as the run's ``config.yaml`` names it."""
    path = os.path.join(run_dir, CONFIG)
    try:
        with open(path) as fh:
            config = yaml.safe_load(fh)
    except FileNotFoundError:
        raise RunError(f"'{run_dir}' has neither {RUN_INFO} nor {CONFIG}: not a run directory") from None
    data_dir = config.get("data_dir") if isinstance(config, dict) else None
    if not isinstance(data_dir, str) or not data_dir:
        raise RunError(f"{path}: data_dir = {data_dir!r}: expected the path of the run's data directory")
    return data_dir
