"""REST and gRPC clients: requests built from raw rows, decoded as TF Serving decodes them,
run through the loaded signature, replies parsed back == direct and Keras predictions."""
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving_fixtures import SEQ_LEN, TASKS, VEC_DIM

from features.encoders import INT_MISSING
from serving.clients import (RequestBuilder, RequestError, ServingError, parse_grpc_response,
                             parse_rest_response)
from serving.signatures import ENCODED_SIGNATURE, RAW_SIGNATURE

TOL = 1e-5


@pytest.fixture(scope="module")
def builder(exported):
    return RequestBuilder.from_export(exported["export_dir"])


def test_builder_from_export_equals_from_schema(builder, exported):
    assert builder.inputs == RequestBuilder.from_schema(exported["schema"]).inputs
    price = builder.by_name["price"]
    assert price.features == ("price", "price_bucket")  # one request key feeds both features


def test_rest_round_trip(builder, server, rows, exported):
    body = builder.rest_json(rows)
    assert "NaN" in body and str(INT_MISSING) in body  # missing float / int64 markers travel as JSON
    doc = json.loads(body)
    assert doc["signature_name"] == RAW_SIGNATURE and len(doc["instances"]) == len(rows)
    assert {len(i["hist_item"]) for i in doc["instances"]} == {9}  # ragged lists padded to the batch max
    reply = server.predict_rest(body)
    got = parse_rest_response(reply, TASKS)
    direct = server.predict(builder.tensors(rows))
    for t in TASKS:
        np.testing.assert_allclose(got[t], direct[t], rtol=0, atol=1e-7)  # JSON floats round-trip float32
        np.testing.assert_allclose(got[t], exported["expected"][t], rtol=0, atol=TOL)


def test_rest_columnar_format_equals_row_format(builder, server, rows):
    tensors = builder.tensors(rows[:5])
    cols = {k: [x.tolist() if isinstance(x, np.ndarray) else (x.item() if hasattr(x, "item") else x) for x in v]
            for k, v in tensors.items()}
    reply = json.loads(server.predict_rest(json.dumps({"inputs": cols}, allow_nan=True)))
    rows_reply = parse_rest_response(server.predict_rest(builder.rest_json(rows[:5])), TASKS)
    for t in TASKS:
        np.testing.assert_allclose(reply["outputs"][t], rows_reply[t], rtol=0, atol=1e-7)


def test_grpc_round_trip(builder, server, rows, exported):
    req = builder.grpc_request(rows, model_name="ctr", version=1)
    wire = predict_pb2.PredictRequest.FromString(req.SerializeToString())  # what the server receives
    assert wire.model_spec.name == "ctr" and wire.model_spec.version.value == 1
    assert tf.make_ndarray(wire.inputs["hist_ts"]).dtype == np.int64
    resp = predict_pb2.PredictResponse.FromString(server.predict_grpc(wire).SerializeToString())
    assert resp.model_spec.signature_name == RAW_SIGNATURE and resp.model_spec.version.value == 1
    got = parse_grpc_response(resp)
    assert sorted(got) == TASKS
    for t in TASKS:
        np.testing.assert_array_equal(got[t], server.predict(builder.tensors(rows))[t])
        np.testing.assert_allclose(got[t], exported["expected"][t], rtol=0, atol=TOL)


def test_encoded_signature_over_grpc(server, encoded, exported):
    req = predict_pb2.PredictRequest()
    req.model_spec.signature_name = ENCODED_SIGNATURE
    for k, v in encoded.items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    got = parse_grpc_response(server.predict_grpc(req))
    for t in TASKS:
        np.testing.assert_allclose(got[t], exported["expected"][t], rtol=0, atol=TOL)


def test_missing_optional_values_take_markers_and_keys_are_canonical(builder):
    t = builder.tensors([{"item_id": "i1", "gender": None, "price": None, "exposure": None, "user_id": 7,
                          "position": 3.0, "hist_item": ["i1", None], "user_vec": None}])
    assert t["gender"][0] == "" and t["ctx"][0] == ""  # None and absent
    assert math.isnan(t["price"][0]) and t["exposure"][0] == INT_MISSING and t["position"][0] == 3
    assert t["user_id"][0] == "7"  # the Beam job's key for an integer in a string feature
    assert list(t["hist_item"][0]) == ["i1"] and t["hist_ts"].shape == (1, 1)  # None elements dropped
    assert t["user_vec"].shape == (1, VEC_DIM) and np.isnan(t["user_vec"]).all()
    assert t["position"].dtype == np.int64 and t["price"].dtype == np.float32
    lenient = RequestBuilder(builder.inputs, ignore_unknown=True)  # e.g. rows that still hold labels
    assert lenient.tensors([{"item_id": "i1", "click": 1}])["item_id"][0] == "i1"


