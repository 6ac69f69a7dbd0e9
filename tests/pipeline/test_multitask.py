"""Multi-task training: a loss and a weight per task, every task's exact validation metrics
logged (history, history.csv, TensorBoard), early stopping on a named task's metric or the
mean over tasks, and the config checks that name the key."""
import csv
import glob
import os

import numpy as np
import pytest

from pipeline.config import ConfigError
from train_helpers import train_config

TASKS = ["click", "conversion"]
# click: BCE, weight 1; conversion: Focal (alpha 0.5, gamma 1), weight 3
TASK_LOSSES = {"click": {"loss": "bce"},
               "conversion": {"loss": "focal", "weight": 3.0, "options": {"alpha": 0.5, "gamma": 1.0}}}


def two_task_config(data_dir, runs_dir, **overrides):
    return train_config(data_dir, runs_dir, tasks=TASKS, task_losses=TASK_LOSSES, **overrides)


# ---- the config ------------------------------------------------------------------------------
def test_task_losses_fill_in_from_the_default_loss(tmp_path):
    cfg = train_config("unused", tmp_path, tasks=TASKS, loss="focal", loss_options={"gamma": 1.0},
                       task_losses={"click": {"weight": 2.0}, "conversion": {"loss": "rce"}})
    click, conversion = cfg.task_loss("click"), cfg.task_loss("conversion")
    assert (click.loss, click.options, click.weight) == ("focal", {"gamma": 1.0}, 2.0)
    assert (conversion.loss, conversion.options, conversion.weight) == ("rce", {}, 1.0)
    plain = train_config("unused", tmp_path, tasks=TASKS).task_loss("conversion")
    assert (plain.loss, plain.options, plain.weight) == ("bce", {}, 1.0)


@pytest.mark.parametrize("overrides, message", [
    ({"task_losses": {"like": {"weight": 2.0}}},
     r"task_losses\.like: not a task of this run; tasks: \['click', 'conversion'\]"),
    ({"task_losses": {"conversion": {"loss": "bcee"}}},
     r"task_losses\.conversion: loss = 'bcee': unknown loss; known: \['bce', 'focal', 'rce'\]"),
    ({"task_losses": {"conversion": {"weight": -1}}},
     r"task_losses\.conversion\.weight = -1\.0: expected a finite number >= 0"),
    ({"task_losses": {"conversion": {"loss": "focal", "options": {"gama": 1}}}},
     r"task_losses\.conversion\.options\.gama: unknown option of loss 'focal'"),
    ({"early_stopping": {"monitor": "val_mean_acu"}},
     r"early_stopping\.monitor = 'val_mean_acu': not a metric this run logs; expected one of \['val_auc', "
     r"'val_logloss', 'val_mean_auc', 'val_mean_logloss', 'val_click_auc', 'val_click_logloss', "
     r"'val_conversion_auc', 'val_conversion_logloss'\]"),
    ({"early_stopping": {"monitor": "val_conversion_logloss", "mode": "max"}},
     r"mode 'max' with monitor 'val_conversion_logloss'.*use mode 'min'"),
    ({"model": {"heads": "tower"}}, r"model\.heads = 'tower': unknown heads; known: \['additive', 'towers'\]"),
    ({"model": {"heads": "towers", "head_options": {"units": [0]}}},
     r"model\.head_options\.units\[0\] = 0: expected an integer in \[1, inf\)"),
])
def test_config_errors_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train_config("unused", tmp_path, tasks=TASKS, **overrides)


def test_monitor_mode_follows_the_metric(tmp_path):
    for monitor, mode in (("val_mean_logloss", "min"), ("val_logloss", "min"), ("val_conversion_auc", "max"),
                          ("val_mean_auc", "max")):
        cfg = train_config("unused", tmp_path, tasks=TASKS, early_stopping={"monitor": monitor})
        assert cfg.early_stopping.mode == mode, monitor


def test_tasks_from_the_schema_are_checked_before_any_work(sim_data, tmp_path):
    """Without ``tasks`` the run's tasks are the schema's labels: an unknown task in
    task_losses fails when training starts, before a run directory is made."""
    from pipeline.train import train

    cfg = train_config(sim_data, tmp_path, tasks=None, task_losses={"like": {"weight": 2.0}})
    with pytest.raises(ConfigError, match=r"task_losses\.like: not a task of this run; tasks: \['click', 'conversion'\]"):
        train(cfg)
    assert not os.path.exists(os.path.join(tmp_path, "t"))


