"""Incremental data and warm start: a second day of data encoded with day one's schema
(``ctrflow preprocess --schema``), and a run that starts from an earlier run's weights
(``train.init_from``)."""
import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from features.outputs import MARKER
from features.schema import Schema
from pipeline import train as train_mod
from pipeline.config import ConfigError, load_config
from pipeline.data import make_dataset, read_columns
from pipeline.beam.driver import run_preprocess
from pipeline.beam.storage import HEAD_USERS
from pipeline.preprocess_config import PreprocessConfig
from pipeline.user_groups import head_users
from serving.run_artifacts import RunError, load_model

_spec = importlib.util.spec_from_file_location("reliability_conftest", os.path.join(os.path.dirname(__file__),
                                                                                   "conftest.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
REPO, ctrflow = _helpers.REPO, _helpers.ctrflow
CONFIGS = os.path.join(REPO, "configs")
sys.path.insert(0, os.path.join(REPO, "tests", "pipeline"))
from train_helpers import train_config  # noqa: E402

# day two: another seed, more users and ads than day one (tests/conftest.py: 1000 users, 800 ads)
DAY_TWO = {"seed": 2025, "num_impressions": 8000, "rec_impressions": 500, "random_impressions": 1000,
           "num_users": 1400, "num_items": 300, "num_ads": 1100, "shard_rows": 10000}


def _preprocess_overrides(raw, out):
    return {"input.path": os.path.join(raw, "ads", "*.parquet"), "output": out,
            "split.extra_splits": {"random": os.path.join(raw, "random", "*.parquet")},
            "runner.num_workers": 1, "runner.running_mode": "in_memory"}


@pytest.fixture(scope="module")
def day_two_raw(tmp_path_factory):
    from pipeline.simulator import SimulatorConfig, simulate

    raw = str(tmp_path_factory.mktemp("day2") / "raw")
    simulate(load_config(SimulatorConfig, os.path.join(CONFIGS, "simulate_default.yaml"), dict(DAY_TWO, out_dir=raw)),
             progress=False)
    return raw


@pytest.fixture(scope="module")
def day_two(day_two_raw, sim_data, tmp_path_factory):
    """Day two encoded with day one's schema through ``ctrflow preprocess --schema`` (exit 0)."""
    folder = tmp_path_factory.mktemp("day2data")
    with open(os.path.join(CONFIGS, "preprocess_sim.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    out = str(folder / "data")
    cfg.update(input={"path": os.path.join(day_two_raw, "ads", "*.parquet"), "format": "parquet"}, output=out,
               runner={"name": "DirectRunner", "num_workers": 1, "running_mode": "in_memory"})
    cfg["split"]["extra_splits"] = {"random": os.path.join(day_two_raw, "random", "*.parquet")}
    (folder / "pre.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ctrflow("preprocess", "--config", folder / "pre.yaml", "--schema", sim_data, check=0)
    return out


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _read(path):
    with open(path, "rb") as fh:
        return fh.read()


def test_day_two_keeps_day_one_schema_vocabularies_and_head_users(sim_data, day_two):
    one, two = Schema.load(sim_data), Schema.load(day_two)
    assert two.fingerprint() == one.fingerprint()
    stats = json.loads(_read(os.path.join(day_two, "stats.json")))
    assert stats["schema_fingerprint"] == one.fingerprint() and stats["schema_from"] == sim_data
    vocab = _files(os.path.join(sim_data, "vocab"))
    assert vocab and _files(os.path.join(day_two, "vocab")) == vocab
    for rel in vocab + [os.path.join("..", "schema.json"), os.path.join("..", HEAD_USERS)]:
        assert _read(os.path.join(day_two, "vocab", rel)) == _read(os.path.join(sim_data, "vocab", rel)), rel
    # day one's head set is its train split's top users; day two labels users with that set
    day_one_head = np.array(_read(os.path.join(sim_data, HEAD_USERS)).split(), dtype=np.int64)
    counts = pd.Series(read_columns(sim_data, "train", ["user_key"])["user_key"]).value_counts()
    np.testing.assert_array_equal(day_one_head, head_users(counts, one.extra["head_user_fraction"]))
    new_users = 0
    for split in one.extra["splits"]:
        cols = read_columns(day_two, split, ["user_key", "user_group"])
        np.testing.assert_array_equal(cols["user_group"], np.isin(cols["user_key"], day_one_head))
        new_users += int((~np.isin(cols["user_key"], counts.index.to_numpy())).sum())
    assert new_users > 0  # day two has users day one never saw: they are tail (group 0)


def _hand_oov(raw, schema, data_dir):
    """Per vocabulary feature: (rows, values) of the raw day-two rows not in the vocabulary files."""
    frames = [pd.read_parquet(os.path.join(raw, sub)) for sub in ("ads", "random")]
    df = pd.concat(frames, ignore_index=True)
    out = {}
    for f in schema.features:
        if "vocab_file" not in f.encoding:
            continue
        with open(os.path.join(data_dir, f.encoding["vocab_file"]), encoding="utf-8") as fh:
            known = set(fh.read().splitlines())
        col = df[f.source or f.name]
        if f.kind == "sequence":
            per_row = [sum(1 for v in (seq if seq is not None else []) if v is not None and str(v) not in known)
                       for seq in col]
        else:
            per_row = [int(v is not None and not pd.isna(v) and str(v) not in known) for v in col]
        per_row = np.array(per_row)
        out[f.name] = {"rows": int((per_row > 0).sum()), "values": int(per_row.sum())}
    return out, len(df)


def test_day_two_oov_counts_equal_a_hand_count(sim_data, day_two_raw, day_two):
    schema = Schema.load(sim_data)
    stats = json.loads(_read(os.path.join(day_two, "stats.json")))
    want, rows = _hand_oov(day_two_raw, schema, sim_data)
    got = {name: {"rows": sum(s["oov"][name]["rows"] for s in stats["splits"].values()),
                  "values": sum(s["oov"][name]["values"] for s in stats["splits"].values())} for name in want}
    assert got == want
    assert want["user_id"]["rows"] > 0 and want["ad_id"]["rows"] > 0  # new users and ads reached OOV
    assert stats["rows_in"] == rows == stats["rows_written"] + stats["rows_quarantined"]
    for split in stats["splits"].values():
        assert split["rows_in"] == split["rows_written"] + split["rows_quarantined"]


@pytest.mark.parametrize("runner", ["DirectRunner", pytest.param("DaskRunner", marks=pytest.mark.slow)])
def test_day_one_encoded_with_its_own_schema_is_day_one_byte_for_byte(sim_raw, sim_data, tmp_path, monkeypatch,
                                                                      runner):
    """No statistics are computed with a frozen schema (the steps that would are made to fail),
    and encoding day one's raw data with day one's schema reproduces day one's output."""
    from pipeline.beam import driver, graph

    def no_statistics(*_):
        raise AssertionError("a frozen-schema run computed statistics")

    for module, name in ((graph, "train_stats"), (graph, "build_payload"), (driver, "build_payload"),
                         (driver, "_stats_pass")):
        monkeypatch.setattr(module, name, no_statistics)
    out = str(tmp_path / "data")
    overrides = dict(_preprocess_overrides(sim_raw, out), schema_from=sim_data)
    if runner == "DaskRunner":
        from dask.distributed import LocalCluster

        with LocalCluster(n_workers=1, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
            overrides["runner"] = {"name": "DaskRunner", "dask_address": cluster.scheduler_address}
            run_preprocess(load_config(PreprocessConfig, os.path.join(CONFIGS, "preprocess_sim.yaml"), overrides),
                           progress=False)
    else:
        run_preprocess(load_config(PreprocessConfig, os.path.join(CONFIGS, "preprocess_sim.yaml"), overrides),
                       progress=False)
    files = [f for f in _files(sim_data) if f not in ("stats.json", MARKER)]  # the marker holds a time
    assert files == [f for f in _files(out) if f not in ("stats.json", MARKER)] and HEAD_USERS in files
    for rel in files:
        assert _read(os.path.join(out, rel)) == _read(os.path.join(sim_data, rel)), rel
    ours, theirs = (json.loads(_read(os.path.join(d, "stats.json")))["splits"] for d in (out, sim_data))
    assert {k: v["oov"] for k, v in ours.items()} == {k: v["oov"] for k, v in theirs.items()}


@pytest.mark.parametrize("change, named", [
    (lambda fs: fs[0]["encoding"].update(min_count=5), "feature 'user_id': encoding.min_count is 5"),
    (lambda fs: fs.pop(3), "missing ['city']"),
    (lambda fs: fs[6].update(role="ad"), "feature 'item_id': role is 'ad'"),
])
def test_config_that_differs_from_the_frozen_schema_fails_naming_the_feature(sim_raw, sim_data, tmp_path,
                                                                           change, named):
    with open(os.path.join(CONFIGS, "preprocess_sim.yaml")) as fh:
        features = yaml.safe_load(fh)["features"]
    change(features)
    out = str(tmp_path / "data")
    overrides = dict(_preprocess_overrides(sim_raw, out), features=features, schema_from=sim_data)
    with pytest.raises(ConfigError, match=f"schema_from '{sim_data}'.*{named}".replace("[", r"\[").replace("(", r"\(")):
        run_preprocess(load_config(PreprocessConfig, os.path.join(CONFIGS, "preprocess_sim.yaml"), overrides),
                       progress=False)
    assert not os.path.exists(out)


def test_schema_from_a_folder_without_an_earlier_output_fails_naming_the_file(sim_raw, sim_data, tmp_path):
    old = tmp_path / "old"  # day one's output from before head_users.txt was written
    shutil.copytree(sim_data, old)
    os.remove(old / HEAD_USERS)
    for source, missing in ((str(old), HEAD_USERS), (str(tmp_path / "nowhere"), "schema.json")):
        out = str(tmp_path / "data")
        overrides = dict(_preprocess_overrides(sim_raw, out), schema_from=source)
        with pytest.raises(ConfigError, match=f"schema_from: '{source}/{missing}' does not exist"):
            run_preprocess(load_config(PreprocessConfig, os.path.join(CONFIGS, "preprocess_sim.yaml"), overrides),
                           progress=False)
        assert not os.path.exists(out)


# ---- warm start ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def day_one_run(sim_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    summary = train_mod.train(train_config(sim_data, runs, run_name="day1", epochs=1, steps_per_epoch=5))
    return summary["run_dir"]


class _FirstStepProbe(tf.keras.callbacks.Callback):
    """The model's predictions on ``batch`` when fit begins (before the first step)."""

    def __init__(self, batch):
        super().__init__()
        self.batch, self.predictions = batch, None

    def on_train_begin(self, logs=None):
        self.predictions = _predict(self.model, self.batch)


def _predict(model, batch):
    """The model's click probabilities on ``batch``."""
    out = model(batch, training=False)
    return np.asarray(out["click"] if isinstance(out, dict) else out)


def test_init_from_starts_from_the_earlier_runs_predictions(day_one_run, day_two, tmp_path, monkeypatch):
    batch = next(iter(make_dataset(day_two, "valid", 256, shuffle=False, labels=["click"])))[0]
    probe = _FirstStepProbe(batch)
    callbacks = train_mod._callbacks
    monkeypatch.setattr(train_mod, "_callbacks", lambda *a, **k: [probe] + callbacks(*a, **k))
    cfg = train_config(day_two, tmp_path / "runs", run_name="day2", epochs=1, steps_per_epoch=3,
                       init_from=day_one_run)
    summary = train_mod.train(cfg)
    want = _predict(load_model(day_one_run)[0], batch)
    np.testing.assert_allclose(probe.predictions, want, rtol=1e-6, atol=1e-7)
    fresh = _FirstStepProbe(batch)  # without init_from the same seed starts elsewhere
    monkeypatch.setattr(train_mod, "_callbacks", lambda *a, **k: [fresh] + callbacks(*a, **k))
    train_mod.train(train_config(day_two, tmp_path / "runs", run_name="fresh", epochs=1, steps_per_epoch=3))
    assert np.abs(fresh.predictions - want).max() > 1e-3
    after = _predict(load_model(summary["run_dir"])[0], batch)  # and the warm run trained on from there
    assert np.abs(after - want).max() > 1e-6


def test_init_from_another_model_config_or_an_unfinished_run_is_refused(day_one_run, day_two, tmp_path):
    cfg = train_config(day_two, tmp_path / "runs", init_from=day_one_run, **{"model.embedding_dim": 4})
    with pytest.raises(ConfigError, match="model.embedding_dim is 4 in this config but 8 in that run"):
        train_mod.train(cfg)
    with pytest.raises(RunError, match="not a completed run"):
        train_mod.train(train_config(day_two, tmp_path / "runs", init_from=str(tmp_path)))
    assert not os.path.exists(tmp_path / "runs")  # refused before any work


PS_WARM_START = """
import json, sys
from features import _tfenv
import numpy as np
from models.factory import build_model
from pipeline.data import make_dataset
from pipeline.strategy import StrategyConfig, make_strategy
from pipeline.train import warm_start
from serving.run_artifacts import load_model, model_spec
data, run = sys.argv[1], sys.argv[2]
spec = model_spec(run)
strategy = make_strategy(StrategyConfig(name="parameter_server", in_process={"workers": 1, "ps": 2},
                                        ps_min_shard_bytes=4096))
x, _ = next(iter(make_dataset(data, "test", 64, shuffle=False, labels=["click"])))
with strategy.scope():
    model = build_model(spec["schema"], spec["tasks"], **spec["model"])
    model(x, training=False)
warm_start(model, run, x)
with strategy.scope():
    p = model(x, training=False)["click"].numpy()
table = model.embedding.tables[0]["user_id"]["embedding"]
q = load_model(run)[0](x, training=False)["click"].numpy()
print(json.dumps({"shards": len(getattr(table, "variables", [table])), "maxdiff": float(np.abs(p - q).max())}))
"""


@pytest.mark.slow
def test_warm_start_fills_tables_sharded_over_parameter_servers(day_one_run, day_two):
    import subprocess

    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", PS_WARM_START, day_two, day_one_run], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info == {"shards": 2, "maxdiff": 0.0}  # a sharded table, the earlier run's predictions


def _train_yaml(path, data_dir, runs, init_from):
    cfg = {"data_dir": data_dir, "runs_dir": str(runs), "run_name": "cli", "tasks": ["click"],
           "model": {"backbone": "dnn", "backbone_options": {"dnn_units": [32, 16]}, "embedding_dim": 8},
           "batch_size": 512, "eval_batch_size": 4096, "epochs": 1, "steps_per_epoch": 3,
           "eval_splits": ["test"], "verbose": 0}
    path.write_text(yaml.safe_dump(cfg))
    return ["train", "--config", path, "--set", f"init_from={init_from}"]


@pytest.mark.slow
def test_cli_warm_start_exits_0_and_another_fingerprint_exits_2(day_one_run, sim_data, day_two, tmp_path):
    ctrflow(*_train_yaml(tmp_path / "ok.yaml", day_two, tmp_path / "runs", day_one_run), check=0)
    assert os.path.exists(tmp_path / "runs" / "cli" / "done.json")
    other = tmp_path / "other"  # day one's data with a schema that differs in one recorded field
    shutil.copytree(sim_data, other)
    schema = json.loads(_read(other / "schema.json"))
    schema["extra"]["note"] = "another day"
    (other / "schema.json").write_text(json.dumps(schema))
    theirs, ours = Schema.load(sim_data).fingerprint(), Schema.load(str(other)).fingerprint()
    assert theirs != ours
    proc = ctrflow(*_train_yaml(tmp_path / "bad.yaml", str(other), tmp_path / "runs2", day_one_run), check=2)
    assert theirs in proc.stderr and ours in proc.stderr and "init_from" in proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "runs2")
