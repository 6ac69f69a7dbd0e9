"""Head / tail users are defined once (pipeline/user_groups.py): preprocess writes the group
column with the configured fraction, evaluation reads it back and never falls back to 0.2."""
import ast
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from features.schema import Schema
from pipeline import metrics as M
from pipeline import report
from pipeline.config import load_config
from pipeline.data import read_columns
from pipeline.evaluate import evaluate_run
from pipeline.beam.driver import run_preprocess
from pipeline.preprocess_config import PreprocessConfig
from pipeline.user_groups import head_users

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRACTION = 0.3


@pytest.fixture(scope="module")
def data03(sim_raw, tmp_path_factory):
    """The simulator data preprocessed with head_user_fraction 0.3 (not the default 0.2)."""
    out = str(tmp_path_factory.mktemp("groups") / "data")
    cfg = load_config(PreprocessConfig, os.path.join(REPO, "configs", "preprocess_sim.yaml"),
                      {"input.path": os.path.join(sim_raw, "ads", "*.parquet"), "output": out,
                       "split.extra_splits": {"random": os.path.join(sim_raw, "random", "*.parquet")},
                       "head_user_fraction": FRACTION,
                       "runner.num_workers": 1, "runner.running_mode": "in_memory"})
    run_preprocess(cfg, progress=False)
    return out


def _train_counts(data_dir):
    return pd.Series(read_columns(data_dir, "train", ["user_key"])["user_key"]).value_counts()


def _gp(y, p, users, is_head):
    """GP-LT / GP-Head by hand: each user's mean logloss, averaged over the users of a group."""
    loss = -(y * np.log(np.clip(p, 1e-7, 1)) + (1 - y) * np.log(np.clip(1 - p, 1e-7, 1)))
    per_user = pd.DataFrame({"u": users, "loss": loss, "head": is_head}).groupby("u").agg(
        loss=("loss", "mean"), head=("head", "max"))
    return per_user.loss[per_user["head"] == 0].mean(), per_user.loss[per_user["head"] == 1].mean()


def test_group_column_of_every_split_is_the_one_function_on_train_counts(data03):
    schema = Schema.load(data03)
    assert schema.group_column == "user_group" and schema.extra["head_user_fraction"] == FRACTION
    counts = _train_counts(data03)
    head = head_users(counts, FRACTION)
    assert len(head) == int(np.ceil(FRACTION * len(counts)))
    assert len(head) > len(head_users(counts, 0.2))  # 0.3 is not the default
    for split in schema.extra["splits"]:
        cols = read_columns(data03, split, ["user_key", "user_group"])
        assert len(cols["user_key"]), split
        np.testing.assert_array_equal(cols["user_group"], np.isin(cols["user_key"], head).astype(np.int64),
                                      err_msg=split)


def test_head_users_rank_by_train_samples_ties_to_the_smaller_key():
    counts = pd.Series({5: 4, 3: 2, 9: 2, 1: 2, 7: 1})
    assert head_users(counts, 0.2).tolist() == [5]  # ceil(0.2 * 5) = 1
    assert head_users(counts, 0.4).tolist() == [1, 5]  # 3 of 1, 3, 9 tie at 2: the smallest key 1
    assert head_users(counts, 0.5).tolist() == [1, 3, 5]  # ceil(2.5) = 3
    assert head_users(counts, 1.0).tolist() == [1, 3, 5, 7, 9]
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="head_user_fraction must be within"):
            head_users(counts, bad)


@pytest.mark.slow
def test_a_dataset_built_at_0_3_is_evaluated_at_0_3(cli, data03, tmp_path, monkeypatch):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(
        {"data_dir": data03, "runs_dir": str(tmp_path / "runs"), "run_name": "t", "tasks": ["click"],
         "model": {"backbone": "dnn", "backbone_options": {"dnn_units": [16]}, "embedding_dim": 4},
         "batch_size": 256, "eval_batch_size": 4096, "epochs": 1, "steps_per_epoch": 5,
         "shuffle_buffer": 1000, "eval_splits": ["test"], "verbose": 0}))
    cli("train", "--config", str(config), check=0)
    run = tmp_path / "runs" / "t"
    seen = []  # what evaluation hands to the metrics: (y, p, user ids) per task

    def spy(y_true, y_prob, user_ids, *args, **kwargs):
        seen.append((np.asarray(y_true, np.float64), np.asarray(y_prob, np.float64), np.asarray(user_ids)))
        return evaluate_predictions(y_true, y_prob, user_ids, *args, **kwargs)

    evaluate_predictions = M.evaluate_predictions
    monkeypatch.setattr(M, "evaluate_predictions", spy)
    metrics = evaluate_run(str(run), splits=["test"])["test"]["click"]
    assert metrics["config"]["head_fraction"] == FRACTION
    (y, p, users), = seen
    cols = read_columns(data03, "test", ["user_key", "user_group"])  # the data's own group column
    group = pd.Series(cols["user_group"], cols["user_key"]).groupby(level=0).agg(["min", "max"])
    assert (group["min"] == group["max"]).all()  # one group per user
    assert sorted(users.tolist()) == sorted(cols["user_key"].tolist())
    gp_lt, gp_head = _gp(y, p, users, group["max"].loc[users].to_numpy())
    o = metrics["overall"]
    assert o["GP-LT"] == pytest.approx(gp_lt, rel=1e-6) and o["GP-Head"] == pytest.approx(gp_head, rel=1e-6)
    assert o["GAP"] == pytest.approx(abs(gp_lt - gp_head), rel=1e-5, abs=1e-9)
    lt_02, head_02 = _gp(y, p, users, np.isin(users, head_users(_train_counts(data03), 0.2)))
    assert abs(head_02 - gp_head) > 1e-4 and abs(lt_02 - gp_lt) > 1e-4  # what the old default gave
    assert "top 30 % users" in (run / "eval_test" / "report.md").read_text()


def test_without_a_group_column_gp_is_left_out_with_a_note(tmp_path):
    y, p, users = [1, 0, 0, 1], [0.7, 0.2, 0.4, 0.3], ["a", "a", "b", "c"]
    out = M.evaluate_predictions(y, p, users, ["a", "a", "b", "c"])
    assert (out["overall"]["GP-LT"], out["overall"]["GP-Head"], out["overall"]["GAP"]) == (None, None, None)
    report.write_eval_report(str(tmp_path), {"click": out}, {"click": (y, p)}, "no groups")
    text = (tmp_path / "report.md").read_text()
    assert "left out: the data has no user-group column" in text and "top 20 %" not in text


def test_head_users_are_defined_once():
    """No second definition of head users (function or eval option) in the packages."""
    defs = []
    for package in ("features", "models", "pipeline", "serving"):
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    tree = ast.parse(open(path, encoding="utf-8").read())
                    defs += [(os.path.relpath(path, REPO), node.name) for node in ast.walk(tree)
                             if isinstance(node, ast.FunctionDef) and "head_user" in node.name]
    assert defs == [(os.path.join("pipeline", "user_groups.py"), "head_users")]
    assert "head_fraction" not in {f.name for f in __import__("dataclasses").fields(M.EvalConfig)}
