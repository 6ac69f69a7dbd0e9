"""TIM (Tencent Sec. 3.1, Eq. 1): u_TIM against a numpy computation of Eq. 1 on a tiny batch
(padding weighs 0, an empty sequence gives 0), each switch changing exactly its part, planted
gaps falling in their log2 buckets, schema checks naming the option, the model's embedding
built with the sequence rows TIM reads, TIM trained a few steps on the simulator's data with
every join, kept by a config round trip, and TIM learning a planted time cutoff."""
import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema, SchemaError
from models.embedding import FeatureEmbedding
from models.factory import build_model
from models.tim import TIM, interval_buckets
from pipeline.data import make_dataset

L, N_CATS, D = 4, 6, 4
SWITCHES = ("position", "time_interval", "target_attention", "target_representation")


def schema(gap_len: int = L) -> dict:
    feats = [Feature("category", "categorical", "string", "item", {"type": "vocab"}, num_ids=N_CATS + 2),
             Feature("hist_cat", "sequence", "string", "sequence",
                     {"type": "sequence_vocab", "max_len": L, "share_vocab_with": "category"},
                     num_ids=N_CATS + 2, width=L),
             Feature("hist_gap", "sequence", "int64", "sequence", {"type": "sequence_float", "max_len": gap_len},
                     width=gap_len, encoded_dtype="float32")]
    return Schema(features=feats, labels=["click"]).to_dict()


# right-padded, most recent last: full, partial, one behaviour, none; a padded gap is 0
X = {"category": np.array([[2], [3], [4], [5]], np.int64),
     "hist_cat": np.array([[2, 3, 4, 5], [6, 3, 0, 0], [7, 0, 0, 0], [0, 0, 0, 0]], np.int64),
     "hist_gap": np.array([[86400, 3600, 60, 1], [100000, 7, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]], np.float32)}


def log2_bucket(gap: int, num_buckets: int) -> int:
    """floor(log2(gap + 1)) by integer arithmetic, capped."""
    return min(int(gap + 1).bit_length() - 1, num_buckets - 1)


def tim_numpy(x, table, pos_table, int_table, num_buckets, position=True, time_interval=True,
              target_attention=True, target_representation=True):
    """Eq. 1 in numpy, one row at a time."""
    out = np.zeros((len(x["category"]), table.shape[1]))
    for r in range(len(out)):
        ids = x["hist_cat"][r]
        valid = np.flatnonzero(ids != 0)
        if not len(valid):
            continue
        e = table[ids[valid]].astype(np.float64)
        v = table[x["category"][r, 0]].astype(np.float64)
        if position:
            e = e + pos_table[len(valid) - valid]  # the most recent (last) is position 1
            v = v + pos_table[0]
        if time_interval:
            e = e + int_table[[log2_bucket(int(g), num_buckets) for g in x["hist_gap"][r, valid]]]
            v = v + int_table[0]
        if target_attention:
            s = e @ v / np.sqrt(table.shape[1])
            alpha = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        else:
            alpha = np.full(len(valid), 1.0 / len(valid))
        out[r] = alpha @ (e * v if target_representation else e)
    return out


def built(seed=0, **options):
    """(embedding with sequence rows, TIM) with random tables large enough for every part to matter."""
    tf.keras.utils.set_random_seed(seed)
    emb_layer = FeatureEmbedding(schema(), embedding_dim=D, sequences=True)
    tim = TIM(schema(), D, sequence="hist_cat", **options)
    emb = emb_layer(X)
    rng = np.random.default_rng(seed)
    for w in [emb_layer.tables[0]["hist_cat"]["embedding"], tim.position_table, tim.interval_table]:
        if w is not None:
            w.assign(rng.normal(0, 0.7, w.shape).astype(np.float32))
    return emb_layer, tim, emb_layer(X)


def reference(emb_layer, tim, **switches):
    table = emb_layer.tables[0]["hist_cat"]["embedding"].numpy()
    pos = None if tim.position_table is None else tim.position_table.numpy()
    intv = None if tim.interval_table is None else tim.interval_table.numpy()
    return tim_numpy(X, table, pos, intv, tim.options["num_buckets"], **switches)


