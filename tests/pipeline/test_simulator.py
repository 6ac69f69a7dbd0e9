"""The ads-world simulator: determinism, streaming, and the ground truth every method relies on."""
import dataclasses
import glob
import hashlib
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.preprocess_config import PreprocessConfig
from pipeline.simulator import SimulatorConfig, simulate
from pipeline.simulator.chunk import exposure_counts, histories, make_plan, simulate_chunk
from pipeline.simulator.clicks import GroundTruth
from pipeline.simulator.config import AdsSystemConfig
from pipeline.simulator.premises import ir_group_of_ads, source_effect
from pipeline.simulator.run import gini, top_share
from pipeline.simulator.systems import rank
from pipeline.simulator.world import build_world

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(num_users=400, num_items=300, num_ads=500, num_impressions=20000, rec_impressions=3000,
            random_impressions=6000, shard_rows=6000, chunk_rows=7000)


def _run(out_dir, **overrides):
    cfg = SimulatorConfig(**{**TINY, "out_dir": str(out_dir), **overrides})
    return cfg, simulate(cfg, progress=False)


def _log(out_dir, name):
    return pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(os.path.join(out_dir, name, "part-*.parquet")))],
                     ignore_index=True)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    cfg, summary = _run(out)
    logs = {name: _log(out, name) for name in ("ads", "rec", "random")}
    return cfg, summary, str(out), logs


