"""Training throughput of the Tencent KDD'24 models against DCNv2, measured in one run.

    python bench/tencent_throughput.py [--rows 60000] [--epochs 3] [--seeds 1 2 3] \
        [--models gwpfm me ...] [--out docs/benchmarks/tencent_throughput.json]

Data: the simulator (``configs/simulate_default.yaml`` at ``--rows`` ad impressions, without the
rec and random-policy logs) preprocessed with ``configs/preprocess_sim_visual.yaml`` (so
``visual_id``, ``hist_gap`` and the pretrained vectors exist) into ``--work`` (reused when
present), time split. Models (``MODELS``): each one's ready config with a few overrides, built
and compiled as ``ctrflow train`` does (``pipeline/train.py``) but without its callbacks, so the
training step alone is timed; sizes are the configs' own (the JSON lists them). Every model reads
DCNv2's features, the random-ID baseline of ``configs/compare_visual_sim.yaml``, but the visual
one (``configs/train_sim_visual.yaml``'s: ``visual_id`` instead of ``ad_id``, task click only).

Pairs: per (model, seed) one process trains DCNv2 and the model, one after the other, DCNv2 first
for the 1st, 3rd, ... seed and second for the others (so neither side always runs first); seeds
outermost. A slow spell of the shared machine then hits both sides of a pair alike, and the
model / DCNv2 ratios, paired by seed, are what is robust. ``dcnv2`` against itself (the first
pair of every seed) is the noise floor of those ratios. Throughput is over the epochs after the
first (tracing excluded, ``bench/epoch_stats.py``): all of them (rows / time) and the best one;
CPU time per example is the cost load changes least. AUC: the first served task's test AUC at the
epoch of best validation AUC, a check that each model learns in these few epochs (accuracy is
the subject of the ``ctrflow compare`` grids of docs/results/tencent.md).

A full run (15 pairs x 3 seeds) took 45 min on the development machine's 2 loaded vCPUs, over 40 % of
it ME-MMoE, STEM and the two projection models; ``--models`` / ``--seeds`` measure a subset.
Prints one JSON document and a markdown table.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from features import _tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)
from epoch_stats import epoch_summary, timed_epochs  # noqa: E402  (bench/ is the script directory)
from report_json import emit, machine, run_worker  # noqa: E402


def _config(name: str) -> str:
    return os.path.join(REPO, "configs", name)


SIMULATE, PREPROCESS = _config("simulate_default.yaml"), _config("preprocess_sim_visual.yaml")
PEER = "dcnv2"
# name -> (ready config, overrides)
MODELS = {
    PEER: ("train_sim_dcnv2.yaml", {}),
    "gwpfm": ("train_sim_dcnv2.yaml", {"model.backbone": "gwpfm", "model.backbone_options": {}}),
    "gwpfm + projection": ("train_sim_dcnv2.yaml", {"model.backbone": "gwpfm",
                                                    "model.backbone_options": {"projection": True}}),
    "fwfm + projection": ("train_sim_dcnv2.yaml", {"model.backbone": "fwfm",
                                                   "model.backbone_options": {"projection": True}}),
    "me": ("me_moments_sim.yaml", {}),
    **{preset: ("experts_sim.yaml", {"model.framework": preset})
       for preset in ("shared_bottom", "mmoe", "ple", "me_mmoe", "stem", "ame")},
    "stem_al": ("stem_al_sim.yaml", {}),
    "dcnv2 + tim": ("train_sim_tim.yaml", {"analysis": []}),
    "dcnv2 + similarity": ("train_sim_similarity.yaml", {}),
    "dcnv2, visual_id for ad_id": ("train_sim_visual.yaml", {"tasks": ["click"]}),
}
OWN_FEATURES = ("dcnv2, visual_id for ad_id",)  # models keeping their config's feature list


def prepare_data(work: str, rows: int) -> str:
    """Simulate and preprocess into ``work/data`` (no extra split); an existing one is reused."""
    from pipeline.beam.driver import run_preprocess
    from pipeline.config import load_config, read_yaml
    from pipeline.preprocess_config import PreprocessConfig
    from pipeline.simulator import SimulatorConfig, simulate

    data, raw = os.path.join(work, "data"), os.path.join(work, "raw")
    if os.path.exists(os.path.join(data, "schema.json")):
        return data
    if not os.path.exists(os.path.join(raw, "summary.json")):
        simulate(load_config(SimulatorConfig, SIMULATE, {"out_dir": raw, "num_impressions": rows,
                                                         "rec_impressions": 0, "random_impressions": 0}),
                 progress=False)
    images = os.path.join(raw, "item_images.npy")
    cfg = load_config(PreprocessConfig, PREPROCESS, {
        "input.path": os.path.join(raw, "ads", "*.parquet"), "output": data, "split.extra_splits": {},
        "transforms": [dict(t, images=images) for t in read_yaml(PREPROCESS)["transforms"]]})
    run_preprocess(cfg, progress=False)
    return data


def model_config(data: str, model: str, seed: int):
    """``model``'s training config for ``seed`` on ``data``: its ready config with the overrides."""
    from pipeline.config import load_config, read_yaml
    from pipeline.train import TrainConfig

    path, overrides = MODELS[model]
    peer_features = read_yaml(_config("compare_visual_sim.yaml"))["methods"]["random ad ids"]["features"]
    features = {} if model in OWN_FEATURES else {"features": peer_features}
    return load_config(TrainConfig, _config(path), {**overrides, **features, "data_dir": data, "seed": seed,
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


def measure(data: str, model_name: str, seed: int, epochs: int) -> dict:
    """Train ``model_name`` for ``epochs`` epochs: each epoch's wall and CPU time, its rows, the
    first served task's AUCs, the model's structure."""
    import tensorflow as tf

    from models.layers import global_policy
    from pipeline import metrics as M
    from pipeline.data import make_dataset
    from pipeline.predict import predict_labels
    from pipeline.train import compile_model, new_model, resolve

    cfg = model_config(data, model_name, seed)
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
                             sample_weight=cfg.sample_weight)
        evals = {s: make_dataset(cfg.data_dir, s, cfg.eval_batch_size, schema=schema, shuffle=False,
                                 cache=cfg.cache, labels=tasks) for s in (cfg.valid_split, cfg.eval_splits[0])}
        rows = sum(int(b[1][tasks[0]].shape[0]) for b in train)  # also fills the cache before timing

        def split_aucs():
            return {split: M.auc(*(out[task] for out in predict_labels(model, ds, [task])))
                    for split, ds in evals.items()}

        epoch_s, epoch_cpu, auc = timed_epochs(lambda: model.fit(train, epochs=1, verbose=0), split_aucs, epochs)
    return {**epoch_summary(epoch_s, epoch_cpu, rows, *auc.values()), "epoch_s": epoch_s, "auc_task": task,
            **structure(cfg, model)}


def pair_order(seed_index: int) -> list:
    """The pair's two runs in order: DCNv2 (the peer) first for the 1st, 3rd, ... seed, second otherwise."""
    return ["peer", "model"] if seed_index % 2 == 0 else ["model", "peer"]


def _worker(args) -> None:
    order = pair_order(args.seed_index)
    runs = {role: measure(args.data, PEER if role == "peer" else args.model, args.seed, args.epochs)
            for role in order}
    print("RESULT " + json.dumps({"model": args.model, "seed": args.seed, "order": order, "runs": runs}), flush=True)


def ratios(results) -> list:
    """Per pair: the model's figure over DCNv2's of the same process and seed (examples/s over all
    timed epochs and of the best one, CPU time per example)."""
    def ratio(r, key):
        return r["runs"]["model"][key] / r["runs"]["peer"][key]

    return [{"model": r["model"], "seed": r["seed"], "examples_per_s": ratio(r, "train_examples_per_s"),
             "examples_per_s_best": ratio(r, "train_examples_per_s_best"),
             "cpu_us_per_example": ratio(r, "train_cpu_us_per_example")} for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=60_000, help="simulated ad impressions (num_impressions)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first, with tracing, is not timed)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                    help="each is paired with DCNv2 (dcnv2 itself: the noise floor)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ctrflow_bench_tencent"))
    ap.add_argument("--out", help="also write the JSON document here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seed-index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error(f"--epochs {args.epochs}: expected at least 2 (the first epoch, with tracing, is not timed)")
    if args.worker:
        return _worker(args)

    data = prepare_data(args.work, args.rows)
    results = []
    for index, seed in enumerate(args.seeds):  # seeds outermost
        for model in args.models:
            results.append(run_worker([sys.executable, __file__, "--worker", "--model", model, "--seed", str(seed),
                                       "--seed-index", str(index), "--epochs", str(args.epochs), "--data", data], cwd=REPO))
            print(json.dumps(results[-1]), flush=True)
    doc = {"benchmark": "tencent_throughput", "num_impressions": args.rows, "epochs": args.epochs,
           "seeds": args.seeds, "peer": PEER, "models": {m: {"config": f"configs/{MODELS[m][0]}",
                                                              "overrides": MODELS[m][1]} for m in args.models},
           "machine": machine(), "results": results, "ratios": ratios(results)}
    emit(doc, args.out)
    print("\n" + table(doc))


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


def table(doc: dict) -> str:
    """The markdown table of a JSON document this script wrote (docs/benchmarks.md): per model its
    structure, its own figures (median CPU, harmonic mean and best of the epoch rates over seeds)
    and its ratios to DCNv2 (mean over seeds, range); ``dcnv2`` against itself is the noise floor."""
    lines = ["| model | tasks | table widths | parameters | of which embeddings | seeds | train CPU us/ex | "
             "CPU us/ex / DCNv2 | train ex/s (all epochs) | train ex/s (best epoch) | ex/s / DCNv2 (all epochs) | "
             "ex/s / DCNv2 (best epoch) | test AUC (task) |",
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


if __name__ == "__main__":
    main()
