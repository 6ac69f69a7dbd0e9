"""``ctrflow preprocess``: the Apache Beam job raw files -> encoded TFRecords + schema.

    input files -> read units (Parquet row groups / text files)
      [time split] read the time column -> bottom-k sample -> cut points (side input)
      read + validate -> train statistics per chunk -> merged by CombineFns
                      -> build Features (vocabularies) + head users once -> payload (side input)
      read + validate -> encode (NumpyEncoder) -> tf.train.Example bytes -> gzip TFRecord members
                      -> group by (split, shard) -> shard files; quarantine lines; accounting
      -> schema.json, vocab/*.txt, quarantine/*.jsonl, stats.json

Each step that needs rows reads its units itself (a chunk = up to ``batch_size`` rows
of numpy columns, validated with masks): reading again is cheaper than sending every
row through the runner, so only small partials and compressed shard members move
between steps.
No step handles single rows: rows travel as numpy column chunks (list columns in
their flat form, values + offsets, straight into the encoders), the Examples of a
chunk are serialized at once with numpy (the protobuf wire format is written
directly; the tests hold it equal to ``tf.train.Example``), framed as TFRecords
(length and masked CRC-32C, held equal to ``tf.io.TFRecordWriter``) and each chunk's
rows of one shard become one zlib gzip member; a shard file is the concatenation of
its members in (input, file, row) order, which TFRecordDataset reads as one stream.
No worker (nor the launcher) imports TensorFlow. The job is
deterministic: the same config gives byte-identical shards, vocabularies and schema
on every runner and worker count.

Everything is written under a marked temp folder beside ``<output>`` and moved to
``<output>`` only when the job succeeded and the quarantined fraction is within
``max_quarantine_fraction``; see ``docs/preprocess.md``.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time
import uuid
import zlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import farmhash
import google_crc32c
import numpy as np
import pandas as pd

from features import encoders as E
from features import outputs
from features.schema import OOV_ID, Feature, Schema
from pipeline.config import ConfigError
from pipeline.preprocess_config import PreprocessConfig
from pipeline.raw_io import (ListColumn, list_files, plan_units, read_unit, relative_names,
                             worker_input_error)
from pipeline.validation import (SOURCE, SPLIT_BY_TIME, USER_GROUP, USER_KEY, ValidatedChunk,
                                 Validator, quarantine_line, uniform_hash)
from pipeline.user_groups import head_users

SAMPLE_SIZE = 100_000  # rows kept by the bottom-k sample behind quantiles and time cut points
UNASSIGNED_SPLIT = "unassigned"  # accounting / quarantine name of rows without a known split
MANIFEST = "_manifest.json"
PARTS_DIR = "_parts"  # encoded units' gzip members, until the shard writers concatenate them
HEAD_USERS = "head_users.txt"  # the head users' user_key values, one per line, ascending


# =============================================================================================
# tf.train.Example wire format and TFRecord framing, vectorised over a chunk of rows
# =============================================================================================
_VARINT_LIMITS = np.array([1 << (7 * j) for j in range(1, 10)], dtype=np.uint64)


def _varint_lengths(v: np.ndarray) -> np.ndarray:
    """Bytes of the protobuf varint of each uint64 in ``v`` (1..10)."""
    if v.size and v.max() < 0x80:  # the usual ids: one byte each
        return np.ones(v.shape, dtype=np.int64)
    return np.searchsorted(_VARINT_LIMITS, v, side="right").astype(np.int64) + 1


def _varint_matrix(v: np.ndarray, lens: np.ndarray, width: int) -> np.ndarray:
    """Varint bytes of uint64 ``v`` (any shape) as ``v.shape + (width,)`` (padding past each length)."""
    if width == 1:  # every value < 128 is its own byte
        return v.astype(np.uint8)[..., None]
    j = np.arange(width, dtype=np.uint64)
    out = ((v[..., None] >> (np.uint64(7) * j)) & np.uint64(0x7F)).astype(np.uint8)
    out |= ((np.arange(width) < lens[..., None] - 1) * 0x80).astype(np.uint8)
    return out


def _varint_bytes(x: int) -> bytes:
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)


def _entry_prefix(key: bytes, kind_tag: bytes, packed: int) -> bytes:
    """Map entry bytes up to the packed values of a Feature whose packed length is ``packed``."""
    lst = 1 + len(_varint_bytes(packed)) + packed
    feat = 1 + len(_varint_bytes(lst)) + lst
    entry = 1 + len(_varint_bytes(len(key))) + len(key) + 1 + len(_varint_bytes(feat)) + feat
    return (b"\x0a" + _varint_bytes(entry) + b"\x0a" + _varint_bytes(len(key)) + key + b"\x12"
            + _varint_bytes(feat) + kind_tag + _varint_bytes(lst) + b"\x0a" + _varint_bytes(packed))


class _Rows:
    """Rows under construction: byte pieces (constant, fixed-width, or variable with a mask)."""

    def __init__(self, n: int):
        self.n = n
        self.pieces: List[Tuple[Any, Optional[np.ndarray]]] = []
        self.length = np.zeros(n, dtype=np.int64)

    def const(self, b: bytes) -> None:
        if self.pieces and isinstance(self.pieces[-1][0], bytes):
            self.pieces[-1] = (self.pieces[-1][0] + b, None)
        else:
            self.pieces.append((b, None))
        self.length += len(b)

    def fixed(self, data: np.ndarray) -> None:
        self.pieces.append((data, None))
        self.length += data.shape[1]

    def varint(self, v: np.ndarray) -> None:
        lens = _varint_lengths(v.astype(np.uint64))
        width = int(lens.max())
        self.pieces.append((_varint_matrix(v.astype(np.uint64), lens, width),
                            None if lens.min() == width else np.arange(width) < lens[:, None]))
        self.length += lens

    def compact(self) -> Tuple[np.ndarray, np.ndarray]:
        """(concatenated row bytes, offsets [n + 1])."""
        n = self.n
        widths = [len(d) if isinstance(d, bytes) else d.shape[1] for d, _ in self.pieces]
        template = np.zeros(sum(widths), dtype=np.uint8)  # the constant pieces, copied to all rows at once
        col = 0
        for (d, _), w in zip(self.pieces, widths):
            if isinstance(d, bytes):
                template[col:col + w] = np.frombuffer(d, np.uint8)
            col += w
        data = np.empty((n, len(template)), dtype=np.uint8)
        data[:] = template
        mask = None if all(m is None for _, m in self.pieces) else np.ones(data.shape, dtype=bool)
        col = 0
        for (d, m), w in zip(self.pieces, widths):
            if not isinstance(d, bytes):
                data[:, col:col + w] = d
            if m is not None:
                mask[:, col:col + w] = m
            col += w
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.length, out=offsets[1:])
        return (data.reshape(-1) if mask is None else data[mask]), offsets


class ExampleEncoder:
    """Serializes rows of fixed-width int64 / float32 columns as ``tf.train.Example`` bytes.

    Example = {1: Features}; Features = repeated {1: map entry}; entry = {1: key, 2: Feature};
    Feature = {2: FloatList | 3: Int64List}; the lists are packed ({1: packed values}).
    A float column, or an int64 column whose values all have the same varint length in
    the chunk, has constant-length entries (a constant prefix + the value bytes); other
    int64 columns get per-row lengths. Rows are assembled as one byte matrix with a
    validity mask whose row-major compaction is the concatenated Examples.
    """

    def __init__(self, columns: Sequence[Tuple[str, str, int]]):
        self.columns = [(name, dtype, int(width)) for name, dtype, width in columns]
        for name, dtype, width in self.columns:
            if dtype not in ("int64", "float32") or width < 1:
                raise ValueError(f"column '{name}': cannot serialize dtype {dtype} width {width}")
        self._float_prefix = {name: _entry_prefix(name.encode(), b"\x12", 4 * width)
                              for name, dtype, width in self.columns if dtype == "float32"}

    def serialize(self, arrays: Dict[str, np.ndarray], n: int) -> Tuple[np.ndarray, np.ndarray]:
        """(concatenated Example bytes uint8, offsets int64 [n + 1]) of ``n`` rows."""
        body = _Rows(n)
        for name, dtype, width in self.columns:
            arr = np.asarray(arrays[name]).reshape(n, width)
            if dtype == "float32":
                body.const(self._float_prefix[name])
                body.fixed(np.ascontiguousarray(arr, dtype="<f4").view(np.uint8).reshape(n, 4 * width))
                continue
            v = np.ascontiguousarray(arr, dtype=np.int64).view(np.uint64)
            vl = _varint_lengths(v)
            low, high = int(vl.min()), int(vl.max())
            if low == high:  # constant layout in this chunk
                body.const(_entry_prefix(name.encode(), b"\x1a", width * low))
                body.fixed(_varint_matrix(v, vl, low).reshape(n, width * low))
                continue
            key = name.encode()
            packed = vl.sum(axis=1)
            lst = 1 + _varint_lengths(packed.astype(np.uint64)) + packed
            feat = 1 + _varint_lengths(lst.astype(np.uint64)) + lst
            entry = 1 + len(_varint_bytes(len(key))) + len(key) + 1 + _varint_lengths(feat.astype(np.uint64)) + feat
            body.const(b"\x0a")
            body.varint(entry)
            body.const(b"\x0a" + _varint_bytes(len(key)) + key + b"\x12")
            body.varint(feat)
            body.const(b"\x1a")
            body.varint(lst)
            body.const(b"\x0a")
            body.varint(packed)
            body.pieces.append((_varint_matrix(v, vl, high).reshape(n, width * high),
                                (np.arange(high) < vl[:, :, None]).reshape(n, width * high)))
            body.length += packed
        rows = _Rows(n)
        rows.const(b"\x0a")
        rows.varint(body.length)
        rows.pieces += body.pieces
        rows.length += body.length
        return rows.compact()


_CRC_MASK_DELTA = np.uint32(0xA282EAD8)


def _masked_crc32c(records: Iterable[bytes], n: int) -> np.ndarray:
    """TFRecord's masked CRC-32C (Castagnoli) of each record: ``rotr(crc, 15) + 0xa282ead8``."""
    crc = np.fromiter(map(google_crc32c.value, records), dtype=np.uint32, count=n)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + _CRC_MASK_DELTA


