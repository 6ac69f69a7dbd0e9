"""``simulate``: the world, then every user chunk streamed into sharded logs, then the
side tables and ``summary.json`` (the checks of docs/simulator.md in numbers)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import time
from typing import Dict

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from features import outputs
from pipeline.simulator import premises, tables
from pipeline.simulator.chunk import LOGS, LogRows, make_plan, simulate_chunk
from pipeline.simulator.clicks import GroundTruth
from pipeline.simulator.config import SimulatorConfig
from pipeline.simulator.images import render_images
from pipeline.simulator.writer import ShardWriter
from pipeline.simulator.world import World, build_world


def simulate(config: SimulatorConfig, progress: bool = True, overwrite: bool = False) -> dict:
    """Writes the three impression logs and the side tables under ``config.out_dir``;
    returns (and writes as summary.json) row counts, skew and CTR statistics, timing.

    The folder is written atomically (``features.outputs``): everything goes to a temp
    folder beside it that replaces ``out_dir`` only when complete. An existing ``out_dir``
    not written by simulate is refused unless ``overwrite``."""
    out = os.path.abspath(os.path.expanduser(config.out_dir))
    with outputs.atomic_output(out, "simulate", overwrite=overwrite) as tmp:
        return _simulate(config, tmp, out, progress)


def _simulate(cfg: SimulatorConfig, tmp: str, out: str, progress: bool) -> dict:
    """Write everything into ``tmp``; the summary names the paths they will have under ``out``."""
    start = time.perf_counter()
    world = build_world(cfg)
    gt = GroundTruth(world, cfg)
    plan = make_plan(cfg, world)
    names = tables.Names(world, cfg)
    sizes = {"ads": cfg.num_impressions, "rec": cfg.rec_impressions, "random": cfg.random_impressions}
    stats = _Stats(world, gt, sizes)
    total_shards = sum(max(1, -(-n // cfg.shard_rows)) for n in sizes.values())
    with tqdm(total=total_shards, unit="shard", desc="simulate", disable=not progress) as bar, \
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        writers = {name: ShardWriter(os.path.join(tmp, name), cfg.format, cfg.shard_rows, pool,
                                     lambda: bar.update(1)) for name, _, _ in LOGS}
        for c in range(len(plan.chunks)):
            result = simulate_chunk(gt, plan, c, np.random.default_rng([cfg.seed, 2, c]))
            for name, source, policy in LOGS:
                rows = result.logs[name]
                stats.add(name, rows)
                writers[name].append(tables.log_table(rows, result, world, names, cfg, source, policy))
        shards = {name: [_final(p, tmp, out) for p in w.close()] for name, w in writers.items()}
    log_seconds = time.perf_counter() - start

    images = render_images(world.visual, cfg.image_size, cfg.items.image_noise, np.random.default_rng([cfg.seed, 3]))
    paths = {name: os.path.join(tmp, f"{name}.parquet")
             for name in ("users", "items", "ads", "pretrained_user", "pretrained_item")}
    paths["item_images"] = os.path.join(tmp, "item_images.npy")
    np.save(paths["item_images"], images)
    pq.write_table(tables.users_table(world, names, stats.user_ad_impressions), paths["users"])
    pq.write_table(tables.items_table(world, names), paths["items"])
    pq.write_table(tables.ads_table(world, names, cfg, stats.ad_columns()), paths["ads"])
    pq.write_table(tables.pretrained_table("user_id", names.user, world.user_pretrained), paths["pretrained_user"])
    pq.write_table(tables.pretrained_table("item_id", names.item, world.item_pretrained), paths["pretrained_item"])

    seconds = time.perf_counter() - start
    total_rows = int(sum(sizes.values()))
    paths["summary"] = os.path.join(tmp, "summary.json")
    summary = {
        "out_dir": out, "format": cfg.format, "seed": cfg.seed,
        "shards": shards, "side_tables": {k: _final(p, tmp, out) for k, p in paths.items()},
        "rows": {name: int(stats.totals[name]["rows"]) for name in sizes},
        **stats.summary(world, cfg.users.head_fraction),
        "rec4ad_premises": stats.premises(cfg),
        "seconds": round(seconds, 3), "log_seconds": round(log_seconds, 3),
        "rows_per_second": round(total_rows / max(seconds, 1e-9), 1),
    }
    with open(paths["summary"], "w") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
    return summary


def _final(path: str, tmp: str, out: str) -> str:
    """Where ``path`` (under the temp folder ``tmp``) will be once ``out`` is swapped in."""
    return os.path.join(out, os.path.relpath(path, tmp))


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 = equal, -> 1 = concentrated)."""
    x = np.sort(np.asarray(x, np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1.0) / n)


