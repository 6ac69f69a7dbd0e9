"""The ads world's entities and their latent ground truth, drawn once per seed.

Users, items and ads are numpy arrays indexed by integer ids; string ids ("u12",
"i7", "a3", "c2") are made only when rows are written. Ads are indexed in creation
order, so the ads eligible at time t are the prefix ``created_at <= t``.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.simulator.config import AGE_BUCKETS, SimulatorConfig

DAY = 86400.0
NUM_DAYPARTS = 4  # hours 0-5, 6-11, 12-17, 18-23


@dataclasses.dataclass
class World:
    # users
    profile: np.ndarray  # [U, 5] int: age, gender, city, device, occupation codes
    activity: np.ndarray  # [U] relative session rate (lognormal)
    is_head: np.ndarray  # [U] bool: the head_fraction most active users
    interest: np.ndarray  # [U, d] click interest
    cvr_interest: np.ndarray  # [U, d] conversion interest (partly correlated)
    visual_taste: np.ndarray  # [U, 6] weights on the creative's visual features
    price_sensitivity: np.ndarray  # [U]
    user_pretrained: np.ndarray  # [U, p] noisy external view of `interest`
    # categories
    category_centers: np.ndarray  # [C, d]
    daypart_category: np.ndarray  # [4, C] context effect
    # items
    item_category: np.ndarray  # [I]
    item_brand: np.ndarray  # [I]
    price: np.ndarray  # [I] float32
    price_z: np.ndarray  # [I] standardised log price
    popularity: np.ndarray  # [I] log popularity (the confounder)
    brand_quality: np.ndarray  # [B]
    item_latent: np.ndarray  # [I, d]
    visual: np.ndarray  # [I, 6] visual attributes in [0, 1] (VISUAL_ATTRIBUTES)
    visual_features: np.ndarray  # [I, 6] centred features of `visual` that drive appeal
    rec_error: np.ndarray  # [I] the rec model's fixed error
    item_pretrained: np.ndarray  # [I, p] noisy external view of `item_latent`
    items_by_category: np.ndarray  # item ids sorted by category
    item_category_offsets: np.ndarray  # [C + 1] into items_by_category
    has_ads: np.ndarray  # [I] bool
    # ads (creation order) and campaigns
    ad_item: np.ndarray  # [A]
    ad_campaign: np.ndarray  # [A]
    bid: np.ndarray  # [A] float32
    created_at: np.ndarray  # [A] seconds relative to timeline.start_time (sorted)
    quality: np.ndarray  # [A] creative quality (click driver)
    landing_quality: np.ndarray  # [A] conversion driver
    prod_error: np.ndarray  # [A] the production model's fixed error
    prior_impressions: np.ndarray  # [A] ad-level stats before the simulation
    prior_clicks: np.ndarray  # [A]
    ads_by_category: np.ndarray  # ad ids sorted by their item's category
    ad_category_offsets: np.ndarray  # [C + 1]
    campaign_item: np.ndarray  # [num_campaigns]

    @property
    def num_users(self) -> int:
        return len(self.activity)

    @property
    def num_items(self) -> int:
        return len(self.item_category)

    @property
    def num_ads(self) -> int:
        return len(self.ad_item)


def build_world(cfg: SimulatorConfig) -> World:
    rng = np.random.default_rng([cfg.seed, 0])
    d, nu, ni, na = cfg.latent_dim, cfg.num_users, cfg.num_items, cfg.num_ads
    uc, ic, ac, ck = cfg.users, cfg.items, cfg.ads, cfg.click
    C = ic.num_categories

    # --- users: profile, activity (HDA Fig. 1 long tail), interests ---
    cardinalities = (len(AGE_BUCKETS), len(uc.gender_probs), uc.num_cities, len(uc.device_probs),
                     uc.num_occupations)
    probs = (_normalise(uc.age_probs), _normalise(uc.gender_probs), _zipf(uc.num_cities, uc.city_zipf),
             _normalise(uc.device_probs), _zipf(uc.num_occupations, uc.occupation_zipf))
    profile = np.stack([rng.choice(n, nu, p=p) for n, p in zip(cardinalities, probs)], axis=1)
    activity = rng.lognormal(0.0, uc.activity_sigma, nu)
    is_head = activity >= np.quantile(activity, 1.0 - uc.head_fraction)
    # group interest: one vector per profile value, summed over the five fields (GPRec's groups)
    field_scale = uc.profile_interest_scale / np.sqrt(len(cardinalities) * d)
    interest = sum(rng.normal(0.0, field_scale, (n, d))[profile[:, f]] for f, n in enumerate(cardinalities))
    interest = interest + rng.normal(0.0, uc.personal_interest_scale / np.sqrt(d), (nu, d))
    tail_shift = rng.normal(size=d)
    interest = interest + np.outer(~is_head, uc.tail_interest_shift * tail_shift / np.linalg.norm(tail_shift))
    rho = cfg.conversion.interest_corr
    cvr_interest = rho * interest + np.sqrt(1 - rho ** 2) * rng.normal(0.0, interest.std(), (nu, d))
    global_taste = rng.normal(0.0, 1.0 / np.sqrt(6), 6)
    visual_taste = global_taste + rng.normal(0.0, uc.visual_taste_noise / np.sqrt(6), (nu, 6))
    price_sensitivity = (np.where(is_head, uc.price_sensitivity_head, uc.price_sensitivity_tail)
                         + rng.normal(0.0, uc.price_sensitivity_noise, nu))

    # --- items: category, brand, price, popularity, latent, visual attributes ---
    category_centers = rng.normal(0.0, 1.0 / np.sqrt(d), (C, d))
    item_category = rng.choice(C, ni, p=_zipf(C, ic.category_zipf))
    brand_category = np.concatenate([np.arange(C), rng.integers(0, C, ic.num_brands - C)])
    brands_by_category, brand_offsets = _group(brand_category, C)
    item_brand = brands_by_category[uniform_in_group(rng, brand_offsets, item_category)]
    brand_quality = rng.normal(0.0, ic.brand_quality_sigma, ic.num_brands)
    log_price = (ic.price_log_mean + rng.normal(0.0, ic.price_category_sigma, C)[item_category]
                 + rng.normal(0.0, ic.price_item_sigma, ni))
    price = np.maximum(np.round(np.exp(log_price), 2), 0.01).astype(np.float32)
    price_z = (log_price - log_price.mean()) / max(log_price.std(), 1e-9)
    popularity = rng.normal(0.0, ic.popularity_sigma, ni)
    brand_offset = rng.normal(0.0, ic.brand_scale / np.sqrt(d), (ic.num_brands, d))
    item_latent = (category_centers[item_category] + brand_offset[item_brand]
                   + rng.normal(0.0, ic.item_noise_scale / np.sqrt(d), (ni, d)))
    prototype = rng.random((C, 6))
    visual = prototype[item_category] + rng.normal(0.0, ic.visual_noise, (ni, 6))
    visual[:, :2] %= 1.0  # hues are circular
    visual[:, 2:] = np.clip(visual[:, 2:], 0.0, 1.0)
    items_by_category, item_category_offsets = _group(item_category, C)

    # --- ads: campaigns for a subset of items; several creatives per campaign ---
    n_ad_items = int(np.clip(round(ac.ad_item_fraction * ni), 1, na))
    ad_items = rng.choice(ni, n_ad_items, replace=False)
    n_campaigns = int(np.clip(round(na / ac.ads_per_campaign), n_ad_items, na))
    campaign_item = np.concatenate([ad_items, rng.choice(ad_items, n_campaigns - n_ad_items)])
    ad_campaign = np.concatenate([np.arange(n_campaigns), rng.integers(0, n_campaigns, na - n_campaigns)])
    campaign_bid = rng.lognormal(ac.bid_log_mean, ac.bid_log_sigma, n_campaigns)
    prelaunch = rng.random(n_campaigns) < ac.prelaunch_fraction
    campaign_start = np.where(prelaunch, -rng.random(n_campaigns) * ac.max_prelaunch_days,
                              rng.random(n_campaigns) * cfg.timeline.days) * DAY
    created = np.floor(campaign_start[ad_campaign] + rng.random(na) * ac.launch_spread_days * DAY)
    created[np.argmin(created)] = min(created.min(), 0.0)  # at least one ad is live at the start
    bid = np.maximum(np.round(campaign_bid[ad_campaign] * rng.lognormal(0.0, ac.bid_ad_sigma, na), 2), 0.01)
    quality = rng.normal(0.0, ac.quality_sigma, na)
    landing_quality = rng.normal(0.0, ac.landing_quality_sigma, na)
    prod_error = rng.normal(0.0, cfg.ads_system.error_sigma, na)
    order = np.argsort(created, kind="stable")  # ad index = creation rank
    ad_campaign, created, bid = ad_campaign[order], created[order], bid[order]
    quality, landing_quality, prod_error = quality[order], landing_quality[order], prod_error[order]
    ad_item = campaign_item[ad_campaign]
    ads_by_category, ad_category_offsets = _group(item_category[ad_item], C)
    has_ads = np.zeros(ni, bool)
    has_ads[ad_item] = True
    # ad-level statistics accumulated before the simulation starts
    prior_impressions = rng.poisson(ac.prior_daily_impressions * np.maximum(-created, 0.0) / DAY)
    prior_p = sigmoid(ck.bias + ck.quality_weight * quality + ck.popularity_weight * popularity[ad_item]
                       + ck.brand_weight * brand_quality[item_brand[ad_item]])
    prior_clicks = rng.binomial(prior_impressions, prior_p)

    # --- pretrained embeddings: noisy views of the latents through one shared projection ---
    p = cfg.pretrained_dim
    q, _ = np.linalg.qr(rng.normal(size=(max(p, d), min(p, d))))
    proj = q if p >= d else q.T  # [p, d], orthonormal columns (p >= d) or rows (p < d)
    user_pretrained = interest @ proj.T
    user_pretrained += rng.normal(0.0, cfg.pretrained_noise * user_pretrained.std(), user_pretrained.shape)
    item_pretrained = item_latent @ proj.T
    item_pretrained += rng.normal(0.0, cfg.pretrained_noise * item_pretrained.std(), item_pretrained.shape)

    f32 = np.float32
    return World(
        profile=profile.astype(np.int32), activity=activity, is_head=is_head,
        interest=interest.astype(f32), cvr_interest=cvr_interest.astype(f32),
        visual_taste=visual_taste.astype(f32), price_sensitivity=price_sensitivity.astype(f32),
        user_pretrained=user_pretrained.astype(f32),
        category_centers=category_centers, daypart_category=rng.normal(0.0, ck.context_scale, (NUM_DAYPARTS, C)),
        item_category=item_category, item_brand=item_brand, price=price, price_z=price_z.astype(f32),
        popularity=popularity.astype(f32), brand_quality=brand_quality.astype(f32),
        item_latent=item_latent.astype(f32), visual=visual.astype(f32),
        visual_features=visual_features(visual).astype(f32),
        rec_error=rng.normal(0.0, cfg.rec_system.error_sigma, ni).astype(f32),
        item_pretrained=item_pretrained.astype(f32),
        items_by_category=items_by_category, item_category_offsets=item_category_offsets, has_ads=has_ads,
        ad_item=ad_item, ad_campaign=ad_campaign, bid=bid.astype(f32), created_at=created.astype(np.int64),
        quality=quality.astype(f32), landing_quality=landing_quality.astype(f32), prod_error=prod_error.astype(f32),
        prior_impressions=prior_impressions, prior_clicks=prior_clicks,
        ads_by_category=ads_by_category, ad_category_offsets=ad_category_offsets, campaign_item=campaign_item,
    )


def visual_features(visual: np.ndarray) -> np.ndarray:
    """Centred features of the visual attributes: hue directions, size, stripe density."""
    two_pi = 2.0 * np.pi
    return np.stack([np.cos(two_pi * visual[:, 0]), np.sin(two_pi * visual[:, 0]),
                     np.cos(two_pi * visual[:, 1]), np.sin(two_pi * visual[:, 1]),
                     2.0 * visual[:, 2] - 1.0, 2.0 * visual[:, 5] - 1.0], axis=1)


def category_cdf(world: World, users: np.ndarray, temperature: float) -> np.ndarray:
    """[n, C] cumulative intent distribution softmax(T * <interest_u, category centre>)."""
    logits = temperature * (world.interest[users] @ world.category_centers.T)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    return cdf / cdf[:, -1:]


def sample_cdf(rng: np.random.Generator, cdf: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a [n, C] cumulative distribution."""
    u = rng.random((cdf.shape[0], 1))
    return np.minimum((cdf < u).sum(axis=1), cdf.shape[1] - 1)


def uniform_in_group(rng: np.random.Generator, offsets: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Positions of uniform draws within the given groups of a grouped array (groups non-empty)."""
    start = offsets[groups]
    size = offsets[groups + 1] - start
    return start + np.minimum((rng.random(np.shape(groups)) * size).astype(np.int64), np.maximum(size - 1, 0))


def _group(keys: np.ndarray, n: int):
    order = np.argsort(keys, kind="stable")
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(keys, minlength=n), out=offsets[1:])
    return order, offsets


def _zipf(n: int, s: float) -> np.ndarray:
    return _normalise(1.0 / np.arange(1, n + 1) ** s)


def _normalise(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return p / p.sum()


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))
