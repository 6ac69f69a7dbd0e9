"""The ``k_core`` transform: the iterative k-core of all interactions before the split, its
accounting and rounds in stats.json, its config errors, and configs/preprocess_ml1m_hda.yaml."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.beam.driver import run_preprocess
from pipeline.beam.splits import RandomSplit
from pipeline.config import ConfigError, load_config
from pipeline.preprocess_config import PreprocessConfig
from test_preprocess import config, decoded, make_rows, output_files, user_key, write_parquet

REPO = Path(__file__).resolve().parents[2]
REAL_DATA = REPO.parent / "shared/data/kuairand-likehate"
SPLITS = ("train", "valid", "test")
K_CORE = {"name": "k_core", "columns": ["user_id", "item_id"]}

# (user, item, split) per row. With min_count 2, one round is not enough: item 9 has one row
# (round 1), so u3 keeps one (round 2), so item 3 keeps one (round 3); round 4 drops nothing.
# u5's second row is a bad one (quarantined: not counted), and the last row has no item.
# u1 has one row in train and one in valid: only a filter over every split keeps u1.
CHAIN = [("u1", 1, "train"), ("u1", 2, "valid"), ("u2", 1, "train"), ("u2", 2, "test"),
         ("u3", 9, "train"), ("u3", 3, "valid"), ("u4", 3, "train"), ("u4", 1, "train"), ("u4", 2, "test"),
         ("u5", 1, "train"), ("u5", 2, "train"), ("u1", None, "train")]
BAD_ROW = 9
KEPT = {"train": [0, 2, 7], "valid": [1], "test": [3, 8]}  # by hand: rows 4, 5, 6, 10, 11 dropped, 9 quarantined


def chain_log(tmp_path, conv=None) -> None:
    """CHAIN as the input (the other columns from make_rows; ``conv``: a value for every row)."""
    rows = make_rows(n=len(CHAIN))
    if conv is not None:
        rows["conv"] = conv
    rows["user_id"] = [u for u, _, _ in CHAIN]
    rows["item_id"] = pd.Series([i for _, i, _ in CHAIN], dtype=object)
    rows["fold"] = [s for _, _, s in CHAIN]
    rows.loc[BAD_ROW, "click"] = 2
    write_parquet(rows, tmp_path / "raw" / "log.parquet")


def run_chain(tmp_path, **options):
    cfg = config(str(tmp_path / "raw"), str(tmp_path / "out"), transforms=[{**K_CORE, **options}],
                 max_quarantine_fraction=0.5)
    return run_preprocess(cfg, progress=False)


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    chain_log(tmp)
    return str(tmp / "out"), run_chain(tmp, min_count=2)


def test_keeps_the_hand_computed_k_core_after_several_rounds(chain_run):
    out, summary = chain_run
    data = decoded(out)
    assert {s: sorted(data[s]["row_id"].tolist()) for s in SPLITS} == KEPT
    rounds = summary["transforms"]["k_core"]["statistics"]["rounds"]
    assert [(r["rows"], r["below_min_count"], r["rows_removed"]) for r in rounds] == [
        (10, {"user_id": 1, "item_id": 1}, 2),  # item 9 and u5 (its bad row not counted)
        (8, {"user_id": 1, "item_id": 0}, 1),  # u3
        (7, {"user_id": 0, "item_id": 1}, 1),  # item 3
        (6, {"user_id": 0, "item_id": 0}, 0)]  # stable: a k-core


def test_accounting_counts_the_dropped_rows_per_split(chain_run):
    out, summary = chain_run
    assert summary == {**json.load(open(f"{out}/stats.json")), "output": out}
    per_split = {s: (v["rows_in"], v["rows_written"], v["rows_quarantined"], v["rows_dropped_by_transforms"])
                 for s, v in summary["splits"].items()}
    assert per_split == {"train": (8, 3, 1, 4), "valid": (2, 1, 0, 1), "test": (2, 2, 0, 0)}
    for s in summary["splits"].values():
        assert s["rows_in"] == s["rows_written"] + s["rows_quarantined"] + s["rows_dropped_by_transforms"]
        assert s["transforms"]["k_core"]["rows_dropped"] == s["rows_dropped_by_transforms"]
    k = summary["transforms"]["k_core"]
    assert (k["rows_in"], k["rows_out"], k["rows_dropped"], k["rows_missing_value"]) == (11, 6, 5, 1)
    assert k["options"]["splits"] == list(SPLITS)


def test_the_split_statistics_and_head_users_see_only_kept_rows(chain_run):
    out, summary = chain_run
    assert summary["users"]["train_users"] == 3  # u1, u2, u4 (without the filter: u1..u5)
    assert summary["train_rows_for_statistics"] == 3
    assert (Path(out) / "vocab" / "item_id.txt").read_text().split() == ["1"]  # not 2, 3, 9 of dropped train rows
    train_users = set(decoded(out, splits=("train",))["train"]["user_key"].tolist())
    assert train_users == {user_key(u) for u in ("u1", "u2", "u4")}
    head = {int(x) for x in (Path(out) / "head_users.txt").read_text().split()}
    assert len(head) == 1 and head <= train_users


def test_min_count_1_keeps_every_row(tmp_path):
    """k = 1 is no filter: shards, vocabularies, schema and head users equal a run without it."""
    write_parquet(make_rows(n=200, seed=3), tmp_path / "raw" / "log.parquet")
    plain = run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "plain")), progress=False)
    one = run_preprocess(config(str(tmp_path / "raw"), str(tmp_path / "k1"), transforms=[{**K_CORE, "min_count": 1}]),
                         progress=False)
    assert output_files(str(tmp_path / "k1")) == output_files(str(tmp_path / "plain"))
    assert one["rows_written"] == plain["rows_written"] == 200 and one["rows_dropped_by_transforms"] == 0
    assert len(one["transforms"]["k_core"]["statistics"]["rounds"]) == 1


def test_a_filter_removing_every_row_fails_naming_the_transform(tmp_path):
    chain_log(tmp_path)
    with pytest.raises(ValueError, match=r"transforms\[0\] \(k_core of \['user_id', 'item_id'\], min_count 4\) "
                                         r"removes every row: in round 1 no value of \['user_id'\] occurs in 4 rows"):
        run_chain(tmp_path, min_count=4)
    chain_log(tmp_path, conv=0)  # no positive to count
    with pytest.raises(ValueError, match=r"transforms\[0\] \(k_core of .*\): no rows with conv = 1 to count$"):
        run_chain(tmp_path, min_count=2, label="conv")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_max_rounds_without_convergence_fails(tmp_path):
    chain_log(tmp_path)
    with pytest.raises(ValueError, match=r"did not converge in max_rounds = 3 rounds: round 3 still found values "
                                         r"below min_count \({'user_id': 0, 'item_id': 1}\); raise max_rounds"):
        run_chain(tmp_path, min_count=2, max_rounds=3)
    assert not (tmp_path / "out").exists()


# ---- config errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("entries, split, named", [
    ([{**K_CORE, "columns": ["user_id", "movie"]}], None,
     "transforms[0].columns[1] = 'movie': expected a scalar feature or an extra_meta column of the config"),
    ([{**K_CORE, "columns": ["user_id", "hist"]}], None, "transforms[0].columns[1] = 'hist'"),  # a list feature
    ([{"name": "k_core"}], None, "transforms[0].columns: missing"),
    ([{**K_CORE, "columns": "user_id"}], None, "transforms[0].columns = 'user_id': expected a list"),
    ([{**K_CORE, "min_count": 0}], None, "transforms[0].min_count = 0: expected an integer in [1, inf)"),
    ([{**K_CORE, "max_rounds": 0}], None, "transforms[0].max_rounds = 0"),
    ([{**K_CORE, "label": "like"}], None, "transforms[0].label = 'like'"),
    ([{**K_CORE, "splits": ["train"]}], None, "transforms[0].splits: transform 'k_core' filters every split"),
    ([{"name": "negative_downsampling", "rate": 0.5}, K_CORE], None,
     "transforms[1]: transform 'k_core' filters as if before the split; list it before ['negative_downsampling']"),
    ([K_CORE], {"method": "time", "time_column": "ts"}, "transforms[0]: transform 'k_core' filters as if before the "
                                                        "split, which a time split cannot follow"),
])
def test_config_errors_name_the_file_and_key(tmp_path, entries, split, named):
    path = tmp_path / "pre.yaml"
    from test_preprocess import FEATURES

    cfg = {"input": {"path": "raw"}, "output": "out", "features": FEATURES, "labels": ["click"], "transforms": entries}
    if split:
        cfg["split"] = split
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(PreprocessConfig, str(path))
    assert str(err.value).startswith(f"{path}: {named}")


# ---- MovieLens 1M: the HDA config ------------------------------------------------------------
def reference_k_core(df: pd.DataFrame, columns, k: int, label=None) -> pd.Index:
    """The test's own k-core by peeling, in pandas: the labels of the kept rows."""
    kept = df
    while True:
        counted = kept if label is None else kept[kept[label] == 1]
        ok = np.logical_and.reduce([kept[c].isin(counted[c].value_counts().loc[lambda n: n >= k].index)
                                    for c in columns])
        if ok.all():
            return kept.index
        kept = kept[ok]


