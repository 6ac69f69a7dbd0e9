"""The experts presets (models/frameworks/experts) on the simulator's preprocessed data with tasks
[click, conversion]: each trains a few steps through ``build_model``, a ``get_config`` round trip
gives equal outputs, and the SavedModel's raw-feature signature equals Keras on raw requests.
STEM-AL's export serves its main task only and reads no weight of the auxiliary tower or gate."""
import numpy as np
import pytest

from serving_fixtures import encode_rows
from test_din_export import raw_rows

import tensorflow as tf

from features.schema import Schema
from models.factory import build_model
from pipeline.data import make_dataset
from serving.clients import LocalModelServer, RequestBuilder
from serving.export import export_model
from serving.signatures import RAW_SIGNATURE

TASKS = ["click", "conversion"]
PRESETS = ("me", "shared_bottom", "mmoe", "ple", "me_mmoe", "stem", "ame", "stem_al")
SMALL = {"backbone": "dnn", "backbone_options": {"dnn_units": [8]}, "embedding_dim": 4,
         "embedding_options": {"initializer_stddev": 0.1}}  # rows that differ: parity is not vacuous
# fewer experts / tables than the presets' 8 keep the file fast; the structure is the preset's
FEWER = {"mmoe": {"experts": [{"table": 0, "count": 3}]},
         "me_mmoe": {"tables": [{}, {}, {}], "experts": [{"table": 0}, {"table": 1}, {"table": 2}]},
         "stem": {"experts": [{"table": 0, "count": 2}, {"table": 1}]}}


def trained(framework: str, schema: Schema, data_dir: str, tasks=TASKS, options=None, **model_config):
    """The preset with small experts and towers (or the framework with ``options`` and the model
    config ``SMALL`` updated by ``model_config``), after three training steps (which move its weights)."""
    tf.keras.utils.set_random_seed(0)
    options = {"tower_units": [8], **FEWER.get(framework, {})} if options is None else options
    model = build_model(schema.to_dict(), tasks, framework=framework, framework_options=options,
                        **{**SMALL, **model_config})
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss={t: "binary_crossentropy" for t in tasks})
    ds = make_dataset(data_dir, "train", batch_size=256, labels=tasks, sample_weight=None)
    model(next(iter(ds))[0])
    start = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(ds.take(3), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    moved = [not np.array_equal(a, v.numpy()) for a, v in zip(start, model.trainable_variables)]
    assert sum(moved) > len(moved) // 2, f"{framework}: training moved {sum(moved)} of {len(moved)} weights"
    return model


@pytest.mark.slow
@pytest.mark.parametrize("framework", PRESETS)
def test_preset_trains_round_trips_and_its_savedmodel_equals_keras(framework, sim_raw, sim_data, tmp_path):
    schema = Schema.load(sim_data)
    model = trained(framework, schema, sim_data)
    rows = raw_rows(sim_raw, schema)
    x = {k: tf.constant(v) for k, v in encode_rows(schema, sim_data, rows).items()}
    served = model.served
    assert served == (["click"] if framework == "stem_al" else TASKS)
    want = {t: p.numpy().reshape(-1) for t, p in model(x, training=False).items()}
    assert sorted(want) == sorted(served) and all(np.std(p) > 1e-5 for p in want.values())

    clone = type(model).from_config(model.get_config())
    clone(x)
    clone.set_weights(model.get_weights())
    for t, p in clone(x, training=False).items():
        np.testing.assert_allclose(p.numpy().reshape(-1), want[t], rtol=1e-6)

    export_dir = str(tmp_path / framework / "1")
    export_model(model, schema, served, sim_data, export_dir, warmup_batch_sizes=(1,))
    got = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))
    assert sorted(got) == sorted(served)
    for t in served:
        np.testing.assert_allclose(got[t], want[t], rtol=0, atol=1e-6)
    if framework == "stem_al":
        loaded = tf.saved_model.load(export_dir)  # held: its signature's variables live as long as it
        read = {v.name for v in loaded.signatures[RAW_SIGNATURE].graph.variables}
        assert [n for n in read if "tower_click" in n] and [n for n in read if "table_0" in n]
        assert not [n for n in read if "tower_conversion" in n or "gate_0_conversion" in n]