def tfrecord_frames(buf: np.ndarray, offsets: np.ndarray) -> Tuple[bytes, np.ndarray]:
    """The TFRecord frames of records ``buf[offsets[i]:offsets[i+1]]`` as one bytes object,
    and the offset of each frame in it [n + 1].

    A frame is TF's record format: uint64 length, masked CRC-32C of those 8 bytes, the
    data, masked CRC-32C of the data (little-endian). The CRCs come from ``google-crc32c``
    (C, hardware CRC instructions), the rest from numpy and one ``bytes.join``, so no
    worker imports TensorFlow; a test holds the frames equal to ``tf.io.TFRecordWriter``'s.
    """
    n = len(offsets) - 1
    base = offsets - offsets[0]
    starts = base + 16 * np.arange(n + 1, dtype=np.int64)
    if n == 0:
        return b"", starts
    data = buf[offsets[0]:offsets[-1]].tobytes()
    b = base.tolist()
    records = list(map(data.__getitem__, map(slice, b[:-1], b[1:])))
    lengths = np.diff(offsets).astype("<u8")
    distinct, which = np.unique(lengths, return_inverse=True)  # few distinct lengths per chunk
    length_crc = _masked_crc32c(map(bytes, distinct.view(np.uint8).reshape(-1, 8)), len(distinct))[which]
    # row i: the data CRC closing record i-1, then the header (length, its CRC) of record i
    sep = np.zeros((n + 1, 16), np.uint8)
    sep[:n, 4:12] = lengths.view(np.uint8).reshape(n, 8)
    sep[:n, 12:] = length_crc.astype("<u4").view(np.uint8).reshape(n, 4)
    sep[1:, :4] = _masked_crc32c(records, n).astype("<u4").view(np.uint8).reshape(n, 4)
    sep = sep.tobytes()
    pieces = [sep[4:16]] + list(map(sep.__getitem__, map(slice, range(16, 16 * n, 16), range(32, 16 * n + 16, 16))))
    frames = b"".join(itertools.chain.from_iterable(zip(pieces, records))) + sep[16 * n:16 * n + 4]
    return frames, starts


