"""Taobao display-ad click log (Alibaba, Tianchi dataset 56 "Ad Display/Click Data on Taobao.com").

``raw_sample.csv`` (user,time_stamp,adgroup_id,pid,nonclk,clk; 26.6 M impressions over
8 days) joined with ``user_profile.csv`` (userid,cms_segid,cms_group_id,final_gender_code,
age_level,pvalue_level,shopping_level,occupation,new_user_class_level) and
``ad_feature.csv`` (adgroup_id,cate_id,campaign_id,customer,brand,price). Users without a
profile get nulls (the profile covers 1.06 M of 1.14 M users); brand "NULL" is a null.
Output: user_id, timestamp (unix seconds), adgroup_id, pid, click (= clk), the profile
columns under their file names, cate_id, campaign_id, customer, brand, price (float32).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.loaders.common import (DatasetLoader, check_binary, index_by, lookup_join, read_csv_chunks,
                                     read_csv_table, read_header, require_file)

PAGE = "https://tianchi.aliyun.com/dataset/56"
PROFILE_COLUMNS = ["cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
                   "shopping_level", "occupation", "new_user_class_level"]
AD_COLUMNS = ["cate_id", "campaign_id", "customer", "brand"]
SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("timestamp", pa.int64()), ("adgroup_id", pa.int64()), ("pid", pa.string()),
    ("click", pa.int64()), *[(c, pa.int64()) for c in PROFILE_COLUMNS],
    *[(c, pa.int64()) for c in AD_COLUMNS], ("price", pa.float32()),
])
_NULLS = ("", "NULL")


def read_taobao(src_dir: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    samples = require_file(src_dir, "raw_sample.csv", "taobao", PAGE)
    profile_path = require_file(src_dir, "user_profile.csv", "taobao", PAGE)
    ads_path = require_file(src_dir, "ad_feature.csv", "taobao", PAGE)

    names = read_header(profile_path, ",", ["userid", *PROFILE_COLUMNS])
    profile = read_csv_table(profile_path, names, sep=",", header=True, na_values=_NULLS,
                             dtype={c: "Int64" for c in names})
    profile = profile[["userid", *PROFILE_COLUMNS]].rename(columns={"userid": "user_id"})
    names = read_header(ads_path, ",", ["adgroup_id", *AD_COLUMNS, "price"])
    ads = read_csv_table(ads_path, names, sep=",", header=True, na_values=_NULLS,
                         dtype={**{c: "Int64" for c in names}, "price": "float32"})
    ads = ads[["adgroup_id", *AD_COLUMNS, "price"]]
    profile = index_by(profile, "user_id", profile_path)
    ads = index_by(ads, "adgroup_id", ads_path)

    names = read_header(samples, ",", ["user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"])
    chunks = read_csv_chunks(samples, names, sep=",", header=True, chunk_rows=chunk_rows,
                             dtype={"user": "Int64", "time_stamp": "Int64", "adgroup_id": "Int64",
                                    "pid": str, "nonclk": "Int64", "clk": "Int64"})

    def rows() -> Iterator[pd.DataFrame]:
        for first, chunk in chunks:
            check_binary(chunk, ["clk", "nonclk"], samples, first)
            both = np.flatnonzero((chunk["clk"] + chunk["nonclk"] != 1).to_numpy())
            if len(both):
                raise ValueError(f"{samples}:{first + both[0]}: exactly one of clk and nonclk must be 1")
            for key in ("user", "time_stamp", "adgroup_id"):
                if chunk[key].isna().any():
                    i = int(np.flatnonzero(chunk[key].isna().to_numpy())[0])
                    raise ValueError(f"{samples}:{first + i}: column '{key}' is empty")
            chunk = pd.DataFrame({"user_id": chunk["user"].astype("int64"),
                                  "timestamp": chunk["time_stamp"].astype("int64"),
                                  "adgroup_id": chunk["adgroup_id"].astype("int64"), "pid": chunk["pid"],
                                  "click": chunk["clk"].astype("int64")})
            yield lookup_join(lookup_join(chunk, profile, "user_id"), ads, "adgroup_id")

    return rows()


TAOBAO = DatasetLoader("taobao", read_taobao, SCHEMA, PAGE)
