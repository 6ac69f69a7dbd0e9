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

Lazy Adam (``optimizer.name: lazy_adam``, :class:`LazyAdam`): Adam whose update of an embedding
table touches only the rows a batch looked up. Keras' legacy Adam decays m and v and moves every
row of a table at every step, even on a sparse (``tf.IndexedSlices``) gradient: per step a cost
linear in the table's rows, negligible at thousands of rows and dominant at millions. Lazy Adam
updates m, v and the weights of the looked-up rows only (TF Addons' LazyAdam semantics); dense
gradients (every other weight) are Adam's exactly. Not the same optimizer: a row a batch does not
touch keeps its moments and does not move on their momentum, where Adam moves it. Adam stays the
default (the papers' optimizer). With ``l2`` a table's sparse gradient stays sparse under lazy Adam:
the coupled decay g + l2 * w joins the looked-up rows only (each row decays on the steps that touch
it, not on every step as under Adam), see :func:`gradient_transformers`.
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
class LazyAdam(tf.keras.optimizers.legacy.Adam):
    """Adam that updates, on a sparse gradient (an embedding lookup's ``tf.IndexedSlices``), only
    the rows it touches (module docstring). Dense gradients: Keras' legacy Adam exactly.

    On a sparse gradient at step t (the optimizer's step counter, the same for every row), after
    the base class summed the slices of repeated indices into one g_i per touched row i:
    m_i <- b1 m_i + (1 - b1) g_i, v_i <- b2 v_i + (1 - b2) g_i^2,
    w_i <- w_i - lr sqrt(1 - b2^t) / (1 - b1^t) m_i / (sqrt(v_i) + epsilon),
    Keras' form of the bias correction (epsilon outside it, "epsilon hat"); the other rows' w, m and
    v are not read or written. No AMSGrad."""

    # options make_optimizer's config check refuses: {option: (refused value, why)}
    REFUSED_OPTIONS = {"amsgrad": (True, "lazy_adam has no AMSGrad variant (use adam for amsgrad)")}
    # gradient_transformers keeps a sparse gradient sparse under l2 (the touched rows decay)
    SPARSE_L2 = True

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 name="LazyAdam", **kwargs):
        if amsgrad:
            raise ValueError(self.REFUSED_OPTIONS["amsgrad"][1])
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=False, name=name, **kwargs)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        # indices are unique here (_resource_apply_sparse_duplicate_indices summed the repeats)
        var_device, var_dtype = var.device, var.dtype.base_dtype
        c = (apply_state or {}).get((var_device, var_dtype)) or self._fallback_apply_state(var_device, var_dtype)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        # raw ops on the handles: no read of a whole table (a variable read after a scatter may copy it)
        m_rows = tf.raw_ops.ResourceGather(resource=m.handle, indices=indices, dtype=var_dtype)
        v_rows = tf.raw_ops.ResourceGather(resource=v.handle, indices=indices, dtype=var_dtype)
        m_rows = c["beta_1_t"] * m_rows + c["one_minus_beta_1_t"] * grad
        v_rows = c["beta_2_t"] * v_rows + c["one_minus_beta_2_t"] * tf.square(grad)
        step = -c["lr"] * m_rows / (tf.sqrt(v_rows) + c["epsilon"])
        return tf.group(tf.raw_ops.ResourceScatterUpdate(resource=m.handle, indices=indices, updates=m_rows),
                        tf.raw_ops.ResourceScatterUpdate(resource=v.handle, indices=indices, updates=v_rows),
                        tf.raw_ops.ResourceScatterAdd(resource=var.handle, indices=indices, updates=step))


OPTIMIZERS["lazy_adam"] = LazyAdam  # not "lazyadam": the config's name is the snake-case one


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
                          global_clipnorm: Optional[float] = None, l2: float = 0.0,
                          sparse_l2: bool = False) -> List[Callable]:
    """The transforms of the (all-reduced) gradients before the update, in PyTorch's order:
    clipping as Keras' clip options do it (by value, per-tensor norm, global norm), then the
    coupled weight decay g <- g + l2 * w (module docstring). One list, because the legacy
    optimizers refuse clip options beside ``gradient_transformers``.

    The decay makes an embedding table's sparse gradient dense (every row decays), unless
    ``sparse_l2`` (lazy Adam's): then the slices of repeated rows are summed and l2 * w joins the
    looked-up rows only, so the gradient stays sparse and the other rows keep still."""
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
    if l2 and sparse_l2:
        out.append(lambda gv: [(_decay_touched_rows(g, v, l2) if isinstance(g, tf.IndexedSlices)
                                else g + l2 * tf.convert_to_tensor(v), v) for g, v in gv])
    elif l2:
        # an embedding table's sparse gradient becomes dense: every row decays, as in PyTorch
        out.append(lambda gv: [(tf.convert_to_tensor(g) + l2 * tf.convert_to_tensor(v), v) for g, v in gv])
    return out


def _decay_touched_rows(grad: tf.IndexedSlices, var, l2: float) -> tf.IndexedSlices:
    """g + l2 * w on the rows a sparse gradient touches, each row once (repeats summed first)."""
    rows, position = tf.unique(grad.indices)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(rows)[0])
    return tf.IndexedSlices(values + l2 * tf.gather(var, rows), rows, grad.dense_shape)


def make_optimizer(cfg, steps_per_epoch: Optional[int] = None) -> tf.keras.optimizers.legacy.Optimizer:
    """The optimizer of an ``OptimizerConfig`` (checked when the config was loaded):
    ``steps_per_epoch`` sets the stairs of a ``step`` schedule."""
    options = dict(cfg.options)
    clips = {k: options.pop(k, None) for k in CLIP_OPTIONS}
    cls = OPTIMIZERS[cfg.name.lower()]
    transforms = gradient_transformers(clipnorm=cfg.clipnorm, l2=cfg.l2, sparse_l2=getattr(cls, "SPARSE_L2", False),
                                       **clips)
    return cls(learning_rate=learning_rate(cfg, steps_per_epoch), gradient_transformers=transforms, **options)


def learning_rate_at(optimizer, step) -> float:
    """The learning rate ``optimizer`` applies at its (0-based) step ``step``."""
    lr = optimizer.learning_rate
    if isinstance(lr, tf.keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(step)
    return float(tf.convert_to_tensor(lr).numpy())
