"""MLoRA (models/frameworks/mlora, Yang et al. RecSys'24) against numpy: with B_d = 0 the model is
the plain shared network, with adapters each layer is x W + b + x A_d B_d for the row's own domain;
a row's prediction reads only its domain's adapter and its loss gives no gradient to another
domain's; served rows (no ``_group`` or -1) take the learned head ids' group; options, config round
trip, the backbones train; ``ctrflow train`` runs the stages user_groups and train."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.domains import GROUP_INPUT, fill_user_groups
from models.factory import build_model
from models.frameworks.mlora import LoRAMLP, lora_rank
from models.options import OptionError

sys.path.insert(0, os.path.dirname(__file__))
from personalized_fixtures import FIELDS, assert_round_trip, relu, rows  # noqa: E402

UNITS = [6, 4]


def schema(group_column="is_head") -> dict:
    return Schema(features=[Feature(n, "categorical", "string", role, {"type": "vocab"}, num_ids=k)
                            for n, (role, k) in FIELDS.items()], labels=["click"],
                  meta={"user_key": "int64", "is_head": "int64"}, user_column="user_key",
                  group_column=group_column).to_dict()


def batch(seed=0, n=24, groups=None):
    rng = np.random.default_rng(seed)
    x = {f: rng.integers(0, k, (n, 1)).astype(np.int64) for f, (_, k) in FIELDS.items()}
    x[GROUP_INPUT] = (rng.integers(0, 2, (n, 1)) if groups is None else np.full((n, 1), groups)).astype(np.int64)
    return x, {"click": ((x["user"] + x["item"]) % 3 == 0).astype(np.float32)}


def build(backbone="dnn", seed=0, adapters=False, **options):
    """MLoRA on the tiny schema, called once; ``adapters``: every B_d (and b_d) made non-zero."""
    tf.keras.utils.set_random_seed(seed)
    deep = {"dnn_units": UNITS} if backbone == "dnn" else {"dnn_units": [5]}
    model = build_model(schema(), ["click"], backbone=backbone, backbone_options=deep, embedding_dim=3,
                        embedding_options={"initializer_stddev": 0.5}, framework="mlora",
                        framework_options={"prediction_units": [5, 4], "rank": 2, **options})
    model(batch()[0])
    if adapters:
        rng = np.random.default_rng(seed + 1)
        for v in model.variable_groups()["adapters"]:
            v.assign(rng.normal(0.0, 0.5, v.shape).astype(np.float32))
    return model


def logit(model, x):
    return model(x, training=False, return_forward=True).logits["click"].numpy()[:, 0]


def numpy_logit(model, x, domain=None):
    """The MLP over the flat fields by hand: shared layers, plus x A_d B_d of each row's domain."""
    h = rows(model, x, *FIELDS)
    domain = x[GROUP_INPUT][:, 0] if domain is None else domain
    layers = model.mlp.dense + [model.mlp.head]
    for i, layer in enumerate(layers):
        a, b = layer.lora_a.numpy()[domain], layer.lora_b.numpy()[domain]  # [B, in, r], [B, r, out]
        h = h @ layer.kernel.numpy() + layer.bias.numpy() + np.einsum("bi,bik,bko->bo", h, a, b)
        h = relu(h) if i < len(layers) - 1 else h
    return h[:, 0]


def test_rank_from_temperature():
    assert [lora_rank(u, 32.0) for u in (64, 32, 1, 400)] == [2, 1, 1, 12]
    assert lora_rank(64, 32.0, rank=5) == 5
    mlp = LoRAMLP([64, 32], num_domains=2, temperature=16)
    mlp((tf.zeros([3, 10]), tf.zeros([3], tf.int32)))
    assert [layer.lora_a.shape.as_list() for layer in mlp.lora_layers] == [[2, 10, 4], [2, 64, 2], [2, 32, 1]]
    assert [layer.lora_b.shape.as_list() for layer in mlp.lora_layers] == [[2, 4, 64], [2, 2, 32], [2, 1, 1]]


def test_zero_adapters_are_the_shared_network():
    model = build()
    assert all(not np.any(v.numpy()) for v in model.variable_groups()["adapters"] if "lora_b" in v.name)
    assert all(np.any(v.numpy()) for v in model.variable_groups()["adapters"] if "lora_a" in v.name)
    x, _ = batch(1)
    h = rows(model, x, *FIELDS)
    for layer in model.mlp.dense:
        h = relu(h @ layer.kernel.numpy() + layer.bias.numpy())
    expected = (h @ model.mlp.head.kernel.numpy() + model.mlp.head.bias.numpy())[:, 0]
    np.testing.assert_allclose(logit(model, x), expected, rtol=1e-5, atol=1e-6)
    flipped = {**x, GROUP_INPUT: 1 - x[GROUP_INPUT]}
    np.testing.assert_allclose(logit(model, flipped), expected, rtol=1e-5, atol=1e-6)


def test_each_row_uses_its_own_domain_adapter():
    model = build(adapters=True)
    x, _ = batch(2)
    before = logit(model, x)
    np.testing.assert_allclose(before, numpy_logit(model, x), rtol=1e-5, atol=1e-5)
    for layer in model.mlp.lora_layers:  # domain 1 (head) changed only
        for v in (layer.lora_a, layer.lora_b):
            v.assign(tf.tensor_scatter_nd_update(v, [[1]], v[1:2] + 0.7))
    after = logit(model, x)
    head = x[GROUP_INPUT][:, 0] == 1
    assert head.any() and (~head).any()
    np.testing.assert_array_equal(after[~head], before[~head])
    assert np.all(np.abs(after[head] - before[head]) > 1e-6)


