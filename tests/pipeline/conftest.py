"""Shared fixtures: a tiny simulated ads log, preprocessed once per test session."""
import os

import pytest

from pipeline.config import load_config
from train_helpers import REPO

CONFIGS = os.path.join(REPO, "configs")


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory):
    """Simulate 30k ad impressions and run the Beam job on them: returns the data dir."""
    from pipeline.preprocess import run_preprocess
    from pipeline.preprocess_config import PreprocessConfig
    from pipeline.simulator import SimulatorConfig, simulate

    root = tmp_path_factory.mktemp("sim")
    raw, data = str(root / "raw"), str(root / "data")
    simulate(load_config(SimulatorConfig, os.path.join(CONFIGS, "simulate_default.yaml"),
                         {"out_dir": raw, "num_impressions": 30000, "rec_impressions": 1000,
                          "random_impressions": 2000, "num_users": 1000, "num_items": 300, "num_ads": 800,
                          "shard_rows": 10000}), progress=False)
    cfg = load_config(PreprocessConfig, os.path.join(CONFIGS, "preprocess_sim.yaml"),
                      {"input.path": os.path.join(raw, "ads", "*.parquet"), "output": data,
                       "split.extra_splits": {"random": os.path.join(raw, "random", "*.parquet")},
                       "runner.num_workers": 1, "runner.running_mode": "in_memory"})
    run_preprocess(cfg, progress=False)
    return data
