"""The transform protocol and registry of the preprocess job's transform stage.

A transform is a :class:`Transform` subclass registered by name with
:func:`register_transform`; a config lists the ones to run (``transforms: [{name: ...,
<options>}]`` in ``pipeline/preprocess_config.py``), and :func:`build_transforms` checks each
entry when the config is loaded. The job (``pipeline/beam/stage.py``) runs them in config
order over the validated rows of the splits they apply to, a chunk of rows at a time:

* ``index_part`` / ``merge_index`` / ``build_index`` (only when ``uses_index``): a side
  index built from the **training split's** rows as they reach this transform, computed once
  as a Beam side input (a combine: a part per chunk, merged in any order, then finished);
* ``apply(batch, side)``: the output rows, 0..n per input row, given as the input row of each
  output row (``Output.take``) plus the columns the transform adds or replaces, and optionally
  the transform's own counters per input row (``Output.counts``, named in ``count_names``).

A transform **before the split** (``before_split = True``, e.g. ``k_core``) filters the data set
as if before the split: it sees the rows of every main split (its ``splits`` are all of them; it
takes no ``splits`` option), not the extra splits' inputs, its side index comes from all those
rows, and it is listed before the other transforms. A random or given split places a row by the
row alone (a hash of its key, its split column), so dropping rows once their splits are known
keeps the same rows in the same splits as dropping them first; a time split's cut points are
computed over every row before the transform stage, so such a transform refuses a time split.
The job builds these transforms' indexes first, in passes of their own (on every runner). An
**iterative** index (``iterative = True``, before the split only) is built in rounds: round 1
from the rows as they reach the transform, every later round from the rows
``apply(batch, previous round's side)`` outputs, for as long as the launcher-side
``next_round(side, rounds)`` asks for another round.

Two optional launcher-side hooks: ``prepare(config)`` loads what ``apply`` needs from outside
the rows (e.g. a table of ads) once, before the job, into compact picklable values that travel
to the workers with the transform; ``statistics(folder)`` runs after the job succeeded and
returns a dict for ``stats.json`` (writing any file of its own into the output folder).

Columns a transform adds (:meth:`Transform.added_columns`) become meta columns of the schema,
sample weights among them also ``weight_columns``; rows of splits it does not apply to get the
column's ``fill`` value. Raw columns a transform computes (:meth:`Transform.filled_columns`,
e.g. a visual semantic ID from side images) are not read from the input: every config feature
reading such a column arrives at the stage missing (its canonical missing value) and the
transform gives its values in ``Output.columns`` under the feature's name; rows of splits it
does not apply to keep them missing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import numpy as np

from features.registry import registrar
from models.options import OptionError, check_options

TRANSFORMS: Dict[str, type] = {}


# class decorator: register a Transform subclass under a name (a taken name fails)
register_transform = registrar(TRANSFORMS, "transform", attr="name")


@dataclasses.dataclass(frozen=True)
class Column:
    """A column a transform adds: its dtype, its value on rows of the splits the transform does not
    apply to, and whether it is a sample weight (listed in the schema's ``weight_columns``)."""

    dtype: str  # int64 | float32
    fill: float
    weight: bool = False


@dataclasses.dataclass
class Batch:
    """Validated rows of one input file's chunk, all of splits the transform applies to.

    ``columns`` are the canonical columns by output name (``pipeline/beam/coercion.py``):
    features (keys, numbers, or ``ListColumn`` for list encodings), labels (float32), meta
    (``user_key``, ``source``, weights, extra meta) and earlier transforms' columns.
    """

    columns: Dict[str, Any]
    split: np.ndarray  # int64 split index per row (``JobPlan.splits``)
    file: str  # the input file, relative to the input's common folder
    rows: np.ndarray  # int64 row index in ``file``: (file, row) is the row's stable key

    def __len__(self) -> int:
        return len(self.rows)


@dataclasses.dataclass
class Output:
    """What :meth:`Transform.apply` returns: ``take[i]`` is the batch row output row i comes from
    (None: every row once, in order); ``columns`` hold added or replaced columns, one value per
    output row (numpy arrays; list-valued feature columns cannot be replaced)."""

    take: Optional[np.ndarray] = None
    columns: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # the transform's counters (``Transform.count_names``), one int per batch row, summed per split
    counts: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class Transform:
    """Base class of the transforms (see the module docstring). Subclasses declare ``defaults``
    (every option and its default; ``splits`` is common to all), ``ranges`` / ``choices`` /
    ``types`` as :func:`models.options.check_options` takes them, and implement :meth:`apply`."""

    name = ""  # set by register_transform
    defaults: Dict[str, Any] = {}
    ranges: Dict[str, str] = {}
    choices: Dict[str, tuple] = {}
    types: Dict[str, type] = {}
    uses_index = False  # True: index_part / merge_index / build_index build a side index from train rows
    before_split = False  # True: filters every main split's rows as if before the split (module docstring)
    iterative = False  # True (before_split only): the side index is built in rounds until next_round says stop
    count_names: tuple = ()  # counters apply returns in Output.counts, in stats.json beside rows in / out
    COMMON = {"splits": ["train"]}  # the splits whose rows the transform sees

    def __init__(self, **options):
        self.options = {**self.COMMON, **self.defaults, **options}

    # ---- configuration --------------------------------------------------------------------
    def check(self, config, where: str) -> None:
        """Checks against the rest of the preprocess config (``where`` names the entry, e.g.
        ``transforms[0]``); raises OptionError. Subclasses extend it (calling super)."""
        known = list(config.split.ratios) + list(config.split.extra_splits)
        for s in self.options["splits"]:
            if s not in known:
                raise OptionError(f"{where}.splits: '{s}' is not a split of this config; known: {known} "
                                  f"(transform '{self.name}')")

    def added_columns(self) -> Dict[str, Column]:
        """The columns :meth:`apply` adds, by name."""
        return {}

    def filled_columns(self) -> List[str]:
        """Raw columns :meth:`apply` computes instead of the input holding them (see the module
        docstring); the features reading them are replaced columns of its Output."""
        return []

    def inputs(self) -> List[str]:
        """Files the transform reads besides the rows (the output folder may not hold them)."""
        return []

    # ---- launcher side ---------------------------------------------------------------------
    def prepare(self, config) -> None:
        """Before the job, on the launcher: load what :meth:`apply` needs from outside the rows
        (kept on ``self``, pickled to the workers). Raises UserError for a bad input."""

    def statistics(self, folder: str) -> Dict[str, Any]:
        """After the job succeeded: statistics for ``stats.json`` (``transforms.<name>.statistics``);
        files of its own go into ``folder``, the output folder being written."""
        return {}

    # ---- side index (uses_index) ---------------------------------------------------------
    def index_part(self, batch: Batch) -> Any:
        """The index's part from a batch of training rows."""
        raise NotImplementedError

    def merge_index(self, parts: List[Any]) -> Any:
        """One part from several (the runner merges in any order, so the result must not depend on it)."""
        raise NotImplementedError

    def build_index(self, part: Any) -> Any:
        """The side value :meth:`apply` receives, from the merged part (None when train has no rows)."""
        return part

    def next_round(self, side: Any, rounds: int) -> bool:
        """Iterative index, on the launcher after round ``rounds`` (1, 2, ...) built ``side``: whether
        to build another round from the rows ``apply(batch, side)`` outputs. Raises UserError to
        fail the job (e.g. no convergence within a cap)."""
        return False

    # ---- the rows ------------------------------------------------------------------------
    def apply(self, batch: Batch, side: Any) -> Output:
        """The output rows of ``batch`` (``side``: the built index, or None without one)."""
        raise NotImplementedError


def build_transforms(config) -> List[Transform]:
    """The transforms of ``config.transforms`` in order, every entry checked: a known ``name``
    listed once, known options of the right type and range, consistent with the config.
    Raises OptionError naming ``transforms[i]`` and the key."""
    out: List[Transform] = []
    for i, entry in enumerate(config.transforms):
        where = f"transforms[{i}]"
        name = entry.get("name")
        if not isinstance(name, str) or name not in TRANSFORMS:
            given = f" = {name!r}:" if "name" in entry else ": missing;"
            raise OptionError(f"{where}.name{given} expected a registered transform, one of {sorted(TRANSFORMS)}")
        if any(t.name == name for t in out):
            raise OptionError(f"{where}.name = {name!r}: this transform is listed twice; list it once")
        cls = TRANSFORMS[name]
        options = {k: v for k, v in entry.items() if k != "name"}
        if cls.iterative and not (cls.uses_index and cls.before_split):
            raise TypeError(f"transform '{name}': an iterative index needs uses_index and before_split")
        if cls.before_split:
            options["splits"] = _before_split(cls, options, config, where, out)
        options = check_options(options, {**Transform.COMMON, **cls.defaults}, f"{where}.", f"transform '{name}'",
                                cls.ranges, cls.choices, cls.types)
        transform = cls(**options)
        transform.check(config, where)
        out.append(transform)
    return out


def _before_split(cls, options: Dict[str, Any], config, where: str, earlier: List[Transform]) -> List[str]:
    """The splits of a transform before the split (every main split), after checking that its
    entry takes no ``splits``, comes before the other transforms and the split is not by time."""
    name = cls.name
    if "splits" in options:
        raise OptionError(f"{where}.splits: transform '{name}' filters every split of the main input as if before "
                          "the split; it takes no splits option")
    later = [t.name for t in earlier if not t.before_split]
    if later:
        raise OptionError(f"{where}: transform '{name}' filters as if before the split; list it before {later}")
    if config.split.method == "time":
        raise OptionError(f"{where}: transform '{name}' filters as if before the split, which a time split cannot "
                          "follow (its cut points are computed over every row before the transforms); use "
                          "split.method random or given")
    return list(config.split.ratios)
