"""The experts framework (models/frameworks/experts): ME, MMoE and PLE mixtures against hand
computations in numpy, Shared-Bottom as the plain model with towers, the linear-experts reduction
of ME to a single embedding (Tencent §4.2), STEM's All-Forward-Task-specific-Backward gradients,
STEM-AL's gradients and served call, AME's tables and the gates analysis, option errors, config
round trips and the served tasks of a training config."""
from __future__ import annotations

import json

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.backbones import BACKBONES, DNN, register_backbone
from models.ctr_model import CTRModel
from models.factory import FRAMEWORKS, build_model, custom_objects
from models.frameworks.experts import ExpertsModel
from models.layers import global_policy
from models.options import OptionError

FEATURES = ("user", "item", "ctx")
SIZES = {"user": 9, "item": 11, "ctx": 6}
TASKS = ["click", "conv"]
PRESETS = ("me", "shared_bottom", "mmoe", "ple", "me_mmoe", "stem", "ame", "stem_al")
B = 24


def schema() -> dict:
    feats = [Feature(f, "categorical", "string", "item" if f == "item" else "user", {"type": "vocab"},
                     num_ids=SIZES[f]) for f in FEATURES]
    return Schema(features=feats, labels=TASKS).to_dict()


def batch(seed=0, n=B):
    rng = np.random.default_rng(seed)
    x = {f: rng.integers(0, SIZES[f], (n, 1)).astype(np.int64) for f in FEATURES}
    y = {t: rng.integers(0, 2, (n, 1)).astype(np.float32) for t in TASKS}
    return x, y


def perturb(model, seed=0, scale=0.5):
    """Positive random values for zero-initialised weights (biases, constant gates): a hand
    computation that ignored them would still pass on zeros, and no ReLU starts dead."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        if not np.any(v.numpy()):
            v.assign(np.abs(rng.normal(0.0, scale, v.shape)).astype(np.float32))


def build(framework, tasks=TASKS, units=(4,), embedding_dim=4, seed=0, **options):
    tf.keras.utils.set_random_seed(seed)
    m = build_model(schema(), tasks, backbone="dnn", backbone_options={"dnn_units": list(units)},
                    embedding_dim=embedding_dim, embedding_options={"initializer_stddev": 0.5}, framework=framework,
                    framework_options={"tower_units": [3], **options})
    m(batch()[0])
    perturb(m, seed)
    return m


# ---- numpy ------------------------------------------------------------------------------------------
def relu(x):
    return np.maximum(x, 0.0)


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def dense(layer, x):
    return x @ layer.kernel.numpy() + layer.bias.numpy()


def mlp(layer, x):
    """models.layers.MLP with ReLU."""
    for d in layer.dense:
        x = relu(dense(d, x))
    return x


def tower(layer, x):
    return dense(layer.head, mlp(layer.mlp, x))


def gate(layer, x):
    return softmax(dense(layer.out, mlp(layer.mlp, x)))


def flat(model, table, x):
    """Table ``table``'s field embeddings of the batch, concatenated field by field [B, F * k]."""
    rows = model.embeddings[table].tables[0]
    return np.concatenate([rows[f]["embedding"].numpy()[x[f][:, 0]] for f in FEATURES], axis=1)


def expert(model, index, x):
    """A ``dnn`` expert's output h (its MLP's last hidden layer) on its table."""
    return mlp(model.experts[index].tower.mlp, flat(model, model.plan[index].table, x))


def logits(model, x):
    return {t: z.numpy() for t, z in model(x, training=False, return_forward=True).logits.items()}


