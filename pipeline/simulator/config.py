"""Every parameter of the ads-world simulator's generative model (see docs/simulator.md).

Loaded with :func:`pipeline.config.load_config`; an unknown or misspelt key fails.
Sizes and I/O sit at the top level; each part of the generative model has its own group.
"""
from __future__ import annotations

import dataclasses
from typing import List

from pipeline.config import ConfigError

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

    activity_sigma: float = 1.2  # lognormal sigma of session rates: top-20 % share = Phi(sigma - z_0.8) ~ 0.64
    head_fraction: float = 0.2  # latent head users = the most active 20 % (HDA Def. 3.1)
    age_probs: List[float] = dataclasses.field(
        default_factory=lambda: [0.06, 0.22, 0.22, 0.18, 0.16, 0.10, 0.06])
    gender_probs: List[float] = dataclasses.field(default_factory=lambda: [0.48, 0.48, 0.04])
    device_probs: List[float] = dataclasses.field(default_factory=lambda: [0.55, 0.30, 0.10, 0.05])
    num_cities: int = 50
    city_zipf: float = 1.0  # city popularity ~ rank^-city_zipf
    num_occupations: int = 12
    occupation_zipf: float = 0.5
    profile_interest_scale: float = 0.6  # norm of the profile-driven (group) interest
    personal_interest_scale: float = 0.8  # norm of the personal interest
    tail_interest_shift: float = 0.8  # norm of the shift shared by all long-tail users
    price_sensitivity_head: float = 0.3
    price_sensitivity_tail: float = 0.9
    price_sensitivity_noise: float = 0.2
    visual_taste_noise: float = 0.5  # per-user deviation from the global visual taste
    category_temperature: float = 2.0  # intent distribution = softmax(T * <interest, category centre>)


@dataclasses.dataclass
class ItemModel:
    """Organic items: category, brand, price, popularity, latent vector, visual attributes."""

    num_categories: int = 30
    category_zipf: float = 0.8  # category sizes ~ rank^-category_zipf
    num_brands: int = 200
    brand_scale: float = 0.5  # norm of a brand's offset from its category centre
    item_noise_scale: float = 0.5  # norm of an item's own offset
    price_log_mean: float = 3.5
    price_category_sigma: float = 0.7
    price_item_sigma: float = 0.4
    popularity_sigma: float = 1.0  # log-popularity ~ N(0, sigma): the confounder of Rec4Ad Sec. 1
    brand_quality_sigma: float = 0.5
    visual_noise: float = 0.1  # std of an item's visual attributes around its category prototype
    image_noise: float = 0.02  # pixel noise of the rendered creative (fraction of 255)


@dataclasses.dataclass
class AdModel:
    """Ads: campaigns for a subset of items, several creatives (ads) per campaign."""

    ad_item_fraction: float = 0.5  # share of items that have ads
    ads_per_campaign: float = 3.0
    bid_log_mean: float = 0.0
    bid_log_sigma: float = 0.8  # campaign bids ~ lognormal: heavy-tailed, the ranking's main skew
    bid_ad_sigma: float = 0.1  # an ad's bid around its campaign's
    quality_sigma: float = 0.4  # creative quality (click driver)
    landing_quality_sigma: float = 0.5  # landing-page quality (conversion driver)
    prelaunch_fraction: float = 0.8  # share of campaigns launched before the simulation starts
    max_prelaunch_days: float = 60.0
    launch_spread_days: float = 2.0  # an ad is created up to this long after its campaign starts
    prior_daily_impressions: float = 20.0  # ad-level stats before the simulation (ads.parquet)


