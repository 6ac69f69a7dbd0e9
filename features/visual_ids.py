"""Visual semantic IDs (Tencent ads, §3.2 "Deployment Details"): a creative's image -> a vision
embedding -> locality-sensitive hashing (LSH) -> an integer ID, used as a numeric feature
through MNSE (Eq. 2, ``features/mnse.py``) in place of (or beside) the random ad ID.

For an image x (uint8 [H, W, 3]) with pixels p = x / 255 flattened (float64, D = H * W * 3):

* embedding e(x), by ``vision_model``:
  - ``pca`` (the default): e = V_C^T (p - mu), the top C (``components``, default 8)
    principal directions V_C of the catalogue's own pixels, fitted in the preprocess job
    (:func:`fit_pca`, on at most ``fit_sample`` images);
  - ``pixels``: e = p, the raw pixels (the baseline a fixed random projection hashes);
  - a Keras model or SavedModel path: e = model(x / 255) flattened (run by
    ``features/visual_ids_tf.py``; TensorFlow is not imported here);
* hash (random hyperplanes, Charikar's SimHash, the LSH family for angles): bit k =
  1[(e - c) . w_k > 0], k = 0..K-1, with w_k ~ N(0, I) drawn from ``seed`` and c the
  catalogue's mean embedding, so P(bit k differs) = angle(e_a - c, e_b - c) / pi: the Hamming
  distance of two IDs estimates the angle between their embeddings;
* ID = sum_k bit_k 2^k (bit k is worth 2^k; K = ``bits``, default 16).

Why PCA by default: it needs no download, and the simulator's creatives are smooth functions
of 6 visual attributes plus pixel noise (``pipeline/simulator/images.py``), so the top
principal directions carry the attributes while the many low-variance directions are noise
and fine texture. Random hyperplanes over the raw pixels weigh those directions as much as the
semantic ones. Measured on the default world (``bench/visual_ids.py``,
``docs/results/visual_ids.md``): the Hamming distance of PCA IDs tracks the ground-truth
attribute distance better than that of raw-pixel IDs, and the gap widens with pixel noise; 8
directions do best (16 or 32 let more noise directions in, 4 merge attributes).

Numeral systems: an ID is a bit string; binary MNSE (``bases: [2]``, ``digits: [K]``) gives each
bit its own pair of embedding rows, so IDs at small Hamming distance share most digit
embeddings. Ternary and decimal digits of the same integer do not follow the bits (flipping
bit 15 moves the ID by 32768 and changes most base-3 and base-10 digits): they lose Hamming
locality, which ``docs/results/visual_ids.md`` measures.

:class:`VisualEncoder` is the fitted encoder's numpy side (the Beam job: TensorFlow stays out
of its workers); ``features/visual_ids_tf.py`` is its TF twin (the SavedModel the job writes
and the export serves), held equal to it by ``tests/features/test_visual_ids.py``.
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Callable, Optional, Tuple

import numpy as np

VISION_MODELS = ("pca", "pixels")  # built in; any other value is a Keras model or SavedModel path
DEFAULT_BITS = 16
DEFAULT_COMPONENTS = 8
MAX_BITS = 53  # an ID stays exact in float64, and MNSE writes at most 53 binary digits (features/mnse.py)
ENCODER_DIR = "visual_encoder"  # the encoder's SavedModel in a preprocess output (and its parameters)
ID_TABLE = "visual_ids.parquet"  # key -> ID of every catalogue image, in a preprocess output
SIGNATURE = "visual_semantic_id"  # the SavedModel signature: images -> {column: ID}
PARAMS_FILE = "assets.extra/encoder.npz"  # in ENCODER_DIR: VisualEncoder.to_bytes
MANIFEST_FILE = "assets.extra/encoder.json"  # in ENCODER_DIR: column, signature, bits, image shape, settings


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W, 3] -> float64 pixels in [0, 1], [N, H * W * 3]."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def fit_pca(x: np.ndarray, components: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean mu [D], directions V_C [D, C], explained variance ratio [C]) of the rows of ``x``
    [N, D]: the top right singular vectors of x - mu, each signed so that its largest entry
    is positive (an SVD's signs are arbitrary; the IDs must not be)."""
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    c = min(components, len(s))
    v = vt[:c].T
    v *= np.where(v[np.abs(v).argmax(axis=0), np.arange(c)] < 0, -1.0, 1.0)
    var = s ** 2
    return mean, np.ascontiguousarray(v), var[:c] / max(var.sum(), np.finfo(float).tiny)


def lsh_planes(dim: int, bits: int, seed: int) -> np.ndarray:
    """K random hyperplane normals w_k ~ N(0, I) as columns, [dim, K], drawn from ``seed``."""
    return np.random.default_rng(seed).standard_normal((dim, bits))


