"""``ctrflow compare --config grid.yaml``: a grid of methods x seeds, in the papers' style.

Each method is a set of dotted overrides of one base training config. Every
(method, seed) trains in its own run directory (a completed run is reused, so an
interrupted grid resumes), is evaluated on ``split``, and the table reports
mean ± std per metric, the best in bold, the paired t-test p-value of each method against
``baseline`` over the same seeds and its improvement ("Impv.", the signed difference of
means, positive = better, as Rec4Ad Tables 1-2 print it). ``slices`` adds one such table per
slice group after the overall one (Rec4Ad Table 2: ``{impression_ratio: [IR1, IR4]}``, the
top and bottom quarter of ads by impression ratio, from the ``ad_stats`` table's logged
ratio when given); ``results.json`` keeps every seed's numbers, overall and of every slice
group the evaluation wrote. ``ctrflow compare --check`` checks every
cell's config and builds and compiles each method's model on a batch of its data, training
nothing: a grid's typo fails in seconds, not hours in.

    base_config: configs/train_sim_dcnv2.yaml
    out_dir: runs/compare_backbones
    seeds: [1, 2, 3]
    baseline: dnn
    methods:
      dnn:    {model.backbone: dnn}
      dcnv2:  {model.backbone: dcnv2}
    slices: {impression_ratio: [IR1, IR4]}
    ad_stats: demo_out/raw/ads.parquet

``slices: {new_ads: [new]}`` tabulates the ads absent from the training split, and
``visual_truth`` (the simulator's output folder) lets ``metrics`` include ``score_cv``
(Tencent §3.2; ``configs/compare_visual_sim.yaml``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Dict, List, Optional

import tensorflow as tf

from pipeline import report
from pipeline.analyses import run_summaries
from pipeline.config import ConfigError, load_config, option
from pipeline.evaluate import check_slice_inputs, evaluate_run
from pipeline.metrics import slice_groups
from pipeline.train import TrainConfig, compile_model, new_model, resolve, train


@dataclasses.dataclass
class CompareConfig:
    base_config: str
    methods: Dict[str, Dict[str, Any]]
    baseline: str
    out_dir: str = "runs/compare"
    seeds: List[int] = option(factory=lambda: [1, 2, 3], min=0)
    base_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    split: str = "test"
    task: Optional[str] = None  # default: the first task of each run (one every method serves)
    # multi-task grids: a table per task, then one of each metric's mean over these tasks
    # (the "average AUC" of STEM / AME), after the overall table of ``task``
    tasks: List[str] = dataclasses.field(default_factory=list)
    metrics: List[str] = option(factory=lambda: ["auc", "gauc", "logloss", "ece"],
                                choices=tuple(sorted(report.HIGHER_IS_BETTER)))
    title: str = "Method comparison"
    # slice groups with a table of their own after the overall one: {slice: [groups]}, from
    # pipeline.metrics.slice_groups, e.g. {impression_ratio: [IR1, IR4]} (Rec4Ad Table 2)
    slices: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    # the ads table (Parquet / CSV: the ad column and impression_ratio) whose logged ratio orders
    # the ads of the impression_ratio slice (pipeline.evaluate.evaluate_run); default: training impressions
    ad_stats: Optional[str] = None
    # the simulator's output folder: each run's evaluation adds score_cv, the CV of predicted scores
    # among visually similar ads shown to one user (Tencent §3.2; pipeline/visual_similarity.py)
    visual_truth: Optional[str] = None

    def __post_init__(self):
        if self.baseline not in self.methods:
            raise ConfigError(f"baseline '{self.baseline}' is not one of the methods {sorted(self.methods)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of distinct seeds, got {self.seeds}")
        labels: Dict[str, str] = {}
        for method in self.methods:
            other = labels.setdefault(run_label(method), method)
            if other != method:
                raise ConfigError(f"methods '{other}' and '{method}' would share the run folders "
                                  f"'{run_label(method)}-seed<N>'; rename one")
        known = slice_groups()
        for name, groups in self.slices.items():
            if name not in known:
                raise ConfigError(f"slices.{name}: unknown slice; known: {sorted(known)}")
            unknown = [g for g in groups if g not in known[name]]
            if unknown or not groups or len(set(groups)) != len(groups):
                raise ConfigError(f"slices.{name} = {groups}: expected distinct groups from {known[name]}")
        if "score_cv" in self.metrics and not self.visual_truth:
            raise ConfigError("metrics: score_cv needs visual_truth, the simulator's output folder (its items' "
                              "visual attributes group the ads)")


def run_label(method: str) -> str:
    """A method's name as its runs' folder name: characters other than letters, digits and ``_.-``
    become ``_`` (``w/o SABN`` -> ``w_o_SABN``), so a name never nests or escapes ``out_dir``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", method)