def write_ml1m(src: Path, seed=2) -> None:
    """MovieLens 1M's three '::' files: 1,500 ratings of 100 users (skewed activity) x 150 movies
    (skewed popularity), so that the 5-core drops a tail in 2+ rounds; every timestamp distinct."""
    rng = np.random.default_rng(seed)
    src.mkdir(parents=True)
    activity = rng.pareto(1.0, 100) + 0.3
    popularity = rng.pareto(1.0, 150) + 0.05
    pairs = set()
    while len(pairs) < 1500:
        pairs.add((int(rng.choice(100, p=activity / activity.sum())) + 1,
                   int(rng.choice(150, p=popularity / popularity.sum())) + 1))
    ratings = [f"{u}::{m}::{rng.integers(1, 6)}::{978_000_000 + i}" for i, (u, m) in enumerate(sorted(pairs))]
    users = [f"{u}::{'FM'[u % 2]}::{[1, 18, 25, 35][u % 4]}::{u % 21}::{10000 + u}" for u in range(1, 101)]
    movies = [f"{m}::Movie {m} (19{60 + m % 40})::{['Drama', 'Comedy|Romance', 'Action'][m % 3]}"
              for m in range(1, 151)]
    for name, lines in (("users.dat", users), ("movies.dat", movies), ("ratings.dat", ratings)):
        (src / name).write_text("\n".join(lines) + "\n", encoding="latin-1")


