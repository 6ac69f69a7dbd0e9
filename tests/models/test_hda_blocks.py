"""HDA's building blocks (models/frameworks/hda) against hand computations: exact mutual
information and the mapped joints (Eq. 2-3, 15), Appendix A.2's worked example of Theorem 4.2,
the Stage 1a fit and the draws of X_t, adaptive re-balancing (Eq. 11-12) and group-aware beta
calibration (Eq. 13-14)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from models.frameworks.hda import (DEFAULT_LAMBDA1, AdaptiveRebalancing, FieldMapping, GroupBetaCalibration,
                                   ProbabilisticFeatureMapping, fit_calibration, fit_feature_mapping,
                                   fit_field_mapping, joint_counts, mapped_joint, mutual_information)
from pipeline.metrics import ece, logloss

# Appendix A.2: P(X, G) x 30 for X in {A, B, C}, and the transition to X_t in {M, N} it gives
APPENDIX_XG = np.array([[3.0, 7.0], [2.0, 8.0], [6.0, 4.0]])
APPENDIX_T = np.array([[0.0, 1.0], [7 / 12, 5 / 12], [5 / 12, 7 / 12]])
APPENDIX_XTG_90 = np.array([[11.0, 19.0], [22.0, 38.0]])  # its printed P(X_t, G) x 90
# the appendix gives no label: P(Y = 1 | X) = 0.2, 0.5, 0.7 on its P(X) = 1/3 each
EXAMPLE_CTR = np.array([0.2, 0.5, 0.7])
EXAMPLE_XY = np.stack([10.0 * (1 - EXAMPLE_CTR), 10.0 * EXAMPLE_CTR], axis=1)
BEST_PARTITION_MI = 0.00486  # the value for {A}, {B, C} (the appendix prints 0.0049)
RAW_MI = 0.0624


def mi(table) -> float:
    return float(mutual_information(np.asarray(table, np.float64)))


def merge(table, blocks) -> np.ndarray:
    """The joint of a deterministic merge of X's values: one row per block."""
    return np.array([np.asarray(table)[list(b)].sum(axis=0) for b in blocks])


def hand_mi(p) -> float:
    p = np.asarray(p, np.float64) / np.sum(p)
    outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / outer[nz])))


def set_transition(mapping: FieldMapping, t: np.ndarray) -> None:
    """The logits of a given row-stochastic T (zeros as -80: e^-80 is 0 in float32 sums)."""
    mapping.logits.assign(np.log(np.maximum(t, np.exp(-80.0))).astype(np.float32))


def padded(t: np.ndarray) -> np.ndarray:
    """A 3 x 2 transition as the 3 x 3 one of q = p (the third value of X_t never drawn)."""
    return np.concatenate([t, np.zeros((t.shape[0], 3 - t.shape[1]))], axis=1)


