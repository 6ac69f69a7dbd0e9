"""One user chunk of the simulation: every session of these users in all three systems,
merged on one timeline, with exposures, clicks, conversions and behaviour sequences.

All users' sessions are generated at once and sorted by (user, time), so a user's
history (their earlier clicks, in any system) and exposure counts are computed with
sorts and binary searches over the chunk, never per row.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import numpy as np

from pipeline.simulator import systems
from pipeline.simulator.clicks import GroundTruth
from pipeline.simulator.config import SimulatorConfig
from pipeline.simulator.timeline import allocate_sessions, session_intents, session_times
from pipeline.simulator.world import World, category_cdf, sigmoid

# name, source, policy of the three logs, in the order the plan stores them
LOGS = (("ads", "ad", "production"), ("rec", "rec", "production"), ("random", "ad", "random"))
_TIME_KEY = np.int64(1) << 32  # (user, second) packed into one sortable int64


@dataclasses.dataclass
class Plan:
    """Global allocation, fixed before any chunk runs (so chunks are independent)."""

    counts: np.ndarray  # [3, U] sessions per log and user
    slots: List[int]  # per log
    deficit: List[int]  # per log: its first `deficit` sessions show slots - 1 items
    windows: List[Tuple[float, float]]  # per log: session times [lo, hi) after start_time
    chunks: List[Tuple[int, int]]  # user ranges
    id_base: List[int]  # per log: first impression_id

    def sessions_before(self, chunk: int) -> np.ndarray:
        """[3] sessions of each log in the chunks before ``chunk``."""
        return self.counts[:, :self.chunks[chunk][0]].sum(axis=1)

    def rows_before(self, chunk: int) -> np.ndarray:
        before = self.sessions_before(chunk)
        return before * np.asarray(self.slots) - np.minimum(self.deficit, before)


@dataclasses.dataclass
class LogRows:
    """Rows of one log in one chunk, as numpy columns (session-major, position order)."""

    impression_id: np.ndarray
    user: np.ndarray
    item: np.ndarray
    ad: np.ndarray  # -1 for organic
    session_id: np.ndarray
    position: np.ndarray
    t_rel: np.ndarray  # seconds after start_time (float)
    exposure_count: np.ndarray
    intent_match: np.ndarray  # latent: the item's category is the session's intent (a click driver)
    click: np.ndarray
    conversion: np.ndarray
    true_ctr: np.ndarray
    true_cvr: np.ndarray
    hist_offsets: np.ndarray  # [n + 1] int32 into hist_index
    hist_index: np.ndarray  # indices into the chunk's clicks (ChunkResult.click_*)
    candidates: np.ndarray  # distinct candidate ads of every session (empty for rec)


@dataclasses.dataclass
class ChunkResult:
    """The chunk's three logs and its clicks, which their behaviour sequences index."""

    logs: Dict[str, LogRows]
    click_item: np.ndarray  # the chunk's clicks in (user, time) order
    click_ts: np.ndarray  # absolute seconds


