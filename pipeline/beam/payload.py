"""The job's payload: the schema, vocabulary files and head users every encoder needs.

Built once from the train statistics (:func:`build_payload`), or read as they are from an
earlier output with ``schema_from`` (:func:`frozen_payload`, checked against the config by
:func:`check_frozen`). The payload is pure data (the schema as a dict, the vocabulary files'
text, the head users' keys), so the step that builds it can run or re-run on any worker; the
files are written by :func:`pipeline.beam.storage.write_schema`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, List

import numpy as np

from features import encoders as E
from features.schema import Feature, Schema
from pipeline.beam.plan import JobPlan
from pipeline.beam.statistics import TrainStats
from pipeline.beam.storage import HEAD_USERS
from pipeline.beam.validation import SOURCE, USER_GROUP, USER_KEY
from pipeline.config import ConfigError
from pipeline.preprocess_config import PreprocessConfig
from pipeline.user_groups import head_users


def build_payload(stats: TrainStats, plan: JobPlan) -> Dict[str, Any]:
    """Train statistics -> Features (vocabularies built in a private temp dir) + head users.

    Pure: returns the schema, the vocabulary files' text and the head-user keys, so the
    step can run (or re-run) on any worker; files are written by a separate step.
    """
    cfg = plan.config
    if stats.rows == 0:
        raise ValueError("the train split has no valid rows: nothing to build vocabularies and "
                         "statistics from (check the split and the quarantine counts)")
    tmp = tempfile.mkdtemp(prefix="ctrflow-build-")
    try:
        built: Dict[str, Feature] = {}
        summary: Dict[str, Any] = {}
        for spec in E.sort_for_build(plan.specs):
            need = plan.needs[spec.name]
            st: Dict[str, Any] = {}
            if "counts" in need:
                st["counts"] = stats.count_dict(spec.name)
            if "quantiles" in need:
                st["quantiles"] = stats.sample(spec.name)
            if "moments" in need:
                st["moments"] = stats.merged_moments(spec.name)
            built[spec.name] = E.build_feature(spec, st, tmp)
            summary[spec.name] = _feature_summary(st, built[spec.name])
        vocab = {}
        for root, _, files in os.walk(tmp):
            for name in files:
                path = os.path.join(root, name)
                with open(path, encoding="utf-8", newline="") as fh:
                    vocab[os.path.relpath(path, tmp)] = fh.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    users = stats.user_counts()
    head = head_users(users, cfg.head_user_fraction) if cfg.user_column else np.zeros(0, np.int64)
    schema = make_schema(cfg, [built[s.name] for s in plan.specs], plan, len(users), len(head))
    return {"schema": schema.to_dict(), "vocab": vocab, "head_users": head,
            "features": summary, "train_rows": stats.rows,
            "users": {"train_users": len(users), "head_users": len(head),
                      "head_user_fraction": cfg.head_user_fraction,
                      "head_min_rows": int(users.loc[head].min()) if len(head) else 0}}


def _feature_summary(st: Dict[str, Any], feature: Feature) -> Dict[str, Any]:
    out: Dict[str, Any] = {"num_ids": feature.num_ids, "width": feature.width}
    if "counts" in st:
        out["distinct_train_values"] = len(st["counts"])
    if "quantiles" in st:
        q = st["quantiles"]
        out["sample_size"] = int(len(q))
        if len(q):
            out["min"], out["median"], out["max"] = float(q[0]), float(np.median(q)), float(q[-1])
    if "moments" in st:
        out["moments"] = st["moments"]
    return out


def frozen_payload(plan: JobPlan) -> Dict[str, Any]:
    """The payload of the earlier output ``schema_from``: its schema, vocabulary files and head
    users as they are, so new data is encoded exactly as that data was (same ids, boundaries,
    MNSE digits, moments, head set; same schema fingerprint) and no statistics are computed."""
    src = plan.config.schema_from
    schema_path = os.path.join(src, "schema.json")
    schema = Schema.from_json(_read_text(schema_path, "schema_from"))
    check_frozen(plan, schema)
    vocab = {f.encoding["vocab_file"]: _read_text(os.path.join(src, f.encoding["vocab_file"]), "schema_from")
             for f in schema.features if "vocab_file" in f.encoding}
    head = np.zeros(0, np.int64)
    if schema.group_column:
        head = np.array(_read_text(os.path.join(src, HEAD_USERS), "schema_from").split(), dtype=np.int64)
    as_built = dict(schema.to_dict(), meta=meta_columns(plan))  # schema.json sorts meta; Examples
    # list it in config order, as in the run that built the schema (check_frozen: the same columns)
    return {"schema": as_built, "vocab": vocab, "head_users": head, "train_rows": None,
            "features": {f.name: {"num_ids": f.num_ids, "width": f.width} for f in schema.features},
            "users": {"train_users": schema.extra.get("train_users"), "head_users": len(head),
                      "head_user_fraction": schema.extra.get("head_user_fraction"), "from": src}}


def _read_text(path: str, option: str) -> str:
    """A UTF-8 file read through Beam's FileSystems; a missing one is the user's error naming ``option``."""
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        raise ConfigError(f"{option}: '{path}' does not exist; expected the output folder of an earlier "
                          f"`ctrflow preprocess` (schema.json, vocab/, {HEAD_USERS})")
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return fh.read().decode("utf-8")


_SPEC_FIELDS = ("kind", "dtype", "role", "required", "default", "source")


def check_frozen(plan: JobPlan, schema: Schema) -> None:
    """The config must describe the data the frozen schema was built for: the same features
    (names, order, kind / dtype / role / required / default / source, encoding options the
    schema records), labels, meta columns and split names. Raises ConfigError naming the first
    difference."""
    src, cfg = plan.config.schema_from, plan.config
    where = f"schema_from '{src}'"
    names = [s.name for s in plan.specs]
    if names != schema.feature_names:
        missing = [n for n in schema.feature_names if n not in names]
        extra = [n for n in names if n not in schema.feature_names]
        raise ConfigError(f"{where}: the config's features differ from the schema's: missing {missing}, "
                          f"not in the schema {extra}" + ("" if missing or extra else ", in another order"))
    for spec, feature in zip(plan.specs, schema.features):
        old = {k: getattr(feature, k) for k in _SPEC_FIELDS}
        old.update({f"encoding.{k}": feature.encoding[k] for k in spec.encoding if k in feature.encoding})
        new = {k: getattr(spec, k) for k in _SPEC_FIELDS}
        new.update({f"encoding.{k}": v for k, v in spec.encoding.items() if k in feature.encoding})
        for key in old:
            if old[key] != new[key]:
                raise ConfigError(f"{where}: feature '{spec.name}': {key} is {new[key]!r} in the config but "
                                  f"{old[key]!r} in the schema; a frozen schema encodes the features it was built with")
    for what, new, old in (("labels", list(cfg.labels), schema.labels),
                           ("meta columns", meta_columns(plan), schema.meta),
                           ("split names", plan.splits, schema.extra.get("splits"))):
        if new != old:
            raise ConfigError(f"{where}: the config's {what} {new} differ from the schema's {old}")


def meta_columns(plan: JobPlan) -> Dict[str, str]:
    """Meta column name -> stored dtype (string extra meta is stored as int64 hashes), then the
    columns the transforms add."""
    cfg = plan.config
    meta: Dict[str, str] = {}
    if cfg.user_column:
        meta[USER_KEY] = "int64"
        meta[USER_GROUP] = "int64"
    if cfg.source_column:
        meta[SOURCE] = "int64"
    for w in cfg.weight_columns:
        meta[w] = "float32"
    for name, dtype in cfg.extra_meta.items():
        meta[name] = "float32" if dtype == "float32" else "int64"
    for name, column in plan.added_columns().items():
        meta[name] = column.dtype
    return meta


def make_schema(cfg: PreprocessConfig, features: List[Feature], plan: JobPlan, n_users: int,
                n_head: int) -> Schema:
    return Schema(
        features=features, labels=list(cfg.labels), meta=meta_columns(plan),
        user_column=USER_KEY if cfg.user_column else None,
        group_column=USER_GROUP if cfg.user_column else None,
        source_column=SOURCE if cfg.source_column else None,
        weight_columns=list(cfg.weight_columns) + [n for n, c in plan.added_columns().items() if c.weight],
        vocab_dir="vocab",
        extra={"splits": plan.splits, "num_shards": cfg.num_shards, "compression": "GZIP",
               "file_pattern": "part-*-of-*.tfrecord.gz", "label_dtype": "float32",
               "raw_user_column": cfg.user_column, "raw_source_column": cfg.source_column,
               "hashed_meta": [n for n, d in cfg.extra_meta.items() if d == "string"],
               "head_user_fraction": cfg.head_user_fraction, "train_users": n_users, "head_users": n_head,
               "split_method": cfg.split.method})