@dataclasses.dataclass
class TimelineConfig:
    """When sessions happen: visits of several sessions, a diurnal rate, drifting intents."""

    start_time: int = 1704067200  # 2024-01-01 00:00 UTC
    days: float = 14.0
    sessions_per_visit: float = 3.0  # mean; sessions of a visit are minutes apart
    session_gap_seconds: float = 90.0  # mean gap between sessions of one visit
    diurnal_amplitude: float = 0.6  # hourly rate ~ 1 + a * cos(2 pi (hour - peak) / 24)
    peak_hour: float = 21.0
    intent_halflife_seconds: float = 7200.0  # P(intent kept over dt) = 2^(-dt / halflife)
    exposure_window_seconds: int = 86400  # window of exposure_count (repeated exposure)


@dataclasses.dataclass
class ClickModel:
    """Ground truth p(click | user, item, ad, context, position, exposure): a logistic model."""

    ad_bias: float = -3.6
    rec_bias: float = -2.9
    interest_weight: float = 1.2  # * <user interest, item latent>
    intent_weight: float = 1.0  # * [item category == the session's intent]
    visual_weight: float = 0.6  # * <user visual taste, visual features of the creative>
    price_weight: float = 0.5  # * -price_sensitivity * standardised log price
    popularity_weight: float = 0.15  # * log popularity (weak true effect of the confounder)
    brand_weight: float = 0.3  # * brand quality
    quality_weight: float = 1.0  # * ad creative quality
    context_scale: float = 0.2  # std of the daypart x category effects
    evening_boost: float = 0.15  # hours 18-23
    weekend_boost: float = 0.1
    device_effects: List[float] = dataclasses.field(default_factory=lambda: [0.0, 0.1, -0.3, 0.05])
    position_bias: float = 0.5  # - position_bias * log2(position)
    fatigue_weight: float = 0.5  # - fatigue_weight * log1p(exposure_count)
    novelty_weight: float = 0.3  # + novelty_weight * exp(-ad_age_days / novelty_days)
    novelty_days: float = 7.0


@dataclasses.dataclass
class ConversionModel:
    """p(conversion | click): partly different drivers from the click (STEM/AME tasks)."""

    bias: float = -2.3
    interest_corr: float = 0.5  # correlation of the conversion interest with the click interest
    interest_weight: float = 1.0
    price_weight: float = 0.8
    brand_weight: float = 0.8
    landing_weight: float = 0.8  # * ad landing-page quality (not a click driver)
    age_weight: float = 0.3  # * standardised age bucket (older users convert more)


@dataclasses.dataclass
class AdsSystemConfig:
    """The production ads system: ranks candidates by a biased pCTR x bid (Rec4Ad Eq. 1)."""

    slots: int = 3  # ads shown per session (positions 1..slots)
    candidates: int = 30  # retrieved candidates per session
    retarget_candidates: int = 6  # of which drawn from the user's retargeting pool
    intent_candidates: int = 6  # of which drawn from the session intent's category
    retarget_pool_size: int = 8  # ads targeted at a user (drawn from their preferred categories)
    popularity_bias: float = 0.6  # production pCTR over-rates popular items
    error_sigma: float = 0.5  # std of the production model's fixed per-ad error
    cold_start_penalty: float = 1.0  # production pCTR under-rates new ads ...
    cold_start_days: float = 3.0  # ... by penalty * exp(-age / days)
    bid_exponent: float = 1.0  # score = pCTR * bid^exponent * pacing
    pacing_sigma: float = 0.5  # per-request budget pacing: pacing = exp(pacing_sigma * N(0, 1))


@dataclasses.dataclass
class RecSystemConfig:
    """The recommendation system: organic items ranked by its own pCTR (no bid) + exploration."""

    slots: int = 10
    candidates: int = 40
    intent_candidate_fraction: float = 0.5  # candidates retrieved from the session intent's category
    error_sigma: float = 0.5  # std of the rec model's fixed per-item error
    explore_scale: float = 0.3  # Gumbel noise scale added to its ranking score


