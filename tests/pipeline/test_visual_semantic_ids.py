"""The ``visual_semantic_ids`` Beam transform on a tiny simulator run: every row's encoded
visual_id is the MNSE code of its item's ID in the written table (and the table is the saved
encoder's IDs of the catalogue), counted; an item without an image gets the documented missing
value or is dropped, counted, the accounting holding; reruns are byte-identical; an earlier
schema's encoder is reused, not refitted; image folders; the config's mistakes."""
import glob
import os

import numpy as np
import pandas as pd
import pytest

from features import visual_ids as V
from features.mnse import mnse_ids
from features.schema import Schema
from features.vocab import read_vocab
from pipeline.beam.driver import run_preprocess
from pipeline.beam.image_catalogue import read_catalogue
from pipeline.config import ConfigError
from pipeline.data import read_columns
from pipeline.raw_io import RawInputError

ONE_SHARD = "ads/part-00000.parquet"  # 10,000 rows: enough for the runs that compare outputs


def _items(data_dir, schema, split):
    """The raw item key and the encoded visual columns of every row of ``split``."""
    cols = read_columns(data_dir, split, ["item_id", "visual_id", "visual_id_mns"], schema=schema)
    vocab = np.array(["<pad>", "<oov>"] + read_vocab(os.path.join(data_dir, schema.feature("item_id").encoding[
        "vocab_file"])), dtype=object)
    return vocab[cols["item_id"]], cols


def _binary_mnse_ids(codes):
    """The integers binary MNSE codes [n, K] stand for (Eq. 2 ids: 2 + 2 (k - 1) + digit, k = K..1)."""
    k = np.arange(codes.shape[1] - 1, -1, -1)
    return ((codes - 2 - 2 * k) << k).sum(axis=1)


def _table(data_dir):
    table = pd.read_parquet(os.path.join(data_dir, V.ID_TABLE))
    return dict(zip(table["item_id"], table["visual_id"]))


def test_every_row_gets_the_id_of_its_items_creative(sim_visual_data, sim_raw):
    schema = Schema.load(sim_visual_data)
    images = np.load(os.path.join(sim_raw, "item_images.npy"))
    encoder = V.VisualEncoder.from_bytes(open(os.path.join(sim_visual_data, V.ENCODER_DIR, V.PARAMS_FILE),
                                              "rb").read())
    table = pd.read_parquet(os.path.join(sim_visual_data, V.ID_TABLE))
    assert table["item_id"].tolist() == [f"i{k}" for k in range(len(images))]  # row k of item_images.npy
    np.testing.assert_array_equal(table["visual_id"], encoder.encode(images))
    ids = _table(sim_visual_data)
    for split in ("train", "test", "random"):
        items, cols = _items(sim_visual_data, schema, split)
        known = items != "<oov>"  # items the vocabulary knows; the others have their ID all the same
        want = np.array([ids[k] for k in items[known]], np.float64)
        np.testing.assert_array_equal(cols["visual_id"][known], mnse_ids(want, schema.feature("visual_id").encoding))
        np.testing.assert_array_equal(cols["visual_id_mns"][known],
                                      mnse_ids(want, schema.feature("visual_id_mns").encoding))
        # items first seen after training (OOV ids) still get their own creative's ID
        unseen = set(ids) - set(items[known])
        decoded = _binary_mnse_ids(cols["visual_id"][~known])
        assert np.isin(decoded, [ids[k] for k in unseen]).all()
        if split == "test":
            assert (~known).sum() > 0 and len(np.unique(decoded)) > 1
    stats = pd.read_json(os.path.join(sim_visual_data, "stats.json"), typ="series")
    for split, s in stats["splits"].items():
        counts = s["transforms"]["visual_semantic_ids"]
        assert counts["rows_with_image"] == s["rows_in"] and counts["rows_without_image"] == 0, split
    own = stats["transforms"]["visual_semantic_ids"]["statistics"]
    assert own["images"] == len(images) and own["distinct_ids"] == len(set(ids.values()))
    assert own["vision_model"] == "pca" and len(own["explained_variance"]) == 8
    assert schema.feature("visual_id").encoding["bases"] == [2] and schema.feature("visual_id").num_ids == 34


def _run(visual_config, out, **transform):
    raw = os.path.dirname(os.path.dirname(visual_config("x").input.path))
    cfg = visual_config(out, {"input.path": os.path.join(raw, ONE_SHARD), "split.extra_splits": {}}, **transform)
    return run_preprocess(cfg, progress=False)


