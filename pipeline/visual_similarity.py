"""The coefficient of variation of predicted scores among visually similar ads shown to the same
user: the check of Tencent ads §3.2 (random ad IDs 2.44 % -> visual semantic IDs 0.30 %).

Similarity comes from the simulator's ground truth, never from an encoder's space: an ad's
creative is its item's image, rendered from the item's 6 visual attributes (``items.parquet``
``visual``; ``docs/simulator.md``). Items are cut into groups by complete-linkage clustering at
``max_distance`` (:func:`similar_groups`): every two items of a group lie within that distance
of each other (Euclidean over the 6 attributes, the two hues measured around their circle), so
ads of one item (the same creative, distance 0) always share a group. The default 0.15 is about
one attribute's within-category noise (``items.visual_noise`` 0.1) spread over a few attributes.

:func:`score_cv`: for each (user, group) pair of the evaluated rows holding >= 2 distinct ads,
each ad's mean predicted score over its rows for that user (the rows of an ad differ in context:
position, time, exposure count), then CV = std / mean of those per-ad scores (population std);
the result averages the pairs' CVs (each pair once). ``ctrflow evaluate --visual-truth RAW``
writes it per task into ``metrics.json`` (``similar_ads``, and ``overall.score_cv``), and a
``compare`` grid with ``visual_truth`` can tabulate ``score_cv``.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np
import pandas as pd

DEFAULT_MAX_DISTANCE = 0.15
CIRCULAR = (0, 1)  # background and foreground hue (pipeline/simulator/world.py, VISUAL_ATTRIBUTES)


def _gap(diff: np.ndarray, k: int) -> np.ndarray:
    """|difference| of attribute ``k``, around the circle for the hues."""
    x = np.abs(diff)
    return np.minimum(x, 1.0 - x) if k in CIRCULAR else x


def attribute_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances between the rows of visual attributes ``a`` and ``b`` ([n, 6] each), row by row."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sqrt(sum(_gap(a[..., k] - b[..., k], k) ** 2 for k in range(a.shape[-1])))


def attribute_distances(attributes: np.ndarray) -> np.ndarray:
    """Pairwise distances [n, n] of visual attributes [n, 6] in [0, 1]: Euclidean, with the hue
    differences taken around the circle (0.95 and 0.05 are 0.1 apart)."""
    a = np.asarray(attributes, np.float64)
    return np.sqrt(sum(_gap(a[:, k, None] - a[None, :, k], k) ** 2 for k in range(a.shape[1])))


def similar_groups(attributes: np.ndarray, max_distance: float = DEFAULT_MAX_DISTANCE) -> np.ndarray:
    """Group labels (int64 [n]) of items by complete-linkage clustering of their visual attributes
    cut at ``max_distance``: within a group every pair lies within it."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(attributes) < 2:
        return np.zeros(len(attributes), np.int64)
    tree = linkage(squareform(attribute_distances(attributes), checks=False), method="complete")
    return fcluster(tree, max_distance, criterion="distance").astype(np.int64) - 1


def score_cv(scores, users, ads, groups) -> Dict[str, Optional[float]]:
    """Mean over (user, group) pairs with >= 2 distinct ads of std / mean of the per-ad mean scores
    (module docstring), per row: predicted score, user, ad and its similar-ad group (negative:
    no group, the row is left out). Returns ``score_cv`` (None without such a pair), the median,
    the number of ``pairs`` and of ``rows`` they hold."""
    frame = pd.DataFrame({"s": np.asarray(scores, np.float64).reshape(-1), "u": np.asarray(users).reshape(-1),
                          "a": np.asarray(ads).reshape(-1), "g": np.asarray(groups, np.int64).reshape(-1)})
    frame = frame[frame.g >= 0]
    per_ad = frame.groupby(["u", "g", "a"], sort=True).s.agg(["mean", "size"]).reset_index()
    pairs = per_ad.groupby(["u", "g"], sort=True)
    stats = pairs["mean"].agg(n="size", mean="mean", std=lambda x: float(np.std(x.to_numpy())))
    rows = pairs["size"].sum()
    keep = stats.n >= 2
    cv = (stats["std"] / stats["mean"])[keep]
    return {"score_cv": float(cv.mean()) if len(cv) else None,
            "score_cv_median": float(cv.median()) if len(cv) else None,
            "pairs": int(keep.sum()), "rows": int(rows[keep].sum())}


def simulator_truth(raw_dir: str, ad_column: str = "ad_id", item_column: str = "item_id"
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """(raw ad ids, their items' visual attributes [n, 6]) from the simulator's output folder
    (``ads.parquet``: ad -> item; ``items.parquet``: item -> ``visual``)."""
    paths = {name: os.path.join(raw_dir, f"{name}.parquet") for name in ("ads", "items")}
    for name, path in paths.items():
        if not os.path.exists(path):
            raise FileNotFoundError(f"visual truth '{raw_dir}': no {name}.parquet; expected the simulator's output "
                                    f"folder (ctrflow simulate's out_dir)")
    ads = pd.read_parquet(paths["ads"], columns=[ad_column, item_column])
    items = pd.read_parquet(paths["items"], columns=[item_column, "visual"]).set_index(item_column)
    visual = np.stack(items["visual"].reindex(ads[item_column]).to_numpy())
    return ads[ad_column].to_numpy(), visual.astype(np.float64)


def ad_groups(attributes: np.ndarray, max_distance: float = DEFAULT_MAX_DISTANCE) -> np.ndarray:
    """The similar-ad group of each ad (int64 [n]) from its creative's attributes [n, 6]: ads with
    equal attributes (one item's creatives) are clustered once, as one point."""
    unique, inverse = np.unique(np.asarray(attributes, np.float64), axis=0, return_inverse=True)
    return similar_groups(unique, max_distance)[inverse.reshape(-1)]
