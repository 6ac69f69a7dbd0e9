"""Schema-driven field embeddings: encoded feature tensors -> fields [B, F, d] + first-order terms [B, F].

Each selected feature becomes one or more *fields*, all of width ``embedding_dim``; its
encoding class (``features/encodings/``) says how (``field_kind``: lookup, mnse, scale,
pooled, project, or None) and names the fields with their column ranges (``fields``):

=================  ===========================================================================
encoding type      field(s)
=================  ===========================================================================
vocab/hash/        a table row per id (width 1); a multi-valued feature (width > 1) is pooled
bucketize          like a sequence (padding id 0 left out)
mnse               one field per numeral system (+ one for the sign column): the SUM of the
                   embeddings of that system's digit columns (Tencent Eq. 2); column ranges from
                   ``features.mnse.mnse_groups`` (fields ``<name>/base<b>``, ``<name>/sign``)
identity           value * a learned vector (a float of width 1)
sequence_vocab     mean (or ``pooling={name: "sum"}``) of the rows of the non-padding ids; an
                   all-padding sequence gives zeros
dense              a Dense projection of the float vector to ``embedding_dim``
sequence_float     not a field (a later module, e.g. TIM, reads it directly)
=================  ===========================================================================

The first-order term of a field is the same construction with a width-1 table (w_id,
w * value, a 1-unit projection): the linear part of LR / FM / WideDeep / DeepFM / FwFM.
``linear=False`` builds none of it (``EmbeddedFields.linear`` is None) for backbones
that do not read it: no unused weights, no wasted lookups in the hot path.

``sequences=True`` (for backbones with ``uses_sequences``, DIN's target attention) adds
``EmbeddedFields.sequences``: per ``sequence_vocab`` feature that shares its vocabulary
with an embedded scalar feature (``share_vocab_with``, :func:`plan_sequences`), a
:class:`SequenceRows` with the un-pooled rows, their mask, the target's id looked up in the
*sequence's* table (so query and keys share one space) and the index of the sequence's
pooled field. Without it nothing of this is computed.

Ids follow the schema contract: 0 = padding/missing, 1 = OOV, table size
``feature.num_ids``; ids outside ``[0, num_ids)`` are looked up as OOV (a serving-time
safety net, the Beam job never produces them). Scalar features keep a learned row for
id 0 ("missing" is informative); only multi-valued/sequence pooling masks it.

``dims`` gives a feature its own table width; such rows are projected (no bias) to
``embedding_dim`` so every field has width ``d``. ``num_tables > 1`` builds that many
independent sets of all weights (TF4CTR's SER, HDA's shared/specific tables,
Tencent's multi-embedding); ``call(..., table=k)`` reads set ``k``. ``l2_reg`` adds
``l2_reg * sum(row^2) / batch`` over the rows looked up in a batch (not the whole
table, which would make every step's gradient dense over it). Tables start from
N(0, ``initializer_stddev``^2), first-order weights from 0.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from features.encodings import ENCODINGS, encoding_of
from features.encodings.values import EncodeError
from features.schema import OOV_ID, PAD_ID, ROLES, Feature, Schema, SchemaError
from models.layers import embedding_output_dtype, plain, safe_name
from models.options import OptionError, check_options

EmbeddedFields = collections.namedtuple("EmbeddedFields", ["fields", "linear", "sequences"], defaults=(None,))
EmbeddedFields.__doc__ = ("fields [B, F, d] (compute dtype), first-order terms linear [B, F] (or None) and "
                          "the behaviour sequences (a tuple of SequenceRows, or None).")
SequenceRows = collections.namedtuple("SequenceRows", ["rows", "mask", "target", "field", "feature"],
                                      defaults=(None,))
SequenceRows.__doc__ = ("One behaviour sequence against its target: rows [B, L, d], non-padding mask [B, L], "
                        "the target's embedding [B, d] from the sequence's table, the index of the "
                        "sequence's own (pooled) field in fields and the sequence feature's name.")

POOLINGS = ("mean", "sum")
# options a caller may set (``embedding_options`` of a model config) and their ranges
OPTION_DEFAULTS = {"dims": None, "features": None, "num_tables": 1, "l2_reg": 0.0, "pooling": None,
                   "initializer_stddev": 0.01}
OPTION_RANGES = {"num_tables": "[1, inf)", "l2_reg": "[0, inf)", "initializer_stddev": "[0, inf)"}


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One field: its name, its feature, and how it is computed from that feature's columns."""

    name: str
    feature: str
    kind: str  # lookup | mnse | scale | pooled | project
    start: int = 0
    stop: int = 1


