"""HDA adaptive distribution re-balancing (§4.4.1, Eq. 11-12).

L_ctr_rebalancing = sum_i w_i L_i (Eq. 11), L_i = (1 / N_i) sum_{j in group i} s_j BCE_j: the mean
binary cross-entropy of group i's N_i samples of the batch (Eq. 11 is printed without the minus
sign; this is the BCE it means), s_j the sample weight (Keras' third batch element, 1 without).
Groups follow ``pipeline.user_groups``: index 1 = head, 0 = long-tail, so w = (w_tail, w_head).

The weights are updated at each batch (Eq. 12), as Group DRO (the paper's [19]) does:
w_i <- w_i exp(eta L_i) / sum_j w_j exp(eta L_j), from the batch's group losses (no gradient),
*before* they weight that batch's loss (Group DRO's order). They live in a non-trainable
variable, so a checkpoint restores them and a resumed run repeats the uninterrupted one.

The same layer gives the paper's two reweighting baselines: IPW ([19]'s static reweighting by
propensity) is ``step_size`` = 0: w stays uniform, so each group's mean loss weighs the same,
which is weighting each sample by the inverse of its group's share of the batch; SDRO
(Streaming DRO, the paper's [27], Wen et al. WWW'22) is ``loss_decay`` < 1: Eq. 12 reads a
streaming estimate of each group's loss instead of the batch's,
Lbar_i <- (1 - beta) Lbar_i + beta L_i (beta = ``loss_decay``; a group's first batch sets it), which
lowers the variance of the weights on sparse, long-tailed data (S-DRO's point). beta = 1 is Eq. 12.

Choices where the paper is silent:

- eta (``step_size``) defaults to 0.01, the step size of the public Group-DRO code of [19];
- SDRO's beta: 0.1 in its preset (the S-DRO paper's value is not in the HDA paper);
- w starts uniform (1 / #groups each), as Group DRO's q;
- a group absent from the batch has L_i = 0 in the loss and keeps its weight: Eq. 12 runs over
  the groups present, which share the weight they held (with two groups, a one-group batch
  leaves w unchanged). Absence is no evidence of a low loss, and applying Eq. 12 with L_i = 0
  would shrink a group's weight whenever a small batch misses it;
- under ``tf.distribute`` the update uses the global batch's group losses (summed over the
  replicas), so every replica holds the same w.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

DEFAULT_STEP_SIZE = 0.01  # eta; not in the paper (Group DRO's public code: 0.01)

_register = tf.keras.utils.register_keras_serializable("ctrflow")


@_register
class AdaptiveRebalancing(tf.keras.layers.Layer):
    """Eq. 11-12: (labels, logits, groups[, sample_weight]) -> the re-balanced loss, a float32 scalar.

    ``logits`` z (the loss is BCE on sigma(z), computed from z); ``groups`` integer group ids in
    [0, num_groups). ``update=True`` (training steps only) applies Eq. 12 first.
    """

    def __init__(self, step_size: float = DEFAULT_STEP_SIZE, num_groups: int = 2,
                 initial_weights: Optional[Sequence[float]] = None, loss_decay: float = 1.0, **kw):
        super().__init__(**kw)
        if not float(step_size) >= 0:
            raise ValueError(f"AdaptiveRebalancing: step_size must be >= 0, got {step_size}")
        if not 0.0 < float(loss_decay) <= 1.0:
            raise ValueError(f"AdaptiveRebalancing: loss_decay must be in (0, 1], got {loss_decay}")
        self.loss_decay = float(loss_decay)
        if int(num_groups) < 1:
            raise ValueError(f"AdaptiveRebalancing: num_groups must be >= 1, got {num_groups}")
        self.step_size, self.num_groups = float(step_size), int(num_groups)
        initial = [1.0 / self.num_groups] * self.num_groups if initial_weights is None else \
            [float(w) for w in initial_weights]
        if len(initial) != self.num_groups or min(initial) < 0 or abs(sum(initial) - 1.0) > 1e-6:
            raise ValueError(f"AdaptiveRebalancing: initial_weights must be {self.num_groups} non-negative "
                             f"numbers summing to 1, got {initial_weights}")
        self.initial_weights = initial
        self.group_weights = self.add_weight(
            name="group_weights", shape=(self.num_groups,), dtype=tf.float32, trainable=False,
            initializer=tf.keras.initializers.Constant(initial),
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)  # every replica computes the same update
        # SDRO's streaming group losses and whether each group was seen (its first batch sets the estimate)
        self.streamed_losses, self.seen = (
            self.add_weight(name=n, shape=(self.num_groups,), dtype=tf.float32, trainable=False, initializer="zeros",
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA) for n in ("streamed_losses", "seen"))

    def group_sums(self, labels, logits, groups, sample_weight=None):
        """(sum of s_j BCE_j [G], N_i [G]) over each group's samples of the batch, float32."""
        y = tf.reshape(tf.cast(labels, tf.float32), [-1])
        z = tf.reshape(tf.cast(logits, tf.float32), [-1])
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)
        if sample_weight is not None:
            bce = bce * tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        member = tf.one_hot(tf.reshape(tf.cast(groups, tf.int32), [-1]), self.num_groups, dtype=tf.float32)
        return tf.linalg.matvec(member, bce, transpose_a=True), tf.reduce_sum(member, axis=0)

    def updated_weights(self, losses, counts) -> tf.Tensor:
        """Eq. 12 over the groups present (counts > 0); absent groups keep their weight."""
        w = tf.convert_to_tensor(self.group_weights)
        present = counts > 0
        eta_l = self.step_size * tf.stop_gradient(losses)
        shift = tf.reduce_max(tf.where(present, eta_l, tf.fill(tf.shape(eta_l), -1e30)))  # exp without overflow
        factor = tf.where(present, w * tf.exp(eta_l - shift), tf.zeros_like(w))
        mass = tf.reduce_sum(tf.where(present, w, tf.zeros_like(w)))
        return tf.where(present, tf.math.divide_no_nan(factor, tf.reduce_sum(factor)) * mass, w)

    def streamed(self, losses, counts) -> tf.Tensor:
        """SDRO's estimate of each present group's loss, updated (beta = 1: the batch's L_i)."""
        if self.loss_decay == 1.0:
            return losses
        present = counts > 0
        first = present & (self.seen < 0.5)
        mixed = (1.0 - self.loss_decay) * self.streamed_losses + self.loss_decay * tf.stop_gradient(losses)
        estimate = tf.where(first, losses, tf.where(present, mixed, self.streamed_losses))
        self.streamed_losses.assign(estimate)
        self.seen.assign(tf.where(present, tf.ones_like(self.seen), self.seen))
        return estimate

    def call(self, labels, logits, groups, sample_weight=None, update: bool = False):
        sums, counts = self.group_sums(labels, logits, groups, sample_weight)
        losses = tf.math.divide_no_nan(sums, counts)  # L_i; 0 for a group absent from the batch
        if update:
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:  # the global batch's L_i
                sums, counts = context.all_reduce(tf.distribute.ReduceOp.SUM, [sums, counts])
            self.group_weights.assign(self.updated_weights(self.streamed(tf.math.divide_no_nan(sums, counts), counts),
                                                           counts))
        return tf.reduce_sum(tf.stop_gradient(tf.convert_to_tensor(self.group_weights)) * losses)  # Eq. 11

    def get_config(self):
        return {**super().get_config(), "step_size": self.step_size, "num_groups": self.num_groups,
                "initial_weights": self.initial_weights, "loss_decay": self.loss_decay}
