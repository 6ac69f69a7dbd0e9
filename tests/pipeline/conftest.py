"""Shared fixtures: a tiny simulated ads log, preprocessed once per test session."""
import os

import pytest

from pipeline.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory):
    """Simulate ~8k ad impressions and run the Beam job on them: returns the data dir."""
    from pipeline.preprocess import run_preprocess
    from pipeline.preprocess_config import PreprocessConfig
    from pipeline.simulator import SimulatorConfig, simulate

    root = tmp_path_factory.mktemp("sim")
    raw, data = str(root / "raw"), str(root / "data")
    simulate(load_config(SimulatorConfig, os.path.join(CONFIGS, "simulate_default.yaml"),
                         {"out_dir": raw, "num_impressions": 8000, "rec_impressions": 1000,
                          "random_impressions": 1000, "num_users": 600, "num_items": 300, "num_ads": 800,
                          "shard_rows": 4000}), progress=False)
    cfg = load_config(PreprocessConfig, os.path.join(CONFIGS, "preprocess_sim.yaml"),
                      {"input.path": os.path.join(raw, "ads", "*.parquet"), "output": data,
                       "split.extra_splits": {"random": os.path.join(raw, "random", "*.parquet")},
                       "runner.num_workers": 1, "runner.running_mode": "in_memory"})
    run_preprocess(cfg, progress=False)
    return data


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
