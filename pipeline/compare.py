"""``ctrflow compare --config grid.yaml``: a grid of methods x seeds, in the papers' style.

Each method is a set of dotted overrides of one base training config. Every
(method, seed) trains in its own run directory (a finished run of the same training config is
reused, so an interrupted grid resumes, and grids sharing ``runs_dir`` train a common cell once,
also when they run at the same time (:func:`train_or_reuse`); a run whose method changed since
is refused), is evaluated on ``split``, and the table reports
mean ± std per metric, the best in bold, the paired t-test p-value of each method against
``baseline`` over the same seeds and its improvement ("Impv.", the signed difference of
means, positive = better, as Rec4Ad Tables 1-2 print it). ``slices`` adds one such table per
slice group after the overall one (Rec4Ad Table 2: ``{impression_ratio: [IR1, IR4]}``, the
top and bottom quarter of ads by impression ratio, from the ``ad_stats`` table's logged
ratio when given); ``results.json`` keeps every seed's numbers, overall and of every slice
group the evaluation wrote. ``ctrflow compare --check`` checks every
cell's config and builds and compiles each method's model on a batch of its data, training
nothing: a grid's typo fails in seconds, not hours in. ``ctrflow compare --jobs N`` trains the
cells left to train in N processes at once (:func:`train_in_parallel`), each cell's output in
``out_dir/logs/``, then evaluates every cell as one process does.

    base_config: configs/train_sim_dcnv2.yaml
    out_dir: runs/compare_backbones
    seeds: [1, 2, 3]
    baseline: dnn
    methods:
      dnn:    {model.backbone: dnn}
      dcnv2:  {model.backbone: dcnv2}
    slices: {impression_ratio: [IR1, IR4]}
    ad_stats: demo_out/raw/ads.parquet

``slices: {new_ads: [new]}`` tabulates the ads absent from the training split, and HDA Table 6
(logloss per user-activity quintile, G1 = least active) is ``metrics: [auc, logloss, GP-LT, GAP]``
with ``slices: {activity: [G1, G2, G3, G4, G5]}`` (a table per group; the slice tables leave out
GP-LT / GP-Head / GAP, which only a whole split has), and
``visual_truth`` (the simulator's output folder) lets ``metrics`` include ``score_cv``
(Tencent §3.2; ``configs/compare_visual_sim.yaml``).

GPRec's Tables II-III report, of a method's variants, "only the results of the best-performing
model construction", marking with * the best of each column when a one-sided t-test over the
seeds against the runner-up gives p < 0.05:

    select: {"GPRec (MLP)": [GPRec input, GPRec dp, GPRec ensemble]}
    significance: runner_up_one_sided    # default baseline_two_sided: every method against baseline

``select`` shows each group as one row, its member with the best mean validation score over the
seeds: each run's ``early_stopping.monitor`` (default ``val_auc``, the exact AUC on the valid split)
at the epoch whose weights the run kept, read from its logged history (:func:`validation_score`);
the row reads ``GPRec (MLP) [dp]``, the "All variants" table keeps every member's own row, and
``results.json`` records the choice with every member's validation and test numbers.
``significance: runner_up_one_sided`` gives each metric's best row a one-sided paired t-test
(higher or lower by the metric) against the row with the second-best mean, Impv. staying against
``baseline`` (the rule: each table's footnote, ``pipeline.report.comparison_table``).
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional

import tensorflow as tf

from pipeline import report, runs
from pipeline.analyses import run_summaries
from pipeline.config import ConfigError, load_config, option
from pipeline.evaluate import check_slice_inputs, evaluate_run
from pipeline.metrics import slice_groups
from pipeline.train import MEAN, TrainConfig, compile_model, new_model, resolve, train
from serving.run_artifacts import DONE, run_info

LOCK_POLL_SECONDS = 30  # how often a compare waiting for another process's training of a cell looks again
_LOADING: List[str] = []  # the compare configs whose methods_from is being read (a cycle is refused)


@dataclasses.dataclass
class CompareConfig:
    base_config: str
    methods: Dict[str, Dict[str, Any]]
    baseline: str
    out_dir: str = "runs/compare"
    # where the cells train, default <out_dir>/runs. Grids on one data set may share one: a cell whose
    # training config (RUN_NEUTRAL keys aside) a finished run there has is reused, not trained again
    runs_dir: Optional[str] = None
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
    # groups of methods of which the tables show one row, {row: [methods]}: the member with the best mean
    # validation score over the seeds (each run's early_stopping.monitor, :func:`validation_score`), as
    # GPRec Tables II-III report "only the results of the best-performing model construction"; its row
    # reads "<row> [<member>]" and every member's own row is in the "All variants" table
    select: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    # the tables' t-test (pipeline.report.comparison_table): every method two-sided against baseline
    # (HDA Table 2), or the best row of each metric one-sided against the runner-up (GPRec Tables II-III)
    significance: str = option("baseline_two_sided", choices=report.SIGNIFICANCE)
    # another compare config whose methods this grid has too, after its own (one list for grids over the
    # same candidates, e.g. a sweep and the grid choosing among it on validation); both grids must have
    # the same base (base_config and base_overrides): its methods are overrides of it. Merged on loading:
    # the loaded config has every method under ``methods`` and no methods_from
    methods_from: Optional[str] = None

    def __post_init__(self):
        if self.methods_from:
            self.methods, self.methods_from = self._with_methods_from(), None
        if self.baseline not in self.methods:
            raise ConfigError(f"baseline '{self.baseline}' is not one of the methods {sorted(self.methods)}")
        self._check_select()
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

    def _with_methods_from(self) -> Dict[str, Dict[str, Any]]:
        path = os.path.abspath(self.methods_from)
        if path in _LOADING:
            raise ConfigError(f"methods_from: '{self.methods_from}' reads itself back (a cycle through {_LOADING})")
        _LOADING.append(path)
        try:
            other = load_config(CompareConfig, self.methods_from)
        finally:
            _LOADING.pop()
        computing = [{k: v for k, v in c.base_overrides.items() if k not in runs.RUN_NEUTRAL} for c in (self, other)]
        if other.base_config != self.base_config or computing[0] != computing[1]:
            raise ConfigError(f"methods_from: '{self.methods_from}' has base_config {other.base_config} and "
                              f"base_overrides {computing[1]}, this grid {self.base_config} and {computing[0]}: "
                              f"its methods are overrides of its own base")
        both = sorted(set(self.methods) & set(other.methods))
        if both:
            raise ConfigError(f"methods {both} are in this grid and in methods_from '{self.methods_from}'; "
                              f"name each once")
        return {**self.methods, **other.methods}

    def _check_select(self):
        """``select``: each group a new row name over distinct methods, no method in two groups, the
        baseline in none (it keeps its row: Impv. and the default test are against it)."""
        owner: Dict[str, str] = {}
        for row, members in self.select.items():
            if row in self.methods:
                raise ConfigError(f"select.{row}: the row name is a method's; name the group otherwise")
            unknown = [m for m in members if m not in self.methods]
            if unknown or not members or len(set(members)) != len(members):
                raise ConfigError(f"select.{row} = {members}: expected distinct methods from {sorted(self.methods)}"
                                  + (f"; {unknown} are not methods" if unknown else ""))
            if self.baseline in members:
                raise ConfigError(f"select.{row}: holds the baseline '{self.baseline}', which keeps its own row")
            for member in members:
                other = owner.setdefault(member, row)
                if other != row:
                    raise ConfigError(f"select.{row}: method '{member}' is already in select.{other}")


def run_label(method: str) -> str:
    """A method's name as its runs' folder name: characters other than letters, digits and ``_.-``
    become ``_`` (``w/o SABN`` -> ``w_o_SABN``), so a name never nests or escapes ``out_dir``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", method)


