"""MovieLens 1M and 100K: ratings joined with user and movie tables; click = rating >= 4.

Both write the same columns, so one config shape fits both:
user_id, movie_id, rating, click, timestamp (unix seconds), gender, age, occupation,
zip_code, title, year (from the title's "(YYYY)", null when absent), genres (list).

- ML-1M: ``ratings.dat`` "UserID::MovieID::Rating::Timestamp", ``users.dat``
  "UserID::Gender::Age::Occupation::Zip-code" (age is the bucket code 1/18/25/35/45/50/56,
  occupation the code 0..20), ``movies.dat`` "MovieID::Title::Genres" ('|'-separated genres).
- ML-100K: ``u.data`` tab-separated "user item rating timestamp", ``u.user``
  "user id|age|gender|occupation|zip code" (real age, occupation name), ``u.item``
  "movie id|title|release date|video release date|IMDb URL|19 genre flags".
Item and user files are latin-1 encoded.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List

import pandas as pd
import pyarrow as pa

from pipeline.loaders.common import (DatasetLoader, index_by, lookup_join, read_csv_chunks, read_csv_table,
                                     require_file)

ML1M_PAGE = "https://grouplens.org/datasets/movielens/1m/"
ML100K_PAGE = "https://grouplens.org/datasets/movielens/100k/"

# u.item's 19 genre flags, in file order (ml-100k README / u.genre)
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")

SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("movie_id", pa.int64()), ("rating", pa.int64()), ("click", pa.int64()),
    ("timestamp", pa.int64()), ("gender", pa.string()), ("age", pa.int64()),
    ("occupation", pa.string()), ("zip_code", pa.string()), ("title", pa.string()),
    ("year", pa.int64()), ("genres", pa.list_(pa.string())),
])
_RATING_COLUMNS = ["user_id", "movie_id", "rating", "timestamp"]
_RATING_DTYPES = {c: "Int64" for c in _RATING_COLUMNS}
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _title_year(titles: pd.Series) -> pd.Series:
    return titles.str.extract(_YEAR, expand=False).astype("Int64")


def _read_dat(path: Path, names: List[str]) -> pd.DataFrame:
    """A small ML-1M '::'-separated file (latin-1), all fields as strings."""
    rows = []
    with open(path, encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("::")
            if len(fields) != len(names):
                raise ValueError(f"{path}:{lineno}: expected {len(names)} '::'-separated fields "
                                 f"({'::'.join(names)}), got {len(fields)}")
            rows.append(fields)
    return pd.DataFrame(rows, columns=names)


def _ratings(path: Path, chunks, users: pd.DataFrame, movies: pd.DataFrame,
             click_threshold: int) -> Iterator[pd.DataFrame]:
    """Join rating chunks with the user and movie tables; every rating field is required."""
    for first, chunk in chunks:
        filler = [c for c in chunk.columns if c not in _RATING_COLUMNS]  # ML-1M: between the "::"
        bad = chunk[_RATING_COLUMNS].isna().any(axis=1) | chunk[filler].notna().any(axis=1)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(f"{path}:{first + i}: expected the fields {', '.join(_RATING_COLUMNS)}, "
                             f"all present")
        chunk = chunk[_RATING_COLUMNS].astype("int64")
        chunk["click"] = (chunk["rating"] >= click_threshold).astype("int64")
        chunk = lookup_join(chunk, users, "user_id")
        yield lookup_join(chunk, movies, "movie_id")


def read_ml1m(src_dir: str, chunk_rows: int, click_threshold: int = 4) -> Iterator[pd.DataFrame]:
    """ML-1M chunks; ``click_threshold``: a rating >= it is a click (the usual CTR protocol)."""
    ratings = require_file(src_dir, "ratings.dat", "ml1m", ML1M_PAGE)
    users_path = require_file(src_dir, "users.dat", "ml1m", ML1M_PAGE)
    movies_path = require_file(src_dir, "movies.dat", "ml1m", ML1M_PAGE)
    users = _read_dat(users_path, ["user_id", "gender", "age", "occupation", "zip_code"])
    users = users.astype({"user_id": "int64", "age": "Int64"})
    movies = _read_dat(movies_path, ["movie_id", "title", "genres"]).astype({"movie_id": "int64"})
    movies["year"] = _title_year(movies["title"])
    movies["genres"] = [g.split("|") if g else [] for g in movies["genres"]]
    # "::" split on ":" gives empty fields between the values: the C parser reads 1M
    # lines in well under a second, where a two-character separator needs the Python one.
    chunks = read_csv_chunks(ratings, ["user_id", "_", "movie_id", "__", "rating", "___", "timestamp"],
                             sep=":", chunk_rows=chunk_rows, dtype={**_RATING_DTYPES, "_": str,
                                                                    "__": str, "___": str})
    return _ratings(ratings, chunks, index_by(users, "user_id", users_path),
                    index_by(movies, "movie_id", movies_path), click_threshold)


def read_ml100k(src_dir: str, chunk_rows: int, click_threshold: int = 4) -> Iterator[pd.DataFrame]:
    """ML-100K chunks; genres come from u.item's 19 flags in :data:`ML100K_GENRES` order."""
    ratings = require_file(src_dir, "u.data", "ml100k", ML100K_PAGE)
    users_path = require_file(src_dir, "u.user", "ml100k", ML100K_PAGE)
    items_path = require_file(src_dir, "u.item", "ml100k", ML100K_PAGE)
    users = read_csv_table(users_path, ["user_id", "age", "gender", "occupation", "zip_code"], sep="|",
                           encoding="latin-1", dtype={"user_id": "int64", "age": "Int64", "gender": str,
                                                      "occupation": str, "zip_code": str})
    items = read_csv_table(items_path, ["movie_id", "title", "release_date", "video_release_date", "url",
                                        *ML100K_GENRES], sep="|", encoding="latin-1",
                           dtype={"movie_id": "int64", "title": str, **{g: "Int64" for g in ML100K_GENRES}})
    flags = items[list(ML100K_GENRES)].fillna(0).to_numpy()
    movies = pd.DataFrame({
        "movie_id": items["movie_id"], "title": items["title"], "year": _title_year(items["title"]),
        "genres": [[g for g, f in zip(ML100K_GENRES, row) if f == 1] for row in flags],
    })
    chunks = read_csv_chunks(ratings, _RATING_COLUMNS, sep="\t", chunk_rows=chunk_rows, dtype=_RATING_DTYPES)
    return _ratings(ratings, chunks, index_by(users, "user_id", users_path),
                    index_by(movies, "movie_id", items_path), click_threshold)


ML1M = DatasetLoader("ml1m", read_ml1m, SCHEMA, ML1M_PAGE)
ML100K = DatasetLoader("ml100k", read_ml100k, SCHEMA, ML100K_PAGE)
