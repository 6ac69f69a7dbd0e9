"""Bad input classes (issue 9): a bad row in any input format is quarantined with its reason
and counted, never aborting the job; a corrupt or unreadable file fails the job naming it
(exit 2, no partial output); ids that differ as strings stay different; serving refuses what
the Beam job would quarantine."""
import dataclasses
import gzip
import hashlib
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import metrics as M
from pipeline.config import from_dict
from pipeline.data import read_columns
from pipeline.beam.driver import run_preprocess
from pipeline.preprocess_config import PreprocessConfig
from pipeline.raw_io import RawInputError, read_unit, ReadUnit
from pipeline.user_groups import head_users

_spec = importlib.util.spec_from_file_location("reliability_conftest", os.path.join(os.path.dirname(__file__),
                                                                                   "conftest.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
REPO, ctrflow = _helpers.REPO, _helpers.ctrflow

FEATURES = [
    {"name": "user_id", "kind": "categorical", "dtype": "string", "role": "personal", "required": True,
     "encoding": {"type": "vocab"}},
    {"name": "item_id", "kind": "categorical", "dtype": "int64", "role": "item", "encoding": {"type": "vocab"}},
    {"name": "price", "kind": "numeric", "dtype": "float32", "role": "item",
     "encoding": {"type": "bucketize", "num_buckets": 4}},
    {"name": "age", "kind": "numeric", "dtype": "int64", "role": "user", "encoding": {"type": "mnse", "bases": [10]}},
    {"name": "score", "kind": "numeric", "dtype": "float32", "role": "context",
     "encoding": {"type": "identity", "standardize": True}},
    {"name": "hist", "kind": "sequence", "dtype": "int64", "role": "sequence",
     "encoding": {"type": "sequence_vocab", "max_len": 3, "share_vocab_with": "item_id"}},
    {"name": "emb", "kind": "dense", "dtype": "float32", "role": "user", "encoding": {"type": "dense", "dim": 3}},
]
TYPES = {"row_id": pa.int64(), "user_id": pa.string(), "item_id": pa.int64(), "price": pa.float64(),
         "age": pa.int64(), "score": pa.float64(), "hist": pa.list_(pa.int64()), "emb": pa.list_(pa.float64()),
         "click": pa.int64(), "w": pa.float64(), "ts": pa.string()}
LISTS = ("hist", "emb")
ROWS, BAD_ROW = 12, 7
BIG = 2 ** 63 + 5  # one past int64

# class -> (column, bad value, Parquet type able to hold it, expected (field, reason))
BAD_ROWS = {
    "int_beyond_int64": ("item_id", BIG, pa.uint64(), ("item_id", "out_of_range")),
    "int_beyond_int64_in_list": ("hist", [3, BIG], pa.list_(pa.uint64()), ("hist", "out_of_range")),
    "int64_meta_beyond_int64": ("row_id", BIG, pa.uint64(), ("row_id", "out_of_range")),
    "float_beyond_float32": ("price", 1e39, None, ("price", "inf")),
    "negative_weight": ("w", -1.0, None, ("w", "negative_weight")),
    "nan_numeric": ("score", math.nan, None, ("score", "nan")),
    "inf_numeric": ("score", math.inf, None, ("score", "inf")),
    "nan_in_dense": ("emb", [0.5, math.nan, 1.0], None, ("emb", "nan")),
    "inf_in_dense": ("emb", [0.5, -math.inf, 1.0], None, ("emb", "inf")),
    "dense_wrong_length": ("emb", [0.5, 1.0], None, ("emb", "wrong_length")),
    "word_in_numeric": ("price", "cheap", pa.string(), ("price", "wrong_type")),
    "float_in_int64": ("age", 31.5, pa.float64(), ("age", "wrong_type")),
    "empty_required": ("user_id", "", None, ("user_id", "missing_required")),
    "null_required": ("user_id", None, None, ("user_id", "missing_required")),
    "bad_timestamp": ("ts", "yesterday", None, ("ts", "wrong_type")),
    "nan_label": ("click", math.nan, pa.float64(), ("click", "nan")),
    "label_not_binary": ("click", 2, None, ("click", "not_binary")),
}
# rows only a text format can hold: the line cannot be split into the columns
MALFORMED = {"csv": "1,2,3", "jsonl": "[1, 2, 3]"}
FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}


def good_rows(file_index):
    rng = np.random.default_rng(file_index)
    return [{"row_id": file_index * 100 + i, "user_id": f"u{i % 4}", "item_id": int(rng.integers(0, 9)),
             "price": float(rng.uniform(1, 50)), "age": int(rng.integers(18, 70)), "score": float(rng.normal()),
             "hist": rng.integers(0, 9, int(rng.integers(0, 4))).tolist(), "emb": rng.normal(size=3).tolist(),
             "click": int(i % 2), "w": 1.0, "ts": f"2024-01-01T00:{file_index:02d}:{i:02d}"} for i in range(ROWS)]


def _csv_field(v):
    if v is None:
        return ""
    if isinstance(v, list):
        return "|".join(_csv_field(x) for x in v)
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    return str(v)


def write_rows(rows, path, fmt, types=None, raw_line=None):
    """``rows`` as ``fmt``; ``raw_line`` replaces row BAD_ROW by that text (text formats)."""
    names = list(TYPES)
    if fmt == "parquet":
        types = dict(TYPES, **(types or {}))
        text = [c for c in names if types[c] == pa.string()]  # e.g. a numeric column written as text
        pq.write_table(pa.table({c: pa.array([_csv_field(r[c]) if c in text and r[c] is not None else r[c]
                                              for r in rows], type=types[c], from_pandas=False)
                                 for c in names}), path)
        return
    if fmt == "csv":
        lines = [",".join(names)] + [",".join(_csv_field(r[c]) for c in names) for r in rows]
    else:
        lines = [json.dumps({c: r[c] for c in names}) for r in rows]  # NaN / Infinity literals
    if raw_line is not None:
        lines[BAD_ROW + (fmt == "csv")] = raw_line
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def config(raw, out, fmt, **extra):
    d = {"input": {"path": raw, "format": fmt}, "output": out, "features": FEATURES, "labels": ["click"],
         "user_column": "user_id", "weight_columns": ["w"], "extra_meta": {"row_id": "int64"},
         "split": {"method": "time", "time_column": "ts", "ratios": {"train": 0.7, "test": 0.3}},
         "num_shards": 1, "batch_size": 5, "max_quarantine_fraction": 0.5,
         "runner": {"num_workers": 1, "running_mode": "in_memory"}}
    d.update(extra)
    return from_dict(PreprocessConfig, d)


def quarantined(out):
    return [json.loads(line) for name in sorted(os.listdir(os.path.join(out, "quarantine")))
            for line in open(os.path.join(out, "quarantine", name))]


@pytest.fixture(scope="module", params=list(FORMATS))
def bad_rows_run(request, tmp_path_factory):
    """One job per format over one file per bad-row class (the bad row at index BAD_ROW)."""
    fmt = request.param
    root = tmp_path_factory.mktemp(f"bad-{fmt}")
    os.makedirs(root / "raw")
    cases = dict(BAD_ROWS, **({"malformed_line": None} if fmt in MALFORMED else {}))
    for k, (name, case) in enumerate(cases.items()):
        rows = good_rows(k)
        path = str(root / "raw" / f"{name}.{FORMATS[fmt]}")
        if case is None:
            write_rows(rows, path, fmt, raw_line=MALFORMED[fmt])
            continue
        column, value, ptype, _ = case
        rows[BAD_ROW][column] = value
        write_rows(rows, path, fmt, {column: ptype} if ptype else None)
    summary = run_preprocess(config(str(root / "raw"), str(root / "out"), fmt), progress=False)
    return fmt, cases, summary, str(root / "out")


@pytest.mark.parametrize("case", list(BAD_ROWS) + ["malformed_line"])
def test_bad_row_is_quarantined_with_its_reason_and_counted(bad_rows_run, case):
    fmt, cases, summary, out = bad_rows_run
    if case not in cases:
        pytest.skip(f"{fmt} cannot hold a malformed line")
    records = [r for r in quarantined(out) if r["file"].startswith(case + ".")]
    expected = ("_line", "malformed") if cases[case] is None else cases[case][3]
    assert [(r["row_index"], r["field"], r["reason"]) for r in records] == [(BAD_ROW, *expected)]
    if case == "malformed_line":
        assert records[0]["value"] == MALFORMED[fmt]
    # every split adds up, every row is counted, and exactly this file's bad row is not written
    for name, s in summary["splits"].items():
        assert s["rows_in"] == s["rows_written"] + s["rows_quarantined"], name
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_quarantined"] == ROWS * len(cases)
    written = np.concatenate([read_columns(out, s, ["row_id"])["row_id"].ravel() for s in ("train", "test")])
    index = list(cases).index(case)
    file_rows = sorted(int(r) - index * 100 for r in written if index * 100 <= r < index * 100 + ROWS)
    assert file_rows == [i for i in range(ROWS) if i != BAD_ROW]


def test_bad_row_through_the_cli_exits_0(tmp_path):
    raw, out = tmp_path / "log.csv", tmp_path / "data"
    rows = good_rows(0) + good_rows(1)
    rows[3]["item_id"] = "99999999999999999999"  # beyond int64: once a wrapped-around or failed value
    write_rows(rows, str(raw), "csv")
    cfg = tmp_path / "pre.yaml"
    cfg.write_text(json.dumps({**dataclasses.asdict(config(str(raw), str(out), "csv")),
                               "runner": {"num_workers": 1, "running_mode": "in_memory"}}))
    ctrflow("preprocess", "--config", cfg, check=0)
    records = quarantined(str(out))
    assert [(r["file"], r["row_index"], r["field"], r["reason"], r["value"]) for r in records] == \
        [("log.csv", 3, "item_id", "out_of_range", "99999999999999999999")]
    stats = json.load(open(out / "stats.json"))
    assert stats["rows_in"] == 2 * ROWS and stats["rows_written"] == 2 * ROWS - 1


# ---- corrupt or unreadable files: exit 2, the file named, no partial output -----------------------
def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def _not_utf8(path):
    lines = open(path, "rb").read().split(b"\n")
    lines[4] = lines[4].replace(b"u", b"\xff\xfe", 1)  # line 5 of the file
    open(path, "wb").write(b"\n".join(lines))


def _parquet_not_utf8(path):
    table = pq.read_table(path)
    users = pa.array([b"u\xff" if i == 4 else u.encode() for i, u in enumerate(table.column("user_id").to_pylist())],
                     pa.binary())
    pq.write_table(table.set_column(table.schema.get_field_index("user_id"), "user_id", users), path)


CORRUPT = {  # name -> (format, file name, damage, what the message must name besides the file)
    "truncated_parquet": ("parquet", "b.parquet", _truncate, "Parquet"),
    "garbage_parquet": ("parquet", "b.parquet", lambda p: open(p, "wb").write(os.urandom(2000)), "Parquet"),
    "parquet_text_not_utf8": ("parquet", "b.parquet", _parquet_not_utf8, "row group 0"),
    "gzip_csv_cut_short": ("csv", "b.csv.gz", _truncate, "CSV"),
    "csv_not_utf8": ("csv", "b.csv", _not_utf8, "line 5"),
    "jsonl_not_utf8": ("jsonl", "b.jsonl", _not_utf8, "line 5"),
}


def _corrupt_input(root, case, earlier_output=None):
    """Raw files of ``case`` under ``root/raw`` with one damaged; with ``earlier_output`` the
    job first runs on the undamaged files, writing that folder. Returns (format, damaged path)."""
    fmt, name, damage, _ = CORRUPT[case]
    os.makedirs(root / "raw", exist_ok=True)
    write_rows(good_rows(0), str(root / "raw" / f"a.{fmt}"), fmt)
    bad = str(root / "raw" / name)
    write_rows(good_rows(1) * 300, bad, fmt)  # long enough that a cut gzip stream ends mid-way
    if earlier_output:
        run_preprocess(config(str(root / "raw"), earlier_output, fmt, batch_size=4096), progress=False)
    damage(bad)
    return fmt, bad


def tree_hashes(root):
    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(root) for f in files}


