"""Rec4Ad (models/frameworks/rec4ad): SABN (Eq. 6), the reversal layer in front of H (Eq. 8-9),
the decorrelation loss (Eq. 11-12) and the objectives of Eq. 15, each against a hand computation
in numpy; the served ad path."""
from __future__ import annotations

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.factory import build_model
from models.frameworks.rec4ad.layers import SourceAwareBatchNorm, cross_correlations, decorrelation_loss
from models.options import OptionError

B, D = 48, 4


def schema(source=True) -> dict:
    side = dict(meta={"src": "int64"}, source_column="src") if source else {}
    return Schema([Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=7),
                   Feature("user", "categorical", "string", "user", {"type": "vocab"}, num_ids=5)],
                  ["click"], **side).to_dict()


def batch(seed=0, n=B):
    rng = np.random.default_rng(seed)
    x = {"item": rng.integers(0, 7, (n, 1)), "user": rng.integers(0, 5, (n, 1)),
         "_source": (np.arange(n) % 3 != 0).astype(np.int64)}  # 2/3 ad rows, 1/3 rec rows
    return x, {"click": rng.integers(0, 2, (n, 1)).astype(np.float32)}


def model(**options):
    tf.keras.utils.set_random_seed(0)
    m = build_model(schema(), ["click"], backbone="dnn", backbone_options={"dnn_units": [8]}, embedding_dim=4,
                    framework="rec4ad", framework_options={"d": D, **options})
    m.compile(tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    return m


# ---- SABN (Eq. 6) ---------------------------------------------------------------------------
def test_sabn_keeps_separate_statistics_per_source_and_serves_the_ad_branch():
    rng = np.random.default_rng(1)
    source = (np.arange(200) % 2).astype(np.int64)

    def draw():
        return np.where(source[:, None] == 1, rng.normal(5.0, 2.0, (200, 3)),
                        rng.normal(-3.0, 0.5, (200, 3))).astype(np.float32)

    sabn = SourceAwareBatchNorm(momentum=0.9, epsilon=1e-3)
    x0 = draw()
    np.testing.assert_allclose(sabn(x0, training=False).numpy(), x0 / np.sqrt(1 + 1e-3), rtol=1e-6)  # (0, 1) before training
    x1, x2 = draw(), draw()
    y = sabn(x1, source, training=True).numpy()
    sabn(x2, source, training=True)
    for s, branch in ((1, sabn.branches[0]), (0, sabn.branches[1])):
        rows = x1[source == s]
        np.testing.assert_allclose(y[source == s], (rows - rows.mean(0)) / np.sqrt(rows.var(0) + 1e-3), atol=1e-4)
        # bias-corrected moving averages: (0.9 * 0.1 m1 + 0.1 m2) / (1 - 0.9^2)
        m1, m2 = rows.mean(0), x2[source == s].mean(0)
        v1, v2 = rows.var(0), x2[source == s].var(0)
        mean, var = (t.numpy() for t in branch["moving"].read())
        np.testing.assert_allclose(mean, (0.09 * m1 + 0.1 * m2) / 0.19, rtol=1e-5)
        np.testing.assert_allclose(var, (0.09 * v1 + 0.1 * v2) / 0.19, rtol=1e-5)
    ad, rec = sabn.branches
    for v, value in ((ad["gamma"], 2.0), (ad["beta"], 0.5)):
        v.assign(np.full(3, value, np.float32))
    x = draw()
    mean, var = (t.numpy() for t in ad["moving"].read())
    np.testing.assert_allclose(sabn(x, training=False).numpy(), 2.0 * (x - mean) / np.sqrt(var + 1e-3) + 0.5,
                               rtol=1e-5)  # serving: the ad branch for every row
    mean, var = (t.numpy() for t in rec["moving"].read())
    np.testing.assert_allclose(sabn(x, source, training=False).numpy()[source == 0],
                               ((x - mean) / np.sqrt(var + 1e-3))[source == 0], rtol=1e-5)


def test_sabn_leaves_an_absent_source_untouched_and_shared_mode_pools_both():
    x = np.random.default_rng(2).normal(size=(10, 2)).astype(np.float32)
    sabn = SourceAwareBatchNorm(momentum=0.9)
    sabn(x, np.ones(10, np.int64), training=True)
    assert sabn.branches[1]["moving"].updates.numpy() == 0
    np.testing.assert_array_equal(sabn.branches[1]["moving"].read()[1].numpy(), 1.0)
    np.testing.assert_allclose(sabn.branches[0]["moving"].read()[0].numpy(), x.mean(0), rtol=1e-5)
    shared = SourceAwareBatchNorm(momentum=0.0, shared=True)
    y = shared(x, np.arange(10) % 2, training=True).numpy()
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3), atol=1e-5)
    assert len(shared.branches) == 1