def plan_fields(schema, features: Optional[Sequence[str]] = None) -> List[FieldSpec]:
    """The fields (in output order) that :class:`FeatureEmbedding` builds for ``features`` of
    ``schema`` (a :class:`Schema`, or its dict).

    Default features: every schema feature whose encoding makes a field (all but
    ``sequence_float``). Pure Python: callers size backbones before building layers.
    """
    schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
    if features is None:
        selected = [f for f in schema.features if _kind(f) is not None]
    else:
        schema.check_names(features=list(features), what="embedding config")
        if len(set(features)) != len(features):
            raise SchemaError(f"embedding features list repeats a name: {list(features)}")
        selected = [schema.feature(n) for n in features]
    specs: List[FieldSpec] = []
    for f in selected:
        kind = _kind(f)
        if kind is None:
            raise SchemaError(f"feature '{f.name}' (encoding '{f.encoding['type']}') is not an embedding "
                              f"field; leave it out of the embedding's features")
        specs.extend(_feature_fields(f, kind))
    if not specs:
        raise SchemaError("no embedding fields: the selected features are all sequence_float")
    return specs


def field_info(schema, features: Optional[Sequence[str]] = None, added: int = 0) -> List[List[str]]:
    """[feature, role] of every field a model's backbone reads, in field order: the embedded
    fields of ``features`` (:func:`plan_fields`), then ``added`` fields of field modules
    (feature ``""``, role ``"module"``). Backbones that split fields by role or feature
    (GwPFM's parts and groups) read it."""
    schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
    return [[s.feature, schema.feature(s.feature).role] for s in plan_fields(schema, features)] \
        + [["", "module"]] * int(added)


def fields_with_roles(field_roles: Sequence[str], roles: Sequence[str], key: str, required: bool = True) -> List[int]:
    """Indices of the fields (roles in field order, as :func:`field_info` gives them) whose role
    is in ``roles``. An OptionError naming ``key`` when a role is unknown, or (``required``) when
    ``roles`` is not empty but no field has one of them."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise OptionError(f"{key} = {list(roles)}: unknown role(s) {unknown}; roles: {list(ROLES)}")
    index = [i for i, role in enumerate(field_roles) if role in roles]
    if required and roles and not index:
        raise OptionError(f"{key} = {list(roles)}: no embedded field has one of these roles; the fields' roles "
                          f"are {sorted(set(field_roles))}")
    return index


def flat_fields(fields: tf.Tensor, index: Optional[Sequence[int]] = None, dtype=None) -> tf.Tensor:
    """The fields ``index`` (all when None) of [B, F, d] concatenated: [B, n * d], cast to
    ``dtype`` (None: kept). A model's MLP input."""
    if dtype is not None:
        fields = tf.cast(fields, dtype)
    if index is not None:
        fields = tf.gather(fields, tf.constant(list(index), tf.int32), axis=1)
    return tf.reshape(fields, [tf.shape(fields)[0], fields.shape[1] * fields.shape[2]])


