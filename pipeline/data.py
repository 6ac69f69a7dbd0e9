"""tf.data reader for the encoded TFRecords written by ``ctrflow preprocess``.

``make_dataset`` yields ``(inputs, labels)``, or ``(inputs, labels, sample_weights)`` when
weight columns are read (``sample_weight``: by default every weight column the schema
declares, multiplied). ``inputs`` maps every selected model feature to an
int64 / float32 ``[batch, width]`` tensor (width from ``schema.json``), every meta
column (user key, user group, source, weights, pass-through columns) to a
``[batch, 1]`` tensor, and the side inputs the schema has
(``features.schema.SIDE_INPUTS``: ``_source``, ``_group``, ``_user``) to ``[batch]``
tensors under those fixed keys, whatever the dataset calls the columns; models ignore
the inputs they do not read. ``labels`` maps each task to float32 ``[batch, 1]``;
``sample_weights`` maps each task to the weight (the product of the weight columns read:
importance weights compose, e.g. a user's weight times negative downsampling's 1 / rate) as
float32 ``[batch]``
(what Keras' compiled per-task losses take: ``sum_i w_i * loss_i / batch``).
Consumers unpack batches with ``tf.keras.utils.unpack_x_y_sample_weight``.

Order of operations (docs/preprocess.md, Reading the data): shard files are listed
with a stable sort and shuffled per epoch, read with a parallel interleave, single
*examples* are shuffled through a buffer BEFORE batching (so every batch mixes
rows from many files), the batch is parsed with ONE vectorised
``tf.io.parse_example`` call, and batches are prefetched (AUTOTUNE). With
``deterministic=True`` every stage keeps its order and all shuffles use fixed
seeds derived from ``seed``: two datasets built alike yield identical batches.

With ``repeat`` the stream is pass after pass over the split, each pass batched on its
own and shuffled with seeds that are a pure function of (``seed``, pass index), so
``start_batch`` can resume a stream exactly where an earlier process stopped reading it
(``pipeline.train`` resumes killed runs so).

``sources`` (``train.sources``) keeps only the rows of the named sample sources (``ad``, ``rec``:
the schema's source column, 1 = ad, 0 = rec) before anything else: each shard file is filtered
as it is read (cache: the parsed columns are), so the stream, its shuffles, its passes and
``start_batch`` are those of a dataset holding only those rows (``tests/pipeline/test_train_sources.py``
compares a run with one on an ads-only copy of the data).

``cache=True`` holds the split in memory as parsed columns (parsed once, with the
same batched ``parse_example``): each pass then draws one permutation of the row
indices over the whole split and gathers each batch from the columns, so no record
is parsed or copied through a shuffle buffer again. This is the fast path for data
that fits in memory (about rows x sum of widths x 8 bytes); leave it off for larger
splits.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from features.schema import Schema, SchemaError

AUTOTUNE = tf.data.AUTOTUNE
_DTYPES = {"int64": tf.int64, "float32": tf.float32}
AUTO = "auto"  # sample_weight: every weight column the schema declares (their product)
SOURCES = {"ad": 1, "rec": 0}  # train.sources names -> the source column's codes (features/schema.py)


def _schema(data_dir: str, schema: Optional[Schema]) -> Schema:
    return Schema.load(data_dir) if schema is None else schema


def weight_columns(schema: Schema, sample_weight: Optional[str] = AUTO) -> List[str]:
    """The meta columns whose product is the sample weight: for ``"auto"`` the schema's
    weight columns (none if it declares none), for None none, else ``sample_weight``, which
    must be a meta column."""
    if sample_weight == AUTO:
        return list(schema.weight_columns)
    if sample_weight is not None and sample_weight not in schema.meta:
        raise SchemaError(f"sample_weight = {sample_weight!r}: the schema has no such meta column (weight columns "
                          f"{schema.weight_columns}, meta columns {sorted(schema.meta)}); expected one of them, "
                          f"'{AUTO}' or null")
    return [] if sample_weight is None else [sample_weight]


def source_filter(schema: Schema, sources: Optional[Sequence[str]]) -> Optional[Dict[str, object]]:
    """What ``sources`` keeps: ``{"column", "codes"}`` (the schema's source column and the codes of
    the named sources), or None for every row (``sources`` None). SchemaError naming
    ``sources`` when the schema has no source column or a name is not a source."""
    if sources is None:
        return None
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise SchemaError(f"sources = {list(sources)}: {unknown} not a sample source; expected names from "
                          f"{sorted(SOURCES)}")
    if schema.source_column is None:
        raise SchemaError(f"sources = {list(sources)}: the data's schema has no source column (source_column), "
                          f"so its rows cannot be told apart by source; give null (every row) or preprocess "
                          f"with source_column set")
    return {"column": schema.source_column, "codes": sorted(SOURCES[s] for s in sources)}


def _keep_records(keep: Dict[str, object]) -> Callable[[tf.Tensor], tf.Tensor]:
    """A predicate on one serialized example: is its source among ``keep``'s codes."""
    spec = {keep["column"]: tf.io.FixedLenFeature([1], tf.int64)}
    codes = tf.constant(keep["codes"], tf.int64)

    def predicate(record):
        source = tf.io.parse_single_example(record, spec)[keep["column"]][0]
        return tf.reduce_any(tf.equal(source, codes))

    return predicate


