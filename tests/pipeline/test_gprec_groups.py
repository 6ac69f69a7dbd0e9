"""The ``gprec_groups`` run analysis (GPRec §IV-E, Fig. 4) against hand computations, on a small
model with fixed weights exposing GPRec's API (group_assignment, group_embeddings, user_features):
usage per user (the user key, else the personal features, else rows), cos(p_i, n_i), pairwise
cosines, the summary, the callback's files, and a framework without groups refused."""
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from pipeline import gprec_groups as gg
from pipeline.analyses import ANALYSES, SUMMARIES, analysis_callbacks
from pipeline.config import ConfigError, from_dict
from pipeline.train import TrainConfig

M1 = [[0.0, 0.0, 0.0],  # id 0 (padding), never read
      [0.9, 0.2, 0.6],  # user_id 1
      [0.7, 0.4, 0.1],  # user_id 2
      [0.1, 0.8, 0.3],  # user_id 3
      [0.3, 0.2, 0.2]]  # user_id 4
P = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
N = [[0.0, 1.0], [0.0, -1.0], [2.0, 0.0]]
# (user key, user_id) per row: user u2's rows carry two ids, so its m^1 is the mean of two rows
ROWS = [(b"u1", 1), (b"u1", 1), (b"u2", 2), (b"u2", 3), (b"u3", 3), (b"u4", 4), (b"u4", 4)]


class FixedGroups(tf.keras.Model):
    """m^1 = M1[user_id] (3 groups), embeddings P / N (or P alone): GPRec's analysis API."""

    def __init__(self, dual=True):
        super().__init__()
        self.m1 = self.add_weight("m1", shape=(5, 3), initializer=tf.constant_initializer(M1), trainable=False)
        self.dual = dual

    def call(self, inputs):
        return {"click": tf.zeros([tf.shape(inputs["user_id"])[0], 1])}

    def group_assignment(self, inputs):
        return tf.gather(self.m1, tf.reshape(inputs["user_id"], [-1]))

    def group_embeddings(self):
        return np.array(P), (np.array(N) if self.dual else None)

    def user_features(self):
        return ["user_id", "age"]


def _dataset(user_key=True, batch=3):
    x = {"user_id": np.array([[i] for _, i in ROWS], np.int64), "age": np.ones((len(ROWS), 1), np.int64)}
    if user_key:
        x["_user"] = np.array([k for k, _ in ROWS], object)
    return tf.data.Dataset.from_tensor_slices((x, {"click": np.zeros((len(ROWS), 1), np.float32)})).batch(batch)


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_usage_per_user_key_against_hand_counts():
    """Units u1..u4 (the user key): m^1 = [.9 .2 .6], mean of ids 2 and 3 = [.4 .6 .2], [.1 .8 .3],
    [.3 .2 .2]; positive (> 0.5): {0, 2}, {1}, {1}, {}."""
    record = gg.group_report(FixedGroups(), _dataset(), rows=100, personal=["user_id"])
    usage = record["usage"]
    assert (record["rows"], record["units"]) == (7, 4) and record["unit"].startswith("user (_user")
    np.testing.assert_allclose(usage["share_positive"], [1 / 4, 2 / 4, 1 / 4])
    np.testing.assert_allclose(usage["mean_m1"], [(.9 + .4 + .1 + .3) / 4, (.2 + .6 + .8 + .2) / 4,
                                                  (.6 + .2 + .3 + .2) / 4])
    np.testing.assert_allclose(usage["share_top"], [2 / 4, 2 / 4, 0.0])  # u4's largest is group 0
    assert usage["groups_per_unit"] == {"counts": [1, 2, 1, 0], "mean": 1.0}
    assert (usage["never_positive"], usage["always_positive"], usage["patterns"]) == (0.0, 0.0, 3)
    assert record["user_features"] == ["user_id", "age"] and record["groups"] == 3


def test_usage_falls_back_to_the_personal_features_then_to_rows():
    """Without a user key the units are the user_id values 1..4 (each its M1 row); without
    personal features either, each of the first ``rows`` rows is one unit."""
    by_id = gg.group_report(FixedGroups(), _dataset(user_key=False), rows=100, personal=["user_id"])
    assert by_id["units"] == 4 and by_id["unit"] == "user (personal features ['user_id'])"
    np.testing.assert_allclose(by_id["usage"]["share_positive"], [2 / 4, 1 / 4, 1 / 4])  # ids 1 and 2 in group 0
    by_row = gg.group_report(FixedGroups(), _dataset(user_key=False), rows=5)
    assert (by_row["rows"], by_row["units"], by_row["unit"]) == (5, 5, "row")  # rows 1-5, across two batches
    np.testing.assert_allclose(by_row["usage"]["share_positive"], [3 / 5, 2 / 5, 2 / 5])
    assert by_row["usage"]["groups_per_unit"]["counts"] == [0, 3, 2, 0]


