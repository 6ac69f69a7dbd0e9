"""Training throughput of Rec4Ad against its Base (Gao et al., Sec. 4.1): DIN on ad rows only vs
Rec4Ad on ad + pseudo-ad rec rows, with the paper's settings.

    python bench/rec4ad_throughput.py [--rows 100000] [--epochs 4] [--seeds 1 2 3] \
        [--out docs/benchmarks/rec4ad_throughput.json]

Data: the simulator (``configs/simulate_default.yaml``) with ``--rows`` ad impressions, its
recommendation and random-policy logs scaled in the default proportions, preprocessed with
``configs/preprocess_sim_rec4ad.yaml`` into ``--work`` (reused when present).
Methods: ``Base`` and ``Rec4Ad`` exactly as ``configs/compare_rec4ad_sim.yaml`` defines them on
``configs/rec4ad_sim.yaml`` (batch 6000, Adam 1e-3, embedding 16, DIN defaults; Base reads the
same data directory with ``sources: [ad]``), built and compiled as ``ctrflow train`` does
(``pipeline/train.py``) but without its callbacks: the training step alone is timed.
One subprocess per (method, seed), the two methods alternating within each seed (a slow spell
of the machine hits both alike), ``model.fit(..., epochs=1)`` per epoch as
``bench/train_throughput.py`` does. Throughput is over the epochs after the first (tracing
excluded): all of them (rows / time, the harmonic mean of their rates) and the best one.
Rec4Ad trains on more rows per epoch than Base (its pseudo-ad samples), so the ratio table gives
both the time per epoch and the examples/s, each Rec4Ad / Base of the same seed.
AUC: on the random-policy log at the epoch of best validation AUC, a check that both models
learn in these few epochs (the accuracy comparison is ``docs/results/rec4ad.md``).

Prints one JSON document and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from features import _tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)
from paired_throughput import timed_training  # noqa: E402  (bench/ is the script directory)
from report_json import emit, machine, run_worker  # noqa: E402

SIMULATE = os.path.join(REPO, "configs", "simulate_default.yaml")
PREPROCESS = os.path.join(REPO, "configs", "preprocess_sim_rec4ad.yaml")
COMPARE = os.path.join(REPO, "configs", "compare_rec4ad_sim.yaml")
METHODS = ("Base", "Rec4Ad")  # compare_rec4ad_sim.yaml's names; the first is the ratios' denominator
SCALED_LOGS = ("rec_impressions", "random_impressions")  # keep their default ratio to num_impressions


def simulator_overrides(raw: str, rows: int) -> dict:
    """``rows`` ad impressions, the rec and random-policy logs in the default config's proportions."""
    from pipeline.config import read_yaml

    defaults = read_yaml(SIMULATE)
    scale = rows / defaults["num_impressions"]
    return {"out_dir": raw, "num_impressions": rows,
            **{k: max(1, round(defaults[k] * scale)) for k in SCALED_LOGS}}


def prepare_data(work: str, rows: int) -> str:
    """Simulate and preprocess into ``work/data`` (ads + pseudo-ad rec rows, the random split);
    an existing data directory is reused."""
    from pipeline.beam.driver import run_preprocess
    from pipeline.config import load_config, read_yaml
    from pipeline.preprocess_config import PreprocessConfig
    from pipeline.simulator import SimulatorConfig, simulate

    data, raw = os.path.join(work, "data"), os.path.join(work, "raw")
    if os.path.exists(os.path.join(data, "schema.json")):
        return data
    if not os.path.exists(os.path.join(raw, "summary.json")):
        simulate(load_config(SimulatorConfig, SIMULATE, simulator_overrides(raw, rows)), progress=False)
    ads = os.path.join(raw, "ads.parquet")
    cfg = load_config(PreprocessConfig, PREPROCESS, {
        "input.path": [os.path.join(raw, "ads", "*.parquet"), os.path.join(raw, "rec", "*.parquet")],
        "output": data, "split.extra_splits": {"random": os.path.join(raw, "random", "*.parquet")},
        "transforms": [dict(t, ads_table=ads) for t in read_yaml(PREPROCESS)["transforms"]]})
    run_preprocess(cfg, progress=False)
    return data


def method_config(data: str, method: str, seed: int):
    """``method``'s training config for ``seed``, as ``ctrflow compare`` builds it, on ``data``."""
    from pipeline.compare import CompareConfig, train_configs
    from pipeline.config import load_config

    cfg = load_config(CompareConfig, COMPARE, {"seeds": [seed], "base_overrides.data_dir": data,
                                               "out_dir": os.path.join(tempfile.gettempdir(), "unused")})
    return train_configs(cfg, verbose=0)[(method, seed)]


