"""When users act: sessions per user, their times, and the user's drifting intent.

Sessions come in visits (a new visit with probability 1/sessions_per_visit, else
the next session follows the previous one after an exponential gap); visit times
follow a diurnal rate. Each session has an intent category that persists with
probability 2^(-dt/halflife) from the user's previous session, else is redrawn from
the user's category preferences: earlier clicks thus predict later ones with a
time-decaying strength, the signal TIM's temporal encoding uses (Tencent Eq. 1).
"""
from __future__ import annotations

import numpy as np

from pipeline.simulator.config import TimelineConfig
from pipeline.simulator.world import sample_cdf

HOUR = 3600.0


def allocate_sessions(rows: int, slots: int, activity: np.ndarray, rng: np.random.Generator):
    """Sessions per user ~ Multinomial(ceil(rows / slots), activity); ``deficit`` sessions
    (the first ones in output order) show slots - 1 items so the log has exactly ``rows`` rows."""
    n_sessions = -(-rows // slots)
    counts = rng.multinomial(n_sessions, activity / activity.sum())
    return counts, n_sessions * slots - rows


def session_times(counts: np.ndarray, t_lo: float, t_hi: float, tl: TimelineConfig,
                  rng: np.random.Generator):
    """(user index, time) of every session; users in order, each user's times unsorted."""
    n = int(counts.sum())
    user = np.repeat(np.arange(len(counts)), counts)
    new_visit = rng.random(n) < 1.0 / tl.sessions_per_visit
    new_visit[(np.cumsum(counts) - counts)[counts > 0]] = True  # a user's first session opens a visit
    visit_start = np.flatnonzero(new_visit)
    visit_id = np.cumsum(new_visit) - 1
    visit_user = user[visit_start]
    visit_t = diurnal_times(len(visit_start), t_lo, t_hi, tl, rng)
    visit_t = visit_t[np.lexsort((visit_t, visit_user))]  # a user's visits in time order
    gaps = rng.exponential(tl.session_gap_seconds, n)
    gaps[new_visit] = 0.0
    elapsed = np.cumsum(gaps)
    t = visit_t[visit_id] + elapsed - elapsed[visit_start][visit_id]
    return user, np.minimum(t, t_hi - 1.0)


def diurnal_times(n: int, t_lo: float, t_hi: float, tl: TimelineConfig, rng: np.random.Generator):
    """n times in [t_lo, t_hi) (seconds after start_time) with hourly rate
    1 + amplitude * cos(2 pi (hour - peak_hour) / 24), by inverting its piecewise-constant CDF."""
    start = tl.start_time
    hours = np.arange(np.floor((start + t_lo) / HOUR), np.ceil((start + t_hi) / HOUR))
    seg_lo = np.maximum(hours * HOUR - start, t_lo)
    seg_hi = np.minimum((hours + 1) * HOUR - start, t_hi)
    rate = 1.0 + tl.diurnal_amplitude * np.cos(2.0 * np.pi * (hours % 24 - tl.peak_hour) / 24.0)
    cdf = np.cumsum(rate * (seg_hi - seg_lo))
    k = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)
    return seg_lo[k] + rng.random(n) * (seg_hi[k] - seg_lo[k])


def session_intents(user: np.ndarray, t: np.ndarray, category_cdf: np.ndarray, halflife: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Intent category per session; sessions sorted by (user, t); category_cdf [users, C]."""
    n = len(user)
    if n == 0:
        return np.zeros(0, np.int64)
    switch = np.ones(n, bool)
    same_user = user[1:] == user[:-1]
    keep = rng.random(n - 1) < np.exp2(-(t[1:] - t[:-1]) / halflife)
    switch[1:] = ~(same_user & keep)
    draws = np.zeros(n, np.int64)
    draws[switch] = sample_cdf(rng, category_cdf[user[switch]])
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(n), 0))
    return draws[last_switch]
