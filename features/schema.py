"""The feature schema: the contract between the Beam job, the models and serving.

The preprocessing job writes ``schema.json`` beside the TFRecords; models are built
from it alone and the serving graph re-applies its encodings to raw requests.

Id convention for every integer-encoded feature: id 0 is padding / missing, id 1 is
OOV (for vocabularies), real values start at 2; ``num_ids`` is the table size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Dict, List, NamedTuple, Optional

from features.errors import UserError

KINDS = ("categorical", "numeric", "sequence", "dense")
ROLES = ("user", "personal", "item", "ad", "context", "sequence")
PAD_ID = 0
OOV_ID = 1


class SchemaError(UserError):
    """A schema, config or record that does not match the contract."""


# Side inputs: meta columns that reach the model as train-only inputs under fixed keys, whatever the
# dataset calls them. key -> (the Schema field naming the meta column, dtype ("" = the column's own),
# the value the serving signatures fill in: clients never send them). A schema without the column has
# no such input, in training and at serving alike, so a framework that needs one can refuse the data.
SIDE_INPUTS = {
    "_source": ("source_column", "int64", 1),  # 1 = ad sample, 0 = rec sample; serving: ad
    "_group": ("group_column", "int64", -1),  # 1 = head user, 0 = tail user; serving: -1 = unknown
    "_user": ("user_column", "", None),  # the user key; serving: the dtype's UNKNOWN_KEY
}
UNKNOWN_KEY = {"string": "", "int64": -1, "float32": -1.0}  # the serving value of an unknown user key


class SideColumn(NamedTuple):
    """One side input of a schema (see :data:`SIDE_INPUTS`): its meta column, dtype and serving value."""

    column: str
    dtype: str
    default: Any


@dataclasses.dataclass
class Feature:
    """One model input.

    kind:      categorical | numeric | sequence | dense
    dtype:     the raw dtype as it arrives in a request: string | int64 | float32
    role:      user | personal | item | ad | context | sequence
    encoding:  {"type": ..., params...}: vocab, hash, bucketize, mnse, identity,
               sequence_vocab, sequence_float, dense (one class each in ``features/encodings/``)
    num_ids:   size of the embedding table for integer encodings (0 for float ones)
    width:     values per example after encoding (1 for scalars; sequence length;
               MNSE digit count; dense dimension)
    encoded_dtype: int64 | float32 — how the TFRecord stores the encoded value
    required:  a missing required feature is a bad row; others take ``default``
    """

    name: str
    kind: str
    dtype: str
    role: str
    encoding: Dict[str, Any]
    num_ids: int = 0
    width: int = 1
    encoded_dtype: str = "int64"
    required: bool = False
    default: Any = None
    source: Optional[str] = None  # raw column (defaults to name)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SchemaError(f"feature '{self.name}': kind '{self.kind}' not in {KINDS}")
        if self.role not in ROLES:
            raise SchemaError(f"feature '{self.name}': role '{self.role}' not in {ROLES}")
        if self.encoded_dtype not in ("int64", "float32"):
            raise SchemaError(f"feature '{self.name}': encoded_dtype must be int64 or float32")

    @property
    def raw_column(self) -> str:
        return self.source or self.name

    @property
    def is_integer(self) -> bool:
        return self.encoded_dtype == "int64"


@dataclasses.dataclass
class Schema:
    """Features, labels (one per task) and meta columns of an encoded dataset.

    meta columns are stored in the TFRecords but are not model inputs: the user key
    for per-user metrics, the head/tail user group, the sample source (ad / rec),
    sample weights, the simulator's true click probability.
    """

    features: List[Feature]
    labels: List[str]
    meta: Dict[str, str] = dataclasses.field(default_factory=dict)  # name -> int64|float32
    user_column: Optional[str] = None  # meta column with the per-user key
    group_column: Optional[str] = None  # meta column: 1 = head user, 0 = tail user
    source_column: Optional[str] = None  # meta column: 1 = ad sample, 0 = rec sample
    weight_columns: List[str] = dataclasses.field(default_factory=list)
    vocab_dir: str = "vocab"
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SchemaError(f"duplicate feature names: {sorted(dup)}")
        for col in [self.user_column, self.group_column, self.source_column, *self.weight_columns]:
            if col is not None and col not in self.meta:
                raise SchemaError(f"column '{col}' is named by the schema but is not a meta column")

    # ---- look-up -------------------------------------------------------------
    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise SchemaError(f"the schema has no feature '{name}' (it has: {', '.join(self.feature_names)})")

    @property
    def feature_names(self) -> List[str]:
        return [f.name for f in self.features]

    def side_columns(self) -> Dict[str, SideColumn]:
        """{side input key: SideColumn} for the side columns this schema has (:data:`SIDE_INPUTS`)."""
        out = {}
        for key, (field, dtype, default) in SIDE_INPUTS.items():
            column = getattr(self, field)
            if column is not None:
                dtype = dtype or self.meta[column]
                out[key] = SideColumn(column, dtype, UNKNOWN_KEY[dtype] if default is None else default)
        return out

    def features_by_role(self, *roles: str) -> List[Feature]:
        return [f for f in self.features if f.role in roles]

    def check_names(self, features=(), labels=(), what="config") -> None:
        """Fail naming every feature or label that the schema lacks."""
        missing = [n for n in features if n not in self.feature_names]
        missing_l = [n for n in labels if n not in self.labels]
        msgs = []
        if missing:
            msgs.append(f"features {missing} (schema has {self.feature_names})")
        if missing_l:
            msgs.append(f"tasks/labels {missing_l} (schema has {self.labels})")
        if msgs:
            raise SchemaError(f"the {what} names what the schema lacks: " + "; ".join(msgs))

    # ---- JSON round-trip -----------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Schema":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SchemaError(f"unknown schema keys: {sorted(unknown)}")
        fknown = {f.name for f in dataclasses.fields(Feature)}
        feats = []
        for fd in d.pop("features"):
            bad = set(fd) - fknown
            if bad:
                raise SchemaError(f"feature '{fd.get('name')}': unknown keys {sorted(bad)}")
            feats.append(Feature(**fd))
        return cls(features=feats, **d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Schema":
        return cls.from_dict(json.loads(text))

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            fh.write(self.to_json())

    @classmethod
    def load(cls, path: str) -> "Schema":
        import os

        if os.path.isdir(path):
            path = os.path.join(path, "schema.json")
        try:
            with open(path) as fh:
                return cls.from_json(fh.read())
        except FileNotFoundError:
            raise SchemaError(f"no schema at '{path}': run `ctrflow preprocess` first") from None
        except json.JSONDecodeError as exc:
            raise SchemaError(f"'{path}' is not valid JSON ({exc}): re-run `ctrflow preprocess`") from None

    def fingerprint(self) -> str:
        """A short hash of the schema, recorded in every run directory."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
