"""The tables and experts of an experts model, from its ``framework_options`` (pure Python: the
training config's checks run it before anything is built).

``tables`` lists the embedding tables, each ``{width, owner}``:

    width   the table's width k_t (null: the model's ``embedding_dim``)
    owner   shared (every task reads it) | task (one table per task: STEM's task-specific
            tables) | main (the first task's only: STEM-AL's main table)

``experts`` lists the experts, each ``{table, owner, count, backbone, backbone_options}``:

    table             the index in ``tables`` of the table whose field embeddings it reads
    owner             null (its table's) | shared | task (one expert per task: PLE's task-specific
                      experts, which read a shared table) | main (the first task's)
    count             how many such experts (MMoE's 8)
    backbone          a registered backbone (``models.backbones``), whose ``repr`` is the expert's
                      output h; null: the model's ``backbone`` with its ``backbone_options``
    backbone_options  the named backbone's options (its defaults for the rest)

An expert of a task-owned table belongs to that table's task; a shared expert reads a shared
table. :func:`resolve` expands ``task`` / ``main`` and ``count`` into the model's tables and
experts; owners become task indices (None = shared).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

from models.backbones import backbone_class
from models.options import OptionError, check_options

SHARED, TASK, MAIN = "shared", "task", "main"
OWNERS = (SHARED, TASK, MAIN)
TABLE_DEFAULTS = {"width": None, "owner": SHARED}
EXPERT_DEFAULTS = {"table": 0, "owner": None, "count": 1, "backbone": None, "backbone_options": None}
_RANGES = {"width": "[1, inf)", "table": "[0, inf)", "count": "[1, inf)"}
_TYPES = {"width": int, "owner": str, "backbone": str, "backbone_options": dict}
_CHOICES = {"owner": (*OWNERS, None)}


@dataclasses.dataclass(frozen=True)
class Table:
    """A resolved embedding table: ``spec`` its index in ``tables``, ``owner`` None (shared) or a task index."""

    spec: int
    owner: Optional[int]
    width: int


@dataclasses.dataclass(frozen=True)
class Expert:
    """A resolved expert: ``spec`` its index in ``experts``, ``table`` the index of the resolved
    table it reads, ``owner`` None (shared) or a task index, its backbone and checked options."""

    spec: int
    table: int
    owner: Optional[int]
    backbone: str
    options: Dict[str, Any]


def check_structure(tables: List[dict], experts: List[dict], prefix: str) -> Tuple[List[dict], List[dict]]:
    """``tables`` and ``experts`` checked (keys, types, ranges, table indices, owners, backbone
    names and options); returns them with every key filled in. Errors are :class:`OptionError`
    naming ``prefix`` + ``tables[i].key`` / ``experts[i].key``."""
    if not tables:
        raise OptionError(f"{prefix}tables = []: expected at least one table")
    if not experts:
        raise OptionError(f"{prefix}experts = []: expected at least one expert")
    tables = [_entry(t, TABLE_DEFAULTS, f"{prefix}tables[{i}].", "an embedding table") for i, t in enumerate(tables)]
    experts = [_entry(e, EXPERT_DEFAULTS, f"{prefix}experts[{i}].", "an expert") for i, e in enumerate(experts)]
    for i, e in enumerate(experts):
        key = f"{prefix}experts[{i}]"
        if e["table"] >= len(tables):
            raise OptionError(f"{key}.table = {e['table']}: there are {len(tables)} tables (indices from 0)")
        table_owner = tables[e["table"]]["owner"]
        if not _may_own(e["owner"], table_owner):
            raise OptionError(f"{key}.owner = {e['owner']!r}: expert reads table {e['table']}, owned by "
                              f"'{table_owner}'; an expert of a {table_owner} table belongs to its owner "
                              f"(owner null or {table_owner!r})")
        if e["backbone"] is not None:
            try:
                cls = backbone_class(e["backbone"])
            except OptionError:
                raise OptionError(f"{key}.backbone = {e['backbone']!r}: unknown backbone") from None
            e["backbone_options"] = cls.check_options(e["backbone_options"] or {}, f"{key}.backbone_options.")
        elif e["backbone_options"] is not None:
            raise OptionError(f"{key}.backbone_options: name the expert's backbone too (an expert without one "
                              f"takes the model's backbone and backbone_options)")
    return tables, experts


def _entry(entry: Any, defaults: dict, prefix: str, what: str) -> dict:
    """One table / expert spec checked against ``defaults``, with the defaults filled in."""
    if not isinstance(entry, dict):
        raise OptionError(f"{prefix.rstrip('.')} = {entry!r}: expected a mapping ({what}: {sorted(defaults)})")
    checked = check_options(entry, defaults, prefix, what, _RANGES, _CHOICES, _TYPES)
    return {**defaults, **checked}


def _may_own(expert_owner: Optional[str], table_owner: str) -> bool:
    """An expert's owner fits its table's: anything on a shared table, the table's own owner else."""
    return expert_owner is None or table_owner == SHARED or expert_owner == table_owner


