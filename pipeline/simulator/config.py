"""Every parameter of the ads-world simulator's generative model (see docs/simulator.md).

Loaded with :func:`pipeline.config.load_config`; an unknown or misspelt key, a value of the
wrong type or outside the range declared on its field fails, naming it.
Sizes and I/O sit at the top level; each part of the generative model has its own group.
"""
from __future__ import annotations

import dataclasses
from typing import List

from pipeline.config import ConfigError, option

FORMATS = ("parquet", "csv")

# Fixed vocabularies of the profile features (their probabilities are config options).
AGE_BUCKETS = ("<18", "18-24", "25-29", "30-34", "35-44", "45-54", "55+")
GENDERS = ("F", "M", "U")
DEVICES = ("android", "ios", "pc", "tablet")
# Visual attributes of an item's creative, in order (all in [0, 1]; the hues are circular).
VISUAL_ATTRIBUTES = ("bg_hue", "fg_hue", "radius", "center_x", "center_y", "stripes")


@dataclasses.dataclass
class UserModel:
    """Users: profile, heavy-tailed activity, interests (group + personal + tail shift)."""

    # lognormal sigma of session rates: top-20 % share = Phi(sigma - z_0.8) ~ 0.64
    activity_sigma: float = option(1.2, min=0)
    head_fraction: float = option(0.2, gt=0, lt=1)  # latent head users = the most active 20 % (HDA Def. 3.1)
    age_probs: List[float] = option(factory=lambda: [0.06, 0.22, 0.22, 0.18, 0.16, 0.10, 0.06],
                                    min=0, max=1, length=len(AGE_BUCKETS))
    gender_probs: List[float] = option(factory=lambda: [0.48, 0.48, 0.04], min=0, max=1, length=len(GENDERS))
    device_probs: List[float] = option(factory=lambda: [0.55, 0.30, 0.10, 0.05], min=0, max=1, length=len(DEVICES))
    num_cities: int = option(50, min=1)
    city_zipf: float = option(1.0, min=0)  # city popularity ~ rank^-city_zipf
    num_occupations: int = option(12, min=1)
    occupation_zipf: float = option(0.5, min=0)
    profile_interest_scale: float = option(0.6, min=0)  # norm of the profile-driven (group) interest
    personal_interest_scale: float = option(0.8, min=0)  # norm of the personal interest
    tail_interest_shift: float = option(0.8, min=0)  # norm of the shift shared by all long-tail users
    price_sensitivity_head: float = option(0.3, min=0)
    price_sensitivity_tail: float = option(0.9, min=0)
    price_sensitivity_noise: float = option(0.2, min=0)
    visual_taste_noise: float = option(0.5, min=0)  # per-user deviation from the global visual taste
    category_temperature: float = option(2.0, min=0)  # intent distribution = softmax(T * <interest, category centre>)


@dataclasses.dataclass
class ItemModel:
    """Organic items: category, brand, price, popularity, latent vector, visual attributes."""

    num_categories: int = option(30, min=1)
    category_zipf: float = option(0.8, min=0)  # category sizes ~ rank^-category_zipf
    num_brands: int = option(200, min=1)
    brand_scale: float = option(0.5, min=0)  # norm of a brand's offset from its category centre
    item_noise_scale: float = option(0.5, min=0)  # norm of an item's own offset
    price_log_mean: float = 3.5
    price_category_sigma: float = option(0.7, min=0)
    price_item_sigma: float = option(0.4, min=0)
    popularity_sigma: float = option(1.0, min=0)  # log-popularity ~ N(0, sigma): the confounder of Rec4Ad Sec. 1
    brand_quality_sigma: float = option(0.5, min=0)
    visual_noise: float = option(0.1, min=0)  # std of an item's visual attributes around its category prototype
    image_noise: float = option(0.02, min=0)  # pixel noise of the rendered creative (fraction of 255)