# ---- exact mutual information -------------------------------------------------------------
def test_mutual_information_matches_hand_computation():
    table = np.array([[0.4, 0.1], [0.1, 0.4]])
    hand = 2 * 0.4 * np.log(0.4 / 0.25) + 2 * 0.1 * np.log(0.1 / 0.25)
    assert mi(table) == pytest.approx(hand, abs=1e-12)
    assert mi(table * 37.0) == pytest.approx(hand, abs=1e-12)  # counts: normalised inside
    assert mi([[0.5, 0.0], [0.0, 0.5]]) == pytest.approx(np.log(2.0), abs=1e-12)  # 0 log 0 = 0
    assert mi(np.outer([0.2, 0.3, 0.5], [0.9, 0.1])) == pytest.approx(0.0, abs=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(3):
        t = rng.random((4, 3)) * (rng.random((4, 3)) > 0.3)
        assert mi(t) == pytest.approx(hand_mi(t), abs=1e-12)
    assert mutual_information(tf.constant(table, tf.float32)).dtype == tf.float32


def test_mutual_information_gradient_is_finite_and_exact():
    table = tf.Variable([[0.3, 0.0], [0.2, 0.5]], dtype=tf.float64)
    with tf.GradientTape() as tape:
        value = mutual_information(table)
    grad = tape.gradient(value, table).numpy()
    assert np.all(np.isfinite(grad))  # the empty cell too: no NaN from 0 log 0 (its own term adds nothing)
    eps = 1e-6
    for i, j in [(0, 0), (1, 0), (1, 1)]:
        up, down = table.numpy().copy(), table.numpy().copy()
        up[i, j] += eps
        down[i, j] -= eps
        assert grad[i, j] == pytest.approx((hand_mi(up) - hand_mi(down)) / (2 * eps), abs=1e-6)


def test_joint_counts_and_mapped_joint_by_hand():
    ids, groups = [0, 2, 2, 1, 2, 0], [1, 0, 1, 1, 0, 0]
    np.testing.assert_array_equal(joint_counts(ids, groups, 4), [[1, 1], [0, 1], [2, 1], [0, 0]])
    with pytest.raises(ValueError):
        joint_counts([0, 4], [0, 1], 4)
    t = np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75], [0.0, 1.0]])
    # P(X_t = j, G = g) = sum_x P(x, g) T[x, j], P(x, g) = counts / 6
    hand = np.array([[0.5 * 1 + 0.25 * 2, 0.5 * 1 + 1 + 0.25 * 1],
                     [0.5 * 1 + 0.75 * 2, 0.5 * 1 + 0.75 * 1]]) / 6
    np.testing.assert_allclose(mapped_joint(joint_counts(ids, groups, 4), t).numpy(), hand, atol=1e-15)


# ---- Appendix A.2 (Theorem 4.2's example) ---------------------------------------------------
def test_appendix_transition_reaches_zero_group_information():
    """(a) The appendix's T gives its printed P(X_t, G) = (11, 19; 22, 38) / 90, and I(X_t; G) = 0."""
    joint = mapped_joint(APPENDIX_XG, APPENDIX_T).numpy()
    np.testing.assert_allclose(joint, APPENDIX_XTG_90 / 90, atol=1e-15)
    assert abs(mi(joint)) < 1e-9
    layer = FieldMapping(3)  # the same through the layer's float32 softmax of the logits
    set_transition(layer, padded(APPENDIX_T))
    assert abs(float(mutual_information(mapped_joint(APPENDIX_XG, layer.transition())))) < 1e-6


def test_appendix_best_partition_and_raw_information():
    """(b) {A}, {B, C} is the best non-trivial merge of X (0.00486 nats; the appendix: 0.0049);
    (c) the raw feature keeps 0.0624 nats."""
    merges = {"A|BC": [[0], [1, 2]], "B|AC": [[1], [0, 2]], "C|AB": [[2], [0, 1]], "A|B|C": [[0], [1], [2]]}
    values = {k: mi(merge(APPENDIX_XG, b)) for k, b in merges.items()}
    assert values["A|BC"] == pytest.approx(BEST_PARTITION_MI, abs=2e-5)
    assert min(values, key=values.get) == "A|BC"
    assert values["A|B|C"] == pytest.approx(RAW_MI, abs=5e-5)
    assert values["B|AC"] == pytest.approx(0.0316, abs=5e-5) and values["C|AB"] == pytest.approx(0.0579, abs=5e-5)


def test_appendix_expectation_keeps_all_group_information_and_draws_follow_t():
    """(c) T[x] is one-to-one in x under the appendix's T, so the expectation keeps I(X; G);
    argmax merges {A, C} | {B}; the Gumbel draws follow T[x]."""
    layer = FieldMapping(3)
    set_transition(layer, padded(APPENDIX_T))
    ids = tf.constant([0, 1, 2])
    rows = layer.expectation(ids).numpy()
    np.testing.assert_allclose(rows, padded(APPENDIX_T), atol=1e-6)
    distinct = {tuple(np.round(r, 6)) for r in rows}
    assert len(distinct) == 3  # one-to-one: E[x] determines x
    assert mi(merge(APPENDIX_XG, [[0], [1], [2]])) == pytest.approx(RAW_MI, abs=5e-5)
    np.testing.assert_array_equal(layer.most_likely(ids).numpy(), [1, 0, 1])
    assert mi(merge(APPENDIX_XG, [[1], [0, 2]])) == pytest.approx(0.0316, abs=5e-5)
    draws = layer.sample(tf.repeat(ids, 20000), seed=[3, 4]).numpy().reshape(3, 20000, 3)
    np.testing.assert_allclose(draws.mean(axis=1), padded(APPENDIX_T), atol=0.015)
    # the drawn X_t's empirical joint with G (G drawn from P(G | x)) is nearly independent
    rng = np.random.default_rng(5)
    g = np.stack([rng.random(20000) < APPENDIX_XG[x, 1] / 10 for x in range(3)]).astype(int)
    xt = draws.argmax(axis=-1)
    assert mi(joint_counts(xt.reshape(-1), g.reshape(-1), 3)) < 5e-4


