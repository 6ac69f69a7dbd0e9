"""The Beam preprocess job: encoded values, quarantine, accounting, splits, atomic output, runners."""
import glob
import json
import math
import os
from pathlib import Path

import farmhash
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from features.encoders import NumpyEncoder
from features.schema import OOV_ID, Schema
from pipeline.config import ConfigError, from_dict, load_config
from pipeline.data import read_columns
from pipeline.beam.driver import run_preprocess
from pipeline.beam.wire import ExampleEncoder, gzip_member, tfrecord_frames
from pipeline.preprocess_config import PreprocessConfig

REPO = Path(__file__).resolve().parents[2]
REAL_DATA = REPO.parent / "shared/data/kuairand-likehate"

FEATURES = [
    {"name": "user_id", "kind": "categorical", "dtype": "string", "role": "personal", "required": True,
     "encoding": {"type": "vocab", "min_count": 2}},
    {"name": "item_id", "kind": "categorical", "dtype": "int64", "role": "item", "encoding": {"type": "vocab"}},
    {"name": "city", "kind": "categorical", "dtype": "string", "role": "user",
     "encoding": {"type": "hash", "num_buckets": 7}},
    {"name": "price", "kind": "numeric", "dtype": "float32", "role": "item",
     "encoding": {"type": "bucketize", "num_buckets": 4}},
    {"name": "age", "kind": "numeric", "dtype": "int64", "role": "user", "default": 30,
     "encoding": {"type": "mnse", "bases": [2, 10]}},
    {"name": "score", "kind": "numeric", "dtype": "float32", "role": "context",
     "encoding": {"type": "identity", "standardize": True}},
    {"name": "hist", "kind": "sequence", "dtype": "int64", "role": "sequence",
     "encoding": {"type": "sequence_vocab", "max_len": 4, "share_vocab_with": "item_id"}},
    {"name": "hist_ts", "kind": "sequence", "dtype": "float32", "role": "sequence",
     "encoding": {"type": "sequence_float", "max_len": 3}},
    {"name": "emb", "kind": "dense", "dtype": "float32", "role": "user", "encoding": {"type": "dense", "dim": 3}},
]
LIST_COLUMNS = ("hist", "hist_ts", "emb")


