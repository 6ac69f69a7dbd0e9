"""Rec4Ad's premises on the simulator's default world, in numbers and one figure.

    python bench/rec4ad_premises.py [--seeds 2024 2025 2026 2027 2028] [--repeats 3] [--out docs/results/rec4ad_premises.json]
                                    [--figure docs/results/rec4ad_premises.png]

Simulates `configs/simulate_default.yaml` once per seed (the first seed is the default world)
and reads summary.json's `rec4ad_premises` (pipeline/simulator/premises.py): impression
ratios (Rec4Ad Eq. 2) over 12 groups of ads (Fig. 4 left), the ads' and the rec log's
impression shares per group (Fig. 5 left), the rec rows sample retrieval can map against the
ads log's size (Sec. 3.1), and the source coefficient of a logistic regression of click on the
click model's terms (shared decision rationales). Also times the default world against the
former rec-log size (20 k rows), alternately, best of ``--repeats``. Prints one JSON document and a table; the figure shows the
first seed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from report_json import emit, machine  # noqa: E402  (bench/ is the script directory)

CONFIG = "configs/simulate_default.yaml"
FORMER_REC_IMPRESSIONS = 20000  # the default before the rec log was sized for Rec4Ad
PAPER = {"top_bottom_ir_ratio": 200.0, "rec_per_ads_row": round(0.6 / 1.9, 3)}  # Fig. 4; 0.6 B rec vs 1.9 B ads


def simulate_world(work: str, overrides: dict) -> dict:
    """summary.json of the default world with ``overrides``."""
    from pipeline.config import load_config
    from pipeline.simulator import SimulatorConfig, simulate

    cfg = load_config(SimulatorConfig, os.path.join(REPO, CONFIG), {"out_dir": os.path.join(work, "raw"), **overrides})
    return simulate(cfg, progress=False, overwrite=True)


def measure(seeds, repeats: int) -> dict:
    runs = []
    with tempfile.TemporaryDirectory(prefix="rec4ad_premises_") as work:
        for seed in seeds:
            s = simulate_world(work, {"seed": seed})
            runs.append({"seed": seed, "seconds": s["seconds"], "rows": s["rows"],
                         "rec4ad_premises": s["rec4ad_premises"]})
        former, timing = None, {"default": [], "former_rec_size": []}
        for _ in range(repeats):  # alternately, so both see the same machine load
            timing["default"].append(simulate_world(work, {"seed": seeds[0]})["seconds"])
            former = simulate_world(work, {"seed": seeds[0], "rec_impressions": FORMER_REC_IMPRESSIONS})
            timing["former_rec_size"].append(former["seconds"])
    return {"machine": machine(), "config": CONFIG, "paper": PAPER, "runs": runs,
            "simulate_seconds": {"seed": seeds[0], "repeats": repeats, **timing,
                                 "default_min": min(timing["default"]),
                                 "former_rec_size_min": min(timing["former_rec_size"])},
            "former_rec_size": {"rec_impressions": FORMER_REC_IMPRESSIONS, "rows": former["rows"],
                                "rec_retrievable_per_ads_row":
                                    former["rec4ad_premises"]["rec_retrievable_per_ads_row"]}}


def table(doc: dict) -> str:
    """One row per seed and the paper's figures."""
    lines = ["| world | IR group 1 / 12 | same, random policy | bottom-25 % ads: share of ad impressions | ... of rec impressions "
             "| retrievable rec rows / ads rows | source coefficient (se) | simulate s (best of repeats) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    seconds = doc["simulate_seconds"]
    for run in doc["runs"]:
        p = run["rec4ad_premises"]
        g, e = p["ir_groups"], p["source_effect"]
        lines.append(f"| seed {run['seed']} | {g['top_bottom_ir_ratio']:.0f}x | {p['random_policy_top_bottom_ir_ratio']:.1f}x "
                     f"| {100 * g['bottom_quarter_ads_impression_share']:.1f} % "
                     f"| {100 * g['bottom_quarter_rec_impression_share']:.1f} % "
                     f"| {p['rec_retrievable_per_ads_row']:.2f} "
                     f"| {e['source_rec']:+.3f} ({e['source_rec_se']:.3f}) | "
                     f"{format(seconds['default_min'], '.1f') if run['seed'] == seconds['seed'] else ''} |")
    former = doc["former_rec_size"]
    lines.append(f"| seed {doc['runs'][0]['seed']}, former rec log ({former['rec_impressions']:,} rows) | | | | "
                 f"| {former['rec_retrievable_per_ads_row']:.2f} | | {seconds['former_rec_size_min']:.1f} |")
    paper = doc["paper"]
    lines.append(f"| paper (Fig. 4, Sec. 4.1) | ~{paper['top_bottom_ir_ratio']:.0f}x | | | "
                 f"| {paper['rec_per_ads_row']:.2f} | | |")
    return "\n".join(lines)


def figure(doc: dict, path: str) -> None:
    """Left: mean IR per group (log scale), ads log vs random policy (Fig. 4 left). Right: the
    share of ad impressions and of rec impressions per IR group (Fig. 5 left)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    run = doc["runs"][0]
    p = run["rec4ad_premises"]
    g = p["ir_groups"]
    x = np.arange(1, g["groups"] + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.semilogy(x, g["mean_ir"], "o-", color="tab:red", label="production ads log (pCTR x bid)")
    left.semilogy(x, p["random_policy_mean_ir"], "s-", color="tab:blue", label="random-policy log (uniform)")
    left.set(xlabel="IR group (ads sorted by impression ratio, descending)", ylabel="mean impression ratio",
             title=f"IR per group: first / last = {g['top_bottom_ir_ratio']:.0f}x", xticks=x)
    left.legend(fontsize=8)
    width = 0.4
    right.bar(x - width / 2, np.asarray(g["ads_impression_share"]) * 100, width, color="tab:red", label="ads log")
    right.bar(x + width / 2, np.asarray(g["rec_impression_share"]) * 100, width, color="tab:green",
              label="rec log (impressions of the ads' items)")
    right.set(xlabel="IR group", ylabel="share of impressions (%)", title="Impressions per IR group", xticks=x)
    right.legend(fontsize=8)
    fig.suptitle(f"Simulator default world (seed {run['seed']}): Rec4Ad Fig. 4 left / Fig. 5 left", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026, 2027, 2028])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the default and the former rec size")
    ap.add_argument("--out", help="write the JSON here (e.g. docs/results/rec4ad_premises.json)")
    ap.add_argument("--figure", help="write the figure here (e.g. docs/results/rec4ad_premises.png)")
    args = ap.parse_args()
    doc = measure(args.seeds, args.repeats)
    emit(doc, args.out)
    print(table(doc))
    if args.figure:
        figure(doc, args.figure)


if __name__ == "__main__":
    main()
