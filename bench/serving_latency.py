"""In-process SavedModel latency of the exported serving graph, ours and an earlier checkout's.

The model is the demo's: DCNv2 (``configs/train_sim_dcnv2.yaml``: embedding 16, MLP
[400, 400, 400], 3 cross layers, parallel) on the simulator's schema
(``configs/preprocess_sim.yaml``: 23 features, MNSE, log2sq buckets, two behaviour
sequences of 20, two 16-d pretrained vectors). Its vocabularies are either a real
preprocessed data directory (``--data-dir demo_out/data``) or, by default, fitted
on synthetic statistics with the simulator's default cardinalities (5000 users,
2000 items, 6000 ads...), so the benchmark needs neither the simulator nor Beam.
Weights are untrained (seed 0): latency does not depend on their values.

Every version under test is exported by a worker process of this script that imports that
version's code (``--baseline-repo``: an earlier checkout, first on ``sys.path``), and the
ops of its graphs are counted: the raw-feature signature (``serving_default``: request
checks + in-graph encoding + model, called functions included) and the encoded-feature
one (``encoded``: the model); their difference is the encoding's. ``--precision
mixed_bfloat16`` adds our code exported in that Keras policy (``ctrflow export
--precision``: the MLP's hidden layers after its first compute in bfloat16; same weights)
with its largest |p - p(float32)| over the 512 example rows. Then timing workers, one
process per version and round, alternate (``--rounds``) so that every version meets the
same load; each loads its SavedModel and calls both signatures on pre-built tensors for
1 / 64 / 512 candidates. p50 / p99 / mean are over all rounds' calls. Request building
(client side) is not timed.

    python bench/serving_latency.py [--batch-sizes 1 64 512] [--seconds 2] [--rounds 3] [--out FILE]
    git worktree add --detach /tmp/serving_before <rev>     # a change's effect, paired in one run:
    python bench/serving_latency.py --baseline-repo /tmp/serving_before --precision mixed_bfloat16

Prints one JSON document and the tables of ``table(doc)`` (``docs/benchmarks.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the code under test: ours, or in a worker the checkout it was given (--code)
sys.path.insert(0, sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else REPO)
from features import _tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)
from report_json import emit, machine, run_worker  # noqa: E402  (bench/ is the script directory)

import numpy as np  # noqa: E402
import yaml  # noqa: E402

OURS, BASELINE = "ours", "baseline"
SIGNATURES = ("serving_default", "encoded")


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


def graph_ops(fn) -> int:
    """Ops of a loaded signature's graph, the bodies of the functions it calls included
    (control-flow branches, run only on a failed check, are not)."""
    gdef = fn.graph.as_graph_def()
    lib = {f.signature.name: f for f in gdef.library.function}

    def count(nodes) -> int:
        called = [n.attr["f"].func.name if "f" in n.attr else "" for n in nodes]
        return sum(count(lib[f].node_def) if f in lib else 1 for f in called)

    return count(gdef.node)


def export_version(data_dir: str, export_dir: str, precision: str, float32_dir: str = None) -> dict:
    """Build the model (seed 0) in ``precision`` and export it with the code on ``sys.path``;
    its op counts (and, given ``float32_dir``, whether its weights are that export's)."""
    import tensorflow as tf

    from features.schema import Schema
    from models.factory import build_model
    from models.layers import global_policy
    from serving.export import export_model

    with open(os.path.join(REPO, "configs", "train_sim_dcnv2.yaml")) as fh:
        model_cfg = yaml.safe_load(fh)["model"]
    schema = Schema.load(data_dir)
    tf.keras.utils.set_random_seed(0)
    with global_policy(precision):
        model = build_model(schema.to_dict(), ["click"], **model_cfg)
    t0 = time.perf_counter()
    export_model(model, schema, ["click"], data_dir, export_dir, model_name="dcnv2")
    out = {"export_seconds": time.perf_counter() - t0}
    loaded = tf.saved_model.load(export_dir)
    ops = {sig: graph_ops(loaded.signatures[sig]) for sig in SIGNATURES}
    out["ops"] = {**ops, "encoding": ops["serving_default"] - ops["encoded"]}
    out["model"] = {"backbone": model_cfg["backbone"], **model_cfg["backbone_options"],
                    "embedding_dim": model_cfg["embedding_dim"], "features": len(schema.features),
                    "parameters": int(sum(np.prod(v.shape) for v in model.variables))}
    if float32_dir:  # the same variable values, in whatever order the traced functions read them
        ours, ref = (sorted(v.numpy().tobytes() for v in tf.saved_model.load(d).model_variables)
                     for d in (export_dir, float32_dir))
        out["same_weights_as_float32"] = ours == ref
    return out


def time_version(data_dir: str, export_dir: str, batch_sizes, seconds: float) -> dict:
    """Per-call seconds of both signatures at each request size, and the raw signature's
    probabilities at the largest (code on ``sys.path``)."""
    import tensorflow as tf

    from features.encoders import NumpyEncoder
    from features.schema import Schema
    from serving.clients import RequestBuilder
    from serving.signatures import ENCODED_SIGNATURE, RAW_SIGNATURE, signature_keys
    from serving.warmup import example_rows

    schema = Schema.load(data_dir)
    loaded = tf.saved_model.load(export_dir)
    builder = RequestBuilder.from_schema(schema)
    pool = example_rows(schema, data_dir, max(batch_sizes))
    times, probs = {}, None
    for b in batch_sizes:
        rows = pool[:b]
        encoded = {f.name: NumpyEncoder(f, data_dir).encode([r.get(f.raw_column) for r in rows])
                   for f in schema.features}
        for sig, inputs in ((RAW_SIGNATURE, builder.tensors(rows)), (ENCODED_SIGNATURE, encoded)):
            fn = loaded.signatures[sig]
            kwargs = {kw: tf.constant(inputs[key]) for key, (kw, _) in signature_keys(fn).items()}
            times[f"{sig}/{b}"] = time_calls(fn, kwargs, seconds)
            if sig == RAW_SIGNATURE and b == max(batch_sizes):
                probs = fn(**kwargs)["click"].numpy().tolist()
    return {"times": times, "probs": probs}


def _git_rev(path: str) -> str:
    rev = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return rev.stdout.strip() + ("+uncommitted" if dirty else "")


def run(batch_sizes, seconds: float, rounds: int, data_dir: str = None, baseline_repo: str = None,
        precision: str = "float32") -> dict:
    """Export every version, then time them alternately (module docstring)."""
    versions = ([(BASELINE, os.path.abspath(baseline_repo), "float32")] if baseline_repo else []) + \
        [(OURS, REPO, "float32")] + ([(OURS, REPO, precision)] if precision != "float32" else [])
    with tempfile.TemporaryDirectory(prefix="ctrflow-serving-bench-") as tmp:
        data = data_dir or synthetic_data_dir(os.path.join(tmp, "data"))
        started = machine()
        docs, dirs = [], {}
        for label, code, prec in versions:
            key = f"{label} {prec}"
            dirs[key] = os.path.join(tmp, key.replace(" ", "_"), "1")
            cmd = [sys.executable, __file__, "--worker", "export", "--code", code, "--data-dir", data,
                   "--export-dir", dirs[key], "--precision", prec]
            if prec != "float32":
                cmd += ["--float32-dir", dirs[f"{OURS} float32"]]
            docs.append({"version": label, "precision": prec, "code": _git_rev(code), **run_worker(cmd, cwd=code)})
        samples = {}
        for _ in range(rounds):
            for (label, code, prec), doc in zip(versions, docs):
                key = f"{label} {prec}"
                cmd = [sys.executable, __file__, "--worker", "time", "--code", code, "--data-dir", data,
                       "--export-dir", dirs[key], "--seconds", str(seconds), "--batch-sizes", *map(str, batch_sizes)]
                got = run_worker(cmd, cwd=code)
                doc["probs"] = got["probs"]
                for k, v in got["times"].items():
                    samples.setdefault((label, prec, k), []).extend(v)
    ref = np.asarray(docs[[d["version"] == OURS and d["precision"] == "float32" for d in docs].index(True)]["probs"])
    for d in docs:
        d["max_abs_dp_vs_ours_float32"] = float(np.max(np.abs(np.asarray(d.pop("probs")) - ref)))
    results = []
    for (label, prec, key), times in samples.items():
        sig, b = key.split("/")
        mean = float(np.mean(times))
        results.append({"version": label, "precision": prec, "signature": sig, "batch": int(b), "calls": len(times),
                        "p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99), "mean_ms": mean * 1e3,
                        "candidates_per_s": int(b) / mean})
    return {"benchmark": "serving_latency", "model": docs[-1]["model"],
            "data_dir": data_dir or "synthetic (simulator cardinalities)", "batch_sizes": list(batch_sizes),
            "seconds_per_size": seconds, "rounds": rounds, "versions": docs, "results": results,
            "machine": started, "load_average_at_end": list(os.getloadavg())}


def _name(version: str, precision: str) -> str:
    return version if precision == "float32" else f"{version} {precision}"


def table(doc: dict) -> str:
    """The markdown tables of a JSON document this script wrote: latency per version, op counts,
    and the ratios of the paired versions (ours / baseline; bfloat16 / float32)."""
    lines = ["| version | signature | candidates / request | p50 ms | p99 ms | mean ms | candidates/s | calls |",
             "|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in sorted(doc["results"], key=lambda r: (r["batch"], r["signature"] != "serving_default")):
        by[(_name(r["version"], r["precision"]), r["signature"], r["batch"])] = r
        lines.append(f"| {_name(r['version'], r['precision'])} | {r['signature']} | {r['batch']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['mean_ms']:.2f} | {r['candidates_per_s']:,.0f} | {r['calls']} |")
    lines += ["", "| version | code | ops: serving_default | ops: encoded | ops: encoding (difference) | "
                  "max abs p - p(ours float32), 512 rows |", "|---|---|---|---|---|---|"]
    for v in doc["versions"]:
        lines.append(f"| {_name(v['version'], v['precision'])} | {v['code']} | {v['ops']['serving_default']} | "
                     f"{v['ops']['encoded']} | {v['ops']['encoding']} | {v['max_abs_dp_vs_ours_float32']:.2g} |")
    pairs = [(OURS, BASELINE)] + [(_name(OURS, v["precision"]), OURS) for v in doc["versions"] if v["precision"] != "float32"]
    rows = [f"| {a} / {b} | {sig} | {batch} | {by[(a, sig, batch)]['p50_ms'] / by[(b, sig, batch)]['p50_ms']:.2f}x | "
            f"{by[(a, sig, batch)]['p99_ms'] / by[(b, sig, batch)]['p99_ms']:.2f}x |"
            for a, b in pairs for batch in doc["batch_sizes"] for sig in SIGNATURES
            if (a, sig, batch) in by and (b, sig, batch) in by]
    if rows:
        lines += ["", "| ratio | signature | candidates / request | p50 | p99 |", "|---|---|---|---|---|", *rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512])
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per signature, size and round")
    p.add_argument("--rounds", type=int, default=3, help="timing processes per version, alternating")
    p.add_argument("--data-dir", help="a preprocessed data dir (schema.json + vocab/); default: synthetic")
    p.add_argument("--baseline-repo", help="an earlier ctrflow checkout, timed alternately with ours")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"],
                   help="also export and time our code in this Keras policy")
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("--worker", choices=["export", "time"], help=argparse.SUPPRESS)
    p.add_argument("--code", help=argparse.SUPPRESS)
    p.add_argument("--export-dir", help=argparse.SUPPRESS)
    p.add_argument("--float32-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "export":
        print("RESULT " + json.dumps(export_version(args.data_dir, args.export_dir, args.precision, args.float32_dir)),
              flush=True)
        return {}
    if args.worker == "time":
        print("RESULT " + json.dumps(time_version(args.data_dir, args.export_dir, args.batch_sizes, args.seconds)),
              flush=True)
        return {}
    report = run(args.batch_sizes, args.seconds, args.rounds, args.data_dir, args.baseline_repo, args.precision)
    emit(report, args.out)
    print()
    print(table(report))
    return report


if __name__ == "__main__":
    main()
