"""Rec4Ad's pseudo-ad mapping in the Beam job (``pipeline/beam/transforms/pseudo_ad_mapping.py``):
a planted ads table and rec rows where the right picks are known, the accounting, the impression
ratio statistics, several input globs, runners, and the simulator config end to end."""
import json
import os
import subprocess
import sys

import farmhash
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.schema import Schema
from pipeline.beam.driver import run_preprocess
from pipeline.beam.splits import uniform_hash
from pipeline.beam.transforms import Batch
from pipeline.config import ConfigError, from_dict, load_config
from pipeline.data import read_columns
from pipeline.preprocess_config import PreprocessConfig
from pipeline.raw_io import RawInputError
from test_preprocess import output_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAY = 86400.0
SPLITS = ["train", "valid", "test"]

# item i1: five ads created at 100 .. 500; i2: one ad created at 1000 (after every sample); i3: no ad.
# ``impressions`` is nonsense text: the mapping must never read it (the IR statistics are off here).
ADS = pd.DataFrame({
    "ad_id": ["a1", "a2", "a3", "a4", "a5", "a6"],
    "campaign_id": ["c1", "c1", "c2", "c2", "c3", "c9"],
    "item_id": ["i1", "i1", "i1", "i1", "i1", "i2"],
    "bid": np.array([1.5, 2.5, 3.5, 4.5, 5.5, 9.0], np.float32),
    "created_at": np.array([100, 200, 300, 400, 500, 1000], np.int64),
    "impressions": ["many", "lots", "?", "x", "y", "z"],
    "candidate_sessions": np.array([10, 10, 10, 10, 10, 0], np.int64),
})
FEATURES = [
    {"name": "item_id", "kind": "categorical", "dtype": "string", "role": "item", "encoding": {"type": "vocab"}},
    {"name": "ad_id", "kind": "categorical", "dtype": "string", "role": "ad", "encoding": {"type": "vocab"}},
    {"name": "campaign_id", "kind": "categorical", "dtype": "string", "role": "ad", "encoding": {"type": "vocab"}},
    {"name": "bid", "kind": "numeric", "dtype": "float32", "role": "ad", "encoding": {"type": "identity"}},
    {"name": "ad_age_days", "kind": "numeric", "dtype": "float32", "role": "ad", "encoding": {"type": "identity"}},
]


def mapping(**over):
    return {"name": "pseudo_ad_mapping", "ads_table": "ads.parquet", "impressions_column": None,
            "candidate_sessions_column": None, **over}


def make_config(raw, out, transforms, **over) -> PreprocessConfig:
    d = {"input": {"path": [f"{raw}/ads/*.parquet", f"{raw}/rec/*.parquet"]}, "output": str(out),
         "features": FEATURES, "labels": ["click"], "source_column": "source",
         "extra_meta": {"timestamp": "int64", "row_id": "int64"},
         "split": {"method": "given", "given_column": "fold"}, "num_shards": 1, "batch_size": 256,
         "runner": {"num_workers": 1, "running_mode": "in_memory"}, "transforms": transforms, **over}
    return from_dict(PreprocessConfig, d)


def planted_transform(tmp_path, **over):
    """The transform built and prepared from the planted ads table, as the job builds it."""
    pq.write_table(pa.Table.from_pandas(ADS, preserve_index=False), str(tmp_path / "ads.parquet"))
    cfg = make_config(tmp_path / "raw", tmp_path / "out", [mapping(ads_table=str(tmp_path / "ads.parquet"), **over)])
    (transform,) = cfg.transform_steps()
    transform.prepare(cfg)
    return transform


def rec_batch(items, times, split=0, file="rec/log.parquet"):
    """Canonical rec rows (as validation hands them to a transform), one per (item, time)."""
    n = len(items)
    return Batch({"item_id": np.array(items, object), "ad_id": np.full(n, "", object),
                  "campaign_id": np.full(n, "", object), "bid": np.full(n, np.nan),
                  "ad_age_days": np.full(n, np.nan), "source": np.zeros(n, np.int64),
                  "timestamp": np.array(times, np.int64), "row_id": np.arange(n), "click": np.zeros(n, np.float32)},
                 np.full(n, split, np.int64), file, np.arange(n, dtype=np.int64))


