"""The TF twin of ``features/visual_ids.py``: the visual-semantic-ID encoder as a SavedModel.

:class:`VisualIdModule` computes, in TF ops, what :class:`features.visual_ids.VisualEncoder`
computes in numpy (the embedding, the hyperplane signs, bit k worth 2^k), in float64 like it,
so the IDs are equal (``tests/features/test_visual_ids.py``). The preprocess job saves it into
its output (:func:`save_encoder`, ``<output>/visual_encoder/``) with one signature,
``visual_semantic_id``: ``images`` uint8 [N, H, W, 3] -> ``{<column>: int64 [N]}``; the export
adds that signature to the served model (``serving/export.py``), so a new ad's creative gets its
ID from the same encoder without retraining. The encoder's parameters and settings are also
written beside it (``assets.extra/encoder.npz`` and ``encoder.json``): the job reads them
without TensorFlow when it encodes new data with an earlier schema.

A vision model (``vision_model``: a path) is loaded by :func:`load_vision_model`: a ``.keras`` /
``.h5`` file with ``tf.keras.models.load_model``, a SavedModel folder through its
``serving_default`` signature (one input, one output). It receives float32 images in [0, 1]
[N, H, W, 3] and returns embeddings [N, ...] (flattened here).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from features.errors import UserError
from features.visual_ids import ENCODER_DIR, MANIFEST_FILE, PARAMS_FILE, SIGNATURE, VisualEncoder

EMBED_BATCH = 256  # images per vision-model call


class VisionModelError(UserError):
    """A ``vision_model`` path that is not a Keras model file nor a usable SavedModel."""


def load_vision_model(path: str):
    """A Keras model (``.keras`` / ``.h5``) or a SavedModel folder's ``serving_default`` signature
    (one input, one output) as a callable on float32 images [N, H, W, 3] in [0, 1]."""
    if path.lower().endswith((".keras", ".h5")):
        if not tf.io.gfile.exists(path):
            raise VisionModelError(f"vision_model '{path}' does not exist")
        return tf.keras.models.load_model(path, compile=False)
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise VisionModelError(f"vision_model '{path}': expected 'pca', 'pixels', a .keras / .h5 file or a "
                               "SavedModel folder (with saved_model.pb)")
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures.get("serving_default")
    inputs = {} if fn is None else fn.structured_input_signature[1]
    if fn is None or len(inputs) != 1 or len(fn.structured_outputs) != 1:
        has = "no such signature" if fn is None else f"inputs {sorted(inputs)}, outputs {sorted(fn.structured_outputs)}"
        raise VisionModelError(f"vision_model '{path}': its serving_default signature must take one input "
                               f"(images) and give one output (embeddings); it has {has}")
    return _SignatureModel(loaded, fn)


class _SignatureModel(tf.Module):
    """A SavedModel's one-input one-output signature as a callable (the loaded object tracked, so
    its variables are saved with whatever holds it)."""

    def __init__(self, loaded, fn):
        super().__init__(name="vision_model")
        self.loaded = loaded
        self._fn = fn
        self._input = next(iter(fn.structured_input_signature[1]))
        self._output = next(iter(fn.structured_outputs))

    def __call__(self, images, training=False):
        return self._fn(**{self._input: images})[self._output]


def _embed(model, images: tf.Tensor) -> tf.Tensor:
    """A vision model's embeddings float64 [N, E] of uint8 images."""
    out = model(tf.cast(images, tf.float32) / 255.0, training=False)
    return tf.reshape(tf.cast(out, tf.float64), [tf.shape(out)[0], -1])