@pytest.mark.parametrize("case", ["truncated_parquet", "gzip_csv_cut_short"])
def test_corrupt_file_through_the_cli_exits_2_and_keeps_the_earlier_output(tmp_path, case):
    out = tmp_path / "data"
    fmt, bad = _corrupt_input(tmp_path, case, earlier_output=str(out))
    before = tree_hashes(out)
    assert "stats.json" in before
    cfg = tmp_path / "pre.yaml"
    cfg.write_text(json.dumps(dataclasses.asdict(config(str(tmp_path / "raw"), str(out), fmt, batch_size=4096))))
    proc = ctrflow("preprocess", "--config", cfg, check=2)
    assert bad in proc.stderr and CORRUPT[case][3] in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree_hashes(out) == before
    assert sorted(os.listdir(tmp_path)) == ["data", "pre.yaml", "raw"]  # no temporary folder left


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_fails_naming_it_with_no_output(tmp_path, case):
    fmt, bad = _corrupt_input(tmp_path, case)
    with pytest.raises(RawInputError) as err:
        run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "out"), fmt, batch_size=4096), progress=False)
    assert bad in str(err.value) and CORRUPT[case][3] in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["raw"]


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = str(tmp_path / "a.csv")
    write_rows(good_rows(0), path, "csv")
    if os.geteuid() != 0:  # root reads any file: fake the denial there
        os.chmod(path, 0)
    else:
        def denied(p):
            raise PermissionError(13, "Permission denied", p)
        monkeypatch.setattr("pipeline.raw_io.open_binary", denied)
    with pytest.raises(RawInputError, match=f"{path}.*permission denied"):
        list(read_unit(ReadUnit(path, "a.csv"), "csv", ["user_id"], [], 10))


