"""The encode step: a read unit's staged chunks -> gzip TFRecord members, quarantine lines, accounting."""
from __future__ import annotations

import collections
import os
import shutil
import tempfile
import uuid
from typing import Any, Dict, Iterable, Optional, Tuple

import apache_beam as beam
import numpy as np

from features import encoders as E
from features.schema import OOV_ID, Schema
from pipeline.beam.accounting import add_counts
from pipeline.beam.plan import JobPlan
from pipeline.beam.splits import split_name, uniform_hash
from pipeline.beam.stage import Staged, staged_chunks
from pipeline.beam.storage import PARTS_DIR, create_file
from pipeline.beam.validation import USER_GROUP, USER_KEY, ValidatedChunk, quarantine_line
from pipeline.beam.wire import ExampleEncoder, gzip_member, tfrecord_frames
from pipeline.raw_io import ListColumn


class EncodeUnit(beam.DoFn):
    """Read unit -> per chunk: gzip TFRecord members per (split, shard), quarantine lines and
    accounting. The unit is read (again) here rather than receiving validated chunks from an
    earlier step: re-reading costs less than moving every row through the runner. For the
    same reason the unit's members are written to one part file under ``<root>/_parts`` and
    only (file, offset, size) references travel to the shard writers."""

    def __init__(self, plan: JobPlan, root: str):
        super().__init__()
        self.plan = plan
        self.parts = os.path.join(root, PARTS_DIR)
        self._state = None  # (encoders, example encoder, head users, schema), built once per worker

    def _setup(self, payload):
        if self._state is None:
            schema = Schema.from_dict(payload["schema"])
            tmp = tempfile.mkdtemp(prefix="ctrflow-vocab-")
            try:  # the encoders read their vocabularies once, at construction
                for rel, text in payload["vocab"].items():
                    os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                    with open(os.path.join(tmp, rel), "w", encoding="utf-8", newline="") as fh:
                        fh.write(text)
                encoders = {f.name: E.NumpyEncoder(f, tmp) for f in schema.features}
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            cols = [(f.name, f.encoded_dtype, f.width) for f in schema.features]
            cols += [(lab, "float32", 1) for lab in schema.labels]
            cols += [(m, d, 1) for m, d in schema.meta.items()]
            self._state = (encoders, ExampleEncoder(cols), payload["head_users"], schema)
        return self._state

    def process(self, item, payload, cuts=None, *sides) -> Iterable[tuple]:
        s, f, unit = item  # a retried unit writes a new part file: only one attempt's references survive
        path = os.path.join(self.parts, f"{s}-{f}-{unit.row_group or 0}-{uuid.uuid4().hex[:12]}.gz")
        out, offset = None, 0
        try:
            for staged in staged_chunks(item, self.plan, cuts, sides):
                for kind, value in self.encode_chunk(staged, payload):
                    if kind == "shard":
                        group, (key, rows, member) = value
                        if out is None:
                            out = create_file(path)
                        out.write(member)
                        value = (group, (key, rows, (path, offset, len(member))))
                        offset += len(member)
                    yield kind, value
        finally:
            if out is not None:
                out.close()

    def encode_chunk(self, staged: Staged, payload) -> Iterable[tuple]:
        encoders, example, head, schema = self._setup(payload)
        names, n_sh = self.plan.splits, self.plan.config.num_shards
        chunk = staged.chunk
        split = chunk.split_code
        records = list(chunk.quarantine)
        acct: Dict[str, Any] = {}
        for code, cnt in zip(*np.unique(np.concatenate([staged.validated, [r["split"] for r in records]])
                                        .astype(np.int64), return_counts=True)):
            add_counts(acct, split_name(names, code), rows_in=int(cnt))
        for code, done in staged.counts.items():
            acct[split_name(names, code)]["transforms"] = done
        cols, keep, errors = self._encode(chunk, encoders)
        for i, (feature, reason) in sorted(errors.items()):
            records.append({"file": chunk.file, "row_index": int(chunk.rows[i]), "split": int(split[i]),
                            "field": feature, "reason": "encode_error", "value": None, "row": None,
                            "problems": [{"field": feature, "reason": "encode_error", "detail": reason}]})
        yield from self._quarantine(chunk, records, acct)
        if keep is not None:
            split = split[keep]
        if len(split):
            if USER_KEY in cols:
                cols[USER_GROUP] = np.isin(cols[USER_KEY], head).astype(np.int64)
            # rows of a split go round-robin to its shards (from a per-chunk offset); a stable sort
            # by (split, shard) makes every shard's rows one contiguous run of serialized Examples
            offset = int(uniform_hash(n_sh, np.array([_key_number(chunk.key)]))[0] * n_sh)
            group = np.empty(len(split), np.int64)
            for s in np.unique(split):
                sel = split == s
                name = names[int(s)]
                add_counts(acct, name, rows_written=int(sel.sum()))
                acct[name]["label_sums"] = {lab: float(cols[lab][sel].sum()) for lab in schema.labels}
                acct[name]["oov"] = oov_counts(cols, sel, schema)
                group[sel] = s * n_sh + (np.arange(int(sel.sum())) + offset) % n_sh
            order = np.argsort(group, kind="stable")
            group = group[order]
            frames, starts = tfrecord_frames(*example.serialize({k: v[order] for k, v in cols.items()}, len(group)))
            frames, starts = memoryview(frames), starts.tolist()
            cut = np.flatnonzero(np.diff(group)) + 1
            level = self.plan.config.compression_level
            for a, b in zip(np.concatenate([[0], cut]).tolist(), np.concatenate([cut, [len(group)]]).tolist()):
                member = gzip_member(frames[starts[a]:starts[b]], level)
                yield ("shard", (int(group[a]), (chunk.key, b - a, member)))
        yield ("accounting", acct)

    def _quarantine(self, chunk, records, acct) -> Iterable[tuple]:
        names = self.plan.splits
        by_split = collections.defaultdict(list)
        for r in records:
            name = split_name(names, r["split"])
            add_counts(acct, name, rows_quarantined=1)
            reasons = acct[name].setdefault("quarantine_reasons", {}).setdefault(r["field"], {})
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
            line = quarantine_line({k: v for k, v in r.items() if k != "split"}, name)
            by_split[r["split"]].append((r["row_index"], line))
        for code, lines in sorted(by_split.items()):
            yield ("quarantine", (int(code), (chunk.key, [ln for _, ln in sorted(lines)])))

    @staticmethod
    def _encode(chunk: ValidatedChunk, encoders) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray], dict]:
        """Encoded features + the chunk's labels / meta for the rows the encoders accept.

        Rows an encoder rejects (``EncodeError.rows``) are dropped and reported; validation
        should have caught them, so this is the safety net, not the usual path. ``keep``
        is None when every row was kept.
        """
        n = chunk.num_rows
        keep = np.ones(n, bool)
        errors: Dict[int, Tuple[str, str]] = {}
        while True:
            idx = None if keep.all() else np.flatnonzero(keep)
            out: Dict[str, np.ndarray] = {}
            try:
                for name, enc in encoders.items():
                    col = chunk.columns[name]
                    if idx is not None:
                        col = col.take(idx) if isinstance(col, ListColumn) else col[idx]
                    out[name] = enc.encode(col)  # list columns in their flat form, as validated
            except E.EncodeError as exc:
                if not exc.rows:
                    raise
                bad = np.flatnonzero(keep)[np.asarray(exc.rows, dtype=np.int64)]
                for i in bad.tolist():
                    errors[i] = (exc.feature, exc.reason)
                keep[bad] = False
                continue
            break
        for name, col in chunk.columns.items():
            if name not in encoders:
                out[name] = col if idx is None else col[idx]
        return out, (None if idx is None else keep), errors


def oov_counts(cols: Dict[str, np.ndarray], sel: np.ndarray, schema: Schema) -> Dict[str, Dict[str, int]]:
    """Per vocabulary feature: rows (of ``sel``) holding an OOV id, and OOV values (list
    elements count one each): values the vocabulary lacks (unseen in train, below min_count)."""
    n = int(sel.sum())
    out = {}
    for f in schema.features:
        if "vocab_file" in f.encoding:
            oov = cols[f.name][sel].reshape(n, -1) == OOV_ID
            out[f.name] = {"rows": int(oov.any(axis=1).sum()), "values": int(oov.sum())}
    return out


def _key_number(key: Tuple[int, int, int]) -> int:
    return ((key[0] * 1_000_003 + key[1]) * 1_000_033 + key[2]) % (1 << 62)