@pytest.mark.parametrize("off", [None, *SWITCHES])
def test_tim_is_eq1_and_each_switch_changes_its_part(off):
    switches = {s: s != off for s in SWITCHES}
    emb_layer, tim, emb = built(**switches)
    got = tim(X, emb).fields.numpy()
    assert got.shape == (4, 1, D)
    want = reference(emb_layer, tim, **switches)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[3], 0.0)  # no behaviour: u = 0
    if off is not None:  # the switch changed the output: its part was in use
        _, full, emb_full = built()
        assert np.max(np.abs(full(X, emb_full).fields.numpy() - got)) > 1e-3
    assert (tim.position_table is None) == (off == "position")
    assert (tim.interval_table is None) == (off == "time_interval")


def test_padding_weighs_nothing():
    emb_layer, tim, emb = built()
    want = tim(X, emb).fields.numpy()
    other = {**X, "hist_cat": X["hist_cat"].copy(), "hist_gap": X["hist_gap"].copy()}
    pad = X["hist_cat"] == 0
    other["hist_gap"][pad] = 5000.0  # gaps behind padding are never read
    emb_layer.tables[0]["hist_cat"]["embedding"][0].assign(tf.fill([D], 9.0))  # nor the padding row
    np.testing.assert_allclose(tim(other, emb_layer(other)).fields.numpy(), want, rtol=1e-6, atol=1e-7)
    alpha = tim.attention(tim.encode(X, emb)).numpy()
    np.testing.assert_array_equal(alpha[pad], 0.0)
    np.testing.assert_allclose(alpha.sum(axis=1), [1, 1, 1, 0], rtol=1e-6)


def test_planted_gaps_fall_in_their_log2_buckets():
    gaps = np.array([0, 1, 2, 3, 4, 7, 8, 59, 60, 3599, 3600, 86400, 10 ** 9], np.float32)
    want = [0, 1, 1, 2, 2, 3, 3, 5, 5, 11, 11, 16, 29]
    assert [log2_bucket(int(g), 32) for g in gaps] == want  # the hand rule itself
    np.testing.assert_array_equal(interval_buckets(tf.constant(gaps), 32).numpy(), want)
    np.testing.assert_array_equal(interval_buckets(tf.constant(gaps), 8).numpy(), np.minimum(want, 7))  # capped
    boundaries = 2.0 ** np.arange(1, 20) - 1  # 2^b - 1 starts bucket b exactly (a float log2 could fall short)
    np.testing.assert_array_equal(interval_buckets(tf.constant(boundaries), 32).numpy(), np.arange(1, 20))
    np.testing.assert_array_equal(interval_buckets(tf.constant(boundaries - 1), 32).numpy(), np.arange(0, 19))
    _, tim, emb = built()
    enc = tim.encode(X, emb)
    np.testing.assert_array_equal(enc.buckets.numpy(), [[16, 11, 5, 1], [16, 3, 0, 0], [1, 0, 0, 0], [0] * 4])
    np.testing.assert_array_equal(enc.positions.numpy(), [[4, 3, 2, 1], [2, 1, 0, 0], [1, 0, 0, 0], [0] * 4])


def test_schema_checks_name_the_option():
    with pytest.raises(SchemaError, match=r"field_modules\[0\]\.sequence = 'category'"):
        build_model(schema(), ["click"], backbone="dnn", field_modules=[{"name": "tim", "sequence": "category"}])
    with pytest.raises(SchemaError, match=r"field_modules\[0\]\.gaps = 'hist_gap': max_len 3 differs"):
        build_model(schema(gap_len=3), ["click"], backbone="dnn", field_modules=[{"name": "tim",
                                                                                  "sequence": "hist_cat"}])
    with pytest.raises(SchemaError, match=r"field_modules\[0\]\.gaps = 'nope'"):
        build_model(schema(), ["click"], backbone="dnn",
                    field_modules=[{"name": "tim", "sequence": "hist_cat", "gaps": "nope"}])
    # without time intervals no gaps are read
    build_model(schema(), ["click"], backbone="dnn",
                field_modules=[{"name": "tim", "sequence": "hist_cat", "gaps": "nope", "time_interval": False}])


@pytest.mark.parametrize("join, backbone", [("representation", "dcnv2"), ("fields", "dcnv2"), ("fields", "fm")])
def test_the_model_builds_the_rows_tim_reads(join, backbone):
    model = build_model(schema(), ["click"], backbone=backbone, embedding_dim=D,
                        field_modules=[{"name": "tim", "sequence": "hist_cat", "join": join}])
    assert model.embedding.sequences and model.embedding.sequence_pairs == [("hist_cat", "category")]
    assert model.backbone.num_fields == 2 + (join == "fields")  # category, pooled hist_cat (+ u_TIM)
    assert model(X)["click"].shape == (4, 1)