# ---- ids that differ as strings stay different -------------------------------------------------------
def test_user_ids_that_differ_as_strings_are_two_users_in_gauc(tmp_path):
    """"0111" and "111" (and "+111") are different users from the CSV reader to gAUC; 111 and
    "111" are one."""
    rows = good_rows(0)[:8]
    users = ["0111", "0111", "111", "111", "+111", "+111", "111", "0111"]
    for r, u in zip(rows, users):
        r["user_id"] = u
    write_rows(rows, str(tmp_path / "log.csv"), "csv")
    run_preprocess(config(str(tmp_path / "log.csv"), str(tmp_path / "out"), "csv",
                          split={"method": "random", "ratios": {"train": 1.0}}), progress=False)
    cols = read_columns(str(tmp_path / "out"), "train", ["user_key", "user_id", "row_id"])
    key_of = dict(zip(cols["row_id"].ravel().tolist(), cols["user_key"].ravel().tolist()))
    keys = [key_of[r["row_id"]] for r in rows]
    assert len(set(keys)) == 3 and keys[2] == 111  # the canonical integer string stays the integer
    vocab_id = dict(zip(cols["row_id"].ravel().tolist(), cols["user_id"].ravel().tolist()))
    assert len({vocab_id[r["row_id"]] for r in rows}) == 3  # three vocabulary entries too
    # per-user AUC by hand: "0111" rows 0, 1, 7; "111" rows 2, 3, 6; "+111" rows 4, 5
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    s = np.array([0.9, 0.2, 0.1, 0.8, 0.6, 0.4, 0.7, 0.3])
    auc_0111 = 1.0  # positive 0.9 above negatives 0.2, 0.3
    auc_111 = 0.0  # positives 0.1, 0.7 below the negative 0.8
    auc_plus = 1.0
    hand = (3 * auc_0111 + 3 * auc_111 + 2 * auc_plus) / 8
    assert M.gauc(y, s, np.array(keys)) == pytest.approx(hand)
    assert M.gauc(y, s, users) == pytest.approx(hand)
    merged = (3 * auc_0111 + 5 * M.auc(y[[2, 3, 4, 5, 6]], s[[2, 3, 4, 5, 6]])) / 8  # "0111" lost
    assert hand != pytest.approx(merged)
    # mixed ints and strings compare as strings: 111 is "111", not "0111"
    mixed = np.array(["0111", "0111", 111, 111, "+111", "+111", "111", "0111"], dtype=object)
    assert M.gauc(y, s, mixed) == pytest.approx(hand)
    head = head_users(pd.Series(M.user_keys("mixed", mixed)[0]).value_counts(), 0.2)
    assert head.tolist() == ["0111"]  # 3 rows each for "0111" and "111": the tie goes to the smaller string
    out = M.group_logloss(y, s, mixed, head)
    assert out["GP-Head"] == pytest.approx(M.logloss(y[[0, 1, 7]], s[[0, 1, 7]]))
    with pytest.raises(ValueError, match="user ids must be integers or strings"):
        M.gauc(y, s, np.array([111.0] * 8))


