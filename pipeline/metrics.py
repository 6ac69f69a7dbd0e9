"""Evaluation metrics for CTR models, as pure numpy functions (no TensorFlow).

* ``auc``: exact rank-based ROC-AUC with averaged ties (not Keras' 200-threshold
  approximation), optionally sample-weighted; O(n log n).
* ``gauc``: the DIN definition — the impression-weighted mean of per-user AUC over the
  users that have both a click and a non-click. Libraries differ here; ctrflow uses this one.
* ``logloss``: mean binary cross-entropy.
* ``ece``: Rec4Ad Eq. 16 — K equal-width pCTR buckets on [0, 1] (K = 100), the absolute
  sum of (y - p) inside each bucket, summed over buckets, divided by |D|.
* ``group_logloss``: HDA Def. 3.1 — GP(U) = mean over the users of U of each user's mean
  logloss; GP-LT for long-tail users, GP-Head for head users, GAP = |GP-LT - GP-Head|
  (HDA §3.2 "decrease the performance gap |GP(U_L) - GP(U_H)|").
  Head users are not computed here: they come from the data's user-group column, written
  by preprocess with :func:`pipeline.user_groups.head_users`.
* Slices: user-activity groups G1..G5 by training-sample counts (ranked like the head users
  by :func:`pipeline.user_groups.rank_by_activity`, so G5 = the head users at fraction 0.2),
  and Rec4Ad impression-ratio groups of ads (Eq. 2, sorted descending and split into
  equal-sized groups, §2.2.1 / §4.2.2); new ads (absent from the training split) and seen
  ones (Tencent §3.2: visual semantic IDs help most on new ads).

User ids are compared as strings (:func:`user_keys`): integer ids as their decimal
string, so "0111" and "111" are two users while 111 and "111" are one; float ids are
refused (they lose digits beyond 2^53 and print as "111.0").
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd

from pipeline.user_groups import rank_by_activity

RELIABILITY_STRATEGIES = ("quantile", "uniform")
NEW_AD_GROUPS = ("new", "seen")  # ads absent from / present in the training split


@dataclasses.dataclass
class EvalConfig:
    """Evaluation knobs, with the papers' defaults (nest it in a job config as ``eval``)."""

    ece_bins: int = 100          # Rec4Ad §4.1: K = 100 buckets
    activity_groups: int = 5     # user-activity quintiles G1..G5
    ir_groups: int = 4           # Rec4Ad §4.2.2: quartiles, IR1 = G_top, IR4 = G_bottom
    reliability_bins: int = 10   # bins of the report's reliability diagram
    reliability_strategy: str = "quantile"  # its bins: quantile (equal counts; low-CTR data) | uniform

    def __post_init__(self):
        for name in ("ece_bins", "activity_groups", "ir_groups", "reliability_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EvalConfig.{name} must be a positive integer, got {value!r}")
        if self.reliability_strategy not in RELIABILITY_STRATEGIES:
            raise ValueError(f"EvalConfig.reliability_strategy must be one of {RELIABILITY_STRATEGIES}, "
                             f"got {self.reliability_strategy!r}")


def slice_groups(cfg: Optional[EvalConfig] = None) -> Dict[str, list]:
    """{slice: its group labels in order} that :func:`evaluate_predictions` writes (a slice only
    when the data allows it): user activity G1..Gk (G1 = least active), ad impression ratio
    IR1..IRk (IR1 = highest; with k = 4, IR1 = Rec4Ad's G_top and IR4 its G_bottom)."""
    cfg = cfg or EvalConfig()
    return {"activity": [f"G{k + 1}" for k in range(cfg.activity_groups)],
            "impression_ratio": [f"IR{k + 1}" for k in range(cfg.ir_groups)],
            "new_ads": list(NEW_AD_GROUPS)}


# ----------------------------------------------------------------------------- validation

def _as_1d(name: str, values, dtype=None) -> np.ndarray:
    arr = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (or n x 1), got shape {arr.shape}")
    return arr