def model_embeddings(model, images: np.ndarray) -> np.ndarray:
    """A vision model's embeddings of uint8 images, float64 [N, E], in batches of :data:`EMBED_BATCH`
    (what the Beam job fits the hash on)."""
    fn = tf.function(lambda x: _embed(model, x))
    parts = [fn(tf.constant(images[i:i + EMBED_BATCH])).numpy() for i in range(0, len(images), EMBED_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def _constant(values: np.ndarray, name: str) -> tf.Variable:
    """A fitted parameter as a float64 non-trainable variable (saved in the SavedModel's variables/)."""
    return tf.Variable(np.asarray(values, np.float64), trainable=False, name=name)


class VisualIdModule(tf.Module):
    """images uint8 [N, H, W, 3] -> IDs int64 [N], the TF twin of :class:`VisualEncoder`;
    ``encode`` is the SavedModel signature (``{column: ids}``)."""

    def __init__(self, encoder: VisualEncoder, column: str, model=None):
        super().__init__(name="visual_semantic_ids")
        if encoder.uses_model and model is None:
            raise ValueError(f"vision model '{encoder.vision_model}': pass the loaded model")
        self.column, self.vision_model = column, encoder.vision_model
        self.center, self.planes = _constant(encoder.center, "center"), _constant(encoder.planes, "planes")
        if encoder.vision_model == "pca":
            self.pixel_mean = _constant(encoder.pixel_mean, "pixel_mean")
            self.components = _constant(encoder.components, "components")
        self.model = model
        self.powers = tf.constant(np.int64(1) << np.arange(encoder.bits, dtype=np.int64))
        self.encode = tf.function(self._encode, input_signature=[
            tf.TensorSpec([None, *encoder.image_shape], tf.uint8, name="images")])

    def embed(self, images: tf.Tensor) -> tf.Tensor:
        if self.model is not None:
            return _embed(self.model, images)
        x = tf.reshape(tf.cast(images, tf.float64) / 255.0, [tf.shape(images)[0], -1])
        return tf.matmul(x - self.pixel_mean, self.components) if self.vision_model == "pca" else x

    def ids(self, images: tf.Tensor) -> tf.Tensor:
        bits = tf.matmul(self.embed(images) - self.center, self.planes) > 0
        return tf.reduce_sum(tf.cast(bits, tf.int64) * self.powers, axis=1)

    def _encode(self, images):
        return {self.column: self.ids(images)}


def save_encoder(encoder: VisualEncoder, column: str, path: str, model=None,
                 settings: Optional[Dict[str, Any]] = None) -> None:
    """Save the encoder as a SavedModel at ``path`` (signature :data:`SIGNATURE`) with its
    parameters and a manifest (column, bits, image shape, vision model, ``settings``)."""
    module = VisualIdModule(encoder, column, model)
    tf.saved_model.save(module, path, signatures={SIGNATURE: module.encode.get_concrete_function()})
    manifest = {"column": column, "signature": SIGNATURE, "input": "images", "bits": encoder.bits,
                "image_shape": list(encoder.image_shape), "vision_model": encoder.vision_model, **(settings or {})}
    tf.io.gfile.makedirs(os.path.dirname(os.path.join(path, MANIFEST_FILE)))
    with tf.io.gfile.GFile(os.path.join(path, PARAMS_FILE), "wb") as fh:
        fh.write(encoder.to_bytes())
    with tf.io.gfile.GFile(os.path.join(path, MANIFEST_FILE), "w") as fh:
        fh.write(json.dumps(manifest, indent=2, sort_keys=True))


def load_encoder(path: str) -> Tuple[Any, Dict[str, Any]]:
    """(the loaded SavedModel, its manifest) of an encoder :func:`save_encoder` wrote."""
    with tf.io.gfile.GFile(os.path.join(path, MANIFEST_FILE)) as fh:
        manifest = json.load(fh)
    return tf.saved_model.load(path), manifest


def served_encoder(data_dir: str, raw_columns) -> Optional[Tuple[Any, Dict[str, Any]]]:
    """The encoder a preprocess output holds (``<data_dir>/visual_encoder/``) when its column is one
    of ``raw_columns`` (what a served model reads), loaded with its manifest; else None."""
    path = os.path.join(data_dir, ENCODER_DIR)
    if not tf.io.gfile.exists(os.path.join(path, MANIFEST_FILE)):
        return None
    loaded, manifest = load_encoder(path)
    return (loaded, manifest) if manifest["column"] in set(raw_columns) else None