def gzip_member(frames, level: int) -> bytes:
    """One gzip member of ``frames``, byte-identical to what TF's GZIP TFRecordWriter writes:
    zlib deflate at ``level`` with a 2^15 window and memLevel 9 (TF's ZlibCompressionOptions)
    and zlib's own gzip header. TFRecordDataset reads concatenated gzip members as one
    stream, so a shard file is the concatenation of its chunks' members."""
    z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9)
    return z.compress(frames) + z.flush()


# =============================================================================================
# Training-split statistics (per chunk, merged by a CombineFn)
# =============================================================================================
def _count_keys(values: np.ndarray) -> pd.Series:
    """Counts of canonical categorical keys (int64 with INT_MISSING, or object with ""),
    indexed by the key as a string (the vocabulary's key form)."""
    if values.dtype == object:
        values = values[values != ""]
    else:
        values = values[values != E.INT_MISSING]
    vc = pd.Series(values).value_counts(sort=False)
    vc.index = vc.index.astype(str)
    return vc


def _sum_counts(parts: List[pd.Series]) -> pd.Series:
    """One Series summing count Series (a hash group-by in C, not a Python loop)."""
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts).groupby(level=0, sort=False).sum()


def _bottom_k(priority: np.ndarray, values: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` (priority, value) pairs of smallest priority, ties at the cut by value: a
    uniform sample without replacement whose merge is order-independent (bottom-k sketch)."""
    if len(priority) <= k:
        return priority, values
    kth = np.partition(priority, k - 1)[k - 1]
    keep = np.flatnonzero(priority < kth)
    ties = np.flatnonzero(priority == kth)
    keep = np.concatenate([keep, ties[np.argsort(values[ties], kind="stable")[:k - len(keep)]]])
    return priority[keep], values[keep]


class TrainStats:
    """Accumulator of the train statistics ``features.encoders.build_feature`` needs.

    counts: {feature: count Series by key}; samples: {feature: [(priority, value)]}, a
    bottom-k sample (a uniform sample of the non-missing values whose priorities are
    hashes of (file, row), so it is the same whatever the bundling); moments: per chunk
    (count, mean, M2), merged in chunk-key order at the end (Chan et al.'s pairwise
    update), so the float sums are the same on every runner; users: rows per user key.
    Parts are kept as lists and reduced in bulk (:meth:`compact`), so merging many chunk
    partials costs pandas / numpy work, not a Python loop per key.
    """

    def __init__(self):
        self.rows = 0
        self.counts: Dict[str, List[pd.Series]] = {}
        self.samples: Dict[str, List[Tuple[np.ndarray, np.ndarray]]] = {}
        self.moments: Dict[str, Dict[tuple, Tuple[int, float, float]]] = {}
        self.users: List[pd.Series] = []

    def merge(self, other: "TrainStats") -> "TrainStats":
        self.rows += other.rows
        for f, parts in other.counts.items():
            self.counts.setdefault(f, []).extend(parts)
        for f, parts in other.samples.items():
            self.samples.setdefault(f, []).extend(parts)
        for f, m in other.moments.items():
            self.moments.setdefault(f, {}).update(m)
        self.users.extend(other.users)
        return self.compact(bound=64)

    def compact(self, bound: int = 1) -> "TrainStats":
        """Reduce every list longer than ``bound`` parts (samples: over 4 x SAMPLE_SIZE values)."""
        for f, parts in self.counts.items():
            if len(parts) > bound:
                self.counts[f] = [_sum_counts(parts)]
        if len(self.users) > bound:
            self.users = [_sum_counts(self.users)]
        for f, parts in self.samples.items():
            if len(parts) > 1 and (bound == 1 or sum(len(p) for p, _ in parts) > 4 * SAMPLE_SIZE):
                self.samples[f] = [_bottom_k(np.concatenate([p for p, _ in parts]),
                                             np.concatenate([v for _, v in parts]), SAMPLE_SIZE)]
        return self

    def count_dict(self, feature: str) -> Dict[str, int]:
        parts = self.counts.get(feature, [])
        return {} if not parts else {k: int(c) for k, c in _sum_counts(parts).items()}

    def user_counts(self) -> pd.Series:
        return _sum_counts(self.users) if self.users else pd.Series([], dtype=np.int64)

    def sample(self, feature: str) -> np.ndarray:
        """The sorted sample of ``feature``'s train values (all of them up to SAMPLE_SIZE)."""
        parts = self.samples.get(feature, [])
        if not parts:
            return np.zeros(0)
        _, v = _bottom_k(np.concatenate([p for p, _ in parts]), np.concatenate([v for _, v in parts]), SAMPLE_SIZE)
        return np.sort(v)

    def merged_moments(self, feature: str) -> Dict[str, float]:
        n, mean, m2 = 0, 0.0, 0.0
        for key in sorted(self.moments.get(feature, {})):
            nb, mb, m2b = self.moments[feature][key]
            if nb == 0:
                continue
            tot = n + nb
            delta = mb - mean
            mean += delta * nb / tot
            m2 += m2b + delta * delta * n * nb / tot
            n = tot
        return {"count": n, "mean": mean, "var": m2 / n if n else 0.0}


def _sample_priority(file: str, rows: np.ndarray) -> np.ndarray:
    return uniform_hash(farmhash.fingerprint64(f"ctrflow-sample:{file}"), rows)


def chunk_train_stats(chunk: ValidatedChunk, train_mask: np.ndarray, needs: Dict[str, set],
                      list_features: set) -> TrainStats:
    """The statistics of the rows of ``chunk`` selected by ``train_mask``."""
    st = TrainStats()
    idx = np.flatnonzero(train_mask)
    st.rows = len(idx)
    if not len(idx):
        return st
    prio = _sample_priority(chunk.file, chunk.rows[idx])
    for name, need in needs.items():
        if not need:
            continue
        col = chunk.columns[name]
        if name in list_features:  # counts only (the plan checks it), over the train rows' elements
            st.counts[name] = [_count_keys(col.values[np.repeat(train_mask, col.lengths)])]
            continue
        vals = col[idx]
        if "counts" in need:
            st.counts[name] = [_count_keys(vals)]
        if "quantiles" in need or "moments" in need:
            ok = ~np.isnan(vals)
            x = vals[ok]
            if "quantiles" in need:
                st.samples[name] = [_bottom_k(prio[ok], x, SAMPLE_SIZE)]
            if "moments" in need:
                m = float(x.mean()) if len(x) else 0.0
                st.moments[name] = {chunk.key: (len(x), m, float(((x - m) ** 2).sum()) if len(x) else 0.0)}
    if USER_KEY in chunk.columns:
        st.users = [pd.Series(chunk.columns[USER_KEY][idx]).value_counts(sort=False)]
    return st


# =============================================================================================
# The job's plan (driver side) and its Beam pieces (worker side)
# =============================================================================================
class JobPlan:
    """Everything the workers need, resolved and checked on the launcher before the run."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        split = config.split
        self.main_splits = list(split.ratios)
        if split.method == "given" and "train" not in self.main_splits:
            raise ConfigError("split.method 'given' takes its split names from split.ratios, which must "
                              "include 'train'")
        clash = sorted(set(split.extra_splits) & set(self.main_splits))
        if clash or UNASSIGNED_SPLIT in split.extra_splits or UNASSIGNED_SPLIT in self.main_splits:
            raise ConfigError(f"split.extra_splits names {clash or [UNASSIGNED_SPLIT]} clash with the "
                              f"main splits {self.main_splits} or the reserved '{UNASSIGNED_SPLIT}'")
        self.splits = self.main_splits + list(split.extra_splits)
        if split.method != "given":
            bad = {k: v for k, v in split.ratios.items() if not isinstance(v, (int, float)) or v <= 0}
            if bad:
                raise ConfigError(f"split.ratios must be positive numbers, got {bad}")
        if config.num_shards < 1 or config.batch_size < 1:
            raise ConfigError("num_shards and batch_size must be >= 1")
        level = config.compression_level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
            raise ConfigError(f"compression_level must be an integer in 0..9 (zlib), got {level!r}")
        if not 0 <= config.max_quarantine_fraction <= 1:
            raise ConfigError("max_quarantine_fraction must be within [0, 1]")
        if not 0 < config.head_user_fraction <= 1:
            raise ConfigError("head_user_fraction must be within (0, 1]")
        self.specs = config.feature_specs()
        try:
            self.needs = {s.name: E.analyzers_needed(s) for s in self.specs}
            E.sort_for_build(self.specs)
        except E.EncodeError as exc:
            raise ConfigError(f"features: {exc}") from None
        self.list_features = {s.name for s in self.specs
                              if s.encoding.get("type") in ("sequence_vocab", "sequence_float", "dense")}
        for s in self.specs:
            if s.name in self.list_features and self.needs[s.name] - {"counts"}:
                raise ConfigError(f"feature '{s.name}': list encodings support only the counts statistic")
        self.validator = Validator(config, self.main_splits)
        inputs = [(None, config.input.path)] + [(i, p) for i, p in
                                                enumerate(split.extra_splits.values(), len(self.main_splits))]
        self.sources = []  # (fixed split index or None, [(path, relative name)])
        for fixed, path in inputs:
            files = list_files(path, config.input.format)
            self.sources.append((fixed, list(zip(files, relative_names(files)))))
        self.by_time = split.method == "time"
        self.train_index = self.main_splits.index("train")
        self.frozen = frozen_payload(self) if config.schema_from else None  # the payload, read not built

    def tasks(self) -> List[Tuple[int, int, str, str]]:
        """(source index, file index, path, relative name) of every input file."""
        return [(s, f, path, rel) for s, (_, files) in enumerate(self.sources)
                for f, (path, rel) in enumerate(files)]


def _plan_file(task, fmt):
    s, f, path, rel = task
    return [(s, f, u) for u in plan_units(path, rel, fmt)]


def read_chunks(item, plan: JobPlan) -> Iterable[ValidatedChunk]:
    """A read unit's validated chunks."""
    s, f, unit = item
    cfg, v = plan.config, plan.validator
    fixed = plan.sources[s][0]
    for raw in read_unit(unit, cfg.input.format, v.raw_columns, v.list_columns,
                         cfg.batch_size, cfg.input.csv_delimiter, cfg.input.list_delimiter):
        yield v.validate(raw, (s, f, raw.row_offset), fixed)


def time_samples(item, plan: JobPlan) -> Iterable[Tuple[np.ndarray, np.ndarray]]:
    """Bottom-k samples of the valid times of a main-input read unit (only the time column
    is read: the cut points are quantiles over every row that has a time)."""
    s, _, unit = item
    if plan.sources[s][0] is not None:
        return
    cfg = plan.config
    for raw in read_unit(unit, cfg.input.format, [cfg.split.time_column], [], cfg.batch_size,
                         cfg.input.csv_delimiter, cfg.input.list_delimiter):
        t = plan.validator.times(raw)
        ok = ~np.isnan(t)
        rows = raw.row_offset + np.flatnonzero(ok)
        yield _bottom_k(_sample_priority(raw.file, rows), t[ok], SAMPLE_SIZE)


def train_stats(item, plan: JobPlan, cuts=None) -> Iterable[TrainStats]:
    """Train statistics of a read unit, per chunk (extra inputs never feed statistics)."""
    if plan.sources[item[0]][0] is None:
        for chunk in read_chunks(item, plan):
            train = _assign(chunk.split_code, chunk.time, cuts) == plan.train_index
            yield chunk_train_stats(chunk, train, plan.needs, plan.list_features)


def _assign(codes: np.ndarray, times: Optional[np.ndarray], cuts: Optional[np.ndarray]) -> np.ndarray:
    """Final split index per row: fixed codes as they are, time rows by the cut points."""
    out = codes.astype(np.int64)
    by_time = codes == SPLIT_BY_TIME
    if by_time.any():
        out[by_time] = np.searchsorted(cuts, times[by_time], side="right")
    return out


def time_cuts(sample: Tuple[np.ndarray, np.ndarray], ratios: Dict[str, float]) -> np.ndarray:
    """Cut points of the time split: value at index ceil(q * n) of the sorted sample for each
    cumulative ratio q (earliest rows in the first split); rows with t < cut_1 -> split 0."""
    s = np.sort(sample[1])
    r = np.array([float(x) for x in ratios.values()])
    q = np.cumsum(r / r.sum())[:-1]
    idx = np.ceil(q * len(s) - 1e-9).astype(np.int64)
    return np.array([s[i] if i < len(s) else np.inf for i in idx], dtype=np.float64)


class TrainStatsFn(beam.CombineFn):
    """Merges per-chunk :class:`TrainStats` partials."""

    def create_accumulator(self):
        return TrainStats()

    def add_input(self, acc, partial):
        return acc.merge(partial)

    def merge_accumulators(self, accs):
        out = TrainStats()
        for a in accs:
            out.merge(a)
        return out

    def extract_output(self, acc):
        return acc.compact()


class SampleFn(beam.CombineFn):
    """Merges bottom-k (priority, value) samples."""

    def create_accumulator(self):
        return (np.zeros(0), np.zeros(0))

    def add_input(self, acc, part):
        return self.merge_accumulators([acc, part])

    def merge_accumulators(self, accs):
        accs = list(accs)
        return _bottom_k(np.concatenate([a[0] for a in accs]), np.concatenate([a[1] for a in accs]), SAMPLE_SIZE)

    def extract_output(self, acc):
        return acc


def _merge_counts(a: dict, b: dict) -> dict:
    """Recursive sum of nested {key: number} dicts."""
    for k, v in b.items():
        if isinstance(v, dict):
            _merge_counts(a.setdefault(k, {}), v)
        else:
            a[k] = a.get(k, 0) + v
    return a


class AccountingFn(beam.CombineFn):
    """Sums the per-chunk accounting dicts (rows in / written / quarantined, reasons, label sums)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, part):
        return _merge_counts(acc, part)

    def merge_accumulators(self, accs):
        out = {}
        for a in accs:
            _merge_counts(out, a)
        return out

    def extract_output(self, acc):
        return acc


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
    as_built = dict(schema.to_dict(), meta=meta_columns(plan.config))  # schema.json sorts meta; Examples
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
    for what, new, old in (("labels", list(cfg.labels), schema.labels), ("meta columns", meta_columns(cfg), schema.meta),
                           ("split names", plan.splits, schema.extra.get("splits"))):
        if new != old:
            raise ConfigError(f"{where}: the config's {what} {new} differ from the schema's {old}")


def meta_columns(cfg: PreprocessConfig) -> Dict[str, str]:
    """Meta column name -> stored dtype (string extra meta is stored as int64 hashes)."""
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
    return meta


def make_schema(cfg: PreprocessConfig, features: List[Feature], plan: JobPlan, n_users: int,
                n_head: int) -> Schema:
    return Schema(
        features=features, labels=list(cfg.labels), meta=meta_columns(cfg),
        user_column=USER_KEY if cfg.user_column else None,
        group_column=USER_GROUP if cfg.user_column else None,
        source_column=SOURCE if cfg.source_column else None,
        weight_columns=list(cfg.weight_columns), vocab_dir="vocab",
        extra={"splits": plan.splits, "num_shards": cfg.num_shards, "compression": "GZIP",
               "file_pattern": "part-*-of-*.tfrecord.gz", "label_dtype": "float32",
               "raw_user_column": cfg.user_column, "raw_source_column": cfg.source_column,
               "hashed_meta": [n for n, d in cfg.extra_meta.items() if d == "string"],
               "head_user_fraction": cfg.head_user_fraction, "train_users": n_users, "head_users": n_head,
               "split_method": cfg.split.method})


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

    def process(self, item, payload, cuts=None) -> Iterable[tuple]:
        s, f, unit = item  # a retried unit writes a new part file: only one attempt's references survive
        path = os.path.join(self.parts, f"{s}-{f}-{unit.row_group or 0}-{uuid.uuid4().hex[:12]}.gz")
        out, offset = None, 0
        try:
            for chunk in read_chunks(item, self.plan):
                for kind, value in self.encode_chunk(chunk, payload, cuts):
                    if kind == "shard":
                        group, (key, rows, member) = value
                        if out is None:
                            out = _create(path)
                        out.write(member)
                        value = (group, (key, rows, (path, offset, len(member))))
                        offset += len(member)
                    yield kind, value
        finally:
            if out is not None:
                out.close()

    def encode_chunk(self, chunk: ValidatedChunk, payload, cuts=None) -> Iterable[tuple]:
        encoders, example, head, schema = self._setup(payload)
        names, n_sh = self.plan.splits, self.plan.config.num_shards
        split = _assign(chunk.split_code, chunk.time, cuts)
        records = []
        for r in chunk.quarantine:
            t = np.nan if r["time"] is None else r["time"]
            records.append(dict(r, split=int(_assign(np.array([r["split_code"]]), np.array([t]), cuts)[0])))
        acct: Dict[str, Any] = {}
        for code, cnt in zip(*np.unique(np.concatenate([split, [r["split"] for r in records]]).astype(np.int64),
                                        return_counts=True)):
            _acct(acct, _split_name(names, code), rows_in=int(cnt))
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
                _acct(acct, name, rows_written=int(sel.sum()))
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
            name = _split_name(names, r["split"])
            _acct(acct, name, rows_quarantined=1)
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


def _split_name(names: List[str], code: int) -> str:
    return names[int(code)] if 0 <= int(code) < len(names) else UNASSIGNED_SPLIT


def _acct(acct: dict, split: str, **counts) -> None:
    d = acct.setdefault(split, {"rows_in": 0, "rows_written": 0, "rows_quarantined": 0})
    for k, v in counts.items():
        d[k] += v


def shard_path(root: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(root, split, f"part-{shard:05d}-of-{num_shards:05d}.tfrecord.gz")


def _create(path: str):
    """A new binary file at ``path`` through Beam's FileSystems (local, gs://, ...)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _write_bytes(path: str, chunks: Iterable[bytes]) -> int:
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
    with _create(path) as fh:
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
    the runner)."""

    def __init__(self, root: str, splits: List[str], num_shards: int):
        self.root, self.splits, self.num_shards = root, splits, num_shards

    def __call__(self, item) -> tuple:
        group, parts = item
        parts = sorted((p for p in parts if p is not None), key=lambda p: p[0])
        split, shard = self.splits[group // self.num_shards], group % self.num_shards
        path = shard_path(self.root, split, shard, self.num_shards)
        size = _write_bytes(path, _read_ranges(ref for _, _, ref in parts))
        return ("shard_done", {"split": split, "shard": shard, "rows": sum(p[1] for p in parts),
                               "bytes": size, "file": os.path.relpath(path, self.root)})


class WriteQuarantine:
    """(split code, [(chunk key, JSON lines)]) -> ``quarantine/<split>.jsonl`` in (file, row) order."""

    def __init__(self, root: str, splits: List[str]):
        self.root, self.splits = root, splits

    def __call__(self, item) -> tuple:
        code, parts = item
        name = _split_name(self.splits, code)
        lines = [ln for _, part in sorted(parts, key=lambda p: p[0]) for ln in part]
        path = os.path.join(self.root, "quarantine", f"{name}.jsonl")
        _write_bytes(path, [("\n".join(lines) + "\n").encode("utf-8")])
        return ("quarantine_done", {"split": name, "rows": len(lines), "file": os.path.relpath(path, self.root)})


def write_schema(payload, root: str) -> tuple:
    for rel, text in payload["vocab"].items():
        _write_bytes(os.path.join(root, rel), [text.encode("utf-8")])
    schema = Schema.from_dict(payload["schema"])
    if schema.group_column:  # what a later frozen-schema run (schema_from) labels head users with
        _write_bytes(os.path.join(root, HEAD_USERS), ["".join(f"{k}\n" for k in np.sort(payload["head_users"])).encode()])
    _write_bytes(os.path.join(root, "schema.json"), [schema.to_json().encode()])
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
    _write_bytes(os.path.join(root, MANIFEST), [json.dumps(manifest, default=_json_default).encode()])


def _write_pickle(value, path: str) -> None:
    _write_bytes(path, [pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)])


def _read_pickle(path: str):
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


def _kind(kind: str):
    def select(item):
        return [item[1]] if item[0] == kind else []
    select.__name__ = f"only_{kind}"
    return select


def _tag(kind: str):
    def tag(value):
        return (kind, value)
    tag.__name__ = f"tag_{kind}"
    return tag


def _merge(pcoll, label: str, fn, defaults: bool):
    merged = beam.CombineGlobally(fn)
    return pcoll | label >> (merged if defaults else merged.without_defaults())


# The job in passes: what a pass computes, and what it leaves for the next one
PASS_CUTS, PASS_STATS, PASS_ENCODE = "cuts", "stats", "encode"
_CUTS_FILE, _PAYLOAD_FILE = "_cuts.pkl", "_payload.pkl"


def build_pipeline(p, plan: JobPlan, root: str, until: str = PASS_ENCODE, cuts=None, payload=None):
    """Add the job's transforms to Beam pipeline ``p`` (outputs under ``root``).

    Every step that needs rows reads its read units itself (time sample, train statistics,
    encoding); only small partials and compressed shard members travel between steps.
    One pipeline by default: the time cut points and the Features reach later steps as
    side inputs. With ``until`` / ``cuts`` / ``payload`` the same transforms run as passes
    (see :data:`RUNNERS_WITHOUT_SIDE_INPUTS`): a pass stops after writing its result, and
    the next pass gets it as a constant instead of a side input.
    """
    from apache_beam.pvalue import AsSingleton

    cfg = plan.config
    single = until == PASS_ENCODE and (cuts is None or not plan.by_time)  # side inputs, not passes
    units = (p | "Files" >> beam.Create(plan.tasks())
             | "PlanUnits" >> beam.FlatMap(_plan_file, cfg.input.format)
             | "SpreadUnits" >> beam.Reshuffle())
    if plan.by_time and cuts is None:
        cuts_pc = (_merge(units | "TimeSamples" >> beam.FlatMap(time_samples, plan), "MergeTimeSample",
                          SampleFn(), single)
                   | "CutPoints" >> beam.Map(time_cuts, cfg.split.ratios))
        if until == PASS_CUTS:
            _ = cuts_pc | "SaveCuts" >> beam.Map(_write_pickle, os.path.join(root, _CUTS_FILE))
            return
        cuts = AsSingleton(cuts_pc)
    if payload is None:
        partials = units | "TrainStats" >> beam.FlatMap(train_stats, plan, cuts)
        payload_pc = (_merge(partials, "MergeTrainStats", TrainStatsFn(), single)
                      | "BuildFeatures" >> beam.Map(build_payload, plan))
        if until == PASS_STATS:
            _ = payload_pc | "SavePayload" >> beam.Map(_write_pickle, os.path.join(root, _PAYLOAD_FILE))
            return
        payload_arg = AsSingleton(payload_pc)
    else:
        payload_pc = p | "Payload" >> beam.Create([payload])
        payload_arg = payload
    encoded = units | "Encode" >> beam.ParDo(EncodeUnit(plan, root), payload_arg, cuts)
    n_sh = cfg.num_shards
    all_groups = p | "AllShards" >> beam.Create([(g, None) for g in range(len(plan.splits) * n_sh)])
    shards = ((encoded | "Shards" >> beam.FlatMap(_kind("shard")), all_groups) | "WithEmpty" >> beam.Flatten()
              | "GroupShards" >> beam.GroupByKey()
              | "WriteShards" >> beam.Map(WriteShard(root, plan.splits, n_sh)))
    quarantine = (encoded | "Quarantine" >> beam.FlatMap(_kind("quarantine"))
                  | "GroupQuarantine" >> beam.GroupByKey()
                  | "WriteQuarantine" >> beam.Map(WriteQuarantine(root, plan.splits)))
    accounting = (_merge(encoded | "Accounting" >> beam.FlatMap(_kind("accounting")), "MergeAccounting",
                         AccountingFn(), False)
                  | "TagAccounting" >> beam.Map(_tag("accounting")))
    schema_done = payload_pc | "WriteSchema" >> beam.Map(write_schema, root)
    # one last step that depends on every output: runners that only compute what the last
    # transform needs (the Dask runner) still run every branch
    _ = ((shards, quarantine, accounting, schema_done) | "Outputs" >> beam.Flatten()
         | "Collect" >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
         | "Manifest" >> beam.Map(write_manifest, root))


# =============================================================================================
# Driver: options, run, accounting checks, atomic commit
# =============================================================================================
def pipeline_options(config: PreprocessConfig):
    """(runner, PipelineOptions) for ``config.runner``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    rc = config.runner
    opts: Dict[str, Any] = dict(rc.options)
    if rc.name == "DirectRunner":
        opts.update(direct_running_mode=rc.running_mode, direct_num_workers=rc.num_workers)
        return "DirectRunner", PipelineOptions(flags=[], **opts)
    if rc.name == "DaskRunner":
        from apache_beam.runners.dask.dask_runner import DaskRunner

        if rc.dask_address:
            opts["address"] = rc.dask_address  # DaskOptions keeps --dask_client_address under "address"
        return DaskRunner(), PipelineOptions(flags=[], **opts)
    return rc.name, PipelineOptions(flags=[], **opts)


# Runners whose side inputs are unreliable run the job in passes. Beam 2.77's DaskRunner
# computes a side input by re-running its upstream graph inside every consuming task, and its
# ParDo receivers keep the outputs of earlier runs, so side-input values repeat elements.
RUNNERS_WITHOUT_SIDE_INPUTS = ("DaskRunner",)


def run_preprocess(config: PreprocessConfig, progress: bool = True, overwrite: bool = False) -> Dict[str, Any]:
    """Run the Beam job for ``config``; returns the summary that is also ``stats.json``.

    The output (and ``<output>.quarantine``) must be absent, empty or an earlier output of
    preprocess; another folder is replaced only with ``overwrite``, and never when it holds
    the job's inputs (``features.outputs``). Raises ValueError (naming the counts and the
    kept quarantine directory) when more than ``max_quarantine_fraction`` of the rows are
    quarantined; the output is then left as it was.
    """
    t0 = time.time()
    plan = JobPlan(config)
    out = os.path.abspath(os.path.expanduser(config.output)) if outputs.is_local(config.output) else config.output
    inputs = [config.input.path, *config.split.extra_splits.values()]
    for path, others in ((out, [f"{out}.quarantine"]), (f"{out}.quarantine", [out])):
        _claim(path, inputs + others, overwrite)
    tmp = _temp_output(out)
    log = _logger(progress)
    n_files = sum(len(f) for _, f in plan.sources)
    passes = config.runner.name in RUNNERS_WITHOUT_SIDE_INPUTS
    log(f"preprocess: {n_files} input file(s) -> {out} on {config.runner.name} "
        f"({config.runner.num_workers} workers{', in passes' if passes else ''})")
    try:
        _make_dirs(os.path.join(tmp, PARTS_DIR))
        if passes:
            cuts = None
            if plan.by_time:
                _run(config, lambda p: build_pipeline(p, plan, tmp, until=PASS_CUTS))
                cuts = _read_pickle(os.path.join(tmp, _CUTS_FILE))
                cuts = time_cuts((np.zeros(0), np.zeros(0)), config.split.ratios) if cuts is None else cuts
                _remove(os.path.join(tmp, _CUTS_FILE))
            payload = plan.frozen or _stats_pass(config, plan, tmp, cuts)
            _run(config, lambda p: build_pipeline(p, plan, tmp, cuts=cuts, payload=payload))
        else:
            _run(config, lambda p: build_pipeline(p, plan, tmp, payload=plan.frozen))
        _remove(os.path.join(tmp, PARTS_DIR))  # the shards hold every member now
        seconds = time.time() - t0
        summary = _summarize(plan, tmp, seconds)
        _check_quarantine(summary, config, tmp, out)
        _write_bytes(os.path.join(tmp, "stats.json"), [json.dumps(summary, indent=2, sort_keys=True).encode()])
        _remove(os.path.join(tmp, MANIFEST))
        if outputs.is_local(tmp):
            os.makedirs(os.path.join(tmp, "quarantine"), exist_ok=True)
        _commit(tmp, out)
        _remove(f"{out}.quarantine")  # rows kept by an earlier failed run: superseded
    except BaseException:
        _remove(tmp)
        raise
    summary["output"] = out
    log(f"preprocess: {summary['rows_in']} rows in, {summary['rows_written']} written, "
        f"{summary['rows_quarantined']} quarantined in {summary['seconds']:.1f} s "
        f"({summary['rows_per_second']:.0f} rows/s)")
    return summary


def _stats_pass(config: PreprocessConfig, plan: JobPlan, tmp: str, cuts) -> Dict[str, Any]:
    """The statistics pass of a job in passes: its payload (Features, head users)."""
    _run(config, lambda p: build_pipeline(p, plan, tmp, until=PASS_STATS, cuts=cuts))
    payload = _read_pickle(os.path.join(tmp, _PAYLOAD_FILE))
    if payload is None:
        payload = build_payload(TrainStats(), plan)  # raises: no train rows
    _remove(os.path.join(tmp, _PAYLOAD_FILE))
    return payload


def _run(config: PreprocessConfig, build) -> None:
    """Build a pipeline with ``build`` and run it to completion on the configured runner."""
    runner, options = pipeline_options(config)
    p = beam.Pipeline(runner=runner, options=options)
    build(p)
    try:
        with _step_failures_unlogged():
            result = p.run()
            try:
                result.wait_until_finish()
            finally:
                client = getattr(result, "client", None)  # the Dask runner leaves its client open
                if client is not None:
                    client.close()
    except Exception as exc:  # an unreadable input a worker met is the user's error, not a crash
        input_error = worker_input_error(exc)
        if input_error is None:
            raise
        raise input_error from None


@contextlib.contextmanager
def _step_failures_unlogged():
    """Beam logs a failing step's traceback before raising it; the error is raised (and
    reported once) by :func:`_run` anyway, so a user's bad input ends with one message."""
    log = logging.getLogger("apache_beam.runners.common")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _logger(progress: bool):
    def log(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)
    return log


def _summarize(plan: JobPlan, root: str, seconds: float) -> Dict[str, Any]:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(os.path.join(root, MANIFEST)) as fh:
        manifest = json.loads(fh.read().decode())
    acct = manifest.get("accounting", {})
    splits: Dict[str, Any] = {}
    for name in plan.splits + ([UNASSIGNED_SPLIT] if UNASSIGNED_SPLIT in acct else []):
        a = acct.get(name, {"rows_in": 0, "rows_written": 0, "rows_quarantined": 0})
        sums = a.get("label_sums", {})
        written = a["rows_written"]
        shards = [s for s in manifest["shards"] if s["split"] == name]
        if sum(s["rows"] for s in shards) != written:
            raise RuntimeError(f"split '{name}': shards hold {sum(s['rows'] for s in shards)} rows but "
                               f"{written} were encoded")
        if a["rows_in"] != written + a["rows_quarantined"]:
            raise RuntimeError(f"split '{name}': rows_in {a['rows_in']} != written {written} + "
                               f"quarantined {a['rows_quarantined']}")
        splits[name] = {
            "rows_in": a["rows_in"], "rows_written": written, "rows_quarantined": a["rows_quarantined"],
            "quarantine_reasons": a.get("quarantine_reasons", {}), "oov": a.get("oov", {}),
            "label_means": {lab: (sums.get(lab, 0.0) / written if written else None) for lab in plan.config.labels},
            "files": [s["file"] for s in shards], "bytes": sum(s["bytes"] for s in shards)}
    total_in = sum(s["rows_in"] for s in splits.values())
    total_q = sum(s["rows_quarantined"] for s in splits.values())
    schema = manifest.get("schema", {})
    return {
        "splits": splits, "rows_in": total_in, "rows_written": sum(s["rows_written"] for s in splits.values()),
        "rows_quarantined": total_q, "quarantine_fraction": total_q / total_in if total_in else 0.0,
        "max_quarantine_fraction": plan.config.max_quarantine_fraction,
        "quarantine_files": [q["file"] for q in manifest["quarantine"]],
        "train_rows_for_statistics": schema.get("train_rows"), "users": schema.get("users"),
        "features": schema.get("features"), "schema_fingerprint": schema.get("fingerprint"),
        "schema_from": plan.config.schema_from,
        "seconds": seconds, "rows_per_second": total_in / seconds if seconds > 0 else 0.0,
        "runner": {"name": plan.config.runner.name, "num_workers": plan.config.runner.num_workers,
                   "running_mode": plan.config.runner.running_mode},
        "input": {"format": plan.config.input.format,
                  "files": [rel for _, files in plan.sources for _, rel in files]},
        "sample_size": SAMPLE_SIZE,
    }


def _check_quarantine(summary: Dict[str, Any], config: PreprocessConfig, tmp: str, out: str) -> None:
    frac, limit = summary["quarantine_fraction"], config.max_quarantine_fraction
    if frac <= limit:
        return
    kept = f"{out}.quarantine"
    src = os.path.join(tmp, "quarantine")
    _write_marker(src)
    _commit(src, kept)
    reasons = collections.Counter()
    for s in summary["splits"].values():
        for field, rs in s["quarantine_reasons"].items():
            for r, c in rs.items():
                reasons[f"{field}: {r}"] += c
    top = ", ".join(f"{k} ({v})" for k, v in reasons.most_common(5))
    raise ValueError(
        f"preprocess failed: {summary['rows_quarantined']} of {summary['rows_in']} rows "
        f"({frac:.2%}) were quarantined, more than max_quarantine_fraction = {limit:.2%}. "
        f"Most common: {top}. The quarantined rows are in {kept}/ (one JSON line per row with "
        f"file, row_index, field and reason); no output was written to {out}.")


# ---- filesystem helpers: local paths are renamed atomically; object stores are copied --------
def _claim(path: str, inputs: List[str], overwrite: bool) -> None:
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


def _temp_output(out: str) -> str:
    """A new marked temp folder for ``out`` (locally ``.<name>.tmp-<pid>-<hex>`` beside it, after
    removing the leftovers of killed runs; on object stores ``<out>.tmp-<hex>``)."""
    if outputs.is_local(out):
        outputs.clean_leftovers(out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        return outputs.temp_dir(out, "preprocess")
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:12]}"
    _make_dirs(tmp)
    _write_marker(tmp)
    return tmp


def _write_marker(folder: str) -> None:
    """Mark ``folder`` as preprocess's (through FileSystems, so object stores work too)."""
    _write_bytes(os.path.join(folder, outputs.MARKER), [json.dumps(outputs.marker_payload("preprocess")).encode()])


def _make_dirs(path: str) -> None:
    if outputs.is_local(path):
        os.makedirs(path)
    else:
        from apache_beam.io.filesystems import FileSystems

        FileSystems.mkdirs(path)


def _remote_files(root: str) -> List[str]:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([root.rstrip("/") + "/**"]) for m in r.metadata_list)


def _remove(path: str) -> None:
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


def _commit(tmp: str, out: str) -> None:
    """Replace ``out`` by ``tmp``: two renames on a local filesystem, so ``out`` is always
    either the complete old output or the complete new one (never a mix). Object stores
    have no directory rename: the old output is deleted, then files are moved, stats.json last.
    Callers have claimed ``out`` first (:func:`_claim`)."""
    if not outputs.is_local(out):
        _remove(out)
        _rename(tmp, out)
        return
    outputs.replace_dir(tmp, out)
