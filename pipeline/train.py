"""The training driver: ``ctrflow train --config train.yaml``.

Keras ``fit`` on the TFRecords under a ``tf.distribute`` strategy, with exact
validation AUC for early stopping, checkpoints of the best weights,
``BackupAndRestore`` (a killed run resumes at the epoch it stopped in), TensorBoard
and CSV logs, deterministic seeds, optional mixed precision and XLA, and a guard
that stops on a NaN loss naming the epoch and step.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import time
from typing import Any, Dict, List, Optional

import tensorflow as tf

from features.schema import Schema
from models.factory import build_model, check_model_options
from models.losses import check_loss_options
from models.options import check_options
from models.layers import global_policy
from pipeline import metrics as M
from pipeline import runs
from pipeline.config import ConfigError, option
from pipeline.data import make_dataset
from pipeline.predict import predict_labels
from pipeline.difficulty import ANALYSES, analysis_callbacks
from pipeline.strategy import StrategyConfig, auto_shard_policy, is_chief, make_strategy


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class ModelConfig:
    backbone: str = "dcnv2"  # a name from models.backbones.BACKBONES
    backbone_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    embedding_dim: int = option(16, min=1)
    embedding_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    framework: str = "none"  # a name from models.factory.FRAMEWORKS
    framework_options: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OptimizerConfig:
    name: str = "adam"  # any tf.keras.optimizers name
    learning_rate: float = option(1e-3, gt=0)
    clipnorm: Optional[float] = option(None, gt=0)
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # the optimizer's own arguments


# options of a Keras optimizer that are not ``optimizer.options`` (own keys, or the trainer's)
_OPTIMIZER_OWN = ("self", "name", "learning_rate", "clipnorm", "jit_compile")
OPTIMIZER_RANGES = {"weight_decay": "[0, inf)", "clipvalue": "(0, inf)", "global_clipnorm": "(0, inf)",
                    "ema_overwrite_frequency": "[1, inf)", "epsilon": "[0, inf)"}
OPTIMIZER_TYPES = {"weight_decay": float, "clipvalue": float, "global_clipnorm": float,
                   "ema_overwrite_frequency": int}  # options whose default is None


def check_optimizer(cfg: OptimizerConfig, prefix: str = "optimizer.") -> Dict[str, Any]:
    """The optimizer's name and ``options`` checked against its constructor (names, types of the
    defaults, :data:`OPTIMIZER_RANGES`); returns the checked options."""
    try:
        cls = type(tf.keras.optimizers.get(cfg.name))
    except ValueError:
        known = sorted(n.lower() for n, c in vars(tf.keras.optimizers).items()
                       if isinstance(c, type) and issubclass(c, tf.keras.optimizers.Optimizer)
                       and c is not tf.keras.optimizers.Optimizer)
        raise ConfigError(f"{prefix}name = {cfg.name!r}: unknown optimizer; known: {known}") from None
    params = inspect.signature(cls.__init__).parameters.values()
    defaults = {p.name: p.default for p in params
                if p.name not in _OPTIMIZER_OWN and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return check_options(cfg.options, defaults, f"{prefix}options.", f"optimizer '{cfg.name}'",
                         OPTIMIZER_RANGES, types=OPTIMIZER_TYPES)


MONITOR_MODES = {"auc": "max", "logloss": "min", "loss": "min"}  # metric suffix -> the improving direction


@dataclasses.dataclass
class EarlyStoppingConfig:
    monitor: str = "val_auc"  # exact AUC of the first task on the valid split; see logged_metrics()
    mode: str = option("max", choices=("min", "max"))
    patience: int = option(2, min=0)
    restore_best_weights: bool = True

    def __post_init__(self):
        suffix = self.monitor.rsplit("_", 1)[-1]
        if suffix in MONITOR_MODES and self.mode != MONITOR_MODES[suffix]:
            raise ConfigError(f"mode '{self.mode}' with monitor '{self.monitor}': {suffix} improves as it "
                              f"{'rises' if MONITOR_MODES[suffix] == 'max' else 'falls'}, "
                              f"use mode '{MONITOR_MODES[suffix]}'")


@dataclasses.dataclass
class TrainConfig:
    data_dir: str
    runs_dir: str = "runs"
    run_name: Optional[str] = None
    tasks: Optional[List[str]] = None  # default: every label of the schema
    features: Optional[List[str]] = None  # default: every feature of the schema
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    loss: str = "bce"  # a name from models.losses.LOSSES
    loss_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = option(4096, min=1)
    eval_batch_size: int = option(16384, min=1)
    epochs: int = option(10, min=1)
    steps_per_epoch: Optional[int] = option(None, min=1)
    seed: int = option(2024, min=0)
    deterministic: bool = True
    shuffle_buffer: int = option(200_000, min=1)
    cache: bool = True
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    # float32 | mixed_float16 (GPU) | mixed_bfloat16 (TPU, CPUs with AVX512-BF16/AMX)
    precision: str = option("float32", choices=PRECISIONS)
    jit_compile: bool = False
    steps_per_execution: int = option(1, min=1)  # training steps per tf.function call (less Python overhead)
    train_split: str = "train"
    valid_split: str = "valid"
    eval_splits: List[str] = dataclasses.field(default_factory=lambda: ["test"])
    analysis: List[str] = option(factory=list, choices=ANALYSES)  # e.g. [difficulty] (on by default for tf4ctr)
    # [first, last] steps traced by the TF profiler into tensorboard/
    profile_batches: Optional[List[int]] = option(None, min=1, length=2)
    verbose: int = option(1, choices=(0, 1, 2))

    def __post_init__(self):
        """Checks against the models' and Keras' option tables (free-form dicts), naming the key."""
        for key, value in check_model_options(**dataclasses.asdict(self.model)).items():
            setattr(self.model, key, value)
        self.optimizer.options = check_optimizer(self.optimizer)
        self.loss_options = check_loss_options(self.loss, self.loss_options)
        for name in ("tasks", "features", "eval_splits"):
            names = getattr(self, name) or []
            if len(set(names)) != len(names):
                raise ConfigError(f"{name} = {names}: expected distinct names")
        pb = self.profile_batches
        if pb is not None and not (len(pb) == 2 and 1 <= int(pb[0]) <= int(pb[1])):
            raise ConfigError(f"profile_batches must be [first, last] steps with 1 <= first <= last, got {pb}")


class NanLossError(FloatingPointError):
    """Training produced a non-finite loss."""


class NanGuard(tf.keras.callbacks.Callback):
    """Stop at the first non-finite epoch loss, saying which epoch.

    ``ParameterServerStrategy`` allows no batch-level callbacks, so this epoch-level
    guard is what runs there; :class:`BatchNanGuard` checks every step elsewhere.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check(self, logs, where: str):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise NanLossError(f"loss became {loss} at epoch {self._epoch + 1}{where}: lower the learning "
                               f"rate, set optimizer.clipnorm, or check the input statistics")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, "")