# ---- serving refuses what the Beam job would quarantine -------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    sys.path.insert(0, os.path.join(REPO, "tests", "serving"))
    import serving_fixtures as F
    from serving.clients import LocalModelServer, RequestBuilder
    from serving.export import export_model

    specs = [dataclasses.replace(s, required=True) if s.name == "score" else s for s in F.SPECS]
    data_dir, schema = F.fit_features(str(tmp_path_factory.mktemp("fit")), specs)
    rows = [dict(r, score=1.0) for r in F.request_rows(4)]
    model = F.tiny_model(schema, "dnn", F.encode_rows(schema, data_dir, rows))
    export_dir = os.path.join(str(tmp_path_factory.mktemp("export")), "ctr", "1")
    export_model(model, schema, F.TASKS, data_dir, export_dir, model_name="ctr")
    return LocalModelServer(export_dir, model_name="ctr"), RequestBuilder.from_schema(schema), rows


@pytest.mark.slow  # the export behind ``served`` takes ~20 s on a loaded machine
@pytest.mark.parametrize("column,value,feature", [
    ("score", math.nan, "score"),                        # NaN in a (required) numeric feature
    ("price", math.inf, "price"),                        # infinite numeric (feeds price and price_bucket)
    ("user_vec", [0.1, math.nan, 0.2, 0.3], "user_vec"),  # NaN inside a dense vector
    ("user_vec", [0.1, math.inf, 0.2, 0.3], "user_vec"),
])
def test_server_refuses_non_finite_values_naming_the_feature(served, column, value, feature):
    from serving.clients import ServingError

    server, builder, rows = served
    tensors = builder.tensors(rows)
    server.predict(tensors)  # the clean request is served
    bad = np.array(tensors[column], copy=True)
    bad[1] = value
    with pytest.raises(ServingError, match=rf"feature {feature}.*rows:\] \[1\]"):
        server.predict(dict(tensors, **{column: bad}))