def test_init_from_a_run_recorded_before_the_heads_options(sim_data, tmp_path):
    """A run whose model.json predates ``model.heads`` / ``head_options`` was built with their
    defaults: warm start from it passes the model check; another heads choice fails naming it."""
    import dataclasses
    import json

    from features.schema import Schema
    from pipeline.train import check_init_from, model_schema

    schema = Schema.load(sim_data)
    sdict = model_schema(schema, schema.feature_names)
    old = tmp_path / "old"
    old.mkdir()
    cfg = train_config(sim_data, tmp_path, tasks=TASKS, init_from=str(old))
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ("heads", "head_options")}
    (old / "model.json").write_text(json.dumps({"schema": sdict, "tasks": TASKS, "model": model}))
    (old / "run.json").write_text(json.dumps({"schema_fingerprint": schema.fingerprint()}))
    (old / "done.json").write_text("{}")
    check_init_from(cfg, schema, sdict, TASKS)
    towers = train_config(sim_data, tmp_path, tasks=TASKS, init_from=str(old), **{"model.heads": "towers"})
    with pytest.raises(ConfigError, match=r"model\.heads is 'towers' in this config but 'additive' in that run"):
        check_init_from(towers, schema, sdict, TASKS)


# ---- the exact validation metrics ------------------------------------------------------------
def exact_validation(conversion_labels):
    """ExactValidation over 4 rows of a model scoring click 0.2, 0.6, 0.4, 0.8 and conversion 0.9, 0.1, 0.5, 0.3."""
    import tensorflow as tf

    from pipeline.train import ExactValidation

    class Fixed(tf.keras.Model):
        def call(self, x, training=None):
            return {"click": x["c"], "conversion": x["v"]}

    x = {"c": [[0.2], [0.6], [0.4], [0.8]], "v": [[0.9], [0.1], [0.5], [0.3]]}
    y = {"click": [[0.0], [1.0], [1.0], [0.0]], "conversion": [[v] for v in conversion_labels]}
    callback = ExactValidation(tf.data.Dataset.from_tensor_slices((x, y)).batch(3), TASKS, "valid")
    callback.set_model(Fixed())
    return callback


def test_every_task_and_the_mean_are_logged_by_hand():
    logs = {"loss": 1.0}
    exact_validation([0.0, 1.0, 0.0, 0.0]).on_epoch_end(0, logs)
    # click: positives 0.6, 0.4 vs negatives 0.2, 0.8 -> pairs won 2 of 4; conversion: 0.1 is below all 3
    want_auc = {"click": 0.5, "conversion": 0.0}
    logloss = lambda y, p: -np.mean(np.log(np.where(np.array(y) == 1, p, 1 - np.array(p))))  # noqa: E731
    want_ll = {"click": logloss([0, 1, 1, 0], [0.2, 0.6, 0.4, 0.8]),
               "conversion": logloss([0, 1, 0, 0], [0.9, 0.1, 0.5, 0.3])}
    for t in TASKS:
        assert logs[f"val_{t}_auc"] == pytest.approx(want_auc[t]) and logs[f"val_{t}_logloss"] == pytest.approx(want_ll[t])
    assert logs["val_mean_auc"] == pytest.approx(0.25)
    assert logs["val_mean_logloss"] == pytest.approx((want_ll["click"] + want_ll["conversion"]) / 2)
    assert (logs["val_auc"], logs["val_logloss"]) == (logs["val_click_auc"], logs["val_click_logloss"])
    assert logs["loss"] == 1.0


def test_a_task_with_one_class_in_the_valid_split_fails_naming_it():
    with pytest.raises(ConfigError, match=r"task 'conversion': the 'valid' split holds only labels 0, so its "
                                          r"validation AUC is undefined"):
        exact_validation([0.0, 0.0, 0.0, 0.0]).on_epoch_end(0, {})


# ---- a two-task run --------------------------------------------------------------------------
def keras_stop_epoch(values, mode, patience):
    """The epoch (1-based) after which Keras' EarlyStopping (min_delta 0, no baseline) stops on
    the per-epoch ``values``, or None if it would not stop within them."""
    better = np.less if mode == "min" else np.greater
    best, wait = None, 0
    for epoch, value in enumerate(values):
        wait += 1
        if best is None or better(value, best):
            best, wait = value, 0
            continue
        if wait >= patience and epoch > 0:
            return epoch + 1
    return None


def hand_losses(y, p):
    """Per task, the mean BCE / Focal(alpha 0.5, gamma 1) of TASK_LOSSES, in float64."""
    eps = 1e-7
    yc, pc = y["click"].reshape(-1), np.clip(p["click"].reshape(-1).astype(np.float64), eps, 1 - eps)
    bce = -np.mean(yc * np.log(pc) + (1 - yc) * np.log(1 - pc))
    yv, pv = y["conversion"].reshape(-1), np.clip(p["conversion"].reshape(-1).astype(np.float64), eps, 1 - eps)
    p_t = yv * pv + (1 - yv) * (1 - pv)
    a_t = yv * 0.5 + (1 - yv) * 0.5
    focal = np.mean(-a_t * (1 - p_t) * np.log(p_t))
    return {"click": bce, "conversion": focal}


