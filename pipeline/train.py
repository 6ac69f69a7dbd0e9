"""The training driver: ``ctrflow train --config train.yaml``.

Keras ``fit`` on the TFRecords under a ``tf.distribute`` strategy, with exact
validation AUC for early stopping, checkpoints of the best weights, a per-epoch backup
from which a killed run resumes to the same model and history as an uninterrupted one
(:class:`RunBackup`), TensorBoard and CSV logs, deterministic seeds, optional mixed
precision and XLA, and non-finite values (inputs, logits, gradients, weights) stopping
the run with :class:`NanLossError` naming the step (and the feature).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf

from features import outputs
from features.schema import Schema
from models.steps import NONFINITE_MARK
from models.factory import build_model
from models.layers import mixed_precision
from pipeline import metrics as M
from pipeline import runs
from pipeline.config import ConfigError
from pipeline.data import batches_per_pass, make_dataset, source_filter, weight_columns
from pipeline.analyses import analysis_callbacks
from pipeline.optimizers import learning_rate_at, make_optimizer
from pipeline.predict import predict_labels
from pipeline.strategy import auto_shard_policy, is_chief, make_strategy
# the config lives in pipeline/train_config.py (runs.py reads it too); importable from here as before
from pipeline.train_config import (MEAN, EarlyStoppingConfig, ModelConfig, OptimizerConfig,  # noqa: F401
                                   TaskLoss, TrainConfig, monitored_metrics)
from serving import run_artifacts


class NanLossError(FloatingPointError):
    """Training met a non-finite value (NaN or infinity) in an input, logit, gradient, weight or
    the loss; the message names the step (and the feature, logit or weight where known)."""


_NONFINITE = re.compile(re.escape(NONFINITE_MARK) + r": ([^\]]*)\] \[([^\]]*)\] \[at step\] \[(\d+)\]")


def nonfinite_error(exc: tf.errors.InvalidArgumentError, steps_per_epoch: int) -> Optional[NanLossError]:
    """The :class:`NanLossError` a failed finiteness check of the compiled training step
    (``models.steps.finite_or_stop``) stands for, or None for any other error."""
    found = _NONFINITE.search(str(exc))
    if found is None:
        return None
    what, step = found.group(1), int(found.group(3))
    names = ", ".join(f"'{n}'" for n in found.group(2).split(", "))
    epoch, batch = divmod(step - 1, steps_per_epoch)
    where = f"at training step {step} (epoch {epoch + 1}, batch {batch + 1} of {steps_per_epoch})"
    if what == "input feature":
        return NanLossError(f"non-finite value (NaN or infinity) in {what} {names} {where}: the training "
                            f"data holds it; fix the input (ctrflow preprocess quarantines such rows)")
    return NanLossError(f"non-finite {what} {names} {where}: training diverged; lower optimizer.learning_rate, "
                        f"set optimizer.clipnorm, or check the input statistics")


class NanGuard(tf.keras.callbacks.Callback):
    """At each epoch end, stop if the loss or any weight is non-finite, naming the epoch.

    The compiled step checks inputs, logits and gradients (``models.steps``); this
    epoch-level check is the backstop where those checks do not run (XLA compiles them
    away) and catches an update that overflowed a weight. It runs before the run's backup,
    so a non-finite model is never backed up."""

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        bad = [] if loss is None or math.isfinite(float(loss)) else ["the loss"]
        bad += [w.name for w in self.model.weights if not np.isfinite(w.numpy()).all()]
        if bad:
            self.model.stop_training = True
            raise NanLossError(f"non-finite values at the end of epoch {epoch + 1} (after step "
                               f"{int(self.model.optimizer.iterations.numpy())}) in {', '.join(bad[:5])}: lower "
                               f"optimizer.learning_rate, set optimizer.clipnorm, or check the input statistics")


class RunBackup(tf.keras.callbacks.Callback):
    """The run's per-epoch history and its backup (``runs.write_backup``); last in the list.

    At each epoch end (after EarlyStopping and ModelCheckpoint updated their state) it adds
    the epoch's logs to the history, backs up the model, optimizer, history and the state of
    those two callbacks as one epoch, and rewrites ``history.csv`` from the history. At train
    begin of a resumed run it gives them back the state their own ``on_train_begin`` reset,
    so the resumed run decides (best epoch, patience, best weights) as the uninterrupted one.
    """

    def __init__(self, run_dir: str, early_stopping, checkpoint, resumed=None):
        super().__init__()
        self.run_dir, self.early_stopping, self.checkpoint = run_dir, early_stopping, checkpoint
        state, self._best_weights = resumed or ({}, [])
        self.state = state
        self.history: Dict[str, List[float]] = {k: list(v) for k, v in state.get("history", {}).items()}

    @property
    def finished(self) -> bool:
        """The backed-up run had stopped early (a kill after its last epoch)."""
        return bool(self.state.get("stopped"))

    def on_train_begin(self, logs=None):
        es, saved = self.early_stopping, self.state.get("early_stopping")
        if saved:
            es.wait, es.stopped_epoch, es.best, es.best_epoch = (saved[k] for k in _ES_STATE)
            es.best_weights = self._best_weights or None
            self.checkpoint.best = self.state["checkpoint_best"]
        self._write_csv()

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        es = self.early_stopping
        self.state = {"epoch": epoch + 1, "history": self.history, "stopped": bool(self.model.stop_training),
                      "early_stopping": {k: _plain(getattr(es, k)) for k in _ES_STATE},
                      "checkpoint_best": _plain(self.checkpoint.best)}
        runs.write_backup(self.run_dir, epoch + 1, self.model, self.state, list(es.best_weights or []))
        self._write_csv()

    def end_without_fit(self, model) -> None:
        """A run killed after its last epoch's backup has no epoch left to fit: end it as fit
        would have (the early stopping's best weights restored at train end), so its saved model
        is the uninterrupted run's."""
        for callback in (self, self.early_stopping):
            callback.set_model(model)
        self.on_train_begin()
        self.early_stopping.on_train_end()

    def _write_csv(self):
        path = os.path.join(self.run_dir, "history.csv")
        if not self.history:  # a fresh start: no epoch yet (and none of a killed run without backup)
            if os.path.exists(path):
                os.remove(path)
            return
        keys = sorted(self.history)
        rows = len(next(iter(self.history.values()), []))
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["epoch", *keys])
        writer.writerows([[e, *(self.history[k][e] for k in keys)] for e in range(rows)])
        outputs.write_file_atomic(path, text.getvalue())