def measure(data: str, method: str, seed: int, epochs: int) -> dict:
    """Train ``method`` for ``epochs`` epochs (``paired_throughput.timed_training``): each epoch's
    wall and CPU time, its rows, AUCs, the rows of its sources."""
    from pipeline.data import split_rows
    from pipeline.train import resolve

    cfg = method_config(data, method, seed)
    out, _ = timed_training(cfg, epochs)
    out.update(split_rows=split_rows(cfg.data_dir, cfg.train_split, cfg.sources, resolve(cfg)[0]),
               sources=cfg.sources, framework=cfg.model.framework, backbone=cfg.model.backbone,
               batch=cfg.batch_size)
    return out


def _worker(args) -> None:
    result = {"method": args.method, "seed": args.seed, **measure(args.data, args.method, args.seed, args.epochs),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("RESULT " + json.dumps(result), flush=True)


def ratios(results) -> list:
    """Per seed with both methods: Rec4Ad / Base of the time per epoch and of the examples/s."""
    by = {(r["method"], r["seed"]): r for r in results}
    base, rec4ad = METHODS
    out = []
    for seed in sorted({s for m, s in by if m == base and (rec4ad, s) in by}):
        b, r = by[(base, seed)], by[(rec4ad, seed)]
        out.append({"seed": seed, "epoch_s": _epoch_s(r) / _epoch_s(b),
                    "examples_per_s": r["train_examples_per_s"] / b["train_examples_per_s"],
                    "examples_per_s_best": r["train_examples_per_s_best"] / b["train_examples_per_s_best"]})
    return out


def _epoch_s(r) -> float:
    """Mean seconds of the epochs after the first."""
    return statistics.mean(r["epoch_s"][1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="simulated ad impressions (num_impressions)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (the first, with tracing, is not timed)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ctrflow_bench_rec4ad"))
    ap.add_argument("--out", help="also write the JSON document here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error(f"--epochs {args.epochs}: expected at least 2 (the first epoch, with tracing, is not timed)")
    if args.worker:
        return _worker(args)

    data = prepare_data(args.work, args.rows)
    results = []
    for seed in args.seeds:  # seeds outermost, methods alternating
        for method in METHODS:
            results.append(run_worker([sys.executable, __file__, "--worker", "--method", method, "--seed", str(seed),
                                 "--epochs", str(args.epochs), "--data", data], cwd=REPO))
            print(json.dumps(results[-1]), flush=True)
    doc = {"benchmark": "rec4ad_throughput", "num_impressions": args.rows, "epochs": args.epochs,
           "seeds": args.seeds, "config": os.path.relpath(COMPARE, REPO), "machine": machine(),
           "results": results, "ratios": ratios(results)}
    emit(doc, args.out)
    print("\n" + table(doc))


def table(doc: dict) -> str:
    """The markdown tables of a JSON document this script wrote (docs/benchmarks.md)."""
    lines = ["| method | sources | seeds | train rows / epoch | s / epoch | train ex/s (all epochs) | "
             "train ex/s (best epoch) | train CPU us/ex | peak RSS MB | random-policy AUC (mean) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        rs = [r for r in doc["results"] if r["method"] == method]
        if not rs:
            continue
        rate = statistics.harmonic_mean([x for r in rs for x in r["epoch_examples_per_s"]])
        lines.append(f"| {method} | {'+'.join(rs[0]['sources'] or ['ad', 'rec'])} | {len(rs)} | "
                     f"{rs[0]['train_rows']:,} | {statistics.mean(_epoch_s(r) for r in rs):.1f} | {rate:,.0f} | "
                     f"{max(r['train_examples_per_s_best'] for r in rs):,.0f} | "
                     f"{statistics.median(r['train_cpu_us_per_example'] for r in rs):.1f} | "
                     f"{statistics.median(r['peak_rss_mb'] for r in rs):.0f} | "
                     f"{statistics.mean(r['test_auc'] for r in rs):.4f} |")
    if doc["ratios"]:
        mean = lambda k: statistics.mean(q[k] for q in doc["ratios"])  # noqa: E731
        lines += ["", "| Rec4Ad / Base (paired by seed, mean) | seeds | time per epoch | train ex/s (all epochs) | "
                  "train ex/s (best epoch) |", "|---|---|---|---|---|",
                  f"| ratio | {len(doc['ratios'])} | {mean('epoch_s'):.2f}x | {mean('examples_per_s'):.2f}x | "
                  f"{mean('examples_per_s_best'):.2f}x |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