# ---- decorrelation (Eq. 11-12) --------------------------------------------------------------
def _upsilon(p, q, form):
    pc, qc = p - p.mean(0), q - q.mean(0)
    ups = pc.T @ qc / np.sqrt((pc ** 2).sum(0))[:, None]
    return ups / np.sqrt((qc ** 2).sum(0))[None, :] if form == "pearson" else ups


@pytest.mark.parametrize("form", ["printed", "pearson"])
def test_decorrelation_loss_against_a_hand_computation(form):
    rng = np.random.default_rng(3)
    p = rng.normal(size=(30, 3)).astype(np.float32)
    q = (p @ rng.normal(size=(3, 2)) + 0.3 * rng.normal(size=(30, 2))).astype(np.float32)  # correlated with p
    source = (np.arange(30) % 3 == 0).astype(np.int64)
    got = decorrelation_loss(p, q, source, form).numpy()
    want = sum((_upsilon(p[source == s], q[source == s], form) ** 2).sum() for s in (0, 1))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got > 0.5


def test_decorrelation_loss_is_zero_for_uncorrelated_representations():
    """Columns with exactly zero in-batch covariance per source (orthogonal centred columns)."""
    basis = np.linalg.qr(np.c_[np.ones(8), np.random.default_rng(5).normal(size=(8, 5))])[0][:, 1:]  # centred
    p, q = basis[:, :2].astype(np.float32), basis[:, 2:5].astype(np.float32)
    both = np.r_[p, p], np.r_[q, q]
    source = np.r_[np.ones(8), np.zeros(8)].astype(np.int64)
    assert decorrelation_loss(both[0], both[1], source).numpy() == pytest.approx(0.0, abs=1e-10)
    # the printed form scales with q's spread, Pearson does not
    np.testing.assert_allclose(cross_correlations(p, 10 * (p @ [[1.0], [0.0]]), np.ones(8)).numpy()[0, 0],
                               10 * np.sqrt((p[:, 0] ** 2).sum()), rtol=1e-5)
    np.testing.assert_allclose(cross_correlations(p, 10 * (p @ [[1.0], [0.0]]), np.ones(8), "pearson").numpy()[0, 0],
                               1.0, rtol=1e-5)


# ---- the model ------------------------------------------------------------------------------
def test_objectives_against_a_hand_computation():
    m = model()
    x, y = batch()
    fwd = m(x, training=True, return_forward=True)
    obj = m.objectives(x, {"click": tf.constant(y["click"])}, fwd, None)
    aux = {k: v.numpy() for k, v in fwd.aux.items()}
    s = (x["_source"] == 1).astype(np.float64)
    h = aux["source_logit"][:, 0].astype(np.float64)
    l_a = np.mean(np.logaddexp(0, h) - s * h)  # BCE(s, sigma(h)), Eq. 8 / B
    np.testing.assert_allclose(obj["align"].value.numpy(), l_a, rtol=1e-5)
    l_d = sum((_upsilon(aux["x_inv"][s == k], aux["x_con"][s == k], "printed") ** 2).sum() for k in (0, 1))
    np.testing.assert_allclose(obj["decor"].value.numpy(), l_d / B, rtol=1e-4)
    assert (obj["align"].weight, obj["decor"].weight) == (0.005, 0.5)  # the paper's lambda1, lambda2
    p = 1 / (1 + np.exp(-fwd.logits["click"].numpy().astype(np.float64)))
    bce = -np.mean(y["click"] * np.log(p) + (1 - y["click"]) * np.log(1 - p))
    np.testing.assert_allclose(obj["ctr"].value.numpy(), bce, rtol=1e-4)