@dataclasses.dataclass
class AdModel:
    """Ads: campaigns for a subset of items, several creatives (ads) per campaign."""

    ad_item_fraction: float = option(0.5, gt=0, max=1)  # share of items that have ads
    ads_per_campaign: float = option(3.0, min=1)
    bid_log_mean: float = 0.0
    bid_log_sigma: float = option(0.8, min=0)  # campaign bids ~ lognormal: heavy-tailed, the ranking's main skew
    bid_ad_sigma: float = option(0.1, min=0)  # an ad's bid around its campaign's
    quality_sigma: float = option(0.4, min=0)  # creative quality (click driver)
    landing_quality_sigma: float = option(0.5, min=0)  # landing-page quality (conversion driver)
    prelaunch_fraction: float = option(0.8, gt=0, max=1)  # share of campaigns launched before the simulation starts
    max_prelaunch_days: float = option(60.0, min=0)
    launch_spread_days: float = option(2.0, min=0)  # an ad is created up to this long after its campaign starts
    prior_daily_impressions: float = option(20.0, min=0)  # ad-level stats before the simulation (ads.parquet)


@dataclasses.dataclass
class TimelineConfig:
    """When sessions happen: visits of several sessions, a diurnal rate, drifting intents."""

    start_time: int = option(1704067200, min=0)  # 2024-01-01 00:00 UTC
    days: float = option(14.0, gt=0)
    sessions_per_visit: float = option(3.0, min=1)  # mean; sessions of a visit are minutes apart
    session_gap_seconds: float = option(90.0, min=0)  # mean gap between sessions of one visit
    diurnal_amplitude: float = option(0.6, min=0, lt=1)  # hourly rate ~ 1 + a * cos(2 pi (hour - peak) / 24)
    peak_hour: float = option(21.0, min=0, lt=24)
    intent_halflife_seconds: float = option(7200.0, gt=0)  # P(intent kept over dt) = 2^(-dt / halflife)
    exposure_window_seconds: int = option(86400, min=0)  # window of exposure_count (repeated exposure)


@dataclasses.dataclass
class ClickModel:
    """Ground truth p(click | user, item, creative, context, position, exposure): one logistic
    model for ads and organic items alike (Rec4Ad's shared decision rationales): the source
    enters only through the ad creative's terms (quality, novelty), which are 0 for organic items."""

    bias: float = -3.6  # the same intercept for ads and organic (rec) items
    interest_weight: float = 1.2  # * <user interest, item latent>
    intent_weight: float = 1.0  # * [item category == the session's intent]
    visual_weight: float = 0.6  # * <user visual taste, visual features of the creative>
    price_weight: float = 0.5  # * -price_sensitivity * standardised log price
    popularity_weight: float = 0.15  # * log popularity (weak true effect of the confounder)
    brand_weight: float = 0.3  # * brand quality
    quality_weight: float = 1.0  # * ad creative quality (mean 0; 0 for organic items)
    context_scale: float = option(0.2, min=0)  # std of the daypart x category effects
    evening_boost: float = 0.15  # hours 18-23
    weekend_boost: float = 0.1
    device_effects: List[float] = option(factory=lambda: [0.0, 0.1, -0.3, 0.05], length=len(DEVICES))
    position_bias: float = 0.5  # - position_bias * log2(position)
    fatigue_weight: float = 0.5  # - fatigue_weight * log1p(exposure_count)
    novelty_weight: float = 0.3  # + novelty_weight * exp(-ad_age_days / novelty_days) (0 for organic items)
    novelty_days: float = option(7.0, gt=0)


@dataclasses.dataclass
class ConversionModel:
    """p(conversion | click): partly different drivers from the click (STEM/AME tasks)."""

    bias: float = -2.3
    interest_corr: float = option(0.5, min=0, max=1)  # correlation of the conversion interest with the click interest
    interest_weight: float = 1.0
    price_weight: float = 0.8
    brand_weight: float = 0.8
    landing_weight: float = 0.8  # * ad landing-page quality (not a click driver)
    age_weight: float = 0.3  # * standardised age bucket (older users convert more)