def plan_sequences(schema, features: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    """(sequence, target) feature pairs that :class:`FeatureEmbedding` with ``sequences=True``
    gives rows for: a sequence feature embedded as a field whose encoding names, in
    ``share_vocab_with``, an embedded scalar categorical feature. Raises a
    :class:`SchemaError` naming the embedded features when there is none."""
    schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
    specs = plan_fields(schema, features)
    embedded = {s.feature: s for s in specs}
    pairs = []
    for name, spec in embedded.items():
        target = schema.feature(name).encoding.get("share_vocab_with")
        if spec.kind == "pooled" and target in embedded and embedded[target].kind == "lookup":
            pairs.append((name, target))
    if not pairs:
        described = [f"{n} ({schema.feature(n).encoding['type']})" for n in embedded]
        raise SchemaError(f"the backbone attends over behaviour sequences (e.g. din) but no embedded sequence "
                          f"feature shares its vocabulary with an embedded scalar feature (encoding "
                          f"share_vocab_with, e.g. hist_item -> item_id); the embedded features are {described}")
    return pairs


def _kind(f: Feature) -> Optional[str]:
    """How the feature's encoding is embedded (its ``field_kind``; None: not a field)."""
    try:
        return encoding_of(f).field_kind
    except EncodeError:
        raise SchemaError(f"feature '{f.name}': encoding type {f.encoding.get('type')!r} is not registered; "
                          f"known: {sorted(ENCODINGS)} (features/encodings/)") from None


def _feature_fields(f: Feature, kind: str) -> List[FieldSpec]:
    integer = kind in ("lookup", "mnse", "pooled")
    if integer != f.is_integer:
        raise SchemaError(f"feature '{f.name}': encoding '{f.encoding['type']}' needs encoded_dtype "
                          f"{'int64' if integer else 'float32'}, the schema says {f.encoded_dtype}")
    if integer and f.num_ids < 2:
        raise SchemaError(f"feature '{f.name}': num_ids={f.num_ids}, but the table needs at least the "
                          f"padding and OOV rows")
    if f.width < 1:
        raise SchemaError(f"feature '{f.name}': width must be >= 1, got {f.width}")
    if kind == "lookup" and f.width > 1:
        kind = "pooled"  # multi-valued categorical
    if kind == "scale" and f.width != 1:
        raise SchemaError(f"feature '{f.name}': identity encoding needs width 1, got {f.width}")
    fields = encoding_of(f).fields(f)
    if fields[-1][2] != f.width:
        raise SchemaError(f"feature '{f.name}': fields {fields} do not cover width {f.width}")
    return [FieldSpec(name, f.name, kind, start, stop) for name, start, stop in fields]


@tf.keras.utils.register_keras_serializable("ctrflow")
class FeatureEmbedding(tf.keras.layers.Layer):
    """Encoded feature dict -> :class:`EmbeddedFields` (see the module docstring).

    The batch may carry other columns (labels, meta); only the selected features are read.
    """

    def __init__(self, schema_dict: dict, embedding_dim: int = 16, dims: Optional[Dict[str, int]] = None,
                 features: Optional[List[str]] = None, num_tables: int = 1, l2_reg: float = 0.0,
                 pooling: Optional[Dict[str, str]] = None, initializer_stddev: float = 0.01,
                 linear: bool = True, sequences: bool = False, name=None, **kw):
        super().__init__(name=name, **kw)
        check_options(dict(num_tables=num_tables, l2_reg=l2_reg, initializer_stddev=initializer_stddev),
                      OPTION_DEFAULTS, "embedding_options.", "the embedding", OPTION_RANGES)
        # Keras wraps (in place) the dicts and lists a layer holds: the parsed schema gets its own copy
        self.schema = Schema.from_dict(plain(schema_dict))
        self.schema_dict = schema_dict = plain(schema_dict)
        self.embedding_dim = int(embedding_dim)
        if self.embedding_dim < 1:
            raise OptionError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.features = None if features is None else list(features)
        self.specs = plan_fields(self.schema, self.features)
        self.feature_names = list(dict.fromkeys(s.feature for s in self.specs))
        self.num_tables = int(num_tables)
        self.l2_reg = float(l2_reg)
        self.initializer_stddev = float(initializer_stddev)
        self.linear = bool(linear)
        self.sequences = bool(sequences)
        self.sequence_pairs = plan_sequences(self.schema, self.features) if self.sequences else []
        self.dims = dict(dims or {})
        self.pooling = dict(pooling or {})
        self.output_dtype = embedding_output_dtype()  # the fields' dtype as handed on (precision placement)
        self._check_overrides()

    # ---- public description ---------------------------------------------------------
    @property
    def field_names(self) -> List[str]:
        return [s.name for s in self.specs]

    @property
    def field_features(self) -> List[str]:
        """The feature each field comes from (several fields for an MNSE feature)."""
        return [s.feature for s in self.specs]

    @property
    def num_fields(self) -> int:
        return len(self.specs)

    def _feature_kind(self, name: str) -> str:
        return next(s.kind for s in self.specs if s.feature == name)

    def _table_dim(self, name: str) -> int:
        return self.dims.get(name, self.embedding_dim)

    def _check_overrides(self) -> None:
        unknown = sorted(set(self.dims) - set(self.feature_names))
        if unknown:
            raise OptionError(f"embedding_options.dims name features that are not embedded: {unknown}")
        bad = {k: v for k, v in self.dims.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad:
            raise OptionError(f"embedding_options.dims: table widths must be integers >= 1, got {bad}")
        dense = [k for k in self.dims if self._feature_kind(k) == "project"]
        if dense:
            raise OptionError(f"embedding_options.dims do not apply to dense features {dense}: they are "
                              f"projected straight to embedding_dim")
        unknown = sorted(set(self.pooling) - set(self.feature_names))
        if unknown:
            raise OptionError(f"embedding_options.pooling names features that are not embedded: {unknown}")
        for k, v in self.pooling.items():
            if self._feature_kind(k) != "pooled":
                raise OptionError(f"embedding_options.pooling applies to sequence / multi-valued features, "
                                  f"not '{k}'")
            if v not in POOLINGS:
                raise OptionError(f"embedding_options.pooling.{k} = {v!r}: expected one of {list(POOLINGS)}")

    # ---- weights ----------------------------------------------------------------------
    def build(self, input_shape):
        # every table set is built here, projections included, so the weight list does not
        # depend on which tables a caller happens to read first (checkpoints, set_weights)
        self.tables: List[Dict[str, Dict[str, object]]] = []
        for t in range(self.num_tables):
            weights: Dict[str, Dict[str, object]] = {}
            for name in self.feature_names:
                f, kind, dim = self.schema.feature(name), self._feature_kind(name), self._table_dim(name)
                prefix = (f"t{t}_" if self.num_tables > 1 else "") + safe_name(name)
                w: Dict[str, object] = {}
                if kind == "project":
                    w["project"] = tf.keras.layers.Dense(self.embedding_dim, name=f"{prefix}_project",
                                                        dtype=self.dtype_policy)
                    w["project"].build((None, f.width))
                    if self.linear:
                        w["linear"] = tf.keras.layers.Dense(1, use_bias=False, name=f"{prefix}_linear",
                                                           dtype=self.dtype_policy)
                        w["linear"].build((None, f.width))
                else:
                    rows = 1 if kind == "scale" else f.num_ids
                    w["embedding"] = self.add_weight(name=f"{prefix}_embedding", shape=(rows, dim),
                                                     initializer=self._initializer())
                    if self.linear:
                        w["linear"] = self.add_weight(name=f"{prefix}_linear", shape=(rows, 1),
                                                      initializer="zeros")
                    if dim != self.embedding_dim:
                        w["to_dim"] = tf.keras.layers.Dense(self.embedding_dim, use_bias=False,
                                                            name=f"{prefix}_to_dim", dtype=self.dtype_policy)
                        w["to_dim"].build((None, dim))
                weights[name] = w
            self.tables.append(weights)
        super().build(input_shape)

    def _initializer(self):
        # a new instance per table: one unseeded instance called twice repeats its values
        return tf.keras.initializers.RandomNormal(stddev=self.initializer_stddev)

    # ---- forward ----------------------------------------------------------------------
    def call(self, inputs: dict, table: int = 0, training=None) -> EmbeddedFields:
        if not 0 <= int(table) < self.num_tables:
            raise ValueError(f"table {table} out of range: this embedding has {self.num_tables} table set(s)")
        weights = self.tables[int(table)]
        fields, linear, looked_up = [], [], []
        for name in self.feature_names:
            x = self._input(inputs, name)
            per_field = self._embed_feature(name, x, weights[name], looked_up)
            fields.extend(e for e, _ in per_field)
            linear.extend(l for _, l in per_field)
        if self.l2_reg > 0:
            batch = tf.cast(tf.shape(fields[0])[0], tf.float32)
            self.add_loss(self.l2_reg * tf.add_n([tf.reduce_sum(tf.square(tf.cast(r, tf.float32)))
                                                  for r in looked_up]) / batch)
        stacked = tf.stack(fields, axis=1)
        if self.output_dtype:
            stacked = tf.cast(stacked, self.output_dtype)
        return EmbeddedFields(stacked, tf.concat(linear, axis=1) if self.linear else None,
                              self._sequence_rows(inputs, int(table)) if self.sequences else None)

    def _sequence_rows(self, inputs: dict, table: int) -> Tuple[SequenceRows, ...]:
        """A :class:`SequenceRows` per pair of :attr:`sequence_pairs`, from table set ``table``."""
        out = []
        for seq, target in self.sequence_pairs:
            rows, mask = self.sequence_embeddings(inputs, seq, table)
            w = self.tables[table][seq]
            query, _ = self._rows(seq, self._input(inputs, target), w)  # [B, 1, dim]
            field = next(i for i, s in enumerate(self.specs) if s.feature == seq)
            out.append(SequenceRows(rows, mask, self._to_dim(query[:, 0], w), field, seq))
        return tuple(out)

    def sequence_embeddings(self, inputs: dict, name: str, table: int = 0) -> Tuple[tf.Tensor, tf.Tensor]:
        """Un-pooled rows [B, L, d] of an integer sequence / multi-valued feature and its
        non-padding mask [B, L] (for target attention, TIM, ...). Needs a built layer."""
        if self._feature_kind(name) != "pooled":
            raise ValueError(f"'{name}' is not a sequence / multi-valued feature of this embedding")
        if not self.built:
            raise RuntimeError("call the embedding once before sequence_embeddings (it builds the tables)")
        ids = self._input(inputs, name)
        rows, _ = self._rows(name, ids, self.tables[int(table)][name])
        return self._to_dim(rows, self.tables[int(table)][name]), tf.not_equal(ids, PAD_ID)

    def embedding_matrices(self) -> List[Dict[str, tf.Tensor]]:
        """Per table set, {feature: its embedding matrix [num_ids, embedding_dim]}: E_i of Tencent
        KDD'24 Sec. 4.1, whose singular spectrum shows dimensional collapse (``pipeline/collapse.py``).
        Features with a table (lookup, mnse, pooled) only, rows projected to ``embedding_dim`` when
        ``dims`` gives the table its own width (the vectors the backbone reads); identity and dense
        features have none (one learned vector, a projection). Needs a built layer."""
        if not self.built:
            raise RuntimeError("call the embedding once before embedding_matrices (it builds the tables)")
        return [{name: self._to_dim(tf.convert_to_tensor(w["embedding"]), w) for name, w in weights.items()
                 if self._feature_kind(name) in ("lookup", "mnse", "pooled")} for weights in self.tables]

    def _input(self, inputs: dict, name: str) -> tf.Tensor:
        if name not in inputs:
            raise KeyError(f"FeatureEmbedding: the batch lacks feature '{name}' (it has: {sorted(inputs)})")
        f = self.schema.feature(name)
        x = inputs[name]
        if x.shape.rank == 1:
            x = x[:, None]
        if x.shape[-1] is not None and x.shape[-1] != f.width:
            raise ValueError(f"feature '{name}': expected width {f.width} (schema), got shape {x.shape}")
        if f.is_integer != x.dtype.is_integer:
            raise TypeError(f"feature '{name}': expected {f.encoded_dtype} values, got {x.dtype.name}")
        return x

    def _rows(self, name: str, ids: tf.Tensor, w: dict) -> tf.Tensor:
        """Embedding rows [B, W, dim] and first-order weights [B, W] (None without ``linear``)
        of integer ids [B, W]; out-of-range ids read as OOV."""
        num_ids = self.schema.feature(name).num_ids
        ids = tf.cast(ids, tf.int64)
        ids = tf.where((ids < 0) | (ids >= num_ids), tf.constant(OOV_ID, tf.int64), ids)
        # embedding_lookup (a gather) also reads a ShardedVariable shard by shard (ParameterServerStrategy)
        lin = tf.nn.embedding_lookup(w["linear"], ids)[..., 0] if self.linear else None
        return tf.nn.embedding_lookup(w["embedding"], ids), lin

    def _to_dim(self, rows: tf.Tensor, w: dict) -> tf.Tensor:
        rows = tf.cast(rows, self.compute_dtype)
        return w["to_dim"](rows) if "to_dim" in w else rows

    def _embed_feature(self, name: str, x: tf.Tensor, w: dict, looked_up: list):
        """[(field [B, d], linear [B, 1]), ...] of one feature, one pair per field."""
        kind = self._feature_kind(name)
        cdt = self.compute_dtype
        lin_on = self.linear
        if kind == "project":
            x = tf.cast(x, cdt)
            return [(w["project"](x), w["linear"](x) if lin_on else None)]
        if kind == "scale":  # identity: value * v, value * w
            x = tf.cast(x, cdt)
            return [(self._to_dim(x * tf.cast(w["embedding"], cdt), w),
                     x * tf.cast(w["linear"][0], cdt) if lin_on else None)]
        rows, lin = self._rows(name, x, w)  # [B, W, dim], [B, W] or None
        looked_up.append(rows)
        rows = tf.cast(rows, cdt)
        lin = tf.cast(lin, cdt) if lin_on else None
        if kind == "pooled":
            mask = tf.cast(tf.not_equal(x, PAD_ID), cdt)  # [B, W]
            emb = tf.reduce_sum(rows * mask[..., None], axis=1)
            lin = tf.reduce_sum(lin * mask, axis=1, keepdims=True) if lin_on else None
            if self.pooling.get(name, "mean") == "mean":
                count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
                emb = emb / count
                lin = lin / count if lin_on else None
            return [(self._to_dim(emb, w), lin)]
        out = []  # lookup (one column) and mnse (Eq. 2: sum over each system's columns)
        for spec in (s for s in self.specs if s.feature == name):
            emb = tf.reduce_sum(rows[:, spec.start:spec.stop], axis=1)
            first = tf.reduce_sum(lin[:, spec.start:spec.stop], axis=1, keepdims=True) if lin_on else None
            out.append((self._to_dim(emb, w), first))
        return out

    def get_config(self):
        return {**super().get_config(), "schema_dict": plain(self.schema_dict), "embedding_dim": self.embedding_dim,
                "dims": plain(self.dims), "features": plain(self.features), "num_tables": self.num_tables,
                "l2_reg": self.l2_reg, "pooling": plain(self.pooling), "initializer_stddev": self.initializer_stddev,
                "linear": self.linear, "sequences": self.sequences}
