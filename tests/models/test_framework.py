"""The objective mechanism (models.framework.FrameworkModel) on a small test framework:
two objectives (one through the gradient-reversal layer), an alternating second
optimizer, a frozen variable group and sample weights, each step checked against a hand
computation in numpy, under the default strategy here and under MirroredStrategy over two
logical CPUs, an in-process ParameterServerStrategy and mixed_bfloat16 in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.framework import COMPILED, Forward, FrameworkModel, Objective, Phase, weighted_mean
from models.layers import GradientReversal

ALPHA, ADV_WEIGHT, LR, LR_DISC, N_IDS, WIDTH = 0.7, 0.5, 0.5, 0.3, 6, 4


def schema_dict() -> dict:
    return Schema([Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=N_IDS)],
                  ["click"]).to_dict()


class Adversarial(FrameworkModel):
    """h = E[item]; z = h W_t + b_t (served); d = GRL(h) W_d + b_d predicts the source.
    Objectives: ctr (compiled BCE on sigma(z)) and adv = BCE(source, sigma(d)) of weight 0.5.
    Phases: the discriminator on adv with its own optimizer, then the rest on both."""

    objective_names = (COMPILED, "adv")
    gradient_taps = {"grad_norm_d": "d"}
    option_defaults = {"alternate": True}

    def __init__(self, schema_dict, tasks, **kw):
        super().__init__(schema_dict, tasks, **kw)
        init = tf.keras.initializers.RandomNormal(stddev=0.5, seed=1)
        self.table = tf.keras.layers.Embedding(N_IDS, WIDTH, embeddings_initializer=init, name="table")
        self.tower = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.RandomNormal(seed=2),
                                           name="tower")
        self.reverse = GradientReversal(ALPHA)
        self.disc = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.RandomNormal(seed=3),
                                          name="disc")

    def forward(self, inputs, training=None):
        h = self.table(inputs["item"][:, 0])
        z, d = self.tower(h), self.disc(self.reverse(h))
        return Forward({"click": tf.cast(z, tf.float32)}, {"d": tf.cast(d, tf.float32)})

    def objectives(self, x, y, forward, sample_weight):
        source = tf.cast(tf.reshape(x["_source"], [-1, 1]), tf.float32)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(source, forward.aux["d"])
        sw = None if sample_weight is None else sample_weight["click"]
        return {**super().objectives(x, y, forward, sample_weight),
                "adv": Objective(weighted_mean(bce, sw), ADV_WEIGHT)}

    def variable_groups(self):
        return {"disc": self.disc.trainable_variables, "table": self.table.trainable_variables}

    def phases(self):
        if not self.options["alternate"]:
            return super().phases()
        return [Phase("disc", ("adv",), "disc", "disc"), Phase("model", None, None, None)]


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = {"item": rng.integers(0, N_IDS, (n, 1)).astype(np.int64), "_source": (np.arange(n) % 2).astype(np.int64)}
    y = {"click": (rng.random((n, 1)) < 0.4).astype(np.float32)}
    w = {"click": rng.uniform(0.0, 2.0, n).astype(np.float32)}
    return x, y, w


def build(alternate=True):
    model = Adversarial(schema_dict(), ["click"], alternate=alternate)
    optimizers = {"disc": tf.keras.optimizers.SGD(LR_DISC)} if alternate else None
    model.compile(optimizer=tf.keras.optimizers.SGD(LR), loss={"click": "binary_crossentropy"},
                  phase_optimizers=optimizers)
    return model


def weights(model) -> dict:
    return {"E": model.table.embeddings.numpy(), "Wt": model.tower.kernel.numpy(), "bt": model.tower.bias.numpy(),
            "Wd": model.disc.kernel.numpy(), "bd": model.disc.bias.numpy()}


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _bce(y, logit):
    p = _sigmoid(logit)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def hand_step(w0: dict, x, y, sw, alternate=True, frozen=()):
    """One step in float64 numpy: (weights after, {ctr, adv, loss, grad_norm_d})."""
    w = {k: v.astype(np.float64) for k, v in w0.items()}
    ids, s, t = x["item"][:, 0], x["_source"].astype(np.float64)[:, None], y["click"].astype(np.float64)
    sw = sw["click"].astype(np.float64)[:, None]
    n = len(ids)
    h = w["E"][ids]
    if alternate:  # the discriminator's step: adv alone, lr_disc, its weights only
        g_d = ADV_WEIGHT * sw * (_sigmoid(h @ w["Wd"] + w["bd"]) - s) / n
        w["Wd"], w["bd"] = w["Wd"] - LR_DISC * h.T @ g_d, w["bd"] - LR_DISC * g_d.sum(0)
    z, d = h @ w["Wt"] + w["bt"], h @ w["Wd"] + w["bd"]
    ctr, adv = np.sum(sw * _bce(t, z)) / n, np.sum(sw * _bce(s, d)) / n
    g_z = sw * (_sigmoid(z) - t) / n
    g_d = ADV_WEIGHT * sw * (_sigmoid(d) - s) / n
    g_h = g_z @ w["Wt"].T - ALPHA * (g_d @ w["Wd"].T)  # the reversal layer: -alpha times the gradient
    grads = {"Wt": h.T @ g_z, "bt": g_z.sum(0), "E": np.zeros_like(w["E"])}
    np.add.at(grads["E"], ids, g_h)
    if not alternate:  # one phase: the discriminator learns on the same step
        grads.update(Wd=h.T @ g_d, bd=g_d.sum(0))
    held = {"table": "E"}  # variable group -> the weight it holds
    for k, g in grads.items():
        if k not in {held[f] for f in frozen}:
            w[k] = w[k] - LR * g
    logs = {"ctr_loss": ctr, "adv_loss": adv, "loss": ctr + ADV_WEIGHT * adv,
            "grad_norm_d": float(np.mean(np.abs(g_d * n)))}
    return w, logs


@pytest.mark.parametrize("alternate,frozen", [(True, ()), (False, ()), (True, ("table",))])
def test_step_matches_hand_computation(alternate, frozen):
    """The update of every weight, each objective's log, the total and the gradient tap."""
    x, y, sw = batch()
    model = build(alternate)
    model(x)
    if frozen:
        model.freeze(*frozen)
    before = weights(model)
    want, want_logs = hand_step(before, x, y, sw, alternate, frozen)
    logs = model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    for k, v in weights(model).items():
        np.testing.assert_allclose(v, want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for k in ("ctr_loss", "adv_loss", "loss", "grad_norm_d"):
        np.testing.assert_allclose(logs[k], want_logs[k], rtol=1e-5, err_msg=k)
    if frozen:
        np.testing.assert_array_equal(weights(model)["E"], before["E"])


def test_zero_sample_weights_leave_the_model_unchanged():
    x, y, sw = batch()
    model = build()
    model(x)
    before = weights(model)
    model.train_on_batch(x, y, sample_weight={"click": np.zeros(8, np.float32)})
    for k, v in weights(model).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_evaluate_logs_objectives_without_taps():
    x, y, sw = batch()
    model = build()
    model(x)
    _, want = hand_step(weights(model), x, y, sw, alternate=False)  # the losses at the weights before any update
    logs = model.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True)
    assert "grad_norm_d" not in logs
    for k in ("ctr_loss", "adv_loss", "loss"):
        np.testing.assert_allclose(logs[k], want[k], rtol=1e-5, err_msg=k)


