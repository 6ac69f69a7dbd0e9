"""Training and inference throughput of DNN, DeepFM and DCNv2: ctrflow vs DeepCTR, at equal AUC.

Same data (the simulator's ads log, 10 categorical fields, or with ``--movielens`` a user-supplied
MovieLens-1M: its single-id fields user_id, movie_id, gender, age, occupation, zip_code and the
bucketized year, click = rating >= 4, as ``ctrflow load ml1m`` and ``configs/preprocess_ml1m.yaml``
make it; the genres sequence is left out so that both libraries read the same fields), same configuration
(embedding 16, MLP [400, 400, 400], batch 4096, Adam 1e-3), same machine, one
process per measurement (so peak memory is per configuration). ctrflow reads the
gzip TFRecords through its tf.data reader (``cache: true``); DeepCTR (installed in a
scratch virtualenv, never a project dependency) gets the same encoded ids as numpy.

    python bench/train_throughput.py                      # simulate + preprocess 300k rows, then measure
    python bench/train_throughput.py --deepctr-python /tmp/deepctr_venv/bin/python --seeds 1 2 3
    python bench/train_throughput.py --movielens ~/data/ml-1m --work /tmp/bench_ml1m  # ratings/users/movies.dat
    git worktree add /tmp/before <rev>                    # a change's effect: the same workers of an
    python bench/train_throughput.py --baseline-repo /tmp/before --models dnn dcnv2 --configs float32
                                                          # earlier checkout, run alternately with ours

Throughput: examples/s of each epoch after the first (tracing and XLA compilation
excluded); the table gives the rate over all those epochs and that of the best epoch
(this workplace's 2 vCPUs switch between a fast state and a slower one, in which step
times round up to multiples of ~44 ms, from one epoch to the next and for both libraries
alike; the best epoch is the fast state's rate).
AUC: test AUC at the epoch of best validation AUC (early stopping, as ``ctrflow train``
does; these ID-only models overfit after 1-2 epochs, so the last epoch's AUC would
measure overfitting speed, not the model). With several seeds the ratio table adds a
paired t-test of ctrflow's AUC against DeepCTR's.

The JSON also holds this machine's matmul ceiling (GFLOP/s of a [4096, 400] x [400, 400]
float32 and bfloat16 product) and the DNN's multiply-adds per example, so the float32
bound on training examples/s (3 matmuls per layer: forward, and two for the backward
pass) can be compared with what both libraries reach.

Prints one JSON document and markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from features import _tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)
from epoch_stats import epoch_summary, timed_epochs  # noqa: E402  (bench/ is the script directory)
from report_json import emit, machine as measured_on, run_worker  # noqa: E402

CATEGORICAL = ["user_id", "age_bucket", "gender", "city", "device", "occupation", "item_id", "category",
               "brand", "ad_id"]  # the simulator's fields; a MovieLens run reads its schema's
MODELS = ("dnn", "deepfm", "dcnv2")
SPLITS = ("train", "valid", "test")
# ctrflow configuration -> (XLA, precision, dropout_impl, precision placement); the uniform ones are tf.nn's
# stateless dropout, the implementation before issue 15's 16-bit-draw dropout (``bits``, the default), measured
# beside it in one run; +mlp / +embeddings move more into bfloat16 than the default placement (models/layers.py)
CONFIGS = {"float32": (0, "float32", "bits", "hidden"), "float32+xla": (1, "float32", "bits", "hidden"),
           "mixed_bfloat16": (0, "mixed_bfloat16", "bits", "hidden"),
           "mixed_bfloat16+mlp": (0, "mixed_bfloat16", "bits", "mlp"),
           "mixed_bfloat16+embeddings": (0, "mixed_bfloat16", "bits", "embeddings"),
           "float32+uniform_dropout": (0, "float32", "uniform", "hidden"),
           "mixed_bfloat16+uniform_dropout": (0, "mixed_bfloat16", "uniform", "hidden")}
DEFAULT_CONFIGS = ["float32", "float32+xla", "mixed_bfloat16"]
DROPOUT = 0.2  # issue 15's profile: every library's MLP layers with dropout 0.2
BATCH, EPOCHS, EMB, UNITS, LR = 4096, 5, 16, [400, 400, 400], 1e-3
BASELINE = "ctrflow (baseline)"  # the library label of --baseline-repo's workers


def prepare_data(out: str, rows: int, movielens: str = None) -> str:
    """Simulate ``rows`` ad impressions and encode the 10 categorical fields, or, given a
    MovieLens-1M folder, load it and encode its single-id fields (module docstring)."""
    from pipeline.config import load_config
    from pipeline.beam.driver import run_preprocess
    from pipeline.preprocess_config import PreprocessConfig
    from pipeline.simulator import SimulatorConfig, simulate

    data = os.path.join(out, "data")
    if os.path.exists(os.path.join(data, "schema.json")):
        return data
    raw = os.path.join(out, "raw")
    if movielens:
        from pipeline.loaders import load_dataset

        load_dataset("ml1m", movielens, raw)
        cfg = load_config(PreprocessConfig, os.path.join(REPO, "configs", "preprocess_ml1m.yaml"),
                          {"input.path": os.path.join(raw, "part-*.parquet"), "output": data})
        cfg.features = [f for f in cfg.features if f["kind"] != "sequence"]
        run_preprocess(cfg, progress=False)
        return data
    simulate(load_config(SimulatorConfig, os.path.join(REPO, "configs", "simulate_default.yaml"),
                         {"out_dir": raw, "num_impressions": rows}), progress=False)
    cfg = load_config(PreprocessConfig, os.path.join(REPO, "configs", "preprocess_sim.yaml"),
                      {"input.path": os.path.join(raw, "ads", "*.parquet"), "output": data,
                       "split.extra_splits": {}})
    cfg.features = [f for f in cfg.features if f["name"] in CATEGORICAL]
    cfg.extra_meta = {}
    run_preprocess(cfg, progress=False)
    return data


def fields(data: str) -> list:
    """The encoded data's fields (one id each), in schema order."""
    from features.schema import Schema

    return [f.name for f in Schema.load(data).features]


