"""``train.sources``: the training split read with only the named sample sources (Rec4Ad's Base =
ads only, on data that also holds rec samples). Checked against a copy of the data that holds only
the ad rows: the same batches, the same training numbers."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import yaml

from features.schema import Schema, SchemaError
from pipeline.config import ConfigError
from pipeline.data import batches_per_pass, make_dataset, read_columns, split_files
from pipeline.evaluate import evaluate_run
from pipeline.train import resolve, train
from train_helpers import train_config

REC_EVERY = 3  # every third training row of the mixed copy becomes a rec sample


def _rewrite(src, dst, edit, splits=("train",)):
    """A copy of data dir ``src`` whose ``splits`` hold ``edit(example, row)`` for each example
    (None drops it), shard by shard in file order; ``stats.json`` is left out (rows are counted)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*splits, "stats.json"))
    for split in splits:
        os.makedirs(os.path.join(dst, split))
        row = 0
        for path in split_files(src, split):
            with tf.io.TFRecordWriter(os.path.join(dst, split, os.path.basename(path)), options="GZIP") as writer:
                for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                    example = edit(tf.train.Example.FromString(record.numpy()), row)
                    row += 1
                    if example is not None:
                        writer.write(example.SerializeToString())
    return dst


@pytest.fixture(scope="module")
def mixed_and_ads_only(sim_data, tmp_path_factory):
    """(mixed, ads_only): the simulator's data with every REC_EVERY-th train and valid row marked
    rec, and the same with a train split holding only its ad rows (same shards, same order; valid
    kept whole, as training reads it)."""
    column = Schema.load(sim_data).source_column
    assert column, "the simulator's preprocess config names a source column"
    root = tmp_path_factory.mktemp("sources")

    def mark(example, row):
        example.features.feature[column].int64_list.value[:] = [0 if row % REC_EVERY == 0 else 1]
        return example

    mixed = _rewrite(sim_data, str(root / "mixed"), mark, splits=("train", "valid"))
    ads_only = _rewrite(mixed, str(root / "ads_only"),
                              lambda ex, _: ex if ex.features.feature[column].int64_list.value[0] == 1 else None)
    return mixed, ads_only


def _rows(ds):
    return [{k: v.numpy() for k, v in batch[0].items()} for batch in ds]


@pytest.mark.parametrize("cache", [True, False])
def test_sources_ad_reads_exactly_the_ad_rows(mixed_and_ads_only, cache):
    """[ad] yields every ad row once and no rec row (counted against the source column); [rec] the
    rest; the stream equals the ads-only copy's batch for batch, also resumed at a later batch."""
    mixed, ads_only = mixed_and_ads_only
    source = read_columns(mixed, "train", [Schema.load(mixed).source_column])["source"]
    n_ad, n_rec = int((source == 1).sum()), int((source == 0).sum())
    assert n_rec == -(-len(source) // REC_EVERY) and n_ad + n_rec == len(source)
    kw = dict(batch_size=500, shuffle=True, deterministic=True, seed=7, cache=cache, shuffle_buffer=2000)
    for sources, count, code in ((["ad"], n_ad, 1), (["rec"], n_rec, 0), (["ad", "rec"], len(source), None)):
        batches = _rows(make_dataset(mixed, "train", sources=sources, **kw))
        got = np.concatenate([b["_source"] for b in batches])
        assert len(got) == count, sources
        if code is not None:
            assert (got == code).all(), sources
    ad = _rows(make_dataset(mixed, "train", sources=["ad"], repeat=True, **kw).take(30))
    copy = _rows(make_dataset(ads_only, "train", repeat=True, **kw).take(30))
    for a, b in zip(ad, copy):
        np.testing.assert_array_equal(a["ad_id"], b["ad_id"])
        np.testing.assert_array_equal(a["_user"], b["_user"])
    resumed = _rows(make_dataset(mixed, "train", sources=["ad"], repeat=True, start_batch=17, **kw).take(13))
    for a, b in zip(ad[17:], resumed):
        np.testing.assert_array_equal(a["ad_id"], b["ad_id"])


def test_a_run_on_ads_equals_a_run_on_an_ads_only_copy(mixed_and_ads_only, sim_raw, tmp_path):
    """train() with sources [ad] on the mixed data gives the numbers of training on the ads-only
    copy (epoch = the ad rows' batches; validation read whole in both, rec rows too), records the
    sources, and differs from training on every row."""
    mixed, ads_only = mixed_and_ads_only
    kw = dict(epochs=2, batch_size=1024)
    ads = train(train_config(mixed, tmp_path, run_name="ads", sources=["ad"], **kw))
    copy = train(train_config(ads_only, tmp_path, run_name="copy", **kw))
    every = train(train_config(mixed, tmp_path, run_name="all", **kw))
    for key in ("loss", "val_auc", "val_logloss"):
        np.testing.assert_allclose(ads["history"][key], copy["history"][key], rtol=1e-6, err_msg=key)
    assert not np.allclose(ads["history"]["loss"], every["history"]["loss"], rtol=1e-6)
    # evaluated alike: the impression-ratio groups rank the ads of ad samples only, so the run on the
    # mixed data and the one on the ads-only copy get the same groups and numbers
    ad_stats = os.path.join(sim_raw, "ads.parquet")
    on_mixed, on_copy = (evaluate_run(r["run_dir"], ["test"], write=False, ad_stats=ad_stats)
                         ["test"]["click"]["slices"]["impression_ratio"] for r in (ads, copy))
    for group, metrics in on_copy.items():
        assert on_mixed[group]["count"] == metrics["count"], group
        assert on_mixed[group]["auc"] == pytest.approx(metrics["auc"], rel=1e-6), group
    assert yaml.safe_load(open(os.path.join(ads["run_dir"], "config.yaml")))["sources"] == ["ad"]
    n_ad = int((read_columns(mixed, "train", ["source"])["source"] == 1).sum())
    assert batches_per_pass(mixed, "train", 1024, True, sources=["ad"]) == n_ad // 1024


def test_sources_errors_name_the_key(sim_data, tmp_path):
    """An unknown source name fails at load naming the choices; an empty list fails; naming sources
    on data whose schema has no source column fails at resolve naming the key."""
    with pytest.raises(ConfigError, match=r"sources\[0\] = 'ads': expected one of \['ad', 'rec'\]"):
        train_config(sim_data, tmp_path, sources=["ads"])
    with pytest.raises(ConfigError, match=r"sources = \[\]: expected null"):
        train_config(sim_data, tmp_path, sources=[])
    with pytest.raises(ConfigError, match=r"sources = \['ad', 'ad'\]: expected distinct"):
        train_config(sim_data, tmp_path, sources=["ad", "ad"])
    no_source = str(tmp_path / "no_source")
    shutil.copytree(sim_data, no_source)
    schema = json.load(open(os.path.join(no_source, "schema.json")))
    schema["source_column"] = None
    json.dump(schema, open(os.path.join(no_source, "schema.json"), "w"))
    resolve(train_config(no_source, tmp_path))  # every row: fine
    with pytest.raises(SchemaError, match=r"sources = \['ad'\]: the data's schema has no source column"):
        resolve(train_config(no_source, tmp_path, sources=["ad"]))