def ids_from_bits(bits: np.ndarray) -> np.ndarray:
    """bool [N, K] -> int64 [N], bit k worth 2^k."""
    return bits.astype(np.int64) @ (np.int64(1) << np.arange(bits.shape[1], dtype=np.int64))


def bits_of(ids: np.ndarray, bits: int) -> np.ndarray:
    """int64 IDs [N] -> bool [N, K], the inverse of :func:`ids_from_bits`."""
    return ((np.asarray(ids, np.int64)[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(bool)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance of IDs, elementwise."""
    x = np.bitwise_xor(np.asarray(a, np.int64), np.asarray(b, np.int64))
    octets = np.ascontiguousarray(x, dtype=">i8").view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(octets, axis=-1).sum(axis=-1).astype(np.int64)


@dataclasses.dataclass
class VisualEncoder:
    """A fitted encoder, numpy side: images -> embeddings (``pca`` / ``pixels``) -> IDs.

    ``pixel_mean`` and ``components`` are the PCA's (empty otherwise), ``center`` c the
    catalogue's mean embedding, ``planes`` the hyperplane normals [E, K]."""

    vision_model: str
    image_shape: Tuple[int, int, int]
    center: np.ndarray
    planes: np.ndarray
    pixel_mean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    components: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    seed: int = 0

    @property
    def bits(self) -> int:
        return int(self.planes.shape[1])

    @property
    def uses_model(self) -> bool:
        """Whether the embedding comes from a vision model (TF), not from numpy."""
        return self.vision_model not in VISION_MODELS

    def embed(self, images: np.ndarray) -> np.ndarray:
        """The embeddings [N, E] of uint8 images (``pca`` / ``pixels``; a model's come from TF)."""
        if self.uses_model:
            raise ValueError(f"the embeddings of vision model '{self.vision_model}' are computed by TensorFlow "
                             "(features.visual_ids_tf.model_embeddings)")
        x = pixels(images)
        return x if self.vision_model == "pixels" else (x - self.pixel_mean) @ self.components

    def ids(self, embeddings: np.ndarray) -> np.ndarray:
        """LSH IDs int64 [N] of embeddings [N, E]."""
        return ids_from_bits((np.asarray(embeddings, np.float64) - self.center) @ self.planes > 0)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, 3] -> IDs int64 [N] (``pca`` / ``pixels``)."""
        return self.ids(self.embed(images))

    # ---- (de)serialisation: an .npz of the arrays and the settings --------------------
    def to_bytes(self) -> bytes:
        meta = json.dumps({"vision_model": self.vision_model, "image_shape": list(self.image_shape),
                           "seed": self.seed})
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(meta), center=self.center, planes=self.planes, pixel_mean=self.pixel_mean,
                 components=self.components)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "VisualEncoder":
        with np.load(io.BytesIO(data)) as z:
            meta = json.loads(str(z["meta"]))
            return cls(vision_model=meta["vision_model"], image_shape=tuple(meta["image_shape"]),
                       seed=meta["seed"], center=z["center"], planes=z["planes"], pixel_mean=z["pixel_mean"],
                       components=z["components"])


def fit_encoder(images: np.ndarray, vision_model: str = "pca", components: int = DEFAULT_COMPONENTS,
                bits: int = DEFAULT_BITS, seed: int = 0, fit_sample: int = 10000,
                model_embed: Optional[Callable[[np.ndarray], np.ndarray]] = None
                ) -> Tuple[VisualEncoder, np.ndarray, dict]:
    """Fit an encoder on a catalogue's uint8 images [N, H, W, 3]: (encoder, the catalogue's IDs,
    fit statistics). The PCA is fitted on at most ``fit_sample`` images (a seeded sample);
    ``model_embed`` gives a vision model's embeddings (required unless ``pca`` / ``pixels``)."""
    images = np.asarray(images)
    info: dict = {}
    if vision_model == "pca":
        x = pixels(images)
        fit = x if len(x) <= fit_sample else x[np.sort(np.random.default_rng(seed).choice(len(x), fit_sample,
                                                                                         replace=False))]
        mean, v, ratio = fit_pca(fit, components)
        emb = (x - mean) @ v
        extra = {"pixel_mean": mean, "components": v}
        info = {"fitted_on": len(fit), "explained_variance": [float(r) for r in ratio]}
    elif vision_model == "pixels":
        emb, extra = pixels(images), {}
    else:
        if model_embed is None:
            raise ValueError(f"vision model '{vision_model}': give model_embed, the function computing its embeddings")
        emb, extra = np.asarray(model_embed(images), np.float64), {}
    encoder = VisualEncoder(vision_model=vision_model, image_shape=tuple(int(d) for d in images.shape[1:]),
                            center=emb.mean(axis=0), planes=lsh_planes(emb.shape[1], bits, seed), seed=seed,
                            **extra)
    return encoder, encoder.ids(emb), info
