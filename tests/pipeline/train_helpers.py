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
