"""Accounting: rows in / written / quarantined / dropped by transforms per split, checked, and the
job's summary (stats.json).

Each encoded chunk yields a nested dict of counts per split (:func:`add_counts`; the transforms'
rows in / out / dropped / added, ``pipeline/beam/stage.py``); :class:`AccountingFn` sums them.
:func:`summarize` checks that every split's rows add up (rows in + added by transforms =
written + quarantined + dropped by transforms, and the shards hold the written rows) and builds
the summary written as ``stats.json``; :func:`check_quarantine` fails the job when more than
``max_quarantine_fraction`` of the rows were quarantined, keeping them aside.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any, Dict

import apache_beam as beam

from pipeline.beam.plan import JobPlan
from pipeline.beam.splits import UNASSIGNED_SPLIT
from pipeline.beam.statistics import SAMPLE_SIZE
from pipeline.beam.storage import MANIFEST, commit, write_marker
from pipeline.preprocess_config import PreprocessConfig


def merge_counts(a: dict, b: dict) -> dict:
    """Recursive sum of nested {key: number} dicts."""
    for k, v in b.items():
        if isinstance(v, dict):
            merge_counts(a.setdefault(k, {}), v)
        else:
            a[k] = a.get(k, 0) + v
    return a


class AccountingFn(beam.CombineFn):
    """Sums the per-chunk accounting dicts (rows in / written / quarantined, reasons, label sums)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, part):
        return merge_counts(acc, part)

    def merge_accumulators(self, accs):
        out = {}
        for a in accs:
            merge_counts(out, a)
        return out

    def extract_output(self, acc):
        return acc


def add_counts(acct: dict, split: str, **counts) -> None:
    d = acct.setdefault(split, {"rows_in": 0, "rows_written": 0, "rows_quarantined": 0})
    for k, v in counts.items():
        d[k] += v


def summarize(plan: JobPlan, root: str, seconds: float) -> Dict[str, Any]:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(os.path.join(root, MANIFEST)) as fh:
        manifest = json.loads(fh.read().decode())
    acct = manifest.get("accounting", {})
    splits: Dict[str, Any] = {}
    for name in plan.splits + ([UNASSIGNED_SPLIT] if UNASSIGNED_SPLIT in acct else []):
        a = acct.get(name, {"rows_in": 0, "rows_written": 0, "rows_quarantined": 0})
        sums = a.get("label_sums", {})
        written = a["rows_written"]
        shards = [s for s in manifest["shards"] if s["split"] == name]
        if sum(s["rows"] for s in shards) != written:
            raise RuntimeError(f"split '{name}': shards hold {sum(s['rows'] for s in shards)} rows but "
                               f"{written} were encoded")
        transforms = {t.name: {**_no_rows(t), **a.get("transforms", {}).get(t.name, {})}
                      for t in plan.transforms if name in t.options["splits"]}
        dropped = sum(c["rows_dropped"] for c in transforms.values())
        added = sum(c["rows_added"] for c in transforms.values())
        if a["rows_in"] + added != written + a["rows_quarantined"] + dropped:
            raise RuntimeError(f"split '{name}': rows_in {a['rows_in']} + added by transforms {added} != written "
                               f"{written} + quarantined {a['rows_quarantined']} + dropped by transforms {dropped}")
        splits[name] = {
            "rows_in": a["rows_in"], "rows_written": written, "rows_quarantined": a["rows_quarantined"],
            "transforms": transforms, "rows_dropped_by_transforms": dropped, "rows_added_by_transforms": added,
            "quarantine_reasons": a.get("quarantine_reasons", {}), "oov": a.get("oov", {}),
            "label_means": {lab: (sums.get(lab, 0.0) / written if written else None) for lab in plan.config.labels},
            "files": [s["file"] for s in shards], "bytes": sum(s["bytes"] for s in shards)}
    total_in = sum(s["rows_in"] for s in splits.values())
    total_q = sum(s["rows_quarantined"] for s in splits.values())
    schema = manifest.get("schema", {})
    return {
        "splits": splits, "rows_in": total_in, "rows_written": sum(s["rows_written"] for s in splits.values()),
        "rows_quarantined": total_q, "quarantine_fraction": total_q / total_in if total_in else 0.0,
        "transforms": _transform_totals(plan, splits),
        "rows_dropped_by_transforms": sum(s["rows_dropped_by_transforms"] for s in splits.values()),
        "rows_added_by_transforms": sum(s["rows_added_by_transforms"] for s in splits.values()),
        "max_quarantine_fraction": plan.config.max_quarantine_fraction,
        "quarantine_files": [q["file"] for q in manifest["quarantine"]],
        "train_rows_for_statistics": schema.get("train_rows"), "users": schema.get("users"),
        "features": schema.get("features"), "schema_fingerprint": schema.get("fingerprint"),
        "schema_from": plan.config.schema_from,
        "seconds": seconds, "rows_per_second": total_in / seconds if seconds > 0 else 0.0,
        "runner": {"name": plan.config.runner.name, "num_workers": plan.config.runner.num_workers,
                   "running_mode": plan.config.runner.running_mode},
        "input": {"format": plan.config.input.format,
                  "files": [rel for _, files in plan.sources for _, rel in files]},
        "sample_size": SAMPLE_SIZE,
    }


_NO_ROWS = {"rows_in": 0, "rows_out": 0, "rows_dropped": 0, "rows_added": 0}


def _no_rows(transform) -> Dict[str, int]:
    """A transform's counts before any row: rows in / out / dropped / added and its own counters."""
    return {**_NO_ROWS, **{name: 0 for name in transform.count_names}}


def _transform_totals(plan: JobPlan, splits: Dict[str, Any]) -> Dict[str, Any]:
    """Per transform: its options and its counts summed over the splits it applies to."""
    out = {}
    for t in plan.transforms:
        counts = [s["transforms"][t.name] for s in splits.values() if t.name in s["transforms"]]
        out[t.name] = {"options": t.options, **{k: sum(c[k] for c in counts) for k in _no_rows(t)}}
    return out


def check_quarantine(summary: Dict[str, Any], config: PreprocessConfig, tmp: str, out: str) -> None:
    frac, limit = summary["quarantine_fraction"], config.max_quarantine_fraction
    if frac <= limit:
        return
    kept = f"{out}.quarantine"
    src = os.path.join(tmp, "quarantine")
    write_marker(src)
    commit(src, kept)
    reasons = collections.Counter()
    for s in summary["splits"].values():
        for field, rs in s["quarantine_reasons"].items():
            for r, c in rs.items():
                reasons[f"{field}: {r}"] += c
    top = ", ".join(f"{k} ({v})" for k, v in reasons.most_common(5))
    raise ValueError(
        f"preprocess failed: {summary['rows_quarantined']} of {summary['rows_in']} rows "
        f"({frac:.2%}) were quarantined, more than max_quarantine_fraction = {limit:.2%}. "
        f"Most common: {top}. The quarantined rows are in {kept}/ (one JSON line per row with "
        f"file, row_index, field and reason); no output was written to {out}.")
