"""HDA's stages run as one ``train``: each in its folder (stage.json, weights), the shared
parameters bit-identical through stage 2, a run killed between stages resumes to the
uninterrupted run's model, and stage 1b's alternating updates do what Eq. 6-7 ask."""
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import train_config  # noqa: E402

from models.factory import build_model  # noqa: E402
from models.frameworks.hda.model import HDA  # noqa: E402
from pipeline.data import make_dataset  # noqa: E402
from pipeline.train import model_schema, train  # noqa: E402
from features.schema import Schema  # noqa: E402
from serving.run_artifacts import load_model  # noqa: E402

STAGES = ["1-mapping", "2-shared", "3-residual", "4-calibration"]


def _config(data, runs, name):
    return train_config(data, runs, run_name=name, epochs=2, steps_per_epoch=4, batch_size=256,
                        phase_optimizers={"discriminator": {"name": "adam", "learning_rate": 0.01}},
                        **{"model.framework": "hda", "model.embedding_dim": 4,
                           "model.framework_options": {"top_k": 40, "mapping_steps": 20}})


def _groups(run_dir, data, weights=None):
    model, _, _ = load_model(str(run_dir))
    model(next(iter(make_dataset(data, "valid", 8)))[0])
    if weights is not None:
        model.load_weights(str(weights)).expect_partial()
    return {g: [v.numpy() for v in vs] for g, vs in model.variable_groups().items()}


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def straight(sim_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("hda")
    summary = train(_config(sim_data, runs, "straight"))
    return runs / "straight", summary


def test_every_stage_is_recorded_and_stage_2_keeps_the_shared_part_bit_identical(sim_data, straight):
    run, summary = straight
    assert sorted(os.listdir(run / "stages")) == STAGES
    assert list(summary["stages"]) == ["mapping", "shared", "residual", "calibration"]
    mapping = json.loads((run / "stages" / "1-mapping" / "stage.json").read_text())["result"]
    assert mapping["users"]["head_ids"] > 0
    fitted = mapping["fields"]["user_id"]  # stage 1a lowers the user id's group information
    assert fitted["group_information"] < 0.1 * fitted["raw_group_information"]
    after_shared = _groups(run, sim_data, run / "stages" / "2-shared" / "weights" / "model")
    final = _groups(run, sim_data)
    for frozen in ("shared", "discriminator", "mapping"):
        assert _same(final[frozen], after_shared[frozen]), frozen
    assert not _same(final["specific"], after_shared["specific"])
    assert not _same(final["calibration"], after_shared["calibration"])  # stage 3 fitted
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["stage", "epoch"]


def test_a_run_killed_between_stages_resumes_to_the_uninterrupted_run(sim_data, straight, monkeypatch):
    run, summary = straight
    runs = run.parent
    original = HDA.run_stage

    def killed(self, name, data):
        if name == "calibration":
            raise KeyboardInterrupt("killed before stage 3")
        return original(self, name, data)

    monkeypatch.setattr(HDA, "run_stage", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_config(sim_data, runs, "killed"))
    assert sorted(os.listdir(runs / "killed" / "stages")) == STAGES[:3]
    assert not (runs / "killed" / "done.json").exists()
    monkeypatch.setattr(HDA, "run_stage", original)
    resumed = train(_config(sim_data, runs, "killed"))
    assert resumed["stages"]["calibration"] == summary["stages"]["calibration"]
    assert resumed["history"] == summary["history"]
    want, got = _groups(run, sim_data), _groups(runs / "killed", sim_data)
    for group in want:
        assert _same(got[group], want[group]), group


def _fit_shared(sim_data, lr_model, lr_discriminator, lambda2):
    """Stage 1b alone on one repeated batch: (adversary loss per epoch) with the given rates."""
    schema = Schema.load(sim_data)
    tf.keras.utils.set_random_seed(3)
    model = build_model(model_schema(schema, schema.feature_names), ["click"], backbone="dnn",
                        backbone_options={"dnn_units": [16]}, embedding_dim=4, framework="hda",
                        framework_options={"lambda2": lambda2, "alignment": "adversarial"})
    batch = next(iter(make_dataset(sim_data, "train", 256, labels=["click"], schema=schema)))
    model.enter_stage("shared")
    model.compile(optimizer=tf.keras.optimizers.legacy.SGD(lr_model), loss={"click": "binary_crossentropy"},
                  phase_optimizers={"discriminator": tf.keras.optimizers.legacy.SGD(lr_discriminator)})
    model.freeze("mapping", "specific", "calibration")
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=6, steps_per_epoch=5, verbose=0)
    return history.history["adversary_loss"]


