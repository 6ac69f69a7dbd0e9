"""serving/run_artifacts.py: reading a run directory (what export and evaluate need of a run)."""
import json

import pytest
import yaml

from features.errors import UserError
from features.schema import SchemaError
from serving.run_artifacts import RunError, load_model, run_data_dir


def test_data_dir_from_run_json_else_config_yaml(fitted, tmp_path):
    """run.json's data_dir when its schema is there; a run without run.json falls back to the
    data_dir of its config.yaml (as ``pipeline.runs.load_config`` would read it)."""
    data_dir, _ = fitted
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data_dir": data_dir, "epochs": 3}))
    assert run_data_dir(str(tmp_path)) == data_dir
    (tmp_path / "run.json").write_text(json.dumps({"data_dir": str(tmp_path / "moved")}))
    assert run_data_dir(str(tmp_path)) == data_dir  # the recorded folder is gone: config.yaml's


def test_data_dir_refuses_another_schema_and_missing_config(fitted, tmp_path):
    data_dir, _ = fitted
    (tmp_path / "run.json").write_text(json.dumps({"data_dir": data_dir, "schema_fingerprint": "0123"}))
    with pytest.raises(SchemaError, match=r"not the one run .* was trained on \(0123\)"):
        run_data_dir(str(tmp_path))
    (tmp_path / "run.json").unlink()
    with pytest.raises(RunError, match=r"has neither run\.json nor config\.yaml"):
        run_data_dir(str(tmp_path))
    (tmp_path / "config.yaml").write_text("epochs: 3\n")
    with pytest.raises(RunError, match=r"config\.yaml: data_dir = None: expected the path"):
        run_data_dir(str(tmp_path))


def test_load_model_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(RunError, match=r"is not a completed run \(no done\.json\): train it first") as err:
        load_model(str(tmp_path))
    assert isinstance(err.value, UserError)  # ctrflow ends it with one message and exit code 2
