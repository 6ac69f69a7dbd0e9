"""Evaluation reports: markdown tables, method comparisons with significance, and plots.

Tables follow the papers' style (HDA Table 2, Rec4Ad Tables 1-2): the best entry of each
metric in bold; comparisons over seeds give mean ± std and the paired t-test p-value of
each method against a named baseline (scipy.stats.ttest_rel over seeds, aligned by index).
Plots use matplotlib's Agg canvas directly (no pyplot global state, no display needed).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from pipeline.metrics import EvalConfig, reliability_curve

# Columns of the report's tables, in order.
OVERALL_COLUMNS = ["auc", "gauc", "logloss", "ece", "GP-LT", "GP-Head", "GAP", "score_cv", "count", "ctr",
                   "mean_pred"]
SLICE_COLUMNS = ["auc", "gauc", "logloss", "ece", "count", "num_users", "ctr", "mean_pred"]
# Direction of every metric evaluate_predictions writes (for bolding in comparisons).
HIGHER_IS_BETTER = {"auc": True, "gauc": True, "logloss": False, "ece": False,
                    "GP-LT": False, "GP-Head": False, "GAP": False,
                    "score_cv": False}  # CV of scores among visually similar ads (pipeline/visual_similarity.py)
# over a whole split, not per slice: score_cv (pairs of similar ads per user); GP-LT / GP-Head / GAP (HDA
# Def. 3.1: the split's users by their head / tail group, which a slice of users does not split again)
SPLIT_ONLY_METRICS = ("score_cv", "GP-LT", "GP-Head", "GAP")
SLICE_TITLES = {"activity": "by user activity (training samples; G1 = least active)",
                "impression_ratio": "by ad impression ratio (IR1 = highest, Rec4Ad Eq. 2)",
                "new_ads": "by ad novelty (new = absent from the training split)"}


def _spec(value: float) -> str:
    """4 decimals like the papers; tiny non-zero values (ECE) in scientific notation."""
    return ".2e" if value != 0.0 and abs(value) < 1e-3 else ".4f"


def format_number(value, like: Optional[float] = None) -> str:
    """A table cell; floats use the style of ``like`` (default: their own); None is '–'."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "–"
    return format(value, _spec(value if like is None else float(like)))


def _best_rows(values: Mapping[str, Optional[float]], higher: bool) -> set:
    """Names of the rows holding the best (ties: all of them) non-missing value."""
    present = {k: float(v) for k, v in values.items() if v is not None and not math.isnan(float(v))}
    if not present:
        return set()
    best = max(present.values()) if higher else min(present.values())
    return {k for k, v in present.items() if v == best}


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def metrics_table(rows: Dict[str, Dict[str, float]], metrics: List[str],
                  higher_is_better: Dict[str, bool]) -> str:
    """Markdown table, one row per entry of ``rows``; per metric the best value is bold.

    Metrics absent from ``higher_is_better`` are shown without bolding (counts, rates).
    A missing or None value shows as '–'.
    """
    best = {m: _best_rows({r: vals.get(m) for r, vals in rows.items()}, higher_is_better[m])
            for m in metrics if m in higher_is_better}
    body = []
    for name, vals in rows.items():
        cells = [str(name)]
        for m in metrics:
            text = format_number(vals.get(m))
            cells.append(f"**{text}**" if name in best.get(m, ()) else text)
        body.append(cells)
    return _markdown([""] + list(metrics), body)


def _seed_values(results: Dict[str, List[dict]], method: str, metric: str) -> np.ndarray:
    values = []
    for seed, run in enumerate(results[method]):
        if run.get(metric) is None:
            raise ValueError(f"comparison_table: method '{method}', seed index {seed} has no value "
                             f"for metric '{metric}'")
        values.append(float(run[metric]))
    return np.asarray(values)


def _paired_p(values: np.ndarray, other: np.ndarray, alternative: str = "two-sided") -> Optional[float]:
    """Paired t-test p-value of ``values`` against ``other`` (``alternative``: scipy's, "greater" =
    ``values`` higher), None when undefined (one seed, zero variance of the differences)."""
    if len(values) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_rel(values, other, alternative=alternative).pvalue
    return None if np.isnan(p) else float(p)