def train_configs(cfg: CompareConfig, verbose: int = 2) -> Dict[tuple, TrainConfig]:
    """{(method, seed): its training config}: every run's config is checked before any trains."""
    runs_dir = os.path.join(cfg.out_dir, "runs")
    configs = {}
    for method, overrides in cfg.methods.items():
        for seed in cfg.seeds:
            try:
                configs[(method, seed)] = load_config(TrainConfig, cfg.base_config, {
                    **cfg.base_overrides, **overrides, "seed": seed, "runs_dir": runs_dir,
                    "run_name": f"{run_label(method)}-seed{seed}", "verbose": verbose})
            except ConfigError as exc:
                raise ConfigError(f"compare method '{method}' (seed {seed}): {exc}") from None
    return configs


def check_compare(cfg: CompareConfig) -> List[Dict[str, Any]]:
    """Every (method, seed) config checked, and each method's model built on its data's schema,
    called on a validation batch and compiled as training would (first seed; the seed changes
    no structure): [{method, parameters}]. Trains and writes nothing."""
    from pipeline.data import make_dataset

    configs = train_configs(cfg, verbose=0)
    out = []
    for method in cfg.methods:
        train_cfg = configs[(method, cfg.seeds[0])]
        try:
            schema, tasks, features = resolve(train_cfg)
            for name in [cfg.task, *cfg.tasks]:
                if name is not None and name not in train_cfg.served_tasks(tasks):
                    raise ConfigError(f"task = {name!r}: the model serves (and evaluation scores) only "
                                      f"{train_cfg.served_tasks(tasks)}")  # caught below, naming the method
            check_slice_inputs(schema, train_cfg.data_dir, list(cfg.slices), cfg.ad_stats,
                               visual_truth=cfg.visual_truth)
            tf.keras.backend.clear_session()
            model = new_model(train_cfg, schema, tasks, features)
            batch = next(iter(make_dataset(train_cfg.data_dir, train_cfg.valid_split, 8, labels=tasks,
                                           schema=schema, sample_weight=train_cfg.sample_weight)))
            model(tf.keras.utils.unpack_x_y_sample_weight(batch)[0])
            compile_model(model, train_cfg, tasks)
        except ValueError as exc:  # UserErrors (config, schema, options) among them
            raise ConfigError(f"compare method '{method}': {exc}") from None
        out.append({"method": method, "parameters": int(model.count_params())})
    return out


def run_compare(cfg: CompareConfig, verbose: int = 2) -> Dict[str, Any]:
    """Train (or reuse) and evaluate every cell; write ``results.json`` (per-seed numbers: overall
    under ``results``, ``{slice: {group: {method: [...]}}}`` under ``slices``) and ``report.md``
    (the overall table, then one per group of ``cfg.slices``)."""
    results: Dict[str, List[dict]] = {m: [] for m in cfg.methods}
    sliced: Dict[str, Dict[str, Dict[str, List[dict]]]] = {}
    per_task: Dict[str, Dict[str, List[dict]]] = {}
    analyses: Dict[str, Dict[str, List[dict]]] = {}
    configs = train_configs(cfg, verbose)
    for method in cfg.methods:
        for seed in cfg.seeds:
            train_cfg = configs[(method, seed)]
            run_dir = os.path.abspath(os.path.join(train_cfg.runs_dir, train_cfg.run_name))
            if not os.path.exists(os.path.join(run_dir, "done.json")):
                tf.keras.backend.clear_session()
                train(train_cfg, config_name=method)
            by_task = evaluate_run(run_dir, splits=[cfg.split], write=True, ad_stats=cfg.ad_stats,
                                   visual_truth=cfg.visual_truth)[cfg.split]
            for name in [cfg.task, *cfg.tasks]:  # `ctrflow compare --check` says so before training
                if name is not None and name not in by_task:
                    raise ConfigError(f"task = {name!r}: method '{method}' serves (and evaluation scores) only "
                                      f"{sorted(by_task)}")
            for name in cfg.tasks:
                per_task.setdefault(name, {}).setdefault(method, []).append(
                    {k: by_task[name]["overall"].get(k) for k in cfg.metrics})
            for name, numbers in run_summaries(run_dir).items():
                analyses.setdefault(name, {}).setdefault(method, []).append(numbers)
            task = by_task[cfg.task or next(iter(by_task))]
            results[method].append({k: task["overall"].get(k) for k in cfg.metrics})
            for name, groups in task.get("slices", {}).items():
                for group, values in groups.items():
                    sliced.setdefault(name, {}).setdefault(group, {}).setdefault(method, []).append(
                        {k: values.get(k) for k in [*slice_metrics(cfg), "count"]})
            print(f"[compare] {method} seed {seed}: " +
                  ", ".join(f"{k}={_f(v)}" for k, v in results[method][-1].items()), flush=True)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as fh:  # before the tables: the raw numbers stay
        json.dump({"config": dataclasses.asdict(cfg), "results": results, "slices": sliced, "tasks": per_task,
                   "analyses": analyses},
                  fh, indent=2)
    table = report.comparison_table(results, cfg.metrics, cfg.baseline, report.HIGHER_IS_BETTER, improvement=True)
    tables = [f"## Overall\n\n{table}"] + task_tables(cfg, per_task) \
        + [slice_table(cfg, sliced, name, group) for name, groups in cfg.slices.items() for group in groups] \
        + [analysis_table(name, by_method) for name, by_method in analyses.items()]
    path = os.path.join(cfg.out_dir, "report.md")
    with open(path, "w") as fh:
        fh.write(f"# {cfg.title}\n\nSplit `{cfg.split}`, seeds {cfg.seeds}; mean ± std over seeds, best in "
                 f"bold, p = paired t-test against `{cfg.baseline}` over the same seeds.\n\n"
                 + "\n".join(tables) + "\n")
    return {"table": table, "tables": tables, "report": path, "results": results, "slices": sliced}