def batch_structure(schema: Schema, labels: Sequence[str], weights: Sequence[str]) -> Callable[[dict], tuple]:
    """The function turning a batch's parsed columns into ``(inputs, labels[, sample_weights])``
    (module docstring): side inputs added under their fixed keys, weights per task."""
    labels = list(labels)
    side = schema.side_columns()

    def structure(columns: Dict[str, tf.Tensor]) -> tuple:
        inputs = {k: v for k, v in columns.items() if k not in labels}
        inputs.update({key: tf.cast(tf.reshape(columns[c.column], [-1]), _DTYPES[c.dtype]) for key, c in side.items()})
        ys = {t: columns[t] for t in labels}
        if not weights:
            return inputs, ys
        w = tf.math.reduce_prod(tf.stack([tf.cast(tf.reshape(columns[c], [-1]), tf.float32) for c in weights]), 0)
        return inputs, ys, {t: w for t in labels}

    return structure


def split_files(data_dir: str, split: str) -> List[str]:
    """The split's shard files, sorted by name; SchemaError naming the directory if none."""
    pattern = os.path.join(data_dir, split, "part-*.tfrecord.gz")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        splits = sorted(d for d in tf.io.gfile.listdir(data_dir) if tf.io.gfile.isdir(os.path.join(data_dir, d))) \
            if tf.io.gfile.isdir(data_dir) else []
        raise SchemaError(f"no TFRecord shards match '{pattern}' (split '{split}'; {data_dir} holds {splits})")
    return files


