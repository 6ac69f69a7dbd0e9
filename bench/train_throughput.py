"""Training and inference throughput of DNN, DeepFM and DCNv2: ctrflow vs DeepCTR.

Same data (the simulator's ads log, 10 categorical fields), same configuration
(embedding 16, MLP [400, 400, 400], batch 4096, Adam 1e-3), same machine, one
process per measurement (so peak memory is per configuration). ctrflow reads the
gzip TFRecords through its tf.data reader; DeepCTR (installed in a scratch
virtualenv, never a project dependency) gets the same encoded ids as numpy arrays.

    python bench/train_throughput.py                      # simulate + preprocess 300k rows, then measure
    python bench/train_throughput.py --deepctr-python /tmp/deepctr_venv/bin/python

Prints one JSON document and a table. Examples/s are measured on the epochs after
the first (tracing and XLA compilation excluded).
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
from features import _tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)

CATEGORICAL = ["user_id", "age_bucket", "gender", "city", "device", "occupation", "item_id", "category",
               "brand", "ad_id"]
MODELS = ("dnn", "deepfm", "dcnv2")
BATCH, EPOCHS, EMB, UNITS, LR = 4096, 3, 16, [400, 400, 400], 1e-3


def prepare_data(out: str, rows: int) -> str:
    """Simulate ``rows`` ad impressions and encode the 10 categorical fields."""
    from pipeline.config import load_config
    from pipeline.preprocess import run_preprocess
    from pipeline.preprocess_config import PreprocessConfig
    from pipeline.simulator import SimulatorConfig, simulate

    data = os.path.join(out, "data")
    if os.path.exists(os.path.join(data, "schema.json")):
        return data
    raw = os.path.join(out, "raw")
    simulate(load_config(SimulatorConfig, os.path.join(REPO, "configs", "simulate_default.yaml"),
                         {"out_dir": raw, "num_impressions": rows}), progress=False)
    cfg = load_config(PreprocessConfig, os.path.join(REPO, "configs", "preprocess_sim.yaml"),
                      {"input.path": os.path.join(raw, "ads", "*.parquet"), "output": data,
                       "split.extra_splits": {}})
    cfg.features = [f for f in cfg.features if f["name"] in CATEGORICAL]
    cfg.extra_meta = {}
    run_preprocess(cfg, progress=False)
    return data


def export_numpy(data: str, path: str) -> None:
    """The encoded ids and labels of train and test as one npz (DeepCTR's input)."""
    import numpy as np

    from pipeline.data import read_columns

    arrays = {}
    for split in ("train", "test"):
        cols = read_columns(data, split, CATEGORICAL + ["click"])
        for k, v in cols.items():
            arrays[f"{split}/{k}"] = v
    from features.schema import Schema

    schema = Schema.load(data)
    arrays["vocab_sizes"] = np.array([schema.feature(n).num_ids for n in CATEGORICAL])
    np.savez(path, **arrays)


def _cpu() -> float:
    """CPU seconds of this process: a load-independent cost (the machine may be shared)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure_ctrflow(data: str, model_name: str, xla: bool, precision: str) -> dict:
    import numpy as np
    import tensorflow as tf

    from features.schema import Schema
    from models.factory import build_model
    from pipeline import metrics as M
    from pipeline.data import make_dataset
    from pipeline.predict import predict_labels

    tf.keras.utils.set_random_seed(1)
    tf.keras.mixed_precision.set_global_policy(precision)
    schema = Schema.load(data)
    options = {"dnn_units": UNITS}
    model = build_model(schema.to_dict(), ["click"], backbone=model_name, backbone_options=options,
                        embedding_dim=EMB)
    model.compile(tf.keras.optimizers.Adam(LR), loss={"click": "binary_crossentropy"}, jit_compile=xla)
    train = make_dataset(data, "train", BATCH, shuffle=True, cache=True, seed=1, labels=["click"])
    n_train = sum(int(b[1]["click"].shape[0]) for b in train)
    times, cpu = [], []
    for _ in range(EPOCHS):
        t0, c0 = time.perf_counter(), _cpu()
        model.fit(train, epochs=1, verbose=0)
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu() - c0)
    test = make_dataset(data, "test", BATCH, shuffle=False, cache=True, labels=["click"])
    predict_labels(model, test, ["click"])  # warm-up trace
    t0 = time.perf_counter()
    y, p = predict_labels(model, test, ["click"])
    pred_s = time.perf_counter() - t0
    return {"train_examples_per_s": n_train / float(np.mean(times[1:])), "first_epoch_s": times[0],
            "train_cpu_us_per_example": float(np.mean(cpu[1:])) / n_train * 1e6,
            "predict_examples_per_s": len(y["click"]) / pred_s, "test_auc": M.auc(y["click"], p["click"]),
            "train_rows": n_train}


def _worker(args) -> None:
    result = {"library": "ctrflow", "model": args.model, "xla": bool(args.xla), "precision": args.precision}
    result.update(measure_ctrflow(args.data, args.model, bool(args.xla), args.precision))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def _run(cmd, env=None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark worker failed: {' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ctrflow_bench_train"))
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--deepctr-python", default=None, help="python of a virtualenv with deepctr==0.9.4")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--xla", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)

    data = prepare_data(args.work, args.rows)
    results = []
    for model in args.models:
        for xla, precision in ((0, "float32"), (1, "float32"), (0, "mixed_bfloat16")):
            results.append(_run([sys.executable, __file__, "--worker", "--model", model, "--xla", str(xla),
                                 "--precision", precision, "--data", data]))
            print(json.dumps(results[-1]), flush=True)
    if args.deepctr_python:
        npz = os.path.join(args.work, "arrays.npz")
        if not os.path.exists(npz):
            export_numpy(data, npz)
        for model in args.models:
            results.append(_run([args.deepctr_python, os.path.join(REPO, "bench", "deepctr_worker.py"),
                                 "--npz", npz, "--model", model, "--epochs", str(EPOCHS)],
                                env={"TF_USE_LEGACY_KERAS": "1"}))
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"benchmark": "train_throughput", "batch": BATCH, "embedding": EMB, "mlp": UNITS,
                      "results": results}, indent=2))
    _table(results)


def _table(results) -> None:
    print("\n| library | model | XLA | precision | train ex/s | train CPU us/ex | predict ex/s | test AUC | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['library']} | {r['model']} | {'on' if r['xla'] else 'off'} | {r.get('precision', 'float32')} | "
              f"{r['train_examples_per_s']:,.0f} | {r['train_cpu_us_per_example']:.1f} | "
              f"{r['predict_examples_per_s']:,.0f} | {r['test_auc']:.4f} | {r['peak_rss_mb']:.0f} |")
    base = {r["model"]: r for r in results if r["library"] == "deepctr"}
    for r in results:
        b = base.get(r["model"])
        if r["library"] == "ctrflow" and b:
            print(f"ctrflow/{r['model']} XLA {'on' if r['xla'] else 'off'} {r['precision']}: "
                  f"{r['train_examples_per_s'] / b['train_examples_per_s']:.2f}x DeepCTR wall, "
                  f"{b['train_cpu_us_per_example'] / r['train_cpu_us_per_example']:.2f}x DeepCTR per CPU-second")


if __name__ == "__main__":
    main()
