"""Fixtures shared by every test package: a tiny simulated ads log, simulated and
preprocessed once per test session."""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


@pytest.fixture(scope="session")
def sim_raw(tmp_path_factory):
    """The simulator's raw logs for 30k ad impressions: returns the raw folder."""
    from pipeline.config import load_config
    from pipeline.simulator import SimulatorConfig, simulate

    raw = str(tmp_path_factory.mktemp("sim") / "raw")
    simulate(load_config(SimulatorConfig, os.path.join(CONFIGS, "simulate_default.yaml"),
                         {"out_dir": raw, "num_impressions": 30000, "rec_impressions": 1000,
                          "random_impressions": 2000, "num_users": 1000, "num_items": 300, "num_ads": 800,
                          "shard_rows": 10000}), progress=False)
    return raw


@pytest.fixture(scope="session")
def sim_data(sim_raw):
    """The Beam job run on :func:`sim_raw` (``<raw>/../data``): returns the data dir."""
    from pipeline.config import load_config
    from pipeline.beam.driver import run_preprocess
    from pipeline.preprocess_config import PreprocessConfig

    data = os.path.join(os.path.dirname(sim_raw), "data")
    cfg = load_config(PreprocessConfig, os.path.join(CONFIGS, "preprocess_sim.yaml"),
                      {"input.path": os.path.join(sim_raw, "ads", "*.parquet"), "output": data,
                       "split.extra_splits": {"random": os.path.join(sim_raw, "random", "*.parquet")},
                       "runner.num_workers": 1, "runner.running_mode": "in_memory"})
    run_preprocess(cfg, progress=False)
    return data


def _visual_config(sim_raw, output, overrides=None, **transform):
    """configs/preprocess_sim_visual.yaml on :func:`sim_raw` (in memory, one worker), its
    visual_semantic_ids entry reading the raw folder's images, with ``transform`` options and
    config ``overrides`` changed."""
    import yaml

    from pipeline.config import load_config
    from pipeline.preprocess_config import PreprocessConfig

    path = os.path.join(CONFIGS, "preprocess_sim_visual.yaml")
    with open(path) as fh:
        entry, = yaml.safe_load(fh)["transforms"]
    entry = {**entry, "images": os.path.join(sim_raw, "item_images.npy"), **transform}
    return load_config(PreprocessConfig, path, {
        "input.path": os.path.join(sim_raw, "ads", "*.parquet"), "output": str(output),
        "split.extra_splits": {"random": os.path.join(sim_raw, "random", "*.parquet")},
        "runner.num_workers": 1, "runner.running_mode": "in_memory", "transforms": [entry], **(overrides or {})})


@pytest.fixture(scope="session")
def sim_visual_data(sim_raw):
    """The Beam job with visual semantic IDs (configs/preprocess_sim_visual.yaml) run on
    :func:`sim_raw` (``<raw>/../data_visual``): returns the data dir."""
    from pipeline.beam.driver import run_preprocess

    data = os.path.join(os.path.dirname(sim_raw), "data_visual")
    run_preprocess(_visual_config(sim_raw, data), progress=False)
    return data


@pytest.fixture(scope="session")
def visual_config(sim_raw):
    """``visual_config(output, overrides=None, **transform_options)``: the preprocess config of
    :func:`sim_visual_data`."""
    return lambda output, overrides=None, **transform: _visual_config(sim_raw, output, overrides, **transform)
