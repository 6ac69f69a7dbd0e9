"""The preprocess transform stage: a test transform with a side index from train rows,
negative_downsampling, the accounting of rows in / out / dropped, and config errors."""
import json
import math

import farmhash
import numpy as np
import pandas as pd
import pytest
import yaml

from features.schema import Schema
from pipeline.beam.driver import run_preprocess
from pipeline.beam.splits import uniform_hash
from pipeline.beam.transforms import Column, Output, Transform, register_transform
from pipeline.config import ConfigError, load_config
from pipeline.preprocess_config import PreprocessConfig
from test_preprocess import config, decoded, make_rows, output_files, write_parquet

SPLITS = ("train", "valid", "test")


@register_transform("test_train_user_rows")
class TrainUserRows(Transform):
    """Test transform: ``user_train_rows`` = the user's rows in the training split (a side index
    built from train rows); rows of users without train rows are dropped; train positives twice."""

    defaults = {"duplicate_positives": True}
    uses_index = True

    def added_columns(self):
        return {"user_train_rows": Column("int64", -1)}

    def index_part(self, batch):
        return pd.Series(batch.columns["user_key"]).value_counts().to_dict()

    def merge_index(self, parts):
        total = {}
        for part in parts:
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
        return total

    def apply(self, batch, side):
        n = np.array([side.get(k, 0) for k in batch.columns["user_key"]], np.int64)
        copies = (n > 0).astype(np.int64)
        if self.options["duplicate_positives"]:
            copies[(batch.columns["click"] == 1) & (batch.split == SPLITS.index("train"))] *= 2
        take = np.repeat(np.arange(len(batch)), copies)
        return Output(take, {"user_train_rows": n[take]})


def raw_log(tmp_path, rows, bad_row=None):
    """The rows as one Parquet file (optionally with a planted bad label) and the rows that are valid."""
    if bad_row is not None:
        rows = rows.copy()
        rows.loc[bad_row, "click"] = 2
    write_parquet(rows, tmp_path / "raw" / "log.parquet")
    return rows.drop(index=[] if bad_row is None else [bad_row])


def kept_negatives(rows: pd.DataFrame, rate: float, seed: int) -> np.ndarray:
    """Hand computation of negative_downsampling's rule: keep a negative when the seeded hash of
    its key (input file, row index) is below ``rate``."""
    h = farmhash.fingerprint64(f"ctrflow-negative_downsampling:{seed}") ^ farmhash.fingerprint64("log.parquet")
    return uniform_hash(h, rows.row_id.to_numpy()) < rate


# ---- a transform with a side index --------------------------------------------------------
@pytest.fixture(scope="module")
def indexed_run(tmp_path_factory):
    """The test transform on every split, then negative_downsampling on train; one bad row."""
    tmp = tmp_path_factory.mktemp("indexed")
    rows = make_rows()
    valid_rows = raw_log(tmp, rows, bad_row=7)
    transforms = [{"name": "test_train_user_rows", "splits": list(SPLITS)},
                  {"name": "negative_downsampling", "rate": 0.5, "seed": 3}]
    summary = run_preprocess(config(str(tmp / "raw"), str(tmp / "out"), transforms=transforms), progress=False)
    return str(tmp / "out"), summary, valid_rows


def test_side_index_from_train_rows_reaches_every_split(indexed_run):
    out, _, rows = indexed_run
    train_counts = rows[rows.fold == "train"].user_id.value_counts()
    data = decoded(out)
    for split in SPLITS:
        raw = rows[rows.fold == split]
        raw = raw[raw.user_id.isin(train_counts.index)]  # users without train rows are dropped
        if split == "train":  # positives twice, then negatives downsampled
            raw = pd.concat([raw[raw.click == 1]] * 2 + [raw[(raw.click == 0) & kept_negatives(raw, 0.5, 3)]])
        want = sorted(zip(raw.row_id, raw.user_id.map(train_counts)))
        got = sorted(zip(data[split]["row_id"].tolist(), data[split]["user_train_rows"].tolist()))
        assert got == want, split
    assert "unew" not in set(train_counts.index) and (rows.user_id == "unew").sum() == 3  # dropped from test


