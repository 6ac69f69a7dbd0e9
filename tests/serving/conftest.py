"""Shared fixtures: fitted features, request rows and one exported multi-task DCNv2."""
import os

import pytest

from serving_fixtures import TASKS, encode_rows, fit_features, keras_predict, request_rows, tiny_model


@pytest.fixture(scope="session")
def fitted(tmp_path_factory):
    """(data_dir, schema) fitted on a raw frame written to a temp dir."""
    return fit_features(str(tmp_path_factory.mktemp("fitted")))


@pytest.fixture(scope="session")
def rows():
    return request_rows()


@pytest.fixture(scope="session")
def encoded(fitted, rows):
    data_dir, schema = fitted
    return encode_rows(schema, data_dir, rows)


@pytest.fixture(scope="session")
def exported(fitted, encoded, tmp_path_factory):
    """A multi-task DCNv2 exported with ``export_model``: a dict with the export dir, the
    Keras model and its predictions on the request rows."""
    from serving.export import export_model

    data_dir, schema = fitted
    model = tiny_model(schema, "dcnv2", encoded)
    export_dir = os.path.join(str(tmp_path_factory.mktemp("export")), "ctr", "1")
    info = export_model(model, schema, TASKS, data_dir, export_dir, model_name="ctr")
    return {"export_dir": export_dir, "model": model, "info": info, "expected": keras_predict(model, encoded),
            "schema": schema, "data_dir": data_dir}


@pytest.fixture(scope="session")
def server(exported):
    from serving.clients import LocalModelServer

    return LocalModelServer(exported["export_dir"], model_name="ctr", version=1)