class BatchNanGuard(NanGuard):
    """:class:`NanGuard` checked after every training step, naming the step and batch."""

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f", step {batch + 1} (batch index {batch} of the epoch)")


class ExactValidation(tf.keras.callbacks.Callback):
    """Exact AUC and LogLoss on the valid split at each epoch end, added to the logs.

    Runs before EarlyStopping / ModelCheckpoint / CSVLogger / TensorBoard in the
    callback list so they all see ``val_auc`` (first task) and ``val_<task>_auc``.
    Keras' own AUC metric uses 200 thresholds; the papers' AUC is exact.
    """

    def __init__(self, dataset: tf.data.Dataset, tasks: List[str]):
        super().__init__()
        self.dataset = dataset
        self.tasks = tasks

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        y, p = predict_labels(self.model, self.dataset, self.tasks)
        for i, task in enumerate(self.tasks):
            auc = M.auc(y[task], p[task])
            ll = M.logloss(y[task], p[task])
            logs[f"val_{task}_auc"] = auc
            logs[f"val_{task}_logloss"] = ll
            if i == 0:
                logs["val_auc"], logs["val_logloss"] = auc, ll


def make_optimizer(cfg: OptimizerConfig) -> tf.keras.optimizers.Optimizer:
    kwargs = dict(cfg.options)
    kwargs["learning_rate"] = cfg.learning_rate
    if cfg.clipnorm is not None:
        kwargs["clipnorm"] = cfg.clipnorm
    try:
        opt = tf.keras.optimizers.get({"class_name": cfg.name, "config": kwargs})
    except ValueError as exc:
        raise ConfigError(f"optimizer '{cfg.name}': {exc}") from None
    return opt