def task_tables(cfg: CompareConfig, per_task: Dict[str, Dict[str, List[dict]]]) -> List[str]:
    """One table per task of ``cfg.tasks``, then the mean over those tasks of each metric, per seed."""
    if not cfg.tasks:
        return []
    tables = [f"## Task `{name}`\n\n" + report.comparison_table(
        per_task[name], cfg.metrics, cfg.baseline, report.HIGHER_IS_BETTER, improvement=True) for name in cfg.tasks]
    mean = {method: [{k: _mean([per_task[t][method][i][k] for t in cfg.tasks]) for k in cfg.metrics}
                     for i in range(len(cfg.seeds))] for method in cfg.methods}
    return tables + [f"## Mean over tasks {', '.join(cfg.tasks)}\n\n" + report.comparison_table(
        mean, cfg.metrics, cfg.baseline, report.HIGHER_IS_BETTER, improvement=True)]


def analysis_table(name: str, by_method: Dict[str, List[dict]]) -> str:
    """The headline numbers of run analysis ``name`` (``pipeline.analyses.SUMMARIES``), mean ± std
    over each method's seeds that wrote it; '–' where a method has no such number."""
    keys = list(dict.fromkeys(k for runs in by_method.values() for numbers in runs for k in numbers))
    rows = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for method, runs in by_method.items():
        cells = []
        for key in keys:
            values = [numbers[key] for numbers in runs if key in numbers]
            mean = sum(values) / len(values) if values else None
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
            cells.append("–" if mean is None else report.format_number(mean) +
                         ("" if std is None else f" ± {report.format_number(std, like=mean)}"))
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return f"## Analysis `{name}` (per run, mean ± std over seeds)\n\n" + "\n".join(rows) + "\n"


def _mean(values: List[Optional[float]]) -> Optional[float]:
    return None if any(v is None for v in values) else sum(values) / len(values)


def slice_metrics(cfg: CompareConfig) -> List[str]:
    """The metrics of the slice tables: ``cfg.metrics`` but those only a whole split has (score_cv)."""
    return [m for m in cfg.metrics if m not in report.SPLIT_ONLY_METRICS]


def slice_table(cfg: CompareConfig, sliced: Dict[str, dict], name: str, group: str) -> str:
    """The comparison table of one slice group (Rec4Ad Table 2), under its heading; a ConfigError
    naming ``slices.<name>`` when the evaluation wrote no such slice (the data lacks its column)."""
    if group not in sliced.get(name, {}):
        raise ConfigError(f"slices.{name}: the runs' evaluation has no group {group} of slice '{name}' (it "
                          f"wrote {sorted(sliced)}: activity needs the data's user column, impression_ratio "
                          f"and new_ads its ad column); per-seed numbers are in {cfg.out_dir}/results.json")
    try:
        table = report.comparison_table(sliced[name][group], slice_metrics(cfg), cfg.baseline,
                                        report.HIGHER_IS_BETTER, improvement=True)
    except ValueError as exc:
        raise ValueError(f"slices.{name} group {group}: {exc}") from None
    return f"## {group}: {report.SLICE_TITLES.get(name, name)}\n\n{table}"


def _f(v):
    return "None" if v is None else f"{v:.4f}"