def _files(out_dir):
    paths = sorted(glob.glob(os.path.join(out_dir, "*", "part-*"))) + sorted(
        p for p in glob.glob(os.path.join(out_dir, "*.*")) if not p.endswith("summary.json"))
    return {os.path.relpath(p, out_dir): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def test_same_seed_same_files_different_seed_differs(sim, tmp_path):
    cfg, _, out, _ = sim
    _run(tmp_path / "again")
    first, again = _files(out), _files(str(tmp_path / "again"))
    assert len(first) >= 10 and first == again
    _run(tmp_path / "other", seed=cfg.seed + 1)
    other = _files(str(tmp_path / "other"))
    assert other.keys() == first.keys()
    assert other["ads/part-00000.parquet"] != first["ads/part-00000.parquet"]
    assert other["users.parquet"] != first["users.parquet"]


def test_logs_are_streamed_into_bounded_shards_with_exact_row_counts(sim):
    cfg, summary, out, logs = sim
    for name, rows in (("ads", cfg.num_impressions), ("rec", cfg.rec_impressions), ("random", cfg.random_impressions)):
        sizes = [pq.ParquetFile(p).metadata.num_rows for p in summary["shards"][name]]
        assert sum(sizes) == rows == len(logs[name]) == summary["rows"][name]
        assert all(s == cfg.shard_rows for s in sizes[:-1]) and 0 < sizes[-1] <= cfg.shard_rows
    assert len(summary["shards"]["ads"]) == 4  # 20000 rows / 6000 per shard
    ids = pd.concat([logs[n].impression_id for n in logs])
    assert ids.is_unique and ids.min() == 0 and ids.max() == len(ids) - 1
    with open(os.path.join(out, "summary.json")) as fh:
        assert json.load(fh)["rows"] == summary["rows"]


def test_columns_and_types(sim):
    _, _, out, logs = sim
    schema = pq.read_schema(os.path.join(out, "ads", "part-00000.parquet"))
    types = {f.name: f.type for f in schema}
    assert types["user_id"] == pa.string() and types["price"] == pa.float32() and types["timestamp"] == pa.int64()
    for name, value_type in (("hist_category", pa.string()), ("hist_item", pa.string()), ("hist_ts", pa.int64()),
                             ("hist_gap", pa.int64()),
                             ("user_pretrained", pa.float32()), ("item_pretrained", pa.float32())):
        assert pa.types.is_list(types[name]) and types[name].value_type == value_type, name
    assert set(pq.read_schema(os.path.join(out, "rec", "part-00000.parquet")).names) == set(types)
    ads, rec, rnd = logs["ads"], logs["rec"], logs["random"]
    assert ads.user_id.str.match(r"^u\d+$").all() and ads.ad_id.str.match(r"^a\d+$").all()
    assert (ads.source == "ad").all() and (ads.policy == "production").all()
    assert (rnd.source == "ad").all() and (rnd.policy == "random").all()
    assert (rec.source == "rec").all() and rec.ad_id.isna().all() and rec.bid.isna().all()
    assert ads.user_pretrained.map(len).eq(16).all() and ads.item_pretrained.map(len).eq(16).all()
    assert set(ads.position) == {1, 2, 3} and set(rec.position) == set(range(1, 11))
    assert ads.hour.between(0, 23).all() and ads.weekday.between(0, 6).all()
    assert (ads.ad_age_days >= 0).all()
    # hour/weekday agree with the timestamp
    when = pd.to_datetime(ads.timestamp, unit="s", utc=True)
    assert (when.dt.hour == ads.hour).all() and (when.dt.weekday == ads.weekday).all()
    # ads belong to their campaign's item
    ad_table = pd.read_parquet(os.path.join(out, "ads.parquet")).set_index("ad_id")
    assert (ad_table.loc[ads.ad_id, "item_id"].values == ads.item_id.values).all()
    assert (ad_table.loc[ads.ad_id, "campaign_id"].values == ads.campaign_id.values).all()


def test_head_users_produce_at_least_half_of_ad_impressions(sim):
    _, summary, out, logs = sim
    per_user = logs["ads"].user_id.value_counts()
    assert top_share(per_user.values, 0.2) >= 0.5
    assert summary["head_user_share"] == pytest.approx(top_share(per_user.values, 0.2), abs=1e-6)
    users = pd.read_parquet(os.path.join(out, "users.parquet")).set_index("user_id")
    assert users.is_head.mean() == pytest.approx(0.2, abs=0.01)
    assert per_user.reindex(users.index[users.is_head], fill_value=0).sum() / per_user.sum() >= 0.5


def test_long_tail_users_prefer_partly_differently(sim):
    cfg, _, out, _ = sim
    users = pd.read_parquet(os.path.join(out, "users.parquet"))
    z = np.stack(users.interest)
    head, tail = z[users.is_head], z[~users.is_head]
    shift = np.linalg.norm(tail.mean(0) - head.mean(0))
    assert shift == pytest.approx(cfg.users.tail_interest_shift, rel=0.35)
    spread = np.linalg.norm(head - head.mean(0), axis=1).mean()
    assert spread > shift / 2  # partly: the shift does not separate the groups completely


def test_ad_impressions_are_concentrated_but_random_policy_is_uniform(sim):
    cfg, summary, out, logs = sim
    ads = pd.read_parquet(os.path.join(out, "ads.parquet"))
    # production: impression ratio (Rec4Ad Eq. 2) skewed; many candidates almost never shown
    seen = ads[ads.candidate_sessions > 0]
    assert gini(seen.impression_ratio) > 0.6
    assert top_share(seen.impressions, 0.1) > 0.4
    # random policy: each candidate shown with probability slots / candidates, independently per session
    p = cfg.random_policy.slots / cfg.random_policy.candidates
    r = ads[ads.random_candidate_sessions >= 20]
    z2 = (r.random_impressions - r.random_candidate_sessions * p) ** 2 / (r.random_candidate_sessions * p * (1 - p))
    assert len(r) > 100 and z2.mean() < 1.5  # binomial dispersion: uniform display
    prod = seen[seen.candidate_sessions >= 20]
    p_prod = prod.impressions.sum() / prod.candidate_sessions.sum()
    expected_prod = prod.candidate_sessions * p_prod
    z2_prod = (prod.impressions - expected_prod) ** 2 / (expected_prod * (1 - p_prod))
    assert z2_prod.mean() > 20 * z2.mean()
    assert summary["ads_impression_ratio_gini"] > summary["random_impression_ratio_gini"] + 0.3
    assert summary["ads_top10_ad_share"] > 1.8 * summary["random_top10_ad_share"]
    # logged counts agree with the logs
    counts = logs["ads"].ad_id.value_counts()
    assert (ads.set_index("ad_id").impressions.loc[counts.index] == counts).all()


def test_rec_log_covers_items_whose_ads_are_rarely_shown(sim):
    """Rec4Ad Fig. 5: items of low-IR ads still get a real share of rec impressions."""
    _, _, out, logs = sim
    ads = pd.read_parquet(os.path.join(out, "ads.parquet"))
    per_item = ads.groupby("item_id")[["impressions", "candidate_sessions"]].sum()
    ratio = per_item.impressions / per_item.candidate_sessions.clip(lower=1)
    low = ratio.index[ratio.rank(method="first") <= len(ratio) / 4]  # lowest-IR quarter of ad items
    ads_share = per_item.impressions.loc[low].sum() / per_item.impressions.sum()
    rec_on_ad_items = logs["rec"][logs["rec"].item_id.isin(per_item.index)]
    rec_share = rec_on_ad_items.item_id.isin(low).mean()
    assert ads_share < 0.02 and rec_share > 0.1


def test_rec_log_covers_low_ir_groups_in_the_summary(sim):
    """Rec4Ad Fig. 5 left, as summary.json reports it: the bottom 25 % of ads by IR (the last 3
    of 12 groups) get ~1 % of ad impressions but a quarter of the rec impressions on ad items;
    recomputed here from ads.parquet and the rec log."""
    _, summary, out, logs = sim
    g = summary["rec4ad_premises"]["ir_groups"]
    ads = pd.read_parquet(os.path.join(out, "ads.parquet"))
    shown = ads[ads.impressions > 0].copy()
    shown["group"] = ir_group_of_ads(ads.impressions.values, ads.candidate_sessions.values)[ads.impressions > 0]
    rec_count = logs["rec"].item_id.value_counts()
    shown["rec"] = shown.item_id.map(rec_count).fillna(0) / shown.item_id.map(shown.item_id.value_counts())
    bottom = shown.group >= 9
    assert g["bottom_quarter_ads_impression_share"] == pytest.approx(
        shown.impressions[bottom].sum() / shown.impressions.sum(), abs=1e-6)
    assert g["bottom_quarter_rec_impression_share"] == pytest.approx(shown.rec[bottom].sum() / shown.rec.sum(), abs=1e-6)
    assert g["bottom_quarter_ads_impression_share"] < 0.03 and g["bottom_quarter_rec_impression_share"] > 0.15


def test_impression_ratios_span_orders_of_magnitude(sim):
    """Rec4Ad Fig. 4 left: ads of the ads log sorted by IR (Eq. 2) in 12 equal groups; the first
    group's mean IR is ~200x the last's in the paper (loose bound here, a small world); under the
    random policy the same statistic stays near binomial noise."""
    _, summary, out, _ = sim
    g = summary["rec4ad_premises"]["ir_groups"]
    ads = pd.read_parquet(os.path.join(out, "ads.parquet"))

    def group_means(impressions, ratio):
        return np.array([x.mean() for x in np.array_split(np.sort(ratio[impressions > 0])[::-1], 12)])

    means = group_means(ads.impressions.values, ads.impression_ratio.values)
    np.testing.assert_allclose(g["mean_ir"], means, atol=1e-6)
    assert g["top_bottom_ir_ratio"] == pytest.approx(means[0] / means[-1], rel=1e-3)
    assert np.all(np.diff(means) <= 0) and means[0] / means[-1] > 50
    random = group_means(ads.random_impressions.values, ads.random_impression_ratio.values)
    assert random[0] / random[-1] < 10


def test_ir_groups_by_hand():
    impressions = np.array([0, 5, 1, 2, 2, 9])
    candidates = np.array([4, 10, 10, 4, 4, 10])  # IR: -, .5, .1, .5, .5, .9
    np.testing.assert_array_equal(ir_group_of_ads(impressions, candidates, groups=3), [-1, 0, 2, 1, 1, 0])


def test_click_model_has_no_source_term(sim):
    """Shared decision rationales (Rec4Ad Sec. 1): an organic item's click logit equals that of
    an ad for the same item, user and time whose creative terms are 0 (quality 0 = the ads'
    mean, no novelty): the ground truth has no source term (a separate rec intercept fails)."""
    cfg, _, _, _ = sim
    gt = GroundTruth(build_world(cfg), cfg)
    world = dataclasses.replace(gt.w, quality=np.zeros_like(gt.w.quality))
    plain = GroundTruth(world, cfg)
    rng = np.random.default_rng(0)
    users = rng.integers(0, world.num_users, 50)
    t = rng.uniform(0, cfg.timeline.days * 86400, 50)
    ads = rng.integers(0, world.num_ads, (50, 7))
    items = world.ad_item[ads]
    organic = plain.static_logit(users, items, None, t)
    as_ads = plain.static_logit(users, items, ads, t, ad_age_days=np.full(ads.shape, np.inf))
    np.testing.assert_allclose(organic, as_ads, atol=1e-6)
    # with its creative terms, an ad differs from the organic item by exactly those terms
    age = gt.ad_age_days(ads, t[:, None])
    creative = cfg.click.quality_weight * gt.w.quality[ads] + cfg.click.novelty_weight * np.exp(-age / cfg.click.novelty_days)
    np.testing.assert_allclose(gt.static_logit(users, items, ads, t) - organic, creative, atol=1e-5)


def test_click_terms_spell_out_the_logged_true_ctr(sim):
    """GroundTruth.click_terms (the source regression's covariates) times click_weights, plus the
    one bias, gives every logged row's true_ctr in all three logs: the fused ranking path and the
    term-by-term form are the same function, for ads and organic rows alike."""
    cfg, _, _, _ = sim
    world = build_world(cfg)
    gt = GroundTruth(world, cfg)
    result = simulate_chunk(gt, make_plan(cfg, world), 0, np.random.default_rng([cfg.seed, 2, 0]))
    weights = np.array(list(gt.click_weights().values()))
    for name, rows in result.logs.items():
        terms = gt.click_terms(rows.user, rows.item, rows.ad, rows.t_rel, rows.intent_match,
                               rows.position, rows.exposure_count)
        expected = 1 / (1 + np.exp(-(cfg.click.bias + terms @ weights)))
        np.testing.assert_allclose(rows.true_ctr, expected, rtol=2e-4, err_msg=name)


def test_rec_and_ad_clicks_share_one_function_of_the_features(sim):
    """A logistic regression of click on the click model's terms plus 1[rec] (summary.json) finds
    no source effect and recovers the main weights."""
    _, summary, _, _ = sim
    effect = summary["rec4ad_premises"]["source_effect"]
    assert effect["rec_rows"] == 3000 and effect["rows"] == 23000
    assert abs(effect["source_rec_z"]) < 3 and abs(effect["source_rec"]) < 0.3
    for term in ("interest", "intent", "log2_position", "quality"):
        c = effect["coefficients"][term]
        assert abs(c["fit"] - c["true"]) < 4 * c["se"], term


def test_source_effect_recovers_known_coefficients_and_survives_degenerate_samples():
    """By hand: clicks drawn from known weights (a source effect of -0.5) are recovered; a
    constant term (no weekend in a one-day world) is left out as None instead of making the
    information matrix singular; a sample too small to fit reports source_rec None."""
    rng = np.random.default_rng(0)
    n = 20000
    terms = np.column_stack([rng.normal(size=n), np.zeros(n)])
    is_rec = rng.random(n) < 0.4
    click = rng.random(n) < 1 / (1 + np.exp(-(-2.0 + 1.5 * terms[:, 0] - 0.5 * is_rec)))
    effect = source_effect(terms, ["a", "weekend"], is_rec, click, {"a": 1.5, "weekend": 0.1}, -2.0)
    coef = effect["coefficients"]
    for name, true in (("intercept", -2.0), ("a", 1.5), ("source_rec", -0.5)):
        assert abs(coef[name]["fit"] - true) < 4 * coef[name]["se"], name
    assert coef["weekend"]["fit"] is None and effect["source_rec_z"] < -4
    tiny = source_effect(terms[:3], ["a", "weekend"], np.array([True, False, False]), np.array([1, 0, 0]),
                         {"a": 1.5, "weekend": 0.1}, -2.0)
    assert tiny["source_rec"] is None and tiny["rows"] == 3


def test_source_regression_detects_a_planted_source_effect(tmp_path, monkeypatch):
    """The check has power: organic items given +0.7 on the logit (the old ad_bias / rec_bias
    gap) show a source coefficient of that size."""
    fused = GroundTruth.static_logit

    def with_rec_bonus(self, users, items, ads, t_rel, ad_age_days=None):
        logit = fused(self, users, items, ads, t_rel, ad_age_days)
        return logit + np.float32(0.7) if ads is None else logit

    monkeypatch.setattr(GroundTruth, "static_logit", with_rec_bonus)
    _, summary = _run(tmp_path / "planted")
    effect = summary["rec4ad_premises"]["source_effect"]
    assert effect["source_rec"] == pytest.approx(0.7, abs=4 * effect["source_rec_se"])
    assert effect["source_rec_z"] > 4


def test_rec_rows_sample_retrieval_can_map_are_counted(sim):
    """rec4ad_premises.rec_retrievable_rows = rec rows whose item has an ad created by then
    (Rec4Ad Sec. 3.1), recomputed from ads.parquet and the rec log."""
    _, summary, out, logs = sim
    ads = pd.read_parquet(os.path.join(out, "ads.parquet"))
    first_ad = ads.groupby("item_id").created_at.min()
    rec = logs["rec"]
    expected = int((rec.item_id.map(first_ad) <= rec.timestamp).sum())
    p = summary["rec4ad_premises"]
    assert p["rec_retrievable_rows"] == expected and 0.3 * len(rec) < expected < 0.5 * len(rec)
    assert p["rec_retrievable_per_ads_row"] == pytest.approx(expected / len(logs["ads"]), abs=1e-6)


def test_default_world_holds_rec4ad_premises(tmp_path):
    """The default config (configs/simulate_default.yaml): IR first / last of 12 groups within
    2x of the paper's ~200x, the rec rows retrieval keeps are 30-50 % of the ads log (the paper:
    0.6 B vs 1.9 B), no source effect, the bottom IR quarter far better covered by rec."""
    cfg = load_config(SimulatorConfig, os.path.join(REPO, "configs", "simulate_default.yaml"),
                      {"out_dir": str(tmp_path / "default")})
    p = simulate(cfg, progress=False)["rec4ad_premises"]
    g = p["ir_groups"]
    assert 100 < g["top_bottom_ir_ratio"] < 400
    assert 0.3 < p["rec_retrievable_per_ads_row"] < 0.5
    assert abs(p["source_effect"]["source_rec_z"]) < 3
    assert g["bottom_quarter_rec_impression_share"] > 10 * g["bottom_quarter_ads_impression_share"]


def test_premises_table_in_the_docs_is_the_bench_rendering_of_its_json():
    """docs/simulator.md quotes bench/rec4ad_premises.py's table() of the committed JSON verbatim."""
    import importlib.util
    import sys
    sys.path.insert(0, os.path.join(REPO, "bench"))
    spec = importlib.util.spec_from_file_location("rec4ad_premises", os.path.join(REPO, "bench", "rec4ad_premises.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with open(os.path.join(REPO, "docs", "results", "rec4ad_premises.json")) as fh:
        table = bench.table(json.load(fh))
    with open(os.path.join(REPO, "docs", "simulator.md"), encoding="utf-8") as fh:
        assert table in fh.read()


def test_selection_bias_production_picks_higher_true_ctr_than_random(sim):
    _, _, _, logs = sim
    assert logs["ads"].true_ctr.mean() > 1.3 * logs["random"].true_ctr.mean()


def test_true_probabilities_are_calibrated(sim):
    _, summary, _, logs = sim
    for name, log in logs.items():
        assert ((log.true_ctr > 0) & (log.true_ctr < 1)).all() and ((log.true_cvr > 0) & (log.true_cvr < 1)).all()
        se = np.sqrt(log.true_ctr.mean() * (1 - log.true_ctr.mean()) / len(log))
        assert abs(log.click.mean() - log.true_ctr.mean()) < 4 * se, name
    ads = logs["ads"]
    bins = pd.qcut(ads.true_ctr, 5)
    table = ads.groupby(bins, observed=True).agg(ctr=("click", "mean"), p=("true_ctr", "mean"), n=("click", "size"))
    assert (np.abs(table.ctr - table.p) < 4 * np.sqrt(table.p * (1 - table.p) / table.n)).all()
    assert table.ctr.is_monotonic_increasing
    clicked = ads[ads.click == 1]
    se = np.sqrt(clicked.true_cvr.mean() * (1 - clicked.true_cvr.mean()) / len(clicked))
    assert abs(clicked.conversion.mean() - clicked.true_cvr.mean()) < 4 * se
    assert summary["ads_ctr"] == pytest.approx(ads.click.mean(), abs=1e-6)


def test_conversions_only_after_clicks_and_drivers_differ(sim):
    _, _, _, logs = sim
    for log in logs.values():
        assert (log.conversion <= log.click).all()
        assert log.conversion.sum() > 0
    ads = logs["ads"]
    assert 0.0 < np.corrcoef(ads.true_ctr, ads.true_cvr)[0, 1] < 0.8  # related but partly different


def test_behaviour_sequences_are_the_users_earlier_clicks(sim):
    cfg, _, _, logs = sim
    rows = pd.concat(logs.values(), ignore_index=True)
    clicks = rows[rows.click == 1].sort_values(["user_id", "session_id", "position"])
    by_user = {u: g for u, g in clicks.groupby("user_id")}
    checked = 0
    for row in rows.sample(3000, random_state=0).itertuples():
        g = by_user.get(row.user_id)
        earlier = g[g.timestamp < row.timestamp] if g is not None else clicks.iloc[:0]
        earlier = earlier.iloc[-cfg.seq_max_len:]
        assert list(row.hist_item) == list(earlier.item_id)
        assert list(row.hist_category) == list(earlier.category)
        assert list(row.hist_ts) == list(earlier.timestamp)
        assert list(row.hist_gap) == list(row.timestamp - earlier.timestamp)  # seconds to this impression
        checked += len(earlier) > 0
    assert checked > 1000
    assert rows.hist_ts.map(lambda h: bool(np.all(np.diff(h) >= 0))).all()  # most recent last
    gaps = np.concatenate(rows.hist_gap.values)
    assert gaps.min() >= 1 and len(gaps) == rows.hist_ts.map(len).sum()  # strictly earlier: positive gaps
    assert np.array_equal(gaps, np.repeat(rows.timestamp.values, rows.hist_ts.map(len)) - np.concatenate(
        rows.hist_ts.values))  # every row, aligned element by element with hist_ts (and hist_item)
    assert np.array_equal(np.float32(gaps).astype(np.int64), gaps)  # float32 holds them to the second


def test_repeated_exposures_exist_and_are_counted(sim):
    cfg, summary, _, logs = sim
    window = cfg.timeline.exposure_window_seconds
    ad_rows = pd.concat([logs["ads"], logs["random"]], ignore_index=True).sort_values(["session_id", "position"])
    expected = []
    for _, g in ad_rows.groupby(["user_id", "ad_id"], sort=False):
        ts = g.timestamp.values
        expected.append(pd.Series([int(np.sum((ts[:i] >= ts[i] - window))) for i in range(len(ts))], index=g.index))
    expected = pd.concat(expected).reindex(ad_rows.index)
    assert (expected == ad_rows.exposure_count).all()
    assert (logs["ads"].exposure_count > 0).mean() > 0.03
    assert summary["ads_repeated_exposure_share"] == pytest.approx((logs["ads"].exposure_count > 0).mean(), abs=1e-6)
    # fatigue: repeated impressions are clicked less (the premise of REW weights)
    ads = logs["ads"]
    assert ads[ads.exposure_count >= 2].true_ctr.mean() < ads[ads.exposure_count == 0].true_ctr.mean()


def test_pretrained_embeddings_are_noisy_views_of_the_latents(sim):
    _, _, out, _ = sim
    users = pd.read_parquet(os.path.join(out, "users.parquet"))
    items = pd.read_parquet(os.path.join(out, "items.parquet"))
    pre_u = pd.read_parquet(os.path.join(out, "pretrained_user.parquet"))
    pre_i = pd.read_parquet(os.path.join(out, "pretrained_item.parquet"))
    assert (pre_u.user_id == users.user_id).all() and (pre_i.item_id == items.item_id).all()
    z, pu = np.stack(users.interest), np.stack(pre_u.embedding)
    v, pi = np.stack(items.latent), np.stack(pre_i.embedding)
    for latent, view in ((z, pu), (v, pi)):
        coef, *_ = np.linalg.lstsq(view, latent, rcond=None)
        r2 = 1 - ((latent - view @ coef) ** 2).sum() / ((latent - latent.mean(0)) ** 2).sum()
        assert 0.5 < r2 < 0.99  # informative but noisy
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, len(z), 5000), rng.integers(0, len(v), 5000)
    true_aff, pre_aff = (z[u] * v[i]).sum(1), (pu[u] * pi[i]).sum(1)
    assert np.corrcoef(true_aff, pre_aff)[0, 1] > 0.5  # their similarity tracks the true interest


def test_visually_similar_items_have_closer_images(sim):
    _, _, out, _ = sim
    images = np.load(os.path.join(out, "item_images.npy"))
    items = pd.read_parquet(os.path.join(out, "items.parquet"))
    assert images.shape == (len(items), 32, 32, 3) and images.dtype == np.uint8
    vis = np.stack(items.visual).astype(np.float64)
    diff = np.abs(vis[:, None] - vis[None])
    diff[..., :2] = np.minimum(diff[..., :2], 1 - diff[..., :2])  # hues are circular
    dist = np.sqrt((diff ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    nearest = dist.argmin(1)
    flat = images.reshape(len(images), -1).astype(np.float64)
    near_d = np.linalg.norm(flat - flat[nearest], axis=1)
    rand_d = np.linalg.norm(flat - flat[np.random.default_rng(0).permutation(len(flat))], axis=1)
    assert near_d.mean() < 0.5 * rand_d.mean()


def test_csv_format_writes_the_same_rows(sim, tmp_path):
    _, _, _, logs = sim
    _, summary = _run(tmp_path / "csv", format="csv")
    assert all(p.endswith(".csv") for p in summary["shards"]["ads"])
    csv = pd.concat([pd.read_csv(p, keep_default_na=False) for p in summary["shards"]["ads"]], ignore_index=True)
    ads = logs["ads"]
    assert (csv.impression_id == ads.impression_id).all() and (csv.click == ads.click).all()
    assert (csv.hist_item == ads.hist_item.map("|".join)).all()
    first = np.array(csv.user_pretrained[0].split("|"), dtype=np.float32)
    np.testing.assert_allclose(first, ads.user_pretrained[0], rtol=1e-6)


def test_rank_picks_top_scores_best_first_and_skips_duplicates():
    ids = np.array([[5, 7, 5, 9], [1, 2, 3, 4]])
    scores = np.array([[0.1, 0.5, 0.9, 0.3], [0.4, 0.3, 0.2, 0.1]])
    top, dup = rank(ids, scores, 3)
    np.testing.assert_array_equal(top, [[1, 3, 0], [0, 1, 2]])  # the second 5 (col 2) is a duplicate
    np.testing.assert_array_equal(dup, [[False, False, True, False], [False] * 4])


def test_exposure_counts_and_histories_by_hand():
    user = np.array([0, 0, 0, 0, 1, 1])
    key = np.array([3, 3, 4, 3, 3, 3])
    ts = np.array([0, 10, 20, 100, 5, 6])
    np.testing.assert_array_equal(exposure_counts(user, key, ts, window=50), [0, 1, 0, 0, 0, 1])
    click = np.array([1, 1, 0, 1, 1, 0], bool)
    start, length, clicks = histories(user, ts, click, max_len=1)
    np.testing.assert_array_equal(clicks, [0, 1, 3, 4])
    np.testing.assert_array_equal(length, [0, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(clicks[start[length > 0]], [0, 1, 1, 4])


def test_gini_and_top_share():
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.r_[np.zeros(9), 1.0]) == pytest.approx(0.9)
    assert top_share(np.r_[np.ones(8), 6.0, 6.0], 0.2) == pytest.approx(0.6)


def test_configs_load_strictly(tmp_path):
    assert load_config(SimulatorConfig, os.path.join(REPO, "configs", "simulate_default.yaml")) == SimulatorConfig()
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_users: 10\nclick: {postion_bias: 1.0}\n")
    with pytest.raises(ConfigError, match="postion_bias"):
        load_config(SimulatorConfig, str(bad))
    with pytest.raises(ConfigError, match="slots <= candidates"):
        SimulatorConfig(ads_system=AdsSystemConfig(slots=40))


def test_preprocess_config_names_logged_columns(sim):
    _, _, out, _ = sim
    pre = load_config(PreprocessConfig, os.path.join(REPO, "configs", "preprocess_sim.yaml"))
    assert pre.input.path == "demo_out/raw/ads/*.parquet" and pre.output == "demo_out/data"
    assert pre.split.method == "time" and pre.split.extra_splits == {"random": "demo_out/raw/random/*.parquet"}
    columns = set(pq.read_schema(os.path.join(out, "ads", "part-00000.parquet")).names)
    named = ({s.source or s.name for s in pre.feature_specs()}
             | set(pre.labels) | set(pre.extra_meta) | {pre.user_column, pre.source_column, pre.split.time_column})
    assert named <= columns, named - columns
    # hist_ts: epoch seconds, which float32 cannot hold to the second; the config encodes hist_gap instead
    assert columns - named == {"impression_id", "session_id", "true_cvr", "policy", "hist_ts"} - set(pre.extra_meta)
