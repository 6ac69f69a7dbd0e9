"""SavedModel(raw features) == Keras(Beam-encoded rows) for every registered backbone,
and ``saved_model_cli run`` (TF Serving's graph-mode loader) on an export."""
import os
import subprocess

import numpy as np
import pytest

from serving_fixtures import TASKS, keras_predict, tiny_model

from models.backbones import BACKBONES
from serving.clients import LocalModelServer, RequestBuilder
from serving.export import export_model, saved_model_cli
from serving.signatures import ENCODED_SIGNATURE

TOL = 1e-5


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_saved_model_equals_keras(backbone, fitted, rows, encoded, tmp_path):
    data_dir, schema = fitted
    model = tiny_model(schema, backbone, encoded)
    expected = keras_predict(model, encoded)
    export_dir = str(tmp_path / backbone / "1")
    export_model(model, schema, TASKS, data_dir, export_dir, warmup_batch_sizes=(1,))
    server = LocalModelServer(export_dir)
    raw = server.predict(RequestBuilder.from_schema(schema).tensors(rows))
    enc = server.predict(encoded, signature_name=ENCODED_SIGNATURE)
    for t in TASKS:
        assert raw[t].shape == (len(rows),)
        assert np.std(expected[t]) > 1e-3, "degenerate model: parity would be vacuous"
        np.testing.assert_allclose(raw[t], expected[t], rtol=0, atol=TOL, err_msg=f"{backbone}/{t} raw")
        np.testing.assert_allclose(enc[t], expected[t], rtol=0, atol=TOL, err_msg=f"{backbone}/{t} encoded")
    assert not np.allclose(raw[TASKS[0]], raw[TASKS[1]])  # one output per task, not one copied


def _saved_model_cli_run(export_dir, tensors, tmp_path):
    npz = str(tmp_path / "inputs.npz")
    np.savez(npz, **{k: (v.astype(str) if v.dtype == object else v) for k, v in tensors.items()})
    cmd = [saved_model_cli(), "run", "--dir", export_dir, "--tag_set", "serve",
           "--signature_def", "serving_default", "--inputs", ";".join(f"{k}={npz}[{k}]" for k in tensors),
           "--outdir", str(tmp_path / "out"), "--overwrite"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_saved_model_cli_run(exported, rows, tmp_path):
    """``saved_model_cli run --inputs`` loads the export in graph mode (as the model server
    does) and reproduces the Keras predictions."""
    tensors = RequestBuilder.from_schema(exported["schema"]).tensors(rows)
    res = _saved_model_cli_run(exported["export_dir"], tensors, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for t in TASKS:
        assert f"Result for output key {t}" in res.stdout
        got = np.load(tmp_path / "out" / f"{t}.npy")
        np.testing.assert_allclose(got, exported["expected"][t], rtol=0, atol=TOL)


def test_saved_model_cli_run_enforces_required_features(exported, rows, tmp_path):
    """The required-feature assertion also fires in the graph-mode (session) loader."""
    tensors = RequestBuilder.from_schema(exported["schema"]).tensors(rows[:3])
    tensors["item_id"][2] = ""
    res = _saved_model_cli_run(exported["export_dir"], tensors, tmp_path)
    assert res.returncode != 0
    assert "required feature item_id has no value" in res.stderr
