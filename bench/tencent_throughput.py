"""Training throughput of the Tencent KDD'24 models against DCNv2, measured in one run.

    python bench/tencent_throughput.py [--rows 60000] [--epochs 3] [--seeds 1 2 3] \
        [--models gwpfm me ...] [--out docs/benchmarks/tencent_throughput.json]

Data: the simulator (``configs/simulate_default.yaml`` at ``--rows`` ad impressions, without the
rec and random-policy logs) preprocessed with ``configs/preprocess_sim_visual.yaml`` (so
``visual_id``, ``hist_gap`` and the pretrained vectors exist) into ``--work`` (reused when
present), time split. Models (``SUITE.models``): each one's ready config with a few overrides, built
and compiled as ``ctrflow train`` does (``pipeline/train.py``) but without its callbacks, so the
training step alone is timed; sizes are the configs' own (the JSON lists them). Every model reads
DCNv2's features, the random-ID baseline of ``configs/compare_visual_sim.yaml``, but the visual
one (``configs/train_sim_visual.yaml``'s: ``visual_id`` instead of ``ad_id``, task click only).

Pairs (``bench/paired_throughput.py``): per (model, seed) one process trains DCNv2 and the model,
one after the other, DCNv2 first for the 1st, 3rd, ... seed and second for the others; seeds
outermost. The model / DCNv2 ratios, paired by seed, are what is robust on a shared machine;
``dcnv2`` against itself (the first pair of every seed) is their noise floor. Throughput is over
the epochs after the first (tracing excluded): all of them (rows / time) and the best one; CPU
time per example is the cost load changes least. AUC: the first served task's test AUC at the
epoch of best validation AUC, a check that each model learns in these few epochs (accuracy is
the subject of the ``ctrflow compare`` grids of docs/results/tencent.md).

A full run (15 pairs x 3 seeds) took 45 min on the development machine's 2 loaded vCPUs, over 40 % of
it ME-MMoE, STEM and the two projection models; ``--models`` / ``--seeds`` measure a subset.
Prints one JSON document and a markdown table.
"""
import paired_throughput  # bench/ is the script directory; it puts the repository on the path
from pipeline.config import read_yaml

SUITE = paired_throughput.Suite(
    name="tencent", peer="dcnv2", peer_label="DCNv2", preprocess="preprocess_sim_visual.yaml", rows=60_000,
    models={
        "dcnv2": ("train_sim_dcnv2.yaml", {}),
        "gwpfm": ("train_sim_dcnv2.yaml", {"model.backbone": "gwpfm", "model.backbone_options": {}}),
        "gwpfm + projection": ("train_sim_dcnv2.yaml", {"model.backbone": "gwpfm",
                                                        "model.backbone_options": {"projection": True}}),
        "fwfm + projection": ("train_sim_dcnv2.yaml", {"model.backbone": "fwfm",
                                                       "model.backbone_options": {"projection": True}}),
        "me": ("me_moments_sim.yaml", {}),
        **{preset: ("experts_sim.yaml", {"model.framework": preset})
           for preset in ("shared_bottom", "mmoe", "ple", "me_mmoe", "stem", "ame")},
        "stem_al": ("stem_al_sim.yaml", {}),
        "dcnv2 + tim": ("train_sim_tim.yaml", {"analysis": []}),
        "dcnv2 + similarity": ("train_sim_similarity.yaml", {}),
        "dcnv2, visual_id for ad_id": ("train_sim_visual.yaml", {"tasks": ["click"]}),
    },
    features=read_yaml(paired_throughput.config("compare_visual_sim.yaml"))["methods"]["random ad ids"]["features"],
    own_features=("dcnv2, visual_id for ad_id",))


def table(doc: dict) -> str:
    """The markdown table of a JSON document this script wrote (docs/benchmarks.md, section "Tencent
    models against DCNv2"): per model its structure, its own figures and its ratios to DCNv2."""
    return paired_throughput.table(doc, SUITE.peer_label)


if __name__ == "__main__":
    paired_throughput.main(SUITE, __file__, __doc__)
