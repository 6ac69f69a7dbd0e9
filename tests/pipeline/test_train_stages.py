"""Training stages through the training config: ``freeze`` leaves variable groups out of
every update, ``phase_optimizers`` gives a framework's alternating phases their optimizers;
both checked by the weights of completed runs, and their errors name the key."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import train_config  # noqa: E402

from models.ctr_model import CTRModel  # noqa: E402
from models.factory import FRAMEWORKS, register_framework  # noqa: E402
from models.framework import Phase  # noqa: E402
from pipeline.config import ConfigError  # noqa: E402
from pipeline.data import make_dataset  # noqa: E402
from pipeline.train import train  # noqa: E402
from serving.run_artifacts import load_model  # noqa: E402

class TwoPhase(CTRModel):
    """CTRModel whose backbone is updated in a phase of its own, with its own optimizer."""

    def phases(self):
        return [Phase("backbone", None, "backbone", "backbone"), Phase("model", None, None, None)]


@pytest.fixture(autouse=True, scope="module")
def two_phase_framework():
    """Registered for this module's tests only (other tests read the list of frameworks)."""
    register_framework("_test_two_phase")(TwoPhase)
    yield
    FRAMEWORKS.pop("_test_two_phase")


def _weights(run_dir, data_dir):
    """Every variable group's weights of a completed run (restored once the model is built)."""
    model, _, _ = load_model(str(run_dir))
    model(next(iter(make_dataset(data_dir, "valid", 8)))[0])
    groups = {g: [v.numpy() for v in vs] for g, vs in model.variable_groups().items()}
    assert groups["embedding"] and groups["backbone"]
    return groups


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def first_run(sim_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("stages")
    train(train_config(sim_data, runs, run_name="first", epochs=1, steps_per_epoch=5))
    return runs, _weights(runs / "first", sim_data)


def test_frozen_group_keeps_the_earlier_run_s_weights(sim_data, first_run):
    runs, first = first_run
    train(train_config(sim_data, runs, run_name="frozen", epochs=1, steps_per_epoch=5,
                       init_from=str(runs / "first"), freeze=["embedding"]))
    after = _weights(runs / "frozen", sim_data)
    assert _same(after["embedding"], first["embedding"])  # left out of every update
    assert not _same(after["backbone"], first["backbone"])  # the rest trained


def test_phase_optimizer_updates_its_group(sim_data, tmp_path):
    """The backbone's phase uses phase_optimizers.backbone: at a vanishing learning rate the
    backbone keeps the earlier run's weights while the compiled Adam moves the rest; at 0.5 it moves."""
    base = {"epochs": 1, "steps_per_epoch": 5, "model.framework": "_test_two_phase"}

    def run(name, lr, **kw):
        train(train_config(sim_data, tmp_path, run_name=name,
                           phase_optimizers={"backbone": {"name": "sgd", "learning_rate": lr}}, **base, **kw))
        return _weights(tmp_path / name, sim_data)

    first = run("first", 0.5)
    still = run("still", 1e-30, init_from=str(tmp_path / "first"))
    assert _same(still["backbone"], first["backbone"]) and not _same(still["embedding"], first["embedding"])
    moving = run("moving", 0.5, init_from=str(tmp_path / "first"))
    assert not _same(moving["backbone"], first["backbone"])


def test_errors_name_the_key(sim_data, tmp_path):
    with pytest.raises(ConfigError, match=r"freeze = \['tables'\]: \['tables'\] not a variable group of framework "
                                          r"'none'; groups: \['backbone', 'embedding', 'field_modules', 'heads'\]"):
        train(train_config(sim_data, tmp_path, freeze=["tables"]))
    with pytest.raises(ConfigError, match=r"phase_optimizers = \[\]: framework '_test_two_phase' alternates phases "
                                          r"with the optimizers \['backbone'\]"):
        train(train_config(sim_data, tmp_path / "other", **{"model.framework": "_test_two_phase"}))
    with pytest.raises(ConfigError, match=r"phase_optimizers = \['extra'\]: framework 'none' alternates phases "
                                          r"with the optimizers \[\]"):
        train(train_config(sim_data, tmp_path, phase_optimizers={"extra": {"name": "sgd"}}))
    with pytest.raises(ConfigError, match=r"phase_optimizers.backbone.name = 'adamm'"):
        train_config(sim_data, tmp_path, phase_optimizers={"backbone": {"name": "adamm"}})
    assert os.listdir(tmp_path) == ["other"]  # freeze / phase_optimizers given: refused before any run directory