def _improvement(mean: float, baseline_mean: float, higher: bool) -> str:
    """Rec4Ad's "Impv." cell: the signed difference of means, positive = better than the baseline."""
    diff = (mean - baseline_mean) * (1.0 if higher else -1.0)
    return format(diff, "+" + _spec(diff))


# comparison_table's significance tests: HDA Table 2's (every row against the baseline) and
# GPRec Tables II-III's (the best row of each column against the runner-up)
SIGNIFICANCE = ("baseline_two_sided", "runner_up_one_sided")


def _runner_up_tests(values: Dict[tuple, np.ndarray], methods: List[str], metrics: List[str],
                     higher_is_better: Dict[str, bool]) -> Dict[tuple, str]:
    """{(best row, metric): its p cell} of GPRec's rule: per metric the row with the best mean gets a
    one-sided paired t-test against the runner-up (the second-best mean; ties: the earlier row),
    alternative "greater" where higher is better (AUC) else "less" (logloss), \\* when p < 0.05."""
    cells = {}
    for k in metrics:
        if k not in higher_is_better or len(methods) < 2:
            continue
        higher = higher_is_better[k]
        best, runner_up = sorted(methods, key=lambda m: -values[m, k].mean() if higher else values[m, k].mean())[:2]
        p = _paired_p(values[best, k], values[runner_up, k], "greater" if higher else "less")
        star = "\\*" if p is not None and p < 0.05 else ""
        cells[best, k] = f" (p={'n/a' if p is None else f'{p:.3g}'}{star} vs {runner_up})"
    return cells


def _significance_note(significance: str, baseline: str, metrics: List[str],
                       higher_is_better: Dict[str, bool]) -> str:
    """The footnote's sentence on the p-values: which rows are tested against what, how, and the stars."""
    if significance == "baseline_two_sided":
        return (f"p: two-sided paired t-test over seeds against '{baseline}' (scipy.stats.ttest_rel); "
                f"\\*/\\*\\* p ≤ 0.05/0.01.")
    higher = [k for k in metrics if higher_is_better.get(k) is True]
    lower = [k for k in metrics if higher_is_better.get(k) is False]
    sides = "; ".join(f"'{alt}' for {', '.join(ks)}" for alt, ks in (("greater", higher), ("less", lower)) if ks)
    return ("p, on the best mean of each column only: one-sided paired t-test over seeds of the best row against "
            "the runner-up, the row with the second-best mean (ties: the earlier row), named after 'vs' "
            f"(scipy.stats.ttest_rel(best, runner_up, alternative=...), alternative {sides}); "
            "\\* p < 0.05 (GPRec Tables II-III).")


def comparison_table(results: Dict[str, List[dict]], metrics: List[str], baseline: str,
                     higher_is_better: Dict[str, bool], improvement: bool = False,
                     significance: str = "baseline_two_sided") -> str:
    """Markdown table of methods x metrics: mean ± std over seeds, best mean bold, and a paired
    t-test over the seeds (aligned by position). ``significance``: "baseline_two_sided", every
    method's two-sided p against ``baseline`` (\\*/\\*\\* mark p <= 0.05/0.01 as in HDA Table 2);
    "runner_up_one_sided", only the best mean of each metric gets a p, one-sided against the
    runner-up (:func:`_runner_up_tests`; GPRec Tables II-III). ``improvement``: after each metric
    with a direction, an "Impv." column against ``baseline`` as in Rec4Ad Tables 1-2
    (:func:`_improvement`; '–' for the baseline). The footnote states the rule."""
    if baseline not in results:
        raise ValueError(f"comparison_table: baseline '{baseline}' is not among the methods {sorted(results)}")
    if significance not in SIGNIFICANCE:
        raise ValueError(f"comparison_table: significance {significance!r} is not one of {SIGNIFICANCE}")
    num_seeds = len(results[baseline])
    for method, runs in results.items():
        if len(runs) != num_seeds or not runs:
            raise ValueError(f"comparison_table: method '{method}' has {len(runs)} seed run(s), baseline "
                             f"'{baseline}' has {num_seeds}; seeds must be aligned and non-empty")
    values = {(m, k): _seed_values(results, m, k) for m in results for k in metrics}
    best = {k: _best_rows({m: values[m, k].mean() for m in results}, higher_is_better[k])
            for k in metrics if k in higher_is_better}
    impv = [k for k in metrics if improvement and k in higher_is_better]
    runner_up = _runner_up_tests(values, list(results), metrics, higher_is_better) \
        if significance == "runner_up_one_sided" else {}
    body = []
    for method in results:
        cells = [f"{method} (baseline)" if method == baseline else method]
        for k in metrics:
            v = values[method, k]
            text = format_number(v.mean()) + (f" ± {format_number(v.std(ddof=1), like=v.mean())}" if len(v) > 1 else "")
            if method in best.get(k, ()):
                text = f"**{text}**"
            if significance == "runner_up_one_sided":
                text += runner_up.get((method, k), "")
            elif method != baseline:
                p = _paired_p(v, values[baseline, k])
                stars = "" if p is None else "\\*\\*" if p <= 0.01 else "\\*" if p <= 0.05 else ""
                text += f" (p={'n/a' if p is None else f'{p:.3g}'}{stars})"
            cells.append(text)
            if k in impv:
                cells.append("–" if method == baseline else
                             _improvement(v.mean(), values[baseline, k].mean(), higher_is_better[k]))
        body.append(cells)
    test = _significance_note(significance, baseline, metrics, higher_is_better)
    note = (f"\nMean ± std over {num_seeds} seed(s). {test} Bold: best mean."
            + (" Impv.: the method's mean minus the baseline's, signed so that positive is better." if impv else "")
            + "\n")
    header = [c for k in metrics for c in ([k, "Impv."] if k in impv else [k])]
    return _markdown(["method"] + header, body) + note