@dataclasses.dataclass
class AdsSystemConfig:
    """The production ads system: ranks candidates by a biased pCTR x bid (Rec4Ad Eq. 1)."""

    slots: int = option(3, min=1)  # ads shown per session (positions 1..slots)
    candidates: int = option(30, min=1)  # retrieved candidates per session
    retarget_candidates: int = option(6, min=0)  # of which drawn from the user's retargeting pool
    intent_candidates: int = option(6, min=0)  # of which drawn from the session intent's category
    retarget_pool_size: int = option(8, min=1)  # ads targeted at a user (drawn from their preferred categories)
    popularity_bias: float = 0.6  # production pCTR over-rates popular items
    error_sigma: float = option(0.5, min=0)  # std of the production model's fixed per-ad error
    cold_start_penalty: float = option(1.0, min=0)  # production pCTR under-rates new ads ...
    cold_start_days: float = option(3.0, gt=0)  # ... by penalty * exp(-age / days)
    bid_exponent: float = 1.0  # score = pCTR * bid^exponent * pacing
    pacing_sigma: float = option(0.5, min=0)  # per-request budget pacing: pacing = exp(pacing_sigma * N(0, 1))


@dataclasses.dataclass
class RecSystemConfig:
    """The recommendation system: organic items ranked by its own pCTR (no bid) + exploration."""

    slots: int = option(10, min=1)
    candidates: int = option(40, min=1)
    # candidates retrieved from the session intent's category
    intent_candidate_fraction: float = option(0.5, min=0, max=1)
    error_sigma: float = option(0.5, min=0)  # std of the rec model's fixed per-item error
    explore_scale: float = option(0.3, min=0)  # Gumbel noise scale added to its ranking score


@dataclasses.dataclass
class RandomPolicyConfig:
    """A small random-policy ads log: uniform display among eligible ads (Rec4Ad Sec. 4.1)."""

    slots: int = option(3, min=1)
    candidates: int = option(30, min=1)  # uniformly retrieved eligible ads; `slots` of them shown at random
    start_fraction: float = option(0.9, min=0, lt=1)  # the random traffic runs in the last 10 % of the timeline


@dataclasses.dataclass
class SimulatorConfig:
    seed: int = option(2024, min=0)
    out_dir: str = "demo_out/raw"
    format: str = option("parquet", choices=FORMATS)  # parquet | csv
    shard_rows: int = option(50000, min=1)  # rows per output shard
    chunk_rows: int = option(100000, min=1)  # rows generated per user chunk (bounds memory)
    num_users: int = option(5000, min=1)
    num_items: int = option(2000, min=1)
    num_ads: int = option(6000, min=1)
    num_impressions: int = option(200000, min=0)  # rows of the production ads log
    rec_impressions: int = option(140000, min=0)  # ~48 % survive Rec4Ad retrieval: ~34 % of the ads log
    random_impressions: int = option(20000, min=0)
    seq_max_len: int = option(20, min=1)  # behaviour-sequence length (most recent clicks)
    latent_dim: int = option(16, min=1)
    pretrained_dim: int = option(16, min=1)
    pretrained_noise: float = option(0.5, min=0)  # noise of the pretrained views, relative to the latent's std
    image_size: int = option(32, min=1)
    users: UserModel = dataclasses.field(default_factory=UserModel)
    items: ItemModel = dataclasses.field(default_factory=ItemModel)
    ads: AdModel = dataclasses.field(default_factory=AdModel)
    timeline: TimelineConfig = dataclasses.field(default_factory=TimelineConfig)
    click: ClickModel = dataclasses.field(default_factory=ClickModel)
    conversion: ConversionModel = dataclasses.field(default_factory=ConversionModel)
    ads_system: AdsSystemConfig = dataclasses.field(default_factory=AdsSystemConfig)
    rec_system: RecSystemConfig = dataclasses.field(default_factory=RecSystemConfig)
    random_policy: RandomPolicyConfig = dataclasses.field(default_factory=RandomPolicyConfig)

    def __post_init__(self):
        """Checks across options (each option's own range is declared on its field)."""
        _check(self.items.num_brands >= self.items.num_categories,
               "items.num_brands must be >= items.num_categories")
        for group in ("ads_system", "rec_system", "random_policy"):
            g = getattr(self, group)
            _check(g.slots <= g.candidates, f"{group}: need 1 <= slots <= candidates")
        s = self.ads_system
        _check(s.retarget_candidates + s.intent_candidates <= s.candidates,
               "ads_system: retarget_candidates + intent_candidates must be <= candidates")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"simulator config: {message}")
