"""FrameworkModel: the one training mechanism every model class (CTRModel and each method
framework) builds on.

A framework writes two methods:

    forward(inputs, training) -> Forward(logits={task: z [B, 1] float32}, aux={name: tensor})
    objectives(x, y, forward, sample_weight) -> {name: Objective(value, weight)}

``call`` serves sigma(z) per task; ``objectives`` defaults to the compiled loss (named
``ctr``: the per-task losses and ``loss_weights`` given to ``compile`` plus the
regularization losses) and a framework adds its own (TF4CTR's L_TF). The base owns, once:

- the step: total = sum_k w_k L_k, divided by the replicas in sync (``tf.distribute``
  sums the replicas' gradients), loss-scaled under mixed_float16, every input feature,
  logit, auxiliary tensor and gradient checked finite and the random draws seeded by the
  step (``models.steps``);
- one logged tracker per objective (``<name>_loss``; ``loss`` is the weighted total),
  unscaled and weighted by the batch size like Keras' own loss tracker;
- sample weights (Keras' third batch element) passed to every objective
  (:func:`weighted_mean` reduces like Keras' compiled loss);
- gradient taps: ``gradient_taps = {log name: aux key}`` logs the mean over the global batch
  of |dl_i/dt_i|, the per-sample total loss's gradient at that auxiliary tensor (TF4CTR's
  z_s / z_c, Fig. 5), per batch, in training only;
- training AUCs: ``training_aucs = {log name: (aux key of probabilities, aux key of 0/1 labels)}``
  logs a streaming AUC over each training epoch (Rec4Ad's discriminator, Fig. 8), in training only;
- variable groups (``variable_groups()``) that a training stage freezes (:meth:`freeze`);
- training stages: ``stages()`` lists the stages of a staged run in order (HDA's mapping,
  shared, residual and calibration stages); the driver (``pipeline/train.py``) enters each
  (:meth:`enter_stage`, which ``forward`` may read as ``self.stage``), fits a ``fit`` stage
  with a fresh optimizer, its own early stopping and backup, with the stage's variable groups
  frozen, or lets the framework compute a non-fit stage from the data (:meth:`run_stage`); the
  default is one fit stage, an ordinary run;
- alternating updates: ``phases()`` lists the updates of one step in order, each with its
  objectives, its variable group and its optimizer (``compile(phase_optimizers=...)``);
  the default is one phase updating every unfrozen weight on every objective;
- option validation against the class's ``option_defaults`` / ``option_ranges`` /
  ``option_choices`` / ``option_types`` (the paper's values; :meth:`check_framework_options`,
  which a framework with nested options extends), the schema / task checks and
  ``get_config`` / ``from_config``.

A framework may serve fewer tasks than it trains (:meth:`served_tasks`: STEM-AL's main task):
its ``call`` then returns only those, and validation, evaluation and export read only those.

Frameworks register with ``models.factory.register_framework``; run analyses they want in
their report are named by ``analyses`` (the pipeline looks them up by name).
"""
from __future__ import annotations

import collections
import inspect
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from features.schema import Schema
from models.embedding import FeatureEmbedding
from models.layers import DROPOUT_IMPLS, plain
from models.options import OptionError, check_options
from models.steps import apply_checked_gradients, checked_inputs, finite_or_stop, step_number, step_randomness

Forward = collections.namedtuple("Forward", ["logits", "aux"])
Forward.__doc__ = "logits: {task: z [B, 1] float32} (served as sigma(z)); aux: {name: tensor} for objectives and taps."

Objective = collections.namedtuple("Objective", ["value", "weight"])
Objective.__doc__ = ("value: the objective's scalar loss on this replica's batch (not divided by the replicas); "
                     "weight: its weight w_k in the total sum_k w_k L_k.")

Phase = collections.namedtuple("Phase", ["name", "objectives", "group", "optimizer"])
Phase.__doc__ = ("One update of a training step: ``objectives`` (names; None = all) are minimised over the "
                 "variable group ``group`` (None = every unfrozen weight no other phase's group holds) with the "
                 "optimizer ``optimizer`` (None = the compiled one; else a key of compile's phase_optimizers).")