def test_head_rows_give_the_tail_adapter_no_gradient():
    model = build(adapters=True)
    model.compile(tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    x, y = batch(3, groups=1)
    with tf.GradientTape() as tape:
        p = model(x, training=True)["click"]
        loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(y["click"], p))
    adapters = model.variable_groups()["adapters"]
    grads = tape.gradient(loss, adapters)
    for v, g in zip(adapters, grads):
        g = tf.convert_to_tensor(g).numpy()
        assert not np.any(g[0]), v.name    # tail (domain 0): nothing
        assert np.any(g[1]), v.name        # head (domain 1): its gradient


def test_served_rows_take_the_learned_head_ids():
    model = build(adapters=True)
    x, _ = batch(4)
    users = x["user"][:, 0]
    head_ids = np.unique(users[users >= 2])[: 3]  # known ids (0: padding, 1: OOV)
    summary = model.groups.fill(users, np.isin(users, head_ids).astype(int))
    assert summary["head_ids"] == 3
    expected = logit(model, {**x, GROUP_INPUT: np.isin(users, head_ids).astype(np.int64)[:, None]})
    served = {k: v for k, v in x.items() if k != GROUP_INPUT}
    np.testing.assert_allclose(logit(model, served), expected, rtol=1e-6)
    np.testing.assert_allclose(logit(model, {**x, GROUP_INPUT: np.full_like(x[GROUP_INPUT], -1)}), expected,
                               rtol=1e-6)
    unknown = {**served, "user": np.full_like(x["user"], 1)}  # an OOV user is long-tail
    np.testing.assert_allclose(logit(model, unknown), logit(model, {**unknown, GROUP_INPUT: 0 * x[GROUP_INPUT]}),
                               rtol=1e-6)


def test_fill_user_groups_from_a_dataset():
    model = build()
    x, y = batch(5, n=30)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    summary, columns, labels = fill_user_groups(model.groups, dataset, extra=["item"])
    head = x[GROUP_INPUT][:, 0] == 1
    assert summary == {"head_ids": len(np.unique(x["user"][head, 0])), "user_ids": len(np.unique(x["user"]))}
    np.testing.assert_array_equal(columns["item"], x["item"][:, 0])
    np.testing.assert_array_equal(labels["click"], y["click"][:, 0])
    assert model.run_stage("user_groups", lambda split: dataset) == {"users": summary}


def test_config_round_trip():
    assert_round_trip(build(adapters=True))
    assert_round_trip(build("deepfm", adapters=True, domains="feature", domain_feature="age", domain_bias=True))


def test_stages_and_groups():
    model = build()
    assert [(s.name, s.fit) for s in model.stages()] == [("user_groups", False), ("train", True)]
    model = build(pretrain=True)
    assert [(s.name, s.frozen) for s in model.stages()] == [("user_groups", ()), ("pretrain", ("adapters",)),
                                                            ("train", ("shared",))]
    groups = model.variable_groups()
    shared, adapters = {v.ref() for v in groups["shared"]}, {v.ref() for v in groups["adapters"]}
    assert not shared & adapters and shared | adapters == {v.ref() for v in model.trainable_variables}
    model = build(domains="feature", domain_feature="age")
    assert [s.name for s in model.stages()] == ["train"] and model.domain_names[0] == "age_unknown"


@pytest.mark.parametrize("backbone", ["widedeep", "deepfm", "dcnv2"])
def test_backbones_train(backbone):
    model = build(backbone)
    assert model.backbone is not None and model.mlp.units == [5, 4]
    model.compile(tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    x, y = batch(6, n=64)
    before = [v.numpy().copy() for v in model.variable_groups()["adapters"]]
    loss = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss))
    assert all(not np.allclose(b, v.numpy()) for b, v in zip(before, model.variable_groups()["adapters"]))


def test_option_errors():
    with pytest.raises(OptionError, match="domain_feature: domains = 'feature' needs"):
        build(domains="feature")
    with pytest.raises(OptionError, match="no head / tail group column"):
        build_model(schema(group_column=None), ["click"], backbone="dnn", framework="mlora")
    with pytest.raises(OptionError, match="temperature"):
        build(temperature=0.0)
    with pytest.raises(OptionError, match="domains"):
        build(domains="gender")


@pytest.mark.parametrize("pretrain", [False, True])
def test_trains_through_the_pipeline_in_stages(sim_data, tmp_path, pretrain):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "pipeline"))
    from train_helpers import train_config
    from pipeline.train import train

    train(train_config(sim_data, tmp_path, epochs=1, steps_per_epoch=3, eval_splits=[],
                       **{"model.framework": "mlora", "model.framework_options": {"temperature": 8,
                                                                                  "pretrain": pretrain}}))
    stages = tmp_path / "t" / "stages"
    names = ["1-user_groups", "2-pretrain", "3-train"] if pretrain else ["1-user_groups", "2-train"]
    assert sorted(os.listdir(stages)) == names
    assert all((stages / name / "stage.json").exists() for name in names)
