"""Task heads (models/heads.py): the registry, today's additive heads by value, per-task
towers by value through their own weights, config round-trips and option checks."""
import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from models import heads as H
from models.backbones import BackboneOutput
from models.options import OptionError

TASKS = ["click", "conv"]


def backbone_output(batch=6, width=5, seed=0) -> BackboneOutput:
    rng = np.random.default_rng(seed)
    return BackboneOutput(tf.constant(rng.normal(size=(batch, width)), tf.float32),
                          tf.constant(rng.normal(size=(batch, 1)), tf.float32))


def randomize(layer, seed=1) -> list:
    """Give every weight of ``layer`` random values; returns them (numpy), in layer.weights order."""
    rng = np.random.default_rng(seed)
    values = [rng.normal(size=w.shape).astype(np.float32) for w in layer.weights]
    layer.set_weights(values)
    return values


def test_registry_refuses_a_taken_name_and_adds_a_new_one():
    assert {"additive", "towers"} <= set(H.HEADS)
    with pytest.raises(ValueError, match=r"heads 'towers' is registered twice \(TowerHeads, Other\)"):
        H.register_heads("Towers")(type("Other", (H.Heads,), {}))
    assert H.HEADS["towers"] is H.TowerHeads

    class Mean(H.Heads):
        """A new variant is one class: every task's logit is the mean of the representation."""

        def _build_heads(self):
            pass

        def _logits(self, out, training):
            return {t: tf.reduce_mean(out.repr, axis=1, keepdims=True) for t in self.tasks}

    try:
        H.register_heads("mean_test_only")(Mean)
        out = backbone_output()
        got = H.get_heads("mean_test_only", TASKS)(out)
        np.testing.assert_allclose(got["conv"].numpy(), np.mean(out.repr.numpy(), axis=1, keepdims=True), rtol=1e-6)
    finally:
        H.HEADS.pop("mean_test_only", None)


def test_additive_single_task_is_the_backbone_logit():
    out = backbone_output()
    heads = H.get_heads("additive", ["click"])
    got = heads(out)
    assert list(got) == ["click"] and heads.weights == []
    np.testing.assert_array_equal(got["click"].numpy(), out.logit.numpy())


def test_additive_heads_are_todays_formula():
    """z_t = z_b + w_t^T r_b + b_t (the formula of the CTRModel before heads were a module):
    zero at the start, then by value for arbitrary head weights."""
    out = backbone_output()
    heads = H.get_heads("additive", TASKS)
    start = heads(out)
    for t in TASKS:  # zero-initialised: every task starts at the backbone logit
        np.testing.assert_array_equal(start[t].numpy(), out.logit.numpy())
    values = dict(zip([w.name for w in heads.weights], randomize(heads)))
    got = heads(out)
    r, z = out.repr.numpy(), out.logit.numpy()
    for t in TASKS:
        w, b = values[f"heads/head_{t}/kernel:0"], values[f"heads/head_{t}/bias:0"]
        np.testing.assert_allclose(got[t].numpy(), z + r @ w + b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["click"].numpy(), got["conv"].numpy())


def test_towers_are_each_tasks_own_mlp_by_value():
    """Task t's logit = w_t^T relu(W2 relu(W1 r + b1) + b2) + b_t through its own weights, with no
    backbone logit in it; dropout draws only in training."""
    out = backbone_output()
    heads = H.get_heads("towers", TASKS, units=[4, 3], dropout=0.5)
    heads(out)
    values = dict(zip([w.name for w in heads.weights], randomize(heads)))
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    got = heads(out, training=False)
    for t in TASKS:
        v = {k.split(f"tower_{t}/")[1]: a for k, a in values.items() if f"tower_{t}/" in k}
        h = relu(out.repr.numpy() @ v["mlp/dense_0/kernel:0"] + v["mlp/dense_0/bias:0"])
        h = relu(h @ v["mlp/dense_1/kernel:0"] + v["mlp/dense_1/bias:0"])
        want = h @ v["logit/kernel:0"] + v["logit/bias:0"]
        np.testing.assert_allclose(got[t].numpy(), want, rtol=1e-5, atol=1e-5)
    shifted = heads(BackboneOutput(out.repr, out.logit + 10.0), training=False)
    np.testing.assert_array_equal(shifted["conv"].numpy(), got["conv"].numpy())  # no shared backbone logit
    assert not np.allclose(heads(out, training=True)["click"].numpy(), got["click"].numpy())