def test_unknown_group_and_missing_phase_optimizer_fail_naming_them():
    model = Adversarial(schema_dict(), ["click"])
    with pytest.raises(ValueError, match=r"phase_optimizers must hold \['disc'\]"):
        model.compile(optimizer="sgd", loss={"click": "binary_crossentropy"})
    with pytest.raises(ValueError, match=r"unknown variable group\(s\) \['tables'\]"):
        model.freeze("tables")


@pytest.mark.parametrize("dtype,alpha", [("float32", 0.3), ("bfloat16", 0.25), ("bfloat16", 0.3)])
def test_gradient_reversal_is_identity_forward_and_minus_alpha_backward(dtype, alpha):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(5, 3)), dtype)
    upstream = tf.constant(rng.normal(size=(5, 3)), dtype)
    layer = GradientReversal(alpha)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    grad = tape.gradient(y, x, output_gradients=upstream)
    assert grad.dtype == x.dtype
    # numpy's float32 product -alpha * g, rounded once to bf16: bit-exact, no double rounding
    want = tf.cast(np.float32(-alpha) * upstream.numpy().astype(np.float32), dtype).numpy()
    np.testing.assert_array_equal(grad.numpy(), want)
    assert GradientReversal.from_config(layer.get_config()).alpha == alpha


_STRATEGIES = textwrap.dedent("""
    import json, sys
    import numpy as np
    import models
    import tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    from test_framework import batch, build, hand_step, weights
    from pipeline.strategy import StrategyConfig, make_strategy

    x, y, sw = batch(8)
    data = (x, y, sw)
    out = {}
    for name in ("mirrored", "parameter_server", "mixed_bfloat16"):
        tf.keras.utils.set_random_seed(1)
        if name == "mixed_bfloat16":
            tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
            strategy = tf.distribute.get_strategy()
        elif name == "mirrored":
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        else:
            strategy = make_strategy(StrategyConfig(name="parameter_server", in_process={"workers": 1, "ps": 1}))
        with strategy.scope():
            model = build()
            model(x)
        before = weights(model)
        want, want_logs = hand_step(before, x, y, sw)
        if name == "parameter_server":
            creator = tf.keras.utils.experimental.DatasetCreator(
                lambda ctx: tf.data.Dataset.from_tensors(data).repeat())
            model.fit(creator, epochs=1, steps_per_epoch=1, verbose=0)
        else:
            model.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)
        got = weights(model)
        out[name] = {"replicas": strategy.num_replicas_in_sync,
                     "error": {k: float(np.max(np.abs(got[k] - want[k]) / (np.abs(want[k]) + 1e-3))) for k in got},
                     "moved": {k: float(np.max(np.abs(got[k] - before[k]))) for k in got}}
        tf.keras.mixed_precision.set_global_policy("float32")
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_strategies_and_bfloat16_match_the_hand_computation(tmp_path):
    """Two replicas on half batches, variables on a parameter server, and mixed_bfloat16
    take the hand-computed step: the loss scaling for the replicas, the second optimizer and
    the reversal layer hold under each (bf16 within its 8-bit mantissa)."""
    script = tmp_path / "strategies.py"
    script.write_text(_STRATEGIES)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)], capture_output=True, text=True,
                          timeout=600, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    assert out["mirrored"]["replicas"] == 2
    for name, tolerance in (("mirrored", 1e-4), ("parameter_server", 1e-4), ("mixed_bfloat16", 3e-2)):
        assert all(v > 1e-3 for v in out[name]["moved"].values()), (name, out[name])
        assert max(out[name]["error"].values()) < tolerance, (name, out[name])
