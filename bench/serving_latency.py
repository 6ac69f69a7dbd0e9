"""In-process SavedModel latency and throughput of the exported serving graph.

The model is the demo's: DCNv2 (``configs/train_sim_dcnv2.yaml``: embedding 16, MLP
[400, 400, 400], 3 cross layers, parallel) on the simulator's schema
(``configs/preprocess_sim.yaml``: 23 features, MNSE, log2sq buckets, two behaviour
sequences of 20, two 16-d pretrained vectors). Its vocabularies are either a real
preprocessed data directory (``--data-dir demo_out/data``) or, by default, fitted
on synthetic statistics with the simulator's default cardinalities (5000 users,
2000 items, 6000 ads...), so the benchmark needs neither the simulator nor Beam.
Weights are untrained: latency does not depend on their values.

For each request size (candidates per request) the raw-feature signature
(``serving_default``: in-graph encoding + model) and the encoded-feature signature
are called on pre-built tensors; p50 / p99 / mean latency and candidates/s are
reported. Request building (client side) is timed separately.

    python bench/serving_latency.py [--batch-sizes 1 64 512] [--seconds 5] [--data-dir demo_out/data] [--out FILE]

Prints one JSON document and a table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from features import _tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)
from report_json import emit, machine  # noqa: E402  (bench/ is the script directory)

import numpy as np  # noqa: E402
import yaml  # noqa: E402

# the simulator's default cardinalities (configs/simulate_default.yaml and docs/simulator.md)
CARDINALITY = {"user_id": 5000, "age_bucket": 7, "gender": 3, "city": 50, "device": 4, "occupation": 12,
               "item_id": 2000, "category": 40, "brand": 300, "ad_id": 6000, "campaign_id": 600,
               "position": 10, "hour": 24, "weekday": 7}


def synthetic_data_dir(out: str, seed: int = 0) -> str:
    """Fit the simulator config's features on synthetic train statistics -> a data dir."""
    from features import encoders as E
    from features.schema import Schema
    from pipeline.preprocess_config import FeatureSpec

    with open(os.path.join(REPO, "configs", "preprocess_sim.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    specs = [FeatureSpec(**d) for d in cfg["features"]]
    rng = np.random.default_rng(seed)
    feats = {}
    for spec in E.sort_for_build(specs):
        need, stats = E.analyzers_needed(spec), {}
        if "counts" in need:
            n = CARDINALITY.get(spec.name, 100)
            keys = [str(k) for k in range(n)] if spec.dtype == "int64" else [f"{spec.name}-{k}" for k in range(n)]
            stats["counts"] = {k: int(c) for k, c in zip(keys, rng.zipf(1.3, n))}
        if need & {"quantiles", "moments"}:
            x = np.sort(rng.lognormal(3.0, 1.5, 10_000))
            stats.update(quantiles=x, moments={"count": x.size, "mean": float(x.mean()), "var": float(x.var())})
        feats[spec.name] = E.build_feature(spec, stats, out)
    Schema(features=[feats[s.name] for s in specs], labels=list(cfg["labels"])).save(os.path.join(out, "schema.json"))
    return out


def percentile_ms(samples, q) -> float:
    return float(np.percentile(np.asarray(samples) * 1e3, q))


def time_calls(fn, kwargs, seconds: float, min_calls: int = 20) -> list:
    """Wall-clock seconds of each call, after 10 warm-up calls, for ``seconds`` (at least ``min_calls``)."""
    for _ in range(10):
        fn(**kwargs)
    out, start = [], time.perf_counter()
    while len(out) < min_calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        res = fn(**kwargs)
        next(iter(res.values())).numpy()  # results materialised
        out.append(time.perf_counter() - t)
    return out


def run(batch_sizes, seconds: float, data_dir: str = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="ctrflow-serving-bench-") as tmp:
        report = measure(tmp, batch_sizes, seconds, data_dir)
    report["data_dir"] = data_dir or "synthetic (simulator cardinalities)"
    return report


def measure(tmp: str, batch_sizes, seconds: float, data_dir: str = None) -> dict:
    """Export the model under ``tmp`` and time its signatures."""
    import tensorflow as tf

    from features.encoders import NumpyEncoder
    from features.schema import Schema
    from models.factory import build_model
    from serving.clients import RequestBuilder
    from serving.export import export_model
    from serving.signatures import ENCODED_SIGNATURE, RAW_SIGNATURE, signature_keys
    from serving.warmup import example_rows

    with open(os.path.join(REPO, "configs", "train_sim_dcnv2.yaml")) as fh:
        model_cfg = yaml.safe_load(fh)["model"]
    data_dir = data_dir or synthetic_data_dir(os.path.join(tmp, "data"))
    schema = Schema.load(data_dir)
    tasks = ["click"]
    tf.keras.utils.set_random_seed(0)
    model = build_model(schema.to_dict(), tasks, **model_cfg)
    t0 = time.perf_counter()
    export_dir = os.path.join(tmp, "export", "dcnv2", "1")
    export_model(model, schema, tasks, data_dir, export_dir, model_name="dcnv2")
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = tf.saved_model.load(export_dir)
    load_s = time.perf_counter() - t0
    builder = RequestBuilder.from_schema(schema)
    pool = example_rows(schema, data_dir, max(batch_sizes))
    results = []
    for b in batch_sizes:
        rows = pool[:b]
        t = time.perf_counter()
        tensors = builder.tensors(rows)
        build_ms = (time.perf_counter() - t) * 1e3
        encoded = {f.name: NumpyEncoder(f, data_dir).encode([r.get(f.raw_column) for r in rows])
                   for f in schema.features}
        for sig, inputs in ((RAW_SIGNATURE, tensors), (ENCODED_SIGNATURE, encoded)):
            fn = loaded.signatures[sig]
            kwargs = {kw: tf.constant(inputs[key]) for key, (kw, _) in signature_keys(fn).items()}
            times = time_calls(fn, kwargs, seconds)
            mean = float(np.mean(times))
            results.append({"signature": sig, "batch": b, "calls": len(times), "p50_ms": percentile_ms(times, 50),
                            "p99_ms": percentile_ms(times, 99), "mean_ms": mean * 1e3,
                            "candidates_per_s": b / mean, "requests_per_s": 1.0 / mean,
                            "client_build_ms": build_ms if sig == RAW_SIGNATURE else None})
    return {"model": {"backbone": model_cfg["backbone"], **model_cfg["backbone_options"],
                      "embedding_dim": model_cfg["embedding_dim"], "features": len(schema.features),
                      "raw_inputs": len(builder.inputs), "parameters": int(sum(np.prod(v.shape) for v in model.variables))},
            "export_seconds": export_s, "load_seconds": load_s,
            "tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "seconds_per_size": seconds, "results": results}


def table(report: dict) -> str:
    lines = ["| signature | candidates / request | p50 ms | p99 ms | mean ms | candidates/s | requests/s | calls |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['signature']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} | "
                     f"{r['candidates_per_s']:,.0f} | {r['requests_per_s']:,.0f} | {r['calls']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512])
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per signature and size")
    p.add_argument("--data-dir", help="a preprocessed data dir (schema.json + vocab/); default: synthetic")
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args(argv)
    report = run(args.batch_sizes, args.seconds, args.data_dir)
    emit({**report, "machine": machine()}, args.out)
    print()
    print(table(report))
    return report


if __name__ == "__main__":
    main()
