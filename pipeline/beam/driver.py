"""The driver of ``ctrflow preprocess``: plan, run the Beam job, check the accounting, commit.

Everything is written under a marked temp folder beside ``<output>`` and moved to
``<output>`` only when the job succeeded, the accounting checked out and the quarantined
fraction is within ``max_quarantine_fraction``; see ``docs/preprocess.md``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

import apache_beam as beam
import numpy as np

from features import outputs
from pipeline.beam.accounting import check_quarantine, summarize
from pipeline.beam.graph import CUTS_FILE, PASS_CUTS, PASS_STATS, PAYLOAD_FILE, build_pipeline, index_file, index_pass
from pipeline.beam.payload import build_payload, frozen_payload
from pipeline.beam.plan import JobPlan
from pipeline.beam.splits import time_cuts
from pipeline.beam.stage import IndexFn
from pipeline.beam.statistics import TrainStats
from pipeline.beam.storage import (MANIFEST, PARTS_DIR, claim, commit, make_dirs, read_pickle, remove, temp_output,
                                   write_bytes)
from pipeline.preprocess_config import PreprocessConfig
from pipeline.raw_io import worker_input_error


def pipeline_options(config: PreprocessConfig):
    """(runner, PipelineOptions) for ``config.runner``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    rc = config.runner
    opts: Dict[str, Any] = dict(rc.options)
    if rc.name == "DirectRunner":
        opts.update(direct_running_mode=rc.running_mode, direct_num_workers=rc.num_workers)
        return "DirectRunner", PipelineOptions(flags=[], **opts)
    if rc.name == "DaskRunner":
        from apache_beam.runners.dask.dask_runner import DaskRunner

        if rc.dask_address:
            opts["address"] = rc.dask_address  # DaskOptions keeps --dask_client_address under "address"
        return DaskRunner(), PipelineOptions(flags=[], **opts)
    return rc.name, PipelineOptions(flags=[], **opts)


# Runners whose side inputs are unreliable run the job in passes (time cut points, each
# transform's side index, statistics + features, encoding). Beam 2.77's DaskRunner computes a
# side input by re-running its upstream graph inside every consuming task, and its ParDo
# receivers keep the outputs of earlier runs, so side-input values repeat elements.
RUNNERS_WITHOUT_SIDE_INPUTS = ("DaskRunner",)


def run_preprocess(config: PreprocessConfig, progress: bool = True, overwrite: bool = False) -> Dict[str, Any]:
    """Run the Beam job for ``config``; returns the summary that is also ``stats.json``.

    The output (and ``<output>.quarantine``) must be absent, empty or an earlier output of
    preprocess; another folder is replaced only with ``overwrite``, and never when it holds
    the job's inputs (``features.outputs``). Raises ValueError (naming the counts and the
    kept quarantine directory) when more than ``max_quarantine_fraction`` of the rows are
    quarantined; the output is then left as it was.
    """
    t0 = time.time()
    plan = JobPlan(config)
    frozen = frozen_payload(plan) if config.schema_from else None  # the payload, read not built
    out = os.path.abspath(os.path.expanduser(config.output)) if outputs.is_local(config.output) else config.output
    inputs = [*config.input.paths(), *config.split.extra_splits.values(),
              *(f for t in plan.transforms for f in t.inputs())]  # e.g. an ads table
    for path, others in ((out, [f"{out}.quarantine"]), (f"{out}.quarantine", [out])):
        claim(path, inputs + others, overwrite)
    tmp = temp_output(out)
    log = _logger(progress)
    n_files = sum(len(f) for _, f in plan.sources)
    passes = config.runner.name in RUNNERS_WITHOUT_SIDE_INPUTS
    log(f"preprocess: {n_files} input file(s) -> {out} on {config.runner.name} "
        f"({config.runner.num_workers} workers{', in passes' if passes else ''})")
    try:
        make_dirs(os.path.join(tmp, PARTS_DIR))
        # transforms before the split (never with a time split): their indexes first, on every runner
        sides = _index_passes(config, plan, tmp, None, [], upto=plan.before_split)
        if passes:
            cuts = None
            if plan.by_time:
                _run(config, lambda p: build_pipeline(p, plan, tmp, until=PASS_CUTS))
                cuts = read_pickle(os.path.join(tmp, CUTS_FILE))
                cuts = time_cuts((np.zeros(0), np.zeros(0)), config.split.ratios) if cuts is None else cuts
                remove(os.path.join(tmp, CUTS_FILE))
            sides = _index_passes(config, plan, tmp, cuts, sides)
            payload = frozen or _stats_pass(config, plan, tmp, cuts, sides)
            _run(config, lambda p: build_pipeline(p, plan, tmp, cuts=cuts, sides=sides, payload=payload))
        else:
            _run(config, lambda p: build_pipeline(p, plan, tmp, sides=sides, payload=frozen))
        remove(os.path.join(tmp, PARTS_DIR))  # the shards hold every member now
        seconds = time.time() - t0
        summary = summarize(plan, tmp, seconds)
        for t in plan.transforms:  # launcher-side statistics (and files) of the transforms
            stats = t.statistics(tmp)
            if stats:
                summary["transforms"][t.name]["statistics"] = stats
        check_quarantine(summary, config, tmp, out)
        write_bytes(os.path.join(tmp, "stats.json"), [json.dumps(summary, indent=2, sort_keys=True).encode()])
        remove(os.path.join(tmp, MANIFEST))
        if outputs.is_local(tmp):
            os.makedirs(os.path.join(tmp, "quarantine"), exist_ok=True)
        commit(tmp, out)
        remove(f"{out}.quarantine")  # rows kept by an earlier failed run: superseded
    except BaseException:
        remove(tmp)
        raise
    summary["output"] = out
    log(f"preprocess: {summary['rows_in']} rows in, {summary['rows_written']} written, "
        f"{summary['rows_quarantined']} quarantined in {summary['seconds']:.1f} s "
        f"({summary['rows_per_second']:.0f} rows/s)")
    return summary


