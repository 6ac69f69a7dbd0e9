"""The pipeline graph: the Beam DAG of the job, in one pipeline or in passes.

    input files -> read units (Parquet row groups / text files)
      [transforms before the split, e.g. k_core] read + validate -> every main split's rows -> index
                      parts -> merged, built: first, in passes of their own (``driver.py``; an
                      iterative index: a pass per round), then constants of the job
      [time split] read the time column -> bottom-k sample -> cut points (side input)
      [per transform with an index] read + validate + earlier transforms -> train rows
                      -> index parts -> merged, built (side input)
      read + validate + transforms -> train statistics per chunk -> merged by CombineFns
                      -> build Features (vocabularies) + head users once -> payload (side input)
      read + validate + transforms -> encode (NumpyEncoder) -> tf.train.Example bytes -> gzip TFRecord members
                      -> group by (split, shard) -> shard files; quarantine lines; accounting
      -> schema.json, vocab/*.txt, quarantine/*.jsonl, _manifest.json

Every step that needs rows reads its read units itself (:func:`pipeline.beam.stage.staged_chunks`):
reading again is cheaper than sending every row through the runner, so only small partials
and references to compressed shard members move between steps.
"""
from __future__ import annotations

import os
from typing import Iterable, Tuple

import apache_beam as beam
import numpy as np

from pipeline.beam.accounting import AccountingFn
from pipeline.beam.encode import EncodeUnit
from pipeline.beam.payload import build_payload
from pipeline.beam.plan import JobPlan, plan_file
from pipeline.beam.splits import time_cuts
from pipeline.beam.stage import IndexFn, index_parts, staged_chunks
from pipeline.beam.statistics import (SAMPLE_SIZE, SampleFn, TrainStats, TrainStatsFn, bottom_k,
                                      chunk_train_stats, sample_priority)
from pipeline.beam.storage import WriteQuarantine, WriteShard, write_manifest, write_pickle, write_schema
from pipeline.raw_io import read_unit


def time_samples(item, plan: JobPlan) -> Iterable[Tuple[np.ndarray, np.ndarray]]:
    """Bottom-k samples of the valid times of a main-input read unit (only the time column
    is read: the cut points are quantiles over every row that has a time)."""
    s, _, unit = item
    if plan.sources[s][0] is not None:
        return
    cfg = plan.config
    for raw in read_unit(unit, cfg.input.format, [cfg.split.time_column], [], cfg.batch_size,
                         cfg.input.csv_delimiter, cfg.input.list_delimiter):
        t = plan.validator.times(raw)
        ok = ~np.isnan(t)
        rows = raw.row_offset + np.flatnonzero(ok)
        yield bottom_k(sample_priority(raw.file, rows), t[ok], SAMPLE_SIZE)


def train_stats(item, plan: JobPlan, cuts=None, *sides) -> Iterable[TrainStats]:
    """Train statistics of a read unit's rows after the transforms, per chunk (extra inputs never
    feed statistics)."""
    if plan.sources[item[0]][0] is None:
        for staged in staged_chunks(item, plan, cuts, sides):
            chunk = staged.chunk
            yield chunk_train_stats(chunk, chunk.split_code == plan.train_index, plan.needs, plan.list_features)


def _kind(kind: str):
    def select(item):
        return [item[1]] if item[0] == kind else []
    select.__name__ = f"only_{kind}"
    return select


def _tag(kind: str):
    def tag(value):
        return (kind, value)
    tag.__name__ = f"tag_{kind}"
    return tag


def _merge(pcoll, label: str, fn, defaults: bool):
    merged = beam.CombineGlobally(fn)
    return pcoll | label >> (merged if defaults else merged.without_defaults())


# The job in passes: what a pass computes, and what it leaves for the next one
PASS_CUTS, PASS_STATS, PASS_ENCODE = "cuts", "stats", "encode"
CUTS_FILE, PAYLOAD_FILE = "_cuts.pkl", "_payload.pkl"


def index_pass(k: int) -> str:
    """The pass that builds transform ``k``'s side index."""
    return f"index-{k}"


def index_file(k: int) -> str:
    return f"_index-{k}.pkl"