def test_appendix_fit_large_lambda_aligns_and_zero_lambda_keeps_label_information():
    """(d) lambda1 = 100 drives I(X_t; G) to ~0, far below every non-trivial merge, while X_t
    keeps label information (Theorem 4.2); lambda1 = 0 keeps I(X_t; Y) of the raw feature
    (the fit starts below it, from T[x, x] = 0.9)."""
    aligned = FieldMapping(3)
    result = fit_field_mapping(aligned, EXAMPLE_XY, APPENDIX_XG, lambda1=100.0)
    assert result["group_information"] < 2e-5 < BEST_PARTITION_MI / 100
    assert result["label_information"] > 0.03
    assert result["raw_group_information"] == pytest.approx(RAW_MI, abs=5e-5)
    t = aligned.transition().numpy()
    np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-6)
    assert result["group_information"] == pytest.approx(float(mutual_information(mapped_joint(APPENDIX_XG, t))),
                                                        abs=1e-7)

    kept = FieldMapping(3)
    start = float(mutual_information(mapped_joint(EXAMPLE_XY, kept.transition())))
    result = fit_field_mapping(kept, EXAMPLE_XY, APPENDIX_XG, lambda1=0.0)
    raw = result["raw_label_information"]
    assert raw == pytest.approx(hand_mi(EXAMPLE_XY), abs=1e-9)
    assert start < raw - 5e-3  # so the fit had to climb
    assert result["label_information"] >= raw - 2e-5
    assert np.all(np.diag(kept.transition().numpy()) > 0.99)  # back to the raw feature


def test_default_lambda_beats_the_best_merge_on_the_example():
    """The default lambda1 (tuned on this example): a probabilistic T whose I(X_t; G) is well
    below the best non-trivial merge's, keeping over half of I(X; Y)."""
    layer = FieldMapping(3)
    result = fit_field_mapping(layer, EXAMPLE_XY, APPENDIX_XG, lambda1=DEFAULT_LAMBDA1)
    assert result["group_information"] < BEST_PARTITION_MI / 5
    assert result["label_information"] > 0.5 * result["raw_label_information"]


# ---- the mapping layer ------------------------------------------------------------------------
def test_field_mapping_init_is_near_identity():
    layer = FieldMapping(5, init_probability=0.9)
    t = layer.transition().numpy()
    np.testing.assert_allclose(np.diag(t), 0.9, rtol=1e-6)
    np.testing.assert_allclose(t[~np.eye(5, dtype=bool)], 0.1 / 4, rtol=1e-5)
    assert FieldMapping(1).transition().numpy() == pytest.approx(1.0)


def test_top_k_keeps_the_most_frequent_ids_and_pools_the_rest():
    counts = np.array([[0, 1], [5, 2], [1, 1], [3, 4], [2, 0], [6, 1]], float)  # frequency 1,7,2,7,2,7
    layer = FieldMapping.from_counts(counts, top_k=3)
    assert layer.kept_ids == [1, 3, 5] and layer.num_values == 4
    np.testing.assert_array_equal(layer.rows(tf.constant([[0], [1], [2], [3], [4], [5]])).numpy().ravel(),
                                  [3, 0, 3, 1, 3, 2])
    np.testing.assert_allclose(layer.compact(counts).numpy(), [[5, 2], [3, 4], [6, 1], [3, 2]])
    assert layer.expectation(tf.constant([[4]])).shape == (1, 1, 4)
    tie = FieldMapping.from_counts(np.array([[1, 0], [1, 0], [1, 0]]), top_k=2)  # ties: the smaller ids
    assert tie.kept_ids == [0, 1]
    assert FieldMapping.from_counts(counts, top_k=6).kept_ids is None  # p <= K: no pooling
    halves = np.repeat(counts.sum(axis=1, keepdims=True) / 2, 2, axis=1)  # group counts of the same samples
    fitted = fit_field_mapping(layer, counts, halves, lambda1=0.0, steps=5)
    assert fitted["raw_label_information"] == pytest.approx(hand_mi([[5, 2], [3, 4], [6, 1], [3, 2]]), abs=1e-6)


