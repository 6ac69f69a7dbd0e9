"""Rec4Ad under MirroredStrategy (two logical CPUs, each replica half the batch): SABN's moving
statistics are per replica and read as their mean, so after one step they equal the mean over
the replicas of each half-batch's per-source moments (bias-corrected: exactly those moments), and
the model trains and serves. Runs in a subprocess (logical devices are fixed at TF start-up)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import models  # noqa: F401
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from test_rec4ad import batch, schema
    from models.factory import build_model

    B = 32
    x, y = batch(seed=3, n=B)
    x["_source"] = np.tile([1, 0, 1, 1], B // 4).astype(np.int64)  # both sources in each half
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        tf.keras.utils.set_random_seed(0)
        model = build_model(schema(), ["click"], backbone="dnn", backbone_options={"dnn_units": [8]},
                            embedding_dim=4, framework="rec4ad", framework_options={"d": 4})
        model.compile(tf.keras.optimizers.Adam(0.01), loss={"click": "binary_crossentropy"})
        model(x, training=False)  # the weights, in the strategy's scope
    fields = model.embedding(x).fields.numpy().reshape(B, -1)  # SABN's input before the step
    hist = model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0).history
    want = {}
    for name, s in (("ad", 1), ("rec", 0)):
        halves = [fields[h * B // 2:(h + 1) * B // 2][x["_source"][h * B // 2:(h + 1) * B // 2] == s] for h in (0, 1)]
        want[name] = [np.mean([h.mean(0) for h in halves], 0).tolist(), np.mean([h.var(0) for h in halves], 0).tolist()]
    got = {name: [t.numpy().reshape(-1).tolist() for t in b["moving"].read()]
           for name, b in zip(("ad", "rec"), model.sabn.branches)}
    served = model({k: v for k, v in x.items() if k != "_source"})["click"].numpy()
    print("RESULT" + json.dumps({"replicas": strategy.num_replicas_in_sync, "want": want, "got": got,
                                 "loss": hist["loss"], "auc": hist["discriminator_auc"],
                                 "served_finite": bool(np.all(np.isfinite(served)))}))
""")


@pytest.mark.slow
def test_sabn_statistics_and_training_under_mirrored_strategy(tmp_path):
    import numpy as np

    script = tmp_path / "mirrored.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    assert out["replicas"] == 2 and out["served_finite"]
    assert np.isfinite(out["loss"][0]) and 0.0 <= out["auc"][0] <= 1.0
    for name in ("ad", "rec"):
        for got, want in zip(out["got"][name], out["want"][name]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