# ---- mixtures against hand computations -----------------------------------------------------------
def test_me_mixture_is_the_gate_weighted_mean_of_its_experts_then_the_tower():
    """§4.2: h = (1/T) sum_t g^(t) h^(t), y = F(h); each task's gate reads both tables."""
    m = build("me", tables=[{"width": 3}, {"width": 5}])
    assert [t.width for t in m.tables] == [3, 5] and [e.table for e in m.plan] == [0, 1]
    x = batch(1)[0]
    h = [expert(m, 0, x), expert(m, 1, x)]
    got = logits(m, x)
    for t in TASKS:
        g = gate(m.gates[f"gate_0_{t}"], np.concatenate([flat(m, 0, x), flat(m, 1, x)], axis=1))
        mixed = (g[:, :1] * h[0] + g[:, 1:] * h[1]) / 2.0
        np.testing.assert_allclose(got[t], tower(m.towers[t], mixed), rtol=1e-4, atol=1e-5)


def test_mmoe_mixture_is_each_tasks_softmax_over_all_experts():
    """MMoE Eq. 5-6: f^k(x) = sum_i softmax(W_gk x)_i f_i(x), no averaging."""
    m = build("mmoe", experts=[{"table": 0, "count": 3}])
    assert len(m.plan) == 3 and {e.table for e in m.plan} == {0} and {e.owner for e in m.plan} == {None}
    x = batch(2)[0]
    h = np.stack([expert(m, i, x) for i in range(3)], axis=1)
    got = logits(m, x)
    for t in TASKS:
        g = gate(m.gates[f"gate_0_{t}"], flat(m, 0, x))
        np.testing.assert_allclose(got[t], tower(m.towers[t], np.einsum("be,beh->bh", g, h)), rtol=1e-4, atol=1e-5)


def test_ple_two_extraction_levels_match_a_hand_computation():
    """PLE Eq. 1-5: level 1 is CGC (task k's gate over its own and the shared expert, a shared
    gate over all three), level 2's experts read level 1's task / shared mixtures, and the last
    level has no shared gate."""
    m = build("ple")
    assert [(e.owner, e.table) for e in m.plan] == [(0, 0), (1, 0), (None, 0)]
    assert sorted(m.gates) == ["gate_0_click", "gate_0_conv", "gate_0_shared", "gate_1_click", "gate_1_conv"]
    assert [g.num_experts for g in (m.gates["gate_0_click"], m.gates["gate_0_shared"], m.gates["gate_1_conv"])] \
        == [2, 3, 2]
    x = batch(3)[0]
    e = flat(m, 0, x)
    h = [expert(m, i, x) for i in range(3)]  # click's, conv's, shared
    level1 = {}
    for k, t in enumerate(TASKS):
        g = gate(m.gates[f"gate_0_{t}"], e)
        level1[t] = g[:, :1] * h[k] + g[:, 1:] * h[2]
    g = gate(m.gates["gate_0_shared"], e)
    shared = g[:, :1] * h[0] + g[:, 1:2] * h[1] + g[:, 2:] * h[2]
    upper = [mlp(m.upper[0][0], level1["click"]), mlp(m.upper[0][1], level1["conv"]), mlp(m.upper[0][2], shared)]
    got = logits(m, x)
    for k, t in enumerate(TASKS):
        g = gate(m.gates[f"gate_1_{t}"], level1[t])
        np.testing.assert_allclose(got[t], tower(m.towers[t], g[:, :1] * upper[k] + g[:, 1:] * upper[2]),
                                   rtol=1e-4, atol=1e-5)


def test_shared_bottom_is_the_plain_model_with_task_towers():
    """One expert, no gate: the same function as CTRModel with a dnn backbone and tower heads."""
    sb = build("shared_bottom")
    assert not sb.gates and len(sb.plan) == 1
    x = batch(4)[0]
    plain = build_model(schema(), TASKS, backbone="dnn", backbone_options={"dnn_units": [4]}, embedding_dim=4,
                        heads="towers", head_options={"units": [3]})
    assert isinstance(plain, CTRModel)
    plain(x)
    plain.embedding.set_weights(sb.embeddings[0].get_weights())
    plain.backbone.set_weights(sb.experts[0].get_weights())
    for t in TASKS:
        plain.task_heads.towers[t].set_weights(sb.towers[t].get_weights())
    want = plain(x, training=False)
    for t, p in sb(x, training=False).items():
        np.testing.assert_allclose(p.numpy(), want[t].numpy(), rtol=1e-6)


