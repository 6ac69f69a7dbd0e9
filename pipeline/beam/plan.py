"""The job's plan: everything the workers need, resolved and checked on the launcher.

:class:`JobPlan` lists the input files, resolves the split names, the feature specs and the
statistics each needs, and builds the validator and the transforms.
:func:`read_chunks` is how every step gets rows: it reads a read unit (again) and yields its
validated chunks.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import numpy as np

from features import encoders as E
from features.encodings import encoding_of
from pipeline.beam.splits import UNASSIGNED_SPLIT
from pipeline.beam.transforms import Column
from pipeline.beam.validation import USER_GROUP, ValidatedChunk, Validator
from pipeline.config import ConfigError
from pipeline.preprocess_config import PreprocessConfig
from pipeline.raw_io import list_inputs, plan_units, read_unit


class JobPlan:
    """Everything the workers need, resolved and checked on the launcher before the run."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        split = config.split
        self.main_splits = list(split.ratios)
        if split.method == "given" and "train" not in self.main_splits:
            raise ConfigError("split.method 'given' takes its split names from split.ratios, which must "
                              "include 'train'")
        clash = sorted(set(split.extra_splits) & set(self.main_splits))
        if clash or UNASSIGNED_SPLIT in split.extra_splits or UNASSIGNED_SPLIT in self.main_splits:
            raise ConfigError(f"split.extra_splits names {clash or [UNASSIGNED_SPLIT]} clash with the "
                              f"main splits {self.main_splits} or the reserved '{UNASSIGNED_SPLIT}'")
        self.splits = self.main_splits + list(split.extra_splits)
        self.specs = config.feature_specs()
        try:
            self.needs = {s.name: E.analyzers_needed(s) for s in self.specs}
            E.sort_for_build(self.specs)
        except E.EncodeError as exc:
            raise ConfigError(f"features: {exc}") from None
        self.list_features = {s.name for s in self.specs
                              if encoding_of(s).list_valued}
        for s in self.specs:
            if s.name in self.list_features and self.needs[s.name] - {"counts"}:
                raise ConfigError(f"feature '{s.name}': list encodings support only the counts statistic")
        self.transforms = config.transform_steps()
        self.before_split = sum(t.before_split for t in self.transforms)  # the first ones (checked at load)
        self.validator = Validator(config, self.main_splits, self._filled_columns())
        self.transform_splits = {t.name: np.array([self.splits.index(s) for s in t.options["splits"]], np.int64)
                                 for t in self.transforms}
        self._check_added_columns()
        fmt = config.input.format
        self.sources = [(None, list_inputs(config.input.paths(), fmt))]  # (fixed split index or None, [(path, rel)])
        for i, (name, path) in enumerate(split.extra_splits.items(), len(self.main_splits)):
            self.sources.append((i, list_inputs([path], fmt, f"split.extra_splits.{name}")))
        for t in self.transforms:
            t.prepare(config)
        self.by_time = split.method == "time"
        self.train_index = self.main_splits.index("train")

    def _filled_columns(self) -> List[str]:
        """The raw columns the transforms compute (``Transform.filled_columns``), each by one transform."""
        owner: Dict[str, str] = {}
        for i, t in enumerate(self.transforms):
            for column in t.filled_columns():
                if column in owner:
                    raise ConfigError(f"transforms[{i}] ({t.name}) computes the column '{column}', which transform "
                                      f"'{owner[column]}' computes too; let one transform compute it")
                owner[column] = t.name
        return list(owner)

    def _check_added_columns(self) -> None:
        """Columns the transforms add must be new: not a feature, label or meta column, nor another's."""
        taken = set(self.validator.output_names) | ({USER_GROUP} if self.config.user_column else set())
        for i, t in enumerate(self.transforms):
            for name in t.added_columns():
                if name in taken:
                    raise ConfigError(f"transforms[{i}] ({t.name}) adds the column '{name}', which the config "
                                      "already has (a feature, label, meta column or an earlier transform's); choose "
                                      "another name")
                taken.add(name)

    def added_columns(self) -> Dict[str, Column]:
        """The columns the transforms add, in config order."""
        return {name: c for t in self.transforms for name, c in t.added_columns().items()}

    def tasks(self) -> List[Tuple[int, int, str, str]]:
        """(source index, file index, path, relative name) of every input file."""
        return [(s, f, path, rel) for s, (_, files) in enumerate(self.sources)
                for f, (path, rel) in enumerate(files)]


def plan_file(task, fmt):
    s, f, path, rel = task
    return [(s, f, u) for u in plan_units(path, rel, fmt)]


def read_chunks(item, plan: JobPlan) -> Iterable[ValidatedChunk]:
    """A read unit's validated chunks."""
    s, f, unit = item
    cfg, v = plan.config, plan.validator
    fixed = plan.sources[s][0]
    for raw in read_unit(unit, cfg.input.format, v.raw_columns, v.list_columns,
                         cfg.batch_size, cfg.input.csv_delimiter, cfg.input.list_delimiter):
        yield v.validate(raw, (s, f, raw.row_offset), fixed)