def _owners(owner: str, num_tasks: int) -> List[Optional[int]]:
    return {SHARED: [None], TASK: list(range(num_tasks)), MAIN: [0]}[owner]


def resolve(tables: List[dict], experts: List[dict], num_tasks: int, embedding_dim: int, backbone: str,
            backbone_options: dict, prefix: str = "framework_options.") -> Tuple[List[Table], List[Expert]]:
    """The model's tables and experts for ``num_tasks`` tasks (checked specs, see the module
    docstring): task / main owners expanded, ``count`` copies, backbones and options resolved."""
    tables, experts = check_structure(tables, experts, prefix)
    resolved: List[Table] = []
    index: Dict[Tuple[int, Optional[int]], int] = {}  # (spec, owner) -> resolved table index
    for i, t in enumerate(tables):
        for owner in _owners(t["owner"], num_tasks):
            index[(i, owner)] = len(resolved)
            resolved.append(Table(i, owner, int(t["width"] or embedding_dim)))
    out: List[Expert] = []
    for i, e in enumerate(experts):
        table_owner = tables[e["table"]]["owner"]
        name = e["backbone"] or backbone
        options = dict(e["backbone_options"] if e["backbone"] else backbone_options)
        for owner in _owners(e["owner"] or table_owner, num_tasks):
            table = index[(e["table"], None if table_owner == SHARED else owner)]
            out.extend(Expert(i, table, owner, name, options) for _ in range(int(e["count"])))
    return resolved, out


def readable(experts: List[Expert], owner: Optional[int], own_and_shared: bool) -> List[int]:
    """The indices of the experts the mixture of ``owner`` reads: task ``owner``'s own and the
    shared ones with ``own_and_shared`` (PLE's CGC, STEM-AL), else all of them; the shared
    mixture (``owner`` None, PLE's shared gate) reads all of them."""
    if owner is None or not own_and_shared:
        return list(range(len(experts)))
    return [i for i, e in enumerate(experts) if e.owner in (None, owner)]


def upper_mlp(expert: Expert, given: Optional[List[int]], prefix: str) -> Tuple[List[int], str]:
    """(units, activation) of the MLP experts above the first level (PLE's extraction levels):
    ``given`` units, or the first-level expert's ``dnn_units`` (every expert the same network,
    as in PLE), with its ``dnn_activation``."""
    options = {**backbone_class(expert.backbone).defaults, **expert.options}
    units = given or options.get("dnn_units")
    if not units:
        raise OptionError(f"{prefix}upper_expert_units: expert {expert.spec}'s backbone '{expert.backbone}' has no "
                          f"dnn_units to copy for the experts of levels >= 2; give their units")
    return [int(u) for u in units], options.get("dnn_activation", "relu")
