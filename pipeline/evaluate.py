"""``ctrflow evaluate RUN_DIR``: metrics per task and slice, ``metrics.json`` and ``report.md``.

Metrics: exact AUC, gAUC, LogLoss, ECE (Rec4Ad Eq. 16, K = 100),
GP-LT / GP-Head / GAP (HDA Def. 3.1; head / long-tail users are read from the data's
user-group column, which preprocess wrote with the schema's ``head_user_fraction``: never
recomputed here; data without that column gets no GP-* and a note in the report), overall
and per user-activity quintile and ad impression-ratio group (Rec4Ad
Eq. 2: from the serving log's ratio when ``ad_stats`` names an ad table that has it, such
as the simulator's ``ads.parquet``; else ads are ordered by training impressions; either way
over the ads of the training split's ad samples, never rec samples' pseudo-ads) and new ads
(absent from every training row) against seen ones. With ``visual_truth`` (the simulator's
output folder), each task also gets the coefficient of variation of its scores among visually
similar ads shown to the same user (Tencent §3.2; ``pipeline/visual_similarity.py``).
Predictions run with ``training=False`` (dropout and batch norm in inference mode).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from features import outputs
from features.encoders import NumpyEncoder
from features.errors import UserError
from features.schema import OOV_ID, Schema
from pipeline import metrics as M
from pipeline import visual_similarity as VS
from pipeline import report, runs
from pipeline.config import ConfigError
from pipeline.data import SOURCES, make_dataset, read_columns
from pipeline.predict import predict_labels
from pipeline.user_groups import group_of
from serving import run_artifacts


def evaluate_run(run_dir: str, splits: Optional[List[str]] = None, item_column: Optional[str] = None,
                 batch_size: int = 16384, write: bool = True, ad_stats: Optional[str] = None,
                 visual_truth: Optional[str] = None,
                 similar_distance: float = VS.DEFAULT_MAX_DISTANCE) -> Dict[str, dict]:
    """Evaluate a completed run on ``splits`` (default: the config's eval_splits).

    ad_stats: an ad table (Parquet or CSV) with the item column and ``impression_ratio``
    (see :func:`logged_impression_ratio`) for the impression-ratio slices.
    visual_truth: the simulator's output folder; adds each task's ``similar_ads`` (the score CV
    among ads whose items' visual attributes lie within ``similar_distance``) and
    ``overall.score_cv``.
    """
    cfg = runs.load_config(run_dir)
    model, _, tasks = run_artifacts.load_model(run_dir)
    schema = Schema.load(cfg.data_dir)
    splits = list(splits or cfg.eval_splits)
    user_col = schema.user_column
    group_col, head_fraction = group_of(schema)
    item_col = _item_column(schema, item_column)
    extra = [c for c in (user_col, item_col) if c]
    if ad_stats and not item_col:
        raise ValueError(f"ad_stats '{ad_stats}' given, but the data has no ad column: name it with item_column")
    ratio = logged_impression_ratio(ad_stats, schema, cfg.data_dir, item_col) if ad_stats else None
    train_cols = read_columns(cfg.data_dir, cfg.train_split, extra, schema=schema) if extra else {}
    train_ads = _ad_rows(train_cols.get(item_col), schema, cfg.data_dir, cfg.train_split) if item_col else None
    unknown_ad = OOV_ID if item_col in schema.feature_names else None  # encoded ad ids: OOV = not in the vocabulary
    similar = _similar_ad_groups(visual_truth, schema, cfg.data_dir, item_col, similar_distance) \
        if visual_truth else None
    results: Dict[str, dict] = {}
    for split in splits:
        ds = make_dataset(cfg.data_dir, split, batch_size, schema=schema, shuffle=False, deterministic=True,
                          labels=tasks)
        y, p, cols = predict_labels(model, ds, tasks, extra_columns=extra + ([group_col] if group_col else []))
        by_task = {}
        for task in tasks:
            by_task[task] = M.evaluate_predictions(
                y[task], p[task],
                user_ids=cols.get(user_col) if user_col else None,
                train_user_ids=train_cols.get(user_col) if user_col else None,
                item_ids=cols.get(item_col) if item_col else None,
                train_item_ids=train_ads,
                logged_impression_ratio=ratio,
                user_groups=cols.get(group_col) if group_col else None, head_fraction=head_fraction,
                seen_item_ids=train_cols.get(item_col) if item_col else None, unknown_item_id=unknown_ad)
            if similar is not None:
                by_task[task]["similar_ads"] = _similar_ads_cv(p[task], cols[user_col], cols[item_col], similar,
                                                               similar_distance)
                by_task[task]["overall"]["score_cv"] = by_task[task]["similar_ads"]["score_cv"]
        results[split] = by_task
        if write:
            report.write_eval_report(os.path.join(run_dir, f"eval_{split}"), by_task,
                                     {t: (y[t], p[t]) for t in tasks},
                                     title=f"{os.path.basename(run_dir)} on split '{split}'")
    if write:
        _write_summary(run_dir, results)
    return results


def _ad_rows(items: np.ndarray, schema: Schema, data_dir: str, split: str) -> np.ndarray:
    """The ad ids of the split's ad samples: rec samples (source 0, pseudo-ads) are left out, so
    the impression-ratio groups rank the ads the ads system showed (Rec4Ad §4.2.2), the same
    whatever the data adds and whichever sources a run trained on (``train.sources``)."""
    if schema.source_column is None:
        return items
    source = read_columns(data_dir, split, [schema.source_column], schema=schema)[schema.source_column]
    return items[source == SOURCES["ad"]]


def _similar_ad_groups(visual_truth: str, schema: Schema, data_dir: str, item_col: Optional[str],
                       distance: float) -> Dict[object, int]:
    """{ad as the data holds it: its similar-ad group} from the simulator's ground truth, the groups
    cut over every ad of the catalogue: raw ad ids are then encoded with the schema's vocabulary
    when the ad column is a feature (ads it maps to OOV, which it cannot tell apart, are left out)."""
    if not distance > 0:
        raise ConfigError(f"similar_distance = {distance!r}: expected a distance > 0 between visual attributes")
    if not item_col or not schema.user_column or item_col in schema.extra.get("hashed_meta", []):
        raise ConfigError(f"visual_truth '{visual_truth}': the data in '{data_dir}' needs an ad column (ad_id: a "
                          "feature, or a meta column holding the raw ids) and a user column for the score CV among "
                          "similar ads")
    ads, attributes = VS.simulator_truth(visual_truth, ad_column=item_col)
    groups = VS.ad_groups(attributes, distance)
    if item_col in schema.feature_names:
        ads = NumpyEncoder(schema.feature(item_col), data_dir).encode(ads)[:, 0]
        ads, groups = ads[ads != OOV_ID], groups[ads != OOV_ID]
    return dict(zip(ads.tolist(), groups.tolist()))


def _similar_ads_cv(scores: np.ndarray, users: np.ndarray, ads: np.ndarray, groups: Dict[object, int],
                    distance: float) -> Dict[str, object]:
    """:func:`pipeline.visual_similarity.score_cv` of a task's scores on a split, rows whose ad has no
    ground truth (left out) counted."""
    ads = np.asarray(ads).reshape(-1)
    row_groups = pd.Series(ads).map(groups).fillna(-1).to_numpy(np.int64)
    return {**VS.score_cv(scores, np.asarray(users).reshape(-1), ads, row_groups), "max_distance": distance,
            "rows_without_truth": int((row_groups < 0).sum())}


def _item_column(schema: Schema, item_column: Optional[str] = None) -> Optional[str]:
    """The ad column the impression-ratio slice groups by: ``item_column``, else ``ad_id`` when the
    data has it (a feature or meta column), else None (no such slice)."""
    return item_column or ("ad_id" if "ad_id" in schema.meta or "ad_id" in schema.feature_names else None)


def check_slice_inputs(schema: Schema, data_dir: str, slices: List[str], ad_stats: Optional[str] = None,
                       item_column: Optional[str] = None, visual_truth: Optional[str] = None) -> None:
    """The data has what :func:`evaluate_run` needs to write ``slices`` (activity: a user column;
    impression_ratio, new_ads: an ad column), ``ad_stats`` is an ads table it can read for that
    data and ``visual_truth`` a simulator output it can group the data's ads by: a UserError
    naming the key or the file, before any run trains (``ctrflow compare --check``)."""
    item_col = _item_column(schema, item_column)
    if visual_truth:
        _similar_ad_groups(visual_truth, schema, data_dir, item_col, VS.DEFAULT_MAX_DISTANCE)
    if "activity" in slices and not schema.user_column:
        raise ConfigError(f"slices.activity: the schema in '{data_dir}' has no user column (user_column), "
                          f"so evaluation writes no activity slice")
    ad_slices = [s for s in ("impression_ratio", "new_ads") if s in slices]
    if (ad_slices or ad_stats) and not item_col:
        key = f"slices.{ad_slices[0]}" if ad_slices else f"ad_stats = '{ad_stats}'"
        raise ConfigError(f"{key}: the data in '{data_dir}' has no ad column (ad_id), so evaluation writes no "
                          f"impression-ratio or new-ads slice")
    if ad_stats:
        logged_impression_ratio(ad_stats, schema, data_dir, item_col)


def logged_impression_ratio(path: str, schema: Schema, data_dir: str, item_col: str) -> Dict[object, float]:
    """{ad as in the data: IR} from an ad table's ``impression_ratio`` column (Rec4Ad Eq. 2 as
    the serving system logged it). Raw ad ids are encoded with the schema's vocabulary when
    the ad column is an encoded feature; ads the vocabulary maps to OOV are left out."""
    import pandas as pd

    if not os.path.exists(path):
        raise FileNotFoundError(f"ad stats table '{path}' does not exist")
    text_ids = item_col in schema.feature_names and schema.feature(item_col).dtype == "string"
    # string ids are read as text: type inference would turn "0111" into the id of "111"
    table = pd.read_parquet(path) if path.endswith(".parquet") else \
        pd.read_csv(path, dtype={item_col: str} if text_ids else None)
    missing = [c for c in (item_col, "impression_ratio") if c not in table.columns]
    if missing:
        raise ValueError(f"ad stats table '{path}' lacks column(s) {missing} (it has {list(table.columns)})")
    ads = table[item_col].to_numpy()
    ratio = table["impression_ratio"].to_numpy(np.float64)
    if item_col in schema.feature_names:
        ads = NumpyEncoder(schema.feature(item_col), data_dir).encode(ads)[:, 0]
        ads, ratio = ads[ads != OOV_ID], ratio[ads != OOV_ID]
    return dict(zip(ads.tolist(), ratio.tolist()))


def _write_summary(run_dir: str, results: Dict[str, dict]) -> None:
    """Add ``results`` to ``metrics.json`` ({split: {task: metrics}}: earlier splits are kept, a
    re-evaluated split replaces only itself) and regenerate ``report.md`` from all splits,
    each file written atomically."""
    merged = {**_earlier_metrics(run_dir), **json.loads(json.dumps(results, default=_np_default))}
    outputs.write_file_atomic(os.path.join(run_dir, "metrics.json"), json.dumps(merged, indent=2))
    links = "\n".join(f"- [{s}](eval_{s}/report.md): slices, reliability diagram, per-quintile logloss"
                       for s in merged)
    outputs.write_file_atomic(os.path.join(run_dir, "report.md"),
                              f"# {os.path.basename(run_dir)}\n\n{summary_table(merged)}\n\nPer split:\n{links}\n"
                              f"{_analyses_section(run_dir)}")


def _analyses_section(run_dir: str) -> str:
    """The run's analyses (``<run>/analysis/``, written while training: TF4CTR's difficulty and
    gradient norms, Rec4Ad's discriminator AUC and representations): each figure shown, each JSON
    linked; empty when the run has none."""
    folder = os.path.join(run_dir, "analysis")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    figures = [f"![{n[:-4]}](analysis/{n})" for n in names if n.endswith(".png")]
    data = [f"[{n}](analysis/{n})" for n in names if n.endswith(".json")]
    if not figures and not data:
        return ""
    return "\nAnalyses (written while training):\n\n" + "\n\n".join(figures) + "\n\nData: " + ", ".join(data) + "\n"


def _earlier_metrics(run_dir: str) -> Dict[str, dict]:
    """The splits an earlier ``evaluate`` wrote to ``metrics.json`` ({} when there is none);
    a file that is not such a JSON object is an error naming it (rather than dropping it)."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as fh:
            earlier = json.load(fh)
    except ValueError as exc:
        raise UserError(f"'{path}' is not valid JSON ({exc}); move it away to evaluate again") from None
    if not isinstance(earlier, dict):
        raise UserError(f"'{path}' is not a JSON object of splits; move it away to evaluate again")
    return earlier


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
