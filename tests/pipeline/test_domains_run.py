"""The user-domain baselines through the pipeline (GPRec §IV-A3's MMoE / STAR with users split
by gender): a training config naming ``model.framework: mmoe`` (or ``star``) with
``framework_options.domain_feature: gender`` trains on the simulator's data with ``pipeline.train``,
validates and evaluates its one task, writes the experts' gates analysis (each row's own domain's
gate) and exports."""
import csv
import json
import os

import numpy as np
import pytest

from train_helpers import train_config

from pipeline.evaluate import evaluate_run
from pipeline.train import train
from serving.export import export_run, read_export_metadata

OPTIONS = {"mmoe": {"domain_feature": "gender", "tower_units": [8], "experts": [{"table": 0, "count": 2}]},
           "star": {"domain_feature": "gender", "aux_units": [8]}}


@pytest.mark.slow
@pytest.mark.parametrize("framework", sorted(OPTIONS))
def test_a_domain_model_trains_evaluates_and_exports_from_a_training_config(framework, sim_data, tmp_path):
    cfg = train_config(sim_data, tmp_path / "runs", run_name=framework, epochs=1, steps_per_epoch=4,
                       **{"model.framework": framework, "model.backbone_options": {"dnn_units": [16]},
                          "model.framework_options": OPTIONS[framework]})
    train(cfg)
    run_dir = str(tmp_path / "runs" / framework)
    with open(os.path.join(run_dir, "history.csv")) as fh:
        history = list(csv.DictReader(fh))
    assert 0.0 < float(history[-1]["val_click_auc"]) < 1.0
    if framework == "mmoe":
        with open(os.path.join(run_dir, "analysis", "gates.json")) as fh:
            gates = json.load(fh)
        assert list(gates["weights"]) == ["click"]
        np.testing.assert_allclose(gates["weights"]["click"], [1.0], rtol=1e-6)  # one table
    results = evaluate_run(run_dir, splits=["test"])
    assert list(results["test"]) == ["click"] and 0.0 < results["test"]["click"]["overall"]["auc"] < 1.0
    info = export_run(run_dir, str(tmp_path / "serving"), warmup_batch_sizes=(1,))
    assert read_export_metadata(info["export_dir"])["tasks"] == ["click"]
