"""Training throughput of a suite of models against a peer, each model paired with the peer in one process.

Shared by the suites' entry points (``bench/tencent_throughput.py``, ``bench/gprec_throughput.py``;
``bench/rec4ad_throughput.py`` times its runs with :func:`timed_training`):
each defines a :class:`Suite` and calls :func:`main`, which simulates and preprocesses the data,
runs one worker process per (model, seed) and prints one JSON document and a markdown table.

Pairs: a worker trains the peer and the model one after the other, the peer first for the 1st,
3rd, ... seed and second for the others (so neither side always runs first); seeds outermost. A
slow spell of the shared machine then hits both sides of a pair alike, and the model / peer
ratios, paired by seed, are what is robust; the peer against itself (a model of the suite) is the
noise floor of those ratios. Each model is its ready config with the suite's overrides, built and
compiled as ``ctrflow train`` does (``pipeline/train.py``) but without its callbacks, so the
training step alone is timed. Throughput is over the epochs after the first (tracing excluded,
``bench/epoch_stats.py``): all of them (rows / time) and the best one; CPU time per example is the
cost load changes least. AUC: the first served task's test AUC at the epoch of best validation
AUC, a check that each model learns in these few epochs.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from features import _tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)
from epoch_stats import epoch_summary, timed_epochs  # noqa: E402  (bench/ is the script directory)
from report_json import emit, machine, run_worker  # noqa: E402

SIMULATE = "simulate_default.yaml"


def config(name: str) -> str:
    """The path of ``configs/<name>``."""
    return os.path.join(REPO, "configs", name)


@dataclasses.dataclass(frozen=True)
class Suite:
    """One benchmark: the models, the peer each is paired with, the data and features they read."""
    name: str  # the JSON's benchmark is "<name>_throughput"; the default --work ctrflow_bench_<name>
    peer: str  # the model trained beside each one (a key of models)
    peer_label: str  # the peer in the table header, e.g. "DCNv2"
    models: dict  # name -> (ready config in configs/, overrides)
    preprocess: str  # preprocess config in configs/ (its input and output are the run's own)
    rows: int  # default --rows: simulated ad impressions
    features: Optional[list] = None  # the feature list the models read; None: each config's own
    own_features: tuple = ()  # models keeping their config's feature list even so


def prepare_data(suite: Suite, work: str, rows: int) -> str:
    """Simulate (ads log only) and preprocess into ``work/data`` (no extra split); an existing one is reused."""
    from pipeline.beam.driver import run_preprocess
    from pipeline.config import load_config, read_yaml
    from pipeline.preprocess_config import PreprocessConfig
    from pipeline.simulator import SimulatorConfig, simulate

    data, raw = os.path.join(work, "data"), os.path.join(work, "raw")
    if os.path.exists(os.path.join(data, "schema.json")):
        return data
    if not os.path.exists(os.path.join(raw, "summary.json")):
        simulate(load_config(SimulatorConfig, config(SIMULATE), {
            "out_dir": raw, "num_impressions": rows, "rec_impressions": 0, "random_impressions": 0}), progress=False)
    preprocess = config(suite.preprocess)
    images = os.path.join(raw, "item_images.npy")  # a transform's images: the catalogue this run simulated
    transforms = [dict(t, images=images) if "images" in t else t for t in read_yaml(preprocess).get("transforms", [])]
    cfg = load_config(PreprocessConfig, preprocess, {
        "input.path": os.path.join(raw, "ads", "*.parquet"), "output": data, "split.extra_splits": {},
        "transforms": transforms})
    run_preprocess(cfg, progress=False)
    return data


def model_config(suite: Suite, data: str, model: str, seed: int):
    """``model``'s training config for ``seed`` on ``data``: its ready config with the overrides."""
    from pipeline.config import load_config
    from pipeline.train import TrainConfig

    path, overrides = suite.models[model]
    own = suite.features is None or model in suite.own_features
    features = {} if own else {"features": suite.features}
    return load_config(TrainConfig, config(path), {**overrides, **features, "data_dir": data, "seed": seed,
                                                   "eval_splits": ["test"], "verbose": 0})