def test_cosines_against_hand_computation():
    """cos(p_i, n_i) = 0, -1, 1/sqrt(2); p's pairwise 0, .707, .707; n's -1, 0, 0."""
    sim = gg.group_report(FixedGroups(), _dataset(), rows=100)["similarity"]
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(sim["cos_pn"], [0.0, -1.0, r], atol=1e-12)
    assert sim["cos_pn_mean"] == pytest.approx((r - 1) / 3) and sim["cos_pn_max"] == pytest.approx(r)
    assert sim["positive"] == pytest.approx({"mean": 2 * r / 3, "max": r})
    assert sim["negative"] == pytest.approx({"mean": -1 / 3, "max": 0.0}, abs=1e-12)
    every = P + N
    pairs = [_cos(every[i], every[j]) for i in range(6) for j in range(i + 1, 6)]
    assert sim["all"] == pytest.approx({"mean": np.mean(pairs), "max": max(pairs)})
    assert max(pairs) == pytest.approx(1.0)  # p_0 and n_2 point the same way


def test_single_embedding_model_and_the_summary():
    """A single-embedding model (DGPM) has e's pairwise cosines and no cos(p, n); the summary
    gives the headline numbers of both kinds."""
    single = gg.group_report(FixedGroups(dual=False), _dataset(), rows=100)
    assert not single["dual"] and single["similarity"] == {"embeddings": gg.pairwise(np.array(P))}
    assert np.array(single["shown_cosine"]).shape == (3, 3)
    r = 1 / math.sqrt(2)
    assert gg.summary(single) == pytest.approx({"mean pairwise cos": 2 * r / 3, "max pairwise cos": r,
                                                "groups per user": 1.0, "groups never positive": 0.0})
    dual = gg.group_report(FixedGroups(), _dataset(), rows=100)
    assert np.array(dual["shown_cosine"]).shape == (6, 6)  # [p_i; n_i] of the 3 groups, as Fig. 4
    assert gg.summary(dual) == pytest.approx({"mean pairwise cos": 2 * r / 3, "max pairwise cos": r,
                                              "groups per user": 1.0, "groups never positive": 0.0,
                                              "mean cos(p, n)": (r - 1) / 3, "max cos(p, n)": r})
    assert ANALYSES["gprec_groups"] is gg.gprec_groups_callbacks and SUMMARIES["gprec_groups"] is gg.summary


def test_callback_writes_json_figure_and_table(tmp_path):
    cb = gg.GroupAnalysis(str(tmp_path / "analysis"), _dataset(), personal=["user_id"])
    cb.set_model(FixedGroups())
    cb.on_train_end()
    record = json.loads((tmp_path / "analysis" / "gprec_groups.json").read_text())
    assert record["units"] == 4 and record["similarity"]["cos_pn_max"] == pytest.approx(1 / math.sqrt(2))
    table = (tmp_path / "analysis" / "gprec_groups.md").read_text()
    assert "| mean cos(p, n) | -0.0976 |" in table and "| distinct positive-group sets | 3 |" in table
    assert (tmp_path / "analysis" / "gprec_groups.png").stat().st_size > 0


def test_a_framework_without_groups_is_refused():
    cfg = from_dict(TrainConfig, {"data_dir": "d", "analysis": ["gprec_groups"]})
    with pytest.raises(ConfigError, match="'gprec_groups' reads the groups of a group model.*framework 'none'"):
        analysis_callbacks(cfg, "run", ["click"])


def test_on_the_simulator_data_units_are_its_user_keys(sim_data, tmp_path, monkeypatch):
    """Built from a run's config (validation split, the schema's personal features) on real
    batches: the units are the distinct user keys (``_user``) of the rows read."""
    import models.factory
    from pipeline.data import make_dataset

    cfg = from_dict(TrainConfig, {"data_dir": sim_data, "tasks": ["click"], "analysis": ["gprec_groups"]})
    monkeypatch.setattr(models.factory, "framework_class", lambda name: FixedGroups)
    cb, = analysis_callbacks(cfg, str(tmp_path), ["click"])
    assert cb.personal == ["user_id"] and cb.split == "valid"
    cb.rows = 3000

    class OnRealIds(FixedGroups):
        def group_assignment(self, inputs):
            return tf.gather(self.m1, tf.reshape(inputs["user_id"], [-1]) % 4 + 1)

    cb.set_model(OnRealIds())
    cb.on_train_end()
    record = json.loads((tmp_path / "analysis" / "gprec_groups.json").read_text())
    valid = make_dataset(sim_data, "valid", 1000, shuffle=False, deterministic=True, labels=["click"])
    keys = np.concatenate([x["_user"].numpy() for x, _ in valid.take(3)])
    assert record["rows"] == 3000 and record["units"] == len(set(keys.tolist())) > 100
    assert record["unit"].startswith("user (_user")