def make_losses(cfg: TrainConfig, tasks: List[str]):
    from models.losses import get_loss

    return {t: get_loss(cfg.loss, **cfg.loss_options) for t in tasks}


def resolve(cfg: TrainConfig) -> tuple:
    """Check the config against the data before any work: (schema, tasks, features)."""
    if not os.path.isdir(cfg.data_dir):
        raise ConfigError(f"data_dir '{cfg.data_dir}' does not exist: run `ctrflow preprocess` first")
    schema = Schema.load(cfg.data_dir)
    tasks = list(cfg.tasks or schema.labels)
    feats = list(cfg.features or schema.feature_names)
    schema.check_names(features=feats, labels=tasks, what="training config")
    for split in [cfg.train_split, cfg.valid_split, *cfg.eval_splits]:
        if not os.path.isdir(os.path.join(cfg.data_dir, split)):
            raise ConfigError(f"split '{split}' is missing under data_dir '{cfg.data_dir}'")
    monitors = monitored_metrics(tasks, cfg.strategy.name == "parameter_server")
    if cfg.early_stopping.monitor not in monitors:
        raise ConfigError(f"early_stopping.monitor = {cfg.early_stopping.monitor!r}: not a metric this run "
                          f"logs; expected one of {monitors}")
    return schema, tasks, feats


def monitored_metrics(tasks: List[str], is_ps: bool) -> List[str]:
    """What ``early_stopping.monitor`` may name: the validation metrics the run logs each epoch.

    :class:`ExactValidation` logs ``val_auc`` / ``val_logloss`` (first task) and
    ``val_<task>_auc`` / ``val_<task>_logloss``; under ``parameter_server`` the run monitors
    Keras' validation AUC of the first task (``val_auc``, or ``val_<task>_auc`` with several tasks).
    """
    if is_ps:
        return sorted({"val_auc", _keras_monitor(tasks)})
    return ["val_auc", "val_logloss"] + [f"val_{t}_{m}" for t in tasks for m in ("auc", "logloss")]


def model_schema(schema: Schema, features: List[str]) -> dict:
    """The schema restricted to the selected features (what the model is built from)."""
    d = schema.to_dict()
    d["features"] = [f for f in d["features"] if f["name"] in features]
    return d


def train(cfg: TrainConfig, config_name: str = "train", overwrite: bool = False) -> Dict[str, Any]:
    """Train one model; returns a summary with the run directory and best validation metrics.

    The config's ``precision`` is Keras' global policy while this runs; the caller's policy
    is restored afterwards (a later export or training in the same process is unaffected)."""
    with global_policy(cfg.precision):
        return _train(cfg, config_name, overwrite)