def test_padding_never_changes_a_prediction(builder, server, rows):
    t = builder.tensors(rows[:6])
    wider = dict(t)
    for k, fill in [("hist_item", ""), ("hist_ts", INT_MISSING)]:
        extra = np.full((len(t[k]), 2 * SEQ_LEN), fill, dtype=t[k].dtype)
        wider[k] = np.concatenate([extra, t[k], extra], axis=1)  # markers before, between, after
    a, b = server.predict(t), server.predict(wider)
    for k in TASKS:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-7)


@pytest.mark.parametrize("patch,feature", [
    ({"colour": "red"}, "colour"),                      # unknown key
    ({"price": "cheap"}, "price"),                      # string for a float
    ({"price": True}, "price"),                         # bool is no number
    ({"position": 2.5}, "position"),                    # non-integral float for int64
    ({"position": "3"}, "position"),                    # string for int64
    ({"user_id": 1.5}, "user_id"),                      # non-integral float for a string key
    ({"user_id": ["u1"]}, "user_id"),                   # list for a scalar
    ({"hist_item": "i1"}, "hist_item"),                 # scalar for a sequence
    ({"hist_ts": [1, "x"]}, "hist_ts"),                 # bad element
    ({"user_vec": [0.1, 0.2, 0.3]}, "user_vec"),        # dense of the wrong length
    ({"item_id": None}, "item_id"),                     # required, missing
    ({"item_id": ""}, "item_id"),                       # required, empty string = missing
])
def test_client_rejects_bad_rows_naming_the_feature(builder, rows, patch, feature):
    bad = dict(rows[1], **patch)
    with pytest.raises(RequestError, match=feature) as err:
        builder.rest_json([rows[0], bad])
    assert err.value.feature == feature
    if feature != "colour":
        assert err.value.rows == [1]


def test_absent_required_key_fails(builder, rows):
    row = {k: v for k, v in rows[0].items() if k != "item_id"}
    with pytest.raises(RequestError, match="item_id"):
        builder.grpc_request([row], "ctr")


def test_server_decodes_like_tf_serving(server, builder, rows):
    inst = json.loads(builder.rest_json(rows[:2]))["instances"]
    bad_bodies = {
        "keys must be equal": {"instances": [{k: v for k, v in inst[0].items() if k != "ctx"}]},
        "hist_item": {"instances": [inst[0], dict(inst[1], hist_item=["i1"] * 12)]},  # unequal shapes
        "plain list": {"instances": [1, 2]},
        "Missing 'inputs' or 'instances'": {"rows": inst},
        "not found in signature def": {"signature_name": "nope", "instances": inst},
    }
    for msg, body in bad_bodies.items():
        with pytest.raises(ServingError, match=msg):
            parse_rest_response(server.predict_rest(json.dumps(body, allow_nan=True)), TASKS)
    req = builder.grpc_request(rows[:2], "ctr")
    req.inputs["colour"].CopyFrom(tf.make_tensor_proto(np.array([b"r", b"g"], dtype=object)))
    with pytest.raises(ServingError, match="colour"):
        server.predict_grpc(req)


def test_parse_rest_response_formats():
    assert parse_rest_response('{"predictions": [0.25, 0.5]}', ["click"])["click"].tolist() == [0.25, 0.5]
    multi = parse_rest_response({"predictions": [{"click": 0.1, "conversion": 0.2}, {"click": 0.3, "conversion": 0.4}]},
                                TASKS)
    np.testing.assert_allclose(multi["conversion"], [0.2, 0.4])
    cols = parse_rest_response('{"outputs": {"click": [0.1], "conversion": [0.9]}}', TASKS)
    np.testing.assert_allclose(cols["conversion"], [0.9])
    with pytest.raises(ServingError, match="boom"):
        parse_rest_response('{"error": "boom"}', TASKS)