def picked(transform, batch):
    out = transform.apply(batch, None)
    return out, pd.Series(out.columns["ad_id"])


# ---- the planted case: which ads are picked -------------------------------------------------------
def test_picks_uniformly_among_the_k_most_recent_ads_existing_at_the_sample_time(tmp_path):
    t = planted_transform(tmp_path)
    n = 3000
    out, ads = picked(t, rec_batch(["i1"] * n, [450] * n))
    assert len(out.take) == n
    share = ads.value_counts(normalize=True)
    assert set(share.index) == {"a2", "a3", "a4"}  # a5 (created at 500) does not exist yet at 450; a1 is older
    assert (abs(share - 1 / 3) < 0.035).all(), share  # ~4 standard deviations of a share of 3000 picks
    _, at_300 = picked(t, rec_batch(["i1"] * 600, [300] * 600))
    assert set(at_300) == {"a1", "a2", "a3"}  # an ad created at the sample's second exists
    _, at_150 = picked(t, rec_batch(["i1"] * 50, [150] * 50))
    assert set(at_150) == {"a1"}  # fewer than k ads exist: among those


def test_k_1_picks_the_most_recent_ad_and_k_large_picks_among_all(tmp_path):
    t1 = planted_transform(tmp_path, k=1)
    _, ads = picked(t1, rec_batch(["i1"] * 200, [450] * 200))
    assert set(ads) == {"a4"}
    t9 = planted_transform(tmp_path, k=9)
    _, ads = picked(t9, rec_batch(["i1"] * 2000, [10_000] * 2000))
    assert set(ads) == {"a1", "a2", "a3", "a4", "a5"}


def test_mapped_rows_carry_the_chosen_ads_features_and_age_at_the_sample_time(tmp_path):
    t = planted_transform(tmp_path)
    batch = rec_batch(["i1"] * 300, list(range(400, 700)))
    out, ads = picked(t, batch)
    table = ADS.set_index("ad_id")
    chosen = table.loc[ads]
    assert (out.columns["campaign_id"] == chosen.campaign_id.to_numpy()).all()
    assert np.array_equal(out.columns["bid"], chosen.bid.to_numpy(np.float64))
    age = (batch.columns["timestamp"][out.take] - chosen.created_at.to_numpy()) / DAY
    assert np.array_equal(out.columns["ad_age_days"], age.astype(np.float32).astype(np.float64))
    assert (age >= 0).all()


def test_rows_without_a_retrievable_ad_are_dropped_and_counted(tmp_path):
    t = planted_transform(tmp_path)
    batch = rec_batch(["i1", "i2", "i3", "i1", "i1"], [450, 500, 450, 50, 450])
    batch.split[4] = 1  # a valid rec row: outside rec_splits
    out = t.apply(batch, None)
    assert out.take.tolist() == [0]  # i2's only ad is created after the sample; i3 has none; i1 at 50: none yet
    counts = {k: v.tolist() for k, v in out.counts.items()}
    assert counts == {"rec_rows_in": [1, 1, 1, 1, 1], "rec_rows_mapped": [1, 0, 0, 0, 0],
                      "rec_dropped_item_without_ads": [0, 0, 1, 0, 0],
                      "rec_dropped_ads_after_sample": [0, 1, 0, 1, 0],
                      "rec_dropped_outside_rec_splits": [0, 0, 0, 0, 1], "rec_dropped_no_time": [0, 0, 0, 0, 0]}