def test_items_without_an_image_are_counted_and_missing_or_dropped(visual_config, sim_raw, tmp_path):
    images = np.load(os.path.join(sim_raw, "item_images.npy"))
    partial = tmp_path / "partial.npy"
    np.save(partial, images[:200])  # items i200.. have no creative
    raw = pd.read_parquet(os.path.join(sim_raw, ONE_SHARD), columns=["item_id"])
    no_image = int((raw["item_id"].str[1:].astype(int) >= 200).sum())
    assert 0 < no_image < len(raw)

    kept = _run(visual_config, tmp_path / "kept", images=str(partial))
    counts = kept["transforms"]["visual_semantic_ids"]
    assert counts["rows_without_image"] == no_image and counts["rows_with_image"] == len(raw) - no_image
    assert kept["rows_written"] == len(raw) and counts["rows_dropped"] == 0
    schema = Schema.load(str(tmp_path / "kept"))
    items, cols = _items(str(tmp_path / "kept"), schema, "train")
    missing = np.array([int(k[1:]) >= 200 for k in items])
    assert missing.any() and (cols["visual_id"][missing] == 0).all()  # every MNSE digit: padding
    assert (cols["visual_id"][~missing] >= 2).all()

    dropped = _run(visual_config, tmp_path / "dropped", images=str(partial), on_missing="drop")
    counts = dropped["transforms"]["visual_semantic_ids"]
    assert counts["rows_dropped"] == counts["rows_without_image"] == no_image
    assert dropped["rows_in"] == dropped["rows_written"] + dropped["rows_quarantined"] + dropped[
        "rows_dropped_by_transforms"]
    assert dropped["rows_written"] == len(raw) - no_image

    # reruns write the same bytes: shards, ID table, schema, vocabularies
    _run(visual_config, tmp_path / "again", images=str(partial))
    for path in sorted(glob.glob(str(tmp_path / "kept" / "**" / "*"), recursive=True)):
        rel = os.path.relpath(path, tmp_path / "kept")
        if os.path.isfile(path) and not rel.startswith((V.ENCODER_DIR, "stats.json")):
            assert open(path, "rb").read() == open(tmp_path / "again" / rel, "rb").read(), rel


def test_an_earlier_schema_encodes_with_its_encoder(visual_config, sim_raw, tmp_path):
    images = np.load(os.path.join(sim_raw, "item_images.npy"))
    first, later = tmp_path / "first.npy", tmp_path / "later.npy"
    np.save(first, images[:200])
    np.save(later, images)  # the catalogue grew: new creatives
    _run(visual_config, tmp_path / "day1", images=str(first))
    raw = os.path.dirname(os.path.dirname(visual_config("x").input.path))
    cfg = visual_config(tmp_path / "day2", {"input.path": os.path.join(raw, ONE_SHARD), "split.extra_splits": {},
                                            "schema_from": str(tmp_path / "day1")}, images=str(later))
    run_preprocess(cfg, progress=False)
    params = [V.VisualEncoder.from_bytes(open(tmp_path / day / V.ENCODER_DIR / V.PARAMS_FILE, "rb").read())
              for day in ("day1", "day2")]
    for name in ("pixel_mean", "components", "center", "planes"):  # not refitted on the larger catalogue
        np.testing.assert_array_equal(getattr(params[0], name), getattr(params[1], name))
    day1, day2 = _table(str(tmp_path / "day1")), _table(str(tmp_path / "day2"))
    assert all(day2[k] == v for k, v in day1.items())
    np.testing.assert_array_equal([day2[f"i{k}"] for k in range(200, len(images))], params[0].encode(images[200:]))
    with pytest.raises(ConfigError, match=r"transforms\[0\]\.bits = 12, but the encoder of schema_from"):
        run_preprocess(visual_config(tmp_path / "day3", {"schema_from": str(tmp_path / "day1")}, bits=12),
                       progress=False)


def test_a_folder_of_image_files(sim_raw, tmp_path):
    import tensorflow as tf

    images = np.load(os.path.join(sim_raw, "item_images.npy"))[:12]
    folder = tmp_path / "creatives"
    folder.mkdir()
    for k, img in enumerate(images):
        (folder / f"i{k}.png").write_bytes(tf.io.encode_png(img).numpy())
    (folder / "notes.txt").write_text("not an image")
    keys, got = read_catalogue(str(folder))
    assert keys == sorted(f"i{k}" for k in range(12))  # named by key, in name order
    np.testing.assert_array_equal(got, images[[int(k[1:]) for k in keys]])  # PNG is lossless
    (folder / "i99.png").write_bytes(tf.io.encode_png(np.zeros((16, 16, 3), np.uint8)).numpy())
    with pytest.raises(RawInputError, match=r"i99\.png: 16x16 pixels, but .* has 32x32"):
        read_catalogue(str(folder))
    with pytest.raises(RawInputError, match="expected uint8 images"):
        np.save(tmp_path / "gray.npy", images[..., 0])
        read_catalogue(str(tmp_path / "gray.npy"))


@pytest.mark.parametrize("change, message", [
    ({"images": None}, r"transforms\[0\]\.images: missing"),
    ({"column": "creative_id"}, r"transforms\[0\]\.column = 'creative_id': no feature of the config reads it"),
    ({"key_column": "nope"}, r"transforms\[0\]\.key_column = 'nope': expected a scalar feature"),
    ({"bits": 60}, r"transforms\[0\]\.bits = 60: expected an integer in \[1, 53\]"),
    ({"on_missing": "zero"}, r"transforms\[0\]\.on_missing = 'zero': expected one of"),
])
def test_config_mistakes_name_the_option(visual_config, tmp_path, change, message):
    from models.options import OptionError

    with pytest.raises((OptionError, ConfigError), match=message):
        visual_config(tmp_path / "out", **change)


def test_a_filled_feature_cannot_be_required(visual_config, tmp_path):
    from pipeline.beam.plan import JobPlan

    cfg = visual_config(tmp_path / "out")
    cfg.features = [dict(f, required=True) if f["name"] == "visual_id" else f for f in cfg.features]
    with pytest.raises(ConfigError, match="feature 'visual_id' reads column 'visual_id', which a transform computes"):
        JobPlan(cfg)