def user_keys(name: str, *id_arrays) -> list:
    """The user id arrays as comparable keys: int64 when every array holds integers, else
    each array as Python strings (integers as their decimal string), so that ids are equal
    exactly when their strings are. Floats, booleans and missing ids fail naming ``name``."""
    arrays = [_as_1d(name, a) for a in id_arrays]
    if all(a.dtype.kind in "iu" for a in arrays):
        return [a.astype(np.int64) for a in arrays]
    return [_text_keys(name, a) for a in arrays]


def _text_keys(name: str, ids: np.ndarray) -> np.ndarray:
    if ids.dtype.kind in "iuU":
        return ids.astype(str).astype(object)
    if ids.dtype.kind != "O":
        raise ValueError(f"{name}: user ids must be integers or strings, got {ids.dtype} values "
                         "(float ids lose digits beyond 2^53; convert them to int64 or str)")
    memo: Dict[Any, str] = {}
    out = np.empty(len(ids), dtype=object)
    for i, v in enumerate(ids):
        key = memo.get((type(v), v)) if isinstance(v, (str, int, np.integer)) else None
        if key is None:
            key = _text_key(name, v, i)
            memo[(type(v), v)] = key
        out[i] = key
    return out


def _text_key(name: str, v, row: int) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, bytes):
        return v.decode("utf-8")
    raise ValueError(f"{name}: user ids must be integers or strings; row {row} is {v!r}")


def _check_same_length(fn: str, **arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{fn}: inputs differ in length: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{fn}: inputs are empty")
    return n


def _labels(fn: str, y_true, binary: bool) -> np.ndarray:
    y = _as_1d(f"{fn}: y_true", y_true, np.float64)
    if binary:
        bad = (y != 0.0) & (y != 1.0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{fn}: y_true must hold 0/1 labels; row {i} is {y[i]!r}")
    elif not np.all((y >= 0.0) & (y <= 1.0)):
        i = int(np.flatnonzero(~((y >= 0.0) & (y <= 1.0)))[0])
        raise ValueError(f"{fn}: y_true must lie in [0, 1]; row {i} is {y[i]!r}")
    return y


def _probs(fn: str, y_prob) -> np.ndarray:
    p = _as_1d(f"{fn}: y_prob", y_prob, np.float64)
    ok = (p >= 0.0) & (p <= 1.0)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"{fn}: y_prob must be probabilities in [0, 1]; row {i} is {p[i]!r}")
    return p


def _scores(fn: str, y_score) -> np.ndarray:
    s = _as_1d(f"{fn}: y_score", y_score, np.float64)
    if not np.isfinite(s).all():
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"{fn}: y_score must be finite; row {i} is {s[i]!r}")
    return s


# ----------------------------------------------------------------------------- core metrics

def _auc_sorted(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from per-distinct-score positive/negative weights, scores ascending.

    Each positive beats the negatives of lower scores and half-beats the tied ones,
    which equals the trapezoidal area under the ROC curve.
    """
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (pos.sum() * neg.sum()))


def auc(y_true, y_score, sample_weight=None) -> float:
    """Exact ROC-AUC (ties count one half), optionally sample-weighted; O(n log n)."""
    y = _labels("auc", y_true, binary=True)
    s = _scores("auc", y_score)
    w = np.ones_like(y) if sample_weight is None else _as_1d("auc: sample_weight", sample_weight, np.float64)
    _check_same_length("auc", y_true=y, y_score=s, sample_weight=w)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("auc: sample_weight must be finite and non-negative")
    pos_w, neg_w = w * y, w * (1.0 - y)
    if pos_w.sum() <= 0 or neg_w.sum() <= 0:
        raise ValueError("auc: needs both a positive and a negative label (with non-zero weight)")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    return _auc_sorted(np.add.reduceat(pos_w[order], starts), np.add.reduceat(neg_w[order], starts))


def _per_row_logloss(y: np.ndarray, p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(p, eps, 1.0 - eps)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def logloss(y_true, y_prob, eps=1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]."""
    y = _labels("logloss", y_true, binary=False)
    p = _probs("logloss", y_prob)
    _check_same_length("logloss", y_true=y, y_prob=p)
    return float(np.mean(_per_row_logloss(y, p, eps)))


def _gauc_or_none(y: np.ndarray, s: np.ndarray, users: np.ndarray) -> Optional[float]:
    """gAUC over users with both classes, or None when no user has both."""
    _, uidx = np.unique(users, return_inverse=True)
    num_users = int(uidx.max()) + 1
    order = np.lexsort((s, uidx))          # by user, then score ascending
    u, ss, yy = uidx[order], s[order], y[order]
    starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (ss[1:] != ss[:-1])])
    group_user = u[starts]
    pos = np.add.reduceat(yy, starts)
    neg = np.add.reduceat(1.0 - yy, starts)
    # Negatives with a lower score *within the same user*: global running count minus the
    # count before the user's first (user, score) group.
    before = np.cumsum(neg) - neg
    first_of_user = np.r_[True, group_user[1:] != group_user[:-1]]
    neg_below = before - before[first_of_user][group_user]
    wins = np.bincount(group_user, pos * (neg_below + 0.5 * neg), minlength=num_users)
    n_pos = np.bincount(uidx, y, minlength=num_users)
    n_neg = np.bincount(uidx, 1.0 - y, minlength=num_users)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return None
    user_auc = wins[valid] / (n_pos[valid] * n_neg[valid])
    impressions = n_pos[valid] + n_neg[valid]
    return float(np.sum(impressions * user_auc) / np.sum(impressions))


