"""``ctrflow demo``: the main job end to end on the simulator's default data.

simulate -> preprocess (Beam) -> train (DCNv2) -> evaluate -> export, printing
where each output is and the accounting / metrics of each step.
"""
from __future__ import annotations

import json
import os
import time

from pipeline.config import load_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _banner(text):
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def run_demo(out: str, fast: bool = False, overwrite: bool = False) -> dict:
    """Run every step into ``out``; re-running replaces the demo's own earlier outputs, while a
    folder there that the demo's commands did not write is refused unless ``overwrite``
    (``features.outputs``)."""
    from features import outputs
    from pipeline.beam.driver import run_preprocess
    from pipeline.preprocess_config import PreprocessConfig
    from pipeline.simulator import SimulatorConfig, simulate

    out = os.path.abspath(out)
    t0 = time.time()
    raw, data, runs_dir = (os.path.join(out, d) for d in ("raw", "data", "runs"))
    sim_over = {"out_dir": raw}
    if fast:
        sim_over.update({"num_impressions": 20_000, "rec_impressions": 4_000, "random_impressions": 4_000})
    _banner("1/5 simulate (ads-world simulator)")
    sim = simulate(load_config(SimulatorConfig, os.path.join(CONFIG_DIR, "simulate_default.yaml"), sim_over),
                   overwrite=overwrite)
    print(json.dumps({k: sim[k] for k in sim if not isinstance(sim[k], (list, dict))}, indent=2, default=str))

    _banner("2/5 preprocess (Apache Beam, DirectRunner)")
    pre_cfg = load_config(PreprocessConfig, os.path.join(CONFIG_DIR, "preprocess_sim.yaml"),
                          {"input.path": os.path.join(raw, "ads", "*.parquet"), "output": data,
                           "split.extra_splits": {"random": os.path.join(raw, "random", "*.parquet")}})
    pre = run_preprocess(pre_cfg, overwrite=overwrite)
    print(f"encoded TFRecords, schema.json and vocabularies in {data}")
    _print_accounting(pre)

    from pipeline.evaluate import evaluate_run, summary_table
    from pipeline.train import TrainConfig, train

    _banner("3/5 train (DCNv2)")
    train_over = {"data_dir": data, "runs_dir": runs_dir, "run_name": "dcnv2"}
    if fast:
        train_over.update({"epochs": 1})
    tcfg = load_config(TrainConfig, os.path.join(CONFIG_DIR, "train_sim_dcnv2.yaml"), train_over)
    outputs.claim_output(os.path.join(runs_dir, "dcnv2"), "train", overwrite=overwrite)  # replace only our run
    summary = train(tcfg, config_name="train_sim_dcnv2", overwrite=True)
    run_dir = summary["run_dir"]
    print(f"run directory: {run_dir} ({summary['epochs_run']} epochs, {summary['seconds']:.1f} s); "
          f"TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}")

    _banner("4/5 evaluate")
    results = evaluate_run(run_dir, splits=tcfg.eval_splits, ad_stats=os.path.join(raw, "ads.parquet"))
    print(summary_table(results))
    print(f"report: {os.path.join(run_dir, 'report.md')}")

    _export_step(run_dir, out, overwrite)
    print(f"\ndemo finished in {time.time() - t0:.0f} s; everything is under {out}")
    return {"run_dir": run_dir, "metrics": results}


def _export_step(run_dir, out, overwrite=False):
    from serving.export import describe_export, export_run

    _banner("5/5 export (SavedModel for TF Serving)")
    info = export_run(run_dir, os.path.join(out, "serving"), overwrite=overwrite)
    print(describe_export(info))


def _print_accounting(summary: dict) -> None:
    splits = summary.get("splits", {})
    print("| split | rows in | written | quarantined |\n|---|---|---|---|")
    for name, s in splits.items():
        print(f"| {name} | {s['rows_in']} | {s['rows_written']} | {s['rows_quarantined']} |")
    if "rows_per_second" in summary:
        print(f"throughput: {summary['rows_per_second']:.0f} rows/s")