def parse_spec(schema: Schema, features: Optional[Sequence[str]] = None,
               labels: Optional[Sequence[str]] = None, meta: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """``tf.io.parse_example`` spec: features ``[width]``, meta and labels ``[1]``."""
    features = list(schema.feature_names if features is None else features)
    labels = list(schema.labels if labels is None else labels)
    meta = list(schema.meta if meta is None else meta)
    schema.check_names(features=features, labels=labels, what="dataset request")
    unknown = [m for m in meta if m not in schema.meta]
    if unknown:
        raise SchemaError(f"the schema has no meta column(s) {unknown} (it has {sorted(schema.meta)})")
    spec: Dict[str, object] = {}
    for name in features:
        f = schema.feature(name)
        spec[name] = tf.io.FixedLenFeature([f.width], _DTYPES[f.encoded_dtype])
    for name in meta:
        spec[name] = tf.io.FixedLenFeature([1], _DTYPES[schema.meta[name]])
    for name in labels:
        spec[name] = tf.io.FixedLenFeature([1], tf.float32)
    return spec


def make_dataset(data_dir: str, split: str, batch_size: int, schema: Optional[Schema] = None,
                 shuffle: bool = True, repeat: bool = False, deterministic: bool = False, seed: int = 0,
                 cache: bool = False, features: Optional[Sequence[str]] = None,
                 labels: Optional[Sequence[str]] = None, drop_remainder: bool = False,
                 shuffle_buffer: int = 100_000, cycle_length: int = 8, start_batch: int = 0,
                 sample_weight: Optional[str] = AUTO, sources: Optional[Sequence[str]] = None) -> tf.data.Dataset:
    """Batches ``(inputs, labels[, sample_weights])`` of ``split`` under ``data_dir`` (see the
    module docstring); ``schema``: the data's parsed schema (default: read from ``data_dir``).

    cache: hold the split in memory as parsed columns and shuffle the whole split each
    epoch (module docstring). shuffle_buffer: examples held by the streaming pre-batch shuffle.
    cycle_length: shard files read concurrently. start_batch (with ``repeat``): the stream
    starts that many batches in, exactly where a run that read them stopped (a resumed run).
    sample_weight: the meta column read as weights, ``auto`` for the product of the schema's weight
        columns (:func:`weight_columns`; None: 2-tuples).
    sources: keep only these sample sources' rows (:func:`source_filter`; None: every row).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start_batch and not repeat:
        raise ValueError("start_batch needs repeat=True (a position in the endless stream of passes)")
    schema = _schema(data_dir, schema)
    labels = list(schema.labels if labels is None else labels)
    spec = parse_spec(schema, features, labels)
    structure = batch_structure(schema, labels, weight_columns(schema, sample_weight))
    keep = source_filter(schema, sources)
    if cache:
        return _in_memory_dataset(data_dir, split, batch_size, schema, list(spec), structure, shuffle, repeat,
                                  deterministic, seed, drop_remainder, start_batch, keep)
    files = split_files(data_dir, split)

    def read(f):
        records = tf.data.TFRecordDataset(f, compression_type="GZIP")
        return records if keep is None else records.filter(_keep_records(keep))

    def one_pass(pass_seed):
        _allow_tensor_seeds()
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            ds = ds.shuffle(len(files), seed=pass_seed[0])
        ds = ds.interleave(read,
                           cycle_length=max(1, min(cycle_length, len(files))), block_length=1,
                           num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=pass_seed[1])
        return ds.batch(batch_size, drop_remainder=drop_remainder)

    ds = _passes(seed, shuffle, repeat).flat_map(one_pass).skip(start_batch)  # skipped batches are not parsed

    def parse(serialized):
        return structure(tf.io.parse_example(serialized, spec))

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)


def _allow_tensor_seeds() -> None:
    """Let the dataset function being traced seed shuffles with tensors under a global seed of 0.

    TF's seed logic compares ``(global seed, op seed) == (0, 0)`` in Python, which fails on a
    tensor op seed when the global seed is 0 (``tf.keras.utils.set_random_seed(0)``, as
    ``train`` does for ``seed: 0``). Such a function graph's seed is cleared, so its shuffles
    take TF's default graph seed; any other global seed is kept, and with it the order."""
    if tf.compat.v1.get_default_graph().seed == 0:
        tf.compat.v1.set_random_seed(None)


def _passes(seed: int, shuffle: bool, repeat: bool, first: int = 0) -> tf.data.Dataset:
    """One stateless shuffle seed ([2] int64) per pass over the split.

    With ``repeat`` the passes are first, first + 1, ... and pass p's seed is a pure function
    of (seed, p): a resumed run (which starts a new process, and a new iterator) sees the
    order the uninterrupted run saw. Without, one pass per iteration of the dataset, drawn
    from ``Dataset.random`` so that iterating again (Keras' per-epoch ``iter()``) reshuffles.
    """
    if repeat:
        index = tf.data.Dataset.range(first, np.iinfo(np.int64).max)
    elif shuffle:
        index = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    else:
        index = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
    return index.map(lambda p: tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), p))


