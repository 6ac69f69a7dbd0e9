"""The ``alignment`` run analysis (HDA §5.5, pipeline/alignment.py): a fresh DeepFM's AUC of head vs
tail from E_sh is near 1 when E_sh carries the group, 0.5 when it carries nothing, and it runs on a
real (tiny) HDA run, where the number written while training is the one a completed run's saved
model gives."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from models.embedding import EmbeddedFields
from pipeline import alignment as A
from pipeline.analyses import ANALYSES, SUMMARIES, requested_analyses, run_summaries

SMALL = {"backbone_options": {"dnn_units": [16]}, "epochs": 4, "batch_size": 128, "learning_rate": 3e-3}


class Stub:
    """A model whose E_sh [B, 3, 4] is ``make(group, noise)``."""

    def __init__(self, make):
        self.make = make

    def shared_fields(self, inputs, training=False, draw=False):
        assert training is False  # the serving read, or X_t drawn (``draw``)
        g = tf.cast(tf.reshape(inputs["_group"], [-1]), tf.float32)
        fields = self.make(g, tf.cast(inputs["noise"], tf.float32))
        return EmbeddedFields(fields * 0.0 if draw else fields, None)  # drawn: as if no group were left


def _data(n, seed, head_share=0.3):
    rng = np.random.default_rng(seed)
    group = (rng.random(n) < head_share).astype(np.int64)
    x = {"_group": group[:, None], "noise": 0.1 * rng.normal(size=(n, 3, 4)).astype(np.float32)}  # embedding-sized
    return tf.data.Dataset.from_tensor_slices((x, {"click": rng.integers(0, 2, (n, 1))})).batch(256), group


def _report(make, **options):
    train, _ = _data(3000, 1)
    valid, group = _data(2000, 2)
    record = A.alignment_report(Stub(make), train, valid, **{**SMALL, "train_rows": 2000, **options})
    return record, group


def test_group_carried_perfectly_gives_auc_near_one():
    # field 0 = one-hot of the group (padded), the others noise
    def one_hot(g, noise):
        head = tf.stack([g, 1.0 - g, tf.zeros_like(g), tf.zeros_like(g)], axis=1)
        return tf.concat([head[:, None, :], noise[:, 1:]], axis=1)

    record, group = _report(one_hot)
    assert record["auc"] > 0.99 and record["train_auc"] > 0.99
    assert record["rows"] == {"train": 2000, "valid": 2000}
    assert record["head_share"]["valid"] == pytest.approx(group.mean())
    assert (record["fields"], record["embedding_dim"]) == (3, 4)
    assert len(record["history"]) == SMALL["epochs"] and record["history"][-1] < record["history"][0]


def test_per_field_names_the_field_that_carries_the_group(tmp_path):
    def one_hot(g, noise):  # field 1 carries the group, fields 0 and 2 noise
        head = tf.stack([g, 1.0 - g, tf.zeros_like(g), tf.zeros_like(g)], axis=1)
        return tf.concat([noise[:, :1], head[:, None, :], noise[:, 2:]], axis=1)

    record, _ = _report(one_hot, per_field=True)
    assert [r["field"] for r in record["per_field"]] == ["field 0", "field 1", "field 2"]
    aucs = [r["auc"] for r in record["per_field"]]
    assert aucs[1] > 0.99 and abs(aucs[0] - 0.5) < 0.06 and abs(aucs[2] - 0.5) < 0.06
    assert "per_field" not in record["discriminator"]
    A.write_report(str(tmp_path), record)
    table = open(tmp_path / "alignment.md").read().split("highest AUC first")[1]
    assert table.index("| field 1 |") < table.index("| field 0 |")  # ranked
    drawn, _ = _report(one_hot, draw=True)  # the model's drawn read is the one analysed
    assert drawn["read"] == "draw" and record["read"] == "served" and drawn["auc"] == pytest.approx(0.5, abs=0.03)


def test_a_variant_s_report_is_named_by_the_options_it_changes():
    assert A.report_name({}) == A.report_name({"epochs": 3, "draw": False}) == "alignment"  # the defaults
    assert A.report_name({"per_field": True, "backbone_options": {"dnn_units": [8]}, "epochs": 3}) == \
        'alignment-backbone_options={"dnn_units":[8]},per_field=true'


def test_fields_of_one_feature_are_numbered():
    assert A.field_names(["user_id", "price", "price", "bid", "price"]) == [
        "user_id", "price[0]", "price[1]", "bid", "price[2]"]


@pytest.mark.parametrize("first_order", ["learned", "zeros"])
def test_constant_e_sh_gives_auc_one_half(first_order):
    record, _ = _report(lambda g, noise: tf.ones_like(noise), first_order=first_order)
    # one score for every row, up to the last float32 bit (a matmul's remainder rows may round
    # otherwise, which orders the near-ties at random: the noise-free null AUC's spread is ~0.01)
    assert record["auc"] == pytest.approx(0.5, abs=0.03)


def test_e_sh_independent_of_the_group_gives_auc_near_one_half():
    record, _ = _report(lambda g, noise: noise)  # noise only: the null AUC's std here is ~0.014
    assert abs(record["auc"] - 0.5) < 0.06


def test_rows_are_bounded_and_unknown_groups_left_out():
    x = {"_group": np.array([[1], [0], [-1], [1], [0], [0]]), "noise": np.zeros((6, 3, 4), np.float32)}
    data = tf.data.Dataset.from_tensor_slices((x, {"click": np.zeros((6, 1))})).batch(4)
    fields, group = A.shared_embeddings(Stub(lambda g, noise: noise + g[:, None, None]), data, 4)
    assert group.tolist() == [1, 0, 1, 0] and fields.shape == (4, 3, 4)
    np.testing.assert_array_equal(fields[:, 0, 0], [1, 0, 1, 0])
    with pytest.raises(ValueError, match="unknown options"):
        A.alignment_report(Stub(lambda g, n: n), data, data, rows=3)


def test_registered_summarized_and_part_of_hda_s_report(tmp_path):
    from models.factory import framework_class

    assert "alignment" in ANALYSES and "alignment" in SUMMARIES
    assert "alignment" in framework_class("hda").analyses
    for name in ("beta_calibration", "ipw", "sdro"):  # the baselines have no aligned E_sh to check
        assert "alignment" not in framework_class(name).analyses
    record, _ = _report(lambda g, noise: tf.ones_like(noise))
    A.write_report(str(tmp_path / "analysis"), record)
    summaries = run_summaries(str(tmp_path))
    assert summaries == {"alignment": {"discriminator AUC (head vs tail from E_sh)": record["auc"]}}
    assert record["auc"] == pytest.approx(0.5, abs=0.03)
    assert f"| discriminator AUC (valid) | {record['auc']:.4f} |" in open(tmp_path / "analysis" / "alignment.md").read()


@pytest.mark.slow
def test_a_tiny_hda_run_writes_it_and_the_saved_model_agrees(sim_data, tmp_path):
    from pipeline.train import train
    from train_helpers import train_config

    cfg = train_config(sim_data, tmp_path / "runs", epochs=1, **{
        "model.framework": "hda", "model.framework_options": {"mapping_steps": 20, "top_k": 50,
                                                              "calibration_iterations": 20},
        "phase_optimizers": {"discriminator": {"name": "adam", "learning_rate": 0.001}}})
    assert requested_analyses(cfg) == ["alignment"]
    run_dir = train(cfg)["run_dir"]
    with open(os.path.join(run_dir, "analysis", "alignment.json")) as fh:
        written = json.load(fh)
    assert written["alignment"] == "both" and 0.0 <= written["auc"] <= 1.0
    assert 0.0 < written["head_share"]["valid"] < 1.0
    assert written["splits"] == {"train": cfg.train_split, "valid": cfg.valid_split}
    assert sorted(os.listdir(os.path.join(run_dir, "stages"))) == ["1-mapping", "2-shared", "3-residual",
                                                                   "4-calibration"]
    again = A.analyze_run(run_dir, write=False)  # the completed run's saved model, loaded
    assert again["rows"] == written["rows"] and again["head_share"] == written["head_share"]
    assert again["e_sh_rms"] == pytest.approx(written["e_sh_rms"], rel=1e-9)  # the same E_sh
    assert again["auc"] == pytest.approx(written["auc"], abs=1e-9)  # the same rows and discriminator

    from pipeline.cli import main  # per field, from the command line: E_sh's fields named by their features
    small = ["epochs=1", "per_field=true", "backbone_options={dnn_units: [8]}", "train_rows=2000", "valid_rows=1000"]
    assert main(["analyze", run_dir, "alignment", *[a for o in small for a in ("--option", o)]]) == 0
    name = A.report_name({"epochs": 1, "per_field": True, "backbone_options": {"dnn_units": [8]},
                          "train_rows": 2000, "valid_rows": 1000})
    with open(os.path.join(run_dir, "analysis", f"{name}.json")) as fh:
        per_field = json.load(fh)["per_field"]
    with open(os.path.join(run_dir, "analysis", "alignment.json")) as fh:
        assert json.load(fh) == written  # the run's own record stays
    from features.schema import Schema
    from models.embedding import plan_fields
    features = [f.feature for f in plan_fields(Schema.load(cfg.data_dir))]
    assert sorted(r["field"] for r in per_field) == sorted(A.field_names(features))
    assert len(per_field) == written["fields"]
    assert main(["analyze", run_dir, "alignment", "--option", "rows=3"]) == 2  # an unknown option: one message
    assert main(["analyze", run_dir, "alignmnet"]) == 2  # an unknown analysis: one message naming the known ones
