"""Export: versions and pruning, models.config, warm-up records, self-contained assets,
OOV / default / required semantics in the graph, bad requests, dropped training-only parts."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.config import model_server_config_pb2

from serving_fixtures import TASKS, encode_rows, keras_predict, make_run_dir, tiny_model

from features.schema import OOV_ID
from models.ctr_model import CTRModel
from serving import layout
from serving.clients import LocalModelServer, RequestBuilder, RequestError, ServingError, parse_rest_response
from serving.export import describe_export, export_model, export_run, read_export_metadata
from serving.signatures import ENCODED_SIGNATURE, RAW_SIGNATURE, signature_keys
from serving.warmup import example_rows, read_warmup_requests

TOL = 1e-5


@pytest.fixture(scope="module")
def run_dir(fitted, encoded, tmp_path_factory):
    """A completed single-task run (DCNv2) and its model's predictions on the request rows."""
    data_dir, schema = fitted
    model = tiny_model(schema, "dcnv2", encoded, tasks=["click"], seed=3)
    root = str(tmp_path_factory.mktemp("runs"))
    return make_run_dir(root, model, schema, ["click"], data_dir, "dcnv2"), keras_predict(model, encoded, ["click"])


def test_export_run_versions_keep_and_models_config(run_dir, fitted, rows, tmp_path, capsys):
    from pipeline.cli import main

    run, expected = run_dir
    base = str(tmp_path / "models")
    infos = [export_run(run, base, keep=2) for _ in range(2)]
    assert main(["export", run, "--out", base, "--keep", "2"]) in (0, None)  # the CLI path prints the info
    infos.append(json.loads(capsys.readouterr().out))
    assert [i["version"] for i in infos] == [1, 2, 3]
    assert infos[-1]["removed_versions"] == [1] and infos[-1]["versions"] == [2, 3]
    model_base = os.path.join(base, "dcnv2-run")
    assert sorted(os.listdir(model_base)) == [".ctrflow-output.json", "2", "3"]  # no staging leftovers, 1 pruned
    with open(os.path.join(base, "models.config")) as fh:
        cfg = layout.parse_models_config(fh.read())
    assert isinstance(cfg, model_server_config_pb2.ModelServerConfig)
    (c,) = cfg.model_config_list.config
    assert (c.name, c.base_path, c.model_platform) == ("dcnv2-run", "/models/dcnv2-run", "tensorflow")
    assert c.model_version_policy.latest.num_versions == 1
    # the exported weights are the run's (restored through serving.run_artifacts.load_model)
    got = LocalModelServer(infos[-1]["export_dir"]).predict(
        RequestBuilder.from_export(infos[-1]["export_dir"]).tensors(rows))
    np.testing.assert_allclose(got["click"], expected["click"], rtol=0, atol=TOL)
    meta = read_export_metadata(infos[-1]["export_dir"])
    assert meta["version"] == 3 and meta["run_dir"] == run and meta["tasks"] == ["click"]


def test_models_config_for_several_models():
    text = layout.models_config_text({"ctr": "/models/ctr", "cvr": "/models/cvr"}, policy="specific",
                                     versions={"ctr": [3, 4], "cvr": [7]}, labels={"ctr": {"stable": 3, "canary": 4}})
    cfg = layout.parse_models_config(text)
    by_name = {c.name: c for c in cfg.model_config_list.config}
    assert sorted(by_name) == ["ctr", "cvr"]
    assert list(by_name["ctr"].model_version_policy.specific.versions) == [3, 4]
    assert dict(by_name["ctr"].version_labels) == {"stable": 3, "canary": 4}
    assert layout.parse_models_config(layout.models_config_text({"a": "/x/a"}, policy="all")) \
        .model_config_list.config[0].model_version_policy.HasField("all")
    with pytest.raises(ValueError, match="policy"):
        layout.models_config_text({"a": "/x"}, policy="newest")
    with pytest.raises(ValueError, match="model name"):
        layout.models_config_text({"a b": "/x"})


def test_versions_and_pruning(tmp_path):
    base = str(tmp_path / "m")
    assert layout.next_version(base) == 1 and layout.list_versions(base) == []
    for v in (1, 2, 3, 5):
        os.makedirs(os.path.join(base, str(v), "assets.extra"))
        open(os.path.join(base, str(v), "saved_model.pb"), "w").close()
        if v != 2:  # version 2 was put there by hand: no export metadata
            open(os.path.join(base, str(v), layout.METADATA_FILE), "w").close()
    os.makedirs(os.path.join(base, "6"))  # incomplete: not a version, but its number is taken
    assert layout.list_versions(base) == [1, 2, 3, 5] and layout.next_version(base) == 7
    assert layout.exported_versions(base) == [1, 3, 5]
    assert layout.prune_versions(base, keep=2) == [1]  # only export's own versions count and go
    assert layout.list_versions(base) == [2, 3, 5]
    with pytest.raises(ValueError):
        layout.prune_versions(base, keep=0)


