"""The optimizer a training config builds: its class, learning-rate schedule and gradient transforms.

``optimizer.name`` picks one of tf-keras' optimizers of the ``tf.keras.optimizers.legacy``
family (:data:`OPTIMIZERS`), the ones every run has trained with (``tf.keras.optimizers.get``
builds them from a config dict); ``optimizer.options`` are that class's own arguments,
checked against its constructor (``pipeline.train_config.check_optimizer``).

Learning-rate schedule (``optimizer.schedule``): ``step`` is PyTorch's StepLR stepped once per
epoch, lr_e = learning_rate * factor ** floor(e / every_epochs) in (0-based) epoch e.
:class:`StepDecay` applies it per optimizer step t as learning_rate * factor **
floor(t / (every_epochs * steps_per_epoch)): a function of the optimizer's step counter, which
the per-epoch backup restores with the optimizer, so a resumed run has the uninterrupted run's
rates, under any tf.distribute strategy, without a callback.

Weight decay. PyTorch's ``Adam(weight_decay=wd)`` (what the GPRec authors' script uses) is
*coupled*: g <- g + wd * w before Adam's moments, the gradient of an L2 penalty wd / 2 ||w||^2,
so Adam's per-weight scaling divides it too. Keras' ``weight_decay`` option (the non-legacy
optimizers, AdamW) is *decoupled*: w <- w - lr * wd * w beside Adam's update, unscaled. The
legacy family has no ``weight_decay`` option; ``optimizer.l2`` is the coupled form, applied to
the gradients each optimizer receives (:func:`gradient_transformers`): the weights that
optimizer updates decay (a frozen group's do not), nothing joins the logged losses, and
``phase_optimizers`` each take their own. Like PyTorch's Adam on dense embedding gradients it
decays every row of a table at every step (Adam already updates its moments over whole tables).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import tensorflow as tf

# tf-keras' legacy optimizers by lower-case name ("Optimizer", the abstract base, is left out); classes,
# not instances: building one would start TensorFlow's runtime before the run's strategy is made
OPTIMIZERS = {n.lower(): c for n, c in vars(tf.keras.optimizers.legacy).items()
              if isinstance(c, type) and issubclass(c, tf.keras.optimizers.legacy.Optimizer)
              and c is not tf.keras.optimizers.legacy.Optimizer}
# the optimizer options ctrflow applies itself, as gradient transforms (:func:`gradient_transformers`),
# with their defaults; the legacy classes take them as **kwargs, not as named arguments
CLIP_OPTIONS = {"clipvalue": None, "global_clipnorm": None}


@tf.keras.utils.register_keras_serializable("ctrflow")
class StepDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """lr(t) = initial * factor ** floor(t / every_steps) at optimizer step t (0-based): PyTorch's
    StepLR(step_size, gamma) with step_size = every_steps (an epoch's steps times its every_epochs)."""

    def __init__(self, initial: float, factor: float, every_steps: int):
        super().__init__()
        self.initial, self.factor, self.every_steps = float(initial), float(factor), int(every_steps)

    def __call__(self, step):
        # the legacy optimizers pass their step counter as a float: exact up to 2^24 steps
        stairs = tf.math.floordiv(tf.cast(step, tf.int64), self.every_steps)
        return tf.cast(self.initial * tf.pow(tf.constant(self.factor, tf.float64), tf.cast(stairs, tf.float64)),
                       tf.float32)

    def get_config(self):
        return {"initial": self.initial, "factor": self.factor, "every_steps": self.every_steps}


def learning_rate(cfg, steps_per_epoch: Optional[int]):
    """``cfg.learning_rate`` under ``cfg.schedule`` (an ``OptimizerConfig``): a float, or a
    :class:`StepDecay` whose stairs are ``every_epochs`` epochs of ``steps_per_epoch`` steps."""
    schedule = cfg.schedule
    if schedule.type == "none":
        return cfg.learning_rate
    if steps_per_epoch is None:
        raise ValueError("a 'step' learning-rate schedule needs the run's steps_per_epoch")
    return StepDecay(cfg.learning_rate, schedule.factor, schedule.every_epochs * steps_per_epoch)


def gradient_transformers(clipvalue: Optional[float] = None, clipnorm: Optional[float] = None,
                          global_clipnorm: Optional[float] = None, l2: float = 0.0) -> List[Callable]:
    """The transforms of the (all-reduced) gradients before the update, in PyTorch's order:
    clipping as Keras' clip options do it (by value, per-tensor norm, global norm), then the
    coupled weight decay g <- g + l2 * w (module docstring). One list, because the legacy
    optimizers refuse clip options beside ``gradient_transformers``."""
    out: List[Callable] = []
    if clipvalue is not None:
        out.append(lambda gv: [(tf.clip_by_value(g, -clipvalue, clipvalue), v) for g, v in gv])
    if clipnorm is not None:
        out.append(lambda gv: [(tf.clip_by_norm(g, clipnorm), v) for g, v in gv])
    if global_clipnorm is not None:
        def clip_global(gv):
            grads, _ = tf.clip_by_global_norm([g for g, _ in gv], global_clipnorm)
            return list(zip(grads, [v for _, v in gv]))
        out.append(clip_global)
    if l2:
        # an embedding table's sparse gradient becomes dense: every row decays, as in PyTorch
        out.append(lambda gv: [(tf.convert_to_tensor(g) + l2 * tf.convert_to_tensor(v), v) for g, v in gv])
    return out


def make_optimizer(cfg, steps_per_epoch: Optional[int] = None) -> tf.keras.optimizers.legacy.Optimizer:
    """The optimizer of an ``OptimizerConfig`` (checked when the config was loaded):
    ``steps_per_epoch`` sets the stairs of a ``step`` schedule."""
    options = dict(cfg.options)
    clips = {k: options.pop(k, None) for k in CLIP_OPTIONS}
    transforms = gradient_transformers(clipnorm=cfg.clipnorm, l2=cfg.l2, **clips)
    return OPTIMIZERS[cfg.name.lower()](learning_rate=learning_rate(cfg, steps_per_epoch),
                                        gradient_transformers=transforms, **options)


def learning_rate_at(optimizer, step) -> float:
    """The learning rate ``optimizer`` applies at its (0-based) step ``step``."""
    lr = optimizer.learning_rate
    if isinstance(lr, tf.keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(step)
    return float(tf.convert_to_tensor(lr).numpy())
