"""What every model's training step shares (models.framework.FrameworkModel uses them).

Every float input feature, logit and gradient is checked finite inside the compiled step
(one in-graph reduction per tensor, no host round trip; a failure names the step and the
feature / task / weight), and random draws are seeded by (global seed, step), so a
resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import tensorflow as tf

from models.layers import step_seed

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
    masks and noise, since the step counter is restored with the optimizer. With several
    replicas in sync (MirroredStrategy over several devices, MultiWorkerMirroredStrategy,
    TPUStrategy) the replica's id is folded in too, so each replica draws its own masks for
    its own part of the batch (one replica: the seed is (global seed, step) itself).
    Dropout draws its masks as the model's ``dropout_impl`` says (``compile``; default ``bits``)."""
    base = tf.compat.v1.get_default_graph().seed or 0  # tf.random.set_seed's value, read when traced
    seed = tf.stack([tf.constant(base, tf.int64), tf.cast(model.optimizer.iterations, tf.int64)])
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(context.replica_id_in_sync_group, tf.int64))
    return step_seed(seed, getattr(model, "dropout_impl", "bits"))


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


def apply_checked_gradients(optimizer, tape, loss, variables: Sequence[tf.Variable], step, sources=()) -> list:
    """Gradients of ``loss`` (loss-scaled under mixed_float16) applied by ``optimizer`` to
    ``variables`` once they are all finite (naming the weights); returns the gradients
    w.r.t. the extra ``sources`` (gradient taps). Under loss scaling a non-finite gradient is
    expected now and then (the optimizer skips that step and lowers the scale), so it is
    not checked there."""
    scale = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    variables = list(variables)
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