def test_warmup_records_parse_and_replay(exported, server):
    requests = read_warmup_requests(exported["export_dir"])  # parses each record as a PredictionLog
    assert [r.inputs["item_id"].tensor_shape.dim[0].size for r in requests] == [1, 64]
    schema, data_dir = exported["schema"], exported["data_dir"]
    ex = example_rows(schema, data_dir, 16)
    for req in requests:
        assert req.model_spec.name == "ctr" and req.model_spec.signature_name == RAW_SIGNATURE
        out = server.predict_grpc(req)
        n = req.inputs["item_id"].tensor_shape.dim[0].size
        batch = [ex[i % len(ex)] for i in range(n)]
        want = keras_predict(exported["model"], encode_rows(schema, data_dir, batch))
        for t in TASKS:
            np.testing.assert_allclose(tf.make_ndarray(out.outputs[t]), want[t], rtol=0, atol=TOL)


def test_export_is_self_contained(exported, rows, tmp_path):
    """Vocabularies are SavedModel assets: the export works with the data dir gone."""
    export_dir = str(tmp_path / "copy")
    shutil.copytree(exported["export_dir"], export_dir)
    data_dir = exported["data_dir"]
    assert sorted(os.listdir(os.path.join(export_dir, "assets"))) == sorted(os.listdir(os.path.join(data_dir, "vocab")))
    moved = data_dir + ".moved"
    os.rename(data_dir, moved)
    try:
        got = LocalModelServer(export_dir).predict(RequestBuilder.from_export(export_dir).tensors(rows))
    finally:
        os.rename(moved, data_dir)
    for t in TASKS:
        np.testing.assert_allclose(got[t], exported["expected"][t], rtol=0, atol=TOL)


def _one(server, schema, row):
    return server.predict(RequestBuilder.from_schema(schema).tensors([row]))


def test_unknown_category_is_oov_and_missing_optional_takes_default(exported, server, rows):
    schema, data_dir = exported["schema"], exported["data_dir"]
    row = dict(rows[0], user_id="never-seen-user", gender="m", ad_age=12.0)
    enc = encode_rows(schema, data_dir, [row])
    assert enc["user_id"][0, 0] == OOV_ID
    enc_known = dict(enc, user_id=np.array([[5]]))
    via_raw = _one(server, schema, row)
    via_oov = server.predict(enc, signature_name=ENCODED_SIGNATURE)
    via_known = server.predict(enc_known, signature_name=ENCODED_SIGNATURE)
    for t in TASKS:
        assert via_raw[t] == pytest.approx(via_oov[t], abs=TOL)
        assert abs(via_raw[t][0] - via_known[t][0]) > 1e-6  # the OOV row really differs from a known id
    # gender (default "f") and ad_age (default 3.0) missing -> the defaults
    absent = {k: v for k, v in row.items() if k != "gender"}
    for missing, default in [(absent, dict(row, gender="f")), (dict(row, ad_age=None), dict(row, ad_age=3.0))]:
        a, b = _one(server, schema, missing), _one(server, schema, default)
        for t in TASKS:
            assert a[t] == pytest.approx(b[t], abs=TOL)


def test_missing_required_fails_naming_the_feature(exported, server, rows):
    builder = RequestBuilder.from_schema(exported["schema"])
    tensors = builder.tensors(rows[:3])
    tensors["item_id"] = np.array(["i1", "", "i2"], dtype=object)  # what a client skipping checks sends
    with pytest.raises(ServingError, match=r"required feature item_id has no value.*rows:\] \[1\]"):
        server.predict(tensors)
    fn = server.signatures[RAW_SIGNATURE]
    keys = signature_keys(fn)
    with pytest.raises(tf.errors.InvalidArgumentError, match="item_id"):
        fn(**{keys[k][0]: tf.constant(v) for k, v in tensors.items()})
    reply = server.predict_rest(json.dumps({"instances": [{k: (v[1].tolist() if hasattr(v[1], "tolist") else v[1])
                                                            for k, v in tensors.items()}]}, allow_nan=True))
    with pytest.raises(ServingError, match="item_id"):
        parse_rest_response(reply, TASKS)
    with pytest.raises(RequestError, match="item_id") as err:  # the client catches it first
        builder.tensors([dict(rows[0], item_id=None)])
    assert err.value.feature == "item_id"


