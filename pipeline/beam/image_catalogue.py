"""The creatives the ``visual_semantic_ids`` transform hashes: a catalogue of images by key,
read once on the launcher (local, or any filesystem Beam knows: gs://, s3://, hdfs://).

Two layouts:

* an ``.npy`` file, uint8 [N, H, W, 3] (the simulator's ``item_images.npy``): row k has the
  key ``npy_keys.format(k)`` (default ``i{}``: the simulator's item ``i<k>``);
* a folder of image files (``.png``, ``.jpg`` / ``.jpeg``, ``.gif``, ``.bmp``), each named by its
  key (``i17.png`` is key ``i17``), decoded by TensorFlow's ``tf.io.decode_image`` into 3 RGB
  channels (a declared dependency; TensorFlow is imported only for this layout, on the
  launcher). Every image must have the same size: the encoder takes one shape, and requests
  send images of that size (``docs/serving.md``).
"""
from __future__ import annotations

import io
import os
from typing import List, Tuple

import numpy as np

from pipeline.raw_io import RawInputError, file_errors, is_remote, open_binary

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp")


def read_catalogue(path: str, npy_keys: str = "i{}") -> Tuple[List[str], np.ndarray]:
    """(keys, uint8 images [N, H, W, 3]) of an ``.npy`` file or a folder of image files."""
    if path.lower().endswith(".npy"):
        return _read_npy(path, npy_keys)
    return _read_folder(path)


def _read_npy(path: str, npy_keys: str) -> Tuple[List[str], np.ndarray]:
    with file_errors(path, "a NumPy .npy file"), open_binary(path) as fh:
        try:
            images = np.load(io.BytesIO(fh.read()), allow_pickle=False)
        except ValueError as exc:
            raise RawInputError(f"{path}: cannot read it as a NumPy .npy file: {exc}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise RawInputError(f"{path}: expected uint8 images [N, H, W, 3] with N >= 1, got {images.dtype} "
                            f"{list(images.shape)}")
    return [npy_keys.format(k) for k in range(len(images))], images


def _image_files(path: str) -> List[str]:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        found = [m.path for r in FileSystems.match([path.rstrip("/") + "/*"]) for m in r.metadata_list]
    elif os.path.isdir(path):
        found = [os.path.join(path, n) for n in os.listdir(path)]
    else:
        raise RawInputError(f"images '{path}': expected an .npy file or a folder of image files; it does not exist "
                            "or is neither")
    names = [f for f in found if f.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(f).startswith(".")]
    if not names:
        raise RawInputError(f"images '{path}': the folder holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(names)


def _read_folder(path: str) -> Tuple[List[str], np.ndarray]:
    import tensorflow as tf

    files = _image_files(path)
    keys = [os.path.splitext(os.path.basename(f))[0] for f in files]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise RawInputError(f"images '{path}': several files have the key {dup[0]!r} (e.g. a .png and a .jpg); "
                            "keep one image per key")
    images = []
    for f in files:
        with file_errors(f, "an image file"), open_binary(f) as fh:
            data = fh.read()
        try:
            img = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
        except (tf.errors.InvalidArgumentError, ValueError) as exc:
            raise RawInputError(f"{f}: cannot decode it as an image: {str(exc).splitlines()[0]}") from None
        if images and img.shape != images[0].shape:
            raise RawInputError(f"{f}: {img.shape[1]}x{img.shape[0]} pixels, but {files[0]} has "
                                f"{images[0].shape[1]}x{images[0].shape[0]}: every image must have the same size")
        images.append(img)
    return keys, np.stack(images)
