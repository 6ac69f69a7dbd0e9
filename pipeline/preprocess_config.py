"""The preprocess job's config: raw input, features to encode, labels, split, runner.

Example (``configs/preprocess_sim.yaml``)::

    input: {path: "out/raw/impressions-*.parquet", format: parquet}   # or a list: [ads/*.parquet, rec/*.parquet]
    output: out/data
    features:
      - {name: user_id, kind: categorical, dtype: string, role: personal,
         encoding: {type: vocab, min_count: 2}}
      - {name: price, kind: numeric, dtype: float32, role: item,
         encoding: {type: mnse, bases: [2, 3, 10], digits: [12, 8, 4]}}
      - {name: hist_category, kind: sequence, dtype: string, role: sequence,
         encoding: {type: sequence_vocab, max_len: 20, min_count: 1}}
      - {name: user_pretrained, kind: dense, dtype: float32, role: user,
         encoding: {type: dense, dim: 16}}
    labels: [click, conversion]
    user_column: user_id          # raw column keyed for per-user metrics / head-tail
    source_column: source         # raw column: "ad" / "rec" (optional)
    weight_columns: []
    extra_meta: {true_ctr: float32, ad_id: string}   # passed through, not model inputs
    split: {method: random, ratios: {train: 0.8, valid: 0.1, test: 0.1}, seed: 7}
    max_quarantine_fraction: 0.01
    runner: {name: DirectRunner, num_workers: 2}
    transforms: [{name: negative_downsampling, rate: 0.1}]   # optional; docs/preprocess.md

Raw formats: parquet, csv (``csv_delimiter``, header row), jsonl. List-valued raw
columns (sequences, dense vectors) are list columns in Parquet/JSON and
``list_delimiter``-separated strings in CSV.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from features.schema import KINDS, ROLES
from pipeline.config import ConfigError, option

RAW_FORMATS = ("parquet", "csv", "jsonl")
SPLIT_METHODS = ("random", "time", "given")
RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")  # Beam DirectRunner's


@dataclasses.dataclass
class InputConfig:
    # a file, directory or glob, or a list of them (e.g. the ads log and the rec log): a str or a
    # list of str, checked by PreprocessConfig (typed Any: the config checker takes only Optional unions)
    path: Any
    format: str = option("parquet", choices=RAW_FORMATS)
    csv_delimiter: str = ","
    list_delimiter: str = "|"

    def paths(self) -> List[str]:
        """``path`` as a list (a single path is a list of one)."""
        return [self.path] if isinstance(self.path, str) else list(self.path)

    def __post_init__(self):
        for name in ("csv_delimiter", "list_delimiter"):
            if len(getattr(self, name)) != 1:
                raise ConfigError(f"{name} = {getattr(self, name)!r}: expected one character")


@dataclasses.dataclass
class FeatureSpec:
    """What to encode; ``features.encoders`` turns it + train statistics into a Feature."""

    name: str
    kind: str = option(choices=KINDS)
    dtype: str = option(choices=("string", "int64", "float32"))
    role: str = option(choices=ROLES)
    encoding: Dict[str, Any]
    required: bool = False
    default: Any = None
    source: Optional[str] = None  # raw column name when it differs from ``name``


@dataclasses.dataclass
class SplitConfig:
    """random: hash of (seed, row key) against ``ratios``; time: ``time_column`` cut
    at the ratio quantiles (earliest rows train); given: ``given_column`` holds the
    split name of every row."""

    method: str = option("random", choices=SPLIT_METHODS)
    ratios: Dict[str, float] = option(factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1}, gt=0)
    seed: int = option(7, min=0)
    time_column: Optional[str] = None
    given_column: Optional[str] = None
    extra_splits: Dict[str, str] = dataclasses.field(default_factory=dict)  # name -> raw path (e.g. random-policy test log)

    def __post_init__(self):
        if self.method == "time" and not self.time_column:
            raise ConfigError("method 'time' needs time_column")
        if self.method == "given" and not self.given_column:
            raise ConfigError("method 'given' needs given_column")
        if "train" not in self.ratios and self.method != "given":
            raise ConfigError(f"ratios must include 'train', got {self.ratios}")


@dataclasses.dataclass
class RunnerConfig:
    name: str = "DirectRunner"  # DirectRunner | DaskRunner | DataflowRunner | FlinkRunner ...
    num_workers: int = option(2, min=1)
    running_mode: str = option("multi_processing", choices=RUNNING_MODES)  # DirectRunner only
    dask_address: Optional[str] = None  # scheduler address for DaskRunner
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # extra PipelineOptions


@dataclasses.dataclass
class PreprocessConfig:
    input: InputConfig
    output: str
    features: List[Dict[str, Any]]
    labels: List[str]
    user_column: Optional[str] = None
    source_column: Optional[str] = None
    weight_columns: List[str] = dataclasses.field(default_factory=list)
    extra_meta: Dict[str, str] = dataclasses.field(default_factory=dict)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    head_user_fraction: float = option(0.2, gt=0, max=1)  # HDA: head = top 20 % users by training samples
    max_quarantine_fraction: float = option(0.01, min=0, max=1)
    num_shards: int = option(4, min=1)
    batch_size: int = option(4096, min=1)  # rows per vectorised encode batch
    # zlib level (0-9) of the gzip shards: 1 is 2x faster than 6 for ~15 % more bytes
    compression_level: int = option(1, min=0, max=9)
    runner: RunnerConfig = dataclasses.field(default_factory=RunnerConfig)
    # an earlier preprocess output: encode with its schema.json, vocabularies and head users as they
    # are (no statistics pass; unseen values -> OOV, counted in stats.json); `--schema` sets it
    schema_from: Optional[str] = None
    # named transforms run over the validated rows, in order: [{name: negative_downsampling, rate: 0.1}]
    # (pipeline/beam/transforms/; options checked at load)
    transforms: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self._check_input_paths()
        self.transform_steps()

    def _check_input_paths(self) -> None:
        """``input.path``: a non-empty string or a non-empty list of them (errors name ``input.path[i]``)."""
        path = self.input.path
        if isinstance(path, str):
            if not path:
                raise ConfigError("input.path = '': expected a file, folder or glob (or a list of them)")
            return
        if not isinstance(path, list) or not path:
            raise ConfigError(f"input.path = {path!r}: expected a file, folder or glob, or a non-empty list of them")
        for i, p in enumerate(path):
            if not isinstance(p, str) or not p:
                raise ConfigError(f"input.path[{i}] = {p!r}: expected a file, folder or glob (a non-empty string)")

    def feature_specs(self) -> List[FeatureSpec]:
        from pipeline.config import from_dict

        return [from_dict(FeatureSpec, f, where=f"features[{i}]") for i, f in enumerate(self.features)]

    def transform_steps(self) -> list:
        """The configured transforms (``pipeline.beam.transforms.Transform``), each entry checked."""
        # imported here: transform modules may import the Beam job's modules, which import this one
        from pipeline.beam.transforms import build_transforms

        return build_transforms(self)
