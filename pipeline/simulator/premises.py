"""The numbers behind Rec4Ad's premises (its Sec. 2.2), from the simulator's logged counts:

- impression ratios IR(a) (Eq. 2) of the ads in the ads log, sorted and cut into 12 equal groups
  (Fig. 4 left): the mean IR per group and first / last;
- where the rec log's impressions fall among those groups (Fig. 5 left): items whose ads are
  rarely shown still get rec impressions;
- how much of the rec log sample retrieval can keep (Sec. 3.1: items with an ad live at the time);
- shared decision rationales: a logistic regression of the click on the click model's terms
  plus a source indicator, over ads and rec rows, whose source coefficient should be ~0.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

IR_GROUPS = 12  # the paper's Fig. 4
BOTTOM_GROUPS = 3  # the last 3 of 12 = the bottom 25 % of ads by IR (the paper's G_bottom, Table 2)


def ir_group_of_ads(impressions: np.ndarray, candidates: np.ndarray, groups: int = IR_GROUPS) -> np.ndarray:
    """[A] IR group of each ad shown at least once (0 = highest IR), -1 for ads never shown:
    the ads of the ads log sorted by IR descending (ties by ad index), cut into ``groups``
    groups of equal size (sizes differ by at most one)."""
    shown = np.flatnonzero(impressions > 0)
    ratio = impressions[shown] / candidates[shown]
    order = shown[np.lexsort((shown, -ratio))]
    group = np.full(len(impressions), -1, np.int64)
    for g, members in enumerate(np.array_split(order, groups)):
        group[members] = g
    return group


def mean_ir_by_group(impressions: np.ndarray, candidates: np.ndarray, groups: int = IR_GROUPS):
    """(the group of each ad as :func:`ir_group_of_ads`, the mean IR of each group)."""
    group = ir_group_of_ads(impressions, candidates, groups)
    grouped = group >= 0
    ratio = impressions[grouped] / candidates[grouped]
    return group, np.bincount(group[grouped], weights=ratio, minlength=groups) / np.bincount(group[grouped])


def ir_groups(impressions: np.ndarray, candidates: np.ndarray, ad_item: np.ndarray,
              item_rec_impressions: np.ndarray, groups: int = IR_GROUPS) -> dict:
    """Mean IR per group and the shares of ad and rec impressions per group (Fig. 4 / 5 left).

    A rec impression of an item counts for the item's ads that were shown, split equally among
    them; rec impressions of ad items none of whose ads was shown are reported apart, as a share
    of the rec impressions on ad items. Empty when fewer ads than groups were shown."""
    if (impressions > 0).sum() < groups:
        return {}
    group, mean_ir = mean_ir_by_group(impressions, candidates, groups)
    grouped = group >= 0
    ads_share = np.bincount(group[grouped], weights=impressions[grouped], minlength=groups) / impressions.sum()
    shown_ads_of_item = np.bincount(ad_item[grouped], minlength=len(item_rec_impressions))
    rec_per_ad = item_rec_impressions[ad_item[grouped]] / shown_ads_of_item[ad_item[grouped]]
    rec_by_group = np.bincount(group[grouped], weights=rec_per_ad, minlength=groups)
    ad_items = np.unique(ad_item)
    rec_on_ad_items = item_rec_impressions[ad_items].sum()
    unshown = item_rec_impressions[ad_items[shown_ads_of_item[ad_items] == 0]].sum()
    rec_share = rec_by_group / max(rec_by_group.sum(), 1)
    return {
        "groups": groups,
        "ads_per_group": np.bincount(group[grouped], minlength=groups).tolist(),
        "mean_ir": _round(mean_ir),
        "top_bottom_ir_ratio": round(float(mean_ir[0] / mean_ir[-1]), 2),
        "ads_impression_share": _round(ads_share),
        "rec_impression_share": _round(rec_share),
        "bottom_quarter_ads_impression_share": round(float(ads_share[-BOTTOM_GROUPS:].sum()), 6),
        "bottom_quarter_rec_impression_share": round(float(rec_share[-BOTTOM_GROUPS:].sum()), 6),
        "rec_share_on_items_with_no_shown_ad": round(float(unshown / max(rec_on_ad_items, 1)), 6),
    }


def first_ad_time(ad_item: np.ndarray, created_at: np.ndarray, num_items: int) -> np.ndarray:
    """[I] creation time of each item's first ad (+inf for items without ads): a rec row of
    item i at time t can be mapped to a pseudo-ad (Sec. 3.1) iff first_ad_time[i] <= t."""
    first = np.full(num_items, np.inf)
    np.minimum.at(first, ad_item, created_at.astype(np.float64))
    return first


def logistic_regression(x: np.ndarray, y: np.ndarray, iterations: int = 50, tol: float = 1e-10):
    """Maximum-likelihood logistic regression by Newton's method: (coefficients, standard
    errors from the inverse Fisher information). ``x`` holds the intercept column if wanted.
    Raises ``np.linalg.LinAlgError`` when the information matrix is singular."""
    beta = np.zeros(x.shape[1])
    with np.errstate(over="ignore"):
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-(x @ beta)))
            info = (x * (p * (1 - p))[:, None]).T @ x
            step = np.linalg.solve(info, x.T @ (y - p))
            beta += step
            if not np.abs(step).max() > tol:  # converged (or NaN: reported by the caller)
                break
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        se = np.sqrt(np.diag(np.linalg.inv((x * (p * (1 - p))[:, None]).T @ x)))
    return beta, se


def source_effect(terms: np.ndarray, names: Sequence[str], is_rec: np.ndarray, click: np.ndarray,
                  weights: Dict[str, float], bias: float) -> dict:
    """Regress click on [1, the click model's terms, 1[rec]] over ads and rec rows. With shared
    decision rationales the source coefficient is ~0 (|z| < 3) and the others recover the
    configured weights; a source effect in the ground truth shows as a coefficient of its size.

    A term constant over the rows (e.g. no weekend in a one-day timeline) cannot be told from
    the intercept and is left out (``fit`` None); a sample too small to fit (singular or
    diverging) reports ``source_rec`` None."""
    x = np.column_stack([np.ones(len(click)), terms, is_rec.astype(np.float64)])
    labels = ["intercept", *names, "source_rec"]
    truth = [bias, *(weights[n] for n in names), 0.0]
    out = {"rows": int(len(click)), "rec_rows": int(is_rec.sum()), "source_rec": None}
    varies = np.r_[True, x[:, 1:].std(axis=0) > 0]
    try:
        beta, se = logistic_regression(x[:, varies], click.astype(np.float64))
    except np.linalg.LinAlgError:
        return out
    if not (varies[-1] and np.all(np.isfinite(beta)) and np.all(np.isfinite(se))):
        return out
    fit, err = np.full(len(labels), np.nan), np.full(len(labels), np.nan)
    fit[varies], err[varies] = beta, se
    out.update({
        "source_rec": round(float(fit[-1]), 4), "source_rec_se": round(float(err[-1]), 4),
        "source_rec_z": round(float(fit[-1] / err[-1]), 2),
        "coefficients": {n: {"fit": _round_or_none(b), "se": _round_or_none(s), "true": round(float(t), 4)}
                         for n, b, s, t in zip(labels, fit, err, truth)},
    })
    return out


def _round_or_none(value: float, digits: int = 4):
    return None if np.isnan(value) else round(float(value), digits)


def _round(values: np.ndarray, digits: int = 6) -> list:
    return [round(float(v), digits) for v in values]
