"""CTRModel: schema-driven embedding + a registered backbone + a probability per task.

Single task: the task's logit is the backbone logit. Several tasks: each task t adds
its own linear head on the backbone representation to the backbone logit,
z_t = z_b + w_t^T r_b + b_t (heads start at zero, so every backbone weight keeps a
gradient and tasks separate as they train). Under mixed precision only the MLP hidden
layers compute in the mixed dtype (``models.layers.precision_sensitive``); embeddings,
logits and probabilities are float32.

Both models' ``train_step`` (this one's and TF4CTR's) share the helpers below: every float
input feature, logit and gradient is checked finite inside the compiled step (a failure
names the step and the feature / task / weight), and random draws are seeded by
(global seed, step), so a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import inspect
import re
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from features.schema import Schema
from models.backbones import backbone_class, get_backbone
from models.embedding import FeatureEmbedding, plan_fields
from models.layers import plain, precision_sensitive, step_seed

NONFINITE_MARK = "ctrflow non-finite"  # starts the message of a failed finiteness check (pipeline.train reads it)


# ---- what every model's train_step shares ---------------------------------------------
def step_number(model) -> Optional[tf.Tensor]:
    """The 1-based global number of the training step being run (int64); None under XLA
    (``jit_compile``), which cannot compile the checks' string data: the checks are then
    off and the epoch-end guard of ``pipeline.train`` (loss and weights) catches what they would."""
    if getattr(model, "jit_compile", False):
        return None
    return tf.cast(model.optimizer.iterations, tf.int64) + 1


def step_randomness(model):
    """Context in which the layers' random draws are a pure function of (global seed, step)
    (``models.layers.step_seed``): a resumed run repeats the uninterrupted run's dropout
    masks and noise, since the step counter is restored with the optimizer."""
    base = tf.compat.v1.get_default_graph().seed or 0  # tf.random.set_seed's value, read when traced
    return step_seed(tf.stack([tf.constant(base, tf.int64), tf.cast(model.optimizer.iterations, tf.int64)]))


def finite_or_stop(named: Sequence[Tuple[str, object]], what: str, step, release=None) -> list:
    """``release`` (default: the tensors of ``named``, (name, tensor or IndexedSlices) pairs)
    passed on only once every value of ``named`` is finite; otherwise the step fails with an
    ``InvalidArgumentError`` reading ``[NONFINITE_MARK: what] [the offending names] [at step]
    [step]`` (``pipeline.train`` turns it into a FloatingPointError). In-graph: one reduction
    per tensor, no host round trip."""
    release = [t for _, t in named] if release is None else release
    if not named or step is None:
        return list(release)
    names = [n for n, _ in named]
    values = [t.values if isinstance(t, tf.IndexedSlices) else t for _, t in named]
    ok = tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in values])
    bad = tf.strings.reduce_join(tf.boolean_mask(tf.constant(names), tf.logical_not(ok)), separator=", ")
    check = tf.debugging.Assert(tf.reduce_all(ok), [f"{NONFINITE_MARK}: {what}", bad, "at step", step])
    with tf.control_dependencies([check]):
        return [_identity(t) for t in release]


def _identity(t):
    if isinstance(t, tf.IndexedSlices):
        return tf.IndexedSlices(tf.identity(t.values), t.indices, t.dense_shape)
    return tf.identity(t)


def checked_inputs(model, x: dict, step) -> dict:
    """``x`` with the float features the model reads checked finite (naming the feature)."""
    names = [f["name"] for f in model.schema_dict["features"] if f["name"] in x and x[f["name"]].dtype.is_floating]
    checked = dict(zip(names, finite_or_stop([(n, x[n]) for n in names], "input feature", step)))
    return {**x, **checked}


def apply_checked_gradients(model, tape, loss, step, sources=()) -> list:
    """Gradients of ``loss`` (loss-scaled under mixed_float16) applied to the trainable
    weights once they are all finite (naming the weights); returns the gradients w.r.t.
    the extra ``sources``. Under loss scaling a non-finite gradient is expected now and then
    (the optimizer skips that step and lowers the scale), so it is not checked there."""
    optimizer = model.optimizer
    scale = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    variables = list(model.trainable_variables)
    if scale:
        with tape:  # the scaling must be recorded on the tape (it is re-entered to record it)
            loss = optimizer.get_scaled_loss(loss)
    grads = tape.gradient(loss, variables + list(sources))
    if scale:
        grads = optimizer.get_unscaled_gradients(grads)
    pairs = [(g, v) for g, v in zip(grads[:len(variables)], variables) if g is not None]  # unread weights: None
    if not scale:
        checked = finite_or_stop([(v.name, g) for g, v in pairs], "gradient of weight", step)
        pairs = [(g, v) for g, (_, v) in zip(checked, pairs)]
    optimizer.apply_gradients(pairs)
    return grads[len(variables):]


_EMBEDDING_OPTIONS = sorted(set(inspect.signature(FeatureEmbedding.__init__).parameters)
                            - {"self", "schema_dict", "embedding_dim", "linear", "name", "kw"})


@tf.keras.utils.register_keras_serializable("ctrflow")
class CTRModel(tf.keras.Model):
    """Encoded feature dict -> {task: probability [B, 1]}; other batch columns are ignored."""

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dcnv2",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **kw):
        super().__init__(**kw)
        tasks = list(tasks)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct labels, got {tasks}")
        Schema.from_dict(schema_dict).check_names(labels=tasks, what="model config")
        embedding_options = dict(embedding_options or {})
        unknown = sorted(set(embedding_options) - set(_EMBEDDING_OPTIONS))
        if unknown:
            raise ValueError(f"embedding_options: unknown option(s) {unknown}; known: {_EMBEDDING_OPTIONS}")
        self.schema_dict, self.tasks = schema_dict, tasks
        self.backbone_name, self.embedding_dim = backbone, int(embedding_dim)
        self.backbone_options, self.embedding_options = dict(backbone_options or {}), embedding_options
        num_fields = len(plan_fields(schema_dict, embedding_options.get("features")))
        cls = backbone_class(backbone)
        width = cls.input_embedding_dim(num_fields, self.embedding_dim)
        with precision_sensitive():  # float32 but for MLP hidden layers under mixed precision (models.layers)
            self.embedding = FeatureEmbedding(schema_dict, embedding_dim=width, linear=cls.uses_linear,
                                              name="embedding", **embedding_options)
            self.backbone = get_backbone(backbone, num_fields, self.embedding_dim,
                                         **self.backbone_options)
            self.heads = {}
            if len(tasks) > 1:
                self.heads = {t: tf.keras.layers.Dense(1, kernel_initializer="zeros",
                                                       name="head_" + re.sub(r"[^A-Za-z0-9_.-]", "_", t))
                              for t in tasks}

    def logits(self, inputs: dict, training=None) -> Dict[str, tf.Tensor]:
        """{task: logit [B, 1] float32}."""
        out = self.backbone(self.embedding(inputs, training=training), training=training)
        if not self.heads:
            return {self.tasks[0]: out.logit}
        return {t: out.logit + self.heads[t](out.repr) for t in self.tasks}

    def call(self, inputs, training=None, return_logits=False):
        """{task: probability} (or {task: logit} with ``return_logits``)."""
        logits = self.logits(inputs, training=training)
        return logits if return_logits else {t: tf.sigmoid(z) for t, z in logits.items()}

    def train_step(self, data):
        """Keras' step, with every input feature, logit and gradient checked finite and the
        random draws seeded by the step (the helpers above, shared with TF4CTR)."""
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        step = step_number(self)
        x = checked_inputs(self, x, step)
        with step_randomness(self), tf.GradientTape() as tape:
            logits = self(x, training=True, return_logits=True)  # through __call__: same casts as predict
            logits = dict(zip(logits, finite_or_stop(list(logits.items()), "logit of task", step)))
            y_pred = {t: tf.sigmoid(z) for t, z in logits.items()}
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        apply_checked_gradients(self, tape, loss, step)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "schema_dict": plain(self.schema_dict),
                "tasks": plain(self.tasks), "backbone": self.backbone_name,
                "backbone_options": plain(self.backbone_options), "embedding_dim": self.embedding_dim,
                "embedding_options": plain(self.embedding_options)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)