def test_linear_experts_reduce_me_to_a_single_embedding_of_the_concatenated_tables():
    """§4.2: without non-linearity in the experts, ME is the single-embedding paradigm. Linear
    experts (the identity, then P_t) and fixed gates give h = (1/T) sum_t g_t P_t flat(e^(t)), one
    linear map of the concatenated tables' fields: a one-table model of width 3 + 5 with that map
    and the same tower computes the same probabilities."""
    x = batch(5)[0]
    me = build("me", units=(), tables=[{"width": 3}, {"width": 5}], gate_input="none", expert_dim=6)
    single = build("me", units=(), tables=[{"width": 8}], experts=[{"table": 0}], expert_dim=6, seed=1)
    g = {t: softmax(me.gates[f"gate_0_{t}"].logits.numpy()) for t in TASKS}
    assert not np.allclose(g["click"], 0.5)  # the gates are not trivially uniform
    for t in TASKS[1:]:  # one task: the single-embedding model has one map, not one per task's gate
        me.gates[f"gate_0_{t}"].logits.assign(me.gates["gate_0_click"].logits)
    g = g["click"]
    tables = [me.embeddings[0].tables[0], me.embeddings[1].tables[0]]
    for f in FEATURES:  # e_f = [e_f^(1), e_f^(2)]: one row of width 8 per id
        single.embeddings[0].tables[0][f]["embedding"].assign(
            np.concatenate([tables[0][f]["embedding"].numpy(), tables[1][f]["embedding"].numpy()], axis=1))
    w = [me.projections[i].kernel.numpy().reshape(len(FEATURES), k, 6) for i, k in enumerate((3, 5))]
    kernel = np.concatenate([g[0] / 2 * w[0], g[1] / 2 * w[1]], axis=1).reshape(len(FEATURES) * 8, 6)
    single.projections[0].kernel.assign(kernel)
    single.projections[0].bias.assign((g[0] * me.projections[0].bias.numpy() + g[1] * me.projections[1].bias.numpy()) / 2)
    for t in TASKS:
        single.towers[t].set_weights(me.towers[t].get_weights())
    want = single(x, training=False)
    for t, p in me(x, training=False).items():
        np.testing.assert_allclose(p.numpy(), want[t].numpy(), rtol=1e-5, atol=1e-7)


# ---- STEM / STEM-AL gradient routing ------------------------------------------------------------
def _grads(model, task, x, y):
    with tf.GradientTape() as tape:
        z = model(x, training=True, return_forward=True).logits[task]
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y[task], z))
    return {v.ref(): g for v, g in zip(model.trainable_variables,
                                       tape.gradient(loss, model.trainable_variables))}


def _reaches(grads, layers) -> bool:
    """Whether the loss's gradient reaches any weight of ``layers`` (None and zeros: not)."""
    values = [grads[v.ref()] for layer in layers for v in layer.trainable_variables]
    assert values, "no weights to check"
    return any(g is not None and float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g)))) > 0 for g in values)