def _train(cfg: TrainConfig, config_name: str, overwrite: bool) -> Dict[str, Any]:
    schema, tasks, feats = resolve(cfg)
    run_dir = runs.prepare_run_dir(cfg, config_name, schema, overwrite=overwrite)
    tf.keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(cfg.strategy)
    is_ps = cfg.strategy.name == "parameter_server"

    def train_ds(input_context=None):
        ds = make_dataset(cfg.data_dir, cfg.train_split, _per_replica_batch(cfg, strategy, input_context),
                          shuffle=True, repeat=is_ps or cfg.steps_per_epoch is not None,
                          # PS workers build their input inside a tf.function: streaming reader only
                          deterministic=cfg.deterministic, seed=cfg.seed, cache=cfg.cache and not is_ps,
                          shuffle_buffer=cfg.shuffle_buffer, drop_remainder=True, labels=tasks)
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return _with_shard_policy(ds, cfg)

    valid_ds = make_dataset(cfg.data_dir, cfg.valid_split, cfg.eval_batch_size, shuffle=False,
                            deterministic=True, cache=cfg.cache, labels=tasks)
    sdict = model_schema(schema, feats)
    with strategy.scope():
        model = build_model(sdict, tasks, **dataclasses.asdict(cfg.model))
        model.compile(optimizer=make_optimizer(cfg.optimizer), loss=make_losses(cfg, tasks),
                      metrics={t: [tf.keras.metrics.AUC(name="auc", num_thresholds=1000)] for t in tasks},
                      jit_compile=cfg.jit_compile,
                      steps_per_execution=cfg.steps_per_execution)
    callbacks = _callbacks(cfg, run_dir, valid_ds, tasks, is_ps=is_ps)
    if is_ps:
        x = tf.keras.utils.experimental.DatasetCreator(train_ds)
    else:
        x = train_ds()
    steps = cfg.steps_per_epoch
    if is_ps and steps is None:
        raise ConfigError("strategy parameter_server needs steps_per_epoch (the input repeats)")
    t0 = time.time()
    validation = {}
    if is_ps:  # PS workers need an endless validation input and a step count (Keras AUC is used there)
        validation = {"validation_data": valid_ds.repeat(),
                      "validation_steps": sum(1 for _ in valid_ds)}
    history = model.fit(x, epochs=cfg.epochs, steps_per_epoch=steps, **validation,
                        callbacks=callbacks, verbose=cfg.verbose if is_chief() else 0)
    seconds = time.time() - t0
    summary = {"run_dir": run_dir, "epochs_run": len(history.history.get("loss", [])),
               "seconds": seconds, "history": _jsonable(history.history)}
    if is_chief():
        runs.save_model(model, run_dir, sdict, tasks, cfg)
        runs.mark_done(run_dir, summary)
    return summary


def _per_replica_batch(cfg, strategy, input_context):
    if input_context is not None:
        return input_context.get_per_replica_batch_size(cfg.batch_size)
    return cfg.batch_size


def _with_shard_policy(ds, cfg):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = auto_shard_policy(cfg.strategy)
    return ds.with_options(options)


def _callbacks(cfg: TrainConfig, run_dir: str, valid_ds, tasks, is_ps: bool):
    es = cfg.early_stopping
    cbs: List[tf.keras.callbacks.Callback] = [NanGuard() if is_ps else BatchNanGuard()]
    use_exact = not is_ps  # exact validation predicts in-process; PS workers validate with Keras' AUC
    if use_exact:
        cbs.append(ExactValidation(valid_ds, tasks))
    monitor = es.monitor if use_exact else _keras_monitor(tasks)
    cbs += [
        tf.keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
        tf.keras.callbacks.ModelCheckpoint(os.path.join(run_dir, "checkpoints", "best"), monitor=monitor,
                                           mode=es.mode, save_best_only=True, save_weights_only=True),
        tf.keras.callbacks.EarlyStopping(monitor=monitor, mode=es.mode, patience=es.patience,
                                         restore_best_weights=es.restore_best_weights),
        tf.keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        tf.keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch",
                                       profile_batch=tuple(cfg.profile_batches or (0, 0))),
    ]
    if not is_ps:
        cbs += analysis_callbacks(cfg, run_dir, tasks)
    return cbs


def _keras_monitor(tasks):
    return "val_auc" if len(tasks) == 1 else f"val_{tasks[0]}_auc"


def _jsonable(history):
    return {k: [float(v) for v in vals] for k, vals in history.items()}