def top_share(x: np.ndarray, fraction: float) -> float:
    """Share of the total held by the top ``fraction`` of entries (at least one entry)."""
    x = np.sort(np.asarray(x, np.float64))[::-1]
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    return float(x[:max(1, int(np.ceil(fraction * len(x))))].sum() / x.sum())


SOURCE_CHECK_ROWS = 40000  # about this many rows of each of the ads and rec logs enter the source regression


class _Stats:
    """Accumulates per-user, per-ad and per-log statistics over chunks, and a strided sample
    of ads and rec rows (the click model's terms) for the source-effect regression."""

    def __init__(self, world: World, gt: GroundTruth, sizes: Dict[str, int]):
        self.gt = gt
        self.stride = {n: max(1, -(-sizes[n] // SOURCE_CHECK_ROWS)) for n in ("ads", "rec")}
        self.sample: Dict[str, list] = {"terms": [], "is_rec": [], "click": []}
        self.first_ad_time = premises.first_ad_time(world.ad_item, world.created_at, world.num_items)
        self.rec_retrievable = 0
        self.user_ad_impressions = np.zeros(world.num_users, np.int64)
        self.ad_impressions = {n: np.zeros(world.num_ads, np.int64) for n in ("ads", "random")}
        self.ad_candidates = {n: np.zeros(world.num_ads, np.int64) for n in ("ads", "random")}
        self.ad_clicks = {n: np.zeros(world.num_ads, np.int64) for n in ("ads", "random")}
        self.item_rec_impressions = np.zeros(world.num_items, np.int64)
        self.totals: Dict[str, Dict[str, float]] = {
            n: dict(rows=0, clicks=0, conversions=0, true_ctr=0.0, true_cvr=0.0, repeated=0, hist_len=0)
            for n, _, _ in LOGS}

    def add(self, name: str, rows: LogRows) -> None:
        t = self.totals[name]
        t["rows"] += len(rows.item)
        t["clicks"] += int(rows.click.sum())
        t["conversions"] += int(rows.conversion.sum())
        t["true_ctr"] += float(rows.true_ctr.sum(dtype=np.float64))
        t["true_cvr"] += float((rows.true_cvr * rows.click).sum(dtype=np.float64))
        t["repeated"] += int((rows.exposure_count > 0).sum())
        t["hist_len"] += int(rows.hist_offsets[-1])
        if name in self.stride:
            self._sample(name, rows)
        if name == "rec":
            self.item_rec_impressions += np.bincount(rows.item, minlength=len(self.item_rec_impressions))
            self.rec_retrievable += int((self.first_ad_time[rows.item] <= rows.t_rel).sum())
            return
        n_ads = len(self.ad_impressions[name])
        self.ad_impressions[name] += np.bincount(rows.ad, minlength=n_ads)
        self.ad_clicks[name] += np.bincount(rows.ad, weights=rows.click, minlength=n_ads).astype(np.int64)
        self.ad_candidates[name] += np.bincount(rows.candidates, minlength=n_ads)
        if name == "ads":
            self.user_ad_impressions += np.bincount(rows.user, minlength=len(self.user_ad_impressions))

    def _sample(self, name: str, rows: LogRows) -> None:
        """Every ``stride``-th row's click-model terms, source and click."""
        take = slice(None, None, self.stride[name])
        self.sample["terms"].append(self.gt.click_terms(
            rows.user[take], rows.item[take], rows.ad[take], rows.t_rel[take], rows.intent_match[take],
            rows.position[take], rows.exposure_count[take]))
        self.sample["is_rec"].append(np.full(len(rows.item[take]), name == "rec"))
        self.sample["click"].append(rows.click[take])

    def premises(self, cfg: SimulatorConfig) -> dict:
        """Rec4Ad's premises in numbers (``premises``): IR groups, rec coverage, the share of
        the rec log sample retrieval can map, the source-effect regression."""
        world = self.gt.w
        out = {"ir_groups": premises.ir_groups(self.ad_impressions["ads"], self.ad_candidates["ads"],
                                               world.ad_item, self.item_rec_impressions)}
        if (self.ad_impressions["random"] > 0).sum() >= premises.IR_GROUPS:  # the uniform reference
            _, random_ir = premises.mean_ir_by_group(self.ad_impressions["random"], self.ad_candidates["random"])
            out["random_policy_mean_ir"] = [round(float(v), 6) for v in random_ir]
            out["random_policy_top_bottom_ir_ratio"] = round(float(random_ir[0] / random_ir[-1]), 2)
        rec_rows, ads_rows = self.totals["rec"]["rows"], self.totals["ads"]["rows"]
        out["rec_retrievable_rows"] = self.rec_retrievable
        out["rec_retrievable_share_of_rec"] = round(self.rec_retrievable / max(rec_rows, 1), 6)
        out["rec_retrievable_per_ads_row"] = round(self.rec_retrievable / max(ads_rows, 1), 6)
        is_rec = np.concatenate(self.sample["is_rec"])
        if is_rec.any() and not is_rec.all():
            weights = self.gt.click_weights()
            out["source_effect"] = premises.source_effect(
                np.concatenate(self.sample["terms"]), list(weights), is_rec,
                np.concatenate(self.sample["click"]), weights, cfg.click.bias)
        return out

    def ad_columns(self) -> Dict[str, np.ndarray]:
        """Logged ad-level statistics for ads.parquet, incl. the impression ratio (Rec4Ad Eq. 2)."""
        cols = {}
        for name, prefix in (("ads", ""), ("random", "random_")):
            cand = self.ad_candidates[name]
            cols[f"{prefix}candidate_sessions"] = cand
            cols[f"{prefix}impressions"] = self.ad_impressions[name]
            cols[f"{prefix}clicks"] = self.ad_clicks[name]
            cols[f"{prefix}impression_ratio"] = self.ad_impressions[name] / np.maximum(cand, 1)
        return cols

    def summary(self, world: World, head_fraction: float) -> dict:
        out = {}
        per_user = self.user_ad_impressions
        active = per_user[per_user > 0]
        out["head_user_share"] = top_share(active, head_fraction)  # HDA Fig. 1: top 20 % users' share
        out["latent_head_user_share"] = float(per_user[world.is_head].sum() / max(per_user.sum(), 1))
        for name in ("ads", "random"):
            seen = self.ad_candidates[name] > 0
            impressions = self.ad_impressions[name][seen]
            ratio = impressions / self.ad_candidates[name][seen]
            out[f"{name}_impression_gini"] = gini(impressions)
            out[f"{name}_top10_ad_share"] = top_share(impressions, 0.1)
            out[f"{name}_impression_ratio_gini"] = gini(ratio)
        out["rec_item_impression_gini"] = gini(self.item_rec_impressions)
        for name, t in self.totals.items():
            rows, clicks = max(t["rows"], 1), max(t["clicks"], 1)
            out[f"{name}_ctr"] = t["clicks"] / rows
            out[f"{name}_mean_true_ctr"] = t["true_ctr"] / rows
            out[f"{name}_cvr"] = t["conversions"] / clicks
            out[f"{name}_mean_true_cvr_of_clicks"] = t["true_cvr"] / clicks
            out[f"{name}_repeated_exposure_share"] = t["repeated"] / rows
            out[f"{name}_mean_hist_len"] = t["hist_len"] / rows
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}