def gauc(y_true, y_score, user_ids) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes (DIN).

    Vectorised: one lexsort by (user, score), no Python loop over users.
    """
    y = _labels("gauc", y_true, binary=True)
    s = _scores("gauc", y_score)
    users, = user_keys("gauc: user_ids", user_ids)
    _check_same_length("gauc", y_true=y, y_score=s, user_ids=users)
    value = _gauc_or_none(y, s, users)
    if value is None:
        raise ValueError("gauc: no user has both a positive and a negative label")
    return value


def _bin_index(p: np.ndarray, num_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1]: bin k holds [k/K, (k+1)/K), the last one includes 1."""
    return np.minimum((p * num_bins).astype(np.int64), num_bins - 1)


def ece(y_true, y_prob, num_bins=100) -> float:
    """Rec4Ad Eq. 16: (1/|D|) * sum_k |sum_i (y_i - p_i) 1(p_i in B_k)|, K equal-width buckets."""
    if int(num_bins) < 1:
        raise ValueError(f"ece: num_bins must be >= 1, got {num_bins!r}")
    y = _labels("ece", y_true, binary=False)
    p = _probs("ece", y_prob)
    n = _check_same_length("ece", y_true=y, y_prob=p)
    residual = np.bincount(_bin_index(p, int(num_bins)), y - p, minlength=int(num_bins))
    return float(np.sum(np.abs(residual)) / n)


