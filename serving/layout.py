"""TF Serving's model-base layout: ``BASE/<model_name>/<version>/`` and ``models.config``.

TF Serving watches ``BASE/<model_name>`` and serves the numerically largest version
(``model_version_policy`` can keep several). Versions here are consecutive integers
(largest + 1); a version is written under a hidden staging directory and renamed in
place once complete, so the server never sees a half-written model. After an export
only the last ``keep`` versions that export wrote (they hold :data:`METADATA_FILE`) stay
on disk; a version folder put there by hand is never removed.

``models_config_text`` writes a ``ModelServerConfig`` text proto (the file passed as
``--model_config_file``) for any number of models, generated from the proto itself so
it always parses. :func:`merge_models_config` adds one model's entry to ``BASE/models.config``
and keeps everything else in it (other models, version policies, labels a user set).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from features import outputs

MODELS_CONFIG = "models.config"
METADATA_FILE = os.path.join("assets.extra", "ctrflow_serving.json")  # written into every exported version
POLICIES = ("latest", "all", "specific")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def check_model_name(name: str) -> str:
    """Model names become directory names and URL path segments."""
    if not _NAME.fullmatch(name or ""):
        raise ValueError(f"model name {name!r} may hold only letters, digits, '_', '.', '-'")
    return name


def read_export_metadata(export_dir: str) -> Dict[str, Any]:
    """An exported version's request contract (:data:`METADATA_FILE`: raw inputs, tasks,
    example row, provenance), which export writes and request clients read."""
    path = os.path.join(export_dir, METADATA_FILE)
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"'{export_dir}' is not a ctrflow export (no {METADATA_FILE})") from None


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


def exported_versions(model_base: str) -> List[int]:
    """Complete versions that ``ctrflow export`` wrote (they hold :data:`METADATA_FILE`), ascending."""
    return [v for v in list_versions(model_base)
            if os.path.exists(os.path.join(model_base, str(v), METADATA_FILE))]


def prune_versions(model_base: str, keep: int) -> List[int]:
    """Delete all but the last ``keep`` versions export wrote; returns the deleted ones.
    Version folders without export's metadata (put there by hand) are never touched."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    old = exported_versions(model_base)[:-keep]
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


def merge_models_config(base: str, name: str, container_root: Optional[str] = "/models") -> Tuple[str, Optional[str]]:
    """Add model ``name`` (served from ``BASE/<name>``) to ``BASE/models.config``, keeping every
    other entry and field of the existing file; an existing entry for ``name`` is left as the
    user wrote it. Returns (path written, warning or None). A file that does not parse is left
    alone: the merged config goes to ``models.config.new`` beside it, and the warning says so.

    ``container_root`` is where ``base`` is mounted in the serving container
    (``docker run -v BASE:/models``); None writes the absolute host path.
    """
    path = os.path.join(base, MODELS_CONFIG)
    cfg, warning = model_server_config_pb2.ModelServerConfig(), None
    if os.path.exists(path):
        try:
            with open(path) as fh:
                cfg = parse_models_config(fh.read())
        except (text_format.ParseError, UnicodeDecodeError) as exc:
            cfg = model_server_config_pb2.ModelServerConfig()
            path = path + ".new"
            warning = (f"'{os.path.join(base, MODELS_CONFIG)}' is not a ModelServerConfig text proto ({exc}); it "
                       f"was left unchanged and the entry for model '{name}' was written to '{path}' instead")
    if name not in [c.name for c in cfg.model_config_list.config]:
        root = os.path.abspath(base) if container_root is None else container_root.rstrip("/")
        entry = parse_models_config(models_config_text({name: f"{root}/{name}"})).model_config_list.config[0]
        cfg.model_config_list.config.append(entry)
    outputs.write_file_atomic(path, text_format.MessageToString(cfg))
    return path, warning


def parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