def test_the_pick_is_a_seeded_hash_of_the_row_key(tmp_path):
    t = planted_transform(tmp_path)
    batch = rec_batch(["i1"] * 500, [450] * 500)
    _, a = picked(t, batch)
    _, again = picked(t, batch)
    _, other_file = picked(t, rec_batch(["i1"] * 500, [450] * 500, file="rec/other.parquet"))
    _, other_seed = picked(planted_transform(tmp_path, seed=1), batch)
    assert a.equals(again) and not a.equals(other_file) and not a.equals(other_seed)
    assert a.tolist() == hand_picks("rec/log.parquet", np.arange(500), ["a2", "a3", "a4"])


def hand_picks(file, rows, newest_last, k=3, seed=0):
    """Eq. 5 by hand: j = floor(u * min(k, n)) with u the seeded hash of (file, row); the ad j-th from the newest."""
    u = uniform_hash(farmhash.fingerprint64(f"ctrflow-pseudo_ad_mapping:{seed}") ^ farmhash.fingerprint64(file),
                     np.asarray(rows, np.int64))
    m = min(k, len(newest_last))
    return [newest_last[-1 - int(x * m)] for x in u]


def test_the_mapping_never_reads_the_impression_counts(tmp_path):
    """The planted table's impressions are text that no count parses: the mapping is built, and its
    picks equal those from a table whose impression columns are dropped altogether."""
    t = planted_transform(tmp_path)
    batch = rec_batch(["i1"] * 400, [450] * 400)
    _, a = picked(t, batch)
    pq.write_table(pa.Table.from_pandas(ADS.drop(columns=["impressions", "candidate_sessions"]),
                                        preserve_index=False), str(tmp_path / "ads.parquet"))
    cfg = make_config(tmp_path / "raw", tmp_path / "out", [mapping(ads_table=str(tmp_path / "ads.parquet"))])
    (bare,) = cfg.transform_steps()
    bare.prepare(cfg)
    assert a.equals(picked(bare, batch)[1])
    with pytest.raises(RawInputError, match=r"column 'impressions', row 0: wrong_type value 'many'"):
        planted_transform(tmp_path, impressions_column="impressions", candidate_sessions_column="candidate_sessions")


# ---- the job end to end ------------------------------------------------------------------------------
def write_logs(raw):
    """An ads log (ad rows of a1 .. a5 in train / valid) and a rec log (train and valid rec rows)."""
    rng = np.random.default_rng(0)
    n_ad, n_rec = 120, 900
    ads = pd.DataFrame({"item_id": "i1", "ad_id": rng.choice(["a1", "a2", "a3", "a4", "a5"], n_ad)})
    ads = ads.merge(ADS[["ad_id", "campaign_id", "bid", "created_at"]], on="ad_id", how="left")
    ads["timestamp"] = ads.created_at + rng.integers(0, 5000, n_ad)
    ads["ad_age_days"] = ((ads.timestamp - ads.created_at) / DAY).astype(np.float32)
    ads["source"], ads["fold"] = "ad", rng.choice(["train", "valid"], n_ad, p=[0.8, 0.2])
    rec = pd.DataFrame({"item_id": rng.choice(["i1", "i2", "i3"], n_rec, p=[0.7, 0.2, 0.1]),
                        "ad_id": None, "campaign_id": None, "bid": np.nan, "ad_age_days": np.nan,
                        "timestamp": rng.integers(50, 2000, n_rec), "source": "rec",
                        "fold": rng.choice(["train", "valid"], n_rec, p=[0.8, 0.2])})
    for name, df in (("ads", ads), ("rec", rec)):
        df = df.assign(click=rng.integers(0, 2, len(df)), row_id=np.arange(len(df)))
        (raw / name).mkdir(parents=True, exist_ok=True)
        types = {"ad_id": pa.string(), "campaign_id": pa.string(), "bid": pa.float32(), "ad_age_days": pa.float32(),
                 "item_id": pa.string(), "timestamp": pa.int64(), "source": pa.string(), "fold": pa.string(),
                 "click": pa.int64(), "row_id": pa.int64()}
        pq.write_table(pa.table({c: pa.array(df[c].tolist(), type=tp, from_pandas=True) for c, tp in types.items()}),
                       str(raw / name / "log.parquet"), row_group_size=200)
    return ads, rec


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mapping")
    ads, rec = write_logs(tmp / "raw")
    pq.write_table(pa.Table.from_pandas(ADS.assign(impressions=[5, 0, 1, 10, 2, 0]), preserve_index=False),
                   str(tmp / "ads.parquet"))
    transforms = [mapping(ads_table=str(tmp / "ads.parquet"), impressions_column="impressions",
                          candidate_sessions_column="candidate_sessions")]
    summary = run_preprocess(make_config(tmp / "raw", tmp / "out", transforms), progress=False)
    return tmp, summary, ads, rec, transforms