def export_numpy(data: str, path: str) -> None:
    """The encoded ids and labels of every split as one npz (DeepCTR's input), with the fields' names."""
    import numpy as np

    from features.schema import Schema
    from pipeline.data import read_columns

    names, arrays = fields(data), {}
    for split in SPLITS:
        for k, v in read_columns(data, split, names + ["click"]).items():
            arrays[f"{split}/{k}"] = v
    schema = Schema.load(data)
    arrays["names"] = np.array(names)
    arrays["vocab_sizes"] = np.array([schema.feature(n).num_ids for n in names])
    np.savez(path, **arrays)


def build_ctrflow(data: str, model_name: str, xla: bool, precision: str, seed: int, dropout: float,
                  dropout_impl: str, placement: str = "hidden"):
    """(compiled model, cached shuffled train batches) of the benchmark's configuration (module docstring)."""
    import tensorflow as tf

    from features.schema import Schema
    from models.factory import build_model
    from models.layers import mixed_precision
    from pipeline.data import make_dataset

    tf.keras.utils.set_random_seed(seed)
    tf.keras.mixed_precision.set_global_policy(precision)
    schema = Schema.load(data)
    with mixed_precision(precision, placement):
        model = build_model(schema.to_dict(), ["click"], backbone=model_name,
                            backbone_options={"dnn_units": UNITS, "dnn_dropout": dropout}, embedding_dim=EMB)
    model.compile(tf.keras.optimizers.Adam(LR), loss={"click": "binary_crossentropy"}, jit_compile=xla,
                  dropout_impl=dropout_impl)
    return model, make_dataset(data, "train", BATCH, shuffle=True, cache=True, seed=seed, labels=["click"])


def measure_ctrflow(data: str, model_name: str, xla: bool, precision: str, seed: int, epochs: int,
                    dropout: float, dropout_impl: str, placement: str = "hidden") -> dict:
    from pipeline import metrics as M
    from pipeline.data import make_dataset
    from pipeline.predict import predict_labels

    model, train = build_ctrflow(data, model_name, xla, precision, seed, dropout, dropout_impl, placement)
    evals = {s: make_dataset(data, s, BATCH, shuffle=False, cache=True, labels=["click"]) for s in ("valid", "test")}
    rows = sum(int(b[1]["click"].shape[0]) for b in train)
    def split_aucs():
        return {split: M.auc(*(out["click"] for out in predict_labels(model, ds, ["click"])))
                for split, ds in evals.items()}

    epoch_s, epoch_cpu, auc = timed_epochs(lambda: model.fit(train, epochs=1, verbose=0), split_aucs, epochs)
    t0 = time.perf_counter()
    y, _ = predict_labels(model, evals["test"], ["click"])
    out = epoch_summary(epoch_s, epoch_cpu, rows, auc["valid"], auc["test"])
    out["predict_examples_per_s"] = len(y["click"]) / (time.perf_counter() - t0)
    return out


