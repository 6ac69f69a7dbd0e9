"""Metric functions against scikit-learn and hand computations."""
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from pipeline import metrics as M
from pipeline.user_groups import head_users


def _head(train_user_ids, fraction=0.2):
    """Head users of training ids through the one definition (pipeline/user_groups.py)."""
    return head_users(pd.Series(train_user_ids).value_counts(), fraction)


def _data(n=2000, seed=0, users=60, round_to=1):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    score = np.round(rng.random(n) * 0.6 + 0.3 * y, round_to)  # heavy ties after rounding
    uid = rng.integers(0, users, n)
    return y, score, uid


def test_auc_matches_sklearn_with_ties_and_weights():
    y, s, _ = _data()
    assert len(np.unique(s)) < 20  # many ties
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    w = np.random.default_rng(1).random(len(y)) * 3
    assert M.auc(y, s, sample_weight=w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    # all scores tied -> 0.5; perfectly separated -> 1
    assert M.auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5
    assert M.auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0


def test_auc_errors_name_the_problem():
    with pytest.raises(ValueError, match="both a positive and a negative"):
        M.auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="0/1 labels; row 1"):
        M.auc([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="differ in length"):
        M.auc([0, 1], [0.2, 0.3, 0.4])


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = rng.uniform(0.01, 0.99, 500)
    assert M.logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)
    # clipping keeps a confident mistake finite: -log(1e-7)
    assert M.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]; row 0"):
        M.logloss([1], [1.5])


def _gauc_loop(y, s, users):
    """The DIN definition written naively: sum_u n_u AUC_u / sum_u n_u over users with both classes."""
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if len(np.unique(y[m])) == 2:
            num += m.sum() * roc_auc_score(y[m], s[m])
            den += m.sum()
    return num / den


def test_gauc_matches_per_user_loop():
    y, s, uid = _data(users=80)
    # some users with a single class are excluded from both numerator and denominator
    y[uid == 3] = 0
    y[uid == 4] = 1
    assert M.gauc(y, s, uid) == pytest.approx(_gauc_loop(y, s, uid), abs=1e-12)
    # string user ids work the same
    suid = np.array([f"user{u}" for u in uid])
    assert M.gauc(y, s, suid) == pytest.approx(_gauc_loop(y, s, uid), abs=1e-12)


def test_gauc_small_hand_example():
    # user a: scores (pos .9, neg .1, neg .9) -> AUC = (1 + 0.5)/2 = .75 over 3 impressions
    # user b: (pos .2, neg .4) -> AUC 0 over 2 impressions; user c: one class -> excluded
    y = [1, 0, 0, 1, 0, 1]
    s = [0.9, 0.1, 0.9, 0.2, 0.4, 0.5]
    u = ["a", "a", "a", "b", "b", "c"]
    assert M.gauc(y, s, u) == pytest.approx((3 * 0.75 + 2 * 0.0) / 5)
    with pytest.raises(ValueError, match="no user has both"):
        M.gauc([1, 0], [0.3, 0.2], ["a", "b"])


def test_ece_rec4ad_eq16_hand_example():
    y = [1, 0, 1, 0]
    p = [0.105, 0.107, 0.5, 0.9]
    # buckets of width 0.01: #10 gets (1-.105)+(0-.107)=.788, #50 gets .5, #90 gets -.9
    assert M.ece(y, p) == pytest.approx((0.788 + 0.5 + 0.9) / 4)
    # the residuals inside a bucket cancel before the absolute value (Eq. 16)
    assert M.ece([1, 0], [0.5, 0.5]) == 0.0
    # K = 2: bucket [0, .5) gets (1-.105)+(0-.107); bucket [.5, 1] gets (1-.5)+(0-.9)
    assert M.ece(y, p, num_bins=2) == pytest.approx((0.788 + 0.4) / 4)
    # p = 1 falls in the last bucket
    assert M.ece([1], [1.0]) == 0.0


