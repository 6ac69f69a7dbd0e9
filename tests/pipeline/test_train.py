"""The training driver: convergence, run directory, reproducibility, resume, errors, strategies."""
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.strategy import free_port
from pipeline.train import NanLossError, train
from train_helpers import REPO, train_config


def test_train_converges_writes_run_dir_and_is_reproducible(sim_data, tmp_path):
    a = train(train_config(sim_data, tmp_path, run_name="a"))
    b = train(train_config(sim_data, tmp_path, run_name="b"))
    run_dir = a["run_dir"]
    for name in ("config.yaml", "run.json", "model.json", "history.csv", "done.json", "weights", "checkpoints",
                 "tensorboard"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert not os.path.exists(os.path.join(run_dir, "backup")), "backup is removed once the run is complete"
    info = json.load(open(os.path.join(run_dir, "run.json")))
    assert len(info["schema_fingerprint"]) == 16 and info["git_commit"]
    assert info["machine"]["cores"] == os.cpu_count() and info["machines"] == [info["machine"]["key"]]
    hist = a["history"]
    assert hist["loss"][-1] < hist["loss"][0]
    assert max(hist["val_auc"]) > 0.6, hist["val_auc"]
    # same config and seed -> the same numbers
    np.testing.assert_allclose(a["history"]["val_auc"], b["history"]["val_auc"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(a["history"]["loss"], b["history"]["loss"], rtol=1e-6)


def test_evaluate_writes_metrics_and_report(sim_data, tmp_path):
    from pipeline.evaluate import evaluate_run

    run_dir = train(train_config(sim_data, tmp_path, epochs=1))["run_dir"]
    results = evaluate_run(run_dir, splits=["test", "random"])
    overall = results["test"]["click"]["overall"]
    for key in ("auc", "gauc", "logloss", "ece", "GP-LT", "GP-Head", "GAP"):
        assert overall[key] is not None and np.isfinite(overall[key]), key
    assert set(results["test"]["click"]["slices"]["activity"]) == {"G1", "G2", "G3", "G4", "G5"}
    saved = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert saved["test"]["click"]["overall"]["auc"] == pytest.approx(overall["auc"])
    assert os.path.exists(os.path.join(run_dir, "report.md"))
    assert os.path.exists(os.path.join(run_dir, "eval_test", "reliability_click.png"))

    # impression-ratio slices from the simulator's logged ratio (Rec4Ad Eq. 2)
    from features.encoders import NumpyEncoder
    from features.schema import Schema
    from pipeline.evaluate import logged_impression_ratio

    ads_table = os.path.join(os.path.dirname(sim_data), "raw", "ads.parquet")
    schema = Schema.load(sim_data)
    ratio = logged_impression_ratio(ads_table, schema, sim_data, "ad_id")
    table = pd.read_parquet(ads_table)
    shown = table[table["impressions"] > 0].iloc[:5]
    ids = NumpyEncoder(schema.feature("ad_id"), sim_data).encode(shown["ad_id"].to_numpy())[:, 0]
    for ad_id, want in zip(ids.tolist(), shown["impression_ratio"].tolist()):
        assert ad_id == 1 or ratio[ad_id] == pytest.approx(want)  # 1 = OOV (first shown after training)
    sliced = evaluate_run(run_dir, splits=["test"], ad_stats=ads_table, write=False)
    groups = sliced["test"]["click"]["slices"]["impression_ratio"]
    assert set(groups) == {"IR1", "IR2", "IR3", "IR4"}
    assert sum(g["count"] for g in groups.values()) == overall["count"]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['impression_ratio'\]"):
        bad = tmp_path / "ads.csv"
        table[["ad_id"]].to_csv(bad, index=False)
        evaluate_run(run_dir, splits=["test"], ad_stats=str(bad), write=False)


def test_bf16_run_trains_serves_like_keras_and_restores_the_policy(sim_data, tmp_path):
    """precision: mixed_bfloat16 (placement embeddings, the most in bf16) -> the run learns, the
    caller's float32 policy and placement are back, and the exported SavedModel (rebuilt in
    float32, as a serving process does) matches Keras."""
    import tensorflow as tf

    from pipeline.data import make_dataset
    from serving.clients import LocalModelServer
    from serving.export import export_run
    from serving.run_artifacts import load_model
    from serving.signatures import ENCODED_SIGNATURE

    from models.layers import embedding_output_dtype, mlp_layer_policy

    summary = train(train_config(sim_data, tmp_path, precision="mixed_bfloat16",  # the float32 test's config
                                 precision_placement="embeddings"))
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    assert embedding_output_dtype() is None and mlp_layer_policy(0) is None
    assert max(summary["history"]["val_auc"]) > 0.6, summary["history"]["val_auc"]
    info = export_run(summary["run_dir"], str(tmp_path / "serving"), warmup_batch_sizes=(1,))
    model, schema, _ = load_model(summary["run_dir"])
    inputs = next(iter(make_dataset(sim_data, "test", 256, shuffle=False, labels=["click"])))[0]
    encoded = {name: inputs[name].numpy() for name in schema.feature_names}
    want = model(encoded, training=False)["click"].numpy().reshape(-1)
    got = LocalModelServer(info["export_dir"]).predict(encoded, signature_name=ENCODED_SIGNATURE)["click"]
    assert np.std(want) > 1e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_config_errors_name_what_is_wrong(sim_data, tmp_path):
    with pytest.raises(Exception, match="no_such_feature"):
        train(train_config(sim_data, tmp_path, features=["user_id", "no_such_feature"]))
    with pytest.raises(Exception, match="no_such_task"):
        train(train_config(sim_data, tmp_path, tasks=["no_such_task"]))
    with pytest.raises(ConfigError, match="does not exist"):
        train(train_config(str(tmp_path / "missing"), tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data_dir": sim_data, "epoch": 3}))
    from pipeline.config import load_config
    from pipeline.train import TrainConfig

    with pytest.raises(ConfigError, match="epoch"):
        load_config(TrainConfig, str(bad))
    with pytest.raises(ConfigError, match="profile_batches"):
        train_config(sim_data, tmp_path, profile_batches=[5, 2])
    with pytest.raises(ConfigError, match=r"batch_size = 'abc': expected an integer >= 1"):
        train_config(sim_data, tmp_path, batch_size="abc")
    with pytest.raises(ConfigError, match=r"early_stopping\.monitor = 'val_acu'.*'val_click_auc'"):
        train(train_config(sim_data, tmp_path, **{"early_stopping.monitor": "val_acu"}))
    with pytest.raises(ConfigError, match=r"model\.backbone_options\.dnn_unitz: unknown option of backbone 'dnn'"):
        train_config(sim_data, tmp_path, **{"model.backbone_options": {"dnn_unitz": [8]}})


def test_profile_batches_write_a_profiler_trace(sim_data, tmp_path):
    run_dir = train(train_config(sim_data, tmp_path, epochs=1, profile_batches=[2, 4]))["run_dir"]
    traces = glob.glob(os.path.join(run_dir, "tensorboard", "**", "*.xplane.pb"), recursive=True)
    assert traces and os.path.getsize(traces[0]) > 1000, traces


@pytest.mark.parametrize("jit", [False, True], ids=["step-check", "xla-epoch-guard"])
def test_nan_loss_stops_naming_the_step(sim_data, tmp_path, jit):
    """SGD at 1e30: step 1's update is finite but huge, step 2's logits overflow (the clipped
    loss alone would stay finite). The compiled step names step 2; under XLA, which compiles
    the step's checks out, the epoch-end guard names epoch 1 and the non-finite weights.
    Nothing is backed up or marked done."""
    cfg = train_config(sim_data, tmp_path, epochs=2, jit_compile=jit,
                       **{"optimizer.name": "sgd", "optimizer.learning_rate": 1e30})
    want = (r"non-finite values at the end of epoch 1 \(after step 46\) in the loss, ctr_model\w*/embedding/" if jit
            else r"non-finite logit of task 'click' at training step 2 \(epoch 1, batch 2 of 46\)")
    with pytest.raises(NanLossError, match=want):
        train(cfg)
    run_dir = tmp_path / "t"
    assert not (run_dir / "done.json").exists() and not (run_dir / "backup" / "latest.json").exists()


def _write_config(tmp_path, sim_data, name, **overrides):
    from pipeline.config import to_dict

    cfg = to_dict(train_config(sim_data, tmp_path / "runs", run_name=name, **overrides))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _ctrflow(args, env=None, **kw):
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_a_kill_at_any_instant_of_a_backup_resumes_from_one_complete_epoch(tmp_path):
    """The backup of epoch 2 killed before its pointer was replaced: the run resumes from
    epoch 1 (its weights, optimizer step and state together) and the partial folder goes;
    killed after the pointer, before the clean-up: epoch 2, and epoch 1's folder goes.
    (The end-to-end kill is tests/reliability/test_resume.py.)"""
    import tensorflow as tf

    from pipeline import runs

    def model():
        m = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,))])
        m.compile(optimizer="adam", loss="mse")
        return m

    trained = model()
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    trained.fit(x, y, epochs=1, verbose=0)
    epoch1 = [w.copy() for w in trained.get_weights()]
    runs.write_backup(str(tmp_path), 1, trained, {"epoch": 1, "history": {"loss": [0.5]}}, [epoch1[0]])
    trained.fit(x, y, epochs=1, verbose=0)
    backup = tmp_path / "backup"
    (backup / "epoch-2").mkdir()  # killed while writing epoch 2: checkpoint written, state not yet
    tf.train.Checkpoint(model=trained).write(str(backup / "epoch-2" / "ckpt"))

    restored = model()
    restored.fit(x, y, epochs=1, verbose=0)  # other weights, until the backup is read
    state, arrays = runs.read_backup(str(tmp_path), restored)
    assert state == {"epoch": 1, "history": {"loss": [0.5]}}
    np.testing.assert_array_equal(arrays[0], epoch1[0])
    for got, want in zip(restored.get_weights(), epoch1):
        np.testing.assert_array_equal(got, want)
    assert int(restored.optimizer.iterations.numpy()) == 1
    assert sorted(os.listdir(backup)) == ["epoch-1", "latest.json"]

    runs.write_backup(str(tmp_path), 2, trained, {"epoch": 2}, [])
    (backup / "epoch-1").mkdir()  # killed after epoch 2's pointer, before the clean-up
    state, arrays = runs.read_backup(str(tmp_path), restored)
    assert state == {"epoch": 2} and arrays == [] and sorted(os.listdir(backup)) == ["epoch-2", "latest.json"]
    for got, want in zip(restored.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert int(restored.optimizer.iterations.numpy()) == 2


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes_converges_like_single(sim_data, tmp_path):
    single = train(train_config(sim_data, tmp_path, run_name="single", epochs=2))
    config = _write_config(tmp_path, sim_data, "mwms", epochs=2, **{"strategy.name": "multi_worker_mirrored"})
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    procs = [_ctrflow(["train", "--config", config],
                      env={"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                    "task": {"type": "worker", "index": i}})})
             for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    done = json.load(open(tmp_path / "runs" / "mwms" / "done.json"))
    mw_auc = done["history"]["val_auc"][-1]
    assert mw_auc > 0.55 and abs(mw_auc - single["history"]["val_auc"][-1]) < 0.03, (mw_auc, single["history"])


PS_SHARDING_CHECK = """
import json, sys
from features import _tfenv
import tensorflow as tf
from features.schema import Schema
from models.factory import build_model
from pipeline.data import make_dataset
from pipeline.strategy import StrategyConfig, make_strategy
data = sys.argv[1]
strategy = make_strategy(StrategyConfig(name="parameter_server", in_process={"workers": 1, "ps": 2},
                                        ps_min_shard_bytes=4096))
with strategy.scope():
    model = build_model(Schema.load(data).to_dict(), ["click"], backbone="dnn",
                        backbone_options={"dnn_units": [16]}, embedding_dim=8)
    x, _ = next(iter(make_dataset(data, "test", 64, shuffle=False, labels=["click"])))
    p = model(x, training=False)["click"].numpy()
table = model.embedding.tables[0]["user_id"]["embedding"]
small = model.embedding.tables[0]["gender"]["embedding"]
print(json.dumps({"shards": [list(v.shape) for v in getattr(table, "variables", [table])],
                  "devices": sorted({v.device for v in getattr(table, "variables", [table])}),
                  "small_shards": len(getattr(small, "variables", [small])),
                  "num_ids": Schema.load(data).feature("user_id").num_ids, "finite": bool((p == p).all())}))
"""


@pytest.mark.slow
def test_parameter_server_in_process_cluster_trains_with_sharded_tables(sim_data, tmp_path):
    # tables of >= ps_min_shard_bytes are split row-wise over the PS tasks and still looked up right
    res = subprocess.run([sys.executable, "-c", PS_SHARDING_CHECK, sim_data], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(info["shards"]) == 2 and sum(s[0] for s in info["shards"]) == info["num_ids"], info
    assert len(info["devices"]) == 2 and all("/job:ps" in d for d in info["devices"]), info
    assert info["small_shards"] == 1 and info["finite"], info
    config = _write_config(tmp_path, sim_data, "ps", epochs=3, steps_per_epoch=40,
                           **{"strategy.name": "parameter_server",
                              "strategy.in_process": {"workers": 2, "ps": 2},
                              "strategy.ps_min_shard_bytes": 4096})
    out, _ = _ctrflow(["train", "--config", config]).communicate(timeout=900)
    done_path = tmp_path / "runs" / "ps" / "done.json"
    assert done_path.exists(), out
    hist = json.load(open(done_path))["history"]
    assert hist["loss"][-1] < hist["loss"][0] and hist["val_loss"][-1] < hist["val_loss"][0], hist


# known per-seed test metrics of a grid (method -> one dict per seed), fed to run_compare in place
# of training and evaluation, so the table can be checked against numpy / scipy
GRID = {"dnn": [{"auc": 0.700, "logloss": 0.300}, {"auc": 0.710, "logloss": 0.305},
                {"auc": 0.705, "logloss": 0.302}, {"auc": 0.698, "logloss": 0.301}],
        "deepfm": [{"auc": 0.712, "logloss": 0.299}, {"auc": 0.719, "logloss": 0.306},
                   {"auc": 0.716, "logloss": 0.300}, {"auc": 0.707, "logloss": 0.300}],
        "dcnv2": [{"auc": 0.690, "logloss": 0.290}, {"auc": 0.720, "logloss": 0.296},
                  {"auc": 0.700, "logloss": 0.291}, {"auc": 0.701, "logloss": 0.292}]}
GRID_SEEDS = [3, 5, 7, 9]
CELL = re.compile(r"^(\*\*)?(?P<mean>[-\d.e]+) ± (?P<std>[-\d.e]+)(\*\*)?(?: \(p=(?P<p>[^\\)]+)(?P<stars>(\\\*)*)\))?$")


def _fake_train_and_evaluate(monkeypatch, trained):
    """run_compare's training records (method, seed, backbone); evaluation returns GRID's value."""
    import pipeline.compare as compare

    def fake_train(cfg, config_name):
        trained.append((config_name, cfg.seed, cfg.model.backbone))
        return {"run_dir": os.path.join(cfg.runs_dir, cfg.run_name)}

    def fake_evaluate(run_dir, splits, write, ad_stats=None, visual_truth=None):
        method, seed = os.path.basename(run_dir).rsplit("-seed", 1)
        metrics = GRID[method][GRID_SEEDS.index(int(seed))]
        return {splits[0]: {"click": {"overall": dict(metrics)}}}

    monkeypatch.setattr(compare, "train", fake_train)
    monkeypatch.setattr(compare, "evaluate_run", fake_evaluate)


def _table_cells(table):
    rows = [ln.strip("|").split("|") for ln in table.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in rows[0]]
    return {r[0].strip().replace(" (baseline)", ""): dict(zip(header[1:], (c.strip() for c in r[1:])))
            for r in rows[2:]}


def test_compare_grid_reports_mean_std_and_p_values(sim_data, tmp_path, monkeypatch):
    """Every cell of the grid's table equals numpy's mean / std (ddof 1) and scipy's paired
    t-test against the baseline over the same seeds; the best mean per metric is bold."""
    from scipy import stats

    from pipeline.compare import CompareConfig, run_compare

    trained = []
    _fake_train_and_evaluate(monkeypatch, trained)
    base = _write_config(tmp_path, sim_data, "base", epochs=1)
    cfg = CompareConfig(base_config=base, out_dir=str(tmp_path / "grid"), seeds=GRID_SEEDS, baseline="dnn",
                        metrics=["auc", "logloss"],
                        methods={m: {"model.backbone": m, "model.backbone_options": {}} for m in GRID})
    out = run_compare(cfg, verbose=0)
    assert trained == [(m, s, m) for m in GRID for s in GRID_SEEDS]
    assert out["results"] == GRID
    assert json.load(open(tmp_path / "grid" / "results.json"))["results"] == GRID
    cells = _table_cells(out["table"])
    assert set(cells) == set(GRID)
    best = {"auc": "deepfm", "logloss": "dcnv2"}  # highest mean AUC, lowest mean logloss (by hand)
    for method, runs in GRID.items():
        for metric in ("auc", "logloss"):
            values = np.array([r[metric] for r in runs])
            base_values = np.array([r[metric] for r in GRID["dnn"]])
            m = CELL.match(cells[method][metric])
            assert m, cells[method][metric]
            assert float(m["mean"]) == pytest.approx(values.mean(), abs=5e-5)
            assert float(m["std"]) == pytest.approx(values.std(ddof=1), abs=5e-5)
            assert (cells[method][metric].startswith("**")) == (best[metric] == method), (method, metric)
            if method == "dnn":
                assert m["p"] is None
                continue
            p = stats.ttest_rel(values, base_values).pvalue
            assert float(m["p"]) == pytest.approx(p, rel=5e-3), (method, metric)
            assert m["stars"].count("*") == (2 if p <= 0.01 else 1 if p <= 0.05 else 0)
    # the hand-picked inputs span the star classes, so a wrong p-value would show
    assert "\\*\\*" in cells["deepfm"]["auc"] and "\\*" not in cells["dcnv2"]["auc"]
    assert os.path.exists(out["report"])


def test_compare_check_builds_every_method_and_trains_nothing(sim_data, tmp_path):
    """``--check`` finds what only building the model can (a single-branch backbone under
    TF4CTR), naming the method, and otherwise reports each method's size; no run is written."""
    from pipeline.compare import CompareConfig, check_compare
    from pipeline.config import ConfigError

    base = _write_config(tmp_path, sim_data, "base", epochs=1)
    methods = {"dnn": {"model.backbone": "dnn", "model.backbone_options": {"dnn_units": [8]}},
               "dualmlp": {"model.backbone": "dualmlp", "model.backbone_options": {"mlp1_units": [8],
                                                                                    "mlp2_units": [8, 8]}}}
    cfg = CompareConfig(base_config=base, out_dir=str(tmp_path / "grid"), seeds=[1, 2], baseline="dnn",
                        methods=methods)
    cells = check_compare(cfg)
    assert [c["method"] for c in cells] == ["dnn", "dualmlp"] and cells[0]["parameters"] < cells[1]["parameters"]
    assert not (tmp_path / "grid").exists()
    methods["tf4ctr-on-dnn"] = {**methods["dnn"], "model.framework": "tf4ctr"}
    with pytest.raises(ConfigError, match=r"compare method 'tf4ctr-on-dnn': tf4ctr needs a two-branch backbone"):
        check_compare(dataclasses.replace(cfg, methods=methods))