def matmul_ceiling(num_fields: int) -> dict:
    """GFLOP/s of the DNN's hidden-layer product on this machine, float32 and bfloat16, and the
    DNN's bound in examples/s over ``num_fields`` embedded fields."""
    import tensorflow as tf

    out = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.normal([BATCH, UNITS[0]]), dtype)
        w = tf.cast(tf.random.normal([UNITS[0], UNITS[0]]) * 0.05, dtype)
        chain = tf.function(lambda a, w: tf.foldl(lambda x, _: tf.matmul(x, w), tf.range(20), a))
        chain(a, w).numpy()
        best = min(_timed(lambda: chain(a, w).numpy()) for _ in range(5))
        out[f"{dtype.name}_gflops"] = 20 * 2 * BATCH * UNITS[0] * UNITS[0] / best / 1e9
    macs = num_fields * EMB * UNITS[0] + sum(a * b for a, b in zip(UNITS, UNITS[1:])) + UNITS[-1]
    out["dnn_macs_per_example"] = macs
    # training = forward + 2 backward products per layer = 3 * 2 * macs FLOPs per example
    out["dnn_float32_bound_examples_per_s"] = out["float32_gflops"] * 1e9 / (6 * macs)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _worker(args) -> None:
    if args.model == "ceiling":
        result = {"library": "machine", **matmul_ceiling(len(fields(args.data)))}
    else:
        result = {"library": "ctrflow", "model": args.model, "xla": bool(args.xla), "precision": args.precision,
                  "dropout": args.dropout, "dropout_impl": args.dropout_impl, "placement": args.placement,
                  "seed": args.seed}
        result.update(measure_ctrflow(args.data, args.model, bool(args.xla), args.precision, args.seed,
                                      args.epochs, args.dropout, args.dropout_impl, args.placement))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ctrflow_bench_train"))
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--movielens", metavar="ML1M_DIR",
                    help="a MovieLens-1M folder (ratings.dat, users.dat, movies.dat) instead of the simulator")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=DEFAULT_CONFIGS,
                    help=f"ctrflow configurations to measure (default: {' '.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--dropout", type=float, default=DROPOUT, help="dropout of every MLP layer, both libraries")
    ap.add_argument("--deepctr-python", default=None, help="python of a virtualenv with deepctr==0.9.4")
    ap.add_argument("--baseline-repo", default=None,
                    help="an earlier ctrflow checkout whose workers run beside ours on the same data (ratio table)")
    ap.add_argument("--out", help="also write the JSON document here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--xla", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--dropout-impl", default="bits", help=argparse.SUPPRESS)
    ap.add_argument("--placement", default="hidden", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)

    data = prepare_data(args.work, args.rows, args.movielens)
    machine = run_worker([sys.executable, __file__, "--worker", "--model", "ceiling", "--data", data], cwd=REPO)
    print(json.dumps(machine), flush=True)
    npz = os.path.join(args.work, "arrays.npz")
    if args.deepctr_python and not os.path.exists(npz):
        export_numpy(data, npz)
    results = []
    for seed in args.seeds:  # seeds outermost: a slow spell of the machine hits every configuration alike
        for model in args.models:
            for xla, precision, dropout_impl, placement in (CONFIGS[c] for c in args.configs):
                worker = ["--worker", "--model", model, "--xla", str(xla), "--precision", precision,
                          "--seed", str(seed), "--epochs", str(args.epochs), "--data", data,
                          "--dropout", str(args.dropout), "--dropout-impl", dropout_impl]
                worker += ["--placement", placement] if placement != "hidden" else []  # a baseline may predate it
                for repo in ([args.baseline_repo] if args.baseline_repo else []) + [REPO]:
                    result = run_worker([sys.executable, os.path.join(repo, "bench", "train_throughput.py"), *worker],
                                        cwd=repo)
                    if repo != REPO:
                        result["library"] = BASELINE
                    results.append(result)
                    print(json.dumps(results[-1]), flush=True)
            if args.deepctr_python:
                results.append(run_worker([args.deepctr_python, os.path.join(REPO, "bench", "deepctr_worker.py"),
                                           "--npz", npz, "--model", model, "--epochs", str(args.epochs),
                                           "--seed", str(seed), "--dropout", str(args.dropout)], cwd=REPO, env={"TF_USE_LEGACY_KERAS": "1"}))
                print(json.dumps(results[-1]), flush=True)
    emit({"benchmark": "train_throughput", "dataset": "movielens-1m" if args.movielens else "simulator",
          "fields": fields(data), "dropout": args.dropout, "batch": BATCH, "embedding": EMB, "mlp": UNITS, "epochs": args.epochs,
          "seeds": args.seeds, "machine": {**machine, **measured_on()}, "results": results}, args.out)
    print(tables(results, machine))


def table(doc: dict) -> str:
    """The markdown tables of a JSON document this script wrote (docs/benchmarks.md)."""
    return tables(doc["results"], doc["machine"])


def _key(r) -> tuple:
    """(library, model, XLA, precision with a placement other than the default, dropout)."""
    placement = r.get("placement", "hidden")
    precision = r.get("precision", "float32") + (f" ({placement})" if placement != "hidden" else "")
    return r["library"], r["model"], bool(r["xla"]), precision, r.get("dropout_impl")


def tables(results, machine) -> str:
    """Markdown: one row per configuration (over seeds and epochs), then ratios to DeepCTR.

    Speed is given twice: over all epochs (rows / time, i.e. the harmonic mean of the
    epochs' rates) and in the fast state (the best epoch), see the module docstring. The
    dropout column (ctrflow's ``dropout_impl``; DeepCTR's is Keras') appears in documents
    that recorded it."""
    groups: dict = {}
    for r in results:
        groups.setdefault(_key(r), []).append(r)
    speed = {k: (statistics.harmonic_mean([x for r in rs for x in r["epoch_examples_per_s"]]),
                 max(r["train_examples_per_s_best"] for r in rs)) for k, rs in groups.items()}
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    dropout = any(k[4] for k in groups)
    lines = [f"Matmul ceiling here: float32 {machine['float32_gflops']:.0f} GFLOP/s, bfloat16 "
             f"{machine['bfloat16_gflops']:.0f} GFLOP/s; DNN training bound in float32: "
             f"{machine['dnn_float32_bound_examples_per_s']:,.0f} examples/s.", "",
             "| library | model | XLA | precision | " + ("dropout | " if dropout else "") + "seeds | "
             "train ex/s (all epochs) | train ex/s (best epoch) | train CPU us/ex | predict ex/s | test AUC (mean) | "
             "peak RSS MB |", "|---|---|---|---|" + ("---|" if dropout else "") + "---|---|---|---|---|---|---|"]
    for key, rs in groups.items():
        lib, model, xla, prec, impl = key
        cell = f"{impl or 'keras'} | " if dropout else ""
        lines.append(f"| {lib} | {model} | {'on' if xla else 'off'} | {prec} | {cell}{len(rs)} | {speed[key][0]:,.0f} | "
                     f"{speed[key][1]:,.0f} | {med(rs, 'train_cpu_us_per_example'):.1f} | "
                     f"{med(rs, 'predict_examples_per_s'):,.0f} | {statistics.mean(r['test_auc'] for r in rs):.4f} | "
                     f"{med(rs, 'peak_rss_mb'):.0f} |")
    peers = (("DeepCTR", lambda k: ("deepctr", k[1], False, "float32", None)),  # DeepCTR float32, Keras dropout
             ("baseline", lambda k: (BASELINE, *k[1:])),  # the same configuration of --baseline-repo
             ("uniform dropout", lambda k: (*k[:4], "uniform") if k[4] == "bits" else None),
             ("float32", lambda k: (*k[:3], "float32", k[4]) if k[3] != "float32" else None))  # the placements
    for label, base_of in peers:
        rows = []
        for key, rs in groups.items():
            lib, model, xla, prec, impl = key
            base = base_of(key)
            if lib == "ctrflow" and base in groups:
                name = f"{model} XLA {'on' if xla else 'off'} {prec}" + (f" dropout {impl}" if dropout else "")
                rows.append(f"| {name} | {speed[key][0] / speed[base][0]:.2f}x | "
                            f"{speed[key][1] / speed[base][1]:.2f}x | {_auc_delta(rs, groups[base])} |")
        if rows:
            lines += ["", f"| ctrflow configuration | speed / {label} (all epochs) | speed / {label} (best epoch) | "
                      f"AUC - {label}'s (paired p) |", "|---|---|---|---|", *rows]
    return "\n".join(lines)


def _auc_delta(rs, base) -> str:
    by_seed = {r["seed"]: r["test_auc"] for r in base}
    pairs = [(r["test_auc"], by_seed[r["seed"]]) for r in rs if r["seed"] in by_seed]
    delta = statistics.mean(a - b for a, b in pairs)
    if len(pairs) < 2:
        return f"{delta:+.4f}"
    from scipy.stats import ttest_rel

    return f"{delta:+.4f} (p={ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue:.2g})"


if __name__ == "__main__":
    main()