def test_the_hda_config_is_the_ml1m_config_with_the_paper_protocol():
    hda = load_config(PreprocessConfig, str(REPO / "configs" / "preprocess_ml1m_hda.yaml"))
    ml1m = load_config(PreprocessConfig, str(REPO / "configs" / "preprocess_ml1m.yaml"))
    assert hda.features == ml1m.features and hda.labels == ml1m.labels == ["click"]
    assert hda.transforms == [{"name": "k_core", "columns": ["user_id", "movie_id"], "min_count": 5}]
    assert hda.split.method == "random" and hda.split.ratios == {"train": 0.7, "valid": 0.1, "test": 0.2}
    assert hda.head_user_fraction == 0.2 and hda.output != ml1m.output


@pytest.mark.parametrize("label", [None, "click"])
def test_hda_config_on_movielens_files_keeps_the_5_core_then_splits_at_random(tmp_path, label):
    """configs/preprocess_ml1m_hda.yaml as committed (in one process, timestamps kept as meta to
    identify rows) on MovieLens-format files: the kept rows are the pandas 5-core (of every
    rating, or of the positive ones with ``label``) and each sits in the split the random hash
    of its row key gives, as if the filter ran first."""
    from pipeline.loaders import load_dataset

    write_ml1m(tmp_path / "ml-1m")
    load_dataset("ml1m", str(tmp_path / "ml-1m"), str(tmp_path / "raw"), shard_rows=700)
    over = {"input.path": str(tmp_path / "raw" / "part-*.parquet"), "output": str(tmp_path / "data"),
            "runner.num_workers": 1, "runner.running_mode": "in_memory", "extra_meta": {"timestamp": "int64"}}
    if label:
        over["transforms"] = [{"name": "k_core", "columns": ["user_id", "movie_id"], "min_count": 5, "label": label}]
    cfg = load_config(PreprocessConfig, str(REPO / "configs" / "preprocess_ml1m_hda.yaml"), over)
    summary = run_preprocess(cfg, progress=False)

    split = RandomSplit(cfg.split.ratios, cfg.split.seed)  # a row's split: a hash of (file, row)
    shards = [pq.read_table(f).to_pandas() for f in sorted((tmp_path / "raw").glob("part-*.parquet"))]
    raw = pd.concat([t.assign(split=split(f"part-{i:05d}.parquet", np.arange(len(t)))) for i, t in enumerate(shards)],
                    ignore_index=True)
    assert len(shards) == 3
    kept = raw.loc[reference_k_core(raw, ["user_id", "movie_id"], 5, label)]
    assert 0 < len(kept) < len(raw) - 100
    out = decoded(str(tmp_path / "data"))
    for i, s in enumerate(SPLITS):
        want = kept[kept.split == i]
        assert sorted(zip(out[s]["user_key"].tolist(), out[s]["timestamp"].tolist())) == \
            sorted(zip(want.user_id, want.timestamp)), s
    rounds = summary["transforms"]["k_core"]["statistics"]["rounds"]
    assert len(rounds) >= 3 and rounds[-1]["rows_removed"] == 0
    assert summary["rows_dropped_by_transforms"] == len(raw) - len(kept)
    assert summary["users"]["train_users"] == kept[kept.split == 0].user_id.nunique()


