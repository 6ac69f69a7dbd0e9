"""A NaN in the training data, or weights that diverge, stop `ctrflow train` with exit code 2
and one message naming the training step (and the feature), before anything is backed up
or marked done; for both model classes (CTRModel and TF4CTR share the check)."""
import glob
import os
import shutil
import sys

import numpy as np
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "pipeline"))
from train_helpers import train_config  # noqa: E402

FEATURE, ROW, SEED, BATCH = "user_pretrained", 123, 7, 512


def _poisoned_copy(data_dir, out_dir):
    """A copy of ``data_dir`` whose first train shard holds NaN in one value of FEATURE of
    record ROW (everything else byte-identical in content)."""
    import tensorflow as tf

    shutil.copytree(data_dir, out_dir)
    shard = sorted(glob.glob(os.path.join(out_dir, "train", "part-*.tfrecord.gz")))[0]
    records = list(tf.data.TFRecordDataset(shard, compression_type="GZIP").as_numpy_iterator())
    example = tf.train.Example.FromString(records[ROW])
    values = example.features.feature[FEATURE].float_list.value
    assert len(values) == 16 and all(np.isfinite(values))
    values[3] = float("nan")
    records[ROW] = example.SerializeToString()
    with tf.io.TFRecordWriter(shard, options="GZIP") as writer:
        for record in records:
            writer.write(record)
    return str(out_dir)


def _first_step_reading_nan(data_dir, cache):
    """The 1-based training step whose batch holds the NaN, found by reading the stream the
    run reads (same seed, batch size, reader) batch by batch."""
    import tensorflow as tf

    from pipeline.data import make_dataset

    tf.keras.utils.set_random_seed(SEED)  # as train() does; the streaming shuffle reads it
    ds = make_dataset(data_dir, "train", BATCH, shuffle=True, repeat=True, deterministic=True, seed=SEED,
                      cache=cache, shuffle_buffer=10000, drop_remainder=True, labels=["click"])
    for step, (inputs, _) in enumerate(ds.take(200), start=1):
        if not np.isfinite(inputs[FEATURE].numpy()).all():
            return step
    raise AssertionError("the NaN record was never read")


def _write_config(tmp_path, data_dir, name, **overrides):
    from pipeline.config import to_dict

    cfg = to_dict(train_config(data_dir, tmp_path / "runs", run_name=name, seed=SEED, batch_size=BATCH, epochs=3,
                               **overrides))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def poisoned(sim_data, tmp_path_factory):
    return _poisoned_copy(sim_data, tmp_path_factory.mktemp("nan") / "data")


@pytest.mark.parametrize("cache", [True, False], ids=["in-memory", "streaming"])
def test_nan_in_one_record_stops_naming_feature_and_step(poisoned, tmp_path, cli, cache):
    config = _write_config(tmp_path, poisoned, "nan", cache=cache)
    proc = cli("train", "--config", config, check=2)
    step = _first_step_reading_nan(poisoned, cache)
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("ctrflow train: error: non-finite value"), proc.stderr[-2000:]
    assert f"input feature '{FEATURE}' at training step {step} (epoch" in message, (step, message)
    assert "Traceback" not in proc.stderr
    run_dir = tmp_path / "runs" / "nan"
    assert not (run_dir / "done.json").exists() and not (run_dir / "weights").exists()
    assert not (run_dir / "backup" / "latest.json").exists() or step > 24000 // BATCH


@pytest.mark.slow
def test_tf4ctr_stops_on_the_same_nan(poisoned, tmp_path):
    """TF4CTR runs the same check (the shared step of models.framework)."""
    from pipeline.train import NanLossError, train

    cfg = train_config(poisoned, tmp_path, seed=SEED, batch_size=BATCH, epochs=1,
                       **{"model.backbone": "dualmlp", "model.framework": "tf4ctr",
                          "model.backbone_options": {"mlp1_units": [16], "mlp2_units": [32, 16]}})
    step = _first_step_reading_nan(poisoned, True)
    with pytest.raises(NanLossError, match=rf"input feature '{FEATURE}' at training step {step} \(epoch 1,"):
        train(cfg)


def test_diverging_weights_stop_naming_the_step(sim_data, tmp_path, cli):
    """SGD at learning rate 1e30: step 1's update is finite but huge, so step 2's logits are not."""
    config = _write_config(tmp_path, sim_data, "diverge", **{"optimizer.name": "sgd",
                                                             "optimizer.learning_rate": 1e30})
    proc = cli("train", "--config", config, check=2)
    message = proc.stderr.strip().splitlines()[-1]
    assert "non-finite logit of task 'click' at training step 2 (epoch 1, batch 2 of 46)" in message, message
    assert not (tmp_path / "runs" / "diverge" / "done.json").exists()