def test_reliability_curve():
    mean_pred, frac_pos, counts, edges = M.reliability_curve([1, 0, 1, 0], [0.05, 0.15, 0.12, 0.95], num_bins=10)
    assert counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1] and len(edges) == 11
    assert mean_pred[1] == pytest.approx(0.135) and frac_pos[1] == 0.5
    assert np.isnan(mean_pred[2]) and frac_pos[9] == 0.0


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_matches_sklearn(strategy):
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(3)
    p = rng.beta(1, 20, 5000)  # a few-percent CTR: equal-width bins leave most of [0, 1] empty
    y = (rng.random(5000) < p).astype(float)
    mean_pred, frac_pos, counts, _ = M.reliability_curve(y, p, 10, strategy)
    want_true, want_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
    filled = counts > 0
    np.testing.assert_allclose(frac_pos[filled], want_true, rtol=1e-12)
    np.testing.assert_allclose(mean_pred[filled], want_pred, rtol=1e-12)
    if strategy == "quantile":
        assert counts.min() >= 450 and counts.max() <= 550  # equal counts
    with pytest.raises(ValueError, match="strategy"):
        M.reliability_curve(y, p, 10, "kmeans")


def test_group_logloss_hda_def31_hand_example():
    # training activity: a 5 rows, b 3, c 1, d 1 -> head (top 20 % of 4 users = 1 user) is a
    train_users = ["a"] * 5 + ["b"] * 3 + ["c", "d"]
    head = _head(train_users)
    assert head.tolist() == ["a"]
    users = ["a", "a", "b", "c", "c", "c", "d"]
    y = [1, 0, 1, 0, 0, 1, 0]
    p = [0.8, 0.4, 0.5, 0.2, 0.2, 0.5, 0.1]
    loss_a = (-math.log(0.8) - math.log(0.6)) / 2
    loss_b = math.log(2)
    loss_c = (-2 * math.log(0.8) + math.log(2)) / 3
    loss_d = -math.log(0.9)
    out = M.group_logloss(y, p, users, head)
    gp_lt = (loss_b + loss_c + loss_d) / 3  # users count once each, not their rows
    assert out["GP-LT"] == pytest.approx(gp_lt)
    assert out["GP-Head"] == pytest.approx(loss_a)
    assert out["GAP"] == pytest.approx(abs(gp_lt - loss_a))
    row_mean_tail = (loss_b + 3 * loss_c + loss_d) / 5
    assert abs(out["GP-LT"] - row_mean_tail) > 1e-3
    # no head user in the data -> GP-Head and GAP undefined
    assert M.group_logloss([1], [0.5], ["b"], head) == {"GP-LT": pytest.approx(loss_b), "GP-Head": None, "GAP": None}


def test_activity_quintiles_by_hand():
    # user u<i> has i + 1 training rows: u9, u8 most active (G5) ... u1, u0 least (G1)
    train = np.concatenate([[f"u{i}"] * (i + 1) for i in range(10)])
    labels = M.activity_quintiles(["u9", "u0", "u5", "u4", "u7", "new"], train)
    assert labels.tolist() == ["G5", "G1", "G3", "G3", "G4", "G1"]  # unseen -> G1
    # equal counts are split by id so groups stay equal-sized
    assert M.activity_quintiles(["x0", "x1", "x2", "x3", "x4"], ["x0", "x1", "x2", "x3", "x4"]).tolist() == \
        ["G5", "G4", "G3", "G2", "G1"]


def test_table6_activity_logloss_and_def31_gp_through_evaluate_predictions_by_hand():
    """HDA Table 6 (logloss per activity group, G1 least active) and Def. 3.1 / §5.1.2 (GP-LT: the
    long-tail users' average logloss, each user's own mean counting once; GAP = |GP-LT - GP-Head|,
    §3.2) as evaluate_predictions writes them from the data's per-row group column."""
    train = [f"u{i}" for i in range(1, 6) for _ in range(i)]  # u<i>: i training rows -> G<i>; head = u5
    rows = [("u1", 1, 0.5), ("u2", 1, 0.8), ("u2", 0, 0.4), ("u3", 0, 0.1), ("u4", 1, 0.9), ("u4", 1, 0.6),
            ("u4", 0, 0.3), ("u5", 1, 0.7), ("u5", 0, 0.2), ("u9", 0, 0.5)]  # u9: unseen in training -> G1, tail
    users, y, p = (list(c) for c in zip(*rows))
    groups = [int(u == "u5") for u in users]
    out = M.evaluate_predictions(y, p, users, train, user_groups=groups)
    ln = math.log
    per_user = {"u1": ln(2), "u2": (-ln(0.8) - ln(0.6)) / 2, "u3": -ln(0.9),
                "u4": (-ln(0.9) - ln(0.6) - ln(0.7)) / 3, "u5": (-ln(0.7) - ln(0.8)) / 2, "u9": ln(2)}
    # the activity slice: the rows' mean logloss per group (u9's row in G1 with u1's)
    want = {"G1": ln(2), "G2": per_user["u2"], "G3": per_user["u3"], "G4": per_user["u4"], "G5": per_user["u5"]}
    act = out["slices"]["activity"]
    assert list(act) == ["G1", "G2", "G3", "G4", "G5"]
    for g, value in want.items():
        assert act[g]["logloss"] == pytest.approx(value, rel=1e-9), g
    assert [act[g]["count"] for g in act] == [2, 2, 1, 3, 2]
    # Def. 3.1: per user, then averaged over the group's users
    gp_lt = np.mean([per_user[u] for u in ("u1", "u2", "u3", "u4", "u9")])
    o = out["overall"]
    assert o["GP-LT"] == pytest.approx(gp_lt, rel=1e-9)
    assert o["GP-Head"] == pytest.approx(per_user["u5"], rel=1e-9)
    assert o["GAP"] == pytest.approx(abs(gp_lt - per_user["u5"]), rel=1e-9)
    assert o["GP-LT"] > o["GP-Head"]  # here the signed difference GP-LT - GP-Head is the GAP too
    tail_rows = [M.logloss([yy], [pp]) for u, yy, pp in rows if u != "u5"]
    assert abs(o["GP-LT"] - np.mean(tail_rows)) > 1e-2  # not the long-tail rows' mean