Stage = collections.namedtuple("Stage", ["name", "fit", "frozen"], defaults=(True, ()))
Stage.__doc__ = ("One stage of a training run: ``fit`` = trained by Keras fit on the training split (a fresh "
                 "optimizer, its own early stopping, backup and history), else computed by ``run_stage`` from "
                 "the data; ``frozen``: variable groups left out of its updates.")

COMPILED = "ctr"  # the name of the compiled-loss objective
EMBEDDING_OPTIONS = sorted(set(inspect.signature(FeatureEmbedding.__init__).parameters)
                           - {"self", "schema_dict", "embedding_dim", "linear", "name", "kw"})
_MODEL_KW = ("name", "trainable", "dtype")


def weighted_mean(values: tf.Tensor, sample_weight=None) -> tf.Tensor:
    """sum_i w_i l_i / B over a per-sample loss [B] or [B, 1] (float32): Keras' compiled-loss
    reduction (SUM_OVER_BATCH_SIZE), so an added objective weighs samples like L_ctr."""
    values = tf.reshape(tf.cast(values, tf.float32), [-1])
    if sample_weight is not None:
        values = values * tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    return tf.math.divide_no_nan(tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32))


def dataset_columns(dataset, inputs: Sequence[str]) -> tuple:
    """({key: array [N]} of the ``inputs`` keys, {task: labels [N]}) over one pass of ``dataset``
    (batches (x, y[, w])): what a non-fit stage (:meth:`FrameworkModel.run_stage`) counts."""
    columns = {k: [] for k in dict.fromkeys(inputs)}
    labels: Dict[str, list] = {}
    for batch in dataset:
        x, y, _ = tf.keras.utils.unpack_x_y_sample_weight(batch)
        for k in columns:
            columns[k].append(tf.reshape(x[k], [-1]).numpy())
        for task, values in (y if isinstance(y, dict) else {"label": y}).items():
            labels.setdefault(task, []).append(tf.reshape(values, [-1]).numpy())
    join = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return {k: join(v) for k, v in columns.items()}, {t: join(v) for t, v in labels.items()}


def task_value(value, task: str):
    """A task's entry of a per-task dict (labels, sample weights), or ``value`` itself."""
    return value[task] if isinstance(value, dict) else value


class BatchMean(tf.keras.metrics.Metric):
    """The mean of the values of the latest update only: a per-batch log value (gradient
    taps). Its sum and count are sync-on-read SUM variables, so under tf.distribute the
    result is the mean over the global batch."""

    def __init__(self, name: str, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_weight(name="total", initializer="zeros")
        self.count = self.add_weight(name="count", initializer="zeros")

    def update_state(self, values, sample_weight=None):
        values = tf.cast(tf.reshape(values, [-1]), self.dtype)
        return tf.group(self.total.assign(tf.reduce_sum(values)),
                        self.count.assign(tf.cast(tf.size(values), self.dtype)))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)


