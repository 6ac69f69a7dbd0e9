"""The evaluation pieces of Tencent §3.2's claims: the coefficient of variation of scores among
visually similar ads shown to one user (against a hand computation; similarity from the
simulator's ground-truth attributes), the new-ads slice on planted ids, and both written by
``evaluate_run`` for a run trained with visual semantic IDs."""
import os

import numpy as np
import pandas as pd
import pytest

from pipeline import visual_similarity as VS
from pipeline.metrics import evaluate_predictions, new_ad_groups, slice_groups


def test_score_cv_by_hand():
    #            user  ad   group score
    rows = [("u1", "a", 0, 0.1), ("u1", "a", 0, 0.3),  # a's mean score for u1: 0.2
            ("u1", "b", 0, 0.4),                        # (u1, group 0): ads a, b -> CV = 0.1 / 0.3
            ("u1", "c", 1, 0.5),                        # (u1, group 1): one ad -> no pair
            ("u2", "a", 0, 0.2), ("u2", "b", 0, 0.2),   # (u2, group 0): equal scores -> CV 0
            ("u2", "c", 1, 0.9), ("u2", "d", -1, 0.7)]  # no group (no ground truth): left out
    users, ads, groups, scores = zip(*[(u, a, g, s) for u, a, g, s in rows])
    out = VS.score_cv(scores, users, ads, groups)
    assert out["score_cv"] == pytest.approx((1 / 3 + 0.0) / 2)
    assert out["pairs"] == 2 and out["rows"] == 5
    assert out["score_cv_median"] == pytest.approx(1 / 6)
    assert VS.score_cv([0.5], ["u"], ["a"], [0])["score_cv"] is None  # no pair with two ads