def decoded_rows(out, split):
    schema = Schema.load(str(out))
    cols = read_columns(str(out), split, schema.feature_names + list(schema.meta))
    df = pd.DataFrame({k: np.asarray(v).reshape(len(v), -1)[:, 0] for k, v in cols.items()})
    for name in ("item_id", "ad_id", "campaign_id"):
        vocab = ["", "<oov>"] + open(os.path.join(str(out), "vocab", f"{name}.txt")).read().splitlines()
        df[name] = [vocab[i] for i in df[name]]
    return df


def test_job_maps_rec_rows_as_computed_by_hand(job):
    tmp, _, ads, rec, _ = job
    train = decoded_rows(tmp / "out", "train")
    mapped = train[train.source == 0].set_index("row_id").sort_index()
    created = ADS.set_index("ad_id").created_at
    want = {}
    for row in rec[rec.fold == "train"].itertuples():
        exist = ADS[(ADS.item_id == row.item_id) & (ADS.created_at <= row.timestamp)].ad_id.tolist()
        if exist:
            want[row.Index] = hand_picks("rec/log.parquet", [row.Index], exist)[0]
    assert mapped.ad_id.to_dict() == want
    age = (mapped.timestamp - created.loc[mapped.ad_id].to_numpy()) / DAY
    assert np.allclose(mapped.ad_age_days, age, rtol=1e-6)
    got_ads = train[train.source == 1].set_index("row_id").sort_index()
    kept = ads[ads.fold == "train"]
    assert got_ads.ad_id.tolist() == kept.ad_id.tolist()  # ad rows pass unchanged
    assert np.allclose(got_ads.ad_age_days, kept.ad_age_days)
    valid = decoded_rows(tmp / "out", "valid")
    assert (valid.source == 1).all() and len(valid) == (ads.fold == "valid").sum()  # valid stays ads-only


def test_job_accounting_adds_up(job):
    tmp, summary, ads, rec, _ = job
    assert summary == {**json.load(open(tmp / "out" / "stats.json")), "output": str(tmp / "out")}
    c = summary["transforms"]["pseudo_ad_mapping"]
    train = rec[rec.fold == "train"]
    exists = train.apply(lambda r: ((ADS.item_id == r.item_id) & (ADS.created_at <= r.timestamp)).any(), axis=1)
    has_ads = train.item_id.isin(ADS.item_id)
    assert c["rec_rows_in"] == len(rec)
    assert c["rec_rows_mapped"] == exists.sum()
    assert c["rec_dropped_item_without_ads"] == (~has_ads).sum()
    assert c["rec_dropped_ads_after_sample"] == (has_ads & ~exists).sum()
    assert c["rec_dropped_outside_rec_splits"] == (rec.fold != "train").sum()
    assert c["rec_rows_in"] == c["rec_rows_mapped"] + sum(v for k, v in c.items() if k.startswith("rec_dropped"))
    assert c["rows_dropped"] == c["rec_rows_in"] - c["rec_rows_mapped"] and c["rows_added"] == 0
    for name in SPLITS[:2]:
        s = summary["splits"][name]
        assert s["rows_in"] == s["rows_written"] + s["rows_quarantined"] + s["rows_dropped_by_transforms"]
        assert s["rows_in"] == ((ads.fold == name).sum() + (rec.fold == name).sum())
    assert summary["rows_written"] == len(ads) + exists.sum()
    assert summary["input"]["files"] == ["ads/log.parquet", "rec/log.parquet"]  # relative to the common folder