def tensorboard_scalars(run_dir, sub="validation"):
    """{tag: [values]} of the epoch scalars TensorBoard wrote under ``tensorboard/<sub>``."""
    import tensorflow as tf

    out = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "tensorboard", sub, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return out


def test_two_task_run_weights_its_losses_logs_both_and_stops_on_the_second(sim_data, tmp_path):
    """Towers heads, BCE on click and weighted Focal on conversion, early stopping on the
    conversion AUC: the total loss is the hand-weighted sum of the task losses (on a batch
    and per epoch), both tasks' exact metrics and their means are in the history, history.csv
    and TensorBoard, and the run stops at the epoch the conversion AUC says, which the first task's
    AUC would not have said, with the best conversion epoch's weights."""
    from pipeline import metrics as M
    from pipeline.data import make_dataset
    from pipeline.predict import predict_labels
    from pipeline.train import compile_model, train
    from serving.run_artifacts import load_model

    epochs, patience = 6, 1
    cfg = two_task_config(sim_data, tmp_path, epochs=epochs,
                          model={"backbone": "dnn", "backbone_options": {"dnn_units": [32, 16]}, "embedding_dim": 8,
                                 "heads": "towers", "head_options": {"units": [8]}},
                          optimizer={"learning_rate": 0.01},
                          early_stopping={"monitor": "val_conversion_auc", "patience": patience})
    summary = train(cfg)
    hist, run_dir = summary["history"], summary["run_dir"]

    # every task's exact validation metrics, and their means, each epoch
    for t in TASKS:
        for m in ("auc", "logloss"):
            assert len(hist[f"val_{t}_{m}"]) == summary["epochs_run"], (t, m)
    for m in ("auc", "logloss"):
        np.testing.assert_allclose(hist[f"val_mean_{m}"],
                                   np.mean([hist[f"val_{t}_{m}"] for t in TASKS], axis=0), rtol=1e-12)
        np.testing.assert_array_equal(hist[f"val_{m}"], hist[f"val_click_{m}"])
    with open(os.path.join(run_dir, "history.csv")) as fh:
        rows = list(csv.DictReader(fh))
    for key in ("val_conversion_auc", "val_conversion_logloss", "val_mean_auc", "conversion_loss"):
        np.testing.assert_allclose([float(r[key]) for r in rows], hist[key], rtol=1e-12)
    board = tensorboard_scalars(run_dir)
    for t in ("click", "conversion", "mean"):
        np.testing.assert_allclose(board[f"epoch_{t}_auc"], hist[f"val_{t}_auc"], rtol=1e-6)
        np.testing.assert_allclose(board[f"epoch_{t}_logloss"], hist[f"val_{t}_logloss"], rtol=1e-6)

    # the epoch's training loss is the weighted sum of the tasks' (means are linear)
    np.testing.assert_allclose(hist["loss"], np.array(hist["click_loss"]) + 3.0 * np.array(hist["conversion_loss"]),
                               rtol=1e-5)

    # early stopping followed the conversion AUC, not the first task's (it would stop elsewhere),
    # and the run ends with the weights of the best conversion epoch
    want = keras_stop_epoch(hist["val_conversion_auc"], "max", patience)
    assert want is not None and summary["epochs_run"] == want < epochs, hist["val_conversion_auc"]
    assert keras_stop_epoch(hist["val_auc"], "max", patience) != want, hist["val_auc"]
    model, _, tasks = load_model(run_dir)
    valid = make_dataset(sim_data, "valid", 4096, shuffle=False, labels=TASKS)
    y, p = predict_labels(model, valid, TASKS)
    assert M.auc(y["conversion"], p["conversion"]) == pytest.approx(max(hist["val_conversion_auc"]), abs=1e-9)

    # the compiled total loss on a batch = 1 * BCE(click) + 3 * Focal(conversion), by hand
    compile_model(model, cfg, tasks)
    x, labels = next(iter(make_dataset(sim_data, "valid", 1024, shuffle=False, labels=TASKS)))[:2]
    got = model.test_on_batch(x, labels, return_dict=True)
    pred = {t: v.numpy() for t, v in model(x, training=False).items()}
    want_losses = hand_losses({t: labels[t].numpy() for t in TASKS}, pred)
    for t in TASKS:
        assert got[f"{t}_loss"] == pytest.approx(want_losses[t], rel=1e-5), t
    assert got["loss"] == pytest.approx(want_losses["click"] + 3.0 * want_losses["conversion"], rel=1e-5)
