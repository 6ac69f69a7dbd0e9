"""Throughput of the Rec4Ad Beam transforms (pseudo_ad_mapping, inverse_propensity) on a simulator output.

    python bench/beam_transforms.py [--rows 100000] [--repeat 3] [--rounds 2] \
        [--out docs/benchmarks/beam_transforms.json]

Two measurements on the simulator's ads + rec logs with ``configs/preprocess_sim_rec4ad.yaml``:

* ``apply``: rows/s of each transform's ``apply`` alone on in-memory batches (the job's validated
  chunks of ``batch_size`` rows, read once; best of ``--repeat`` passes);
* ``preprocess``: the whole job (DirectRunner, one in-memory worker) without transforms, with
  pseudo_ad_mapping, and with both, on the same input (rows read per second; the variants
  interleaved over ``--rounds``, each at its fastest).

Prints one JSON document and the tables of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from report_json import emit, machine  # noqa: E402  (bench/ is the script directory)

CONFIG = os.path.join(REPO, "configs", "preprocess_sim_rec4ad.yaml")
VARIANTS = {"none": 0, "pseudo_ad_mapping": 1, "pseudo_ad_mapping + inverse_propensity": 2}


def simulate_logs(work: str, rows: int) -> str:
    from pipeline.config import load_config
    from pipeline.simulator import SimulatorConfig, simulate

    raw = os.path.join(work, "raw")
    if not os.path.exists(os.path.join(raw, "summary.json")):
        simulate(load_config(SimulatorConfig, os.path.join(REPO, "configs", "simulate_default.yaml"),
                             {"out_dir": raw, "num_impressions": rows}), progress=False)
    return raw


def job_config(raw: str, out: str, n_transforms: int):
    """The Rec4Ad simulator config on ``raw`` (no extra split), its first ``n_transforms`` transforms."""
    from pipeline.config import load_config, read_yaml
    from pipeline.preprocess_config import PreprocessConfig

    transforms = [dict(t, ads_table=os.path.join(raw, "ads.parquet"))
                  for t in read_yaml(CONFIG)["transforms"][:n_transforms]]
    return load_config(PreprocessConfig, CONFIG, {
        "input.path": [os.path.join(raw, "ads", "*.parquet"), os.path.join(raw, "rec", "*.parquet")],
        "output": out, "split.extra_splits": {}, "transforms": transforms,
        "runner.num_workers": 1, "runner.running_mode": "in_memory"})


def bench_apply(raw: str, work: str, repeat: int) -> list:
    """Each transform's apply over the job's validated chunks (the first's output feeds the second)."""
    from pipeline.beam.plan import JobPlan, plan_file, read_chunks
    from pipeline.beam.stage import apply_transform

    plan = JobPlan(job_config(raw, os.path.join(work, "unused"), 2))
    chunks = [c for task in plan.tasks() for item in plan_file(task, plan.config.input.format)
              for c in read_chunks(item, plan)]
    for c in chunks:  # every row as train (no time cut points needed): the transforms see them all
        c.split_code[:] = plan.train_index
    results, side = [], 1.0
    for transform in plan.transforms:
        splits = plan.transform_splits[transform.name]
        best, out = float("inf"), []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = [apply_transform(transform, splits, c, side if transform.uses_index else None)[0] for c in chunks]
            best = min(best, time.perf_counter() - t0)
        rows = sum(c.num_rows for c in chunks)
        results.append({"transform": transform.name, "rows": rows, "seconds": best, "rows_per_s": rows / best})
        chunks = out
    return results


def bench_preprocess(raw: str, work: str, rounds: int) -> list:
    """The whole job per variant, the variants interleaved over ``rounds`` (a busy machine slows
    them alike), each at its fastest round."""
    from pipeline.beam.driver import run_preprocess

    results = {}
    for _ in range(rounds):
        for name, n in VARIANTS.items():
            t0 = time.perf_counter()
            s = run_preprocess(job_config(raw, os.path.join(work, f"data_{n}"), n), progress=False, overwrite=True)
            seconds = time.perf_counter() - t0
            if name not in results or seconds < results[name]["seconds"]:
                results[name] = {"transforms": name, "rows_in": s["rows_in"], "rows_written": s["rows_written"],
                                 "seconds": seconds, "rows_per_s": s["rows_in"] / seconds}
    return list(results.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="simulated ad impressions (num_impressions)")
    ap.add_argument("--repeat", type=int, default=3, help="passes of apply over the batches (best kept)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the whole job (best kept)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ctrflow_bench_beam_transforms"))
    ap.add_argument("--out", help="also write the JSON document here")
    args = ap.parse_args()
    raw = simulate_logs(args.work, args.rows)
    doc = {"benchmark": "beam_transforms", "num_impressions": args.rows, "config": "configs/preprocess_sim_rec4ad.yaml",
           "machine": machine(), "apply": bench_apply(raw, args.work, args.repeat),
           "rounds": args.rounds, "preprocess": bench_preprocess(raw, args.work, args.rounds)}
    emit(doc, args.out)
    print("\n" + table(doc))


def table(doc: dict) -> str:
    """The markdown tables of docs/benchmarks.md, from the JSON document."""
    lines = ["| transform | rows | seconds (apply) | rows/s |", "|---|---|---|---|"]
    for r in doc["apply"]:
        lines.append(f"| {r['transform']} | {r['rows']:,} | {r['seconds']:.3f} | {r['rows_per_s']:,.0f} |")
    lines += ["", "| preprocess with transforms | rows in | rows written | seconds | rows/s |", "|---|---|---|---|---|"]
    for r in doc["preprocess"]:
        lines.append(f"| {r['transforms']} | {r['rows_in']:,} | {r['rows_written']:,} | {r['seconds']:.1f} | "
                     f"{r['rows_per_s']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