def build_pipeline(p, plan: JobPlan, root: str, until: str = PASS_ENCODE, cuts=None, sides=None, payload=None,
                   previous=None):
    """Add the job's steps to Beam pipeline ``p`` (outputs under ``root``).

    Every step that needs rows reads its read units itself (time sample, transform indexes,
    train statistics, encoding); only small partials and compressed shard members travel
    between steps. One pipeline by default: the time cut points, the transforms' side indexes
    and the Features reach later steps as side inputs. With ``until`` / ``cuts`` / ``sides`` (the
    first transforms' side values) / ``payload`` the same steps run as passes (see
    ``pipeline.beam.driver.RUNNERS_WITHOUT_SIDE_INPUTS``): a pass stops after writing its
    result, and the next pass gets it as a constant instead of a side input. ``previous``: in the
    pass of an iterative index (``until`` is its ``index_pass``), the previous round's side value.
    """
    from apache_beam.pvalue import AsSingleton

    cfg = plan.config
    single = until == PASS_ENCODE and (cuts is None or not plan.by_time)  # side inputs, not passes
    units = (p | "Files" >> beam.Create(plan.tasks())
             | "PlanUnits" >> beam.FlatMap(plan_file, cfg.input.format)
             | "SpreadUnits" >> beam.Reshuffle())
    if plan.by_time and cuts is None:
        cuts_pc = (_merge(units | "TimeSamples" >> beam.FlatMap(time_samples, plan), "MergeTimeSample",
                          SampleFn(), single)
                   | "CutPoints" >> beam.Map(time_cuts, cfg.split.ratios))
        if until == PASS_CUTS:
            _ = cuts_pc | "SaveCuts" >> beam.Map(write_pickle, os.path.join(root, CUTS_FILE))
            return
        cuts = AsSingleton(cuts_pc)
    sides = list(sides or [])
    for k in range(len(sides), len(plan.transforms)):
        transform = plan.transforms[k]
        if not transform.uses_index:
            sides.append(None)
            continue
        rows = beam.FlatMap(index_parts, plan, k, cuts, previous if until == index_pass(k) else None, *sides)
        index_pc = _merge(units | f"IndexRows[{transform.name}]" >> rows,
                          f"BuildIndex[{transform.name}]", IndexFn(transform), single)
        if until == index_pass(k):
            _ = index_pc | f"SaveIndex[{transform.name}]" >> beam.Map(write_pickle, os.path.join(root, index_file(k)))
            return
        sides.append(AsSingleton(index_pc))
    if payload is None:
        partials = units | "TrainStats" >> beam.FlatMap(train_stats, plan, cuts, *sides)
        payload_pc = (_merge(partials, "MergeTrainStats", TrainStatsFn(), single)
                      | "BuildFeatures" >> beam.Map(build_payload, plan))
        if until == PASS_STATS:
            _ = payload_pc | "SavePayload" >> beam.Map(write_pickle, os.path.join(root, PAYLOAD_FILE))
            return
        payload_arg = AsSingleton(payload_pc)
    else:
        payload_pc = p | "Payload" >> beam.Create([payload])
        payload_arg = payload
    encoded = units | "Encode" >> beam.ParDo(EncodeUnit(plan, root), payload_arg, cuts, *sides)
    n_sh = cfg.num_shards
    all_groups = p | "AllShards" >> beam.Create([(g, None) for g in range(len(plan.splits) * n_sh)])
    shards = ((encoded | "Shards" >> beam.FlatMap(_kind("shard")), all_groups) | "WithEmpty" >> beam.Flatten()
              | "GroupShards" >> beam.GroupByKey()
              | "WriteShards" >> beam.Map(WriteShard(root, plan.splits, n_sh)))
    quarantine = (encoded | "Quarantine" >> beam.FlatMap(_kind("quarantine"))
                  | "GroupQuarantine" >> beam.GroupByKey()
                  | "WriteQuarantine" >> beam.Map(WriteQuarantine(root, plan.splits)))
    accounting = (_merge(encoded | "Accounting" >> beam.FlatMap(_kind("accounting")), "MergeAccounting",
                         AccountingFn(), False)
                  | "TagAccounting" >> beam.Map(_tag("accounting")))
    schema_done = payload_pc | "WriteSchema" >> beam.Map(write_schema, root)
    # one last step that depends on every output: runners that only compute what the last
    # transform needs (the Dask runner) still run every branch
    _ = ((shards, quarantine, accounting, schema_done) | "Outputs" >> beam.Flatten()
         | "Collect" >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
         | "Manifest" >> beam.Map(write_manifest, root))