@pytest.mark.parametrize("num_users", list(range(1, 31)))
def test_head_users_are_exactly_g5(num_users):
    rng = np.random.default_rng(num_users)
    train = np.repeat(np.arange(num_users), rng.integers(1, 6, num_users))
    head = _head(train)
    g5 = np.arange(num_users)[M.activity_quintiles(np.arange(num_users), train) == "G5"]
    assert sorted(head.tolist()) == sorted(g5.tolist())
    assert len(head) == math.ceil(num_users / 5)


def test_impression_ratio_groups_rec4ad_eq2():
    shown = ["A"] * 8 + ["B"] * 4 + ["C"] * 2 + ["D"]
    # without a candidate log the order is by impressions: A > B > C > D
    assert M.impression_ratio_groups(["A", "B", "C", "D", "E"], shown).tolist() == \
        ["IR1", "IR2", "IR3", "IR4", "IR4"]  # unseen ad E -> bottom group
    # Eq. 2: IR = shown / candidate sessions: A 8/16=.5, B 4/4=1, C 2/20=.1, D 1/2=.5 (tie A<D by id)
    candidates = ["A"] * 16 + ["B"] * 4 + ["C"] * 20 + ["D"] * 2
    assert M.impression_ratio_groups(["A", "B", "C", "D"], shown, 4, candidates).tolist() == \
        ["IR2", "IR1", "IR4", "IR3"]
    # two groups: top half {B, A}, bottom half {D, C}
    assert M.impression_ratio_groups(["A", "B", "C", "D"], shown, 2, candidates).tolist() == \
        ["IR1", "IR1", "IR2", "IR2"]
    with pytest.raises(ValueError, match="never appear in candidate_item_ids_train, e.g. 'D'"):
        M.impression_ratio_groups(["A"], shown, 4, ["A", "B", "C"])
    # the ratio as the serving system logged it gives the same groups as the candidate log
    logged = {"A": 0.5, "B": 1.0, "C": 0.1, "D": 0.5, "Z": 0.9}  # Z: never shown in training, ignored
    assert M.impression_ratio_groups(["A", "B", "C", "D"], shown, 4, logged_ratio=logged).tolist() == \
        ["IR2", "IR1", "IR4", "IR3"]
    with pytest.raises(ValueError, match="have no logged ratio, e.g. 'D'"):
        M.impression_ratio_groups(["A"], shown, 4, logged_ratio={"A": 1, "B": 1, "C": 1})
    with pytest.raises(ValueError, match="not both"):
        M.impression_ratio_groups(["A"], shown, 4, candidates, logged_ratio=logged)