def test_accounting_counts_each_transform_and_rows_add_up(indexed_run):
    out, summary, rows = indexed_run
    assert summary == {**json.load(open(f"{out}/stats.json")), "output": out}
    in_train = rows[rows.fold == "train"]
    train_users = set(in_train.user_id)
    t1 = summary["transforms"]["test_train_user_rows"]
    t2 = summary["transforms"]["negative_downsampling"]
    dropped_1 = int((~rows.user_id.isin(train_users)).sum())
    added_1 = int(in_train.click.sum())
    assert (t1["rows_in"], t1["rows_dropped"], t1["rows_added"]) == (len(rows), dropped_1, added_1)
    kept = in_train[(in_train.click == 1) | kept_negatives(in_train, 0.5, 3)]
    assert t2["rows_in"] == len(in_train) + added_1  # what the first transform left of train
    assert t2["rows_dropped"] == len(in_train) - len(kept) and t2["rows_added"] == 0
    for t in (t1, t2):
        assert t["rows_in"] == t["rows_out"] + t["rows_dropped"] - t["rows_added"]
    assert summary["rows_quarantined"] == 1 and summary["rows_in"] == len(rows) + 1
    assert (summary["rows_in"] + summary["rows_added_by_transforms"]
            == summary["rows_written"] + summary["rows_quarantined"] + summary["rows_dropped_by_transforms"])
    for split in SPLITS:
        s = summary["splits"][split]
        assert s["rows_in"] + s["rows_added_by_transforms"] == (
            s["rows_written"] + s["rows_quarantined"] + s["rows_dropped_by_transforms"])
        assert set(s["transforms"]) == ({"test_train_user_rows", "negative_downsampling"} if split == "train"
                                        else {"test_train_user_rows"})
    assert summary["splits"]["train"]["rows_written"] == len(kept) + added_1  # positives twice


def test_statistics_describe_the_rows_after_the_transforms(indexed_run):
    """Vocabularies count the written train rows: a positive's user counts twice."""
    out, summary, rows = indexed_run
    assert summary["train_rows_for_statistics"] == summary["splits"]["train"]["rows_written"]
    schema = Schema.load(out)
    assert schema.meta["user_train_rows"] == "int64" and schema.meta["sample_weight"] == "float32"
    assert schema.weight_columns == ["w", "sample_weight"]


# ---- negative_downsampling ---------------------------------------------------------------
def test_negative_downsampling_keeps_a_seeded_fraction_with_weights(tmp_path):
    rows = raw_log(tmp_path, make_rows(n=2000, seed=4))
    rate = 0.25
    runs = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        cfg = config(str(tmp_path / "raw"), str(tmp_path / name),
                     transforms=[{"name": "negative_downsampling", "rate": rate, "seed": seed}])
        runs[name] = run_preprocess(cfg, progress=False)
    data = decoded(str(tmp_path / "a"))
    train = rows[rows.fold == "train"]
    neg = train[train.click == 0]
    keep = kept_negatives(neg, rate, 11)
    assert abs(keep.mean() - rate) < 0.06  # ~600 negatives: 3.4 standard deviations
    got = pd.Series(data["train"]["sample_weight"], index=data["train"]["row_id"]).sort_index()
    want = pd.concat([pd.Series(1.0, index=train[train.click == 1].row_id),
                      pd.Series(np.float32(1 / rate), index=neg[keep].row_id)]).sort_index()
    pd.testing.assert_series_equal(got, want.astype(np.float32), check_names=False)
    for split in ("valid", "test"):  # other splits keep every row, weight 1
        assert sorted(data[split]["row_id"].tolist()) == sorted(rows[rows.fold == split].row_id.tolist())
        assert (data[split]["sample_weight"] == 1.0).all()
    assert output_files(str(tmp_path / "a")) == output_files(str(tmp_path / "b"))  # a rerun is identical
    other = decoded(str(tmp_path / "c"), splits=("train",))["train"]["row_id"]
    assert sorted(other.tolist()) != sorted(data["train"]["row_id"].tolist())  # another seed, other rows
    nd = runs["a"]["transforms"]["negative_downsampling"]
    assert (nd["rows_in"], nd["rows_out"], nd["rows_dropped"]) == (len(train), len(train) - (~keep).sum(),
                                                                   (~keep).sum())


