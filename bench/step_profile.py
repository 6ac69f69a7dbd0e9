"""Where a training step's time goes: the TensorFlow profiler's op times of ctrflow's DNN, by kind.

The model and data are ``bench/train_throughput.py``'s (the simulator's 10 categorical fields,
or ``--movielens DIR``; embedding 16, MLP [400, 400, 400], dropout 0.2, batch 4096, Adam), each
configuration in its own worker process: float32 and mixed_bfloat16, each with the
16-bit-draw dropout (``bits``, issue 15's) and the float-uniform one before it (``uniform``),
so the "before" and "after" of a change are measured in one run. A worker:

1. reads the first max(``--warmup``, ``--steps``) batches into memory and trains on ``--warmup``
   of them (tracing);
2. times ``--steps`` steps ``--repeats`` times without the profiler: the wall ms per step
   (best and median: this machine's vCPUs switch between a fast and a slow state);
3. traces ``--steps`` steps with ``tf.profiler.experimental``, ``--profiles`` times, and sums each
   op's duration from the host plane of the trace (``*.xplane.pb``: events named ``scope/op:Type``),
   per step; the table gives the window with the least op time (the fast state; every window's
   total is in the JSON).

Op time is summed over the executor's threads, so it can exceed the wall time (ops run in
parallel) and includes the profiler's own overhead; its split by kind is what to compare.
Kinds (first match wins): ``dropout`` (ops under a ``dropout`` name scope: both
implementations, forward and gradient), ``matmul`` (MatMul / _FusedMatMul: the fused bias +
ReLU forward included), ``bias+relu grad`` (BiasAddGrad, ReluGrad), ``finiteness checks``
(IsFinite, All, Assert: ``models.steps.finite_or_stop``), ``optimizer`` (under ``Adam/``),
``embedding`` (under ``embedding``: look-ups and their gradients), ``input`` (tf.data's get-next),
``other`` (loss, casts, metrics...).

    python bench/step_profile.py [--movielens DIR] [--out docs/benchmarks/step_profile.json]

Prints one JSON document and a markdown table (ms per step of each kind, per configuration).
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
from features import _tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)
from report_json import emit, machine, run_worker  # noqa: E402  (bench/ is the script directory)
from train_throughput import DROPOUT, build_ctrflow, prepare_data  # noqa: E402

# configuration -> (precision, dropout_impl)
CONFIGS = {"float32+uniform_dropout": ("float32", "uniform"), "float32": ("float32", "bits"),
           "mixed_bfloat16+uniform_dropout": ("mixed_bfloat16", "uniform"), "mixed_bfloat16": ("mixed_bfloat16", "bits")}
KINDS = ("matmul", "dropout", "bias+relu grad", "finiteness checks", "optimizer", "embedding", "input", "other")


def kind_of(name: str, op_type: str) -> str:
    """The kind (module docstring) of the op event ``name:op_type``."""
    scopes = name.split("/")
    if any(re.fullmatch(r"(stateless_)?dropout(_\d+)?", s) for s in scopes):
        return "dropout"
    if op_type in ("MatMul", "_FusedMatMul", "BatchMatMulV2"):
        return "matmul"
    if op_type in ("BiasAddGrad", "ReluGrad"):
        return "bias+relu grad"
    if op_type in ("IsFinite", "All", "Assert"):
        return "finiteness checks"
    if scopes[0] in ("Adam", "LazyAdam"):
        return "optimizer"
    if any(s.startswith("embedding") for s in scopes):
        return "embedding"
    if op_type.startswith("Iterator") or op_type.startswith("OptionalGet"):
        return "input"
    return "other"


# tf.data's get-next is traced as a kernel event of its own, not as an executor op "name:Type" (which
# left the ``input`` kind at 0 before): its time, the wait for the next batch included.
GET_NEXT_EVENTS = {"IteratorGetNextOp::DoCompute": "IteratorGetNext:IteratorGetNext"}


def op_times(logdir: str) -> dict:
    """{"name:Type": total ms} of the TF op events in the host plane of the trace under ``logdir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if len(paths) != 1:
        raise RuntimeError(f"expected one profiler trace under {logdir}, found {paths}")
    space = xplane_pb2.XSpace()
    with open(paths[0], "rb") as fh:
        space.ParseFromString(fh.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                name = GET_NEXT_EVENTS.get(name, name)
                if "::" not in name and name.count(":") == 1 and not name.startswith("EagerLocalExecute"):
                    totals[name] += event.duration_ps / 1e9
    return dict(totals)


def profile(data: str, precision: str, dropout_impl: str, warmup: int, steps: int, repeats: int, profiles: int,
            seed: int) -> dict:
    """Wall ms per step (no profiler) and op ms per step by kind (the fastest of ``profiles`` profiled
    windows) of one configuration."""
    import tensorflow as tf

    model, train = build_ctrflow(data, "dnn", False, precision, seed, DROPOUT, dropout_impl)
    batches = train.take(max(warmup, steps)).cache()
    for _ in batches:  # read once: every timed step comes from memory
        pass
    model.fit(batches.take(warmup), epochs=1, verbose=0)
    steps = sum(1 for _ in batches.take(steps))  # fewer when the split is smaller
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.fit(batches.take(steps), epochs=1, verbose=0)
        walls.append((time.perf_counter() - t0) * 1e3 / steps)
    windows = []
    for _ in range(profiles):
        with tempfile.TemporaryDirectory(prefix="ctrflow-step-profile-") as logdir:
            tf.profiler.experimental.start(logdir)
            model.fit(batches.take(steps), epochs=1, verbose=0)
            tf.profiler.experimental.stop()
            windows.append(op_times(logdir))
    fastest = min(windows, key=lambda ops: sum(ops.values()))  # the vCPUs' fast state, as the best epoch
    by_kind, by_type = collections.Counter(), collections.Counter()
    for name, ms in fastest.items():
        scoped, op_type = name.rsplit(":", 1)
        kind = kind_of(scoped, op_type)
        by_kind[kind] += ms / steps
        by_type[f"{kind}: {op_type}"] += ms / steps
    top = sorted(fastest.items(), key=lambda kv: -kv[1])[:25]
    return {"steps": steps, "wall_ms_per_step_best": min(walls), "wall_ms_per_step_median": statistics.median(walls),
            "op_ms_per_step": {k: by_kind.get(k, 0.0) for k in KINDS},
            "op_ms_per_step_total": sum(by_kind.values()),
            "op_ms_per_step_total_of_each_window": [sum(ops.values()) / steps for ops in windows],
            "op_types_ms_per_step": dict(by_type.most_common()),
            "top_ops_ms_per_step": {name: ms / steps for name, ms in top}}


def table(doc: dict) -> str:
    """ms per step of each kind (rows) per configuration (columns)."""
    results = doc["results"]
    head = "| ms per step | " + " | ".join(r["config"] for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    lines.append("| wall, best of repeats (no profiler) | " +
                 " | ".join(f"{r['wall_ms_per_step_best']:.1f}" for r in results) + " |")
    lines.append("| wall, median | " + " | ".join(f"{r['wall_ms_per_step_median']:.1f}" for r in results) + " |")
    for kind in KINDS:
        lines.append(f"| op time: {kind} | " + " | ".join(f"{r['op_ms_per_step'][kind]:.1f}" for r in results) + " |")
    lines.append("| op time: all ops (fastest window) | " + " | ".join(f"{r['op_ms_per_step_total']:.1f}" for r in results) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ctrflow_bench_train"),
                    help="bench/train_throughput.py's work folder (its data is reused)")
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--movielens", metavar="ML1M_DIR")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profiles", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        precision, impl = CONFIGS[args.worker]
        result = profile(args.data, precision, impl, args.warmup, args.steps, args.repeats, args.profiles, args.seed)
        print("RESULT " + json.dumps({"config": args.worker, **result}), flush=True)
        return
    data = prepare_data(args.work, args.rows, args.movielens)
    started = machine()
    results = [run_worker([sys.executable, __file__, "--worker", c, "--data", data, "--warmup", str(args.warmup),
                           "--steps", str(args.steps), "--repeats", str(args.repeats), "--profiles",
                           str(args.profiles), "--seed", str(args.seed)],
                          cwd=BENCH) for c in args.configs]
    doc = {"benchmark": "step_profile", "data": args.movielens or f"simulator, {args.rows} rows",
           "model": "dnn [400, 400, 400], embedding 16, dropout 0.2, batch 4096, Adam",
           "steps": args.steps, "repeats": args.repeats, "profiles": args.profiles, "results": results,
           "machine": started, "load_average_at_end": list(os.getloadavg())}
    emit(doc, args.out)
    print()
    print(table(doc))


if __name__ == "__main__":
    main()