def structure(cfg, model) -> dict:
    """What the model is: tasks, options, its embedding tables' widths and parameter counts."""
    from models.embedding import FeatureEmbedding

    tables = [layer for layer in model.submodules if isinstance(layer, FeatureEmbedding)]
    embedding = {id(w): w.shape.num_elements() for layer in tables for w in layer.weights}
    m = cfg.model
    return {"tasks": list(cfg.tasks), "backbone": m.backbone, "backbone_options": m.backbone_options,
            "embedding_dim": m.embedding_dim, "framework": m.framework, "framework_options": m.framework_options,
            "field_modules": m.field_modules, "batch": cfg.batch_size,
            "table_widths": [layer.embedding_dim for layer in tables for _ in range(layer.num_tables)],
            "parameters": model.count_params(), "embedding_parameters": sum(embedding.values())}


def timed_training(cfg, epochs: int):
    """Build and compile ``cfg``'s model as ``ctrflow train`` does, then ``model.fit`` it ``epochs``
    times one epoch at a time without the run's callbacks (the training step alone is timed; train
    rows of ``cfg.sources``): (the :func:`epoch_stats.epoch_summary` with each epoch's seconds and the
    first served task, whose AUCs it gives; the model)."""
    import tensorflow as tf

    from models.layers import global_policy
    from pipeline import metrics as M
    from pipeline.data import make_dataset
    from pipeline.predict import predict_labels
    from pipeline.train import compile_model, new_model, resolve

    schema, tasks, feats = resolve(cfg)
    task = cfg.served_tasks(tasks)[0]
    tf.keras.backend.clear_session()
    gc.collect()
    tf.keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    with global_policy(cfg.precision):
        model = new_model(cfg, schema, tasks, feats)
        compile_model(model, cfg, tasks)
        train = make_dataset(cfg.data_dir, cfg.train_split, cfg.batch_size, schema=schema, shuffle=True,
                             deterministic=cfg.deterministic, seed=cfg.seed, cache=cfg.cache,
                             shuffle_buffer=cfg.shuffle_buffer, drop_remainder=True, labels=tasks,
                             sample_weight=cfg.sample_weight, sources=cfg.sources)
        evals = {s: make_dataset(cfg.data_dir, s, cfg.eval_batch_size, schema=schema, shuffle=False,
                                 cache=cfg.cache, labels=tasks) for s in (cfg.valid_split, cfg.eval_splits[0])}
        rows = sum(int(b[1][tasks[0]].shape[0]) for b in train)  # also fills the cache before timing

        def split_aucs():
            return {split: M.auc(*(out[task] for out in predict_labels(model, ds, [task])))
                    for split, ds in evals.items()}

        epoch_s, epoch_cpu, auc = timed_epochs(lambda: model.fit(train, epochs=1, verbose=0), split_aucs, epochs)
    return {**epoch_summary(epoch_s, epoch_cpu, rows, *auc.values()), "epoch_s": epoch_s, "auc_task": task}, model


def measure(suite: Suite, data: str, model_name: str, seed: int, epochs: int) -> dict:
    """Train ``model_name`` for ``epochs`` epochs (:func:`timed_training`): each epoch's wall and
    CPU time, its rows, the first served task's AUCs, the model's structure."""
    cfg = model_config(suite, data, model_name, seed)
    summary, model = timed_training(cfg, epochs)
    return {**summary, **structure(cfg, model)}


def pair_order(seed_index: int) -> list:
    """The pair's two runs in order: the peer first for the 1st, 3rd, ... seed, second otherwise."""
    return ["peer", "model"] if seed_index % 2 == 0 else ["model", "peer"]


def _worker(suite: Suite, args) -> None:
    order = pair_order(args.seed_index)
    runs = {role: measure(suite, args.data, suite.peer if role == "peer" else args.model, args.seed, args.epochs)
            for role in order}
    print("RESULT " + json.dumps({"model": args.model, "seed": args.seed, "order": order, "runs": runs}), flush=True)


def ratios(results) -> list:
    """Per pair: the model's figure over the peer's of the same process and seed (examples/s over all
    timed epochs and of the best one, CPU time per example)."""
    def ratio(r, key):
        return r["runs"]["model"][key] / r["runs"]["peer"][key]

    return [{"model": r["model"], "seed": r["seed"], "examples_per_s": ratio(r, "train_examples_per_s"),
             "examples_per_s_best": ratio(r, "train_examples_per_s_best"),
             "cpu_us_per_example": ratio(r, "train_cpu_us_per_example")} for r in results]


