"""Training throughput of GPRec and its user-modeling baselines against their MLP backbone, measured in one run.

    python bench/gprec_throughput.py [--rows 100000] [--epochs 3] [--seeds 1 2 3] \
        [--models "gprec input" dgpm ...] [--out docs/benchmarks/gprec_throughput.json]

Data: the simulator (``configs/simulate_default.yaml`` at ``--rows`` ad impressions, without the
rec and random-policy logs) preprocessed with ``configs/preprocess_sim.yaml`` (its feature roles
are what GPRec and the baselines read: personal = ``user_id``, user = the profile, item / ad) into
``--work`` (reused when present), time split. The configs' batch is 4096, so the default 100,000
impressions give 19 training steps per epoch (77,824 rows; 60,000 would give 11).

Models (``SUITE.models``): ``configs/gprec_sim.yaml`` (the paper's settings: embedding 16, MLP
backbone [64, 32, 16] with dropout 0.2, G = 60, Adam 0.002, batch 4096; every feature of the
schema) with a few overrides, built and compiled as ``ctrflow train`` does (``pipeline/train.py``)
but without its callbacks, so the training step alone is timed: ``mlp``, the backbone alone
(framework none); GPRec with each strategy (``gprec input``, ``gprec dp``, ``gprec ensemble``) and
with the shared-trunk group classifier (``gprec shared_trunk``, strategy input); the baselines
``dgpm``, ``apg`` and ``pepnet`` at their default options over the same backbone.

Pairs (``bench/paired_throughput.py``): per (model, seed) one process trains the MLP and the model,
one after the other, the MLP first for the 1st, 3rd, ... seed and second for the others; seeds
outermost. The model / MLP ratios, paired by seed, are what is robust on a shared machine; ``mlp``
against itself (the first pair of every seed) is their noise floor. Throughput is over the epochs
after the first (tracing excluded): all of them (rows / time) and the best one; CPU time per
example is the cost load changes least. AUC: click's test AUC at the epoch of best validation
AUC, a check that each model learns in these few epochs (not a comparison of accuracy).

The full run (8 pairs x 3 seeds, ``--out docs/benchmarks/gprec_throughput.json``) is written up in
``docs/benchmarks.md``. Not in ``make bench``: run it alone (``--models`` for a subset).
Prints one JSON document and a markdown table.
"""
import paired_throughput  # bench/ is the script directory; it puts the repository on the path

BACKBONE = {"model.framework": "none", "model.framework_options": {}}
SUITE = paired_throughput.Suite(
    name="gprec", peer="mlp", peer_label="MLP", preprocess="preprocess_sim.yaml", rows=100_000,
    models={
        "mlp": ("gprec_sim.yaml", BACKBONE),
        **{f"gprec {strategy}": ("gprec_sim.yaml", {"model.framework_options.strategy": strategy})
           for strategy in ("input", "dp", "ensemble")},
        "gprec shared_trunk": ("gprec_sim.yaml", {"model.framework_options.strategy": "input",
                                                  "model.framework_options.classifier": "shared_trunk"}),
        **{name: ("gprec_sim.yaml", {**BACKBONE, "model.framework": name}) for name in ("dgpm", "apg", "pepnet")},
    })


def table(doc: dict) -> str:
    """The markdown table of a JSON document this script wrote: per model its structure, its own
    figures and its ratios to the MLP backbone."""
    return paired_throughput.table(doc, SUITE.peer_label)


if __name__ == "__main__":
    paired_throughput.main(SUITE, __file__, __doc__)
