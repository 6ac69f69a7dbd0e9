"""The three exposure systems: retrieve candidates per session, score, show the top slots.

- production ads: candidates = retargeting pool + intent category + uniform live ads, ranked by a biased
  production pCTR x bid (Rec4Ad Eq. 1) -> sample-selection bias, skewed impression ratios;
- random policy: uniform live candidates shown in random order (Rec4Ad Sec. 4.1);
- recommendation: organic items (half from the session intent's category), ranked by
  the rec model's own pCTR, no bid, plus Gumbel exploration noise.
Every session is ranked at once as [sessions, candidates] arrays.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from pipeline.simulator.clicks import GroundTruth
from pipeline.simulator.world import World, sample_cdf, sigmoid, uniform_in_group

_DUPLICATE_PENALTY = 1e9  # a repeated candidate ranks after every distinct one


@dataclasses.dataclass
class Displayed:
    """Displayed impressions of one system in a chunk (flat, session-major)."""

    session: np.ndarray  # index into the chunk's sessions of this system
    item: np.ndarray
    ad: np.ndarray  # -1 for organic items
    position: np.ndarray  # 1-based
    static: np.ndarray  # true static click logit (GroundTruth.static_logit)
    candidates: Optional[np.ndarray]  # distinct candidate ads per session, flattened (for IR)


def rank(ids: np.ndarray, scores: np.ndarray, k: int):
    """Column indices of the top-k scores per row ([S, C] -> [S, k], best first); a repeated
    id within a row is ranked last. Also returns the [S, C] duplicate mask."""
    order = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    dup = np.zeros(ids.shape, bool)
    np.put_along_axis(dup, order[:, 1:], sorted_ids[:, 1:] == sorted_ids[:, :-1], axis=1)
    scores = np.where(dup, scores - _DUPLICATE_PENALTY, scores)  # a fresh copy, modified below
    top = np.empty((ids.shape[0], k), np.int64)
    rows = np.arange(ids.shape[0])
    for j in range(k):  # k argmax passes: cheaper than argpartition + sort for small k
        top[:, j] = best = scores.argmax(axis=1)
        scores[rows, best] = -np.inf
    return top, dup


def live_ads(world: World, t: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """[S, m] ads drawn uniformly among those created by each session's time."""
    n_live = np.searchsorted(world.created_at, t, side="right")  # >= 1: an ad is live at t = 0
    return np.minimum((rng.random((len(t), m)) * n_live[:, None]).astype(np.int64), n_live[:, None] - 1)


def retarget_pools(world: World, category_cdf: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """[users, size] ads targeted at each user: ads of categories drawn from the user's preferences."""
    cats = sample_cdf(rng, np.repeat(category_cdf, size, axis=0)).reshape(-1, size)
    return _draw_in_category(world.ads_by_category, world.ad_category_offsets, cats, world.num_ads, rng)


def production_ads(gt: GroundTruth, users, t, intent, pools, slots, rng) -> Displayed:
    """Production ads: candidates from the user's retargeting pool, the session intent's
    category and all live ads; ranked by sigmoid(biased pCTR logit) * bid^exponent times
    a per-request budget-pacing factor exp(pacing_sigma * N(0, 1))."""
    w, s = gt.w, gt.cfg.ads_system
    S, n_retarget, n_intent = len(t), s.retarget_candidates, s.intent_candidates
    retarget = pools[np.arange(S)[:, None], rng.integers(0, pools.shape[1], (S, n_retarget))]
    by_intent = _draw_in_category(w.ads_by_category, w.ad_category_offsets,
                                  np.repeat(intent[:, None], n_intent, axis=1), w.num_ads, rng)
    targeted = np.concatenate([retarget, by_intent], axis=1)
    targeted = np.where(w.created_at[targeted] <= t[:, None], targeted,  # not live yet: any live ad
                        live_ads(w, t, n_retarget + n_intent, rng))
    cand = np.concatenate([targeted, live_ads(w, t, s.candidates - n_retarget - n_intent, rng)], axis=1)
    items, age = w.ad_item[cand], gt.ad_age_days(cand, t[:, None])
    static = gt.static_logit(users, items, cand, t, age)
    bias = s.popularity_bias * w.popularity[w.ad_item] + w.prod_error  # per ad: over-rates popular items
    prod_logit = static + bias[cand] - s.cold_start_penalty * np.exp(-age / s.cold_start_days)
    pacing = np.exp(s.pacing_sigma * rng.standard_normal(cand.shape, dtype=np.float32))
    score = sigmoid(prod_logit) * w.bid[cand] ** s.bid_exponent * pacing
    return _display(cand, items, cand, static, score, slots)


def random_ads(gt: GroundTruth, users, t, slots, rng) -> Displayed:
    """Random policy: uniform live candidates, shown in uniformly random order."""
    cand = live_ads(gt.w, t, gt.cfg.random_policy.candidates, rng)
    items = gt.w.ad_item[cand]
    static = gt.static_logit(users, items, cand, t)
    return _display(cand, items, cand, static, rng.random(cand.shape), slots)


def rec_items(gt: GroundTruth, users, t, intent, slots, rng) -> Displayed:
    """Recommendation: intent-category + uniform organic candidates ranked by the rec pCTR."""
    w, r = gt.w, gt.cfg.rec_system
    n_intent = int(round(r.intent_candidate_fraction * r.candidates))
    by_intent = _draw_in_category(w.items_by_category, w.item_category_offsets,
                                  np.repeat(intent[:, None], n_intent, axis=1), w.num_items, rng)
    items = np.concatenate([by_intent, rng.integers(0, w.num_items, (len(t), r.candidates - n_intent))], axis=1)
    static = gt.static_logit(users, items, None, t)
    gumbel = -np.log(-np.log(rng.random(items.shape) + 1e-12) + 1e-12)
    score = static + w.rec_error[items] + r.explore_scale * gumbel
    return _display(items, items, None, static, score, slots)


def _display(ids, items, ads, static, score, slots) -> Displayed:
    k = int(slots.max()) if len(slots) else 1
    top, dup = rank(ids, score, k)
    S = len(slots)
    position = np.broadcast_to(np.arange(1, k + 1), (S, k))
    keep = position <= slots[:, None]

    def shown(a):
        return np.take_along_axis(a, top, axis=1)[keep]

    return Displayed(
        session=np.broadcast_to(np.arange(S)[:, None], (S, k))[keep],
        item=shown(items),
        ad=shown(ads) if ads is not None else np.full(int(keep.sum()), -1, np.int64),
        position=position[keep],
        static=shown(static),
        candidates=ids[~dup] if ads is not None else None,
    )


def _draw_in_category(grouped, offsets, cats, n_total, rng):
    """Uniform members of each category (uniform over all when a category is empty)."""
    size = offsets[cats + 1] - offsets[cats]
    members = grouped[np.minimum(uniform_in_group(rng, offsets, cats), len(grouped) - 1)]
    return np.where(size > 0, members, rng.integers(0, n_total, cats.shape))