_ES_STATE = ("wait", "stopped_epoch", "best", "best_epoch")


class LearningRateLog(tf.keras.callbacks.Callback):
    """Adds ``lr`` to each epoch's logs (history, ``history.csv``, TensorBoard's ``epoch_lr``): the
    learning rate of the epoch's last step (a ``step`` schedule's rate for the whole epoch; Keras'
    own ``epoch_learning_rate`` in TensorBoard is the rate of the step after the epoch)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            optimizer = self.model.optimizer
            logs["lr"] = learning_rate_at(optimizer, optimizer.iterations - 1)


def _plain(value):
    """A JSON-ready number (numpy scalars as Python's; infinities are kept: json writes Infinity)."""
    return value.item() if hasattr(value, "item") else value


class ExactValidation(tf.keras.callbacks.Callback):
    """Exact AUC and LogLoss of every task on the valid split at each epoch end, added to the logs.

    Runs before EarlyStopping / ModelCheckpoint / TensorBoard / the run's history in the
    callback list so they all see ``val_<task>_auc`` / ``val_<task>_logloss`` per task, their
    means over the tasks (``val_mean_auc`` / ``val_mean_logloss``) and the first task's as
    ``val_auc`` / ``val_logloss`` (:func:`pipeline.train_config.monitored_metrics`).
    Keras' own AUC metric uses 200 thresholds; the papers' AUC is exact.
    """

    def __init__(self, dataset: tf.data.Dataset, tasks: List[str], split: str = "valid"):
        super().__init__()
        self.dataset, self.tasks, self.split = dataset, tasks, split

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        y, p = predict_labels(self.model, self.dataset, self.tasks)
        aucs = [self._auc(y[t], p[t], t) for t in self.tasks]
        loglosses = [M.logloss(y[t], p[t]) for t in self.tasks]
        for metric, values in (("auc", aucs), ("logloss", loglosses)):
            logs.update({f"val_{t}_{metric}": v for t, v in zip(self.tasks, values)})
            logs[f"val_{metric}"], logs[f"val_{MEAN}_{metric}"] = values[0], float(np.mean(values))

    def _auc(self, y, p, task) -> float:
        """The exact AUC; a split with one class of ``task``'s labels is the user's to fix."""
        if y.min() == y.max():
            raise ConfigError(f"task '{task}': the '{self.split}' split holds only labels {y.max():g}, so its "
                              f"validation AUC is undefined; drop the task from `tasks` or split the data anew")
        return M.auc(y, p)


def make_losses(cfg: TrainConfig, tasks: List[str]) -> tuple:
    """({task: loss}, {task: weight}) for ``compile``: the total loss is the weighted sum of the
    tasks' losses (``TrainConfig.task_losses``, else ``loss`` / ``loss_options`` with weight 1)."""
    from models.losses import get_loss

    specs = {t: cfg.task_loss(t) for t in tasks}
    return ({t: get_loss(s.loss, **s.options) for t, s in specs.items()},
            {t: s.weight for t, s in specs.items()})


def check_stages(model: tf.keras.Model, cfg: TrainConfig) -> None:
    """``phase_optimizers`` names exactly the optimizers of the framework's phases, ``freeze``
    only its variable groups (ConfigError naming the key)."""
    wanted = model.phase_optimizer_names()
    if sorted(cfg.phase_optimizers) != wanted:
        raise ConfigError(f"phase_optimizers = {sorted(cfg.phase_optimizers)}: framework '{cfg.model.framework}' "
                          f"alternates phases with the optimizers {wanted}; give exactly those")
    groups = sorted(model.variable_groups())
    unknown = sorted(set(cfg.freeze) - set(groups))
    if unknown:
        raise ConfigError(f"freeze = {list(cfg.freeze)}: {unknown} not a variable group of framework "
                          f"'{cfg.model.framework}'; groups: {groups}")


def compile_model(model: tf.keras.Model, cfg: TrainConfig, tasks: List[str],
                  steps_per_epoch: Optional[int] = None) -> None:
    """Compile ``model`` for training: optimizer (and its phases' optimizers), per-task losses and
    weights, Keras' AUC per task; then freeze the stage's variable groups (``freeze``).
    ``steps_per_epoch``: the run's, which a ``step`` learning-rate schedule counts its epochs in
    (None: counted from the train split when a schedule needs it)."""
    check_stages(model, cfg)
    losses, weights = make_losses(cfg, tasks)
    optimizers = {None: cfg.optimizer, **cfg.phase_optimizers}
    if steps_per_epoch is None and any(o.schedule.type != "none" for o in optimizers.values()):
        steps_per_epoch = _steps_per_epoch(cfg, cfg.strategy.name == "parameter_server", None)
    built = {k: _make_optimizer(o, steps_per_epoch) for k, o in optimizers.items()}
    model.compile(optimizer=built.pop(None), loss=losses, loss_weights=weights,
                  metrics={t: [tf.keras.metrics.AUC(name="auc", num_thresholds=1000)] for t in tasks},
                  jit_compile=cfg.jit_compile, steps_per_execution=cfg.steps_per_execution,
                  phase_optimizers=built, dropout_impl=cfg.dropout_impl)
    if cfg.freeze:
        model.freeze(*cfg.freeze)


def _make_optimizer(cfg: OptimizerConfig, steps_per_epoch: Optional[int]):
    try:
        return make_optimizer(cfg, steps_per_epoch)
    except ValueError as exc:  # e.g. options Keras refuses together
        raise ConfigError(f"optimizer '{cfg.name}': {exc}") from None


def resolve(cfg: TrainConfig) -> tuple:
    """Check the config against the data before any work: (schema, tasks, features)."""
    if not os.path.isdir(cfg.data_dir):
        raise ConfigError(f"data_dir '{cfg.data_dir}' does not exist: run `ctrflow preprocess` first")
    schema = Schema.load(cfg.data_dir)
    weight_columns(schema, cfg.sample_weight)  # a SchemaError naming sample_weight if the column is not there
    source_filter(schema, cfg.sources)  # a SchemaError naming sources if the data has no source column
    tasks = list(cfg.tasks or schema.labels)
    feats = list(cfg.features or schema.feature_names)
    schema.check_names(features=feats, labels=tasks, what="training config")
    for split in [cfg.train_split, cfg.valid_split, *cfg.eval_splits]:
        if not os.path.isdir(os.path.join(cfg.data_dir, split)):
            raise ConfigError(f"split '{split}' is missing under data_dir '{cfg.data_dir}'")
    cfg.check_tasks(tasks)
    if cfg.freeze or cfg.phase_optimizers:  # else compile_model checks (building a model here could start
        # TensorFlow's runtime before a MultiWorkerMirroredStrategy is made)
        check_stages(new_model(cfg, schema, tasks, feats), cfg)
    return schema, tasks, feats


def model_schema(schema: Schema, features: List[str]) -> dict:
    """The schema restricted to the selected features (what the model is built from)."""
    d = schema.to_dict()
    d["features"] = [f for f in d["features"] if f["name"] in features]
    return d


def new_model(cfg: TrainConfig, schema: Schema, tasks: List[str], features: List[str]) -> tf.keras.Model:
    """The config's model (framework, backbone, heads, ...) on the selected features, untrained."""
    return build_model(model_schema(schema, features), tasks, **dataclasses.asdict(cfg.model))


def check_init_from(cfg: TrainConfig, schema: Schema, sdict: dict, tasks: List[str]) -> None:
    """``init_from`` must be a completed run trained on this schema (same fingerprint) with the
    same features, tasks and model config, so its weights fit this model one to one; raises
    ConfigError naming both fingerprints or the first differing option."""
    run = cfg.init_from
    spec = run_artifacts.model_spec(run)
    theirs, ours = run_artifacts.run_info(run).get("schema_fingerprint"), schema.fingerprint()
    if theirs != ours:
        raise ConfigError(f"init_from = '{run}': that run was trained on schema fingerprint {theirs}, but data_dir "
                          f"'{cfg.data_dir}' has {ours}; warm start needs the same schema (encode new data with "
                          f"`ctrflow preprocess --schema <that run's data dir>`)")
    ours_spec = json.loads(json.dumps({"features": [f["name"] for f in sdict["features"]], "tasks": tasks,
                                       "model": dataclasses.asdict(cfg.model)}))
    # a key that run's model.json lacks (an option added since) had its default
    defaults = json.loads(json.dumps(dataclasses.asdict(ModelConfig())))
    theirs_spec = {"features": [f["name"] for f in spec["schema"]["features"]], "tasks": spec["tasks"],
                   "model": {**defaults, **spec["model"]}}
    where = _first_difference(ours_spec, theirs_spec)
    if where is not None:
        key, mine, other = where
        raise ConfigError(f"init_from = '{run}': {key} is {mine!r} in this config but {other!r} in that run; "
                          f"warm start needs the same model")


def _first_difference(a: Any, b: Any, prefix: str = "") -> Optional[tuple]:
    """(dotted key, a's value, b's value) of the first difference of two JSON values, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def warm_start(model: tf.keras.Model, run_dir: str, batch) -> None:
    """Copy the final weights of the completed run ``run_dir`` into the built ``model`` (same
    config: :func:`check_init_from`); the optimizer and its step count start fresh."""
    init, _, _ = run_artifacts.load_model(run_dir)
    init(batch, training=False)
    with tempfile.TemporaryDirectory(prefix="ctrflow-init-") as tmp:
        # through a checkpoint of the never-compiled ``init`` (weights, no optimizer): tables
        # sharded over parameter servers are filled slice by slice, which set_weights cannot do
        path = tf.train.Checkpoint(model=init).write(os.path.join(tmp, "init"))
        tf.train.Checkpoint(model=model).read(path).expect_partial()


def train(cfg: TrainConfig, config_name: str = "train", overwrite: bool = False) -> Dict[str, Any]:
    """Train one model; returns a summary with the run directory and best validation metrics.

    The config's ``precision`` is Keras' global policy (and ``precision_placement`` the
    mixed layers') while this runs; the caller's policy is restored afterwards (a later
    export or training in the same process is unaffected)."""
    with mixed_precision(cfg.precision, cfg.precision_placement):
        return _train(cfg, config_name, overwrite)


def _train(cfg: TrainConfig, config_name: str, overwrite: bool) -> Dict[str, Any]:
    schema, tasks, feats = resolve(cfg)
    sdict = model_schema(schema, feats)
    if cfg.init_from:
        check_init_from(cfg, schema, sdict, tasks)
    with runs.open_run(cfg, config_name, schema, overwrite=overwrite) as run_dir:
        return _train_in(cfg, run_dir, schema, tasks, feats, sdict)


def _train_in(cfg: TrainConfig, run_dir: str, schema: Schema, tasks: List[str], feats, sdict: dict) -> Dict[str, Any]:
    """Train into ``run_dir`` (opened and locked by :func:`runs.open_run`): every stage,
    resuming completed ones, then save the model and mark the run done."""
    tf.keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(cfg.strategy)
    is_ps = cfg.strategy.name == "parameter_server"
    steps = _steps_per_epoch(cfg, is_ps, schema)
    valid_ds = make_dataset(cfg.data_dir, cfg.valid_split, cfg.eval_batch_size, shuffle=False,
                            deterministic=True, cache=cfg.cache, labels=tasks, schema=schema,
                            sample_weight=cfg.sample_weight)
    with strategy.scope():
        model = new_model(cfg, schema, tasks, feats)
        compile_model(model, cfg, tasks, steps)
        sample = next(iter(valid_ds))[0]
        model(sample, training=False)  # build the weights: a backup restores into them
    if cfg.init_from:  # a resumed run's backup (read next) replaces these weights
        warm_start(model, cfg.init_from, sample)
    stages = model.stages()
    staged = len(stages) > 1
    done = runs.completed_stages(run_dir, [s.name for s in stages], model) if staged else {}
    t0, results, history = time.time(), {}, {}
    for index, stage in enumerate(stages):
        if stage.name in done:  # a resumed run: the stage's outcome, its weights restored once
            results[stage.name] = done[stage.name]
            history = done[stage.name].get("history") or history
            continue
        stage_dir = runs.stage_dir(run_dir, index, stage.name) if staged else run_dir
        model.enter_stage(stage.name)
        if stage.fit:
            if results:  # a later fit stage: a fresh optimizer (and schedule) for its own weights
                with strategy.scope():
                    compile_model(model, cfg, tasks, steps)
            model.freeze(*cfg.freeze, *stage.frozen)
            history = _fit(cfg, model, stage_dir, run_dir, valid_ds, tasks, steps, strategy, schema, is_ps)
            results[stage.name] = {"history": history}
        else:
            results[stage.name] = {"result": model.run_stage(stage.name, _stage_data(cfg, schema, tasks))}
        if staged and is_chief():
            runs.finish_stage(stage_dir, model, results[stage.name])
    summary = {"run_dir": run_dir, "epochs_run": len(history.get("loss", [])),
               "seconds": time.time() - t0, "history": history}
    if staged:
        summary["stages"] = results
    if is_chief():
        if staged:
            runs.write_stage_history(run_dir, results)
        runs.save_model(model, run_dir, sdict, tasks, cfg)
        runs.mark_done(run_dir, summary)
    else:
        runs.drop_backup(run_dir)  # this worker's part is done; the chief marks the run
    return summary


def _fit(cfg: TrainConfig, model: tf.keras.Model, stage_dir: str, run_dir: str, valid_ds, tasks: List[str],
         steps: int, strategy, schema: Schema, is_ps: bool) -> Dict[str, List[float]]:
    """One fit stage (a whole ordinary run): Keras fit with the run's callbacks, its backup,
    checkpoints, TensorBoard and ``history.csv`` in ``stage_dir``, resumed from the stage's backup;
    returns its history."""
    resumed = runs.read_backup(stage_dir, model)
    first_epoch = resumed[0]["epoch"] if resumed else 0

    def train_ds(input_context=None):
        # one endless stream whose order is a function of (seed, position): a resumed run reads
        # on from where the killed one stopped; PS workers build it inside a tf.function (streaming only)
        ds = make_dataset(cfg.data_dir, cfg.train_split, _per_replica_batch(cfg, strategy, input_context),
                          shuffle=True, repeat=True, start_batch=first_epoch * steps,
                          deterministic=cfg.deterministic, seed=cfg.seed, cache=cfg.cache and not is_ps,
                          shuffle_buffer=cfg.shuffle_buffer, drop_remainder=True, labels=tasks, schema=schema,
                          sample_weight=cfg.sample_weight, sources=cfg.sources)
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return _with_shard_policy(ds, cfg)

    callbacks = _callbacks(cfg, stage_dir, run_dir, valid_ds, tasks, is_ps=is_ps, resumed=resumed)
    backup = callbacks[-1]
    if not backup.finished and first_epoch < cfg.epochs:
        x = tf.keras.utils.experimental.DatasetCreator(train_ds) if is_ps else train_ds()
        validation = {}
        if is_ps:  # PS workers need an endless validation input and a step count (Keras AUC is used there)
            validation = {"validation_data": valid_ds.repeat(),
                          "validation_steps": sum(1 for _ in valid_ds)}
        try:
            model.fit(x, epochs=cfg.epochs, initial_epoch=first_epoch, steps_per_epoch=steps, **validation,
                      callbacks=callbacks, verbose=cfg.verbose if is_chief() else 0)
        except tf.errors.InvalidArgumentError as exc:
            error = nonfinite_error(exc, steps)
            if error is None:
                raise
            raise error from None
    else:
        backup.end_without_fit(model)
    return backup.history


def _stage_data(cfg: TrainConfig, schema: Schema, tasks: List[str]):
    """``data(split)`` for a non-fit stage: one ordered pass over the train split (its ``sources``)
    or the valid split, batches of ``eval_batch_size``."""
    def data(split: str) -> tf.data.Dataset:
        name = {"train": cfg.train_split, "valid": cfg.valid_split}[split]
        return make_dataset(cfg.data_dir, name, cfg.eval_batch_size, shuffle=False, deterministic=True,
                            cache=False, labels=tasks, schema=schema, sample_weight=cfg.sample_weight,
                            sources=cfg.sources if split == "train" else None)
    return data


def _steps_per_epoch(cfg: TrainConfig, is_ps: bool, schema: Schema) -> int:
    """``steps_per_epoch``, or the batches of one pass over the train split's rows of
    ``sources`` (an epoch)."""
    if cfg.steps_per_epoch is not None:
        return cfg.steps_per_epoch
    if is_ps:
        raise ConfigError("strategy parameter_server needs steps_per_epoch (the input repeats)")
    steps = batches_per_pass(cfg.data_dir, cfg.train_split, cfg.batch_size, drop_remainder=True,
                             sources=cfg.sources, schema=schema)
    if steps < 1:
        held = f"'{cfg.train_split}' split" + (f" (its rows of sources {cfg.sources})" if cfg.sources else "")
        raise ConfigError(f"batch_size = {cfg.batch_size}: the {held} holds fewer rows; "
                          f"expected a batch_size of at most its number of rows")
    return steps


def _per_replica_batch(cfg, strategy, input_context):
    if input_context is not None:
        return input_context.get_per_replica_batch_size(cfg.batch_size)
    return cfg.batch_size


def _with_shard_policy(ds, cfg):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = auto_shard_policy(cfg.strategy)
    return ds.with_options(options)


def _callbacks(cfg: TrainConfig, stage_dir: str, run_dir: str, valid_ds, tasks, is_ps: bool, resumed=None):
    """The callbacks of a fit stage (``stage_dir``: the run directory, or a stage's folder of a
    staged run; the analyses write to the run directory) in the order their epoch ends must run: the guard first (nothing
    non-finite is validated or backed up), exact validation before everything that reads
    ``val_*``, :class:`RunBackup` last (it saves the others' state)."""
    es = cfg.early_stopping
    cbs: List[tf.keras.callbacks.Callback] = [NanGuard(), LearningRateLog()]
    use_exact = not is_ps  # exact validation predicts in-process; PS workers validate with Keras' AUC
    if use_exact:  # the served tasks: a framework may train more than it serves (STEM-AL)
        cbs.append(ExactValidation(valid_ds, cfg.served_tasks(tasks), cfg.valid_split))
    monitor = es.monitor if use_exact else _keras_monitor(es.monitor, tasks)
    checkpoint = tf.keras.callbacks.ModelCheckpoint(os.path.join(stage_dir, "checkpoints", "best"), monitor=monitor,
                                                    mode=es.mode, save_best_only=True, save_weights_only=True)
    stopping = tf.keras.callbacks.EarlyStopping(monitor=monitor, mode=es.mode, patience=es.patience,
                                                restore_best_weights=es.restore_best_weights)
    cbs += [checkpoint, stopping,
            tf.keras.callbacks.TensorBoard(os.path.join(stage_dir, "tensorboard"), update_freq="epoch",
                                           profile_batch=tuple(cfg.profile_batches or (0, 0)))]
    if not is_ps:
        cbs += analysis_callbacks(cfg, run_dir, tasks)
    return cbs + [RunBackup(stage_dir, stopping, checkpoint, resumed)]


def _keras_monitor(monitor: str, tasks: List[str]) -> str:
    """The name Keras logs ``monitor`` under (``parameter_server``): with several tasks the first
    task's AUC is ``val_<task>_auc``, not ``val_auc``."""
    return f"val_{tasks[0]}_auc" if monitor == "val_auc" and len(tasks) > 1 else monitor