def make_plan(cfg: SimulatorConfig, world: World) -> Plan:
    rng = np.random.default_rng([cfg.seed, 1])
    horizon = cfg.timeline.days * 86400.0
    sizes = (cfg.num_impressions, cfg.rec_impressions, cfg.random_impressions)
    slots = [cfg.ads_system.slots, cfg.rec_system.slots, cfg.random_policy.slots]
    counts, deficit = [], []
    for rows, k in zip(sizes, slots):
        c, d = allocate_sessions(rows, k, world.activity, rng)
        counts.append(c)
        deficit.append(d)
    counts = np.stack(counts)
    windows = [(0.0, horizon), (0.0, horizon), (cfg.random_policy.start_fraction * horizon, horizon)]
    cum = np.cumsum(counts.T @ np.asarray(slots))
    n_chunks = max(1, int(-(-cum[-1] // cfg.chunk_rows)))
    cuts = np.unique(np.searchsorted(cum, np.arange(1, n_chunks) * cfg.chunk_rows, side="left") + 1)
    edges = [0] + [int(c) for c in cuts if 0 < c < world.num_users] + [world.num_users]
    id_base = [0, sizes[0], sizes[0] + sizes[1]]
    return Plan(counts, slots, deficit, windows, list(zip(edges[:-1], edges[1:])), id_base)


def simulate_chunk(gt: GroundTruth, plan: Plan, chunk: int, rng: np.random.Generator) -> ChunkResult:
    w, cfg = gt.w, gt.cfg
    u0, u1 = plan.chunks[chunk]
    cdf = category_cdf(w, np.arange(u0, u1), cfg.users.category_temperature)

    # sessions of every log on one timeline, sorted by (user, time)
    parts = [session_times(plan.counts[s, u0:u1], lo, hi, cfg.timeline, rng) for s, (lo, hi) in enumerate(plan.windows)]
    user = np.concatenate([p[0] for p in parts])
    t = np.concatenate([p[1] for p in parts])
    log = np.concatenate([np.full(len(p[0]), s) for s, p in enumerate(parts)])
    order = np.lexsort((log, t, user))
    user, t, log = user[order], t[order], log[order]
    intent = session_intents(user, t, cdf, cfg.timeline.intent_halflife_seconds, rng)

    # each system shows its sessions' slots
    sessions_before = plan.sessions_before(chunk)
    shown, session_of = [], []
    for s in range(len(LOGS)):
        idx = np.flatnonzero(log == s)
        slots = np.full(len(idx), plan.slots[s])
        slots[sessions_before[s] + np.arange(len(idx)) < plan.deficit[s]] -= 1
        users, times = u0 + user[idx], t[idx]
        if s == 0:
            pools = systems.retarget_pools(w, cdf, cfg.ads_system.retarget_pool_size, rng)
            disp = systems.production_ads(gt, users, times, intent[idx], pools[user[idx]], slots, rng)
        elif s == 1:
            disp = systems.rec_items(gt, users, times, intent[idx], slots, rng)
        else:
            disp = systems.random_ads(gt, users, times, slots, rng)
        shown.append(disp)
        session_of.append(idx[disp.session])

    # all rows in (user, time, log, position) order
    row_session = np.concatenate(session_of)
    row_log = np.concatenate([np.full(len(d.item), s) for s, d in enumerate(shown)])
    position = np.concatenate([d.position for d in shown])
    order = np.lexsort((position, row_session))
    row_session, row_log, position = row_session[order], row_log[order], position[order]
    item = np.concatenate([d.item for d in shown])[order]
    ad = np.concatenate([d.ad for d in shown])[order]
    static = np.concatenate([d.static for d in shown])[order]
    row_user = user[row_session]
    t_rel = t[row_session]
    ts = np.floor(t_rel).astype(np.int64)

    exposure = exposure_counts(row_user, np.where(ad >= 0, ad, w.num_ads + item), ts,
                               cfg.timeline.exposure_window_seconds)
    intent_match = intent[row_session] == w.item_category[item]
    true_ctr = sigmoid(gt.click_logit(static, intent_match, position, exposure))
    click = rng.random(len(item)) < true_ctr
    true_cvr = sigmoid(gt.conversion_logit(u0 + row_user, item, ad))
    conversion = click & (rng.random(len(item)) < true_cvr)
    hist_start, hist_len, clicks = histories(row_user, ts, click, cfg.seq_max_len)

    rows_before = plan.rows_before(chunk)
    session_base = int(sessions_before.sum())
    logs = {}
    for s, (name, _, _) in enumerate(LOGS):
        m = np.flatnonzero(row_log == s)
        offsets, index = _ranges(hist_start[m], hist_len[m])
        cands = shown[s].candidates
        logs[name] = LogRows(
            impression_id=plan.id_base[s] + rows_before[s] + np.arange(len(m), dtype=np.int64),
            user=u0 + row_user[m], item=item[m], ad=ad[m],
            session_id=session_base + row_session[m], position=position[m], t_rel=t_rel[m],
            exposure_count=exposure[m], intent_match=intent_match[m], click=click[m].astype(np.int64),
            conversion=conversion[m].astype(np.int64), true_ctr=true_ctr[m].astype(np.float32),
            true_cvr=true_cvr[m].astype(np.float32), hist_offsets=offsets, hist_index=index,
            candidates=cands if cands is not None else np.zeros(0, np.int64))
    return ChunkResult(logs, item[clicks], cfg.timeline.start_time + ts[clicks])


def exposure_counts(user: np.ndarray, key: np.ndarray, ts: np.ndarray, window: int) -> np.ndarray:
    """Earlier impressions of the same (user, key) within ``window`` seconds (REW's repeated
    exposure count); rows sorted by (user, time)."""
    pair = user.astype(np.int64) * (int(key.max(initial=0)) + 1) + key
    order = np.argsort(pair, kind="stable")  # keeps time order within a pair
    p = pair[order]
    group = np.cumsum(np.r_[True, p[1:] != p[:-1]]) - 1
    packed = group * _TIME_KEY + ts[order]
    first_in_window = np.searchsorted(packed, packed - window, side="left")
    counts = np.empty(len(ts), np.int64)
    counts[order] = np.arange(len(ts)) - first_in_window
    return counts


def histories(user: np.ndarray, ts: np.ndarray, click: np.ndarray, max_len: int):
    """Each row's behaviour sequence: the user's last ``max_len`` clicks strictly before the
    row's second. Rows sorted by (user, time). Returns (start, length) into the click rows
    and the click row indices."""
    clicks = np.flatnonzero(click)
    packed = user.astype(np.int64) * _TIME_KEY + ts
    click_packed = packed[clicks]
    end = np.searchsorted(click_packed, packed, side="left")
    first = np.searchsorted(click_packed, user.astype(np.int64) * _TIME_KEY, side="left")
    length = np.minimum(end - first, max_len)
    return end - length, length, clicks


def _ranges(start: np.ndarray, length: np.ndarray):
    """List offsets and the flattened indices of the ranges [start, start + length)."""
    offsets = np.zeros(len(start) + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    index = np.repeat(start - offsets[:-1], length) + np.arange(offsets[-1])
    return offsets.astype(np.int32), index
