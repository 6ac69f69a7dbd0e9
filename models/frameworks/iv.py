"""IV: IV4Rec (Si et al., "A Model-Agnostic Causal Learning Framework for Recommendation using
Search Data", WWW 2022), the "IV" baseline of Rec4Ad's Table 1, registered as framework ``iv``
over any backbone.

IV4Rec treats the embeddings a recommender consumes as *treatments* t, confounded by the
exposure mechanism, and the user's search queries (behaviour outside the recommender) as
*instrumental variables* z. It decomposes each treatment by a first-stage regression on the
instruments and feeds the base model a learned recombination of the two parts:

    t_hat = Z^T (Z Z^T)^+ Z t        the fitted part: t projected on the instruments' span (causal)
    t_res = t - t_hat                the residual (non-causal)
    t'    = a_c * t_hat + a_n * t_res,   a_c = sigma(MLP_c([t, z_1..z_k])), a_n = sigma(MLP_n(...))

with ``Z`` [k, d] the instruments as rows, MLP_c / MLP_n IV4Rec's two weighting networks
(its MLP1 / MLP2, tanh hidden layers, as in the authors' released code) and a_c, a_n one scalar
each per sample. The base model is
unchanged: ``t'`` replaces ``t`` among its inputs before the backbone, so every backbone works,
and the objective is the base model's (the compiled loss plus the weighting networks' L2, which
the authors' runs give 1e-8): IV4Rec's first stage is closed-form least squares, with no
loss of its own.

How this maps onto IV4Rec, and what differs:

- Instruments: a user's behaviour outside the ads system, the behaviour sequences of the schema
  (``hist_item`` / ``hist_category``: earlier clicks, mostly on organic recommendations in the
  simulator) instead of search queries; ``instruments: [...]`` names them (default: every
  embedded sequence that shares a vocabulary with another feature). Each sequence gives one
  instrument vector, the mean of its non-padding rows (``FeatureEmbedding.sequence_embeddings``);
  an empty history gives a zero vector, and with no instrument the fitted part is zero.
- Treatments: the candidate's fields whose vocabularies the sequences share (``item_id`` /
  ``category``; ``treatments: [...]``), each regressed on all instruments (two-stage least
  squares regresses every endogenous regressor on every instrument). Under a backbone that reads
  the behaviour sequences (DIN), the candidate's row in a sequence's table, DIN's attention
  query, is one more embedding of a treatment and is decomposed too, by networks of its own.
  IV4Rec also decomposes the browsed items' embeddings inside DIN; here the candidate's only.
- The paper's instruments are frozen pretrained (BERT) query vectors and its phi (MLP0) maps
  frozen item vectors into a trainable space. Ours are the model's own sequence tables, so phi
  is the identity, and the instruments enter the decomposition and the weighting networks under
  ``stop_gradient``: the outcome loss never moves them through the regression (their tables
  still learn as ordinary fields of the base model).
- ``(Z Z^T)^+`` is ``(Z Z^T + lambda I)^-1`` with ``lambda = ridge * trace(Z Z^T) / k`` (a relative
  ridge, ours: the pseudo-inverse the authors precompute offline has no gradient-safe batched
  form; ``ridge: 0`` is the exact projection whenever Z has full row rank).
- The authors' released code writes the recombination as ``alpha * t + beta * t_hat``, the same
  two directions (a_c = alpha + beta, a_n = alpha); we weight the two parts directly.
- Widths: the authors' released weighting networks are 1536-512-128-32-1 on 768-d vectors; at
  our 16-d fields the default is ``gate_units: [32, 8]`` (our choice).

Serving needs nothing more than the raw features: the sequences are ordinary features of the
schema, read from the request like any other.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import tensorflow as tf

from models import layers as L
from models.ctr_model import CTRModel
from models.embedding import plan_fields
from models.factory import register_framework
from models.options import OptionError, check_activations

DEFAULTS = {
    "instruments": None,        # sequence features; None = every embedded sequence sharing a vocabulary
    "treatments": None,         # single-field features; None = the features those sequences share vocabularies with
    "ridge": 1e-3,              # relative ridge of the first stage (ours; 0 = exact least squares)
    "gate_units": [32, 8],      # hidden units of MLP_c / MLP_n (ours; the authors' are 512-128-32 on 1536 inputs)
    "gate_activation": "tanh",  # the authors'
    "gate_l2": 1e-8,            # L2 on the weighting networks (the authors' DIN runs)
}
RANGES = {"ridge": "[0, inf)", "gate_units": "[1, inf)", "gate_l2": "[0, inf)"}
TYPES = {"instruments": list, "treatments": list}
_TINY = 1e-12  # keeps the first stage finite when every instrument is zero (an empty history)


def first_stage(treatment: tf.Tensor, instruments: tf.Tensor, ridge: float) -> tf.Tensor:
    """The fitted part t_hat [B, d] of treatments t [B, d] regressed on instruments Z [B, k, d]
    (rows), per sample: t_hat = Z^T (Z Z^T + lambda I)^-1 Z t, lambda = ridge * trace(Z Z^T) / k.
    Always in the span of the rows of Z; the least-squares projection when ridge = 0."""
    t, z = tf.cast(treatment, tf.float32), tf.cast(instruments, tf.float32)
    k = tf.shape(z)[1]
    gram = tf.linalg.matmul(z, z, transpose_b=True)                              # [B, k, k]
    lam = ridge * tf.linalg.trace(gram) / tf.cast(k, tf.float32) + _TINY        # [B]
    gram += lam[:, None, None] * tf.eye(k, batch_shape=tf.shape(z)[:1], dtype=tf.float32)
    coef = tf.linalg.solve(gram, tf.linalg.matmul(z, t[:, :, None]))             # [B, k, 1]
    return tf.linalg.matmul(coef, z, transpose_a=True)[:, 0, :]                 # [B, d]


@tf.keras.utils.register_keras_serializable("ctrflow")
class Recombination(tf.keras.layers.Layer):
    """(t [B, d], Z [B, k, d]) -> the decomposition of t and its recombination t' (module
    docstring): a dict of ``fitted``, ``residual``, ``causal_weight`` / ``noncausal_weight``
    ([B, 1]: a_c, a_n) and ``reconstructed``, all float32."""

    def __init__(self, units, activation: str = "tanh", l2_reg: float = 0.0, ridge: float = 1e-3, **kw):
        super().__init__(**kw)
        self.units, self.activation, self.l2_reg, self.ridge = list(units), activation, float(l2_reg), float(ridge)
        reg = tf.keras.regularizers.l2(self.l2_reg) if self.l2_reg > 0 else None
        self.gates = {part: (L.MLP(self.units, activation, l2_reg=self.l2_reg, name=f"mlp_{part}"),
                             tf.keras.layers.Dense(1, kernel_regularizer=reg, name=f"weight_{part}"))
                      for part in ("causal", "noncausal")}

    def _weight(self, part: str, x: tf.Tensor, training) -> tf.Tensor:
        mlp, out = self.gates[part]
        return tf.sigmoid(tf.cast(out(mlp(x, training=training)), tf.float32))

    def call(self, treatment, instruments, training=None) -> Dict[str, tf.Tensor]:
        t = tf.cast(treatment, tf.float32)
        z = tf.stop_gradient(tf.cast(instruments, tf.float32))  # exogenous: never fitted to the outcome
        fitted = first_stage(t, z, self.ridge)
        x = tf.concat([t, tf.reshape(z, [-1, z.shape[1] * z.shape[2]])], axis=1)
        a_c, a_n = self._weight("causal", x, training), self._weight("noncausal", x, training)
        residual = t - fitted
        return {"fitted": fitted, "residual": residual, "causal_weight": a_c, "noncausal_weight": a_n,
                "reconstructed": a_c * fitted + a_n * residual}

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "l2_reg": self.l2_reg, "ridge": self.ridge}


def _shared_vocabularies(schema, embedded: Dict[str, str]) -> Dict[str, str]:
    """{embedded sequence: the embedded feature whose vocabulary it shares}."""
    out = {}
    for name, kind in embedded.items():
        target = schema.feature(name).encoding.get("share_vocab_with")
        if kind == "pooled" and target in embedded:
            out[name] = target
    return out


def resolve_roles(schema, features: Optional[List[str]], instruments, treatments):
    """(instrument names, treatment names) from the options (None: the defaults of the module
    docstring), checked against the fields the embedding builds; errors name the option."""
    embedded = {}
    for spec in plan_fields(schema, features):
        embedded[spec.feature] = "multi" if spec.feature in embedded else spec.kind
    shared = _shared_vocabularies(schema, embedded)
    instruments = list(shared) if instruments is None else list(instruments)
    treatments = list(dict.fromkeys(shared[n] for n in instruments if n in shared)) if treatments is None \
        else list(treatments)
    _check_role("instruments", instruments, {n for n, k in embedded.items() if k == "pooled"},
                "embedded sequence features (sequence_vocab or multi-valued)")
    _check_role("treatments", treatments, {n for n, k in embedded.items() if k == "lookup"},
                "embedded single-field categorical features")
    both = sorted(set(instruments) & set(treatments))
    if both:
        raise OptionError(f"framework_options: {both} named both as instrument and treatment")
    return instruments, treatments


def _check_role(key: str, names: list, allowed: set, what: str) -> None:
    if not names:
        raise OptionError(f"framework_options.{key}: none found; framework 'iv' needs at least one. Name them "
                          f"in framework_options.{key} (candidates, {what}: {sorted(allowed)})")
    for i, n in enumerate(names):
        if n not in allowed:
            raise OptionError(f"framework_options.{key}[{i}] = {n!r}: expected one of the {what}: {sorted(allowed)}")
    if len(set(names)) != len(names):
        raise OptionError(f"framework_options.{key} = {names}: a name is repeated")


@register_framework("iv")
@tf.keras.utils.register_keras_serializable("ctrflow")
class IV(CTRModel):
    """IV4Rec over any backbone (module docstring): CTRModel with each treatment field replaced
    by its recombined decomposition before the field modules and the backbone."""

    option_defaults, option_ranges, option_types = DEFAULTS, RANGES, TYPES

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dcnv2", **kw):
        super().__init__(schema_dict, tasks, backbone, **kw)
        o = check_activations(self.options, "framework_options.", "framework 'iv'")
        features = self.embedding_options.get("features")
        self.instrument_names, self.treatment_names = resolve_roles(self.schema, features, o["instruments"],
                                                                    o["treatments"])
        names = [s.feature for s in plan_fields(self.schema, features)]
        self.treatment_fields = {t: names.index(t) for t in self.treatment_names}
        # a backbone reading behaviour sequences (DIN) queries them with the candidate's row in the
        # sequence's table: that embedding of a treatment is decomposed too, by its own networks
        self.treatment_targets = {f"{seq}_target": j for j, (seq, target) in enumerate(self.embedding.sequence_pairs)
                                  if target in self.treatment_names}
        with L.precision_sensitive():
            self.recombination = {key: Recombination(o["gate_units"], o["gate_activation"], o["gate_l2"], o["ridge"],
                                                     name="iv_" + L.safe_name(key))
                                  for key in [*self.treatment_fields, *self.treatment_targets]}

    def instruments(self, inputs: dict) -> tf.Tensor:
        """Z [B, k, d]: the mean of each instrument sequence's non-padding rows (zeros if empty)."""
        out = []
        for name in self.instrument_names:
            rows, mask = self.embedding.sequence_embeddings(inputs, name)
            mask = tf.cast(mask, tf.float32)[..., None]
            count = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
            out.append(tf.reduce_sum(tf.cast(rows, tf.float32) * mask, axis=1) / count)
        return tf.stack(out, axis=1)

    def decompose(self, inputs: dict, emb, training=None) -> Dict[str, Dict[str, tf.Tensor]]:
        """{treatment field, or ``<sequence>_target``: its parts (:class:`Recombination`)} of the
        embedded fields (and sequence targets) ``emb``."""
        z = self.instruments(inputs)
        treatments = {**{t: emb.fields[:, i] for t, i in self.treatment_fields.items()},
                      **{k: emb.sequences[j].target for k, j in self.treatment_targets.items()}}
        return {k: self.recombination[k](t, z, training=training) for k, t in treatments.items()}

    def reconstructed(self, inputs: dict, emb, training=None):
        """``emb`` with each treatment (field, sequence target) replaced by its t'."""
        parts = self.decompose(inputs, emb, training=training)
        columns = tf.unstack(emb.fields, num=emb.fields.shape[1], axis=1)
        for t, i in self.treatment_fields.items():
            columns[i] = tf.cast(parts[t]["reconstructed"], emb.fields.dtype)
        sequences = emb.sequences
        if self.treatment_targets:
            sequences = list(sequences)
            for key, j in self.treatment_targets.items():
                sequences[j] = sequences[j]._replace(target=tf.cast(parts[key]["reconstructed"],
                                                                    sequences[j].target.dtype))
            sequences = tuple(sequences)
        return emb._replace(fields=tf.stack(columns, axis=1), sequences=sequences)

    def embedded(self, inputs: dict, training=None):
        """CTRModel's embedded fields with every treatment replaced by its t'."""
        return self.reconstructed(inputs, self.embedding(inputs, training=training), training=training)

    def variable_groups(self):
        """CTRModel's groups and ``iv``: the weighting networks."""
        return {**super().variable_groups(),
                "iv": [v for layer in self.recombination.values() for v in layer.trainable_variables]}