@pytest.mark.parametrize("join", ["representation", "fields"])
def test_tim_trains_on_the_simulator_and_survives_a_config_round_trip(sim_data, join):
    tf.keras.utils.set_random_seed(3)
    schema_ = Schema.load(sim_data)
    model = build_model(schema_.to_dict(), ["click"], backbone="dcnv2",
                        backbone_options={"dnn_units": [16], "num_cross_layers": 1}, embedding_dim=8,
                        field_modules=[{"name": "tim", "join": join}])  # hist_category + hist_gap, the defaults
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
    ds = make_dataset(sim_data, "train", batch_size=256, labels=["click"], sample_weight=None)
    x = next(iter(ds))[0]
    model(x, training=False)
    tim = model.added_fields.modules[0]
    before = [w.numpy().copy() for w in tim.weights]
    history = model.fit(ds.take(4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(np.max(np.abs(w.numpy() - b)) > 0 for w, b in zip(tim.weights, before))  # both tables learn
    assert np.mean(tim.encode(x, model.embedding(x)).mask.numpy().any(axis=1)) > 0.5  # histories were read
    want = model(x, training=False)["click"].numpy()
    clone = type(model).from_config(model.get_config())
    clone(x, training=False)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x, training=False)["click"].numpy(), want, rtol=1e-5, atol=1e-7)
    assert clone.get_config()["field_modules"] == [{"name": "tim", "join": join}]


def test_tim_learns_a_planted_time_cutoff():
    """Clicks follow a behaviour of the target's category less than 600 s ago (p 0.8, else 0.1):
    trained, the time-interval embeddings raise the attention logit of every bucket below the
    cutoff (b <= 8: gaps < 511 s) above every bucket beyond it (b >= 10: gaps >= 1023 s), as
    pipeline/tim_temporal.py measures it; bucket 9 straddles 600 s."""
    from pipeline.tim_temporal import temporal_profile

    length, cats, n = 10, 10, 20000
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, length + 1, n)
    pad = np.arange(length)[None] >= lengths[:, None]
    hist = np.where(pad, 0, rng.integers(2, cats + 2, (n, length)))
    gaps = np.where(pad, 0, -np.sort(-np.floor(2.0 ** rng.uniform(0, 20, (n, length))), axis=1))  # most recent last
    target = rng.integers(2, cats + 2, (n, 1))
    hit = ((hist == target) & (gaps < 600) & ~pad).any(axis=1)
    y = (rng.random(n) < np.where(hit, 0.8, 0.1)).astype(np.float32)[:, None]
    feats = [Feature("category", "categorical", "string", "item", {"type": "vocab"}, num_ids=cats + 2),
             Feature("hist_cat", "sequence", "string", "sequence",
                     {"type": "sequence_vocab", "max_len": length, "share_vocab_with": "category"},
                     num_ids=cats + 2, width=length),
             Feature("hist_gap", "sequence", "int64", "sequence", {"type": "sequence_float", "max_len": length},
                     width=length, encoded_dtype="float32")]
    x = {"category": target, "hist_cat": hist, "hist_gap": gaps.astype(np.float32)}
    tf.keras.utils.set_random_seed(0)
    model = build_model(Schema(feats, ["click"]).to_dict(), ["click"], backbone="dnn",
                        backbone_options={"dnn_units": [16]}, embedding_dim=8,
                        field_modules=[{"name": "tim", "sequence": "hist_cat", "num_buckets": 21}])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.003), loss={"click": "binary_crossentropy"},
                  metrics=[tf.keras.metrics.AUC(name="auc")])
    history = model.fit(x, {"click": y}, batch_size=512, epochs=6, verbose=0)
    assert history.history["auc"][-1] > 0.65  # the oracle's AUC is ~0.74
    sample = {k: v[:4000] for k, v in x.items()}
    prof = temporal_profile(model.added_fields.modules[0], sample, model.embedding(sample))["time_interval"]
    c = {e["index"]: e["attention_logit"] for e in prof["entries"]}
    assert min(c[b] for b in range(1, 9)) > max(c[b] for b in range(10, 20)), c