def test_wrong_dtype_and_unknown_key_fail_naming_the_input(exported, server, rows):
    tensors = RequestBuilder.from_schema(exported["schema"]).tensors(rows[:2])
    bad = dict(tensors, price=np.array(["1.5", "2"], dtype=object))
    with pytest.raises(RequestError, match="price") as err:  # checked against the signature's TensorSpec
        server.predict(bad)
    assert err.value.feature == "price"
    fn = server.signatures[RAW_SIGNATURE]
    keys = signature_keys(fn)
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)):  # TF itself rejects it too
        fn(**{keys[k][0]: tf.constant(v) for k, v in bad.items()})
    with pytest.raises(ServingError, match="raw input price has another batch size"):
        server.predict(dict(tensors, price=np.array([1.0, 2.0, 3.0], dtype=np.float32)))
    with pytest.raises(RequestError, match="colour") as err:
        server.predict(dict(tensors, colour=np.array(["red", "blue"], dtype=object)))
    with pytest.raises(TypeError, match="colour"):
        fn(**{keys[k][0]: tf.constant(v) for k, v in tensors.items()}, colour=tf.constant(["red", "blue"]))
    instance = {k: v[0].tolist() if isinstance(v[0], np.ndarray) else v[0].item() if hasattr(v[0], "item") else v[0]
                for k, v in tensors.items()}
    for body, name in [({"instances": [dict(instance, price="cheap")]}, "price"),
                       ({"instances": [dict(instance, colour="red")]}, "colour"),
                       ({"instances": [dict(instance, position=2.5)]}, "position")]:
        with pytest.raises(ServingError, match=name):
            parse_rest_response(server.predict_rest(json.dumps(body, allow_nan=True)), TASKS)


class _WithDiscriminator(CTRModel):
    """A framework-like model: a discriminator used only in ``train_step`` and an extra
    auxiliary output from ``call`` — neither may reach the export."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.discriminator = tf.keras.layers.Dense(7, name="discriminator")

    def call(self, inputs, training=None):
        out = super().call(inputs, training=training)
        return {**out, "aux_score": tf.reduce_mean(self.embedding(inputs).fields, axis=[1, 2])[:, None]}

    def train_step(self, data):
        x, _ = data
        self.discriminator(tf.reshape(self.embedding(x).fields, [tf.shape(x["item_id"])[0], -1]))
        return super().train_step(data)


def test_training_only_parts_are_dropped(fitted, encoded, tmp_path):
    data_dir, schema = fitted
    model = _WithDiscriminator(schema.to_dict(), ["click"], backbone="dnn", backbone_options={"dnn_units": [8]},
                               embedding_dim=4)
    model({k: tf.constant(v) for k, v in encoded.items()}, training=False)
    disc_input = tf.zeros([1, model.embedding.num_fields * 4])
    model.discriminator(disc_input)
    export_dir = str(tmp_path / "m" / "1")
    info = export_model(model, schema, ["click"], data_dir, export_dir, warmup_batch_sizes=(1,))
    loaded = tf.saved_model.load(export_dir)
    assert sorted(loaded.signatures[RAW_SIGNATURE].structured_outputs) == ["click"]
    assert info["signatures"][RAW_SIGNATURE]["outputs"] == ["click"]
    served = {v.name for v in loaded.model_variables}
    assert len(loaded.model_variables) == len(model.variables) - len(model.discriminator.variables)
    assert not any(n.startswith("discriminator/") for n in served)


def test_describe_export_shows_signatures_and_a_prediction(exported):
    text = describe_export({"export_dir": exported["export_dir"]})
    assert "signature_def['serving_default']" in text and "signature_def['encoded']" in text
    assert "inputs['hist_item'] tensor_info" in text and "outputs['conversion'] tensor_info" in text
    body = json.loads(text.split("POST http://localhost:8501/v1/models/ctr:predict):\n")[1].split("\n")[0])
    assert set(body["instances"][0]) == {r["name"] for r in read_export_metadata(exported["export_dir"])["raw_inputs"]}
    probs = dict(kv.split("=") for kv in text.rsplit("probabilities: ", 1)[1].split(", "))
    assert set(probs) == set(TASKS) and all(0 < float(p) < 1 for p in probs.values())


def test_mixed_bfloat16_export_is_within_tolerance_of_float32(fitted, encoded, rows, tmp_path):
    """``export --precision mixed_bfloat16``: the MLP's hidden layers after the first compute in
    bfloat16 from the same weights; probabilities stay float32 and within 1e-2 of float32's."""
    from pipeline.cli import main

    data_dir, schema = fitted
    options = {"dnn_units": [32, 32, 32]}  # two hidden layers after the first: bfloat16 matmuls
    model = tiny_model(schema, "dnn", encoded, tasks=["click"], seed=5, options=options)
    run = make_run_dir(str(tmp_path), model, schema, ["click"], data_dir, "dnn", options)
    base = str(tmp_path / "models")
    f32 = export_run(run, base)
    assert main(["export", run, "--out", base, "--precision", "mixed_bfloat16"]) in (0, None)
    bf16_dir = os.path.join(base, "dnn-run", "2")
    assert read_export_metadata(bf16_dir)["precision"] == "mixed_bfloat16"
    tensors = RequestBuilder.from_schema(schema).tensors(rows)
    p32 = LocalModelServer(f32["export_dir"], model_name="f32").predict(tensors)["click"]
    p16 = LocalModelServer(bf16_dir, model_name="bf16").predict(tensors)["click"]
    np.testing.assert_allclose(p32, keras_predict(model, encoded, ["click"])["click"], atol=TOL)
    assert p16.dtype == np.float32
    assert 0 < np.max(np.abs(p16 - p32)) < 1e-2  # really computed in bfloat16, and close
    with pytest.raises(ValueError, match="precision"):
        export_run(run, base, precision="float16")