def test_sample_is_one_hot_reproducible_and_straight_through():
    layer = FieldMapping(4, init_probability=0.6, temperature=0.5)
    ids = tf.constant([[0], [1], [2], [3], [1]])
    weights = tf.constant([1.0, -2.0, 0.5, 3.0])
    with tf.GradientTape() as tape:
        draw = layer.sample(ids, seed=[7, 11])
        value = tf.reduce_sum(draw * weights)
    x = draw.numpy()
    assert x.shape == (5, 1, 4) and np.all((x == 0) | (x == 1)) and np.all(x.sum(-1) == 1)
    np.testing.assert_array_equal(layer.sample(ids, seed=[7, 11]).numpy(), x)
    assert not all(np.array_equal(layer.sample(ids, seed=[7, s]).numpy(), x) for s in range(12, 17))
    # backward: the gradient of the relaxed draw softmax((log T[x] + g) / tau) with the same noise
    u = tf.random.stateless_uniform([5, 1, 4], [7, 11], 1e-10, 1.0)
    with tf.GradientTape() as relaxed_tape:
        log_t = tf.nn.log_softmax(tf.gather(layer.logits, ids), axis=-1)
        soft = tf.nn.softmax((log_t - tf.math.log(-tf.math.log(u))) / 0.5, axis=-1)
        relaxed = tf.reduce_sum(soft * weights)
    np.testing.assert_array_equal(x.argmax(-1), soft.numpy().argmax(-1))
    got = tf.convert_to_tensor(tape.gradient(value, layer.logits)).numpy()  # IndexedSlices: gathered rows
    want = tf.convert_to_tensor(relaxed_tape.gradient(relaxed, layer.logits)).numpy()
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_feature_mapping_call_modes_and_config_round_trip():
    counts = {"ad": np.array([[4, 1], [2, 3], [0, 5], [1, 1]], float), "site": np.array([[3, 3], [1, 4]], float)}
    groups = {"ad": np.array([[1, 4], [3, 2], [4, 1], [0, 2]], float), "site": np.array([[5, 1], [2, 3]], float)}
    mapping = ProbabilisticFeatureMapping.from_counts(counts, top_k=3, serving="expectation")
    results = fit_feature_mapping(mapping, counts, groups, lambda1=5.0, steps=50)
    assert sorted(results) == ["ad", "site"] and mapping.mappings["ad"].num_values == 4
    inputs = {"ad": tf.constant([[0], [3], [2]]), "site": tf.constant([[1], [0], [1]]),
              "other": tf.constant([[0]] * 3)}
    served = mapping(inputs)
    assert sorted(served) == ["ad", "site"]
    np.testing.assert_allclose(served["ad"].numpy(), mapping.mappings["ad"].expectation(inputs["ad"]).numpy())
    trained = mapping(inputs, training=True)["site"].numpy()
    assert np.all(trained.sum(-1) == 1) and np.all((trained == 0) | (trained == 1))
    clone = ProbabilisticFeatureMapping.from_config(json.loads(json.dumps(mapping.get_config())))
    clone({k: inputs[k] for k in ("ad", "site")})
    clone.set_weights(mapping.get_weights())
    for f in ("ad", "site"):
        np.testing.assert_array_equal(clone(inputs)[f].numpy(), served[f].numpy())
    argmax = FieldMapping.from_config({**mapping.mappings["ad"].get_config(), "serving": "most_likely"})
    argmax.set_weights(mapping.mappings["ad"].get_weights())
    np.testing.assert_array_equal(argmax(inputs["ad"]).numpy().argmax(-1), served["ad"].numpy().argmax(-1))