def make_rows(n=360, seed=0) -> pd.DataFrame:
    """A small impression log: skewed users, a few feature kinds, a fold and a time column."""
    rng = np.random.default_rng(seed)
    users = np.minimum(rng.zipf(1.6, n), 30).astype(object) - 1
    fold = np.array(["train", "valid", "test"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    users[-3:], fold[-3:] = "new", "test"  # a user seen only in test
    return pd.DataFrame({
        "row_id": np.arange(n, dtype=np.int64),
        "user_id": [f"u{u}" for u in users],
        "item_id": rng.integers(0, 25, n),
        "city": rng.choice(["paris", "lyon", "nice", "lille"], n),
        "price": rng.gamma(2.0, 10.0, n).astype(np.float32),
        "age": rng.integers(15, 70, n),
        "score": rng.normal(5, 2, n).astype(np.float32),
        "hist": [rng.integers(0, 30, rng.integers(0, 6)).tolist() for _ in range(n)],
        "hist_ts": [np.round(rng.uniform(0, 100, rng.integers(0, 5)), 2).astype(np.float32).tolist()
                    for _ in range(n)],
        "emb": [rng.normal(size=3).astype(np.float32).tolist() for _ in range(n)],
        "click": rng.integers(0, 2, n),
        "conv": rng.integers(0, 2, n),
        "source": rng.choice(["ad", "rec"], n),
        "w": rng.uniform(0.5, 2.0, n),
        "ctr": rng.uniform(0, 0.2, n).astype(np.float32),
        "campaign": rng.choice(["c1", "c2", "c3"], n),
        "ts": rng.permutation(n).astype(np.int64) * 10 + 1_000,
        "fold": fold,
    })


ARROW_TYPES = {"row_id": pa.int64(), "user_id": pa.string(), "item_id": pa.int64(), "city": pa.string(),
               "price": pa.float32(), "age": pa.int64(), "score": pa.float32(), "hist": pa.list_(pa.int64()),
               "hist_ts": pa.list_(pa.float32()), "emb": pa.list_(pa.float32()), "click": pa.int64(),
               "conv": pa.int64(), "source": pa.string(), "w": pa.float64(), "ctr": pa.float32(),
               "campaign": pa.string(), "ts": pa.int64(), "fold": pa.string()}


def write_parquet(df: pd.DataFrame, path: Path, row_group_size=128, types=None) -> None:
    """Arrow arrays built with from_pandas=False, so NaN stays a value and None is null.
    Row groups of 128 rows: chunks of 64 rows start where the CSV reader's do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    types = dict(ARROW_TYPES, **(types or {}))
    arrays = {c: pa.array(df[c].tolist(), type=t, from_pandas=False) for c, t in types.items()}
    pq.write_table(pa.table(arrays), str(path), row_group_size=row_group_size)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    for c in LIST_COLUMNS:
        out[c] = ["|".join(repr(x) if isinstance(x, float) else str(x) for x in v) for v in out[c]]
    out.to_csv(path, index=False)


def config(raw: str, out: str, fmt="parquet", **over) -> PreprocessConfig:
    d = {"input": {"path": raw, "format": fmt}, "output": out, "features": FEATURES,
         "labels": ["click", "conv"], "user_column": "user_id", "source_column": "source",
         "weight_columns": ["w"], "extra_meta": {"row_id": "int64", "ctr": "float32", "campaign": "string"},
         "split": {"method": "given", "given_column": "fold"}, "num_shards": 2, "batch_size": 64,
         "max_quarantine_fraction": 0.05, "runner": {"num_workers": 1, "running_mode": "in_memory"}}
    for k, v in over.items():
        node = d
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return from_dict(PreprocessConfig, d)


def user_key(key: str) -> int:
    """FarmHash Fingerprint64 of a string key as a signed int64 (how string ids are stored)."""
    return int(np.array([farmhash.fingerprint64(key)], np.uint64).view(np.int64)[0])


def decoded(out: str, splits=("train", "valid", "test")) -> dict:
    """Every column of every split, keyed by split, rows in file order."""
    schema = Schema.load(out)
    cols = schema.feature_names + schema.labels + list(schema.meta)
    return {s: read_columns(out, s, cols) for s in splits}


def output_files(out: str) -> dict:
    return {os.path.relpath(p, out): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(out, "**", "*"), recursive=True))
            if os.path.isfile(p) and not p.endswith("stats.json")}


@pytest.fixture(scope="module")
def rows():
    return make_rows()


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory, rows):
    """The default DirectRunner (multi_processing, 2 workers) over two Parquet files."""
    root = tmp_path_factory.mktemp("pq")
    write_parquet(rows.iloc[:200], root / "raw" / "a.parquet")
    write_parquet(rows.iloc[200:], root / "raw" / "b.parquet")
    cfg = config(str(root / "raw" / "*.parquet"), str(root / "out"),
                 **{"runner.num_workers": 2, "runner.running_mode": "multi_processing"})
    summary = run_preprocess(cfg, progress=False)
    return str(root / "out"), summary


# ---- serialization ---------------------------------------------------------------------------
def test_example_encoder_is_the_tf_example_wire_format():
    rng = np.random.default_rng(3)
    n = 40
    cols = [("a", "int64", 1), ("b", "int64", 5), ("c", "float32", 3), ("long_" * 40, "int64", 2),
            ("same", "int64", 1), ("wide", "float32", 300)]
    arrays = {"a": rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64), "b": rng.integers(0, 300, (n, 5)),
              "c": rng.normal(size=(n, 3)).astype(np.float32), "long_" * 40: rng.integers(0, 2, (n, 2)) << 40,
              "same": np.full(n, 5), "wide": rng.normal(size=(n, 300)).astype(np.float32)}
    buf, offsets = ExampleEncoder(cols).serialize(arrays, n)
    records = [buf[offsets[i]:offsets[i + 1]].tobytes() for i in range(n)]
    for i in (0, 17, n - 1):
        ex = tf.train.Example()
        for name, dtype, width in cols:
            vals = np.asarray(arrays[name]).reshape(n, width)[i]
            feat = ex.features.feature[name]
            (feat.float_list if dtype == "float32" else feat.int64_list).value.extend(vals.tolist())
        assert tf.train.Example.FromString(records[i]) == ex
        assert len(records[i]) == ex.ByteSize()
    spec = {k: tf.io.FixedLenFeature([w], tf.int64 if d == "int64" else tf.float32) for k, d, w in cols}
    parsed = tf.io.parse_example(records, spec)
    for name, _, width in cols:
        np.testing.assert_array_equal(parsed[name].numpy(), np.asarray(arrays[name]).reshape(n, width))


@pytest.mark.parametrize("level", [1, 6])
def test_tfrecord_frames_and_gzip_equal_tf_record_writer(tmp_path, level):
    """Frames (length, masked CRC-32C of it, data, masked CRC-32C of the data) and the gzip
    member are byte for byte what TF's TFRecordWriter writes, so no worker needs TensorFlow."""
    rng = np.random.default_rng(level)
    lengths = np.concatenate([[0, 1, 127, 128, 300, 70_000], rng.integers(0, 2000, 300)])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    buf = rng.integers(0, 256, offsets[-1], dtype=np.uint8)
    buf[: offsets[-1] // 2] %= 4  # compressible half: deflate emits matches as well as literals
    records = [buf[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
    frames, starts = tfrecord_frames(buf, offsets)
    for compression, path in [("", tmp_path / "plain.tfrecord"), ("GZIP", tmp_path / "gz.tfrecord.gz")]:
        options = tf.io.TFRecordOptions(compression_type=compression, compression_level=level if compression else None)
        with tf.io.TFRecordWriter(str(path), options) as w:
            for r in records:
                w.write(r)
    assert frames == (tmp_path / "plain.tfrecord").read_bytes()
    assert starts.tolist() == (offsets + 16 * np.arange(len(offsets))).tolist()
    assert gzip_member(frames, level) == (tmp_path / "gz.tfrecord.gz").read_bytes()
    # a slice of the frames (one shard's rows of a chunk) is a valid stream on its own
    part = tmp_path / "part.tfrecord.gz"
    part.write_bytes(gzip_member(memoryview(frames)[starts[3]:starts[9]], level) + gzip_member(b"", level))
    assert list(tf.data.TFRecordDataset(str(part), "GZIP").as_numpy_iterator()) == records[3:9]


def test_the_job_imports_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys, pipeline.beam.driver, pipeline.raw_io; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- end to end ----------------------------------------------------------------------------
def test_encoded_values_equal_numpy_encoder(parquet_run, rows):
    out, summary = parquet_run
    schema = Schema.load(out)
    assert schema.user_column == "user_key" and schema.group_column == "user_group"
    assert schema.meta == {"user_key": "int64", "user_group": "int64", "source": "int64", "w": "float32",
                           "row_id": "int64", "ctr": "float32", "campaign": "int64"}
    data = decoded(out)
    seen = np.concatenate([d["row_id"] for d in data.values()])
    assert sorted(seen.tolist()) == list(range(len(rows)))  # every row written once
    train_users = rows[rows.fold == "train"].user_id.value_counts()
    ranked = sorted(train_users.items(), key=lambda kv: (-kv[1], user_key(kv[0])))  # ties: smaller key
    head = {u for u, _ in ranked[:math.ceil(0.2 * len(ranked))]}
    for split, cols in data.items():
        raw = rows.set_index("row_id").loc[cols["row_id"]]
        assert (raw.fold == split).all()
        for f in schema.features:
            values = raw[f.name].tolist() if f.name in LIST_COLUMNS else raw[f.name].to_numpy()
            expected = NumpyEncoder(f, out).encode(values)
            got = cols[f.name].reshape(expected.shape)
            np.testing.assert_array_equal(got, expected, err_msg=f"{split}/{f.name}")
        for lab in ("click", "conv"):
            np.testing.assert_array_equal(cols[lab], raw[lab].to_numpy(np.float32))
        np.testing.assert_array_equal(cols["user_key"], [user_key(u) for u in raw.user_id])
        np.testing.assert_array_equal(cols["user_group"], raw.user_id.isin(head).to_numpy(np.int64))
        np.testing.assert_array_equal(cols["source"], (raw.source == "ad").to_numpy(np.int64))
        np.testing.assert_array_equal(cols["w"], raw.w.to_numpy(np.float32))
        np.testing.assert_array_equal(cols["ctr"], raw.ctr.to_numpy(np.float32))
        np.testing.assert_array_equal(cols["campaign"], [user_key(c) for c in raw.campaign])
        s = summary["splits"][split]
        assert s["rows_in"] == s["rows_written"] + s["rows_quarantined"] == (rows.fold == split).sum()
        assert s["label_means"]["click"] == pytest.approx(raw.click.mean())
    assert summary["rows_quarantined"] == 0
    assert "_parts" not in os.listdir(out)  # encoded units' part files are gone once shards are written
    assert sorted(os.listdir(os.path.join(out, "train"))) == ["part-00000-of-00002.tfrecord.gz",
                                                             "part-00001-of-00002.tfrecord.gz"]
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["splits"]["train"]["rows_written"] == summary["splits"]["train"]["rows_written"]
    assert stats["rows_per_second"] > 0 and stats["users"]["head_users"] == len(head)


def test_vocabularies_come_from_the_train_split_only(parquet_run, rows):
    out, _ = parquet_run
    vocab = open(os.path.join(out, "vocab", "user_id.txt")).read().split("\n")
    train = rows[rows.fold == "train"].user_id.value_counts()
    assert set(vocab) == set(train[train >= 2].index)  # min_count 2 over TRAIN counts only
    assert "unew" in set(rows.user_id) - set(train.index)
    cols = read_columns(out, "test", ["user_id", "row_id"])
    raw = rows.set_index("row_id").loc[cols["row_id"]]
    assert (cols["user_id"][(raw.user_id == "unew").to_numpy()] == OOV_ID).sum() == 3
    rare = train[train == 1].index  # in train once: below min_count 2 -> OOV as well
    assert len(rare) and not set(rare) & set(vocab)


def test_csv_input_gives_the_same_shards_as_parquet(parquet_run, rows, tmp_path):
    out_pq, _ = parquet_run
    write_csv(rows.iloc[:200], tmp_path / "raw" / "a.csv")
    write_csv(rows.iloc[200:], tmp_path / "raw" / "b.csv")
    run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "out"), fmt="csv"), progress=False)
    assert output_files(str(tmp_path / "out")) == output_files(out_pq)


# ---- quarantine -------------------------------------------------------------------------------
def bad_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with planted problems (CSV text), and the (field, reason) each must be quarantined with."""
    bad = rows.copy().astype({"price": object, "score": object, "click": object})
    bad.loc[3, "price"] = "abc"
    bad.loc[10, "user_id"] = None
    bad.loc[20, "click"] = 2
    bad.loc[30, "price"] = "nan"
    bad.loc[40, "score"] = "inf"
    bad.at[50, "emb"] = [1.0, 2.0]
    return bad


PLANTED = {3: ("price", "wrong_type"), 10: ("user_id", "missing_required"), 20: ("click", "not_binary"),
           30: ("price", "nan"), 40: ("score", "inf"), 50: ("emb", "wrong_length")}


def test_bad_rows_go_to_quarantine_and_rows_add_up(rows, tmp_path):
    write_csv(bad_rows(rows), tmp_path / "raw" / "log.csv")
    summary = run_preprocess(config(str(tmp_path / "raw" / "log.csv"), str(tmp_path / "out"), fmt="csv"),
                             progress=False)
    out = tmp_path / "out"
    records = [json.loads(ln) for f in sorted((out / "quarantine").glob("*.jsonl")) for ln in open(f)]
    assert {r["row_index"]: (r["field"], r["reason"]) for r in records} == PLANTED
    for r in records:
        assert r["file"] == "log.csv" and r["split"] == rows.fold[r["row_index"]]
        assert r["row"]["row_id"] == str(r["row_index"])  # CSV fields are text
    assert next(r for r in records if r["row_index"] == 3)["value"] == "abc"
    total_q = 0
    for split in ("train", "valid", "test"):
        s = summary["splits"][split]
        assert s["rows_in"] == s["rows_written"] + s["rows_quarantined"] == (rows.fold == split).sum()
        planted = [PLANTED[i] for i in PLANTED if rows.fold[i] == split]
        assert s["rows_quarantined"] == len(planted)
        assert sum(sum(v.values()) for v in s["quarantine_reasons"].values()) == len(planted)
        for field, reason in planted:
            assert s["quarantine_reasons"][field][reason] >= 1
        total_q += s["rows_quarantined"]
    assert summary["rows_quarantined"] == total_q == len(PLANTED)
    written = np.concatenate([d["row_id"] for d in decoded(str(out)).values()])
    assert sorted(written.tolist()) == sorted(set(range(len(rows))) - set(PLANTED))


def test_jsonl_nan_literal_and_non_list_are_quarantined(rows, tmp_path):
    raw = tmp_path / "raw.jsonl"
    sub = rows.iloc[:60]
    with open(raw, "w") as fh:
        for i, rec in enumerate(sub.to_dict("records")):
            rec = {k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
            if i == 5:
                rec["score"] = float("nan")  # json writes the NaN literal
            if i == 6:
                rec["hist"] = 7
            fh.write(json.dumps(rec) + "\n")
    summary = run_preprocess(config(str(raw), str(tmp_path / "out"), fmt="jsonl",
                                    max_quarantine_fraction=0.1), progress=False)
    records = [json.loads(ln) for f in (tmp_path / "out" / "quarantine").glob("*.jsonl") for ln in open(f)]
    assert {r["row_index"]: (r["field"], r["reason"]) for r in records} == {5: ("score", "nan"),
                                                                             6: ("hist", "wrong_type")}
    assert summary["rows_written"] == 58


def test_too_many_bad_rows_fail_and_leave_no_output(rows, tmp_path):
    write_csv(bad_rows(rows), tmp_path / "raw" / "log.csv")
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        run_preprocess(config(str(tmp_path / "raw" / "log.csv"), str(out), fmt="csv",
                              max_quarantine_fraction=0.01), progress=False)
    msg = str(err.value)
    assert f"6 of {len(rows)} rows" in msg and "max_quarantine_fraction" in msg
    assert f"{out}.quarantine" in msg
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["out.quarantine", "raw"]  # no temp folder left
    kept = [json.loads(ln) for f in Path(f"{out}.quarantine").glob("*.jsonl") for ln in open(f)]
    assert len(kept) == 6


# ---- atomic output ---------------------------------------------------------------------------
def test_rerun_replaces_the_output_and_a_failed_run_keeps_it(rows, tmp_path):
    write_parquet(rows, tmp_path / "raw" / "log.parquet")
    out = tmp_path / "out"
    run_preprocess(config(str(tmp_path / "raw"), str(out)), progress=False)
    (out / "stale.txt").write_text("from the first run")
    run_preprocess(config(str(tmp_path / "raw"), str(out), num_shards=3, compression_level=9), progress=False)
    assert not (out / "stale.txt").exists()
    assert sorted(np.concatenate([d["row_id"] for d in decoded(str(out)).values()])) == list(range(len(rows)))
    assert sorted(os.listdir(out / "train")) == [f"part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    before = output_files(str(out))
    # standardizing a column without any value fails inside the pipeline (while building features)
    feats = FEATURES + [{"name": "w_missing", "source": "missing_col", "kind": "numeric", "dtype": "float32",
                         "role": "context", "encoding": {"type": "identity", "standardize": True}}]
    write_parquet(rows.assign(missing_col=None), tmp_path / "raw2" / "log.parquet",
                  types={"missing_col": pa.float32()})
    with pytest.raises(Exception, match="w_missing"):
        run_preprocess(config(str(tmp_path / "raw2"), str(out), features=feats), progress=False)
    assert output_files(str(out)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw", "raw2"]


# ---- splits ---------------------------------------------------------------------------------------
def test_time_split_puts_the_earliest_rows_in_train(rows, tmp_path):
    write_parquet(rows, tmp_path / "raw" / "log.parquet")
    ratios = {"train": 0.6, "valid": 0.25, "test": 0.15}
    cfg = config(str(tmp_path / "raw"), str(tmp_path / "out"),
                 split={"method": "time", "time_column": "ts", "ratios": ratios})
    summary = run_preprocess(cfg, progress=False)
    data = decoded(str(tmp_path / "out"))
    ts = {s: rows.set_index("row_id").loc[d["row_id"]].ts for s, d in data.items()}
    assert ts["train"].max() < ts["valid"].min() and ts["valid"].max() < ts["test"].min()
    n = len(rows)
    assert len(ts["train"]) == math.ceil(0.6 * n) and len(ts["valid"]) == math.ceil(0.85 * n) - math.ceil(0.6 * n)
    assert summary["splits"]["test"]["rows_written"] == len(ts["test"])


def test_random_split_follows_the_ratios_and_the_seed(rows, tmp_path):
    write_parquet(rows, tmp_path / "raw" / "log.parquet")
    counts = {}
    for seed in (1, 2):
        out = tmp_path / f"out{seed}"
        cfg = config(str(tmp_path / "raw"), str(out), split={"method": "random", "seed": seed,
                                                            "ratios": {"train": 0.5, "valid": 0.3, "test": 0.2}})
        run_preprocess(cfg, progress=False)
        counts[seed] = {s: sorted(d["row_id"].tolist()) for s, d in decoded(str(out)).items()}
    for seed, by_split in counts.items():
        assert abs(len(by_split["train"]) / len(rows) - 0.5) < 0.1
    assert counts[1]["train"] != counts[2]["train"]


def test_extra_split_is_encoded_with_train_vocabularies(rows, tmp_path):
    write_parquet(rows, tmp_path / "raw" / "log.parquet")
    extra = rows.iloc[:30].assign(user_id="only_in_extra")
    write_parquet(extra, tmp_path / "random" / "log.parquet")
    cfg = config(str(tmp_path / "raw"), str(tmp_path / "out"),
                 split={"method": "given", "given_column": "fold",
                        "extra_splits": {"random": str(tmp_path / "random")}})
    summary = run_preprocess(cfg, progress=False)
    cols = read_columns(str(tmp_path / "out"), "random", ["user_id", "row_id"])
    assert sorted(cols["row_id"].tolist()) == list(range(30))
    assert (cols["user_id"] == OOV_ID).all()
    assert summary["splits"]["random"]["rows_written"] == 30
    assert Schema.load(str(tmp_path / "out")).extra["splits"] == ["train", "valid", "test", "random"]


def test_config_errors_name_the_problem(rows, tmp_path):
    write_parquet(rows, tmp_path / "raw" / "log.parquet")
    with pytest.raises(ConfigError, match="campaign"):
        run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "o"),
                              features=FEATURES + [{"name": "campaign", "kind": "categorical", "dtype": "string",
                                                    "role": "ad", "encoding": {"type": "vocab"}}]),
                       progress=False)
    with pytest.raises(ConfigError, match="compression_level"):
        run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "o"), compression_level=10), progress=False)
    with pytest.raises(ConfigError, match="share_vocab_with"):
        bad = [dict(f, encoding={"type": "sequence_vocab", "max_len": 2, "share_vocab_with": "nope"})
               if f["name"] == "hist" else f for f in FEATURES]
        run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "o"), features=bad), progress=False)
    assert not (tmp_path / "o").exists()


# ---- other runners ---------------------------------------------------------------------------
@pytest.mark.slow
def test_dask_runner_gives_identical_outputs(rows, tmp_path):
    from dask.distributed import LocalCluster

    write_parquet(rows.iloc[:200], tmp_path / "raw" / "a.parquet")
    write_parquet(rows.iloc[200:], tmp_path / "raw" / "b.parquet")
    split = {"method": "time", "time_column": "ts", "ratios": {"train": 0.7, "valid": 0.15, "test": 0.15}}
    direct = run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "direct"), split=split), progress=False)
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        dask = run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "dask"), split=split,
                                     runner={"name": "DaskRunner", "dask_address": cluster.scheduler_address}),
                              progress=False)
    assert output_files(str(tmp_path / "dask")) == output_files(str(tmp_path / "direct"))
    for s in ("train", "valid", "test"):
        assert dask["splits"][s]["rows_written"] == direct["splits"][s]["rows_written"] > 0


# ---- real data -------------------------------------------------------------------------------------
@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"{REAL_DATA} is absent")
def test_real_kuairand_likehate_slice(tmp_path):
    from pipeline.loaders import load_dataset

    loaded = load_dataset("kuairand_likehate", str(REAL_DATA), str(tmp_path / "raw"))
    cfg = load_config(PreprocessConfig, str(REPO / "configs" / "preprocess_kuairand_likehate.yaml"),
                      {"input.path": str(tmp_path / "raw" / "part-*.parquet"), "output": str(tmp_path / "data")})
    summary = run_preprocess(cfg, progress=False)
    assert summary["rows_in"] == loaded["rows"] == 41_828
    assert summary["rows_quarantined"] == 0
    for s in summary["splits"].values():
        assert s["rows_in"] == s["rows_written"] + s["rows_quarantined"]
    assert abs(summary["splits"]["train"]["rows_written"] - 0.8 * 41_828) < 100  # ties at the cut
    schema = Schema.load(str(tmp_path / "data"))
    assert schema.labels[0] == "like" and schema.user_column == "user_key"
    train = read_columns(str(tmp_path / "data"), "train", ["user_key", "user_group", "like"])
    test = read_columns(str(tmp_path / "data"), "test", ["user_key"])
    assert set(np.unique(train["user_key"])) <= set(range(0, 30_000))  # raw integer user ids kept
    head_share = train["user_group"].mean()
    assert 0.2 < head_share < 0.9  # the top 20 % users hold more than 20 % of the rows
    assert len(test["user_key"]) == summary["splits"]["test"]["rows_written"]
