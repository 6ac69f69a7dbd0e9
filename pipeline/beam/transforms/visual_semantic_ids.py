"""``visual_semantic_ids``: every row gets the visual semantic ID of its creative (Tencent ads,
§3.2 "Deployment Details"; the encoder: ``features/visual_ids.py``).

On the launcher, before the job (``prepare``): the catalogue's images are read
(``pipeline/beam/image_catalogue.py``: the simulator's ``item_images.npy``, row k = item
``i<k>``, or a folder of image files named by key), the encoder is fitted on them (the default
``pca``: the top principal directions of the catalogue's pixels, then ``bits`` random
hyperplanes) and the ID of every image is computed once: a key -> ID table that travels to the
workers with the transform. With an earlier schema (``schema_from``) the earlier output's
encoder is read instead of fitted, so new data gets the IDs the model was trained with.

On the rows (``apply``): the ID of the row's ``key_column`` value (default ``item_id``: the
simulator's ads share their item's creative) fills the column ``column`` (default
``visual_id``), which the input does not hold: every config feature reading that column (e.g.
``{name: visual_id, kind: numeric, dtype: int64, encoding: {type: mnse, bases: [2], digits:
[16]}}``, or a second feature with ``source: visual_id`` and other numeral systems) gets it,
encoded like any raw value. A row whose key has no image (or no key) is counted
(``rows_without_image``) and, with ``on_missing: missing`` (default), keeps the ID missing, which
encodes as the feature's default or padding (MNSE: every digit id 0); with ``on_missing: drop``
it is dropped (the transform's ``rows_dropped``).

After the job (``statistics``): the output folder gets the ID table ``visual_ids.parquet``
(``<key_column>, <column>``, one row per image) and the fitted encoder as a SavedModel,
``visual_encoder/`` (signature ``visual_semantic_id``: ``images`` uint8 [N, H, W, 3] ->
``{<column>: int64 [N]}``, its parameters in ``assets.extra/``), which ``ctrflow export`` adds to
the served model: a new ad's ID is computed from its creative without retraining.

    transforms:
      - {name: visual_semantic_ids, images: demo_out/raw/item_images.npy, bits: 16, seed: 0}
"""
from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np
import pandas as pd

from features import visual_ids as V
from features.encodings import encoding_of
from models.options import OptionError
from pipeline.beam import ads_table as A
from pipeline.beam.image_catalogue import read_catalogue
from pipeline.beam.storage import write_bytes
from pipeline.beam.transforms.base import Batch, Output, Transform, register_transform
from pipeline.config import ConfigError
from pipeline.raw_io import RawInputError, open_binary

# the encoder settings an earlier output's encoder must share with the config to be reused (schema_from)
FROZEN_SETTINGS = ("column", "bits", "vision_model", "components", "seed", "fit_sample")


