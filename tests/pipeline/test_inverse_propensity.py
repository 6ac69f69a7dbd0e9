"""Inverse-propensity weights for the IPS / IPS-C baselines
(``pipeline/beam/transforms/inverse_propensity.py``) against a hand computation."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.schema import Schema
from pipeline.beam.driver import run_preprocess
from pipeline.config import ConfigError
from pipeline.data import read_columns
from test_pseudo_ad_mapping import make_config

# impression ratios: a1 0.01, a2 0 (clipped to min_ratio), a3 0.5, a5 no candidate session; a4 is not in the table
TABLE = pd.DataFrame({"ad_id": ["a1", "a2", "a3", "a5"], "impressions": [1, 0, 50, 0],
                      "candidate_sessions": [100, 50, 100, 0]})
# (ad, source, fold) of every log row
ROWS = ([("a1", "ad", "train")] * 3 + [("a2", "ad", "train"), ("a3", "ad", "train"), ("a3", "ad", "train"),
        ("a4", "ad", "train"), ("a5", "ad", "train"), (None, "rec", "train"), (None, "rec", "train"),
        ("a1", "ad", "valid"), ("a2", "ad", "valid")])


def ips(tmp_path, **over):
    return {"name": "inverse_propensity", "ads_table": str(tmp_path / "ads.parquet"), "min_ratio": 0.001,
            "cap": 2.0, **over}


def write(tmp_path):
    pq.write_table(pa.Table.from_pandas(TABLE, preserve_index=False), str(tmp_path / "ads.parquet"))
    n = len(ROWS)
    ad, source, fold = zip(*ROWS)
    cols = {"item_id": ["i1"] * n, "ad_id": list(ad), "campaign_id": ["c1"] * n, "bid": [1.0] * n,
            "ad_age_days": [1.0] * n, "timestamp": [1000] * n, "source": list(source), "fold": list(fold),
            "click": [0, 1] * (n // 2), "row_id": list(range(n))}
    types = {"bid": pa.float32(), "ad_age_days": pa.float32(), "timestamp": pa.int64(), "click": pa.int64(),
             "row_id": pa.int64()}
    (tmp_path / "raw" / "log").mkdir(parents=True)
    pq.write_table(pa.table({c: pa.array(v, type=types.get(c, pa.string())) for c, v in cols.items()}),
                   str(tmp_path / "raw" / "log" / "part.parquet"))


def weights(tmp_path, **over):
    write(tmp_path)
    cfg = make_config(tmp_path / "raw", tmp_path / "out", [ips(tmp_path, **over)],
                      input={"path": str(tmp_path / "raw" / "log")})
    summary = run_preprocess(cfg, progress=False)
    out = {}
    for split in ("train", "valid"):
        c = read_columns(str(tmp_path / "out"), split, ["row_id", "ips_weight", "ipsc_weight"])
        out[split] = pd.DataFrame({k: np.asarray(v).reshape(-1) for k, v in c.items()}).set_index("row_id")
    return pd.concat(out.values()).sort_index(), summary


def test_ips_weights_equal_a_hand_computation(tmp_path):
    got, summary = weights(tmp_path)
    inverse = {"a1": 1 / 0.01, "a2": 1 / 0.001, "a3": 1 / 0.5}  # 1 / max(IR, min_ratio)
    train_known = [inverse[a] for a, s, f in ROWS if f == "train" and s == "ad" and a in inverse]
    mean = np.mean(train_known)  # over the training split's ad rows that have a propensity
    want = [inverse[a] / mean if f == "train" and s == "ad" and a in inverse else 1.0 for a, s, f in ROWS]
    np.testing.assert_allclose(got.ips_weight, want, rtol=1e-6)
    np.testing.assert_allclose(got.ipsc_weight, np.minimum(want, 2.0), rtol=1e-6)
    train_ad = [w for w, (a, s, f) in zip(want, ROWS) if f == "train" and s == "ad" and a in inverse]
    assert np.mean(train_ad) == pytest.approx(1.0)  # normalised: the loss keeps its scale
    c = summary["transforms"]["inverse_propensity"]
    assert (c["ad_rows"], c["ad_rows_without_ratio"], c["ad_rows_capped"]) == (8, 2, 1)  # a4, a5; a2 capped
    schema = Schema.load(str(tmp_path / "out"))
    assert schema.meta["ips_weight"] == "float32" and "ips_weight" not in schema.weight_columns


def test_the_clip_and_the_cap_are_options(tmp_path):
    got, _ = weights(tmp_path, min_ratio=0.02, cap=100.0)
    inverse = {"a1": 1 / 0.02, "a2": 1 / 0.02, "a3": 1 / 0.5}
    mean = np.mean([inverse[a] for a, s, f in ROWS if f == "train" and s == "ad" and a in inverse])
    assert got.ips_weight[0] == pytest.approx(inverse["a1"] / mean, rel=1e-6)
    assert got.ips_weight[3] == pytest.approx(inverse["a2"] / mean, rel=1e-6)
    assert (got.ipsc_weight == got.ips_weight).all()  # nothing reaches the cap


@pytest.mark.parametrize("over, named", [
    ({"ads_table": None}, "transforms[0].ads_table: missing"),
    ({"min_ratio": 0}, "transforms[0].min_ratio = 0"),
    ({"cap": 0.5}, "transforms[0].cap = 0.5: expected a number in [1, inf)"),
    ({"ad_column": "advertiser"}, "transforms[0].ad_column = 'advertiser': expected a scalar feature"),
    ({"capped_column": "ips_weight"}, "transforms[0].capped_column = 'ips_weight': the same name"),
])
def test_config_errors_name_the_option(tmp_path, over, named):
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, tmp_path / "out", [ips(tmp_path, **over)])
    assert named in str(err.value)
