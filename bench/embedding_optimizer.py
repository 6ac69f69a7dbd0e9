"""Training-step cost of the embedding optimizer: Keras' (legacy) Adam against ``lazy_adam``
(``pipeline/optimizers.py``) on tables of 13 k (MovieLens-1M's ids), 1 M and 10 M rows.

Adam decays its moments and moves every row of a table at every step, even on an embedding
lookup's sparse gradient; lazy Adam updates the looked-up rows only (issue 15). The model is the
part that matters here: 8 categorical fields looked up in one table of ``rows`` x 16 (ids drawn
from a Zipf law, as ads ids are), concatenated into a DNN [400, 400, 400] with a logit, batch
4096, the optimizers built by ``pipeline.optimizers.make_optimizer`` as ``ctrflow train`` builds
them. One worker process per (optimizer, rows, seed), so peak memory is per run; the two
optimizers alternate first / second by seed, and their ratio per (rows, seed) is what survives the
machine's fast and slow spells. Step time: the median and the best of ``--steps`` timed steps
after 5 warm-up steps (tracing excluded).

    python bench/embedding_optimizer.py --seeds 1 2 3 --out docs/benchmarks/embedding_optimizer.json
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from features import _tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)
from report_json import emit, machine, run_worker  # noqa: E402  (bench/ is the script directory)

OPTIMIZERS = ("adam", "lazy_adam")
ROWS = (13_000, 1_000_000, 10_000_000)
FIELDS, DIM, BATCH, UNITS = 8, 16, 4096, (400, 400, 400)


def measure(optimizer: str, rows: int, seed: int, steps: int) -> dict:
    """Seconds per training step (median and best of ``steps``) of the model of the module docstring."""
    import numpy as np
    import tensorflow as tf

    from pipeline.config import from_dict
    from pipeline.optimizers import make_optimizer
    from pipeline.train_config import OptimizerConfig

    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    table = tf.Variable(tf.random.normal([rows, DIM], stddev=0.01), name="table")
    dense = [tf.keras.layers.Dense(u, activation="relu") for u in UNITS] + [tf.keras.layers.Dense(1)]
    # 16 batches of ids (Zipf, exponent 1.1, folded into the table) and labels, cycled in the graph
    ids = tf.constant((rng.zipf(1.1, size=(16, BATCH, FIELDS)) - 1) % rows, tf.int32)
    labels = tf.constant(rng.random((16, BATCH, 1)) < 0.1, tf.float32)
    opt = make_optimizer(from_dict(OptimizerConfig, {"name": optimizer, "learning_rate": 1e-3}))

    @tf.function
    def step(i):
        batch_ids, y = ids[i % 16], labels[i % 16]
        with tf.GradientTape() as tape:
            x = tf.reshape(tf.gather(table, batch_ids), [BATCH, FIELDS * DIM])
            for layer in dense:
                x = layer(x)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, x))
        variables = [table] + [v for layer in dense for v in layer.trainable_variables]
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    for i in range(5):
        step(tf.constant(i)).numpy()
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(tf.constant(i)).numpy()
        times.append(time.perf_counter() - start)
    return {"optimizer": optimizer, "rows": rows, "seed": seed, "steps": steps,
            "step_ms_median": 1e3 * statistics.median(times), "step_ms_best": 1e3 * min(times),
            "examples_per_s": BATCH / statistics.median(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out")
    ap.add_argument("--worker", nargs=3, metavar=("OPTIMIZER", "ROWS", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import json
        name, rows, seed = args.worker
        print("RESULT " + json.dumps(measure(name, int(rows), int(seed), args.steps)), flush=True)
        return
    results = []
    for seed in args.seeds:
        for rows in args.rows:
            order = OPTIMIZERS if seed % 2 else OPTIMIZERS[::-1]
            for name in order:
                results.append(run_worker([sys.executable, os.path.abspath(__file__), "--steps", str(args.steps),
                                           "--worker", name, str(rows), str(seed)], cwd=REPO))
                print(_row(results[-1]), file=sys.stderr, flush=True)
    doc = {"benchmark": "embedding_optimizer", "machine": machine(),
           "setup": {"fields": FIELDS, "embedding_dim": DIM, "batch": BATCH, "dnn": list(UNITS),
                     "ids": "Zipf(1.1) mod rows", "steps": args.steps}, "results": results}
    emit(doc, args.out)
    print(table(doc))


def _row(r: dict) -> str:
    return f"{r['optimizer']} rows={r['rows']} seed={r['seed']}: {r['step_ms_median']:.1f} ms/step"


def table(doc: dict) -> str:
    """Per table size: each optimizer's median step time, ex/s and peak memory (means over seeds),
    and lazy / dense step-time ratios paired by seed (median of the per-seed medians, and best)."""
    by = {(r["optimizer"], r["rows"], r["seed"]): r for r in doc["results"]}
    sizes = sorted({r["rows"] for r in doc["results"]})
    seeds = sorted({r["seed"] for r in doc["results"]})
    lines = ["| rows | Adam ms/step | lazy Adam ms/step | lazy / Adam (median step) | lazy / Adam (best step) "
             "| Adam ex/s | lazy Adam ex/s | Adam peak MB | lazy Adam peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rows in sizes:
        pairs = [(by[("adam", rows, s)], by[("lazy_adam", rows, s)]) for s in seeds
                 if ("adam", rows, s) in by and ("lazy_adam", rows, s) in by]
        if not pairs:
            continue

        def mean(side, key):
            return statistics.mean(p[side][key] for p in pairs)

        med = statistics.median(b["step_ms_median"] / a["step_ms_median"] for a, b in pairs)
        best = statistics.median(b["step_ms_best"] / a["step_ms_best"] for a, b in pairs)
        lines.append(f"| {rows:,} | {mean(0, 'step_ms_median'):.1f} | {mean(1, 'step_ms_median'):.1f} | {med:.2f} "
                     f"| {best:.2f} | {mean(0, 'examples_per_s'):,.0f} | {mean(1, 'examples_per_s'):,.0f} "
                     f"| {mean(0, 'peak_rss_mb'):,.0f} | {mean(1, 'peak_rss_mb'):,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