def flatten_metrics(metrics_by_task: Dict[str, dict], sep: str = "/") -> Dict[str, float]:
    """{"click": {"overall": {"auc": .8}}} -> {"click/auc": .8}: one run's row for comparison_table."""
    return {f"{task}{sep}{name}": value for task, m in metrics_by_task.items()
            for name, value in m["overall"].items()}


# ----------------------------------------------------------------------------- plots

def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_lines(path, series: Dict[str, List[float]], title, xlabel, ylabel) -> None:
    """One line per series against 1..len (e.g. per-epoch curves), saved as an image."""
    if not series:
        raise ValueError(f"plot_lines: no series to plot for '{path}'")
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, ys in series.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, marker="o", label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_reliability(path, y_true, y_prob, num_bins: int, title: str, strategy: str = "quantile") -> None:
    """Reliability diagram: observed click rate vs. mean pCTR per bin (with a binomial
    standard error), zoomed to the predictions' range, and a histogram of the predictions below."""
    mean_pred, frac_pos, counts, edges = reliability_curve(y_true, y_prob, num_bins, strategy)
    filled = counts > 0
    stderr = np.sqrt(frac_pos * (1 - frac_pos) / np.maximum(counts, 1))
    top = min(1.0, 1.1 * float(np.nanmax(np.concatenate([mean_pred[filled] + stderr[filled], [edges[-1]]]))))
    fig = Figure(figsize=(5, 6))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, top], [0, top], ls="--", color="grey", label="perfectly calibrated")
    ax.errorbar(mean_pred[filled], frac_pos[filled], yerr=stderr[filled], marker="o", capsize=3,
                label=f"model ({strategy} bins)")
    ax.set(title=title, ylabel="observed click rate", xlim=(0, top), ylim=(0, top))
    ax.legend(loc="upper left")
    ax_n.hist(np.clip(np.asarray(y_prob, np.float64), 0.0, top), bins=50, range=(0.0, top), edgecolor="black")
    ax_n.set(xlabel="predicted click probability", ylabel="rows")
    ax_n.set_yscale("log")
    _save(fig, path)


