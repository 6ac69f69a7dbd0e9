"""Visual semantic IDs on the simulator's catalogue (Tencent ads §3.2): does the Hamming distance
of two creatives' IDs follow their ground-truth visual similarity, per encoder, and do the MNSE
codes of the IDs keep that locality, per numeral system?

    python bench/visual_ids.py [--seed 2024] [--noises 0.02 0.1 0.2] [--draws 10] [--pairs 200000]
                               [--out docs/results/visual_ids.json]

Simulates the default world's catalogue (`configs/simulate_default.yaml`, 2,000 items; only the
image noise `items.image_noise` changes, so the items' visual attributes stay the same) and hashes
its 32x32 creatives into 16-bit IDs (features/visual_ids.py) with the PCA encoder at several
numbers of components and with random hyperplanes over the raw pixels, `--draws` hyperplane
seeds each. Over `--pairs` sampled item pairs: the mean Hamming distance of the 2 % closest pairs
by ground-truth attribute distance (pipeline/visual_similarity.py) and of the pairs beyond the
median distance, the AUC of the Hamming distance telling them apart, and the Spearman correlation
of Hamming and attribute distance. Then, for the default encoder's IDs, the share of equal MNSE
codes (features/mnse.py) of a pair per numeral system (binary 16 digits, ternary 11, decimal 5)
against the pair's Hamming distance, and for pairs of independent uniform IDs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from report_json import emit, machine  # noqa: E402  (bench/ is the script directory)

CONFIG = "configs/simulate_default.yaml"
BITS = 16
ENCODERS = [("pca", 4), ("pca", 8), ("pca", 16), ("pca", 32), ("pixels", None)]  # (vision model, components)
SYSTEMS = {2: 16, 3: 11, 10: 5}  # numeral system -> digits for a 16-bit ID (configs/preprocess_sim_visual.yaml)


def catalogue(work: str, seed: int, noise: float):
    """(images, visual attributes) of the default world's items at image noise ``noise``."""
    import pandas as pd

    from pipeline.config import load_config
    from pipeline.simulator import SimulatorConfig, simulate

    raw = os.path.join(work, f"raw-{noise}")
    simulate(load_config(SimulatorConfig, os.path.join(REPO, CONFIG),
                         {"seed": seed, "out_dir": raw, "num_impressions": 1000, "rec_impressions": 100,
                          "random_impressions": 100, "items.image_noise": noise}), progress=False, overwrite=True)
    visual = np.stack(pd.read_parquet(os.path.join(raw, "items.parquet"))["visual"].to_numpy())
    return np.load(os.path.join(raw, "item_images.npy")), visual


def sample_pairs(n: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, n, count), rng.integers(0, n, count)
    keep = i != j
    return i[keep], j[keep]


