"""Helpers shared by the training tests (imported as a plain module by pytest)."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_config(data_dir, runs_dir, **overrides):
    """A small, fast training config on ``data_dir`` (dotted overrides allowed)."""
    from pipeline.config import from_dict
    from pipeline.train import TrainConfig

    base = {"data_dir": data_dir, "runs_dir": str(runs_dir), "run_name": "t", "tasks": ["click"],
            "model": {"backbone": "dnn", "backbone_options": {"dnn_units": [32, 16]}, "embedding_dim": 8},
            "batch_size": 512, "eval_batch_size": 4096, "epochs": 3, "shuffle_buffer": 10000,
            "eval_splits": ["test"], "verbose": 0}
    for key, value in overrides.items():
        node = base
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return from_dict(TrainConfig, base)


def killed_then_resumed(cfg, killed_after: int, monkeypatch):
    """``pipeline.train.train(cfg)`` killed right after epoch ``killed_after``'s backup, then
    started again with the same config: the resumed run's summary (its run.json says resumed)."""
    import json

    import pytest

    from pipeline import runs
    from pipeline.train import train

    class Killed(Exception):
        pass

    write = runs.write_backup

    def write_then_die(run_dir, epoch, *args):
        write(run_dir, epoch, *args)
        if epoch == killed_after:
            raise Killed

    monkeypatch.setattr(runs, "write_backup", write_then_die)
    with pytest.raises(Killed):
        train(cfg)
    monkeypatch.setattr(runs, "write_backup", write)
    resumed = train(cfg)
    with open(os.path.join(cfg.runs_dir, cfg.run_name, "run.json")) as fh:
        assert json.load(fh)["resumed"] is True
    return resumed