# ---- adaptive re-balancing (Eq. 11-12) --------------------------------------------------------
def bce(y, z):
    p = 1 / (1 + np.exp(-np.asarray(z, np.float64)))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def hand_group_losses(y, z, g, s):
    per = bce(np.asarray(y, float), z) * np.asarray(s, float)
    return np.array([per[np.asarray(g) == i].mean() if np.any(np.asarray(g) == i) else 0.0 for i in (0, 1)])


def hand_update(w, losses, eta):
    f = np.asarray(w) * np.exp(eta * np.asarray(losses))
    return f / f.sum()


BATCH1 = dict(y=[1, 0, 0, 1, 0], z=[0.3, -1.2, 2.0, -0.4, 0.1], g=[0, 0, 0, 1, 1], s=[1.0, 2.0, 0.5, 1.0, 1.5])
BATCH2 = dict(y=[0, 1, 1, 0], z=[0.8, 0.2, -2.5, -0.1], g=[1, 0, 1, 0], s=[1.0, 1.0, 1.0, 1.0])


def run_batch(layer, b, update):
    return float(layer(tf.constant(b["y"], tf.float32)[:, None], tf.constant(b["z"], tf.float32)[:, None],
                       tf.constant(b["g"])[:, None], sample_weight=tf.constant(b["s"]), update=update))


def test_rebalancing_loss_and_two_updates_match_hand_computation():
    eta = 0.7
    layer = AdaptiveRebalancing(step_size=eta)
    np.testing.assert_allclose(layer.group_weights.numpy(), [0.5, 0.5])
    l1 = hand_group_losses(**BATCH1)
    assert run_batch(layer, BATCH1, update=False) == pytest.approx(0.5 * l1[0] + 0.5 * l1[1], rel=1e-6)
    np.testing.assert_allclose(layer.group_weights.numpy(), [0.5, 0.5])  # no update unless asked
    w1 = hand_update([0.5, 0.5], l1, eta)
    assert run_batch(layer, BATCH1, update=True) == pytest.approx(w1 @ l1, rel=1e-6)  # updated, then weighted
    np.testing.assert_allclose(layer.group_weights.numpy(), w1, rtol=1e-6)
    l2 = hand_group_losses(**BATCH2)
    w2 = hand_update(w1, l2, eta)
    assert run_batch(layer, BATCH2, update=True) == pytest.approx(w2 @ l2, rel=1e-6)
    np.testing.assert_allclose(layer.group_weights.numpy(), w2, rtol=1e-6)
    assert w1[np.argmax(l1)] > 0.5 and w2[np.argmax(l2)] > w1[np.argmax(l2)]  # the higher loss gains weight


def test_sdro_streams_the_group_losses_and_ipw_keeps_equal_weights():
    """SDRO (loss_decay beta): Eq. 12 reads Lbar <- (1 - beta) Lbar + beta L (first batch: L);
    IPW (step 0): the weights stay 1/2, each group's mean loss weighs the same."""
    eta, beta = 0.7, 0.25
    layer = AdaptiveRebalancing(step_size=eta, loss_decay=beta)
    l1, l2 = hand_group_losses(**BATCH1), hand_group_losses(**BATCH2)
    w1 = hand_update([0.5, 0.5], l1, eta)  # the first batch sets the stream
    assert run_batch(layer, BATCH1, update=True) == pytest.approx(w1 @ l1, rel=1e-6)
    streamed = (1 - beta) * l1 + beta * l2
    w2 = hand_update(w1, streamed, eta)
    assert run_batch(layer, BATCH2, update=True) == pytest.approx(w2 @ l2, rel=1e-6)  # weights of the stream
    np.testing.assert_allclose(layer.streamed_losses.numpy(), streamed, rtol=1e-6)
    assert not np.allclose(w2, hand_update(w1, l2, eta))  # not Eq. 12 on the batch's losses
    ipw = AdaptiveRebalancing(step_size=0.0)
    assert run_batch(ipw, BATCH1, update=True) == pytest.approx(0.5 * l1[0] + 0.5 * l1[1], rel=1e-6)
    np.testing.assert_allclose(ipw.group_weights.numpy(), [0.5, 0.5])