def test_towers_defaults_config_round_trip_and_float32_under_mixed_precision():
    from models.layers import global_policy

    heads = H.get_heads("towers", TASKS)
    assert heads.options == {"units": [64], "activation": "relu", "dropout": 0.0}
    out = backbone_output()
    heads(out)
    randomize(heads)
    again = H.TowerHeads.from_config(heads.get_config())
    again(out)
    again.set_weights(heads.get_weights())
    for t in TASKS:
        np.testing.assert_array_equal(again(out)[t].numpy(), heads(out)[t].numpy())
    with global_policy("mixed_bfloat16"):
        mixed = H.get_heads("towers", TASKS, units=[8, 8])
        assert all(z.dtype == tf.float32 for z in mixed(out).values())


@pytest.mark.parametrize("name, options, message", [
    ("tower", {}, r"^model\.heads = 'tower': unknown heads; known: \['additive', 'towers'"),
    ("towers", {"unit": [8]}, r"model\.head_options\.unit: unknown option of heads 'towers'; known: "
                              r"\['activation', 'dropout', 'units'\]"),
    ("towers", {"units": [8, 0]}, r"model\.head_options\.units\[1\] = 0: expected an integer in \[1, inf\)"),
    ("towers", {"dropout": 1.0}, r"model\.head_options\.dropout = 1\.0: expected a number in \[0, 1\)"),
    ("towers", {"activation": "relux"}, r"model\.head_options\.activation = 'relux': expected a Keras activation"),
    ("additive", {"units": [8]}, r"model\.head_options\.units: unknown option of heads 'additive'; it takes none"),
])
def test_options_are_checked_naming_the_key(name, options, message):
    with pytest.raises(OptionError, match=message):
        H.check_head_options(name, options, "model.")
    with pytest.raises(OptionError):
        H.get_heads(name, TASKS, **options)


def test_check_head_options_returns_checked_values():
    assert H.check_head_options("towers", {"units": [8.0], "dropout": 0}) == {"units": [8], "dropout": 0.0}


def test_a_built_model_gives_the_additive_formula_through_its_heads():
    """build_model's default heads: each task's probability is sigmoid(z_b + w_t^T r_b + b_t) of
    the model's own backbone output (the formula of the CTRModel before heads were a module)."""
    from features.schema import Feature, Schema
    from models.factory import build_model

    feats = [Feature("user", "categorical", "string", "user", {"type": "vocab"}, num_ids=12),
             Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=9)]
    schema = Schema(features=feats, labels=TASKS).to_dict()
    model = build_model(schema, TASKS, backbone="dnn", backbone_options={"dnn_units": [6]}, embedding_dim=4)
    rng = np.random.default_rng(3)
    x = {"user": rng.integers(0, 12, (7, 1)), "item": rng.integers(0, 9, (7, 1))}
    model(x)
    heads = [layer for layer in model.submodules if isinstance(layer, H.Heads)]
    assert len(heads) == 1 and isinstance(heads[0], H.AdditiveHeads)
    randomize(heads[0])
    out = model.backbone(model.embedding(x))
    got = model(x)
    for t in TASKS:
        dense = heads[0].task_heads[t]
        z = out.logit.numpy() + out.repr.numpy() @ dense.kernel.numpy() + dense.bias.numpy()
        np.testing.assert_allclose(got[t].numpy(), 1 / (1 + np.exp(-z)), rtol=1e-5, atol=1e-6)