def test_job_writes_the_impression_ratio_statistics(job):
    tmp, summary, *_ = job
    ir = summary["transforms"]["pseudo_ad_mapping"]["statistics"]["impression_ratio"]
    per_ad = pd.read_parquet(tmp / "out" / "impression_ratio.parquet")
    assert per_ad.columns.tolist() == ["ad_id", "impressions", "candidate_sessions", "impression_ratio"]
    want = [0.5, 0.0, 0.1, 1.0, 0.2, np.nan]  # impressions / candidate sessions; a6 has no candidate session
    assert np.allclose(per_ad.impression_ratio, want, equal_nan=True)
    assert (ir["ads"], ir["ads_without_candidates"], ir["ads_never_shown"], ir["ads_shown"]) == (6, 1, 1, 4)
    assert ir["group_means"] == pytest.approx([0.1, 0.2, 0.5, 1.0])  # 4 shown ads: a group each
    assert ir["top_bottom_ratio"] == pytest.approx(10.0) and ir["quantiles"]["0.5"] == pytest.approx(0.35)


def test_job_is_reproducible_on_direct_runner(job):
    """A second DirectRunner run writes the same files byte for byte."""
    tmp, summary, _, _, transforms = job
    again = run_preprocess(make_config(tmp / "raw", tmp / "again", transforms), progress=False)
    assert output_files(str(tmp / "again")) == output_files(str(tmp / "out"))
    assert again["transforms"] == summary["transforms"]


@pytest.mark.slow
def test_job_on_dask_equals_direct_runner(job):
    """The Dask runner (the index travels pickled to worker processes) writes the same files."""
    from dask.distributed import LocalCluster

    tmp, summary, _, _, transforms = job
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        cfg = make_config(tmp / "raw", tmp / "dask", transforms,
                          runner={"name": "DaskRunner", "dask_address": cluster.scheduler_address})
        dask = run_preprocess(cfg, progress=False)
    assert output_files(str(tmp / "dask")) == output_files(str(tmp / "out"))
    assert dask["transforms"] == summary["transforms"]


# ---- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize("over, named", [
    ({"ads_table": None}, "transforms[0].ads_table: missing"),
    ({"ads_table": "ads.txt"}, "transforms[0].ads_table = 'ads.txt': expected the path of a Parquet"),
    ({"k": 0}, "transforms[0].k = 0: expected an integer in [1, inf)"),
    ({"item_column": "item"}, "transforms[0].item_column = 'item': expected a scalar feature or an extra_meta"),
    ({"time_column": "item_id"}, "transforms[0].time_column = 'item_id': expected a numeric feature"),
    ({"ad_features": {"ad_id": 3}}, "transforms[0].ad_features.ad_id = 3: expected an ads-table column"),
    ({"ad_features": {"brand": "brand"}}, "transforms[0].ad_features.brand = 'brand': expected a scalar feature"),
    ({"rec_splits": ["random"]}, "transforms[0].rec_splits: ['random'] not among the transform's splits"),
    ({"impressions_column": "impressions"}, "transforms[0]: impressions_column and candidate_sessions_column"),
])
def test_config_errors_name_the_option(tmp_path, over, named):
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, tmp_path / "out", [mapping(**over)])
    assert named in str(err.value)