def test_rebalancing_gradient_is_the_weighted_group_mean_bce():
    layer = AdaptiveRebalancing(step_size=0.5, initial_weights=[0.3, 0.7])
    z = tf.Variable(np.array(BATCH1["z"], np.float32))
    with tf.GradientTape() as tape:
        loss = layer(tf.constant(BATCH1["y"], tf.float32), z, tf.constant(BATCH1["g"]),
                     sample_weight=tf.constant(BATCH1["s"]), update=True)
    w = layer.group_weights.numpy()
    g, y, s = np.array(BATCH1["g"]), np.array(BATCH1["y"]), np.array(BATCH1["s"])
    p = 1 / (1 + np.exp(-np.array(BATCH1["z"])))
    want = w[g] / np.bincount(g)[g] * s * (p - y)  # d/dz of w_i / N_i * s * BCE: (p - y) scaled
    np.testing.assert_allclose(tape.gradient(loss, z).numpy(), want, rtol=1e-5)


def test_rebalancing_tail_gains_weight_and_weights_stay_a_distribution():
    layer = AdaptiveRebalancing(step_size=0.05)
    rng = np.random.default_rng(1)
    for _ in range(40):  # the tail (group 0) is predicted worse: its loss is higher every batch
        g = rng.integers(0, 2, 64)
        y = rng.integers(0, 2, 64)
        z = np.where(g == 1, 2.0, 0.3) * (2 * y - 1) + rng.normal(0, 0.3, 64)
        layer(tf.constant(y, tf.float32), tf.constant(z, tf.float32), tf.constant(g), update=True)
        w = layer.group_weights.numpy()
        assert np.all(w >= 0) and w.sum() == pytest.approx(1.0, abs=1e-6)
    assert w[0] > 0.6  # the tail's weight rose steadily from 0.5
    big = AdaptiveRebalancing(step_size=1e4)  # exp(eta L) would overflow without the shift
    big(tf.constant([1.0, 0.0]), tf.constant([-5.0, 0.0]), tf.constant([0, 1]), update=True)
    assert np.all(np.isfinite(big.group_weights.numpy())) and big.group_weights.numpy()[0] == pytest.approx(1.0)


def test_rebalancing_absent_group_keeps_its_weight():
    layer = AdaptiveRebalancing(step_size=0.5, initial_weights=[0.25, 0.75])
    y, z = tf.constant([1.0, 0.0, 1.0]), tf.constant([-1.0, 0.5, 0.2])
    loss = float(layer(y, z, tf.constant([1, 1, 1]), update=True))
    np.testing.assert_allclose(layer.group_weights.numpy(), [0.25, 0.75])  # Eq. 12 over the present group only
    assert loss == pytest.approx(0.75 * bce(np.array([1, 0, 1]), [-1.0, 0.5, 0.2]).mean(), rel=1e-6)


def test_rebalancing_weights_restore_from_checkpoint_and_config(tmp_path):
    layer = AdaptiveRebalancing(step_size=0.3)
    run_batch(layer, BATCH1, update=True)
    saved = layer.group_weights.numpy()
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    run_batch(layer, BATCH2, update=True)
    assert not np.allclose(layer.group_weights.numpy(), saved)
    restored = AdaptiveRebalancing.from_config(layer.get_config())
    tf.train.Checkpoint(layer=restored).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored.group_weights.numpy(), saved)
    assert restored.trainable_weights == [] and restored.step_size == 0.3
    with pytest.raises(ValueError):
        AdaptiveRebalancing(initial_weights=[0.6, 0.6])


_MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import models
    import tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    from models.frameworks.hda import AdaptiveRebalancing
    rng = np.random.default_rng(0)
    y, z = rng.integers(0, 2, 8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # replica 0 holds the tail users, replica 1 the head
    out = {}
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                           ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        with strategy.scope():
            layer = AdaptiveRebalancing(step_size=0.5)
        data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((y, z, g)).batch(8))
        for batch in data:
            strategy.run(tf.function(lambda a, b, c: layer(a, b, c, update=True)), args=batch)
        out[name] = [v.numpy().tolist() for v in layer.group_weights.values] \\
            if hasattr(layer.group_weights, "values") else [layer.group_weights.numpy().tolist()]
    print("RESULT" + json.dumps(out))
