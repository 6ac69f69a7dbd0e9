"""The user-domain baselines (MMoE / PLE by gender through the experts framework's
``domain_feature``, STAR over dnn and over DCNv2) on the simulator's preprocessed data: each trains
a few steps, a ``get_config`` round trip gives equal outputs, and the SavedModel's raw-feature
signature equals Keras on raw requests, a request with a gender never seen in training (OOV: the
unknown domain) among them."""
import numpy as np
import pytest

from serving_fixtures import encode_rows
from test_din_export import raw_rows
from test_experts_export import trained

import tensorflow as tf

from features.schema import Schema
from serving.clients import LocalModelServer, RequestBuilder
from serving.export import export_model

CASES = {
    "mmoe": ("mmoe", {"domain_feature": "gender", "tower_units": [8], "experts": [{"table": 0, "count": 3}]}, {}),
    "ple": ("ple", {"domain_feature": "gender", "tower_units": [8]}, {}),
    "star": ("star", {"domain_feature": "gender", "aux_units": [8]}, {}),
    "star_dcnv2": ("star", {"domain_feature": "gender", "aux_units": [8]},
                   {"backbone": "dcnv2", "backbone_options": {"dnn_units": [8], "num_cross_layers": 1}}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_domain_model_trains_round_trips_and_its_savedmodel_equals_keras(case, sim_raw, sim_data, tmp_path):
    framework, options, model_config = CASES[case]
    schema = Schema.load(sim_data)
    model = trained(framework, schema, sim_data, ["click"], options, **model_config)
    assert model.served == ["click"] and model.domains.count == schema.feature("gender").num_ids - 1
    rows = raw_rows(sim_raw, schema)
    rows[1] = {**rows[1], "gender": "never-seen"}  # OOV: the unknown domain
    x = {k: tf.constant(v) for k, v in encode_rows(schema, sim_data, rows).items()}
    domain = model.domains.index(x).numpy()
    assert domain[1] == 0 and len(set(domain.tolist())) >= 3
    want = model(x, training=False)["click"].numpy().reshape(-1)
    assert np.std(want) > 1e-5

    clone = type(model).from_config(model.get_config())
    clone(x)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x, training=False)["click"].numpy().reshape(-1), want, rtol=1e-6)

    export_dir = str(tmp_path / case / "1")
    export_model(model, schema, ["click"], sim_data, export_dir, warmup_batch_sizes=(1,))
    got = LocalModelServer(export_dir).predict(RequestBuilder.from_schema(schema).tensors(rows))
    assert sorted(got) == ["click"]
    np.testing.assert_allclose(got["click"], want, rtol=0, atol=1e-6)