def test_ads_table_errors_name_the_option_file_and_column(tmp_path):
    with pytest.raises(RawInputError, match=r"transforms\[0\]\.ads_table: .*missing\.parquet"):
        cfg = make_config(tmp_path, tmp_path / "out", [mapping(ads_table=str(tmp_path / "missing.parquet"))])
        (t,) = cfg.transform_steps()
        t.prepare(cfg)
    pq.write_table(pa.Table.from_pandas(ADS.drop(columns=["created_at"]), preserve_index=False),
                   str(tmp_path / "ads.parquet"))
    cfg = make_config(tmp_path, tmp_path / "out", [mapping(ads_table=str(tmp_path / "ads.parquet"))])
    (t,) = cfg.transform_steps()
    with pytest.raises(RawInputError, match=r"transforms\[0\]\.ads_table: .*ads\.parquet lacks the column\(s\) "
                                            r"\['created_at'\]"):
        t.prepare(cfg)
    ADS.to_csv(tmp_path / "ads.csv", index=False)  # CSV works as Parquet does
    cfg = make_config(tmp_path, tmp_path / "out", [mapping(ads_table=str(tmp_path / "ads.csv"))])
    (t,) = cfg.transform_steps()
    t.prepare(cfg)
    assert set(picked(t, rec_batch(["i1"] * 300, [450] * 300))[1]) == {"a2", "a3", "a4"}


@pytest.mark.parametrize("path, named", [
    ([], "input.path = []: expected"),
    (["a/*.parquet", 3], "input.path[1] = 3: expected a file, folder or glob"),
    (["a/*.parquet", ""], "input.path[1] = '': expected"),
])
def test_input_path_errors_name_the_entry(tmp_path, path, named):
    with pytest.raises(ConfigError, match=f"^config: {named}".replace("[", r"\[").replace("*", r"\*")):
        make_config(tmp_path, tmp_path / "out", [], input={"path": path})


def test_input_globs_that_match_nothing_or_the_same_file_are_named(tmp_path):
    write_logs(tmp_path / "raw")
    raw = tmp_path / "raw"
    cfg = make_config(raw, tmp_path / "out", [], input={"path": [f"{raw}/ads/*.parquet", f"{raw}/nope/*.parquet"]})
    with pytest.raises(RawInputError, match=r"^input\.path\[1\]: no parquet input files match"):
        run_preprocess(cfg, progress=False)
    cfg = make_config(raw, tmp_path / "out", [], input={"path": [f"{raw}/ads/*.parquet", f"{raw}/*/log.parquet"]})
    with pytest.raises(RawInputError, match=r"^input\.path\[1\] = .* matches .*ads/log\.parquet, which "
                                            r"input\.path\[0\] matches too"):
        run_preprocess(cfg, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["preprocess_sim_rec4ad.yaml", "preprocess_rec4ad_logs.yaml"])
def test_the_rec4ad_configs_load(name):
    cfg = load_config(PreprocessConfig, os.path.join(REPO, "configs", name))
    names = [t.name for t in cfg.transform_steps()]
    assert names == ["pseudo_ad_mapping", "inverse_propensity"] and len(cfg.input.paths()) == 2


def test_ctrflow_preprocess_runs_the_simulator_config(sim_raw, tmp_path):
    """``ctrflow preprocess`` with configs/preprocess_sim_rec4ad.yaml as committed, run where its
    ``demo_out/raw`` is a small simulator output."""
    (tmp_path / "demo_out").mkdir()
    os.symlink(sim_raw, tmp_path / "demo_out" / "raw")
    cmd = [sys.executable, "-m", "pipeline.cli", "preprocess", "--config",
           os.path.join(REPO, "configs", "preprocess_sim_rec4ad.yaml"), "--set", "runner.num_workers=1"]
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.load(open(tmp_path / "demo_out" / "data_rec4ad" / "stats.json"))
    c = stats["transforms"]["pseudo_ad_mapping"]
    assert c["rec_rows_in"] == len(pd.read_parquet(os.path.join(sim_raw, "rec"))) and c["rec_rows_mapped"] > 0
    assert stats["splits"]["train"]["rows_written"] > stats["splits"]["train"]["rows_in"] - c["rec_rows_in"]
    schema = Schema.load(str(tmp_path / "demo_out" / "data_rec4ad"))
    assert {"ips_weight", "ipsc_weight"} <= set(schema.meta) and "ips_weight" not in schema.weight_columns
    ir = stats["transforms"]["pseudo_ad_mapping"]["statistics"]["impression_ratio"]
    assert len(ir["group_means"]) == 12 and ir["group_means"] == sorted(ir["group_means"])