def train_configs(cfg: CompareConfig, verbose: int = 2) -> Dict[tuple, TrainConfig]:
    """{(method, seed): its training config}: every run's config is checked before any trains."""
    runs_dir = cfg.runs_dir or os.path.join(cfg.out_dir, "runs")
    configs = {}
    for method, overrides in cfg.methods.items():
        for seed in cfg.seeds:
            try:
                configs[(method, seed)] = load_config(TrainConfig, cfg.base_config, {
                    **cfg.base_overrides, **overrides, "seed": seed, "runs_dir": runs_dir,
                    "run_name": f"{run_label(method)}-seed{seed}", "verbose": verbose})
            except ConfigError as exc:
                raise ConfigError(f"compare method '{method}' (seed {seed}): {exc}") from None
    for row, members in cfg.select.items():  # ranked on one score: the same monitor on the same split
        ways = {m: _validation(configs[(m, cfg.seeds[0])]) for m in members}
        if len(set(ways.values())) > 1:
            raise ConfigError(f"select.{row}: its members validate differently, (early_stopping.monitor, mode, "
                              f"data_dir, valid_split) = {ways}; a group's members must share them")
    return configs


def planned_runs(cfg: CompareConfig, configs: Dict[tuple, TrainConfig]) -> Dict[tuple, Optional[str]]:
    """{(method, seed): the finished run the cell reuses, None when it trains}. Its own folder when
    finished, refused when that run's config differs (the method changed since, and the old run's
    numbers would be reported as the new method's); else any finished run in the runs folder with
    the same config (another grid's sharing ``runs_dir``, a renamed method, a duplicate cell)."""
    root = os.path.abspath(next(iter(configs.values())).runs_dir)  # every cell's (train_configs)
    recorded = {}  # {finished run folder: its recorded config}, each config.yaml read once
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if os.path.exists(os.path.join(root, name, DONE)):
            recorded[os.path.join(root, name)] = runs.recorded_config(os.path.join(root, name))
    finished: Dict[str, str] = {}
    for run_dir, config in recorded.items():
        finished.setdefault(_identity(config), run_dir)
    plan = {}
    for (method, seed), train_cfg in configs.items():
        own = os.path.abspath(os.path.join(train_cfg.runs_dir, train_cfg.run_name))
        config = dataclasses.asdict(train_cfg)
        if own in recorded:
            changed = runs.config_differences(recorded[own], config)
            if changed:
                raise ConfigError(f"compare method '{method}' (seed {seed}): its finished run '{own}' was trained "
                                  f"with another config (differs in {', '.join(changed[:5])}); remove that folder "
                                  f"or set another out_dir / runs_dir")
            plan[(method, seed)] = own
        else:
            plan[(method, seed)] = finished.get(_identity(config))
    return plan