def main(suite: Suite, script: str, description: str) -> None:
    """The command line of ``script``, the suite's entry point (also run as its workers)."""
    models = list(suite.models)
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=suite.rows, help="simulated ad impressions (num_impressions)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first, with tracing, is not timed)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--models", nargs="+", choices=models, default=models,
                    help=f"each is paired with {suite.peer_label} ({suite.peer} itself: the noise floor)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), f"ctrflow_bench_{suite.name}"))
    ap.add_argument("--out", help="also write the JSON document here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=models, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seed-index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error(f"--epochs {args.epochs}: expected at least 2 (the first epoch, with tracing, is not timed)")
    if args.worker:
        return _worker(suite, args)

    data = prepare_data(suite, args.work, args.rows)
    results = []
    for index, seed in enumerate(args.seeds):  # seeds outermost
        for model in args.models:
            results.append(run_worker([sys.executable, os.path.abspath(script), "--worker", "--model", model,
                                       "--seed", str(seed), "--seed-index", str(index), "--epochs", str(args.epochs),
                                       "--data", data], cwd=REPO))
            print(json.dumps(results[-1]), flush=True)
    doc = {"benchmark": f"{suite.name}_throughput", "num_impressions": args.rows, "epochs": args.epochs,
           "seeds": args.seeds, "peer": suite.peer,
           "models": {m: {"config": f"configs/{suite.models[m][0]}", "overrides": suite.models[m][1]}
                      for m in args.models},
           "machine": machine(), "results": results, "ratios": ratios(results)}
    emit(doc, args.out)
    print("\n" + table(doc, suite.peer_label))


def _widths(widths: list) -> str:
    """Embedding table widths, e.g. ``64`` or ``3 x 64`` or ``16, 32, 64``."""
    if len(set(widths)) == 1:
        return f"{len(widths)} x {widths[0]}" if len(widths) > 1 else str(widths[0])
    return ", ".join(map(str, widths))


def _ratio(values) -> str:
    """Mean over seeds and, with several, the range: ``0.33x (0.30-0.35)``."""
    values = list(values)
    spread = f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}x{spread}"


def table(doc: dict, peer_label: str) -> str:
    """The markdown table of a JSON document :func:`main` wrote: per model its structure, its own
    figures (median CPU, harmonic mean and best of the epoch rates over seeds) and its ratios to the
    peer (``peer_label`` in the header; mean over seeds, range); the peer against itself is the noise floor."""
    lines = ["| model | tasks | table widths | parameters | of which embeddings | seeds | train CPU us/ex | "
             f"CPU us/ex / {peer_label} | train ex/s (all epochs) | train ex/s (best epoch) | "
             f"ex/s / {peer_label} (all epochs) | ex/s / {peer_label} (best epoch) | test AUC (task) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in doc["models"]:
        runs = [r["runs"]["model"] for r in doc["results"] if r["model"] == model]
        if not runs:
            continue
        ratios_ = [q for q in doc["ratios"] if q["model"] == model]
        first = runs[0]
        label = f"{model} (itself)" if model == doc["peer"] else model
        rate = statistics.harmonic_mean([x for r in runs for x in r["epoch_examples_per_s"]])
        lines.append(f"| {label} | {', '.join(first['tasks'])} | {_widths(first['table_widths'])} | "
                     f"{first['parameters']:,} | {first['embedding_parameters']:,} | {len(runs)} | "
                     f"{statistics.median(r['train_cpu_us_per_example'] for r in runs):.1f} | "
                     f"{_ratio(q['cpu_us_per_example'] for q in ratios_)} | {rate:,.0f} | "
                     f"{max(r['train_examples_per_s_best'] for r in runs):,.0f} | "
                     f"{_ratio(q['examples_per_s'] for q in ratios_)} | "
                     f"{_ratio(q['examples_per_s_best'] for q in ratios_)} | "
                     f"{statistics.mean(r['test_auc'] for r in runs):.4f} ({first['auc_task']}) |")
    return "\n".join(lines)