@pytest.mark.real_data
def test_real_kuairand_slice_15_core_of_the_likes(tmp_path):
    """The real KuaiRand like/hate slice (41,828 rows), split at random: the 15-core of the likes
    peels in 11 rounds (users and videos in turn) and keeps exactly the rows pandas' peeling keeps."""
    from pipeline.loaders import load_dataset

    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent")
    load_dataset("kuairand_likehate", str(REAL_DATA), str(tmp_path / "raw"), shard_rows=20_000)
    over = {"input.path": str(tmp_path / "raw" / "part-*.parquet"), "output": str(tmp_path / "data"),
            "split": {"method": "random", "ratios": {"train": 0.8, "valid": 0.1, "test": 0.1}},
            "runner.num_workers": 1, "runner.running_mode": "in_memory", "extra_meta": {"time_ms": "int64"},
            "transforms": [{"name": "k_core", "columns": ["user_id", "video_id"], "min_count": 15, "label": "like"}]}
    summary = run_preprocess(load_config(PreprocessConfig, str(REPO / "configs" / "preprocess_kuairand_likehate.yaml"),
                                         over), progress=False)
    raw = pd.concat([pq.read_table(f).to_pandas() for f in sorted((tmp_path / "raw").glob("part-*.parquet"))],
                    ignore_index=True)
    kept = raw.loc[reference_k_core(raw, ["user_id", "video_id"], 15, "like")]
    out = decoded(str(tmp_path / "data"))
    got = sorted(x for s in SPLITS for x in zip(out[s]["user_key"].tolist(), out[s]["time_ms"].tolist()))
    assert got == sorted(zip(kept.user_id, kept.time_ms)) and len(got) == 21_201
    rounds = summary["transforms"]["k_core"]["statistics"]["rounds"]
    assert len(rounds) == 11 and rounds[0]["rows"] == int((raw.like == 1).sum())


@pytest.mark.slow
def test_dask_runner_gives_the_same_k_core(tmp_path, chain_run):
    """On the Dask runner (the job in passes) the rounds run as passes too: outputs equal the
    DirectRunner's byte for byte, and so do the counts."""
    from dask.distributed import LocalCluster

    direct_out, direct = chain_run
    chain_log(tmp_path)
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        runner = {"name": "DaskRunner", "dask_address": cluster.scheduler_address}
        cfg = config(str(tmp_path / "raw"), str(tmp_path / "dask"), transforms=[{**K_CORE, "min_count": 2}],
                     max_quarantine_fraction=0.5, runner=runner)
        dask = run_preprocess(cfg, progress=False)
    assert output_files(str(tmp_path / "dask")) == output_files(direct_out)
    assert dask["transforms"] == direct["transforms"] and dask["splits"] == direct["splits"]
