"""Loaders: public dataset files -> ctrflow's raw format (Parquet shards of one flat table).

``ctrflow load NAME --src DIR --out DIR`` calls :func:`load_dataset`; then
``ctrflow preprocess --config configs/preprocess_NAME.yaml`` encodes the shards. The
licences of these datasets forbid redistribution: the user downloads the files (see
``docs/datasets.md``) and nothing is committed.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from features import outputs
from features.errors import UserError
from pipeline.loaders.common import DatasetLoader
from pipeline.loaders.criteo import CRITEO
from pipeline.loaders.frappe import FRAPPE
from pipeline.loaders.kuairand import KUAIRAND, KUAIRAND_LIKEHATE
from pipeline.loaders.movielens import ML1M, ML100K
from pipeline.loaders.taobao import TAOBAO

LOADERS: Dict[str, DatasetLoader] = {
    loader.name: loader for loader in (ML1M, ML100K, CRITEO, FRAPPE, TAOBAO, KUAIRAND, KUAIRAND_LIKEHATE)
}


def load_dataset(name: str, src_dir: str, out_dir: str, shard_rows: int = 500_000,
                 chunk_rows: int = 100_000, overwrite: bool = False, **options) -> Dict[str, Any]:
    """Read dataset ``name``'s files from ``src_dir`` and write ``out_dir/part-*.parquet``.

    Big files are read ``chunk_rows`` rows at a time; shards hold ``shard_rows`` rows.
    ``options`` are the dataset's own knobs (e.g. ``click_threshold`` for MovieLens,
    ``log`` for KuaiRand). Returns {"rows": n, "columns": [...], "files": [...]}.
    A missing input file raises FileNotFoundError naming it and the download page.
    ``out_dir`` is written atomically (``features.outputs``): an existing folder not written
    by load is refused unless ``overwrite``, and one holding ``src_dir`` always.
    """
    if name not in LOADERS:
        raise UserError(f"unknown dataset '{name}'; known: {sorted(LOADERS)}")
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    with outputs.atomic_output(out_dir, "load", inputs=[str(src_dir)], overwrite=overwrite) as tmp:
        summary = LOADERS[name](src_dir, tmp, shard_rows=shard_rows, chunk_rows=chunk_rows, **options)
    summary["files"] = [os.path.join(out_dir, os.path.relpath(f, tmp)) for f in summary["files"]]
    return summary


__all__ = ["LOADERS", "DatasetLoader", "load_dataset"]
