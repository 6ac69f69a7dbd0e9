"""TF4CTR's two plug-in modules as Keras layers (Li et al., "TF4CTR", Sec. III-C and III-F).

:class:`SampleSelectionEmbedding` (SSEM, Eq. 3-5) embeds a batch once per encoder:

=======  =====================================================================================
share    one table set; both encoders read the same embeddings (no SSEM)
ser      Separate Embedding Representations (Eq. 3): two independent table sets, E_es (easy
         samples) for the simple encoder and E_hs (hard samples) for the complex one, each
         with its own width (the simple one half the complex one by default, as in the
         authors' released SER)
gm       Gating Mechanism (Eq. 4): one table set, g = sigmoid(Gate(h)) per sample,
         h_es = g * h (simple), h_hs = (1 - g) * h (complex)
moe      two experts and two softmax gates over h (Eq. 5):
         h_es = g11 m1 + g12 m2, h_hs = g21 m1 + g22 m2
=======  =====================================================================================

h is the concatenation of the field embeddings (D = F * d). Gates and experts are MLPs
(the authors' sizes: gate hidden [D / 4], expert hidden [D / 2] then an output layer of
width D). GM and MoE act on the field embeddings; the first-order terms (what the LR / FM
part of a WideDeep or DeepFM simple branch adds) pass through unchanged.

:class:`DynamicFusion` (DFM, Eq. 8-11) fuses the encoders into one logit:

=======  =====================================================================================
sum      z_s + z_c (the usual parallel-model fusion, Sec. III-H)
wsf      Weighted Sum Fusion (Eq. 8): w1 z_s + w2 z_c, w1 = w2 = 0.5 at the start
vf       Voting Fusion (Eq. 9): p = softmax((pi + g) / tau) over pi_s = W_es h_es,
         pi_c = W_hs h_hs (pi are the vote logits), Gumbel noise g only when training;
         p_s z_s + p_c z_c
cf       Concatenation Fusion (Eq. 10): W_cf [h_es || h_hs]
moef     Mixture-of-Experts Fusion (Eq. 11): softmax gate (2) and two linear experts
         over [h_es || h_hs], g1 m1 + g2 m2
=======  =====================================================================================
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

from models import layers as L
from models.embedding import EmbeddedFields, FeatureEmbedding, flat_fields

SSEM_MODES = ("share", "ser", "gm", "moe")
DFM_MODES = ("sum", "wsf", "vf", "cf", "moef")


@tf.keras.utils.register_keras_serializable("ctrflow")
class SampleSelectionEmbedding(tf.keras.layers.Layer):
    """Encoded feature dict -> (simple EmbeddedFields, complex EmbeddedFields), the inputs of
    the simple and complex encoders (SSEM, Eq. 3-5: h_es and h_hs).

    ``embedding_dim`` is the width of the complex encoder's embeddings and of the only
    table set of share / gm / moe; ``simple_embedding_dim`` (SER only, default
    ``embedding_dim // 2``) the width of the simple encoder's table set. ``embedding_options`` go to
    every :class:`~models.embedding.FeatureEmbedding` (features, dims, l2_reg, ...).
    """

    def __init__(self, schema_dict: dict, embedding_dim: int = 16, mode: str = "ser",
                 simple_embedding_dim: Optional[int] = None, embedding_options: Optional[dict] = None,
                 gate_units: Optional[Sequence[int]] = None, expert_units: Optional[Sequence[int]] = None,
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = True, sequences: bool = False,
                 **kw):
        super().__init__(**kw)
        if mode not in SSEM_MODES:
            raise ValueError(f"tf4ctr ssem '{mode}' is not one of {SSEM_MODES}")
        if simple_embedding_dim is not None and mode != "ser":
            raise ValueError(f"tf4ctr simple_embedding_dim applies to ssem 'ser' only (ssem is '{mode}')")
        self.schema_dict, self.mode = L.plain(schema_dict), mode  # a copy: Keras wraps what a layer holds
        self.embedding_dim = int(embedding_dim)
        self.embedding_options = dict(embedding_options or {})
        self.simple_embedding_dim = None if simple_embedding_dim is None else int(simple_embedding_dim)
        self.gate_units = None if gate_units is None else [int(u) for u in gate_units]
        self.expert_units = None if expert_units is None else [int(u) for u in expert_units]
        self.activation, self.dropout, self.batch_norm = activation, float(dropout), bool(batch_norm)
        self.sequences = bool(sequences)  # behaviour rows for a backbone with uses_sequences (DIN)

        self.complex_embedding = FeatureEmbedding(schema_dict, embedding_dim=self.embedding_dim,
                                                  name="embedding_complex" if mode == "ser" else "embedding",
                                                  sequences=self.sequences, **self.embedding_options)
        self.simple_embedding = None
        if mode == "ser":
            simple_dim = self.simple_embedding_dim or max(1, self.embedding_dim // 2)
            self.simple_embedding = FeatureEmbedding(schema_dict, embedding_dim=simple_dim,
                                                     name="embedding_simple", sequences=self.sequences,
                                                     **self.embedding_options)
        width = self.complex_embedding.num_fields * self.embedding_dim  # D = F * d
        gate_hidden = self.gate_units if self.gate_units is not None else [max(1, width // 4)]
        expert_hidden = self.expert_units if self.expert_units is not None else [max(1, width // 2)]
        # gate i = gate_mlps[i] -> gate_outs[i] (logits); experts output width D
        self.gate_mlps: List[L.MLP] = []
        self.gate_outs: List[tf.keras.layers.Dense] = []
        self.experts: List[L.MLP] = []
        if mode == "gm":  # Eq. 4: one sigmoid unit
            self._add_gate(gate_hidden, 1, "gate")
        elif mode == "moe":  # Eq. 5: two experts, two 2-way softmax gates
            self.experts = [self._mlp([*expert_hidden, width], f"expert_{i + 1}") for i in range(2)]
            for i in range(2):
                self._add_gate(gate_hidden, 2, f"gate_{i + 1}")

    def _mlp(self, units, name) -> L.MLP:
        return L.MLP(units, self.activation, self.dropout, self.batch_norm, name=name)

    def _add_gate(self, hidden, outputs: int, name: str) -> None:
        self.gate_mlps.append(self._mlp(hidden, f"{name}_mlp"))
        self.gate_outs.append(tf.keras.layers.Dense(outputs, name=f"{name}_out"))

    @property
    def num_fields(self) -> int:
        return self.complex_embedding.num_fields

    def _gate_output(self, index: int, h: tf.Tensor, training) -> tf.Tensor:
        return self.gate_outs[index](self.gate_mlps[index](h, training=training))

    def call(self, inputs: dict, training=None) -> Tuple[EmbeddedFields, EmbeddedFields]:
        emb = self.complex_embedding(inputs, training=training)
        if self.mode == "share":
            return emb, emb
        if self.mode == "ser":  # Eq. 3
            return self.simple_embedding(inputs, training=training), emb
        h = flat_fields(emb.fields)
        if self.mode == "gm":  # Eq. 4
            g = tf.sigmoid(self._gate_output(0, h, training))[:, :, None]  # [B, 1, 1]
            return emb._replace(fields=emb.fields * g), emb._replace(fields=emb.fields * (1.0 - g))
        m = tf.stack([expert(h, training=training) for expert in self.experts], axis=1)  # Eq. 5: [B, 2, D]
        out = []
        for i in range(2):
            g = tf.nn.softmax(self._gate_output(i, h, training), axis=-1)  # [B, 2]
            mixed = tf.reduce_sum(g[:, :, None] * m, axis=1)
            out.append(emb._replace(fields=tf.reshape(mixed, [-1, *emb.fields.shape[1:]])))
        return out[0], out[1]

    def get_config(self):
        return {**super().get_config(), "schema_dict": L.plain(self.schema_dict),
                "embedding_dim": self.embedding_dim, "mode": self.mode,
                "simple_embedding_dim": self.simple_embedding_dim,
                "embedding_options": L.plain(self.embedding_options),
                "gate_units": L.plain(self.gate_units), "expert_units": L.plain(self.expert_units),
                "activation": self.activation, "dropout": self.dropout, "batch_norm": self.batch_norm,
                "sequences": self.sequences}


@tf.keras.utils.register_keras_serializable("ctrflow")
class DynamicFusion(tf.keras.layers.Layer):
    """(h_s, z_s, h_c, z_c) -> fused logit [B, 1] float32 (DFM, Eq. 8-11; see the module
    docstring). ``temperature`` is VF's tau (the authors' 0.8). A tiny layer: build it with
    ``dtype="float32"`` under mixed precision so its weights are read in float32."""

    def __init__(self, mode: str = "wsf", temperature: float = 0.8, **kw):
        super().__init__(**kw)
        if mode not in DFM_MODES:
            raise ValueError(f"tf4ctr dfm '{mode}' is not one of {DFM_MODES}")
        if not float(temperature) > 0:
            raise ValueError(f"tf4ctr vf_temperature must be > 0, got {temperature}")
        self.mode, self.temperature = mode, float(temperature)
        if mode == "vf":
            self.vote_simple = tf.keras.layers.Dense(1, name="vote_simple")
            self.vote_complex = tf.keras.layers.Dense(1, name="vote_complex")
        elif mode == "cf":
            self.concat_logit = tf.keras.layers.Dense(1, name="concat_logit")
        elif mode == "moef":
            self.gate = tf.keras.layers.Dense(2, name="gate")
            self.experts = tf.keras.layers.Dense(2, name="experts")

    def build(self, input_shape):
        if self.mode == "wsf":
            self.w = self.add_weight(name="w", shape=(2,), initializer=tf.keras.initializers.Constant(0.5))
        super().build(input_shape)

    def call(self, h_s, z_s, h_c, z_c, training=None):
        f32 = lambda t: tf.cast(t, tf.float32)  # noqa: E731
        z_s, z_c = f32(z_s), f32(z_c)
        if self.mode == "sum":
            return z_s + z_c
        if self.mode == "wsf":  # Eq. 8
            return self.w[0] * z_s + self.w[1] * z_c
        if self.mode == "vf":  # Eq. 9
            votes = tf.concat([f32(self.vote_simple(h_s)), f32(self.vote_complex(h_c))], axis=1)  # [B, 2]
            if training:
                u = L.random_uniform(tf.shape(votes), 1e-10, 1.0)  # seeded per step (L.step_seed)
                votes = votes - tf.math.log(-tf.math.log(u))  # + Gumbel(0, 1) noise
            p = tf.nn.softmax(votes / self.temperature, axis=-1)
            return p[:, :1] * z_s + p[:, 1:] * z_c
        h = tf.concat([f32(h_s), f32(h_c)], axis=1)
        if self.mode == "cf":  # Eq. 10
            return f32(self.concat_logit(h))
        g = tf.nn.softmax(f32(self.gate(h)), axis=-1)  # Eq. 11
        return tf.reduce_sum(g * f32(self.experts(h)), axis=1, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "temperature": self.temperature}