@dataclasses.dataclass
class RandomPolicyConfig:
    """A small random-policy ads log: uniform display among eligible ads (Rec4Ad Sec. 4.1)."""

    slots: int = 3
    candidates: int = 30  # uniformly retrieved eligible ads; `slots` of them shown at random
    start_fraction: float = 0.9  # the random traffic runs in the last 10 % of the timeline


@dataclasses.dataclass
class SimulatorConfig:
    seed: int = 2024
    out_dir: str = "demo_out/raw"
    format: str = "parquet"  # parquet | csv
    shard_rows: int = 50000  # rows per output shard
    chunk_rows: int = 100000  # rows generated per user chunk (bounds memory)
    num_users: int = 5000
    num_items: int = 2000
    num_ads: int = 6000
    num_impressions: int = 200000  # rows of the production ads log
    rec_impressions: int = 20000
    random_impressions: int = 20000
    seq_max_len: int = 20  # behaviour-sequence length (most recent clicks)
    latent_dim: int = 16
    pretrained_dim: int = 16
    pretrained_noise: float = 0.5  # noise of the pretrained views, relative to the latent's std
    image_size: int = 32
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
        _check(self.format in FORMATS, f"format '{self.format}' not in {FORMATS}")
        for name in ("num_users", "num_items", "num_ads", "shard_rows", "chunk_rows", "seq_max_len",
                     "latent_dim", "pretrained_dim", "image_size"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_impressions", "rec_impressions", "random_impressions"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        u, it, a, tl = self.users, self.items, self.ads, self.timeline
        _check(len(u.age_probs) == len(AGE_BUCKETS), f"users.age_probs needs {len(AGE_BUCKETS)} values")
        _check(len(u.gender_probs) == len(GENDERS), f"users.gender_probs needs {len(GENDERS)} values")
        _check(len(u.device_probs) == len(DEVICES), f"users.device_probs needs {len(DEVICES)} values")
        _check(len(self.click.device_effects) == len(DEVICES),
               f"click.device_effects needs {len(DEVICES)} values ({DEVICES})")
        _check(0 < u.head_fraction < 1, "users.head_fraction must be in (0, 1)")
        _check(u.num_cities >= 1 and u.num_occupations >= 1, "users.num_cities/num_occupations must be >= 1")
        _check(it.num_categories >= 1 and it.num_brands >= it.num_categories,
               "items.num_brands must be >= items.num_categories >= 1")
        _check(0 < a.ad_item_fraction <= 1, "ads.ad_item_fraction must be in (0, 1]")
        _check(a.ads_per_campaign >= 1, "ads.ads_per_campaign must be >= 1")
        _check(0 < a.prelaunch_fraction <= 1, "ads.prelaunch_fraction must be in (0, 1]")
        _check(tl.days > 0 and tl.sessions_per_visit >= 1, "timeline.days > 0 and sessions_per_visit >= 1")
        _check(0 <= tl.diurnal_amplitude < 1, "timeline.diurnal_amplitude must be in [0, 1)")
        _check(0 <= self.conversion.interest_corr <= 1, "conversion.interest_corr must be in [0, 1]")
        for group in ("ads_system", "rec_system", "random_policy"):
            g = getattr(self, group)
            _check(1 <= g.slots <= g.candidates, f"{group}: need 1 <= slots <= candidates")
        s = self.ads_system
        _check(min(s.retarget_candidates, s.intent_candidates) >= 0
               and s.retarget_candidates + s.intent_candidates <= s.candidates,
               "ads_system: retarget_candidates + intent_candidates must be <= candidates")
        _check(s.retarget_pool_size >= 1, "ads_system.retarget_pool_size must be >= 1")
        _check(0 <= self.rec_system.intent_candidate_fraction <= 1,
               "rec_system.intent_candidate_fraction must be in [0, 1]")
        _check(0 <= self.random_policy.start_fraction < 1, "random_policy.start_fraction must be in [0, 1)")
        _check(tl.exposure_window_seconds >= 0, "timeline.exposure_window_seconds must be >= 0")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"simulator config: {message}")
