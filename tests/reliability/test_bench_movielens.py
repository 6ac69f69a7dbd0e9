"""bench/train_throughput.py on a user-supplied MovieLens-1M (issue 15): the loader's files go
through ``ctrflow load ml1m`` and configs/preprocess_ml1m.yaml, both libraries read the same
single-id fields, and the measured model learns the ratings' signal."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ML1M_FIELDS = ["user_id", "movie_id", "gender", "age", "occupation", "zip_code", "year"]


def _write_ml1m(src, users=200, movies=150, ratings=6000, seed=0):
    """A MovieLens-1M folder in the original ``::`` format whose ratings follow a per-movie
    quality (so a model that learns reaches an AUC well above 0.5)."""
    rng = np.random.default_rng(seed)
    src.mkdir()
    (src / "users.dat").write_text("".join(
        f"{u}::{'FM'[u % 2]}::{[1, 18, 25, 35, 45, 50, 56][u % 7]}::{u % 21}::{10000 + u % 37}\n"
        for u in range(1, users + 1)))
    (src / "movies.dat").write_text("".join(
        f"{m}::Movie {m} ({1930 + m % 70})::{['Drama', 'Comedy', 'Action|Romance'][m % 3]}\n"
        for m in range(1, movies + 1)), encoding="latin-1")
    quality = rng.normal(size=movies + 1)
    pairs = rng.choice(users * movies, size=ratings, replace=False)
    lines = []
    for k, pair in enumerate(pairs):
        u, m = pair // movies + 1, pair % movies + 1
        r = int(np.clip(np.round(3 + 1.2 * quality[m] + rng.normal()), 1, 5))
        lines.append(f"{u}::{m}::{r}::{978300000 + k}\n")
    (src / "ratings.dat").write_text("".join(lines))


@pytest.mark.slow
def test_train_throughput_runs_on_movielens_with_its_single_id_fields(tmp_path):
    _write_ml1m(tmp_path / "ml-1m")
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, os.path.join(REPO, "bench", "train_throughput.py"), "--movielens",
                           str(tmp_path / "ml-1m"), "--work", str(tmp_path / "work"), "--models", "dnn",
                           "--configs", "float32", "--epochs", "2", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["dataset"] == "movielens-1m"
    assert doc["fields"] == ML1M_FIELDS  # genres (a sequence) left out for both libraries
    # the DNN's multiply-adds per example count the 7 fields' 16-wide embeddings
    assert doc["machine"]["dnn_macs_per_example"] == 7 * 16 * 400 + 2 * 400 * 400 + 400
    (result,) = doc["results"]
    assert result["library"] == "ctrflow" and result["model"] == "dnn"
    assert result["test_auc"] > 0.6  # the ratings follow each movie's quality (2 epochs, dropout 0.2: ~0.65-0.77)

    sys.path.insert(0, os.path.join(REPO, "bench"))
    from train_throughput import export_numpy

    from features.schema import Schema

    export_numpy(str(tmp_path / "work" / "data"), str(tmp_path / "arrays.npz"))
    arrays = np.load(tmp_path / "arrays.npz")
    schema = Schema.load(str(tmp_path / "work" / "data"))
    assert [str(n) for n in arrays["names"]] == ML1M_FIELDS
    assert arrays["vocab_sizes"].tolist() == [schema.feature(n).num_ids for n in ML1M_FIELDS]
    assert len(arrays["train/movie_id"]) == len(arrays["train/click"]) > 4000