@pytest.mark.slow
@pytest.mark.parametrize("column,value", [
    ("score", math.nan), ("price", math.nan), ("price", -math.inf), ("price", 1e39),
    ("user_vec", [0.1, math.nan, 0.2, 0.3]), ("position", BIG),
])
def test_request_builder_refuses_what_the_beam_job_quarantines(served, column, value):
    from serving.clients import RequestError

    _, builder, rows = served
    with pytest.raises(RequestError, match=column) as err:
        builder.rest_json([rows[0], dict(rows[1], **{column: value})])
    assert err.value.rows == [1]


def test_ad_table_ids_that_differ_as_strings_keep_their_own_ratio(tmp_path):
    """``evaluate --ad-stats`` with a CSV ad table: "0111" and "111" are two ads of a string
    vocabulary, not one ad whose ratio the second row overwrites."""
    from features.encoders import NumpyEncoder, build_feature
    from features.schema import Schema
    from pipeline.evaluate import logged_impression_ratio
    from pipeline.preprocess_config import FeatureSpec

    data = str(tmp_path / "data")
    os.makedirs(data)
    spec = FeatureSpec("ad_id", "categorical", "string", "ad", {"type": "vocab"})
    schema = Schema(features=[build_feature(spec, {"counts": {"0111": 5, "111": 3}}, data)], labels=["click"])
    (tmp_path / "ads.csv").write_text("ad_id,impression_ratio\n0111,0.5\n111,0.2\n")
    ratio = logged_impression_ratio(str(tmp_path / "ads.csv"), schema, data, "ad_id")
    ids = NumpyEncoder(schema.feature("ad_id"), data).encode(np.array(["0111", "111"], dtype=object))[:, 0]
    assert ratio == {int(ids[0]): 0.5, int(ids[1]): 0.2} and ids[0] != ids[1]


def test_long_integer_ids_stay_exact_beside_a_bad_value(tmp_path):
    """A 19-digit id in a CSV int64 column whose chunk also holds a word: once parsed through
    float64 and written as ...768 instead of ...789, without an error."""
    rows = good_rows(0)
    rows[2]["row_id"] = 1234567890123456789
    rows[3]["row_id"] = "abc"
    write_rows(rows, str(tmp_path / "log.csv"), "csv")
    run_preprocess(config(str(tmp_path / "log.csv"), str(tmp_path / "out"), "csv", batch_size=64,
                          split={"method": "random", "ratios": {"train": 1.0}}), progress=False)
    assert 1234567890123456789 in read_columns(str(tmp_path / "out"), "train", ["row_id"])["row_id"].ravel().tolist()
    assert [(r["row_index"], r["field"], r["reason"]) for r in quarantined(str(tmp_path / "out"))] == \
        [(3, "row_id", "wrong_type")]
