"""TF Serving's model-base layout: ``BASE/<model_name>/<version>/`` and ``models.config``.

TF Serving watches ``BASE/<model_name>`` and serves the numerically largest version
(``model_version_policy`` can keep several). Versions here are consecutive integers
(largest + 1); a version is written under a hidden staging directory and renamed in
place once complete, so the server never sees a half-written model. After an export
only the last ``keep`` versions stay on disk.

``models_config_text`` writes a ``ModelServerConfig`` text proto (the file passed as
``--model_config_file``) for any number of models, generated from the proto itself so
it always parses.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Dict, List, Mapping, Optional, Sequence

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

MODELS_CONFIG = "models.config"
POLICIES = ("latest", "all", "specific")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def check_model_name(name: str) -> str:
    """Model names become directory names and URL path segments."""
    if not _NAME.fullmatch(name or ""):
        raise ValueError(f"model name {name!r} may hold only letters, digits, '_', '.', '-'")
    return name


def list_versions(model_base: str) -> List[int]:
    """Complete versions under ``model_base`` (numeric directories with a saved_model.pb), ascending."""
    if not os.path.isdir(model_base):
        return []
    return sorted(int(d) for d in os.listdir(model_base)
                  if d.isdigit() and os.path.exists(os.path.join(model_base, d, "saved_model.pb")))


def next_version(model_base: str) -> int:
    """One more than every version directory present (complete or not), starting at 1."""
    taken = [int(d) for d in os.listdir(model_base) if d.isdigit()] if os.path.isdir(model_base) else []
    return max(taken, default=0) + 1


def staging_dir(model_base: str, version: int) -> str:
    """Where a version is written before :func:`publish` moves it into place."""
    return os.path.join(model_base, f".staging-{version}")


def publish(staging: str, model_base: str, version: int) -> str:
    """Atomically move a complete SavedModel into ``model_base/<version>``."""
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"version directory '{final}' already exists")
    os.rename(staging, final)
    return final


def prune_versions(model_base: str, keep: int) -> List[int]:
    """Delete all but the last ``keep`` complete versions; returns the deleted ones."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    old = list_versions(model_base)[:-keep]
    for v in old:
        shutil.rmtree(os.path.join(model_base, str(v)))
    return old


def models_config_text(models: Mapping[str, str], policy: str = "latest", num_versions: int = 1,
                       versions: Optional[Mapping[str, Sequence[int]]] = None,
                       labels: Optional[Mapping[str, Mapping[str, int]]] = None) -> str:
    """A ``ModelServerConfig`` text proto serving ``models`` ({name: base_path}).

    policy: ``latest`` (the ``num_versions`` newest), ``all``, or ``specific``
    (``versions[name]``). ``labels`` ({name: {"stable": 3, "canary": 4}}) adds version
    labels (they must name versions the policy serves).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r} not in {POLICIES}")
    cfg = model_server_config_pb2.ModelServerConfig()
    for name, base_path in models.items():
        c = cfg.model_config_list.config.add()
        c.name, c.base_path, c.model_platform = check_model_name(name), base_path, "tensorflow"
        if policy == "latest":
            c.model_version_policy.latest.num_versions = int(num_versions)
        elif policy == "all":
            c.model_version_policy.all.SetInParent()
        else:
            chosen = (versions or {}).get(name)
            if not chosen:
                raise ValueError(f"policy 'specific' needs versions['{name}']")
            c.model_version_policy.specific.versions.extend(int(v) for v in chosen)
        for label, v in ((labels or {}).get(name) or {}).items():
            c.version_labels[label] = int(v)
    return text_format.MessageToString(cfg)


def write_models_config(base: str, container_root: Optional[str] = "/models", **policy) -> str:
    """Write ``BASE/models.config`` for every model directory under ``base``.

    ``container_root`` is where ``base`` is mounted in the serving container
    (``docker run -v BASE:/models``); None writes the absolute host paths.
    """
    models: Dict[str, str] = {}
    for name in sorted(os.listdir(base)):
        if _NAME.fullmatch(name) and list_versions(os.path.join(base, name)):
            root = os.path.abspath(base) if container_root is None else container_root.rstrip("/")
            models[name] = f"{root}/{name}"
    path = os.path.join(base, MODELS_CONFIG)
    with open(path, "w") as fh:
        fh.write(models_config_text(models, **policy))
    return path


def parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
