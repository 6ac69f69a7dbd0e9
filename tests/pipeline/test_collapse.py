"""Information abundance (Tencent KDD'24 Def. 7.1) and the ``collapse`` run analysis
(pipeline/collapse.py): IA on constructed matrices, every table set of every FeatureEmbedding,
the FM-family interactions' per-part IA without / with the projection M against numpy, and the
files a run writes."""
import json

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from features.schema import Feature, Schema
from models.embedding import FeatureEmbedding
from models.factory import build_model
from pipeline import collapse as C
from pipeline.analyses import ANALYSES


def test_information_abundance_of_constructed_matrices():
    rng = np.random.default_rng(0)
    k = 6
    rank_one = np.outer(rng.normal(size=40), rng.normal(size=k))
    assert C.information_abundance(rank_one) == pytest.approx(1.0)
    orthogonal, _ = np.linalg.qr(rng.normal(size=(k, k)))
    assert C.information_abundance(orthogonal) == pytest.approx(k)
    assert C.information_abundance(3.0 * orthogonal) == pytest.approx(k)  # scale-free
    # singular values 4, 2, 1 (rows of an orthogonal basis scaled): IA = 7 / 4
    assert C.information_abundance(np.diag([1.0, 4.0, 2.0]) @ orthogonal[:3]) == pytest.approx(7 / 4)
    assert C.normalised_spectrum(np.diag([1.0, 4.0, 2.0])) == pytest.approx([1.0, 0.5, 0.25])
    assert C.information_abundance(np.zeros((5, 3))) == 0.0
    e = rng.normal(size=(30, k))
    s = np.linalg.svd(e, compute_uv=False)
    assert C.information_abundance(e) == pytest.approx(np.abs(s).sum() / np.abs(s).max())


def schema() -> dict:
    feats = [
        Feature("user", "categorical", "string", "user", {"type": "vocab"}, num_ids=30),
        Feature("ctx", "categorical", "string", "context", {"type": "vocab"}, num_ids=9),
        Feature("item", "categorical", "string", "item", {"type": "vocab"}, num_ids=25),
        Feature("score", "numeric", "float32", "item", {"type": "identity"}, width=1, encoded_dtype="float32"),
    ]
    return Schema(features=feats, labels=["click"]).to_dict()


def data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = {"user": rng.integers(2, 30, (n, 1)), "ctx": rng.integers(2, 9, (n, 1)), "item": rng.integers(2, 25, (n, 1)),
         "score": rng.random((n, 1)).astype(np.float32)}
    y = ((x["user"] * x["item"]) % 4 < 2).astype(np.float32)
    return x, {"click": y}


def test_every_table_set_of_every_feature_embedding_is_found():
    class TwoEmbeddings(tf.keras.Model):
        """Like a multi-embedding model: two FeatureEmbedding layers, one with two table sets."""

        def __init__(self):
            super().__init__()
            self.first = FeatureEmbedding(schema(), embedding_dim=4, num_tables=2, name="shared", linear=False)
            self.second = FeatureEmbedding(schema(), embedding_dim=8, dims={"user": 3}, name="wide", linear=False)

        def call(self, x):
            return tf.concat([tf.reshape(self.first(x).fields, [-1, 16]), tf.reshape(self.second(x).fields, [-1, 32])], 1)

    model = TwoEmbeddings()
    x, _ = data(8)
    model(x)
    sets = C.table_sets(model)
    assert sorted(sets) == ["shared/table0", "shared/table1", "wide"]
    for label, matrices in sets.items():
        assert sorted(matrices) == ["ctx", "item", "user"]  # the identity feature has no table
    np.testing.assert_array_equal(sets["shared/table1"]["item"], model.first.tables[1]["item"]["embedding"].numpy())
    w = model.second.tables[0]["user"]
    np.testing.assert_allclose(sets["wide"]["user"], w["embedding"].numpy() @ w["to_dim"].kernel.numpy(),
                               rtol=1e-5, atol=1e-8)  # a matmul's summation order may differ (entries ~1e-2)
    report = C.collapse_report(model)
    assert report["tables"]["wide"]["dim"] == 8 and report["interactions"] == {}
    got = report["tables"]["shared/table0"]
    assert got["features"]["user"]["ia"] == pytest.approx(C.information_abundance(sets["shared/table0"]["user"]))
    assert got["mean_ia"] == pytest.approx(np.mean([got["features"][f]["ia"] for f in ("user", "ctx", "item")]))


