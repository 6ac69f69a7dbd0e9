"""A run folder is trained by one process at a time: a second ``train`` of the same run while
the first is alive is refused naming the holder (its writes would interleave with the first's),
a killed run's lock does not block the restart that resumes it, and the lock goes with the run,
whether it ends or fails."""
import json
import os
import socket
import subprocess
import sys

import pytest

from pipeline import runs
from pipeline.train import train
from train_helpers import train_config


def _hold_lock(run_dir, pid):
    with open(runs.lock_path(run_dir), "w") as fh:
        json.dump({"pid": pid, "host": socket.gethostname()}, fh)


def test_a_run_trained_by_a_live_process_is_refused(sim_data, tmp_path):
    cfg = train_config(sim_data, tmp_path / "runs", epochs=1, steps_per_epoch=5)
    run_dir = str(tmp_path / "runs" / "t")
    os.makedirs(tmp_path / "runs")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _hold_lock(run_dir, other.pid)
        with pytest.raises(runs.RunBusy, match=rf"run '.*t' is being trained by process {other.pid} on host .*"
                                               rf"lock file '.*\.t\.lock'"):
            train(cfg)
        assert not os.path.exists(os.path.join(run_dir, "config.yaml"))  # nothing of the holder's overwritten
        assert runs.lock_holder(run_dir)["pid"] == other.pid  # and its lock kept
    finally:
        other.kill()
        other.wait()
    # the holder is gone (killed): its lock is stale, the run trains and its lock goes with it
    summary = train(cfg)
    assert os.path.exists(os.path.join(summary["run_dir"], "done.json"))
    assert not os.path.exists(runs.lock_path(run_dir))


def test_the_lock_is_released_when_training_fails(sim_data, tmp_path, monkeypatch):
    import pipeline.train as train_module

    def fail(*args):
        assert runs.lock_holder(str(tmp_path / "runs" / "t"))["pid"] == os.getpid()  # held while training
        raise RuntimeError("out of memory")

    monkeypatch.setattr(train_module, "_train_in", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(train_config(sim_data, tmp_path / "runs", epochs=1))
    assert not os.path.exists(runs.lock_path(str(tmp_path / "runs" / "t")))


def test_a_completed_run_is_refused_without_keeping_the_lock(sim_data, tmp_path):
    cfg = train_config(sim_data, tmp_path / "runs", epochs=1, steps_per_epoch=5)
    train(cfg)
    with pytest.raises(runs.RunComplete, match="already complete"):
        train(cfg)
    assert not os.path.exists(runs.lock_path(str(tmp_path / "runs" / "t")))