def _index_passes(config: PreprocessConfig, plan: JobPlan, tmp: str, cuts, sides: List[Any],
                  upto: Optional[int] = None) -> List[Any]:
    """``sides`` (the first transforms' side values) extended with those of the transforms up to
    ``upto`` (default: all): each index in passes of its own (None for a transform without one),
    getting the earlier ones as constants."""
    sides = list(sides)
    for k in range(len(sides), len(plan.transforms) if upto is None else upto):
        sides.append(_index_rounds(config, plan, tmp, cuts, sides, k) if plan.transforms[k].uses_index else None)
    return sides


def _index_rounds(config: PreprocessConfig, plan: JobPlan, tmp: str, cuts, sides: List[Any], k: int) -> Any:
    """Transform ``k``'s side index: one pass, or for an iterative index one pass per round, each
    from the rows the previous round's index keeps, until the transform's ``next_round`` says stop."""
    transform, side, rounds = plan.transforms[k], None, 0
    while True:
        previous = side
        _run(config, lambda p: build_pipeline(p, plan, tmp, until=index_pass(k), cuts=cuts, sides=sides,
                                              previous=previous))
        path = os.path.join(tmp, index_file(k))
        side = read_pickle(path)
        side = IndexFn(transform).extract_output([]) if side is None else side  # no rows
        remove(path)
        rounds += 1
        if not (transform.iterative and transform.next_round(side, rounds)):
            return side


def _stats_pass(config: PreprocessConfig, plan: JobPlan, tmp: str, cuts, sides) -> Dict[str, Any]:
    """The statistics pass of a job in passes: its payload (Features, head users)."""
    _run(config, lambda p: build_pipeline(p, plan, tmp, until=PASS_STATS, cuts=cuts, sides=sides))
    payload = read_pickle(os.path.join(tmp, PAYLOAD_FILE))
    if payload is None:
        payload = build_payload(TrainStats(), plan)  # raises: no train rows
    remove(os.path.join(tmp, PAYLOAD_FILE))
    return payload


def _run(config: PreprocessConfig, build) -> None:
    """Build a pipeline with ``build`` and run it to completion on the configured runner."""
    runner, options = pipeline_options(config)
    p = beam.Pipeline(runner=runner, options=options)
    build(p)
    try:
        with _step_failures_unlogged():
            result = p.run()
            try:
                result.wait_until_finish()
            finally:
                client = getattr(result, "client", None)  # the Dask runner leaves its client open
                if client is not None:
                    client.close()
    except Exception as exc:  # an unreadable input a worker met is the user's error, not a crash
        input_error = worker_input_error(exc)
        if input_error is None:
            raise
        raise input_error from None


@contextlib.contextmanager
def _step_failures_unlogged():
    """Beam logs a failing step's traceback before raising it; the error is raised (and
    reported once) by :func:`_run` anyway, so a user's bad input ends with one message."""
    log = logging.getLogger("apache_beam.runners.common")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _logger(progress: bool):
    def log(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)
    return log
