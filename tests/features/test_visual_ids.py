"""Visual semantic IDs (Tencent §3.2): LSH against hand computations, the numpy encoder equal to its
TF twin (the SavedModel the Beam job writes), the MNSE codes of a known ID, and on the simulator's
catalogue: similar creatives get IDs at small Hamming distance, dissimilar ones large, better with
the default PCA embedding than with random hyperplanes over the raw pixels."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from features import encoders as E
from features import visual_ids as V
from pipeline.preprocess_config import FeatureSpec
from pipeline.visual_similarity import attribute_distances


def _images(n=64, seed=0, size=8):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_bits_to_integer_known_codes():
    bits = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    assert V.ids_from_bits(bits).tolist() == [1, 2, 13, 15, 0]  # bit k is worth 2^k
    assert V.bits_of(np.array([13]), 4).tolist() == [[True, False, True, True]]
    ids = np.random.default_rng(1).integers(0, 2 ** 40, 50)
    np.testing.assert_array_equal(V.ids_from_bits(V.bits_of(ids, 40)), ids)
    assert V.hamming(np.array([0, 13, 2 ** 40 - 1]), np.array([15, 13, 0])).tolist() == [4, 0, 40]


def test_lsh_is_the_sign_of_each_hyperplane_of_the_centred_embedding():
    center, planes = np.array([1.0, -1.0]), np.array([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]])
    enc = V.VisualEncoder("pixels", (1, 1, 2), center=center, planes=planes)
    emb = np.array([[2.0, 0.0], [0.0, -2.0], [1.5, -0.5]])
    # e - c = (1, 1), (-1, -1), (.5, .5): signs of [x, y, x - y] -> bits (1, 1, 0), (0, 0, 0), (1, 1, 0)
    assert enc.ids(emb).tolist() == [3, 0, 3]
    planes = V.lsh_planes(8, 16, seed=3)
    assert planes.shape == (8, 16) and np.array_equal(planes, V.lsh_planes(8, 16, seed=3))
    assert not np.array_equal(planes, V.lsh_planes(8, 16, seed=4))


def test_pca_is_the_top_eigenvectors_of_the_covariance():
    x = V.pixels(_images(200, size=4))
    mean, v, ratio = V.fit_pca(x, 5)
    w, u = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    top = u[:, ::-1][:, :5]
    np.testing.assert_allclose(np.abs(v.T @ top), np.eye(5), atol=1e-6)  # the same directions, up to sign
    np.testing.assert_allclose(ratio, w[::-1][:5] / w.sum(), rtol=1e-6)
    np.testing.assert_allclose(mean, x.mean(0))
    assert (v[np.abs(v).argmax(0), np.arange(5)] > 0).all()  # signs fixed: refits give the same IDs


@pytest.mark.parametrize("vision_model", ["pca", "pixels"])
def test_numpy_and_tf_encoders_give_equal_ids(vision_model, tmp_path):
    import tensorflow as tf

    from features import visual_ids_tf as VT

    images = _images(300, size=8)
    enc, ids, _ = V.fit_encoder(images, vision_model, components=6, bits=20, seed=2)
    np.testing.assert_array_equal(enc.encode(images), ids)
    module = VT.VisualIdModule(enc, "visual_id")
    np.testing.assert_array_equal(module.encode(tf.constant(images))["visual_id"].numpy(), ids)
    VT.save_encoder(enc, "visual_id", str(tmp_path / "enc"))
    loaded, manifest = VT.load_encoder(str(tmp_path / "enc"))
    assert manifest["column"] == "visual_id" and manifest["bits"] == 20 and manifest["image_shape"] == [8, 8, 3]
    got = loaded.signatures[V.SIGNATURE](images=tf.constant(images))["visual_id"].numpy()
    np.testing.assert_array_equal(got, ids)
    again = V.VisualEncoder.from_bytes((tmp_path / "enc" / V.PARAMS_FILE).read_bytes())  # no TF: the Beam side
    np.testing.assert_array_equal(again.encode(images), ids)


def test_a_keras_vision_model_hashes_its_embeddings(tmp_path):
    import tensorflow as tf

    from features import visual_ids_tf as VT

    images = _images(100, size=8)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.Conv2D(4, 3, activation="relu"),
                                 tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(6)])
    path = str(tmp_path / "vision.keras")
    model.save(path)
    loaded = VT.load_vision_model(path)
    enc, ids, _ = V.fit_encoder(images, path, bits=12, seed=1, model_embed=lambda x: VT.model_embeddings(loaded, x))
    emb = model(images.astype(np.float32) / 255.0).numpy().astype(np.float64)  # by hand
    np.testing.assert_allclose(enc.center, emb.mean(0), rtol=1e-5, atol=1e-6)
    proj = (emb - enc.center) @ enc.planes
    sure = (np.abs(proj) > 1e-4).all(axis=1)  # float32 rounding decides only signs this close to a plane
    np.testing.assert_array_equal(ids[sure], V.ids_from_bits(proj > 0)[sure])
    VT.save_encoder(enc, "vid", str(tmp_path / "enc"), loaded)
    served, _ = VT.load_encoder(str(tmp_path / "enc"))
    np.testing.assert_array_equal(served.signatures[V.SIGNATURE](images=tf.constant(images))["vid"].numpy(), ids)
    # the same model as a SavedModel folder: through its serving_default signature
    tf.saved_model.save(model, str(tmp_path / "vision_sm"))
    as_saved = VT.load_vision_model(str(tmp_path / "vision_sm"))
    np.testing.assert_allclose(VT.model_embeddings(as_saved, images), emb, rtol=1e-5, atol=1e-6)
    VT.save_encoder(enc, "vid", str(tmp_path / "enc_sm"), as_saved)
    served, _ = VT.load_encoder(str(tmp_path / "enc_sm"))
    np.testing.assert_array_equal(served.signatures[V.SIGNATURE](images=tf.constant(images))["vid"].numpy(), ids)
    with pytest.raises(VT.VisionModelError, match="expected 'pca', 'pixels', a .keras"):
        VT.load_vision_model(str(tmp_path))


def test_mnse_codes_of_a_known_id(tmp_path):
    spec = FeatureSpec("visual_id", "numeric", "int64", "ad", {"type": "mnse", "bases": [2, 3, 10],
                                                               "digits": [16, 11, 5], "signed": False})
    f = E.build_feature(spec, {}, str(tmp_path))
    enc = E.NumpyEncoder(f, str(tmp_path))
    a, b = 0b0000_0000_0000_0101, 0b1000_0000_0000_0101  # 5 and 32773: Hamming distance 1 (bit 15)
    ids = enc.encode(np.array([a, b, None], dtype=object))
    binary = [2 + 2 * k + ((a >> k) & 1) for k in range(15, -1, -1)]  # Eq. 2, most significant first
    assert ids[0, :16].tolist() == binary
    assert ids[1, :16].tolist() == [binary[0] + 1] + binary[1:]  # one binary code differs
    ternary_a = [0] * 9 + [1, 2]  # 5 = 12 in base 3
    ternary_b = [0, 1, 1, 2, 2, 2, 2, 1, 2, 1, 1]  # 32773 in base 3, by hand
    assert sum(d * 3 ** k for d, k in zip(ternary_b, range(10, -1, -1))) == b
    assert ids[0, 16:27].tolist() == [34 + 3 * k + d for k, d in zip(range(10, -1, -1), ternary_a)]
    assert ids[1, 16:27].tolist() == [34 + 3 * k + d for k, d in zip(range(10, -1, -1), ternary_b)]
    decimal = lambda n: [int(c) for c in f"{n:05d}"]  # noqa: E731
    assert ids[1, 27:].tolist() == [67 + 10 * k + d for k, d in zip(range(4, -1, -1), decimal(b))]
    # the bit flip keeps 15 of 16 binary codes but only 2 of 11 ternary and none of 5 decimal codes
    same = ids[0] == ids[1]
    assert (same[:16].sum(), same[16:27].sum(), same[27:].sum()) == (15, 2, 0)
    assert ids[2].tolist() == [0] * 32  # a row without an image: every digit is padding


def _catalogue(sim_raw):
    images = np.load(f"{sim_raw}/item_images.npy")
    visual = np.stack(pd.read_parquet(f"{sim_raw}/items.parquet")["visual"].to_numpy())
    return images, visual


def test_similar_creatives_get_close_ids_better_with_pca_than_raw_pixels(sim_raw):
    images, visual = _catalogue(sim_raw)
    pairs = np.triu_indices(len(images), 1)
    d = attribute_distances(visual)[pairs]
    close, far = d <= np.quantile(d, 0.02), d >= np.quantile(d, 0.5)  # ground truth, not the encoder's space
    result = {}
    for vision_model in ("pca", "pixels"):
        runs = []
        for seed in range(16):  # hyperplane draws
            _, ids, _ = V.fit_encoder(images, vision_model, seed=seed)
            h = V.hamming(ids[:, None], ids[None, :])[pairs]
            test = stats.mannwhitneyu(h[far], h[close], alternative="greater")
            runs.append((h[close].mean(), h[far].mean(), test.statistic / (far.sum() * close.sum()), test.pvalue))
        result[vision_model] = np.array(runs)
    pca, pixels = result["pca"], result["pixels"]
    # similar items: about 3 of 16 bits differ; dissimilar ones: about half, as for independent IDs
    assert pca[:, 0].mean() < 3.5 and pca[:, 1].mean() > 8.0
    assert (pca[:, 3] < 1e-30).all() and (pca[:, 2] > 0.9).all()  # AUC of the Hamming distance: far vs close
    # the default encoder separates them better than random hyperplanes over the pixels (16 draws each)
    assert pca[:, 0].mean() < pixels[:, 0].mean() - 0.4
    assert stats.ttest_ind(pca[:, 0], pixels[:, 0]).pvalue < 1e-3
    assert pca[:, 2].mean() > pixels[:, 2].mean() + 0.01 and stats.ttest_ind(pca[:, 2], pixels[:, 2]).pvalue < 1e-2
