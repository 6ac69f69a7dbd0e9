"""Storage and commit: shard, quarantine, schema and manifest files, and the atomic output.

Every file goes through Beam's FileSystems (local paths, gs://, s3://, ...). Encoded units'
gzip members wait in part files under ``_parts/`` until the shard writers concatenate them
(:class:`WriteShard`); each split's quarantined rows become ``quarantine/<split>.jsonl``
(:class:`WriteQuarantine`); ``_manifest.json`` collects what every writer wrote. The job
writes under a marked temp folder (:func:`temp_output`) that :func:`commit` swaps in
(``features.outputs``: two renames locally; object stores: delete, then move file by file,
stats.json last).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np

from features import outputs
from features.schema import Schema
from pipeline.beam.splits import split_name
from pipeline.beam.wire import tf_readable_members

MANIFEST = "_manifest.json"
PARTS_DIR = "_parts"  # encoded units' gzip members, until the shard writers concatenate them
HEAD_USERS = "head_users.txt"  # the head users' user_key values, one per line, ascending


def shard_path(root: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(root, split, f"part-{shard:05d}-of-{num_shards:05d}.tfrecord.gz")


def create_file(path: str):
    """A new binary file at ``path`` through Beam's FileSystems (local, gs://, ...)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def write_bytes(path: str, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` as they are to ``path`` through Beam's FileSystems (local, gs://, ...)."""
    from apache_beam.io.filesystems import FileSystems

    parent = os.path.dirname(path)
    if not FileSystems.exists(parent):
        try:
            FileSystems.mkdirs(parent)
        except OSError:  # writers of the same split run at once: one of them made it first
            if not FileSystems.exists(parent):
                raise
    size = 0
    with create_file(path) as fh:
        for c in chunks:
            fh.write(c)
            size += len(c)
    return size


def _read_ranges(refs: Iterable[Tuple[str, int, int]]) -> Iterable[bytes]:
    """The bytes of (file, offset, size) references in order, keeping one file open at a time."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    fh, current = None, None
    try:
        for path, offset, size in refs:
            if path != current:
                if fh is not None:
                    fh.close()
                fh, current = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED), path
            fh.seek(offset)
            yield fh.read(size)
    finally:
        if fh is not None:
            fh.close()


class WriteShard:
    """(split * num_shards + shard, [(chunk key, rows, (part file, offset, size))]) -> one shard
    file whose gzip members are concatenated in chunk-key order (so the bytes do not depend on
    the runner), each readable to TensorFlow's end (``wire.tf_readable_members``)."""

    def __init__(self, root: str, splits: List[str], num_shards: int):
        self.root, self.splits, self.num_shards = root, splits, num_shards

    def __call__(self, item) -> tuple:
        group, parts = item
        parts = sorted((p for p in parts if p is not None), key=lambda p: p[0])
        split, shard = self.splits[group // self.num_shards], group % self.num_shards
        path = shard_path(self.root, split, shard, self.num_shards)
        size = write_bytes(path, tf_readable_members(_read_ranges(ref for _, _, ref in parts)))
        return ("shard_done", {"split": split, "shard": shard, "rows": sum(p[1] for p in parts),
                               "bytes": size, "file": os.path.relpath(path, self.root)})


class WriteQuarantine:
    """(split code, [(chunk key, JSON lines)]) -> ``quarantine/<split>.jsonl`` in (file, row) order."""

    def __init__(self, root: str, splits: List[str]):
        self.root, self.splits = root, splits

    def __call__(self, item) -> tuple:
        code, parts = item
        name = split_name(self.splits, code)
        lines = [ln for _, part in sorted(parts, key=lambda p: p[0]) for ln in part]
        path = os.path.join(self.root, "quarantine", f"{name}.jsonl")
        write_bytes(path, [("\n".join(lines) + "\n").encode("utf-8")])
        return ("quarantine_done", {"split": name, "rows": len(lines), "file": os.path.relpath(path, self.root)})


def write_schema(payload, root: str) -> tuple:
    for rel, text in payload["vocab"].items():
        write_bytes(os.path.join(root, rel), [text.encode("utf-8")])
    schema = Schema.from_dict(payload["schema"])
    if schema.group_column:  # what a later frozen-schema run (schema_from) labels head users with
        write_bytes(os.path.join(root, HEAD_USERS), ["".join(f"{k}\n" for k in np.sort(payload["head_users"])).encode()])
    write_bytes(os.path.join(root, "schema.json"), [schema.to_json().encode()])
    return ("schema_done", {"fingerprint": schema.fingerprint(), "features": payload["features"],
                            "users": payload["users"], "train_rows": payload["train_rows"]})


def write_manifest(items: List[tuple], root: str) -> None:
    manifest: Dict[str, Any] = {"shards": [], "quarantine": []}
    for kind, value in items:
        if kind == "shard_done":
            manifest["shards"].append(value)
        elif kind == "quarantine_done":
            manifest["quarantine"].append(value)
        elif kind == "accounting":
            manifest["accounting"] = value
        elif kind == "schema_done":
            manifest["schema"] = value
    manifest["shards"].sort(key=lambda d: (d["split"], d["shard"]))
    manifest["quarantine"].sort(key=lambda d: d["split"])
    write_bytes(os.path.join(root, MANIFEST), [json.dumps(manifest, default=_json_default).encode()])


def write_pickle(value, path: str) -> None:
    write_bytes(path, [pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)])


def read_pickle(path: str):
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return pickle.loads(fh.read())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def claim(path: str, inputs: List[str], overwrite: bool) -> None:
    """Refuse ``path`` unless preprocess may replace it (``features.outputs``); object stores
    are checked the same way through Beam's FileSystems (listing + marker file)."""
    if outputs.is_local(path):
        outputs.claim_output(path, "preprocess", inputs, overwrite)
        return
    from apache_beam.io.filesystems import FileSystems

    files = _remote_files(path)
    entries = sorted({f[len(path.rstrip("/")) + 1:].split("/")[0] for f in files}) or None
    marker = None
    if outputs.MARKER in (entries or []):
        with FileSystems.open(os.path.join(path, outputs.MARKER), compression_type="uncompressed") as fh:
            marker = json.loads(fh.read().decode())
    outputs.check_claim(path, "preprocess", entries, marker, inputs, overwrite)


def temp_output(out: str) -> str:
    """A new marked temp folder for ``out`` (locally ``.<name>.tmp-<pid>-<hex>`` beside it, after
    removing the leftovers of killed runs; on object stores ``<out>.tmp-<hex>``)."""
    if outputs.is_local(out):
        outputs.clean_leftovers(out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        return outputs.temp_dir(out, "preprocess")
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:12]}"
    make_dirs(tmp)
    write_marker(tmp)
    return tmp