def locality(ids: np.ndarray, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> dict:
    """Hamming distance of the pairs against their attribute distance ``d``."""
    from scipy import stats

    from features.visual_ids import hamming

    h = hamming(ids[i], ids[j])
    close, far = d <= np.quantile(d, 0.02), d > np.quantile(d, 0.5)
    auc = stats.mannwhitneyu(h[far], h[close]).statistic / (far.sum() * close.sum())
    return {"close": float(h[close].mean()), "far": float(h[far].mean()), "auc": float(auc),
            "spearman": float(stats.spearmanr(d, h)[0])}


def code_sharing(a: np.ndarray, b: np.ndarray) -> dict:
    """Per numeral system, the share of a pair's MNSE codes (digit positions) that are equal."""
    from features.mnse import mnse_ids

    out = {}
    for base, digits in SYSTEMS.items():
        enc = {"bases": [base], "digits": [digits], "scale": 1, "signed": False}
        out[str(base)] = (mnse_ids(a.astype(np.float64), enc) == mnse_ids(b.astype(np.float64), enc)).mean(axis=1)
    return out


def measure(seed: int, noises, draws: int, pairs: int) -> dict:
    from features import visual_ids as V
    from pipeline.visual_similarity import attribute_distance

    runs, sharing = [], None
    with tempfile.TemporaryDirectory(prefix="visual_ids_") as work:
        for noise in noises:
            images, visual = catalogue(work, seed, noise)
            i, j = sample_pairs(len(images), pairs, seed)
            d = attribute_distance(visual[i], visual[j])
            for model, comps in ENCODERS:
                per_draw = []
                fitted, _, _ = V.fit_encoder(images, model, comps or V.DEFAULT_COMPONENTS, BITS)
                emb = fitted.embed(images)
                for draw in range(draws):  # = fit_encoder(..., seed=draw): the PCA does not depend on the seed here
                    ids = dataclasses.replace(fitted, planes=V.lsh_planes(emb.shape[1], BITS, draw)).ids(emb)
                    per_draw.append(locality(ids, i, j, d))
                    if noise == noises[0] and (model, comps) == ("pca", V.DEFAULT_COMPONENTS) and draw == 0:
                        sharing = _sharing_by_hamming(ids, i, j, seed)
                runs.append({"image_noise": noise, "vision_model": model, "components": comps,
                             "draws": per_draw,
                             "mean": {k: float(np.mean([r[k] for r in per_draw])) for k in per_draw[0]},
                             "std": {k: float(np.std([r[k] for r in per_draw])) for k in per_draw[0]}})
    return {"machine": machine(), "config": CONFIG, "seed": seed, "bits": BITS, "pairs": pairs, "draws": draws,
            "encoders": runs, "mnse_sharing": sharing}


def _sharing_by_hamming(ids, i, j, seed) -> dict:
    from features.visual_ids import hamming

    h = hamming(ids[i], ids[j])
    shares = code_sharing(ids[i], ids[j])
    rows = []
    for dist in range(BITS + 1):
        mask = h == dist
        if mask.any():
            rows.append({"hamming": dist, "pairs": int(mask.sum()),
                         **{base: float(s[mask].mean()) for base, s in shares.items()}})
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2 ** BITS, 100000), rng.integers(0, 2 ** BITS, 100000)
    uniform = {base: float(s.mean()) for base, s in code_sharing(a, b).items()}
    return {"by_hamming": rows, "uniform_ids": uniform, "digits": {str(k): v for k, v in SYSTEMS.items()}}


def table(doc: dict) -> str:
    """Two tables: the encoders' locality, then the MNSE code sharing per numeral system."""
    lines = ["| image noise | encoder | Hamming, 2 % closest pairs | Hamming, pairs beyond the median | AUC | "
             "Spearman |", "|---:|---|---:|---:|---:|---:|"]
    for run in doc["encoders"]:
        m, s = run["mean"], run["std"]
        name = f"PCA, {run['components']} components" if run["vision_model"] == "pca" else "raw pixels"
        lines.append(f"| {run['image_noise']:g} | {name} | {m['close']:.2f} ± {s['close']:.2f} | "
                     f"{m['far']:.2f} ± {s['far']:.2f} | {m['auc']:.3f} ± {s['auc']:.3f} | "
                     f"{m['spearman']:.3f} ± {s['spearman']:.3f} |")
    share = doc["mnse_sharing"]
    systems = list(share["digits"])
    codes = ["| Hamming distance | pairs | " + " | ".join(f"base {b} ({share['digits'][b]} digits)" for b in systems)
             + " |", "|---:|---:|" + "---:|" * len(systems)]
    for row in share["by_hamming"]:
        codes.append(f"| {row['hamming']} | {row['pairs']:,} | " + " | ".join(f"{row[b]:.3f}" for b in systems) + " |")
    codes.append("| independent uniform IDs | 100,000 | " +
                 " | ".join(f"{share['uniform_ids'][b]:.3f}" for b in systems) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(codes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--noises", type=float, nargs="+", default=[0.02, 0.1, 0.2])
    ap.add_argument("--draws", type=int, default=10, help="hyperplane seeds per encoder")
    ap.add_argument("--pairs", type=int, default=200000, help="item pairs sampled")
    ap.add_argument("--out", help="write the JSON here (e.g. docs/results/visual_ids.json)")
    args = ap.parse_args()
    doc = measure(args.seed, args.noises, args.draws, args.pairs)
    emit(doc, args.out)
    print(table(doc))


if __name__ == "__main__":
    main()
