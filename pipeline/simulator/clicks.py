"""The ground-truth response model: p(click | user, item, ad, context, position, exposure)
and p(conversion | click), both logistic (equations in docs/simulator.md).

``static_logit`` is the part known when a request is ranked (no position, intent or
exposure); the production and rec systems rank with biased versions of it. The model has no
source argument (Rec4Ad's shared decision rationales, Sec. 1): an organic item is scored as an
ad whose creative terms (quality, novelty) are 0. ``click_terms`` spells the same logit out
term by term for the checks in ``premises.py`` and the tests.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from pipeline.simulator.config import SimulatorConfig
from pipeline.simulator.world import DAY, NUM_DAYPARTS, World

HOUR = 3600


def hour_weekday(t_rel, start_time: int):
    """Hour of day and weekday (Monday = 0; 1970-01-01 was a Thursday) of relative times."""
    t = start_time + np.floor(t_rel).astype(np.int64)
    return (t // HOUR) % 24, (t // 86400 + 3) % 7


class GroundTruth:
    """The click and conversion models, with their user- and item-side terms stacked so
    the static logit is one dot product <query(user, daypart), item features> per pair."""

    def __init__(self, world: World, cfg: SimulatorConfig):
        self.w, self.cfg, self.c = world, cfg, cfg.click
        c, cv = cfg.click, cfg.conversion
        brand_q = world.brand_quality[world.item_brand]
        f32 = np.float32
        # user side:  [w_int * interest, w_vis * visual taste, -w_price * price sensitivity, 1]
        self.user_side = np.concatenate([
            c.interest_weight * world.interest, c.visual_weight * world.visual_taste,
            -c.price_weight * world.price_sensitivity[:, None], np.ones((world.num_users, 1))], axis=1).astype(f32)
        # item side:  [latent, visual features, price_z, w_pop * popularity + w_brand * brand quality,
        #              daypart x category effects (matched by the query's one-hot daypart)]
        self.item_side = np.concatenate([
            world.item_latent, world.visual_features, world.price_z[:, None],
            (c.popularity_weight * world.popularity + c.brand_weight * brand_q)[:, None],
            world.daypart_category[:, world.item_category].T], axis=1).astype(f32)
        self.user_device = np.asarray(c.device_effects, f32)[world.profile[:, 3]]
        self.ad_quality = (c.quality_weight * world.quality).astype(f32)
        self.item_cvr = (cv.brand_weight * brand_q).astype(f32)
        age = world.profile[:, 0].astype(f32)
        self.user_age_z = (age - age.mean()) / max(float(age.std()), 1e-9)

    def static_logit(self, users, items, ads, t_rel, ad_age_days=None):
        """Click logit of candidates without the position, intent and exposure terms (Eq. S1
        of docs/simulator.md). ``users``, ``t_rel``: [S] per session; ``items``, ``ads``:
        [S, C] candidates; ``ads`` None = organic items."""
        c, n_items = self.c, self.w.num_items
        hour, weekday = hour_weekday(t_rel, self.cfg.timeline.start_time)
        keys, inverse = np.unique(users * NUM_DAYPARTS + hour // 6, return_inverse=True)
        query = np.concatenate([self.user_side[keys // NUM_DAYPARTS],
                                np.eye(NUM_DAYPARTS, dtype=np.float32)[keys % NUM_DAYPARTS]], axis=1)
        if len(keys) * n_items <= 8 * items.size:  # few distinct queries: score every item once
            logit = (query @ self.item_side.T).ravel()[inverse[:, None] * n_items + items]
        else:
            logit = np.einsum("sd,scd->sc", query[inverse], np.take(self.item_side, items, axis=0))
        session = self.user_device[users] + c.evening_boost * (hour >= 18) + c.weekend_boost * (weekday >= 5)
        logit += (session + c.bias)[:, None].astype(np.float32)
        if ads is None:  # organic items: no creative, so no creative terms; nothing else differs
            return logit
        if ad_age_days is None:
            ad_age_days = self.ad_age_days(ads, t_rel[:, None])
        return logit + self.ad_quality[ads] + c.novelty_weight * np.exp(-ad_age_days / c.novelty_days)

    def click_weights(self) -> Dict[str, float]:
        """The weight of each term of the click logit (Eq. S1 of docs/simulator.md), in the
        column order of :meth:`click_terms`; the logit is ``bias + click_terms @ weights``."""
        c = self.c
        return {"interest": c.interest_weight, "visual": c.visual_weight, "price": c.price_weight,
                "popularity": c.popularity_weight, "brand": c.brand_weight, "daypart_category": 1.0,
                "evening": c.evening_boost, "weekend": c.weekend_boost, "device": 1.0,
                "quality": c.quality_weight, "novelty": c.novelty_weight, "intent": c.intent_weight,
                "log2_position": -c.position_bias, "log1p_exposure": -c.fatigue_weight}

    def click_terms(self, users, items, ads, t_rel, intent_match, position, exposure_count) -> np.ndarray:
        """[n, 14] terms of the click logit of n displayed rows, one column per weight of
        :meth:`click_weights`. ``ads`` < 0 marks organic items, whose creative terms (quality,
        novelty) are 0. ``static_logit`` computes the same sum fused, for ranking candidates;
        this term-by-term form is what the source-effect regression and the tests check."""
        w = self.w
        hour, weekday = hour_weekday(t_rel, self.cfg.timeline.start_time)
        is_ad, ad = ads >= 0, np.maximum(ads, 0)
        return np.stack([
            np.einsum("nd,nd->n", w.interest[users], w.item_latent[items]),
            np.einsum("nd,nd->n", w.visual_taste[users], w.visual_features[items]),
            -w.price_sensitivity[users] * w.price_z[items],
            w.popularity[items], w.brand_quality[w.item_brand[items]],
            w.daypart_category[hour // 6, w.item_category[items]],
            hour >= 18, weekday >= 5, self.user_device[users],
            np.where(is_ad, w.quality[ad], 0.0),
            np.where(is_ad, np.exp(-self.ad_age_days(ad, t_rel) / self.c.novelty_days), 0.0),
            intent_match, np.log2(position), np.log1p(exposure_count)], axis=1).astype(np.float64)

    def ad_age_days(self, ads, t_rel):
        return np.maximum(t_rel - self.w.created_at[ads], 0.0) / DAY

    def click_logit(self, static, intent_match, position, exposure_count):
        """Adds the session intent, position bias and repeated-exposure fatigue."""
        c = self.c
        return (static + c.intent_weight * intent_match - c.position_bias * np.log2(position)
                - c.fatigue_weight * np.log1p(exposure_count))

    def conversion_logit(self, users, items, ads):
        """p(conversion | click): its own interest, stronger price and brand effects,
        landing-page quality (ads only) and age; ``ads`` < 0 marks organic rows."""
        w, cv = self.w, self.cfg.conversion
        logit = cv.bias + cv.interest_weight * np.einsum("...d,...d->...", w.cvr_interest[users],
                                                         w.item_latent[items])
        logit -= cv.price_weight * w.price_sensitivity[users] * w.price_z[items]
        logit += self.item_cvr[items] + cv.age_weight * self.user_age_z[users]
        return logit + np.where(ads >= 0, cv.landing_weight * w.landing_quality[np.maximum(ads, 0)], 0.0)
