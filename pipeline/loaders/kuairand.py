"""KuaiRand (Kuaishou short-video feedback logs): several feedback columns -> several tasks.

Two inputs share one reader:

- ``kuairand``: the released logs ``log_standard_*.csv`` (KuaiRand-27K / -1K / -Pure, e.g.
  ``log_standard_4_08_to_4_21_27k_part1.csv``; every matching file, in name order, which is
  chronological) or, with ``log="random"``, the randomly-exposed ``log_random_*.csv`` (an
  unbiased test log), joined with ``user_features_*.csv``. Tasks: click, like, follow,
  comment, forward, hate, long_view, profile_enter (the log's is_* columns).
- ``kuairand_likehate``: the filtered slice ``processed_standard_kcore_15.tsv`` (only
  impressions with an explicit like or hate; ``label`` 1 = like, 0 = hate) joined with
  ``user_features_pure.csv``. Tasks: like (= label), click, follow, comment, forward,
  long_view, profile_enter.

Common columns: user_id, video_id, timestamp (unix seconds, from time_ms), time_ms, date
(yyyymmdd), hour (hourmin // 100), the log's duration / stay-time columns, the tasks, and
the 30 user-feature columns under their file names (users absent from the table get nulls).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.loaders.common import (DatasetLoader, check_binary, index_by, lookup_join, read_csv_chunks,
                                     read_csv_table, read_header, require_file, require_glob)

PAGE = "https://kuairand.com/ (files: https://zenodo.org/records/10439422)"
LIKEHATE_PAGE = ("https://github.com/alessandrosocc/predict_explicit_negative_feedback_kuairand "
                 "(processed_data/processed_standard_kcore_15.csv, saved tab-separated) and, for "
                 "user_features_pure.csv, KuaiRand-Pure from " + PAGE)
LOG_KINDS = ("standard", "random")

USER_STRING_COLUMNS = ["user_active_degree", "follow_user_num_range", "fans_user_num_range",
                       "friend_user_num_range", "register_days_range"]
USER_COLUMNS = ["user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range",
                "friend_user_num", "friend_user_num_range", "register_days", "register_days_range",
                *[f"onehot_feat{i}" for i in range(18)]]


@dataclasses.dataclass(frozen=True)
class LogFormat:
    """How one log file spells its columns: ``tasks`` maps task name -> source column;
    ``extras`` are int columns kept under their own names."""

    sep: str
    tasks: Dict[str, str]
    extras: Tuple[str, ...]

    def schema(self) -> pa.Schema:
        return pa.schema([
            ("user_id", pa.int64()), ("video_id", pa.int64()), ("timestamp", pa.int64()),
            ("time_ms", pa.int64()), ("date", pa.int64()), ("hour", pa.int64()),
            *[(c, pa.int64()) for c in self.extras], *[(t, pa.int64()) for t in self.tasks],
            *[(c, pa.string() if c in USER_STRING_COLUMNS else pa.int64()) for c in USER_COLUMNS],
        ])

    @property
    def required(self) -> List[str]:
        return ["user_id", "video_id", "date", "hourmin", "time_ms", *self.extras, *self.tasks.values()]


STANDARD = LogFormat(",", {"click": "is_click", "like": "is_like", "follow": "is_follow",
                           "comment": "is_comment", "forward": "is_forward", "hate": "is_hate",
                           "long_view": "long_view", "profile_enter": "is_profile_enter"},
                     ("duration_ms", "play_time_ms", "profile_stay_time", "comment_stay_time", "is_rand", "tab"))
LIKEHATE = LogFormat("\t", {"like": "label", "click": "is_click", "follow": "is_follow",
                            "comment": "is_comment", "forward": "is_forward", "long_view": "long_view",
                            "profile_enter": "is_profile_enter"},
                     ("duration_ms", "play_time_ms", "comment_stay_time"))


def read_user_features(path: Path) -> pd.DataFrame:
    """The user table indexed by user_id (onehot_feat* stored as floats are whole numbers)."""
    names = read_header(path, ",", ["user_id", *USER_COLUMNS])
    dtype = {c: (str if c in USER_STRING_COLUMNS else "Int64") for c in names}
    table = read_csv_table(path, names, sep=",", header=True, dtype=dtype)
    return index_by(table[["user_id", *USER_COLUMNS]], "user_id", path)


def _log_chunks(paths: List[Path], fmt: LogFormat, users: pd.DataFrame, chunk_rows: int) -> Iterator[pd.DataFrame]:
    for path in paths:
        names = read_header(path, fmt.sep, fmt.required)
        chunks = read_csv_chunks(path, names, sep=fmt.sep, header=True, chunk_rows=chunk_rows,
                                 dtype={c: "Int64" for c in fmt.required})
        for first, chunk in chunks:
            for key in ("user_id", "video_id", "time_ms", "date", "hourmin"):
                if chunk[key].isna().any():
                    i = int(np.flatnonzero(chunk[key].isna().to_numpy())[0])
                    raise ValueError(f"{path}:{first + i}: column '{key}' is empty")
            check_binary(chunk, fmt.tasks.values(), path, first)
            time_ms = chunk["time_ms"].astype("int64")
            out = pd.DataFrame({
                "user_id": chunk["user_id"].astype("int64"), "video_id": chunk["video_id"].astype("int64"),
                "timestamp": time_ms // 1000, "time_ms": time_ms, "date": chunk["date"].astype("int64"),
                "hour": chunk["hourmin"].astype("int64") // 100,
                **{c: chunk[c] for c in fmt.extras},
                **{task: chunk[src].astype("int64") for task, src in fmt.tasks.items()},
            })
            yield lookup_join(out, users, "user_id")


def read_kuairand(src_dir: str, chunk_rows: int, log: str = "standard") -> Iterator[pd.DataFrame]:
    """``log``: "standard" (the platform's policy) or "random" (random exposure, for unbiased tests)."""
    if log not in LOG_KINDS:
        raise ValueError(f"kuairand: option log='{log}' not in {LOG_KINDS}")
    logs = require_glob(src_dir, f"log_{log}_*.csv", "kuairand", PAGE)
    user_files = require_glob(src_dir, "user_features_*.csv", "kuairand", PAGE)
    if len(user_files) != 1:
        raise ValueError(f"kuairand: expected one user_features_*.csv in '{src_dir}', found "
                         f"{[p.name for p in user_files]}")
    return _log_chunks(logs, STANDARD, read_user_features(user_files[0]), chunk_rows)


def read_kuairand_likehate(src_dir: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    log = require_file(src_dir, "processed_standard_kcore_15.tsv", "kuairand_likehate", LIKEHATE_PAGE)
    users = require_file(src_dir, "user_features_pure.csv", "kuairand_likehate", LIKEHATE_PAGE)
    return _log_chunks([log], LIKEHATE, read_user_features(users), chunk_rows)


KUAIRAND = DatasetLoader("kuairand", read_kuairand, STANDARD.schema(), PAGE)
KUAIRAND_LIKEHATE = DatasetLoader("kuairand_likehate", read_kuairand_likehate, LIKEHATE.schema(),
                                  LIKEHATE_PAGE)
