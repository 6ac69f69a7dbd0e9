"""``ctrflow evaluate RUN_DIR``: metrics per task and slice, ``metrics.json`` and ``report.md``.

Metrics (DESIGN.md §3.4): exact AUC, gAUC, LogLoss, ECE (Rec4Ad Eq. 16, K = 100),
GP-LT / GP-Head / GAP (HDA Def. 3.1, head = top 20 % users of the training
split), overall and per user-activity quintile and ad impression-ratio group.
Predictions run with ``training=False`` (dropout and batch norm in inference mode).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np

from features.schema import Schema
from pipeline import metrics as M
from pipeline import report, runs
from pipeline.data import make_dataset, read_columns
from pipeline.predict import predict_labels


def evaluate_run(run_dir: str, splits: Optional[List[str]] = None, item_column: Optional[str] = None,
                 batch_size: int = 16384, write: bool = True) -> Dict[str, dict]:
    """Evaluate a completed run on ``splits`` (default: the config's eval_splits)."""
    cfg = runs.load_config(run_dir)
    model, _, tasks = runs.load_model(run_dir)
    schema = Schema.load(cfg.data_dir)
    splits = list(splits or cfg.eval_splits)
    user_col = schema.user_column
    item_col = item_column or ("ad_id" if "ad_id" in schema.meta or "ad_id" in schema.feature_names else None)
    extra = [c for c in (user_col, item_col) if c]
    train_cols = read_columns(cfg.data_dir, cfg.train_split, extra) if extra else {}
    results: Dict[str, dict] = {}
    for split in splits:
        ds = make_dataset(cfg.data_dir, split, batch_size, shuffle=False, deterministic=True, labels=tasks)
        y, p, cols = predict_labels(model, ds, tasks, extra_columns=extra)
        by_task = {}
        for task in tasks:
            by_task[task] = M.evaluate_predictions(
                y[task], p[task],
                user_ids=cols.get(user_col) if user_col else None,
                train_user_ids=train_cols.get(user_col) if user_col else None,
                item_ids=cols.get(item_col) if item_col else None,
                train_item_ids=train_cols.get(item_col) if item_col else None)
        results[split] = by_task
        if write:
            report.write_eval_report(os.path.join(run_dir, f"eval_{split}"), by_task,
                                     {t: (y[t], p[t]) for t in tasks},
                                     title=f"{os.path.basename(run_dir)} on split '{split}'")
    if write:
        _write_summary(run_dir, results)
    return results


def _write_summary(run_dir: str, results: Dict[str, dict]) -> None:
    """``metrics.json`` ({split: {task: metrics}}) and a ``report.md`` linking each split's report."""
    with open(os.path.join(run_dir, "metrics.json"), "w") as fh:
        json.dump(results, fh, indent=2, default=_np_default)
    links = "\n".join(f"- [{s}](eval_{s}/report.md): slices, reliability diagram, per-quintile logloss"
                       for s in results)
    with open(os.path.join(run_dir, "report.md"), "w") as fh:
        fh.write(f"# {os.path.basename(run_dir)}\n\n{summary_table(results)}\n\nPer split:\n{links}\n")


def summary_table(results: Dict[str, dict],
                  metrics=("auc", "gauc", "logloss", "ece", "GP-LT", "GP-Head", "GAP", "count")) -> str:
    """A markdown table: one row per (split, task), overall metrics as columns."""
    rows = {f"{split}/{task}": m["overall"] for split, by_task in results.items() for task, m in by_task.items()}
    return report.metrics_table(rows, list(metrics), {})


def _np_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))