def _in_memory_dataset(data_dir, split, batch_size, schema, columns, structure, shuffle, repeat, deterministic,
                       seed, drop_remainder, start_batch, keep=None) -> tf.data.Dataset:
    """The ``cache=True`` path: columns parsed once, one index permutation per pass, gather per batch.

    Each pass draws a whole permutation of the row indices in one op (seeded by
    :func:`_passes`) and cuts it into batch-sized index vectors: no per-row element crosses
    tf.data (an epoch of 240 k rows took 310 ms of input work through a shuffle buffer,
    ~100 ms so; ``docs/benchmarks.md``). ``start_batch`` starts at the right pass and skips
    only index vectors of that pass (nothing is gathered for them). ``keep``
    (:func:`source_filter`) drops the other sources' rows from the columns first.
    """
    arrays = read_columns(data_dir, split, columns, schema=schema)
    if keep is not None:  # the parsed columns hold every meta column, the source among them
        rows = np.isin(arrays[keep["column"]], keep["codes"])
        arrays = {k: v[rows] for k, v in arrays.items()}
    tensors = {k: tf.constant(v.reshape(len(v), -1)) for k, v in arrays.items()}
    del arrays
    n = int(next(iter(tensors.values())).shape[0]) if tensors else 0
    full, rest = divmod(n, batch_size)
    tail = rest > 0 and not drop_remainder
    per_pass = full + tail
    if start_batch and not per_pass:
        raise ValueError(f"split '{split}' has {n} rows: no batch of {batch_size} to start at")

    def pass_batches(pass_seed):
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=pass_seed)
        batches = tf.data.Dataset.from_tensor_slices(tf.reshape(order[:full * batch_size], [full, batch_size]))
        return batches.concatenate(tf.data.Dataset.from_tensors(order[full * batch_size:])) if tail else batches

    first, skip = divmod(start_batch, per_pass) if start_batch else (0, 0)
    ds = _passes(seed, shuffle, repeat, first).flat_map(pass_batches).skip(skip)
    if not repeat:
        ds = ds.apply(tf.data.experimental.assert_cardinality(per_pass))

    def gather(idx):
        return structure({k: tf.gather(t, idx) for k, t in tensors.items()})

    ds = ds.map(gather, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(AUTOTUNE)


def batches_per_pass(data_dir: str, split: str, batch_size: int, drop_remainder: bool,
                     sources: Optional[Sequence[str]] = None, schema: Optional[Schema] = None) -> int:
    """How many batches one pass over ``split`` (its rows of ``sources``) yields."""
    full, rest = divmod(split_rows(data_dir, split, sources, schema), batch_size)
    return full + (rest > 0 and not drop_remainder)


def split_rows(data_dir: str, split: str, sources: Optional[Sequence[str]] = None,
               schema: Optional[Schema] = None) -> int:
    """The rows of ``split``: the Beam job's own count (``stats.json``: ``rows_written``, which
    it checked against the shards), else its records counted (data written by other tools).
    With ``sources``, the rows of those sources, counted from the source column (one pass)."""
    keep = source_filter(_schema(data_dir, schema), sources)
    if keep is not None:
        source = read_columns(data_dir, split, [keep["column"]], schema=schema)[keep["column"]]
        return int(np.isin(source, keep["codes"]).sum())
    stats = os.path.join(data_dir, "stats.json")
    if tf.io.gfile.exists(stats):
        with tf.io.gfile.GFile(stats) as fh:
            written = json.load(fh).get("splits", {}).get(split, {}).get("rows_written")
        if written is not None:
            return int(written)
    return int(tf.data.TFRecordDataset(split_files(data_dir, split), compression_type="GZIP").reduce(
        tf.constant(0, tf.int64), lambda count, _: count + 1))


def read_columns(data_dir: str, split: str, columns: Sequence[str], schema: Optional[Schema] = None,
                 batch_size: int = 65536) -> Dict[str, np.ndarray]:
    """Every row of ``split`` for ``columns`` (features, labels or meta), in file order, as
    numpy: ``[n]`` for one-value columns, ``[n, width]`` otherwise."""
    schema = _schema(data_dir, schema)
    feats = [c for c in columns if c in schema.feature_names]
    labs = [c for c in columns if c in schema.labels]
    meta = [c for c in columns if c in schema.meta]
    unknown = [c for c in columns if c not in feats + labs + meta]
    if unknown:
        raise SchemaError(f"read_columns: {unknown} are neither features, labels nor meta columns of "
                          f"the schema in {data_dir}")
    spec = parse_spec(schema, feats, labs, meta)
    ds = tf.data.TFRecordDataset(split_files(data_dir, split), compression_type="GZIP")
    ds = ds.batch(batch_size).map(lambda s: tf.io.parse_example(s, spec)).prefetch(AUTOTUNE)
    parts: Dict[str, list] = {c: [] for c in columns}
    for batch in ds:
        for c in columns:
            parts[c].append(batch[c].numpy())
    out = {}
    for c in columns:
        arr = np.concatenate(parts[c]) if parts[c] else np.zeros((0, 1))
        out[c] = arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr
    return out