def _identity(config: Optional[dict]) -> str:
    """What a run computes, as a comparable key: its config without the keys that only say where it
    is written and how much it prints (``runs.defining_config``)."""
    return json.dumps(runs.defining_config(config), sort_keys=True)


def train_or_reuse(cfg: CompareConfig, method: str, train_cfg: TrainConfig) -> str:
    """Train a cell the plan left to train, re-checking first: another compare sharing ``runs_dir``
    may have finished the same config since the plan (then it is reused), or be training this
    cell's folder now (then this waits, every ``LOCK_POLL_SECONDS``, and reuses its run)."""
    key, waiting = (method, train_cfg.seed), False
    while True:
        found = planned_runs(cfg, {key: train_cfg})[key]
        if found is not None:
            return found
        try:
            tf.keras.backend.clear_session()
            train(train_cfg, config_name=method)
            return os.path.abspath(os.path.join(train_cfg.runs_dir, train_cfg.run_name))
        except runs.RunComplete:  # finished between the check and the claim: reused next round
            continue
        except runs.RunBusy as busy:
            if not waiting:
                print(f"[compare] {method} seed {train_cfg.seed}: waiting: {busy}", flush=True)
            waiting = True
            time.sleep(LOCK_POLL_SECONDS)


def train_in_parallel(cfg: CompareConfig, configs: Dict[tuple, TrainConfig], plan: Dict[tuple, Optional[str]],
                      jobs: int) -> Dict[tuple, Optional[str]]:
    """The plan with every cell it left to train trained, ``jobs`` cells at a time, each in a fresh
    process (TensorFlow state and memory start clean; the CPU's threads shared between them) writing
    its output to ``out_dir/logs/<method>-seed<k>.log``. A config two methods share trains once (the
    other reuses its run), and a cell another compare is training is waited for
    (:func:`train_or_reuse`). A failed cell stops the grid naming the cell and its log; finished
    cells are kept."""
    todo = {}  # one cell per training config: a method repeating another's under its name reuses its run
    for key, found in plan.items():
        if found is None:
            todo.setdefault(_identity(dataclasses.asdict(configs[key])), key)
    todo = list(todo.values())
    if not todo:
        return plan
    logs = os.path.join(cfg.out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cpus // jobs)
    log = {key: os.path.join(logs, f"{configs[key].run_name}.log") for key in todo}
    tasks = [(cfg, key[0], configs[key], log[key], threads) for key in todo]
    print(f"[compare] training {len(todo)} cells, {jobs} at a time ({threads} CPU threads each; "
          f"their output in {logs})", flush=True)
    plan = dict(plan)
    started = time.time()
    with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        for done, (key, run_dir, error) in enumerate(pool.imap_unordered(_train_cell, tasks), 1):
            if error is not None:
                pool.terminate()
                raise RuntimeError(f"compare method '{key[0]}' (seed {key[1]}) failed: {error} "
                                   f"(its output: {log[key]})")
            plan[key] = run_dir
            print(f"[compare] {key[0]} seed {key[1]}: trained ({done} of {len(todo)}, "
                  f"{time.time() - started:.0f} s in)", flush=True)
    return plan


def _train_cell(task) -> tuple:
    """One cell in a worker process of :func:`train_in_parallel`: ((method, seed), its run folder,
    None) or ((method, seed), None, the error's text); its output goes to its log file."""
    cfg, method, train_cfg, log, threads = task
    with open(log, "a") as fh:  # the descriptors themselves, so TensorFlow's C++ logging goes there too
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            os.dup2(fh.fileno(), stream.fileno())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    for gpu in tf.config.list_physical_devices("GPU"):  # processes sharing a GPU take memory as they need it
        tf.config.experimental.set_memory_growth(gpu, True)
    key = (method, train_cfg.seed)
    try:
        return key, train_or_reuse(cfg, method, train_cfg), None
    except Exception as exc:  # noqa: BLE001 -- reported by the parent, which names the cell
        import traceback
        traceback.print_exc()
        return key, None, f"{type(exc).__name__}: {exc}"


def _validation(cfg: TrainConfig) -> tuple:
    """What a run's validation score means: its monitor, the monitor's direction, data and split."""
    es = cfg.early_stopping
    return es.monitor, es.mode, cfg.data_dir, cfg.valid_split


def only_methods(cfg: CompareConfig, patterns: List[str]) -> CompareConfig:
    """The grid restricted to the methods whose name holds one of ``patterns`` (and its baseline),
    ``select`` groups cut to the members kept: a part of a big grid trained or reported first
    (``ctrflow compare --only "(MLP)"``); its cells are the whole grid's, so a later run of the
    whole grid reuses them. A pattern that is a method's whole name keeps that method alone
    (``--only DCN`` keeps DCN, not GDCN nor DCN+GPRec)."""
    exact = [p for p in patterns if p in cfg.methods]
    partial = [p for p in patterns if p not in cfg.methods]
    kept = {m: o for m, o in cfg.methods.items()
            if m == cfg.baseline or m in exact or any(p in m for p in partial)}
    if len(kept) == 1 and not any(p in cfg.baseline for p in patterns):
        raise ConfigError(f"--only {patterns}: no method's name holds any of them; methods: {sorted(cfg.methods)}")
    select = {row: [m for m in members if m in kept] for row, members in cfg.select.items()}
    return dataclasses.replace(cfg, methods=kept, select={row: ms for row, ms in select.items() if ms})


def check_compare(cfg: CompareConfig) -> List[Dict[str, Any]]:
    """Every (method, seed) config checked, and each method's model built on its data's schema,
    called on a validation batch and compiled as training would (first seed; the seed changes
    no structure), and which cells a finished run already answers (:func:`planned_runs`):
    [{method, parameters, reused}]. Trains and writes nothing."""
    from pipeline.data import make_dataset

    configs = train_configs(cfg, verbose=0)
    plan = planned_runs(cfg, configs)
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
        out.append({"method": method, "parameters": int(model.count_params()),
                    "reused": sum(plan[(method, seed)] is not None for seed in cfg.seeds)})
    return out


def run_compare(cfg: CompareConfig, verbose: int = 2, jobs: int = 1) -> Dict[str, Any]:
    """Train (or reuse) and evaluate every cell, training ``jobs`` cells at a time
    (:func:`train_in_parallel`); write ``results.json`` (per-seed numbers: overall under ``results``,
    ``{slice: {group: {method: [...]}}}`` under ``slices``, each ``select`` group's choice and its
    members' validation and test numbers under ``select``) and ``report.md`` (the
    overall table, "All variants" with ``select``, then one per task and per group of ``cfg.slices``)."""
    results: Dict[str, List[dict]] = {m: [] for m in cfg.methods}
    sliced: Dict[str, Dict[str, Dict[str, List[dict]]]] = {}
    per_task: Dict[str, Dict[str, List[dict]]] = {}
    analyses: Dict[str, Dict[str, List[dict]]] = {}
    validation: Dict[str, List[float]] = {m: [] for members in cfg.select.values() for m in members}
    machines: Dict[str, List[Optional[List[str]]]] = {m: [] for m in cfg.methods}
    if jobs < 1:
        raise ConfigError(f"jobs = {jobs}: train at least one cell at a time")
    configs = train_configs(cfg, verbose)
    plan = planned_runs(cfg, configs)
    if jobs > 1:
        plan = train_in_parallel(cfg, configs, plan, jobs)
    for method in cfg.methods:
        for seed in cfg.seeds:
            train_cfg = configs[(method, seed)]
            run_dir = plan[(method, seed)] or train_or_reuse(cfg, method, train_cfg)
            if os.path.basename(run_dir) != train_cfg.run_name:
                print(f"[compare] {method} seed {seed}: reusing {run_dir} (the same training config)", flush=True)
            by_task = evaluate_run(run_dir, splits=[cfg.split], write=True, ad_stats=cfg.ad_stats,
                                   visual_truth=cfg.visual_truth)[cfg.split]
            for name in [cfg.task, *cfg.tasks]:  # `ctrflow compare --check` says so before training
                if name is not None and name not in by_task:
                    raise ConfigError(f"task = {name!r}: method '{method}' serves (and evaluation scores) only "
                                      f"{sorted(by_task)}")
            for name in cfg.tasks:
                per_task.setdefault(name, {}).setdefault(method, []).append(
                    {k: by_task[name]["overall"].get(k) for k in cfg.metrics})
            if method in validation:
                validation[method].append(validation_score(run_dir, train_cfg))
            machines[method].append(run_info(run_dir).get("machines"))
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
    selection = select_rows(cfg, configs, validation, results)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as fh:  # before the tables: the raw numbers stay
        json.dump({"config": dataclasses.asdict(cfg), "results": results, "slices": sliced, "tasks": per_task,
                   "analyses": analyses, "select": selection, "machines": machines},
                  fh, indent=2)
    table = comparison(cfg, table_rows(cfg, selection, results), cfg.metrics)
    variants = [f"## All variants\n\nEvery method's own row, the members of `select` groups among them.\n\n"
                + comparison(cfg, results, cfg.metrics)] if cfg.select else []
    tables = [f"## Overall\n\n{table}"] + variants + task_tables(cfg, per_task, selection) \
        + [slice_table(cfg, sliced, name, group, selection) for name, groups in cfg.slices.items()
           for group in groups] \
        + [analysis_table(name, table_rows(cfg, selection, by_method)) for name, by_method in analyses.items()]
    path = os.path.join(cfg.out_dir, "report.md")
    with open(path, "w") as fh:
        fh.write(f"# {cfg.title}\n\n{report_intro(cfg, selection)}{machines_note(machines, cfg.seeds)}\n"
                 + "\n".join(tables) + "\n")
    return {"table": table, "tables": tables, "report": path, "results": results, "slices": sliced,
            "select": selection}


def validation_score(run_dir: str, train_cfg: TrainConfig) -> float:
    """The run's ``early_stopping.monitor`` on its valid split for the model it saved: the best epoch's
    value under ``restore_best_weights`` (the weights it kept), else the last epoch's, read from the
    history in ``done.json``. That history holds ExactValidation's exact AUC / logloss of the model
    after each epoch, the numbers evaluating the saved model on the valid split gives, so nothing is
    evaluated again; ``parameter_server`` runs validate with Keras' approximate AUC, so theirs is the
    saved model's exact metric on the valid split (the first task's, the named task's, or the mean)."""
    es = train_cfg.early_stopping
    if train_cfg.strategy.name == "parameter_server":
        split = train_cfg.valid_split
        by_task = evaluate_run(run_dir, splits=[split], write=False)[split]
        task, _, metric = es.monitor[len("val_"):].rpartition("_")  # val_auc, val_<task>_auc, val_mean_auc
        tasks = list(by_task) if task == MEAN else [task or next(iter(by_task))]
        return float(sum(by_task[t]["overall"][metric] for t in tasks) / len(tasks))
    with open(os.path.join(run_dir, DONE)) as fh:
        history = json.load(fh)["history"]
    values = history.get(es.monitor)
    if not values:
        raise ConfigError(f"early_stopping.monitor = {es.monitor!r}: run '{run_dir}' logged no such metric "
                          f"(its history has {sorted(history)}), so compare's select cannot rank it")
    if not es.restore_best_weights:
        return float(values[-1])
    return float(max(values) if es.mode == "max" else min(values))


def select_rows(cfg: CompareConfig, configs: Dict[tuple, TrainConfig], validation: Dict[str, List[float]],
                results: Dict[str, List[dict]]) -> Dict[str, dict]:
    """Per ``select`` group the member with the best mean validation score over the seeds (ties: the
    earlier member) and what the choice rests on: {group: {row, chosen, monitor, mode, valid_split,
    split, members: {method: {validation (per seed), validation_mean, results (per seed, on split)}}}}."""
    selection = {}
    for group, members in cfg.select.items():
        first = configs[(members[0], cfg.seeds[0])]  # the members share these (train_configs checks)
        means = {m: sum(validation[m]) / len(validation[m]) for m in members}
        sign = 1.0 if first.early_stopping.mode == "max" else -1.0
        chosen = max(members, key=lambda m: sign * means[m])  # the first of equal maxima
        selection[group] = {
            "row": f"{group} [{member_label(members, chosen)}]", "chosen": chosen,
            "monitor": first.early_stopping.monitor, "mode": first.early_stopping.mode,
            "valid_split": first.valid_split, "split": cfg.split,
            "members": {m: {"validation": validation[m], "validation_mean": means[m], "results": results[m]}
                        for m in members}}
    return selection


def member_label(members: List[str], member: str) -> str:
    """``member`` as its group's row shows it: without the leading words every member shares, never
    all of its words ("GPRec dp" of ["GPRec input", "GPRec dp", "GPRec ensemble"] -> "dp")."""
    words = [m.split() for m in members]
    shared = 0
    while all(len(w) > shared + 1 and w[shared] == words[0][shared] for w in words):
        shared += 1
    return " ".join(member.split()[shared:])


def table_rows(cfg: CompareConfig, selection: Dict[str, dict], by_method: Dict[str, Any]) -> Dict[str, Any]:
    """``by_method`` ({method: numbers}) as the tables' rows: each ``select`` group's chosen member
    under the group's row, in the place of the group's first member; the other members left out
    (the "All variants" table and results.json keep them)."""
    group = {m: g for g, members in cfg.select.items() for m in members}
    rows: Dict[str, Any] = {}
    for method in cfg.methods:
        name, source = (selection[group[method]]["row"], selection[group[method]]["chosen"]) \
            if method in group else (method, method)
        if source in by_method:
            rows.setdefault(name, by_method[source])
    return rows


def comparison(cfg: CompareConfig, rows: Dict[str, List[dict]], metrics: List[str]) -> str:
    """A grid table of ``rows`` ({row: per-seed numbers}): mean ± std, ``cfg.significance``'s t-test,
    Impv. against the baseline (:func:`pipeline.report.comparison_table`)."""
    return report.comparison_table(rows, metrics, cfg.baseline, report.HIGHER_IS_BETTER, improvement=True,
                                   significance=cfg.significance)


def report_intro(cfg: CompareConfig, selection: Dict[str, dict]) -> str:
    """report.md's opening: split, seeds, the test, and each ``select`` group's choice with its numbers."""
    test = (f"p = paired t-test against `{cfg.baseline}` over the same seeds"
            if cfg.significance == "baseline_two_sided" else
            "p = one-sided paired t-test of each column's best row against its runner-up (each table's note)")
    lines = [f"Split `{cfg.split}`, seeds {cfg.seeds}; mean ± std over seeds, best in bold, {test}.\n"]
    for group, rec in selection.items():
        scores = ", ".join(f"`{m}` {report.format_number(v['validation_mean'])}" for m, v in rec["members"].items())
        lines.append(f"- `{rec['row']}`: of the group's members, the best mean `{rec['monitor']}` ({rec['mode']}) on "
                     f"split `{rec['valid_split']}` over the seeds: {scores}.")
    return "\n".join(lines) + ("\n" if selection else "")


def machines_note(machines: Dict[str, List[Optional[List[str]]]], seeds: List[int]) -> str:
    """A warning for report.md when the grid's cells were trained on more than one machine
    (run.json's ``machines``, :func:`pipeline.runs.machine`): training is deterministic on one
    machine, not across machines, so a difference between two rows of the order of the
    machines' spread is not the methods'. Empty when every cell ran on the same one."""
    cells: Dict[str, List[str]] = {}
    for method, per_seed in machines.items():
        for seed, keys in zip(seeds, per_seed):
            name = " + ".join(keys) if keys else "not recorded (trained before ctrflow recorded it)"
            cells.setdefault(name, []).append(f"{method} seed {seed}")
    if len(cells) < 2:
        return ""
    lines = [f"- {name}: {len(runs)} cell{'s' * (len(runs) > 1)} "
             f"({', '.join(runs[:6])}{', ...' if len(runs) > 6 else ''})"
             for name, runs in sorted(cells.items(), key=lambda item: -len(item[1]))]
    return ("\n**The cells were trained on " + str(len(cells)) + " different machines** (a resumed run on every "
            "machine it ran on). Training is deterministic on one machine but not across CPUs or library "
            "versions: compare rows trained on different machines with that in mind "
            "(`machines` in results.json says which run ran where).\n\n" + "\n".join(lines) + "\n")


def task_tables(cfg: CompareConfig, per_task: Dict[str, Dict[str, List[dict]]],
                selection: Dict[str, dict]) -> List[str]:
    """One table per task of ``cfg.tasks``, then the mean over those tasks of each metric, per seed."""
    if not cfg.tasks:
        return []
    tables = [f"## Task `{name}`\n\n" + comparison(cfg, table_rows(cfg, selection, per_task[name]), cfg.metrics)
              for name in cfg.tasks]
    mean = {method: [{k: _mean([per_task[t][method][i][k] for t in cfg.tasks]) for k in cfg.metrics}
                     for i in range(len(cfg.seeds))] for method in cfg.methods}
    return tables + [f"## Mean over tasks {', '.join(cfg.tasks)}\n\n"
                     + comparison(cfg, table_rows(cfg, selection, mean), cfg.metrics)]


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
    """The metrics of the slice tables: ``cfg.metrics`` but those only a whole split has (score_cv,
    GP-LT, GP-Head, GAP)."""
    return [m for m in cfg.metrics if m not in report.SPLIT_ONLY_METRICS]


def slice_table(cfg: CompareConfig, sliced: Dict[str, dict], name: str, group: str,
                selection: Dict[str, dict]) -> str:
    """The comparison table of one slice group (Rec4Ad Table 2), under its heading; a ConfigError
    naming ``slices.<name>`` when the evaluation wrote no such slice (the data lacks its column)."""
    if group not in sliced.get(name, {}):
        raise ConfigError(f"slices.{name}: the runs' evaluation has no group {group} of slice '{name}' (it "
                          f"wrote {sorted(sliced)}: activity needs the data's user column, impression_ratio "
                          f"and new_ads its ad column); per-seed numbers are in {cfg.out_dir}/results.json")
    try:
        table = comparison(cfg, table_rows(cfg, selection, sliced[name][group]), slice_metrics(cfg))
    except ValueError as exc:
        raise ValueError(f"slices.{name} group {group}: {exc}") from None
    return f"## {group}: {report.SLICE_TITLES.get(name, name)}\n\n{table}"


def _f(v):
    return "None" if v is None else f"{v:.4f}"