def test_source_aware_heads_and_the_served_ad_path():
    m = model()
    x, _ = batch()
    fwd = m(x, training=True, return_forward=True)
    all_ad = m(dict(x, _source=np.ones(B, np.int64)), training=True, return_forward=True)
    ad = x["_source"] == 1
    z, z_ad = fwd.logits["click"].numpy(), all_ad.logits["click"].numpy()
    # rec rows take MLP_inv^rec / MLP_pred^rec: their logits differ from the ad path's
    assert np.abs(z[~ad] - z_ad[~ad]).min() > 0
    # the served call (no source) equals the source-aware inference path of all-ad rows
    served = m({k: v for k, v in x.items() if k != "_source"}, training=False)["click"].numpy()
    x_inv, x_con = m.representations(x, training=False, source=tf.ones(B, tf.int64))
    np.testing.assert_allclose(served, tf.sigmoid(m._logit(x_inv, x_con, None, False)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(served, m(x, training=False)["click"].numpy(), rtol=1e-6)  # source ignored


def test_the_discriminator_gradient_is_reversed_by_alpha_at_x_inv():
    """Eq. 9: d(lambda1 L_A)/d x_inv through H = -alpha x the gradient at H's input."""
    m = model(alpha=0.1)
    x, y = batch()
    with tf.GradientTape(persistent=True) as tape:
        x_inv, _ = m.representations(x, training=True, source=tf.constant(x["_source"]))
        tape.watch(x_inv)
        reversed_ = m.reverse(x_inv)
        tape.watch(reversed_)
        h = m.discriminator(reversed_, training=True)[1][:, 0]
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(x["_source"], tf.float32), h))
    at_inv, at_h = tape.gradient(loss, [x_inv, reversed_])
    np.testing.assert_allclose(at_inv.numpy(), -0.1 * at_h.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(reversed_.numpy(), x_inv.numpy())


def test_training_logs_every_objective_and_the_discriminator_auc():
    m = model()
    x, y = batch(n=96)
    hist = m.fit(x, y, batch_size=48, epochs=2, verbose=0).history
    for key in ("loss", "ctr_loss", "align_loss", "decor_loss", "discriminator_auc"):
        assert len(hist[key]) == 2 and np.all(np.isfinite(hist[key])), key
    np.testing.assert_allclose(hist["loss"], np.array(hist["ctr_loss"]) + 0.005 * np.array(hist["align_loss"])
                               + 0.5 * np.array(hist["decor_loss"]), rtol=1e-4)


def test_ablation_options_and_config_round_trip():
    m = model(normalization="shared", lambda1=0.0, decorrelation="pearson")
    x, _ = batch()
    out = m(x, training=False)["click"].numpy()
    again = type(m).from_config(m.get_config())
    again(x, training=False)
    again.set_weights(m.get_weights())
    np.testing.assert_allclose(again(x, training=False)["click"].numpy(), out, rtol=1e-6)
    assert len(m.sabn.branches) == 1 and m.get_config()["decorrelation"] == "pearson"
    assert model(normalization="none").sabn is None


def test_data_without_a_source_column_is_refused():
    with pytest.raises(OptionError, match="source column"):
        build_model(schema(source=False), ["click"], backbone="dnn", framework="rec4ad")