@pytest.mark.parametrize("backbone, options", [("fm", {}), ("gwpfm", {"groups": [["user"], ["ctx"]]})])
def test_projection_ia_without_and_with_m_matches_numpy(backbone, options):
    tf.keras.utils.set_random_seed(1)
    model = build_model(schema(), ["click"], backbone=backbone, embedding_dim=4,
                        backbone_options={"projection": True, **options})
    x, _ = data(8)
    model(x)
    interaction = model.backbone.interaction
    m = np.random.default_rng(2).normal(size=interaction.projection_matrices.shape).astype(np.float32)
    interaction.projection_matrices.assign(m)
    report = C.collapse_report(model)["interactions"][interaction.name]
    assert report["projection"] and report["parts"] == (2 if backbone == "gwpfm" else 1) and report["dim"] == 4
    # fields: user, ctx, item, score; pairs (row-major): (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert sorted(report["fields"]) == ["ctx", "item", "user"]  # score has no table, and no later field
    tables = {f: model.embedding.tables[0][f]["embedding"].numpy() for f in ("user", "ctx", "item")}
    parts = interaction.parts
    for name, pairs in [("user", [(0, 1), (1, 2), (2, 3)]), ("ctx", [(3, 2), (4, 3)]),  # (pair, j)
                        ("item", [(5, 3)])]:
        slices = [tables[name][:, 4 * parts[j]:4 * parts[j] + 4] for _, j in pairs]
        want_plain = np.mean([C.information_abundance(e) for e in slices])
        want_projected = np.mean([C.information_abundance(e @ m[p]) for e, (p, _) in zip(slices, pairs)])
        got = report["fields"][name]
        assert got["pairs"] == len(pairs)
        assert got["ia"] == pytest.approx(want_plain, rel=1e-6)
        assert got["ia_projected"] == pytest.approx(want_projected, rel=1e-6)
        assert got["ia_projected"] != pytest.approx(got["ia"], rel=1e-3)  # M changes it
    plain = build_model(schema(), ["click"], backbone=backbone, embedding_dim=4, backbone_options=options)
    plain(x)
    report = C.collapse_report(plain)["interactions"][plain.backbone.interaction.name]
    assert not report["projection"] and "mean_ia_projected" not in report  # no M: the slices' IA only
    user = plain.embedding.tables[0]["user"]["embedding"].numpy()
    want = np.mean([C.information_abundance(user[:, 4 * p:4 * p + 4]) for p in plain.backbone.interaction.parts[1:]])
    assert report["fields"]["user"] == {"pairs": 3, "ia": pytest.approx(want, rel=1e-6)}


def test_an_experts_models_interactions_are_read_from_their_own_tables():
    """ME (Tencent §4.2) with a GwPFM expert with projection on table 1 and a FlatDNN on table 0:
    the interaction section names GwPFM's interaction, measured on table 1's embeddings."""
    tf.keras.utils.set_random_seed(3)
    model = build_model(schema(), ["click"], backbone="dnn", backbone_options={"dnn_units": [8]}, embedding_dim=4,
                        framework="me", framework_options={
                            "tables": [{"owner": "shared"}, {"owner": "shared"}],
                            "experts": [{"table": 0}, {"table": 1, "backbone": "gwpfm",
                                                       "backbone_options": {"projection": True,
                                                                            "groups": [["user"], ["ctx"]]}}],
                            "expert_dim": 4})
    x, _ = data(8)
    model(x)
    interaction = model.experts[1].interaction
    report = C.collapse_report(model)["interactions"]
    assert list(report) == [interaction.name] and "mean_ia_projected" in report[interaction.name]
    user = model.embeddings[1].tables[0]["user"]["embedding"].numpy()  # table 1: GwPFM's P * k = 8 wide
    want = np.mean([C.information_abundance(user[:, 4 * p:4 * p + 4]) for p in interaction.parts[1:]])
    assert report[interaction.name]["fields"]["user"]["ia"] == pytest.approx(want, rel=1e-6)


def test_the_analysis_writes_ia_per_table_and_feature_after_training(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema(), ["click"], backbone="fm", embedding_dim=4, backbone_options={"projection": True},
                        embedding_options={"num_tables": 2})
    model.compile(tf.keras.optimizers.Adam(0.05), loss={"click": "binary_crossentropy"})
    callbacks = ANALYSES["collapse"](None, str(tmp_path), ["click"])
    x, y = data()
    model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=callbacks)
    result = json.loads((tmp_path / "analysis" / "collapse.json").read_text())
    assert sorted(result["tables"]) == ["embedding/table0", "embedding/table1"]
    for label, table in result["tables"].items():
        assert table["dim"] == 4 and sorted(table["features"]) == ["ctx", "item", "user"]
        user = table["features"]["user"]
        matrix = model.embedding.tables[int(label[-1])]["user"]["embedding"].numpy()  # the trained weights
        assert user["rows"] == 30 and user["ia"] == pytest.approx(C.information_abundance(matrix))
        assert user["spectrum"] == pytest.approx(C.normalised_spectrum(matrix)) and len(user["spectrum"]) == 4
        assert 1.0 <= table["mean_ia"] <= 4.0
    assert sorted(result["interactions"]["fm"]["fields"]) == ["ctx", "item", "user"]
    assert result["interactions"]["fm"]["mean_ia_projected"] > 0
    assert (tmp_path / "analysis" / "collapse.png").stat().st_size > 0
    from pipeline.evaluate import _analyses_section

    assert "![collapse](analysis/collapse.png)" in _analyses_section(str(tmp_path))  # the run report shows it