def test_the_discriminator_learns_and_the_encoder_opposes_it(sim_data):
    learning = _fit_shared(sim_data, lr_model=0.0, lr_discriminator=0.5, lambda2=1.0)
    assert learning[-1] < learning[0] - 0.01  # only D trains: its loss (Eq. 6) falls
    opposed = _fit_shared(sim_data, lr_model=0.5, lr_discriminator=0.0, lambda2=5.0)
    assert opposed[-1] > opposed[0] + 0.01  # only the model trains on L_ctr - lambda2 L_adv: L_adv rises


def test_stem_over_the_user_groups_learns_them_for_serving(sim_data, tmp_path):
    """Appendix B.1's STEM with the head / long-tail users as its tasks (``domain_feature:
    user_group``): a first stage learns the head ids, so the served model, given no group, scores
    every training user as it does given the user's group."""
    summary = train(train_config(sim_data, tmp_path, run_name="stem", epochs=1, steps_per_epoch=4,
                                 **{"model.framework": "stem", "model.embedding_dim": 4,
                                    "model.framework_options": {"domain_feature": "user_group"}}))
    assert sorted(os.listdir(tmp_path / "stem" / "stages")) == ["1-user_groups", "2-train"]
    assert summary["stages"]["user_groups"]["result"]["users"]["head_ids"] > 0
    model, _, _ = load_model(str(tmp_path / "stem"))
    x = next(iter(make_dataset(sim_data, "train", 512)))[0]
    told = model(x, training=False)["click"].numpy()
    looked_up = model({k: v for k, v in x.items() if k != "_group"}, training=False)["click"].numpy()
    np.testing.assert_allclose(looked_up, told, atol=1e-7)
    as_tail = model({**x, "_group": tf.zeros_like(x["_group"])}, training=False)["click"].numpy()
    head = x["_group"].numpy().reshape(-1) == 1
    assert head.any() and np.abs(as_tail - told).reshape(-1)[head].min() > 0  # the head tower scores head rows


def _hda(schema, **options):
    tf.keras.utils.set_random_seed(5)
    return build_model(model_schema(schema, schema.feature_names), ["click"], backbone="dnn",
                       backbone_options={"dnn_units": [16]}, embedding_dim=4, framework="hda",
                       framework_options={"top_k": 40, **options})


def test_specific_only_features_stay_out_of_e_sh_and_reach_the_residual_model(sim_data):
    """``specific_only_features``: E_sh (and so M_sh, D and the alignment) never reads them; stage
    2's M_sp does, with zeros on E_sh's side of their fields; a name not in the model is an error."""
    from models.options import OptionError

    schema = Schema.load(sim_data)
    unshared = ["user_pretrained", "hist_item"]
    model = _hda(schema, specific_only_features=unshared)
    plain = _hda(schema)
    x = next(iter(make_dataset(sim_data, "valid", 64, labels=["click"], schema=schema)))[0]
    other = {**x, "user_pretrained": tf.random.normal(tf.shape(x["user_pretrained"]), seed=1),
             "hist_item": tf.reverse(x["hist_item"], axis=[0])}
    for m in (model, plain):
        m(x, training=False)
        m.enter_stage("residual")
    assert not set(unshared) & set(model.shared_field_features)
    assert set(unshared) <= set(plain.shared_field_features)
    assert len(model.shared_field_features) == len(plain.shared_field_features) - 2
    np.testing.assert_array_equal(model.shared_fields(x, training=False).fields.numpy(),
                                  model.shared_fields(other, training=False).fields.numpy())
    assert not np.array_equal(plain.shared_fields(x, training=False).fields.numpy(),
                              plain.shared_fields(other, training=False).fields.numpy())
    served = model(x, training=False)["click"].numpy()
    assert np.abs(model(other, training=False)["click"].numpy() - served).max() > 1e-6  # M_sp reads them
    model.enter_stage("shared")
    np.testing.assert_array_equal(model(other, training=False)["click"].numpy(),
                                  model(x, training=False)["click"].numpy())  # M_sh does not
    rebuilt = HDA.from_config(model.get_config())
    assert rebuilt.options["specific_only_features"] == unshared
    assert rebuilt.shared_field_features == model.shared_field_features
    with pytest.raises(OptionError, match="specific_only_features.*'nope'"):
        _hda(schema, specific_only_features=["nope"])
    with pytest.raises(OptionError, match="residual"):
        _hda(schema, specific_only_features=unshared, residual=False)