def reliability_curve(y_true, y_prob, num_bins=10, strategy="uniform"):
    """Per bin: (mean predicted prob, observed positive rate, row count) and the bin edges.

    ``uniform``: ``num_bins`` equal-width bins on [0, 1]. ``quantile``: edges at the
    quantiles of ``y_prob``, so every bin holds about the same number of rows (the readable
    choice at CTRs of a few percent, where equal-width bins put nearly every row in the
    first); tied edges merge bins. An empty bin holds NaN means and a zero count. The
    non-empty bins are those of ``sklearn.calibration.calibration_curve`` (same strategy).
    """
    if int(num_bins) < 1:
        raise ValueError(f"reliability_curve: num_bins must be >= 1, got {num_bins!r}")
    if strategy not in RELIABILITY_STRATEGIES:
        raise ValueError(f"reliability_curve: strategy must be one of {RELIABILITY_STRATEGIES}, got {strategy!r}")
    y = _labels("reliability_curve", y_true, binary=False)
    p = _probs("reliability_curve", y_prob)
    _check_same_length("reliability_curve", y_true=y, y_prob=p)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, int(num_bins) + 1)
        bins, size = _bin_index(p, int(num_bins)), int(num_bins)
    else:
        edges = np.unique(np.percentile(p, np.linspace(0, 100, int(num_bins) + 1)))
        bins = np.searchsorted(edges[1:-1], p)
        size = len(edges) - 1
    counts = np.bincount(bins, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(bins, p, minlength=size) / counts
        frac_pos = np.bincount(bins, y, minlength=size) / counts
    return mean_pred, frac_pos, counts, edges


def _gp_or_none(per_user_loss: np.ndarray, mask: np.ndarray) -> Optional[float]:
    return float(per_user_loss[mask].mean()) if mask.any() else None


def group_logloss(y_true, y_prob, user_ids, head_users, eps=1e-7) -> dict:
    """HDA Def. 3.1 with M = a user's mean logloss: {"GP-LT", "GP-Head", "GAP"}.

    GP(U) averages users, not samples: every user of the group counts once. Users not in
    ``head_users`` are long-tail. GAP = |GP-LT - GP-Head| (HDA §3.2). A group with no user
    in the data gives None (and so does GAP).
    """
    y = _labels("group_logloss", y_true, binary=False)
    p = _probs("group_logloss", y_prob)
    users, head = user_keys("group_logloss: user_ids / head_users", user_ids, head_users)
    _check_same_length("group_logloss", y_true=y, y_prob=p, user_ids=users)
    uniq, uidx = np.unique(users, return_inverse=True)
    per_user = np.bincount(uidx, _per_row_logloss(y, p, eps)) / np.bincount(uidx)
    is_head = np.isin(uniq, head)
    gp_lt, gp_head = _gp_or_none(per_user, ~is_head), _gp_or_none(per_user, is_head)
    gap = None if gp_lt is None or gp_head is None else abs(gp_lt - gp_head)
    return {"GP-LT": gp_lt, "GP-Head": gp_head, "GAP": gap}


# ----------------------------------------------------------------------------- slices

def _ranked_groups(ranked_ids: np.ndarray, ids_eval: np.ndarray, num_groups: int) -> np.ndarray:
    """Group index (0 = top of ``ranked_ids``) per eval row, equal-sized groups of ids.

    Rank r of n goes to group floor(r * k / n). Ids absent from the ranking go to the
    last group (k - 1).
    """
    n = len(ranked_ids)
    group_of_ranked = (np.arange(n, dtype=np.int64) * num_groups) // max(n, 1)
    sorter = np.argsort(ranked_ids, kind="mergesort")
    pos = np.searchsorted(ranked_ids, ids_eval, sorter=sorter)
    pos = np.minimum(pos, max(n - 1, 0))
    out = np.full(len(ids_eval), num_groups - 1, dtype=np.int64)
    if n:
        found = ranked_ids[sorter[pos]] == ids_eval
        out[found] = group_of_ranked[sorter[pos[found]]]
    return out


def _rank_desc(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Ids sorted by value descending; ties broken by id ascending (deterministic)."""
    return ids[np.lexsort((ids, -values))]


def _users_by_activity(user_ids_train) -> np.ndarray:
    if len(user_ids_train) == 0:
        raise ValueError("user_ids_train is empty: activity needs the training split's user ids")
    return rank_by_activity(pd.Series(user_ids_train).value_counts(sort=False))


def activity_quintiles(user_ids_eval, user_ids_train, num_groups=5) -> np.ndarray:
    """Label G1..Gk per eval row by the user's training-sample count (G1 = least active).

    Training users sorted by count are split into k equal-sized groups; users unseen in
    training go to G1.
    """
    eval_keys, train_keys = user_keys("user_ids_eval / user_ids_train", user_ids_eval, user_ids_train)
    ranked = _users_by_activity(train_keys)
    group = _ranked_groups(ranked, eval_keys, int(num_groups))
    labels = np.array([f"G{int(num_groups) - g}" for g in range(int(num_groups))])
    return labels[group]


def impression_ratio_groups(item_ids_eval, item_ids_train, num_groups=4,
                            candidate_item_ids_train=None, logged_ratio=None) -> np.ndarray:
    """Label IR1..IRk per eval row: Rec4Ad groups of ads by impression ratio (IR1 = highest).

    IR(a) = #sessions where a was displayed / #sessions where a was a candidate (Eq. 2);
    ``item_ids_train`` holds one entry per training impression and ``candidate_item_ids_train``
    one entry per (session, candidate ad). ``logged_ratio`` ({ad: IR}) takes the ratio as the
    serving system logged it instead (the simulator's ``ads.parquet`` ``impression_ratio``,
    over its whole log). With neither, every ad is taken to be a candidate in every session,
    so IR orders ads by their training impressions. The ads of the training split are sorted
    by IR descending and split into k equal-sized groups (§2.2.1; k = 4 gives §4.2.2's
    G_top = IR1 and G_bottom = IR4). Ads absent from training go to IRk.
    """
    if candidate_item_ids_train is not None and logged_ratio is not None:
        raise ValueError("impression_ratio_groups: give candidate_item_ids_train or logged_ratio, not both")
    shown = _as_1d("item_ids_train", item_ids_train)
    ads, impressions = np.unique(shown, return_counts=True)
    if logged_ratio is not None:
        missing = [a for a in ads.tolist() if a not in logged_ratio]
        if missing:
            raise ValueError(f"impression_ratio_groups: {len(missing)} displayed ad(s) of the training split "
                             f"have no logged ratio, e.g. {missing[0]!r}")
        ir = np.array([logged_ratio[a] for a in ads.tolist()], np.float64)
    elif candidate_item_ids_train is None:
        ir = impressions.astype(np.float64)
    else:
        cands, cand_counts = np.unique(_as_1d("candidate_item_ids_train", candidate_item_ids_train),
                                       return_counts=True)
        missing = ~np.isin(ads, cands)
        if missing.any():
            raise ValueError(f"impression_ratio_groups: {int(missing.sum())} displayed ad(s) never appear "
                             f"in candidate_item_ids_train, e.g. {ads[missing][0]!r}")
        shown_counts = np.zeros(len(cands))
        shown_counts[np.searchsorted(cands, ads)] = impressions
        ads, ir = cands, shown_counts / cand_counts
    if len(ads) == 0:
        raise ValueError("impression_ratio_groups: item_ids_train is empty")
    ranked = _rank_desc(ads, ir)
    group = _ranked_groups(ranked, _as_1d("item_ids_eval", item_ids_eval), int(num_groups))
    labels = np.array([f"IR{g + 1}" for g in range(int(num_groups))])
    return labels[group]


def new_ad_groups(item_ids_eval, item_ids_train, unknown_id=None) -> np.ndarray:
    """Label ``new`` / ``seen`` per eval row: whether the row's ad appears among the training
    split's ads. ``unknown_id`` (the OOV id of an encoded ad column) is never a seen ad: its rows
    are ads the vocabulary does not know (with ``min_count`` 1, exactly those absent from training)."""
    seen = np.setdiff1d(np.unique(_as_1d("item_ids_train", item_ids_train)),
                        [] if unknown_id is None else [unknown_id])
    is_seen = np.isin(_as_1d("item_ids_eval", item_ids_eval), seen)
    return np.where(is_seen, NEW_AD_GROUPS[1], NEW_AD_GROUPS[0])


# ----------------------------------------------------------------------------- everything

def _slice_metrics(y: np.ndarray, p: np.ndarray, users: Optional[np.ndarray], ece_bins: int) -> Dict[str, Any]:
    """auc, gauc, logloss, ece, count, ctr, mean_pred, num_users; None where undefined."""
    n = len(y)
    out: Dict[str, Any] = {"count": int(n)}
    if n == 0:
        out.update(auc=None, gauc=None, logloss=None, ece=None, ctr=None, mean_pred=None, num_users=0)
        return out
    both_classes = bool(np.any(y == 1.0) and np.any(y == 0.0))
    out["auc"] = auc(y, p) if both_classes else None
    out["gauc"] = _gauc_or_none(y, p, users) if both_classes and users is not None else None
    out["logloss"] = logloss(y, p)
    out["ece"] = ece(y, p, num_bins=ece_bins)
    out["ctr"] = float(y.mean())
    out["mean_pred"] = float(p.mean())
    out["num_users"] = None if users is None else int(len(np.unique(users)))
    return out


def evaluate_predictions(y_true, y_prob, user_ids, train_user_ids, item_ids=None, train_item_ids=None,
                         train_candidate_item_ids=None, logged_impression_ratio=None,
                         config: Optional[EvalConfig] = None, user_groups=None,
                         head_fraction: Optional[float] = None, seen_item_ids=None, unknown_item_id=None) -> dict:
    """All metrics of one task, overall and per slice.

    Returns ``{"overall": {...}, "slices": {"activity": {"G1": {...}, ...},
    "impression_ratio": {"IR1": {...}, ...}, "new_ads": {"new": {...}, "seen": {...}}},
    "config": {...}}``. The new-ads slice (:func:`new_ad_groups`) takes the training split's ads
    from ``seen_item_ids`` (every training row's ad; default ``train_item_ids``) and
    ``unknown_item_id``. ``overall`` also holds
    GP-LT, GP-Head and GAP, from ``user_groups`` (per row: 1 = head user, 0 = long-tail, the
    data's group column); without it they are None: head users are never recomputed here.
    "config" records whether they were given ("user_groups") and ``head_fraction``, the
    fraction preprocess built them with (for the report's text; None when not recorded).
    Data without users (``user_ids`` and ``train_user_ids`` None, e.g. Criteo) gets gauc,
    GP-* = None and no activity slice; the impression-ratio slice needs ``item_ids`` and
    ``train_item_ids`` (and takes the IR from ``train_candidate_item_ids`` or
    ``logged_impression_ratio`` when given, see :func:`impression_ratio_groups`).
    """
    cfg = config or EvalConfig()
    y = _labels("evaluate_predictions", y_true, binary=True)
    p = _probs("evaluate_predictions", y_prob)
    _check_same_length("evaluate_predictions", y_true=y, y_prob=p)
    for what, (ev, tr) in {"user": (user_ids, train_user_ids), "item": (item_ids, train_item_ids)}.items():
        if (ev is None) != (tr is None):
            raise ValueError(f"evaluate_predictions: give both {what}_ids and train_{what}_ids, or neither")

    users = None
    slice_labels = {}
    if user_ids is not None:
        users, train_user_ids = user_keys("evaluate_predictions: user_ids / train_user_ids", user_ids,
                                          train_user_ids)
        _check_same_length("evaluate_predictions", y_true=y, user_ids=users)
        slice_labels["activity"] = (activity_quintiles(users, train_user_ids, cfg.activity_groups),
                                    slice_groups(cfg)["activity"])
    if item_ids is not None:
        items = _as_1d("evaluate_predictions: item_ids", item_ids)
        _check_same_length("evaluate_predictions", y_true=y, item_ids=items)
        slice_labels["impression_ratio"] = (
            impression_ratio_groups(items, train_item_ids, cfg.ir_groups, train_candidate_item_ids,
                                    logged_impression_ratio),
            slice_groups(cfg)["impression_ratio"])
        slice_labels["new_ads"] = (
            new_ad_groups(items, train_item_ids if seen_item_ids is None else seen_item_ids, unknown_item_id),
            slice_groups(cfg)["new_ads"])

    overall = _slice_metrics(y, p, users, cfg.ece_bins)
    overall.update(_head_tail(y, p, users, user_groups))
    slices = {}
    for name, (labels, order) in slice_labels.items():
        slices[name] = {}
        for label in order:
            mask = labels == label
            slices[name][label] = _slice_metrics(y[mask], p[mask], None if users is None else users[mask],
                                                 cfg.ece_bins)
    return {"overall": overall, "slices": slices,
            "config": {**dataclasses.asdict(cfg), "user_groups": users is not None and user_groups is not None,
                       "head_fraction": head_fraction}}


def _head_tail(y: np.ndarray, p: np.ndarray, users: Optional[np.ndarray], user_groups) -> Dict[str, Any]:
    """GP-LT / GP-Head / GAP from the per-row group column; all None without users or groups."""
    if users is None or user_groups is None:
        return {"GP-LT": None, "GP-Head": None, "GAP": None}
    groups = _as_1d("evaluate_predictions: user_groups", user_groups)
    _check_same_length("evaluate_predictions", y_true=y, user_groups=groups)
    if not np.isin(groups, (0, 1)).all():
        raise ValueError(f"evaluate_predictions: user_groups must be 1 (head) or 0 (long-tail), "
                         f"got {sorted(set(np.unique(groups).tolist()) - {0, 1})[:5]}")
    return group_logloss(y, p, users, users[groups == 1])