def test_similar_groups_keep_every_pair_within_the_distance_and_hues_are_circular():
    a = np.array([[0.98, 0.5, 0.5, 0.5, 0.5, 0.5],   # hue 0.98 and 0.02 are 0.04 apart
                  [0.02, 0.5, 0.5, 0.5, 0.5, 0.5],
                  [0.06, 0.5, 0.5, 0.5, 0.5, 0.5],   # 0.04 from the second, 0.08 from the first
                  [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    d = VS.attribute_distances(a)
    assert d[0, 1] == pytest.approx(0.04) and d[0, 2] == pytest.approx(0.08) and d[1, 3] == pytest.approx(0.48)
    g = VS.similar_groups(a, 0.05)
    assert g[0] != g[3] and g[1] != g[3] and len(set(g[:3].tolist())) == 2  # complete linkage: 0 and 2 never together
    assert len(set(VS.similar_groups(a, 0.1)[:3].tolist())) == 1
    rng = np.random.default_rng(0)
    b = rng.random((200, 6))
    groups = VS.similar_groups(b, 0.3)
    db = VS.attribute_distances(b)
    for label in np.unique(groups):
        members = np.flatnonzero(groups == label)
        assert db[np.ix_(members, members)].max() <= 0.3 + 1e-12
    per_ad = VS.ad_groups(np.stack([b[0], b[1], b[0]]), 0.3)
    assert per_ad[0] == per_ad[2]  # one item's creatives: one group


def test_new_ads_slice_on_planted_ids():
    train, evaluated = np.array([5, 6, 7, 1, 5]), np.array([5, 1, 8, 6, 9])
    assert new_ad_groups(evaluated, train).tolist() == ["seen", "seen", "new", "seen", "new"]
    # 1 = the OOV id of an encoded ad column: never a seen ad
    assert new_ad_groups(evaluated, train, unknown_id=1).tolist() == ["seen", "new", "new", "seen", "new"]
    y, p = np.array([1, 0, 1, 0, 0]), np.array([0.9, 0.2, 0.6, 0.4, 0.3])
    out = evaluate_predictions(y, p, None, None, item_ids=evaluated, train_item_ids=train[:3],
                               seen_item_ids=train, unknown_item_id=1)
    assert list(out["slices"]["new_ads"]) == slice_groups()["new_ads"] == ["new", "seen"]
    new = out["slices"]["new_ads"]["new"]
    assert new["count"] == 3 and new["auc"] == pytest.approx(1.0) and new["ctr"] == pytest.approx(1 / 3)
    assert out["slices"]["new_ads"]["seen"]["count"] == 2


@pytest.mark.slow
def test_evaluate_run_writes_the_score_cv_and_the_new_ads_slice(sim_visual_data, sim_raw, tmp_path):
    from features.schema import OOV_ID, Schema
    from features.vocab import read_vocab
    from pipeline.data import make_dataset
    from pipeline.evaluate import evaluate_run
    from pipeline.predict import predict_labels
    from pipeline.train import train
    from serving.run_artifacts import load_model
    from train_helpers import train_config

    features = ["user_id", "item_id", "category", "visual_id", "position"]
    cfg = train_config(sim_visual_data, tmp_path, epochs=1, steps_per_epoch=10, tasks=["click", "conversion"],
                       features=features)
    run_dir = train(cfg)["run_dir"]
    results = evaluate_run(run_dir, splits=["test"], visual_truth=sim_raw)["test"]

    schema = Schema.load(sim_visual_data)
    model, _, tasks = load_model(run_dir)
    _, p, cols = predict_labels(model, make_dataset(sim_visual_data, "test", 4096, schema=schema, shuffle=False,
                                                    deterministic=True, labels=tasks), tasks, ["ad_id", "user_key"])
    # the ground truth by hand: encoded ad -> raw ad (vocabulary) -> item -> its visual attributes
    vocab = ["", ""] + read_vocab(os.path.join(sim_visual_data, schema.feature("ad_id").encoding["vocab_file"]))
    item_of = pd.read_parquet(os.path.join(sim_raw, "ads.parquet")).set_index("ad_id")["item_id"]
    visual = pd.read_parquet(os.path.join(sim_raw, "items.parquet")).set_index("item_id")["visual"]
    items = sorted(set(item_of))
    group_of_item = dict(zip(items, VS.similar_groups(np.stack(visual.loc[items].to_numpy()))))
    groups = np.array([-1 if a == OOV_ID else group_of_item[item_of[vocab[a]]] for a in cols["ad_id"]])
    for task in ("click", "conversion"):
        got = results[task]
        want = VS.score_cv(p[task], cols["user_key"], cols["ad_id"], groups)
        assert got["similar_ads"]["pairs"] == want["pairs"] > 10
        assert got["overall"]["score_cv"] == pytest.approx(want["score_cv"]) and want["score_cv"] > 0
        assert got["similar_ads"]["rows_without_truth"] == int((cols["ad_id"] == OOV_ID).sum())
        new = got["slices"]["new_ads"]
        assert new["new"]["count"] == int((cols["ad_id"] == OOV_ID).sum()) > 0  # absent from the training split
        assert new["new"]["count"] + new["seen"]["count"] == got["overall"]["count"]


def test_the_ready_grid_checks_on_visual_data(sim_visual_data, sim_raw, tmp_path):
    """configs/compare_visual_sim.yaml: every method's features exist and its model builds; the
    new-ads slice and score_cv (with the ground truth) are known to the evaluation."""
    from pipeline.compare import CompareConfig, check_compare
    from pipeline.config import ConfigError, load_config

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "compare_visual_sim.yaml")
    overrides = {"out_dir": str(tmp_path / "grid"), "visual_truth": sim_raw,
                 "base_overrides": {"data_dir": sim_visual_data, "eval_splits": ["test"],
                                    "model.backbone_options.dnn_units": [8]}}
    cells = check_compare(load_config(CompareConfig, path, overrides))
    assert [c["method"] for c in cells] == ["random ad ids", "visual ids", "visual ids, bases 2-3-10",
                                            "ad + visual ids"]
    sizes = {c["method"]: c["parameters"] for c in cells}
    assert sizes["visual ids"] < sizes["random ad ids"] < sizes["ad + visual ids"]  # 34 visual rows vs an ad table
    with pytest.raises(ConfigError, match="score_cv needs visual_truth"):
        load_config(CompareConfig, path, {**overrides, "visual_truth": None})


def test_compare_tabulates_score_cv_overall_and_the_new_ads_slice(monkeypatch, tmp_path):
    """score_cv (a whole split's) is a column of the overall table only; new ads get their table."""
    import pipeline.compare as compare
    from pipeline.config import from_dict

    cv = {"random": [0.30, 0.32], "visual": [0.25, 0.26]}

    def evaluate(run_dir, splits, write, ad_stats=None, visual_truth=None):
        assert visual_truth == "raw"
        method, seed = os.path.basename(run_dir).rsplit("-seed", 1)
        k = int(seed) - 1
        groups = {"new": {"auc": 0.70 + 0.02 * (method == "visual") + 0.001 * k, "count": 40},
                  "seen": {"auc": 0.73, "count": 960}}
        return {splits[0]: {"conversion": {"overall": {"auc": 0.73 + 0.001 * k, "score_cv": cv[method][k]},
                                           "slices": {"new_ads": groups}}}}

    monkeypatch.setattr(compare, "train", lambda cfg, config_name: None)
    monkeypatch.setattr(compare, "evaluate_run", evaluate)
    base = tmp_path / "base.yaml"
    base.write_text("data_dir: data\ntasks: [conversion]\n")
    cfg = from_dict(compare.CompareConfig, {
        "base_config": str(base), "out_dir": str(tmp_path / "grid"), "seeds": [1, 2], "baseline": "random",
        "methods": {"random": {}, "visual": {}}, "metrics": ["auc", "score_cv"], "slices": {"new_ads": ["new"]},
        "visual_truth": "raw"})
    out = compare.run_compare(cfg)
    overall, new = out["tables"]
    assert "score_cv" in overall.splitlines()[2] and "0.2550" in overall  # the visual ids' mean CV
    assert "score_cv" not in new and new.startswith("## new: by ad novelty")
    assert "0.7205" in new  # mean new-ads AUC of the visual ids over the two seeds