def test_evaluate_predictions_overall_and_slices():
    rng = np.random.default_rng(5)
    n, num_users = 3000, 100
    train_users = rng.zipf(1.5, 20000) % num_users
    train_items = rng.zipf(1.3, 20000) % 40
    users = rng.integers(0, num_users + 10, n)  # 10 users unseen in training
    items = rng.integers(0, 45, n)
    p = rng.uniform(0.02, 0.6, n)
    y = (rng.random(n) < p).astype(int)
    y[users == 7] = 0
    head = _head(train_users)
    out = M.evaluate_predictions(y, p, users, train_users, items, train_items,
                                 user_groups=np.isin(users, head).astype(np.int64), head_fraction=0.2)
    o = out["overall"]
    assert o["auc"] == pytest.approx(roc_auc_score(y, p))
    assert o["gauc"] == pytest.approx(_gauc_loop(y, p, users))
    assert o["logloss"] == pytest.approx(log_loss(y, p))
    assert o["ece"] == M.ece(y, p, 100)
    assert o["count"] == n and o["ctr"] == pytest.approx(y.mean()) and o["mean_pred"] == pytest.approx(p.mean())
    assert {k: o[k] for k in ("GP-LT", "GP-Head", "GAP")} == M.group_logloss(y, p, users, head)
    assert out["config"]["head_fraction"] == 0.2 and out["config"]["user_groups"]
    # without the data's group column GP-* are left out, never recomputed from the training ids
    bare = M.evaluate_predictions(y, p, users, train_users)
    assert (bare["overall"]["GP-LT"], bare["overall"]["GP-Head"], bare["overall"]["GAP"]) == (None, None, None)
    assert bare["config"]["user_groups"] is False
    with pytest.raises(ValueError, match="user_groups must be 1"):
        M.evaluate_predictions(y, p, users, train_users, user_groups=np.full(n, 2))
    act = out["slices"]["activity"]
    assert list(act) == ["G1", "G2", "G3", "G4", "G5"]
    assert sum(g["count"] for g in act.values()) == n
    in_g5 = np.isin(users, head)
    assert act["G5"]["count"] == in_g5.sum()
    assert act["G5"]["logloss"] == pytest.approx(log_loss(y[in_g5], p[in_g5]))
    assert act["G5"]["auc"] == pytest.approx(roc_auc_score(y[in_g5], p[in_g5]))
    ir = out["slices"]["impression_ratio"]
    assert list(ir) == ["IR1", "IR2", "IR3", "IR4"] and sum(g["count"] for g in ir.values()) == n
    assert out["config"]["ece_bins"] == 100


def test_evaluate_predictions_one_class_and_empty_slices():
    # train: u0..u4 one row each; eval only u0 (G5) rows, all negatives
    out = M.evaluate_predictions([0, 0], [0.1, 0.2], ["u0", "u0"], ["u0", "u1", "u2", "u3", "u4"])
    assert out["overall"]["auc"] is None and out["overall"]["gauc"] is None
    assert out["overall"]["logloss"] == pytest.approx(log_loss([0, 0], [0.1, 0.2], labels=[0, 1]))
    assert out["slices"]["activity"]["G1"] == {"count": 0, "auc": None, "gauc": None, "logloss": None,
                                               "ece": None, "ctr": None, "mean_pred": None, "num_users": 0}
    assert "impression_ratio" not in out["slices"]
    with pytest.raises(ValueError, match="both item_ids and train_item_ids"):
        M.evaluate_predictions([0], [0.1], ["u0"], ["u0"], item_ids=["a"])


def test_eval_config_validates():
    with pytest.raises(ValueError, match="EvalConfig.ece_bins"):
        M.EvalConfig(ece_bins=0)
    with pytest.raises(ValueError, match="head_user_fraction must be within"):
        _head(["a"], 1.5)
    cfg = M.EvalConfig(ece_bins=2, activity_groups=2)
    out = M.evaluate_predictions([1, 0, 0, 1], [0.105, 0.107, 0.5, 0.9], ["a", "a", "b", "b"],
                                 ["a", "a", "b"], config=cfg)
    assert out["overall"]["ece"] == pytest.approx(M.ece([1, 0, 0, 1], [0.105, 0.107, 0.5, 0.9], 2))
    assert list(out["slices"]["activity"]) == ["G1", "G2"]


def test_evaluate_predictions_without_users():
    y, p = [1, 0, 0, 1], [0.7, 0.2, 0.4, 0.3]
    out = M.evaluate_predictions(y, p, None, None, item_ids=["a", "b", "a", "c"], train_item_ids=["a", "a", "b"],
                                 config=M.EvalConfig(ir_groups=2))
    o = out["overall"]
    assert o["auc"] == pytest.approx(roc_auc_score(y, p)) and o["gauc"] is None
    assert o["GP-LT"] is None and o["GP-Head"] is None and o["GAP"] is None
    assert list(out["slices"]) == ["impression_ratio", "new_ads"]
    assert out["slices"]["impression_ratio"]["IR1"]["count"] == 2  # ad a; b and unseen c in IR2
    with pytest.raises(ValueError, match="both user_ids and train_user_ids"):
        M.evaluate_predictions(y, p, ["u"] * 4, None)
