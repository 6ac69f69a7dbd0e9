"""Arrow tables of the impression logs and the side tables (users, items, ads, pretrained).

String columns are made by ``take`` from small per-entity string arrays, list columns
from offsets + flat values: no per-row Python.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.simulator.chunk import ChunkResult, LogRows
from pipeline.simulator.clicks import hour_weekday
from pipeline.simulator.config import AGE_BUCKETS, DEVICES, GENDERS, VISUAL_ATTRIBUTES, SimulatorConfig
from pipeline.simulator.world import DAY, World


def ids(prefix: str, n: int) -> pa.Array:
    """["<prefix>0", "<prefix>1", ...] as an Arrow string array."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n)), pa.string()), "")


class Names:
    """String values of every categorical column, indexed by the integer codes."""

    def __init__(self, world: World, cfg: SimulatorConfig):
        self.user = ids("u", world.num_users)
        self.item = ids("i", world.num_items)
        self.ad = ids("a", world.num_ads)
        self.campaign = ids("c", len(world.campaign_item))
        self.category = ids("cat", cfg.items.num_categories)
        self.brand = ids("b", cfg.items.num_brands)
        self.profile = [pa.array(AGE_BUCKETS), pa.array(GENDERS), ids("city", cfg.users.num_cities),
                        pa.array(DEVICES), ids("occ", cfg.users.num_occupations)]


PROFILE_COLUMNS = ("age_bucket", "gender", "city", "device", "occupation")


def log_table(rows: LogRows, chunk: ChunkResult, world: World, names: Names, cfg: SimulatorConfig,
              source: str, policy: str) -> pa.Table:
    """One chunk of one impression log with every column of docs/simulator.md."""
    n = len(rows.item)
    is_ad = source == "ad"
    ts = cfg.timeline.start_time + np.floor(rows.t_rel).astype(np.int64)
    hour, weekday = hour_weekday(rows.t_rel, cfg.timeline.start_time)
    cols = {"impression_id": pa.array(rows.impression_id), "user_id": names.user.take(rows.user)}
    for f, name in enumerate(PROFILE_COLUMNS):
        cols[name] = names.profile[f].take(world.profile[rows.user, f])
    cols.update(
        item_id=names.item.take(rows.item),
        category=names.category.take(world.item_category[rows.item]),
        brand=names.brand.take(world.item_brand[rows.item]),
        price=pa.array(world.price[rows.item]),
    )
    if is_ad:
        cols.update(
            ad_id=names.ad.take(rows.ad),
            campaign_id=names.campaign.take(world.ad_campaign[rows.ad]),
            bid=pa.array(world.bid[rows.ad]),
            ad_age_days=pa.array((np.maximum(rows.t_rel - world.created_at[rows.ad], 0.0) / DAY).astype(np.float32)),
        )
    else:
        cols.update(ad_id=pa.nulls(n, pa.string()), campaign_id=pa.nulls(n, pa.string()),
                    bid=pa.nulls(n, pa.float32()), ad_age_days=pa.nulls(n, pa.float32()))
    hist_items = chunk.click_item[rows.hist_index]
    hist_ts = chunk.click_ts[rows.hist_index]
    offsets = pa.array(rows.hist_offsets)
    cols.update(
        session_id=pa.array(rows.session_id),
        position=pa.array(rows.position.astype(np.int64)),
        timestamp=pa.array(ts),
        hour=pa.array(hour),
        weekday=pa.array(weekday),
        exposure_count=pa.array(rows.exposure_count),
        hist_category=pa.ListArray.from_arrays(offsets, names.category.take(world.item_category[hist_items])),
        hist_item=pa.ListArray.from_arrays(offsets, names.item.take(hist_items)),
        hist_ts=pa.ListArray.from_arrays(offsets, pa.array(hist_ts)),
        # seconds from each behaviour to this impression (>= 1: behaviours are strictly earlier): unlike
        # epoch seconds, float32 (the sequence_float encoding) holds them to the second
        hist_gap=pa.ListArray.from_arrays(offsets, pa.array(np.repeat(ts, np.diff(rows.hist_offsets)) - hist_ts)),
        user_pretrained=_vectors(world.user_pretrained[rows.user]),
        item_pretrained=_vectors(world.item_pretrained[rows.item]),
        click=pa.array(rows.click),
        conversion=pa.array(rows.conversion),
        true_ctr=pa.array(rows.true_ctr),
        true_cvr=pa.array(rows.true_cvr),
        source=_constant(source, n),
        policy=_constant(policy, n),
    )
    return pa.table(cols)


def users_table(world: World, names: Names, ad_impressions: np.ndarray) -> pa.Table:
    cols = {"user_id": names.user}
    for f, name in enumerate(PROFILE_COLUMNS):
        cols[name] = names.profile[f].take(world.profile[:, f])
    cols.update(activity=pa.array(world.activity), is_head=pa.array(world.is_head),
                price_sensitivity=pa.array(world.price_sensitivity),
                interest=_vectors(world.interest), cvr_interest=_vectors(world.cvr_interest),
                visual_taste=_vectors(world.visual_taste), ad_impressions=pa.array(ad_impressions))
    return pa.table(cols)


def items_table(world: World, names: Names) -> pa.Table:
    cols = {"item_id": names.item, "category": names.category.take(world.item_category),
            "brand": names.brand.take(world.item_brand), "price": pa.array(world.price),
            "popularity": pa.array(world.popularity),
            "brand_quality": pa.array(world.brand_quality[world.item_brand]),
            "has_ads": pa.array(world.has_ads), "latent": _vectors(world.item_latent)}
    for j, name in enumerate(VISUAL_ATTRIBUTES):
        cols[f"visual_{name}"] = pa.array(world.visual[:, j])
    cols["visual"] = _vectors(world.visual)
    return pa.table(cols)


def ads_table(world: World, names: Names, cfg: SimulatorConfig, stats: dict) -> pa.Table:
    """Ads with their latent ground truth, pre-simulation stats and logged impression ratios."""
    prior_ctr = np.where(world.prior_impressions > 0, world.prior_clicks / np.maximum(world.prior_impressions, 1),
                         np.nan)
    cols = {"ad_id": names.ad, "campaign_id": names.campaign.take(world.ad_campaign),
            "item_id": names.item.take(world.ad_item),
            "category": names.category.take(world.item_category[world.ad_item]),
            "bid": pa.array(world.bid), "created_at": pa.array(cfg.timeline.start_time + world.created_at),
            "quality": pa.array(world.quality), "landing_quality": pa.array(world.landing_quality),
            "production_error": pa.array(world.prod_error),
            "prior_impressions": pa.array(world.prior_impressions),
            "prior_clicks": pa.array(world.prior_clicks),
            "prior_ctr": pa.array(prior_ctr, mask=np.isnan(prior_ctr))}
    cols.update({k: pa.array(v) for k, v in stats.items()})
    return pa.table(cols)


def pretrained_table(key: str, id_array: pa.Array, vectors: np.ndarray) -> pa.Table:
    return pa.table({key: id_array, "embedding": _vectors(vectors)})


def _vectors(x: np.ndarray) -> pa.Array:
    """[n, k] float matrix -> list<float32> column."""
    n, k = x.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * k),
                                    pa.array(np.ascontiguousarray(x, dtype=np.float32).ravel()))


def _constant(value: str, n: int) -> pa.Array:
    return pa.array([value]).take(np.zeros(n, np.int64))