def test_weighted_kept_negatives_estimate_all_negatives(tmp_path):
    """Importance weights 1 / rate make the kept rows' weighted negative count an unbiased
    estimate of the negatives before downsampling."""
    rows = raw_log(tmp_path, make_rows(n=4000, seed=5))
    cfg = config(str(tmp_path / "raw"), str(tmp_path / "out"),
                 transforms=[{"name": "negative_downsampling", "rate": 0.2, "seed": 1}])
    run_preprocess(cfg, progress=False)
    train = decoded(str(tmp_path / "out"), splits=("train",))["train"]
    negatives = (rows[rows.fold == "train"].click == 0).sum()
    weighted = train["sample_weight"][train["click"] == 0].sum()
    assert abs(weighted - negatives) < 4 * math.sqrt(negatives * 0.8 / 0.2)  # binomial sd of count / rate


# ---- config errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("entry, named", [
    ({"name": "no_such_transform"}, "transforms[0].name = 'no_such_transform': expected a registered transform"),
    ({"rate": 0.5}, "transforms[0].name: missing; expected a registered transform, one of ["),
    ({"name": "negative_downsampling", "rate": 0.5, "rat": 1}, "transforms[0].rat: unknown option"),
    ({"name": "negative_downsampling", "rate": 1.5}, "transforms[0].rate = 1.5: expected a number in (0, 1]"),
    ({"name": "negative_downsampling", "rate": 0}, "transforms[0].rate = 0"),
    ({"name": "negative_downsampling"}, "transforms[0].rate: missing"),
    ({"name": "negative_downsampling", "rate": 0.5, "label": "like"}, "transforms[0].label = 'like'"),
    ({"name": "negative_downsampling", "rate": 0.5, "splits": ["tarin"]}, "transforms[0].splits: 'tarin'"),
    ({"name": "test_train_user_rows", "duplicate_positives": "yes"}, "transforms[0].duplicate_positives = 'yes'"),
])
def test_config_errors_name_the_transform_key(tmp_path, entry, named):
    path = tmp_path / "pre.yaml"
    cfg = {"input": {"path": "raw"}, "output": "out", "features": [], "labels": ["click"],
           "transforms": [entry]}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(PreprocessConfig, str(path))
    assert str(err.value).startswith(f"{path}: {named}")


def test_an_added_column_may_not_shadow_a_config_column(tmp_path):
    raw_log(tmp_path, make_rows(n=50))
    cfg = config(str(tmp_path / "raw"), str(tmp_path / "out"),
                 transforms=[{"name": "negative_downsampling", "rate": 0.5, "weight_column": "w"}])
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(negative_downsampling\) adds the column 'w'"):
        run_preprocess(cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_transform_name_is_registered_once():
    with pytest.raises(ValueError, match="'negative_downsampling' is registered twice"):
        register_transform("negative_downsampling")(type("Again", (Transform,), {}))


# ---- runners -------------------------------------------------------------------------------
@pytest.mark.slow
def test_dask_runner_builds_the_side_index_in_a_pass_of_its_own(tmp_path):
    """On the Dask runner the job runs in passes (a side index in a pass of its own): outputs
    equal the DirectRunner's byte for byte."""
    import sys

    import cloudpickle
    from apache_beam.internal.cloudpickle import cloudpickle as beam_cloudpickle
    from dask.distributed import LocalCluster

    for pickler in (cloudpickle, beam_cloudpickle):  # the workers cannot import this test file
        pickler.register_pickle_by_value(sys.modules[__name__])
    raw_log(tmp_path, make_rows())
    split = {"method": "time", "time_column": "ts", "ratios": {"train": 0.7, "valid": 0.15, "test": 0.15}}
    transforms = [{"name": "test_train_user_rows", "splits": list(SPLITS)}]
    direct = run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "direct"), split=split,
                                   transforms=transforms), progress=False)
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        dask = run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "dask"), split=split, transforms=transforms,
                                     runner={"name": "DaskRunner", "dask_address": cluster.scheduler_address}),
                              progress=False)
    assert output_files(str(tmp_path / "dask")) == output_files(str(tmp_path / "direct"))
    assert dask["transforms"] == direct["transforms"] and direct["transforms"]["test_train_user_rows"]["rows_in"] > 0
