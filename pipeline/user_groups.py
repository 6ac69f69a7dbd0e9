"""Head / long-tail users, defined once (HDA Def. 3.1 / §3.2).

Head users are the ``ceil(fraction * #users)`` users with the most **training-split**
samples ("the top 20% active users with the most samples as head users, and the left 80%
users as long-tail users"; fraction = ``head_user_fraction``, default 0.2). Ties at the cut
go to the smaller user key, so the set does not depend on the runner or on row order.

Preprocess applies :func:`head_users` to the train split's counts and writes the result as
the schema's group column (1 = head, 0 = long-tail) into every split, recording the
fraction in ``schema.extra["head_user_fraction"]``; evaluation reads both back
(:func:`group_of`) and never recomputes the set.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pandas as pd

from features.schema import Schema

DEFAULT_HEAD_FRACTION = 0.2  # HDA §3.2: the top 20 % users by training samples


def rank_by_activity(counts: pd.Series) -> np.ndarray:
    """User keys (the index of ``counts``: user -> training samples), most samples first;
    equal counts in ascending key order."""
    keys = counts.index.to_numpy()
    return keys[np.lexsort((keys, -counts.to_numpy(np.int64)))]


def head_users(counts: pd.Series, fraction: float = DEFAULT_HEAD_FRACTION) -> np.ndarray:
    """Sorted keys of the head users: the ceil(fraction * #users) users of ``counts``
    (user -> training-split samples) ranked first by :func:`rank_by_activity`."""
    if isinstance(fraction, bool) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"head_user_fraction must be within (0, 1], got {fraction!r}")
    k = int(np.ceil(round(float(fraction) * len(counts), 9)))
    return np.sort(rank_by_activity(counts)[:k])


def group_of(schema: Schema) -> Tuple[Optional[str], Optional[float]]:
    """(group column, head fraction) as preprocess recorded them in the schema: the column is
    None for data without one (no users, or a hand-written schema), the fraction None when
    the schema does not record it (never a default: the column alone says who is head)."""
    fraction = schema.extra.get("head_user_fraction")
    return schema.group_column or None, None if fraction is None else float(fraction)