def write_marker(folder: str) -> None:
    """Mark ``folder`` as preprocess's (through FileSystems, so object stores work too)."""
    write_bytes(os.path.join(folder, outputs.MARKER), [json.dumps(outputs.marker_payload("preprocess")).encode()])


def make_dirs(path: str) -> None:
    if outputs.is_local(path):
        os.makedirs(path)
    else:
        from apache_beam.io.filesystems import FileSystems

        FileSystems.mkdirs(path)


def _remote_files(root: str) -> List[str]:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([root.rstrip("/") + "/**"]) for m in r.metadata_list)


def remove(path: str) -> None:
    """Delete a file or a directory tree (no error when absent)."""
    if outputs.is_local(path):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
        return
    from apache_beam.io.filesystems import FileSystems

    files = _remote_files(path) + ([path] if FileSystems.exists(path) else [])
    if files:
        FileSystems.delete(files)


def _rename(src: str, dst: str) -> None:
    """Move a directory tree; on object stores file by file, ``stats.json`` last (so a reader
    that sees stats.json sees a complete output)."""
    if outputs.is_local(src):
        if os.path.exists(src):
            os.replace(src, dst)
        return
    from apache_beam.io.filesystems import FileSystems

    files = sorted(_remote_files(src), key=lambda f: f.endswith("/stats.json"))
    for f in files:
        FileSystems.rename([f], [dst.rstrip("/") + f[len(src.rstrip("/")):]])


def commit(tmp: str, out: str) -> None:
    """Replace ``out`` by ``tmp``: two renames on a local filesystem, so ``out`` is always
    either the complete old output or the complete new one (never a mix). Object stores
    have no directory rename: the old output is deleted, then files are moved, stats.json last.
    Callers have claimed ``out`` first (:func:`claim`)."""
    if not outputs.is_local(out):
        remove(out)
        _rename(tmp, out)
        return
    outputs.replace_dir(tmp, out)