""")


def test_rebalancing_update_uses_the_global_batch_under_mirrored_strategy(tmp_path):
    """Two replicas, each seeing one group only (alone, neither would move w): both update w from
    the global batch's group losses, as one device does."""
    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    assert len(out["two"]) == 2
    for replica in out["two"]:
        np.testing.assert_allclose(replica, out["one"][0], rtol=1e-6)
    assert not np.allclose(out["one"][0], [0.5, 0.5])


# ---- group-aware beta calibration (Eq. 13-14) ---------------------------------------------------
def eq13(y, a, b, c):
    """Eq. 13 as printed: 1 / (1 + (1 - y)^b / (e^c y^a))."""
    return 1.0 / (1.0 + (1.0 - y) ** b / (np.exp(c) * y ** a))


def test_calibration_identity_init_and_eq13_by_hand():
    layer = GroupBetaCalibration()
    scores = np.array([1e-5, 0.01, 0.2, 0.5, 0.77, 0.999, 1 - 1e-5], np.float32)
    groups = np.array([0, 1, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(layer(scores, groups).numpy(), scores, rtol=2e-6)
    params = {"a": 1.3, "b": 0.6, "c": -0.4, "a_g": [-0.5], "b_g": [0.3], "c_g": [0.9]}  # a_g: group 1's offset
    for name, value in params.items():
        getattr(layer, name).assign(np.asarray(value, np.float32))
    s = scores.astype(np.float64)[1:-1]
    g = groups[1:-1]
    want = eq13(s, 1.3 - 0.5 * g, 0.6 + 0.3 * g, -0.4 + 0.9 * g)  # "a + a_g g" as Eq. 13 prints it
    np.testing.assert_allclose(layer(s.astype(np.float32), g).numpy(), want, rtol=2e-5)
    assert layer(scores[:, None], groups[:, None]).shape == (7, 1)


def synthetic_calibration(n: int, seed: int):
    """(scores, labels, groups, true p): scores distorted per group, sigmoid(k_g logit(p) + m_g) with
    k = (2, 1.5), m = (0.5, -0.6), so the exact calibration map has a + a_g = b + b_g = 1 / k_g and
    c + c_g = -m_g / k_g."""
    rng = np.random.default_rng(seed)
    logit_p = rng.normal(-0.5, 1.2, n)
    g = rng.integers(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit_p))).astype(np.float32)
    k, m = np.array([2.0, 1.5])[g], np.array([0.5, -0.6])[g]
    scores = (1 / (1 + np.exp(-(k * logit_p + m)))).astype(np.float32)
    return scores, y, g, 1 / (1 + np.exp(-logit_p))


def test_calibration_fit_recovers_the_distortion_and_improves_logloss_and_ece():
    scores, y, g, _ = synthetic_calibration(40000, seed=2)
    layer = GroupBetaCalibration()
    result = fit_calibration(layer, scores, y, g)
    assert result["converged"] and result["loss_after"] < result["loss_before"]
    want = np.array([[1 / 2.0, 1 / 2.0, -0.5 / 2.0], [1 / 1.5, 1 / 1.5, 0.6 / 1.5]])
    np.testing.assert_allclose(layer.group_parameters().numpy(), want, atol=0.1)
    test_scores, test_y, test_g, test_p = synthetic_calibration(40000, seed=3)
    calibrated = layer(test_scores, test_g).numpy()
    assert np.mean(np.abs(calibrated - test_p)) < 0.01 < np.mean(np.abs(test_scores - test_p))
    assert logloss(test_y, calibrated) < logloss(test_y, test_scores) - 0.01
    assert ece(test_y, calibrated, num_bins=20) < 0.5 * ece(test_y, test_scores, num_bins=20)
    for group in (0, 1):  # each group calibrated on its own: its mean prediction matches its CTR
        sel = test_g == group
        assert calibrated[sel].mean() == pytest.approx(test_y[sel].mean(), abs=0.01)
    clone = GroupBetaCalibration.from_config(json.loads(json.dumps(layer.get_config())))
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(test_scores, test_g).numpy(), calibrated)