def test_stem_aftb_a_tasks_loss_reaches_only_its_own_and_the_shared_tables_and_experts():
    m = build("stem", experts=[{"table": 0, "count": 2}, {"table": 1}])
    by_owner = {o: [e for e, p in zip(m.experts, m.plan) if p.owner == o] for o in (None, 0, 1)}
    table = {o: [m.embeddings[i] for i, t in enumerate(m.tables) if t.owner == o][0] for o in (None, 0, 1)}
    assert [len(by_owner[o]) for o in (None, 0, 1)] == [2, 1, 1]
    x, y = batch(6)
    for k, task in enumerate(TASKS):
        grads = _grads(m, task, x, y)
        other = 1 - k
        assert _reaches(grads, [table[None]]) and _reaches(grads, [table[k]])
        assert _reaches(grads, by_owner[None]) and _reaches(grads, by_owner[k])
        assert not _reaches(grads, [table[other]]) and not _reaches(grads, by_owner[other])
        assert not _reaches(grads, [m.gates[f"gate_0_{TASKS[other]}"], m.towers[TASKS[other]]])
    # all forward: click's gate reads conv's expert, so conv's expert changes click's prediction
    before = logits(m, x)["click"]
    for v in by_owner[1][0].trainable_variables:
        v.assign(v * 1.5 + 0.1)
    assert not np.allclose(logits(m, x)["click"], before)
    # own_and_shared routing (PLE's CGC) reads it not at all
    cgc = build("stem", routing="own_and_shared")
    before = logits(cgc, x)["click"]
    conv_expert = [e for e, p in zip(cgc.experts, cgc.plan) if p.owner == 1][0]
    for v in conv_expert.trainable_variables:
        v.assign(v * 1.5 + 0.1)
    np.testing.assert_allclose(logits(cgc, x)["click"], before)


def test_stem_al_main_loss_reaches_both_tables_the_auxiliary_loss_only_the_shared_one():
    m = build("stem_al")
    main, shared = (m.embeddings[i] for i in (0, 1))
    assert [(t.owner, t.spec) for t in m.tables] == [(0, 0), (None, 1)]
    x, y = batch(7)
    grads = _grads(m, "click", x, y)
    assert _reaches(grads, [main]) and _reaches(grads, [shared]) and _reaches(grads, m.experts)
    grads = _grads(m, "conv", x, y)
    assert _reaches(grads, [shared]) and _reaches(grads, [m.experts[1]])
    assert not _reaches(grads, [main]) and not _reaches(grads, [m.experts[0]])
    # served: the main task alone, as the training forward computes it
    served = m(x, training=False)
    assert sorted(served) == ["click"] and m.served == ["click"]
    np.testing.assert_allclose(served["click"].numpy(), tf.sigmoid(logits(m, x)["click"]).numpy(), rtol=1e-6)
    assert type(m).served_tasks(["a", "b", "c"], {}) == ["a"]
    assert type(m).served_tasks(["a", "b"], {"serve": "all"}) == ["a", "b"]


def test_a_served_first_call_still_creates_every_weight():
    """A model whose first call is the served one (export after load_weights) has every tower."""
    tf.keras.utils.set_random_seed(0)
    m = build_model(schema(), TASKS, backbone="dnn", backbone_options={"dnn_units": [4]}, embedding_dim=4,
                    framework="stem_al")
    assert sorted(m(batch()[0], training=False)) == ["click"]
    assert all(t.built for t in m.towers.values()) and "gate_0_click" in m.gates