@register_transform("visual_semantic_ids")
class VisualSemanticIds(Transform):
    """Options: ``images`` (required: an .npy file or a folder of images), ``key_column``
    (``item_id``), ``column`` (``visual_id``), ``npy_keys`` (``i{}``), ``vision_model`` (``pca`` |
    ``pixels`` | a Keras model / SavedModel path), ``components`` (8, PCA), ``bits`` (16, in
    [1, 53]), ``seed`` (0), ``fit_sample`` (10000), ``on_missing`` (``missing`` | ``drop``),
    ``splits`` (default: every split). See the module docstring."""

    defaults = {"images": None, "key_column": "item_id", "column": "visual_id", "npy_keys": "i{}",
                "vision_model": "pca", "components": V.DEFAULT_COMPONENTS, "bits": V.DEFAULT_BITS, "seed": 0,
                "fit_sample": 10000, "on_missing": "missing", "splits": None}
    ranges = {"components": "[1, inf)", "bits": f"[1, {V.MAX_BITS}]", "seed": "[0, inf)", "fit_sample": "[2, inf)"}
    choices = {"on_missing": ("missing", "drop")}
    types = {"images": str, "splits": list}
    count_names = ("rows_with_image", "rows_without_image")

    # ---- configuration ---------------------------------------------------------------------
    def check(self, config, where: str) -> None:
        o = self.options
        if o["splits"] is None:  # every split: test rows need their IDs as much as train rows
            o["splits"] = list(config.split.ratios) + list(config.split.extra_splits)
        super().check(config, where)
        self.where = where
        if o["images"] is None:
            raise OptionError(f"{where}.images: missing; expected the catalogue's images, an .npy file uint8 "
                              f"[N, H, W, 3] or a folder of image files named by key (transform '{self.name}')")
        if "{}" not in o["npy_keys"]:
            raise OptionError(f"{where}.npy_keys = {o['npy_keys']!r}: expected a format with '{{}}' for the row "
                              f"number, e.g. 'i{{}}' (transform '{self.name}')")
        self.key_kind = A.log_column(config, o["key_column"])
        if self.key_kind is None or o["key_column"] == o["column"]:
            raise OptionError(f"{where}.key_column = {o['key_column']!r}: expected a scalar feature or an extra_meta "
                              f"column of the config, other than column (transform '{self.name}')")
        self.features = [s for s in config.feature_specs() if (s.source or s.name) == o["column"]]
        if not self.features:
            raise OptionError(f"{where}.column = {o['column']!r}: no feature of the config reads it; add one, e.g. "
                              f"{{name: {o['column']}, kind: numeric, dtype: int64, role: ad, encoding: {{type: mnse, "
                              f"bases: [2], digits: [{o['bits']}]}}}} (transform '{self.name}')")
        lists = [s.name for s in self.features if encoding_of(s).list_valued]
        if lists:
            raise OptionError(f"{where}.column = {o['column']!r}: features {lists} read it as a list; a visual "
                              f"semantic ID is one value per row (transform '{self.name}')")

    def filled_columns(self):
        return [self.options["column"]]

    def inputs(self):
        model = self.options["vision_model"]
        return [self.options["images"]] + ([] if model in V.VISION_MODELS else [model])

    # ---- the ID table (launcher) -----------------------------------------------------------
    def prepare(self, config) -> None:
        """Reads the images, fits the encoder (or reads the earlier output's) and computes the ID
        of every image."""
        o = self.options
        keys, images = read_catalogue(o["images"], o["npy_keys"])
        model = embed = None
        if o["vision_model"] not in V.VISION_MODELS:
            from features.visual_ids_tf import load_vision_model, model_embeddings

            model = load_vision_model(o["vision_model"])
            embed = lambda x: model_embeddings(model, x)  # noqa: E731
        if config.schema_from:
            encoder = self._earlier_encoder(config.schema_from, images.shape[1:])
            ids = encoder.ids(embed(images)) if embed else encoder.encode(images)
            info: Dict[str, Any] = {"encoder_from": config.schema_from}
        else:
            encoder, ids, info = V.fit_encoder(images, o["vision_model"], o["components"], o["bits"], o["seed"],
                                               o["fit_sample"], model_embed=embed)
        canonical = A.lookup_keys(A.canonical(self.key_kind, np.array(keys, dtype=object),
                                              np.zeros(len(keys), bool), o["key_column"], o["images"]))
        index = pd.Index(canonical)
        if not index.is_unique:
            raise RawInputError(f"{self.where}.images: {o['images']}: key {index[index.duplicated()][0]!r} names "
                                f"several images")
        self.keys, self.ids = index, ids
        self._launcher = {"encoder": encoder, "model": model, "raw_keys": keys, "info": info}

    def _earlier_encoder(self, folder: str, image_shape) -> V.VisualEncoder:
        """The encoder an earlier output was encoded with; its settings must be this config's."""
        root = f"{folder.rstrip('/')}/{V.ENCODER_DIR}"
        try:
            with open_binary(f"{root}/{V.MANIFEST_FILE}") as fh:
                manifest = json.loads(fh.read())
            with open_binary(f"{root}/{V.PARAMS_FILE}") as fh:
                encoder = V.VisualEncoder.from_bytes(fh.read())
        except OSError:
            raise ConfigError(f"schema_from '{folder}': no visual encoder ({V.ENCODER_DIR}/) to encode with; "
                              f"preprocess that output with transform '{self.name}'") from None
        for key in FROZEN_SETTINGS:
            if manifest.get(key) != self.options[key]:
                raise ConfigError(f"{self.where}.{key} = {self.options[key]!r}, but the encoder of schema_from "
                                  f"'{folder}' was built with {manifest.get(key)!r}; a frozen schema encodes with it")
        if tuple(image_shape) != tuple(encoder.image_shape):
            raise RawInputError(f"{self.where}.images: {self.options['images']}: images of shape "
                                f"{list(image_shape)}, but the encoder of schema_from '{folder}' takes "
                                f"{list(encoder.image_shape)}")
        return encoder

    def __getstate__(self):  # the images' encoder and model stay on the launcher; the table travels
        return {k: v for k, v in self.__dict__.items() if k != "_launcher"}

    def statistics(self, folder: str) -> Dict[str, Any]:
        """Writes the ID table and the encoder's SavedModel into the output folder; returns the
        table's and the fit's numbers."""
        from features.visual_ids_tf import save_encoder

        o, launcher = self.options, self._launcher
        encoder = launcher["encoder"]
        root = folder.rstrip("/")
        save_encoder(encoder, o["column"], f"{root}/{V.ENCODER_DIR}", launcher["model"],
                     settings={k: o[k] for k in FROZEN_SETTINGS if k not in ("column", "bits", "vision_model")}
                     | {"key_column": o["key_column"]})
        write_bytes(f"{root}/{V.ID_TABLE}", [_id_table(launcher["raw_keys"], self.ids, o["key_column"], o["column"])])
        _, sizes = np.unique(self.ids, return_counts=True)
        return {"images": len(self.ids), "image_shape": list(encoder.image_shape), "vision_model": o["vision_model"],
                "bits": encoder.bits, "distinct_ids": len(sizes), "largest_id_group": int(sizes.max()),
                "file": V.ID_TABLE, "encoder": V.ENCODER_DIR, **launcher["info"]}

    # ---- the rows ------------------------------------------------------------------------
    def apply(self, batch: Batch, side) -> Output:
        o = self.options
        pos = self.keys.get_indexer(A.lookup_keys(batch.columns[o["key_column"]]))
        found = pos >= 0
        ids = np.where(found, self.ids[np.maximum(pos, 0)], 0)
        take = np.flatnonzero(found) if o["on_missing"] == "drop" else np.arange(len(batch))
        columns = {s.name: A.canonical(("feature", s), ids, ~found, o["column"], o["images"])[take]
                   for s in self.features}
        counts = {"rows_with_image": found.astype(np.int64), "rows_without_image": (~found).astype(np.int64)}
        return Output(take, columns, counts)


def _id_table(keys, ids: np.ndarray, key_column: str, column: str) -> bytes:
    """``visual_ids.parquet`` as bytes: one row per image, its key and its ID."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({key_column: pa.array(list(keys), pa.string()), column: pa.array(ids, pa.int64())}), sink)
    return sink.getvalue().to_pybytes()
