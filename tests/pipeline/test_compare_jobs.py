"""``ctrflow compare --jobs N`` trains a grid's cells in N worker processes: the numbers equal one
process's, a config two methods share trains once, each cell's output is in ``out_dir/logs``, and a
cell that fails stops the grid naming it and its log."""
import os

import pytest
import yaml

from pipeline.compare import CompareConfig, run_compare
from pipeline.config import ConfigError, to_dict
from train_helpers import train_config

MLP = {"model.backbone": "dnn", "model.backbone_options": {"dnn_units": [8]}}


def _grid(sim_data, tmp_path, name, methods, **kw):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(to_dict(train_config(sim_data, tmp_path / "unused", epochs=2))))
    return CompareConfig(base_config=str(base), out_dir=str(tmp_path / name), seeds=[1], metrics=["auc", "logloss"],
                         baseline="MLP", methods=methods, **kw)


def test_parallel_cells_give_one_process_numbers_and_train_a_shared_config_once(sim_data, tmp_path):
    methods = {"MLP": MLP, "MLP again": dict(MLP), "DeepFM": {"model.backbone": "deepfm"}}
    serial = run_compare(_grid(sim_data, tmp_path, "serial", methods), verbose=0)
    grid = _grid(sim_data, tmp_path, "parallel", methods)
    parallel = run_compare(grid, verbose=2, jobs=2)
    for method, seeds in serial["results"].items():
        assert parallel["results"][method][0] == pytest.approx(seeds[0], abs=1e-6), method
    runs_dir = os.path.join(grid.out_dir, "runs")
    assert sorted(os.listdir(runs_dir)) == ["DeepFM-seed1", "MLP-seed1"]  # "MLP again" reused MLP's run
    logs = os.path.join(grid.out_dir, "logs")
    assert sorted(os.listdir(logs)) == ["DeepFM-seed1.log", "MLP-seed1.log"]
    with open(os.path.join(logs, "DeepFM-seed1.log")) as fh:
        assert "Epoch 2/2" in fh.read()  # Keras' progress went to the cell's log
    with pytest.raises(ConfigError, match="jobs = 0"):
        run_compare(grid, jobs=0)

    broken = _grid(sim_data, tmp_path, "broken", {"MLP": MLP, "typo": {"features": ["no_such_feature"]}},
                   runs_dir=runs_dir)  # the MLP is reused: only the broken cell trains
    with pytest.raises(RuntimeError, match=r"compare method 'typo' \(seed 1\) failed: .*no_such_feature.*"
                                           r"its output: .*typo-seed1\.log"):
        run_compare(broken, jobs=2)
