"""Numeric bucketization (``encoding: {type: bucketize, method: ...}``).

Every method reduces to sorted boundaries ``b_1 < ... < b_m``; a value ``x`` gets
``id = 2 + #{i : b_i <= x}`` (``np.searchsorted(b, x, side="right")``), so bucket
ids run 2..m+2 and ``num_ids = m + 3``. Id 0 is missing (NaN / None); id 1 (the
OOV slot of the id convention) is never produced: every real value has a bucket,
values below ``b_1`` (and -inf) go to id 2, values from ``b_m`` up (and +inf) to
id m+2. Values are compared in float64 after the cast to the feature's raw dtype,
so numpy and TF agree exactly.

Methods:

* ``quantile`` (default): ``num_buckets`` (default 10) equal-frequency buckets;
  boundary i (i = 1..num_buckets-1) is the element at index ``ceil(n * i /
  num_buckets)`` of the sorted train sample (about a fraction i/num_buckets of it
  lies below), so boundaries are observed values and a tied value never straddles
  two buckets; duplicates are dropped, so heavy ties give fewer buckets. With exact
  quantile points from the Beam job as the sample the same rule picks among them.
* ``boundaries``: an explicit strictly increasing list ``boundaries: [...]``.
* ``log2sq``: the Criteo winners' transform, made collision-free and monotone:
  x < 0 -> id 2 (all negatives share one bucket); 0 <= x <= 2 -> id ``3 + floor(x)``
  (the small integers 0, 1, 2 keep their own ids); x > 2 -> id
  ``5 + floor(log2(x)^2)`` (e.g. 3 -> 5 + 2, 100 -> 5 + 44). It is the boundary
  list ``[0, 1, 2, 2+ulp, 2^sqrt(2), 2^sqrt(3), 2^sqrt(4)=4, ...]`` (x >= 2^sqrt(n)
  <=> floor(log2(x)^2) >= n, exact at powers of two, no transcendental functions at
  encode time), cut at ``max_id``: larger values saturate to ``max_id``. ``max_id``
  defaults to the id of the train maximum; ``num_ids = max_id + 1``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List

import numpy as np

from features.schema import PAD_ID

if TYPE_CHECKING:  # TF is imported lazily where it is used (serving): Beam workers never load it
    import tensorflow as tf

METHODS = ("quantile", "boundaries", "log2sq")
FIRST_ID = 2
DEFAULT_NUM_BUCKETS = 10
LOG2SQ_MIN_MAX_ID = 3


def _finite(sample) -> np.ndarray:
    a = np.asarray(sample, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def quantile_boundaries(sample, num_buckets: int = DEFAULT_NUM_BUCKETS) -> List[float]:
    """Distinct sorted-sample values at index ceil(n * i / num_buckets), i = 1..num_buckets-1."""
    a = _finite(sample)
    if a.size == 0:
        raise ValueError("no finite training values to take quantiles from")
    a = np.sort(a)
    idx = np.ceil(np.arange(1, num_buckets) * (a.size / num_buckets)).astype(np.int64)
    return [float(b) for b in np.unique(a[np.minimum(idx, a.size - 1)])]


def check_boundaries(boundaries) -> List[float]:
    b = [float(v) for v in boundaries]
    if not all(math.isfinite(v) for v in b):
        raise ValueError(f"boundaries must be finite numbers, got {boundaries}")
    if any(b2 <= b1 for b1, b2 in zip(b, b[1:])):
        raise ValueError(f"boundaries must be strictly increasing, got {boundaries}")
    return b


def _log2sq_list(num: int) -> np.ndarray:
    """The first ``num`` log2sq boundaries (see the module docstring)."""
    head = [0.0, 1.0, 2.0, math.nextafter(2.0, math.inf)]
    tail = [2.0 ** math.sqrt(n) for n in range(2, max(num - len(head) + 2, 2))]
    return np.asarray((head + tail)[:num], dtype=np.float64)


def log2sq_boundaries(max_id: int) -> np.ndarray:
    if max_id < LOG2SQ_MIN_MAX_ID:
        raise ValueError(f"log2sq max_id must be >= {LOG2SQ_MIN_MAX_ID}, got {max_id}")
    return _log2sq_list(max_id - FIRST_ID)


def log2sq_max_id(sample) -> int:
    """The log2sq id of the largest finite value of ``sample`` (the default cap)."""
    a = _finite(sample)
    if a.size == 0:
        raise ValueError("no finite training values to size log2sq's max_id from")
    top = float(a.max())
    n = math.floor(math.log2(top) ** 2) if top > 2 else 0
    b = _log2sq_list(n + 8)  # a few past the estimate: the exact id comes from the boundaries
    return max(int(FIRST_ID + np.searchsorted(b, top, side="right")), LOG2SQ_MIN_MAX_ID)


def resolve_boundaries(encoding: Dict[str, Any]) -> np.ndarray:
    """The boundary array of a built bucketize encoding."""
    if encoding["method"] == "log2sq":
        return log2sq_boundaries(int(encoding["max_id"]))
    return np.asarray(encoding["boundaries"], dtype=np.float64)


def bucket_ids(x: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """float64 values (NaN = missing) -> int64 ids."""
    ids = np.searchsorted(boundaries, x, side="right").astype(np.int64) + FIRST_ID
    return np.where(np.isnan(x), PAD_ID, ids)


def tf_bucket_ids(x: tf.Tensor, boundaries: np.ndarray) -> tf.Tensor:
    """TF twin of :func:`bucket_ids` for a float64 tensor [n]."""
    import tensorflow as tf

    b = tf.constant(np.asarray(boundaries, np.float64)[None, :])  # UpperBound = searchsorted side right
    ids = tf.raw_ops.UpperBound(sorted_inputs=b, values=x[None, :], out_type=tf.int64)[0] + FIRST_ID
    return tf.where(tf.math.is_nan(x), tf.constant(PAD_ID, tf.int64), ids)
