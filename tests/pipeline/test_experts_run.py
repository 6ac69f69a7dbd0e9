"""An experts model through the pipeline: STEM-AL trained by ``pipeline.train`` on [conversion,
click] validates, evaluates and exports its main task only (the framework's served tasks), and
its run writes the gates analysis (each task's mean gate weight per table)."""
import csv
import json
import os

import numpy as np
import pytest

from train_helpers import train_config

from pipeline.evaluate import evaluate_run
from pipeline.train import train
from serving.export import export_run, read_export_metadata


@pytest.mark.slow
def test_stem_al_run_scores_and_exports_the_main_task_and_writes_the_gates_analysis(sim_data, tmp_path):
    cfg = train_config(sim_data, tmp_path / "runs", run_name="stem_al", tasks=["conversion", "click"], epochs=1,
                       steps_per_epoch=4, **{"model.framework": "stem_al",
                                             "model.framework_options": {"tower_units": [8]},
                                             "early_stopping.monitor": "val_conversion_auc"})
    train(cfg)
    run_dir = str(tmp_path / "runs" / "stem_al")
    with open(os.path.join(run_dir, "history.csv")) as fh:
        columns = next(csv.reader(fh))
    assert "val_conversion_auc" in columns and "val_click_auc" not in columns and "val_mean_auc" in columns
    with open(os.path.join(run_dir, "analysis", "gates.json")) as fh:
        gates = json.load(fh)
    assert [t["owner"] for t in gates["tables"]] == ["conversion", "shared"]
    np.testing.assert_allclose(sum(gates["weights"]["conversion"]), 1.0, rtol=1e-6)
    assert gates["weights"]["click"] == [0.0, 1.0]  # the auxiliary task reads the shared table only
    assert os.path.getsize(os.path.join(run_dir, "analysis", "gates.png")) > 0

    results = evaluate_run(run_dir, splits=["test"])
    assert list(results["test"]) == ["conversion"]
    info = export_run(run_dir, str(tmp_path / "serving"), warmup_batch_sizes=(1,))
    assert info["tasks"] == ["conversion"]
    assert read_export_metadata(info["export_dir"])["tasks"] == ["conversion"]
    report = open(os.path.join(run_dir, "report.md")).read()
    assert "analysis/gates.png" in report
