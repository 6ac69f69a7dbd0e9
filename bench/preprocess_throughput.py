"""Simulator and Beam preprocessing throughput on 1 M simulated rows.

    python bench/preprocess_throughput.py [--rows 1000000] [--workers 1 2] [--out docs/benchmarks/preprocess_throughput.json]

Each measurement runs in its own process so peak memory is its own (the peak of
the process and of its Beam worker processes). Prints one JSON document and a table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from report_json import emit, machine  # noqa: E402  (bench/ is the script directory)


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def simulate_step(work: str, rows: int) -> dict:
    from pipeline.config import load_config
    from pipeline.simulator import SimulatorConfig, simulate

    cfg = load_config(SimulatorConfig, os.path.join(REPO, "configs", "simulate_default.yaml"),
                      {"out_dir": os.path.join(work, "raw"), "num_impressions": rows})
    t0 = time.perf_counter()
    summary = simulate(cfg, progress=False)
    seconds = time.perf_counter() - t0
    total = sum(summary["rows"].values()) if isinstance(summary.get("rows"), dict) else rows
    return {"step": "simulate", "rows": total, "seconds": seconds, "rows_per_s": total / seconds}


def preprocess_step(work: str, workers: int) -> dict:
    from pipeline.config import load_config
    from pipeline.beam.driver import run_preprocess
    from pipeline.preprocess_config import PreprocessConfig

    cfg = load_config(PreprocessConfig, os.path.join(REPO, "configs", "preprocess_sim.yaml"),
                      {"input.path": os.path.join(work, "raw", "ads", "*.parquet"),
                       "output": os.path.join(work, f"data_{workers}w"), "split.extra_splits": {},
                       "runner.num_workers": workers,
                       "runner.running_mode": "multi_processing" if workers > 1 else "in_memory"})
    t0 = time.perf_counter()
    summary = run_preprocess(cfg, progress=False)
    seconds = time.perf_counter() - t0
    rows = sum(s["rows_in"] for s in summary["splits"].values())
    return {"step": f"preprocess ({workers} worker{'s' if workers > 1 else ''})", "rows": rows,
            "seconds": seconds, "rows_per_s": rows / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ctrflow_bench_preprocess"))
    ap.add_argument("--out", help="also write the JSON document here")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        result = (simulate_step(args.work, args.rows) if args.step == "simulate"
                  else preprocess_step(args.work, int(args.step)))
        result["peak_rss_mb"] = _peak_mb()
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = []
    for step in ["simulate", *map(str, args.workers)]:
        out = subprocess.run([sys.executable, __file__, "--step", step, "--rows", str(args.rows),
                              "--work", args.work], capture_output=True, text=True, cwd=REPO)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"step {step} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        results.append(json.loads(line[7:]))
        print(json.dumps(results[-1]), flush=True)
    doc = {"benchmark": "preprocess_throughput", "rows": args.rows, "machine": machine(), "results": results}
    emit(doc, args.out)
    print("\n" + table(doc))


def table(doc: dict) -> str:
    """The markdown table of docs/benchmarks.md, from the JSON document."""
    lines = ["| step | rows | seconds | rows/s | peak RSS MB |", "|---|---|---|---|---|"]
    for r in doc["results"]:
        lines.append(f"| {r['step']} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