def plot_group_logloss(path, groups: Dict[str, dict], overall_logloss: Optional[float], title: str) -> None:
    """Bar per slice group (e.g. G1..G5) of its logloss, row counts on the bars."""
    names = list(groups)
    heights = [groups[g]["logloss"] if groups[g]["logloss"] is not None else 0.0 for g in names]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    bars = ax.bar(names, heights)
    for bar, g in zip(bars, names):
        ax.annotate(f"n={groups[g]['count']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    if overall_logloss is not None:
        ax.axhline(overall_logloss, ls="--", color="grey", label=f"overall {overall_logloss:.4f}")
        ax.legend(loc="lower right")
    ax.set(title=title, ylabel="logloss")
    _save(fig, path)


# ----------------------------------------------------------------------------- report

def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(float(obj)) else float(obj)
    return obj


def _check_task_name(task: str) -> None:
    if not task or any(c in task for c in "/\\") or task.startswith("."):
        raise ValueError(f"write_eval_report: task name {task!r} cannot be used in a file name")


def _pair(task: str, preds) -> tuple:
    """(y_true, y_prob) from a pair or a mapping with keys y_true / y_prob."""
    if isinstance(preds, Mapping):
        missing = [k for k in ("y_true", "y_prob") if k not in preds]
        if missing:
            raise ValueError(f"write_eval_report: predictions_by_task['{task}'] lacks {missing}")
        return preds["y_true"], preds["y_prob"]
    if isinstance(preds, (tuple, list)) and len(preds) == 2:
        return preds[0], preds[1]
    raise ValueError(f"write_eval_report: predictions_by_task['{task}'] must be (y_true, y_prob) "
                     f"or {{'y_true': ..., 'y_prob': ...}}, got {type(preds).__name__}")


def _head_text(cfg: dict) -> str:
    """Who the head users are, as the metrics recorded it (or why GP-* are left out)."""
    if not cfg.get("user_groups"):
        return "left out: the data has no user-group column, written by preprocess when `user_column` is set"
    fraction = cfg.get("head_fraction")
    share = "its fraction not recorded" if fraction is None else f"top {100 * fraction:g} % users"
    return f"head / long-tail = the data's user-group column ({share} by training samples)"


def write_eval_report(out_dir, metrics_by_task: dict, predictions_by_task: dict, title: str) -> None:
    """Write metrics.json, report.md, reliability_<task>.png and quintile_logloss_<task>.png.

    ``metrics_by_task``: task -> evaluate_predictions() output. ``predictions_by_task``:
    task -> (y_true, y_prob) or {"y_true": ..., "y_prob": ...}, for the reliability diagram
    (binned by the ``reliability_bins`` / ``reliability_strategy`` of the config recorded in
    the metrics). The quintile plot is drawn when the metrics have an activity slice (data
    with users).
    """
    missing = sorted(set(metrics_by_task) - set(predictions_by_task))
    if missing:
        raise ValueError(f"write_eval_report: predictions_by_task lacks task(s) {missing}")
    for task in metrics_by_task:
        _check_task_name(task)
    pairs = {task: _pair(task, predictions_by_task[task]) for task in metrics_by_task}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(_jsonable(metrics_by_task), fh, indent=2)

    overall = {task: m["overall"] for task, m in metrics_by_task.items()}
    cfg = {**dataclasses.asdict(EvalConfig()), **next(iter(metrics_by_task.values()), {}).get("config", {})}
    md = [f"# {title}\n", "## Overall\n",
          "AUC exact; gAUC = impression-weighted mean of per-user AUC over users with both classes "
          f"(DIN); ECE = Rec4Ad Eq. 16 ({cfg['ece_bins']} buckets); GP-LT / GP-Head = mean "
          f"over the users of a group of each user's mean logloss (HDA Def. 3.1; {_head_text(cfg)}); "
          "GAP = |GP-LT − GP-Head|.\n",
          metrics_table(overall, [c for c in OVERALL_COLUMNS if any(c in o for o in overall.values())], {})]
    for task, m in metrics_by_task.items():
        y_true, y_prob = pairs[task]
        md.append(f"## Task `{task}`\n")
        for name, groups in m["slices"].items():
            md.append(f"### {task} {SLICE_TITLES.get(name, name)}\n")
            md.append(metrics_table(groups, SLICE_COLUMNS, {}))
        reliability_png = f"reliability_{task}.png"
        plot_reliability(os.path.join(out_dir, reliability_png), y_true, y_prob, cfg["reliability_bins"],
                         f"{task}: reliability (ECE={format_number(m['overall'].get('ece'))})", cfg["reliability_strategy"])
        md.append(f"![reliability diagram of {task}]({reliability_png})\n")
        if "activity" in m["slices"]:
            quintile_png = f"quintile_logloss_{task}.png"
            plot_group_logloss(os.path.join(out_dir, quintile_png), m["slices"]["activity"],
                               m["overall"].get("logloss"), f"{task}: logloss by user-activity group")
            md.append(f"![logloss per user-activity group of {task}]({quintile_png})\n")
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write("\n".join(md))