class FrameworkModel(tf.keras.Model):
    """Encoded feature dict -> {task: probability [B, 1]}; see the module docstring.

    Subclasses call ``super().__init__`` with the standard arguments and their own
    ``**options`` (checked against ``option_defaults``; merged into ``self.options``), then
    build their layers, and write :meth:`forward` (and :meth:`objectives` to add losses).
    """

    option_defaults: Dict[str, object] = {}
    option_ranges: Optional[dict] = None
    option_choices: Optional[dict] = None
    option_types: Optional[dict] = None
    framework_name = "none"             # set by models.factory.register_framework
    single_task = False                 # True: ``tasks`` must hold one label (the paper's setting)
    objective_names: Sequence[str] = (COMPILED,)  # the keys objectives() returns (one tracker each)
    gradient_taps: Dict[str, str] = {}  # log name -> aux key
    training_aucs: Dict[str, tuple] = {}  # log name -> (aux key of probabilities, aux key of labels)
    analyses: Sequence[str] = ()        # run analyses the framework's report includes (pipeline registry names)

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dcnv2",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        model_kw = {k: options.pop(k) for k in _MODEL_KW if k in options}
        options = self.check_framework_options(options)
        super().__init__(**model_kw)
        tasks = list(tasks)
        if not tasks or len(set(tasks)) != len(tasks):
            raise OptionError(f"tasks must be a non-empty list of distinct labels, got {tasks}")
        if self.single_task and len(tasks) != 1:
            raise OptionError(f"{self.framework_name} is single-task (the paper's setting): tasks must hold one "
                              f"label, got {tasks}; train one model per task or use framework 'none'")
        # Keras wraps (in place) the dicts and lists a model holds: the caller's dict and the parsed
        # schema each keep their own plain copy
        self.schema = Schema.from_dict(plain(schema_dict))
        schema_dict = plain(schema_dict)
        self.schema.check_names(labels=tasks, what="model config")
        embedding_options = dict(embedding_options or {})
        unknown = sorted(set(embedding_options) - set(EMBEDDING_OPTIONS))
        if unknown:
            raise OptionError(f"embedding_options: unknown option(s) {unknown}; known: {EMBEDDING_OPTIONS}")
        self.schema_dict, self.tasks = schema_dict, tasks
        self.backbone_name, self.embedding_dim = backbone, int(embedding_dim)
        self.backbone_options, self.embedding_options = dict(backbone_options or {}), embedding_options
        # a copy: Keras wraps (in place) the containers a model holds, the class's defaults among them
        self.options = plain({**self.option_defaults, **options})
        self.frozen_groups: List[str] = []
        self.stage = self.stages()[-1].name  # the served model is the last stage's
        self.phase_optimizers: Dict[str, tf.keras.optimizers.Optimizer] = {}
        several = len(self.objective_names) > 1  # one objective: Keras' own loss tracker says it all
        self.total_loss_tracker = tf.keras.metrics.Mean(name="total_loss") if several else None
        self.objective_trackers = {n: tf.keras.metrics.Mean(name=f"{n}_loss")
                                   for n in self.objective_names if several and n != COMPILED}
        self.tap_trackers = {name: BatchMean(name) for name in self.gradient_taps}
        self.auc_trackers = {name: tf.keras.metrics.AUC(name=name) for name in self.training_aucs}

    @classmethod
    def check_framework_options(cls, options: dict, prefix: str = "framework_options.") -> dict:
        """``options`` checked against :attr:`option_defaults` (names, types, ranges, choices);
        returns them checked. Errors are :class:`OptionError` naming ``prefix`` + the key."""
        return check_options(options, cls.option_defaults, prefix, f"framework '{cls.framework_name}'",
                             cls.option_ranges, cls.option_choices, cls.option_types)

    @classmethod
    def served_tasks(cls, tasks: Sequence[str], options: Optional[dict] = None) -> List[str]:
        """The tasks the served ``call`` outputs, which validation, evaluation and export score
        (every task by default); ``options`` are the framework options."""
        return list(tasks)

    @property
    def served(self) -> List[str]:
        """:meth:`served_tasks` of this model."""
        return self.served_tasks(self.tasks, self.options)

    # ---- what a framework writes ----------------------------------------------------------
    def forward(self, inputs: dict, training=None) -> Forward:
        raise NotImplementedError

    def objectives(self, x, y, forward: Forward, sample_weight) -> Dict[str, Objective]:
        """The named, weighted objectives of a batch: the compiled loss alone by default."""
        return {COMPILED: self.compiled_objective(x, y, forward, sample_weight)}

    def variable_groups(self) -> Dict[str, List[tf.Variable]]:
        """Named groups of trainable weights that phases update or a stage freezes."""
        return {}

    def phases(self) -> List[Phase]:
        """The updates of one training step, in order (one by default)."""
        return [Phase("model", None, None, None)]

    def stages(self) -> List[Stage]:
        """The stages of a training run, in order (one fit stage by default)."""
        return [Stage("train")]

    def enter_stage(self, name: str) -> None:
        """Make ``name`` the current stage: what ``forward`` computes may depend on it, so the
        traced train / test / predict functions are dropped."""
        known = [s.name for s in self.stages()]
        if name not in known:
            raise OptionError(f"{self.framework_name}: unknown stage {name!r}; stages: {known}")
        self.stage = name
        self.train_function = self.test_function = self.predict_function = None

    def phase_optimizer_names(self) -> List[str]:
        """The optimizers the phases of every stage name besides the compiled one (compile needs them all)."""
        current, names = self.stage, set()
        for stage in self.stages():
            self.stage = stage.name
            names |= {p.optimizer for p in self.phases()} - {None}
        self.stage = current
        return sorted(names)

    def run_stage(self, name: str, data) -> dict:
        """Compute the non-fit stage ``name`` from the data: ``data(split)`` is a one-pass, ordered
        ``tf.data.Dataset`` of batches (x, y[, w]) of ``"train"`` or ``"valid"``. Returns a
        JSON-ready summary, which the run records."""
        raise NotImplementedError(f"{self.framework_name}: stage {name!r} is not a fit stage and has no run_stage")

    # ---- serving ----------------------------------------------------------------------------
    def call(self, inputs, training=None, return_forward=False):
        """{task: probability} (the :class:`Forward` with ``return_forward``)."""
        out = self.forward(inputs, training=training)
        return out if return_forward else {t: tf.sigmoid(z) for t, z in out.logits.items()}

    # ---- objectives -------------------------------------------------------------------------
    def compiled_objective(self, x, y, forward: Forward, sample_weight) -> Objective:
        """The losses given to ``compile`` (per task, with ``loss_weights``) on sigma(z), plus
        the regularization losses, as one objective of weight 1."""
        if self.compiled_loss is None:
            raise RuntimeError(f"{self.framework_name}: compile the model with a loss per task first")
        y_pred = {t: tf.sigmoid(z) for t, z in forward.logits.items()}
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        return Objective(self.compute_loss(x, y, y_pred, sample_weight) * replicas, 1.0)  # compute_loss divides

    def _total(self, x, y, sample_weight, forward: Forward, names: Optional[Sequence[str]], track: bool):
        """sum_k w_k L_k over the objectives ``names`` (None: all), divided by the replicas in
        sync; updates the trackers with the unscaled values when ``track``."""
        objectives = self.objectives(x, y, forward, sample_weight)
        if sorted(objectives) != sorted(self.objective_names):
            raise ValueError(f"{self.framework_name}: objectives() returned {sorted(objectives)}, but the class "
                             f"declares objective_names {sorted(self.objective_names)}")
        unknown = sorted(set(names or ()) - set(objectives))
        if unknown:
            raise ValueError(f"{self.framework_name}: a phase names unknown objective(s) {unknown}; "
                             f"objectives: {sorted(objectives)}")
        chosen = [o for k, o in objectives.items() if names is None or k in names]
        total = tf.add_n([tf.cast(o.value, tf.float32) * o.weight for o in chosen])
        if track and self.total_loss_tracker is not None:
            batch = tf.shape(next(iter(forward.logits.values())))[0]
            all_total = total if names is None else tf.add_n(
                [tf.cast(o.value, tf.float32) * o.weight for o in objectives.values()])
            self.total_loss_tracker.update_state(all_total, sample_weight=batch)
            for name, tracker in self.objective_trackers.items():  # Keras' own loss tracker holds the compiled one
                tracker.update_state(objectives[name].value, sample_weight=batch)
        return total / tf.distribute.get_replica_context().num_replicas_in_sync

    # ---- variable groups ----------------------------------------------------------------------
    def freeze(self, *groups: str) -> None:
        """Leave the weights of ``groups`` (names of :meth:`variable_groups`) out of every update
        from now on (a training stage's frozen tables); ``freeze()`` unfreezes all."""
        known = self.variable_groups()
        unknown = sorted(set(groups) - set(known))
        if unknown:
            raise OptionError(f"{self.framework_name}: unknown variable group(s) {unknown}; known: {sorted(known)}")
        self.frozen_groups = list(groups)
        self.train_function = None  # the step is traced again with the new variable lists

    def _phase_variables(self, phase: Phase, phases: List[Phase]) -> List[tf.Variable]:
        groups = self.variable_groups()
        frozen = {v.ref() for g in self.frozen_groups for v in groups[g]}
        if phase.group is not None:
            chosen = groups[phase.group]
        else:
            claimed = {v.ref() for p in phases if p.group is not None for v in groups[p.group]}
            chosen = [v for v in self.trainable_variables if v.ref() not in claimed]
        return [v for v in chosen if v.ref() not in frozen]

    def compile(self, *args, phase_optimizers: Optional[Dict[str, tf.keras.optimizers.Optimizer]] = None,
                dropout_impl: str = "bits", **kwargs):
        """Keras' compile, plus the optimizers of the phases that do not use the compiled one
        (loss-scaled like it under mixed_float16) and how the step's dropout draws its masks
        (``dropout_impl``: ``bits`` | ``uniform``, :func:`models.layers.dropout`)."""
        if dropout_impl not in DROPOUT_IMPLS:
            raise OptionError(f"dropout_impl {dropout_impl!r} not in {DROPOUT_IMPLS}")
        super().compile(*args, **kwargs)
        self.dropout_impl = dropout_impl
        wanted = set(self.phase_optimizer_names())
        given = dict(phase_optimizers or {})
        if set(given) != wanted:
            raise OptionError(f"{self.framework_name}: phase_optimizers must hold {sorted(wanted)}, got "
                              f"{sorted(given)}")
        if isinstance(self.optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
            given = {k: o if isinstance(o, tf.keras.mixed_precision.LossScaleOptimizer)
                     else tf.keras.mixed_precision.LossScaleOptimizer(o) for k, o in given.items()}
        self.phase_optimizers = given

    # ---- the step -----------------------------------------------------------------------------
    def _checked_forward(self, forward: Forward, step, release: list) -> list:
        named = [(t, z) for t, z in forward.logits.items()]
        aux = [(k, v) for k, v in forward.aux.items() if tf.is_tensor(v) and v.dtype.is_floating]
        release = finite_or_stop(named, "logit of task", step, release=release)
        return finite_or_stop(aux, "auxiliary tensor", step, release=release)

    def train_step(self, data):
        """Every phase in order: forward (through ``__call__``, as predict), objectives, one
        checked update of its variables; logs every objective, the total and the taps."""
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        step = step_number(self)
        x = checked_inputs(self, x, step)
        phases = self.phases()
        for index, phase in enumerate(phases):
            last = index == len(phases) - 1
            with step_randomness(self), tf.GradientTape() as tape:
                forward = self(x, training=True, return_forward=True)
                total = self._total(x, y, sample_weight, forward, phase.objectives, track=last)
                [total] = self._checked_forward(forward, step, [total])  # sources stay the unchecked tensors
            taps = {n: forward.aux[k] for n, k in self.gradient_taps.items()} if last else {}
            optimizer = self.optimizer if phase.optimizer is None else self.phase_optimizers[phase.optimizer]
            grads = apply_checked_gradients(optimizer, tape, total, self._phase_variables(phase, phases), step,
                                            sources=list(taps.values()))
            self._record_taps(dict(zip(taps, grads)), forward)
        for name, (prob, label) in self.training_aucs.items():
            self.auc_trackers[name].update_state(tf.reshape(forward.aux[label], [-1]),
                                                 tf.reshape(forward.aux[prob], [-1]))
        return self._logs(x, y, forward, sample_weight, training=True)

    def _record_taps(self, grads: dict, forward: Forward) -> None:
        """|dl_i/dt_i| per sample: the mean-reduced loss's gradient times the global batch."""
        batch = tf.shape(next(iter(forward.logits.values())))[0]
        global_batch = tf.cast(batch, tf.float32) * tf.distribute.get_replica_context().num_replicas_in_sync
        for name, grad in grads.items():
            self.tap_trackers[name].update_state(tf.abs(tf.cast(grad, tf.float32)) * global_batch)

    def test_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        forward = self(x, training=False, return_forward=True)
        self._total(x, y, sample_weight, forward, None, track=True)
        return self._logs(x, y, forward, sample_weight, training=False)

    def _logs(self, x, y, forward: Forward, sample_weight, training: bool) -> dict:
        """Keras' metrics; with several objectives ``loss`` is their weighted total and the
        compiled loss is logged as ``ctr_loss``."""
        y_pred = {t: tf.sigmoid(z) for t, z in forward.logits.items()}
        logs = dict(self.compute_metrics(x, y, y_pred, sample_weight))
        if self.total_loss_tracker is not None:
            logs[f"{COMPILED}_loss"] = logs["loss"]
            logs["loss"] = logs.pop("total_loss")
        if not training:
            for name in [*self.tap_trackers, *self.auc_trackers]:
                logs.pop(name, None)
        return logs

    # ---- config -------------------------------------------------------------------------------
    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "schema_dict": plain(self.schema_dict),
                "tasks": plain(self.tasks), "backbone": self.backbone_name,
                "backbone_options": plain(self.backbone_options), "embedding_dim": self.embedding_dim,
                "embedding_options": plain(self.embedding_options), **plain(self.options)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)
