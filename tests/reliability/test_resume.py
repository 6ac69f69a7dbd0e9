"""A training run killed with SIGKILL during epoch 2 and started again with the same command
ends with the same model, history, best epoch and metrics as a run never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS, STEPS = 6, 40


def _config(tmp_path, data_dir, name):
    """Dropout, a learning rate at which the validation AUC peaks at epoch 1, and patience 2:
    early stopping ends the run at epoch 3 and restores epoch 1's weights, so the resumed run
    decides right only with early stopping's state from before the kill."""
    cfg = {"data_dir": data_dir, "runs_dir": str(tmp_path / "runs"), "run_name": name, "tasks": ["click"],
           "model": {"backbone": "dnn", "embedding_dim": 8,
                     "backbone_options": {"dnn_units": [32, 16], "dnn_dropout": 0.3}},
           "optimizer": {"learning_rate": 0.01}, "early_stopping": {"patience": 2},
           "batch_size": 512, "eval_batch_size": 4096, "epochs": EPOCHS, "steps_per_epoch": STEPS,
           "eval_splits": ["test"], "verbose": 0}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _kill_during_epoch_2(config, run_dir):
    """Start ``ctrflow train``; SIGKILL it shortly after epoch 1's backup appears."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train", "--config", str(config)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latest = run_dir / "backup" / "latest.json"
    deadline = time.time() + 300
    while not latest.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "epoch 1 did not end within 300 s"
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2 (an epoch takes seconds here)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(latest.read_text())["epoch"] == 1, "the kill must land during epoch 2"
    assert not (run_dir / "done.json").exists()


def _weights(run_dir, sub="weights/model"):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run_dir / sub))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted_run(sim_data, tmp_path, cli):
    runs = tmp_path / "runs"
    cli("train", "--config", _config(tmp_path, sim_data, "straight"), check=0)
    config = _config(tmp_path, sim_data, "killed")
    _kill_during_epoch_2(config, runs / "killed")
    info = json.loads((runs / "killed" / "run.json").read_text())
    (runs / "killed" / "run.json").write_text(json.dumps({**info, "machines": ["the machine it was killed on"]}))
    cli("train", "--config", config, check=0)  # the same command again
    straight, resumed = runs / "straight", runs / "killed"
    info = json.loads((resumed / "run.json").read_text())
    assert info["resumed"] is True
    assert info["machines"] == ["the machine it was killed on", info["machine"]["key"]]  # both ran a part

    want = json.loads((straight / "done.json").read_text())["history"]
    got = json.loads((resumed / "done.json").read_text())["history"]
    val_auc = want["val_auc"]
    best = int(np.argmax(val_auc))
    assert 1 < len(val_auc) < EPOCHS and best < len(val_auc) - 1, f"early stopping must end the run: {val_auc}"
    assert best < 1 + 1, f"the best epoch must come before the kill for its state to matter: {val_auc}"
    assert got == want  # the same epochs, each once, with the same values (exactly)
    assert (resumed / "history.csv").read_text() == (straight / "history.csv").read_text()

    for sub in ("weights/model", "checkpoints/best"):
        a, b = _weights(straight, sub), _weights(resumed, sub)
        assert sorted(a) == sorted(b) and len(a) > 4
        for key in a:
            np.testing.assert_array_equal(b[key], a[key], err_msg=f"{sub}: {key}")

    cli("evaluate", straight, check=0)
    cli("evaluate", resumed, check=0)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (straight, resumed)]
    assert metrics[0]["test"]["click"]["overall"]["auc"] > 0.55
    assert metrics[1] == metrics[0]


@pytest.mark.parametrize("cache", [True, False], ids=["in-memory", "streaming"])
def test_a_resumed_stream_continues_the_uninterrupted_one(sim_data, cache):
    """Epoch k of a resumed run reads what epoch k of the uninterrupted run read: a fresh
    dataset started at batch 50 (in pass 2, 46 batches a pass) yields the uninterrupted
    stream's batches 50, 51, ... (every pass reshuffled, the same in any process)."""
    import tensorflow as tf

    from pipeline.data import make_dataset

    def rows(start, count):
        tf.keras.utils.set_random_seed(3)  # as train() does
        ds = make_dataset(sim_data, "train", 512, shuffle=True, repeat=True, deterministic=True, seed=3,
                          cache=cache, shuffle_buffer=10000, drop_remainder=True, labels=["click"],
                          start_batch=start)
        return [b[0]["user_key"].numpy().ravel().tolist() for b in ds.take(count)]

    straight = rows(0, 100)
    assert rows(50, 50) == straight[50:]
    assert straight[:46] != straight[46:92]  # each pass has its own order