# ---- AME and the gates analysis ----------------------------------------------------------------
def test_ame_tables_have_the_paper_widths_and_gate_weights_per_table_sum_to_one(tmp_path):
    from pipeline.gates import GateWeights

    m = build("ame")
    assert [t.width for t in m.tables] == [16, 32, 64]
    for i, width in enumerate((16, 32, 64)):
        assert m.embeddings[i].tables[0]["user"]["embedding"].shape == (SIZES["user"], width)
    x, y = batch(8)
    weights = m.table_weights(x)
    for t in TASKS:
        assert weights[t].shape == (B, 3)
        np.testing.assert_allclose(weights[t].numpy().sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(weights[t].numpy(), gate(m.gates[f"gate_0_{t}"], np.concatenate(
            [flat(m, i, x) for i in range(3)], axis=1)), rtol=1e-5)  # one expert per table
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    callback = GateWeights(str(tmp_path), data, rows=17)
    callback.set_model(m)
    callback.on_train_end()
    record = json.loads((tmp_path / "gates.json").read_text())
    assert record["rows"] == 17 and [t["width"] for t in record["tables"]] == [16, 32, 64]
    for t in TASKS:
        np.testing.assert_allclose(sum(record["weights"][t]), 1.0, rtol=1e-6)
        np.testing.assert_allclose(record["weights"][t], weights[t].numpy()[:17].mean(axis=0), rtol=1e-5)
        assert record["positive_rate"][t] == pytest.approx(float(y[t][:17].mean()))
    assert (tmp_path / "gates.png").stat().st_size > 0


def test_stem_weights_per_table_cover_the_other_tasks_table_and_me_mmoe_binds_an_expert_per_table():
    stem = build("stem")
    weights = stem.table_weights(batch()[0])
    assert [d["owner"] for d in stem.describe_tables()] == ["shared", "click", "conv"]
    assert all(np.all(w.numpy() > 0) for w in weights.values())  # AFTB: every table gets some forward weight
    me_mmoe = build("me_mmoe")
    assert len(me_mmoe.tables) == 8 and [e.table for e in me_mmoe.plan] == list(range(8))


# ---- heterogeneous experts, options, round trips ----------------------------------------------
def test_heterogeneous_experts_need_a_common_width():
    experts = [{"table": 0}, {"table": 0, "backbone": "ipnn", "backbone_options": {"dnn_units": [6]}},
               {"table": 1, "backbone": "dcnv2", "backbone_options": {"dnn_units": [5], "num_cross_layers": 1}}]
    tf.keras.utils.set_random_seed(0)
    m = build_model(schema(), ["click"], backbone="dnn", backbone_options={"dnn_units": [4]}, embedding_dim=4,
                    framework="me", framework_options={"experts": experts})
    with pytest.raises(OptionError, match=r"widths \[4, 6, 17\].*expert_dim"):
        m(batch()[0])
    m = build("me", tasks=["click"], experts=experts, expert_dim=7)
    x = batch(9)[0]
    h = [m.projections[i](tf.cast(m.experts[i](m.embeddings[m.plan[i].table](x)).repr, tf.float32)).numpy()
         for i in range(3)]
    g = gate(m.gates["gate_0_click"], np.concatenate([flat(m, 0, x), flat(m, 1, x)], axis=1))
    want = tower(m.towers["click"], sum(g[:, i:i + 1] * h[i] for i in range(3)) / 3.0)
    np.testing.assert_allclose(logits(m, x)["click"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options,match", [
    ({"experts": [{"table": 2}]}, r"framework_options\.experts\[0\]\.table = 2: there are 2 tables"),
    ({"tables": [{"owner": "task"}, {}], "experts": [{"table": 0, "owner": "shared"}, {"table": 1}]},
     r"experts\[0\]\.owner = 'shared': expert reads table 0, owned by 'task'"),
    ({"experts": [{"table": 0, "backbone": "nope"}, {"table": 1}]}, r"experts\[0\]\.backbone = 'nope': unknown"),
    ({"experts": [{"table": 0, "backbone_options": {"dnn_units": [4]}}, {"table": 1}]},
     r"experts\[0\]\.backbone_options: name the expert's backbone"),
    ({"experts": [{"table": 0, "backbone": "dnn", "backbone_options": {"units": [4]}}, {"table": 1}]},
     r"experts\[0\]\.backbone_options\.units: unknown option"),
    ({"tables": [{"owner": "everyone"}]}, r"tables\[0\]\.owner = 'everyone': expected one of"),
    ({"tables": [{"width": 0}, {}]}, r"tables\[0\]\.width = 0: expected an integer in \[1, inf\)"),
    ({"experts": [{"table": 0, "size": 3}, {"table": 1}]}, r"experts\[0\]\.size: unknown option of an expert"),
    ({"routing": "some"}, r"framework_options\.routing = 'some': expected one of"),
])
def test_structure_errors_name_the_key(options, match):
    from models.factory import check_model_options

    with pytest.raises(OptionError, match=match):
        check_model_options("dnn", {}, 4, {}, "me", options)


@pytest.fixture
def two_part_backbone():
    """A test-only backbone that reads two embeddings per feature (2 k wide, as GwPFM's P = 2)."""
    @register_backbone("_test_two_parts")
    class TwoParts(DNN):
        @classmethod
        def input_embedding_dim(cls, num_fields, embedding_dim, options=None):
            return 2 * embedding_dim

    yield TwoParts
    BACKBONES.pop("_test_two_parts")


def test_plain_experts_read_every_embedding_of_a_wider_table(two_part_backbone):
    """FlatDNN beside a two-part expert (GwPFM in the Moments model) reads the 2 k-wide rows whole."""
    m = build("mmoe", experts=[{"table": 0, "backbone": "_test_two_parts", "backbone_options": {"dnn_units": [4]}},
                               {"table": 0}])
    assert m.embeddings[0].embedding_dim == 8
    x = batch(11)[0]
    np.testing.assert_allclose(m.experts[1](m.embeddings[0](x)).repr.numpy(), expert(m, 1, x), rtol=1e-5)
    assert flat(m, 0, x).shape == (B, len(FEATURES) * 8)
    ffm = build("mmoe", experts=[{"table": 0}, {"table": 0, "backbone": "ffm"}])
    assert ffm.embeddings[0].embedding_dim == len(FEATURES) * 4 and ffm.embeddings[0].linear


def test_build_time_errors_name_the_table(two_part_backbone):
    with pytest.raises(OptionError, match=r"tables\[1\]: no expert reads this table"):
        build_model(schema(), TASKS, backbone="dnn", framework="me", framework_options={"experts": [{"table": 0}]})
    with pytest.raises(OptionError, match=r"tables\[0\]: its experts need it at widths \[8, 12\]"):
        build_model(schema(), TASKS, backbone="dnn", embedding_dim=4, framework="mmoe",
                    framework_options={"experts": [{"table": 0, "backbone": "ffm"},
                                                   {"table": 0, "backbone": "_test_two_parts"}]})
    with pytest.raises(OptionError, match="embedding_options.num_tables"):
        build_model(schema(), TASKS, backbone="dnn", framework="mmoe", embedding_options={"num_tables": 2})
    with pytest.raises(OptionError, match="upper_expert_units"):
        build_model(schema(), TASKS, backbone="fm", framework="ple")


@pytest.mark.parametrize("framework", PRESETS)
def test_config_round_trip_gives_equal_outputs(framework):
    m = build(framework)
    assert isinstance(m, ExpertsModel) and FRAMEWORKS[framework] is type(m)
    x = batch(10)[0]
    clone = type(m).from_config(m.get_config())
    clone(x)
    clone.set_weights(m.get_weights())
    want, got = m(x, training=False), clone(x, training=False)
    assert sorted(got) == sorted(want) == (["click"] if framework == "stem_al" else TASKS)
    for t in want:
        np.testing.assert_allclose(got[t].numpy(), want[t].numpy(), rtol=1e-6)
    assert type(m).__name__ in custom_objects()


def test_under_mixed_precision_the_embeddings_gates_and_logits_stay_float32():
    with global_policy("mixed_bfloat16"):
        m = build("ple")
    assert m.embeddings[0].compute_dtype == "float32" and m.gates["gate_0_click"].compute_dtype == "float32"
    assert m.towers["click"].mlp.dense[0].compute_dtype == "float32"
    z = logits(m, batch()[0])
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in z.values())


def test_training_config_monitors_only_served_tasks():
    from pipeline.config import ConfigError, from_dict
    from pipeline.train import TrainConfig

    def load(monitor):
        return from_dict(TrainConfig, {"data_dir": "d", "tasks": ["conversion", "click"],
                                       "model": {"backbone": "dnn", "framework": "stem_al"},
                                       "early_stopping": {"monitor": monitor}}, where="t.yaml")

    assert load("val_conversion_auc").served_tasks(["conversion", "click"]) == ["conversion"]
    with pytest.raises(ConfigError, match=r"val_click_auc.*not a metric this run logs"):
        load("val_click_auc")
