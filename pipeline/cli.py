"""The ``ctrflow`` command line.

    ctrflow simulate   --config configs/simulate_default.yaml [--set key=value ...] [--overwrite]
    ctrflow load       NAME --src DIR --out DIR [--overwrite]
    ctrflow preprocess --config configs/preprocess_sim.yaml [--set ...] [--schema EARLIER_DATA] [--overwrite]
    ctrflow train      --config configs/train_sim_dcnv2.yaml [--set ...] [--overwrite]
    ctrflow evaluate   RUN_DIR [--split test ...] [--ad-stats RAW/ads.parquet] [--visual-truth RAW]
    ctrflow compare    --config configs/compare_backbones.yaml [--set ...] [--only TEXT ...] [--check] [--jobs N]
    ctrflow export     RUN_DIR --out BASE [--keep N] [--overwrite]
    ctrflow analyze    RUN_DIR alignment [--option per_field=true ...]
    ctrflow demo       [--out demo_out]

Every config is strict YAML: an unknown option, or a value of the wrong type or out of range,
fails naming it (``pipeline.config``). ``--set a.b=3`` overrides one option (the value is parsed
as YAML 1.2: ``1e-4`` is a number). Errors a user causes exit with code 2 and one message.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from features import _tfenv  # noqa: F401

from features.errors import UserError
from pipeline.config import ConfigError, load_config, parse_override
from pipeline.visual_similarity import DEFAULT_MAX_DISTANCE


def _overrides(items):
    return dict(parse_override(s) for s in items or [])


def cmd_simulate(args):
    from pipeline.simulator import SimulatorConfig, simulate

    summary = simulate(load_config(SimulatorConfig, args.config, _overrides(args.set)), overwrite=args.overwrite)
    print(json.dumps(summary, indent=2, default=str))


def cmd_load(args):
    from pipeline.loaders import load_dataset

    print(json.dumps(load_dataset(args.name, args.src, args.out, overwrite=args.overwrite), indent=2, default=str))


def cmd_preprocess(args):
    from pipeline.beam.driver import run_preprocess
    from pipeline.preprocess_config import PreprocessConfig

    overrides = _overrides(args.set)
    if args.schema:
        overrides["schema_from"] = args.schema
    summary = run_preprocess(load_config(PreprocessConfig, args.config, overrides), overwrite=args.overwrite)
    print(json.dumps(summary, indent=2, default=str))


def cmd_train(args):
    from pipeline.train import TrainConfig, train

    cfg = load_config(TrainConfig, args.config, _overrides(args.set))
    name = os.path.splitext(os.path.basename(args.config))[0]
    summary = train(cfg, config_name=name, overwrite=args.overwrite)
    print(f"run directory: {summary['run_dir']}  ({summary['epochs_run']} epochs, {summary['seconds']:.1f} s)")


def cmd_evaluate(args):
    from pipeline.evaluate import evaluate_run, summary_table

    results = evaluate_run(args.run_dir, splits=args.split, ad_stats=args.ad_stats, visual_truth=args.visual_truth,
                           similar_distance=args.similar_distance)
    print(summary_table(results))
    print(f"wrote {os.path.join(args.run_dir, 'metrics.json')} and report.md")


def cmd_compare(args):
    from pipeline.compare import CompareConfig, check_compare, only_methods, run_compare

    cfg = load_config(CompareConfig, args.config, _overrides(args.set))
    if args.only:
        cfg = only_methods(cfg, args.only)
    if args.check:
        cells = check_compare(cfg)
        print("\n".join(f"{c['method']}: {c['parameters']:,} parameters"
                        + (f", {c['reused']} of {len(cfg.seeds)} seeds already trained" if c["reused"] else "")
                        for c in cells))
        to_train = sum(len(cfg.seeds) - c["reused"] for c in cells)
        print(f"checked {len(cells)} methods x {len(cfg.seeds)} seeds: every config loads and every model builds; "
              f"{to_train} runs to train")
        return
    out = run_compare(cfg, jobs=args.jobs)
    print(out["table"])
    print(f"wrote {out['report']}")


def cmd_export(args):
    from serving.export import export_run

    info = export_run(args.run_dir, args.out, keep=args.keep, overwrite=args.overwrite, precision=args.precision,
                      placement=args.placement)
    print(json.dumps(info, indent=2, default=str))


def cmd_analyze(args):
    from pipeline.analyses import RERUNS

    if args.analysis not in RERUNS:
        raise ConfigError(f"analyze: no analysis '{args.analysis}' to run again; expected one of {sorted(RERUNS)}")
    record = RERUNS[args.analysis](args.run_dir, **_overrides(args.option))
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2, default=str))


def cmd_demo(args):
    from pipeline.demo import run_demo

    run_demo(args.out, fast=args.fast, overwrite=args.overwrite)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctrflow", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name, fn, help_):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", required=True)
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config option")
        sp.set_defaults(fn=fn)
        return sp

    def with_overwrite(sp, what):
        sp.add_argument("--overwrite", action="store_true",
                        help=f"{what}; never a folder that is or holds this command's inputs. Without it, "
                             f"only an absent or empty folder or this command's own earlier output is written")
        return sp

    with_overwrite(with_config("simulate", cmd_simulate, "write the ads-world simulator's raw logs"),
                   "replace an existing out_dir that simulate did not write (the old one stays until the new "
                   "one is complete)")
    pre = with_overwrite(with_config("preprocess", cmd_preprocess, "Beam job: raw files -> encoded TFRecords + schema"),
                         "replace an existing output folder that preprocess did not write (the old one stays until "
                         "the new one is complete)")
    pre.add_argument("--schema", metavar="DATA_DIR",
                     help="encode with this earlier output's schema, vocabularies and head users (sets schema_from)")
    with_overwrite(with_config("train", cmd_train, "train a model (Keras fit under a tf.distribute strategy)"),
                   "replace a completed run of the same name, or a run folder train did not create (deleted "
                   "when the new run starts)")
    cmp = with_config("compare", cmd_compare, "a grid of models x options x seeds, with a significance table")
    cmp.add_argument("--check", action="store_true",
                     help="check every cell's config and build each method's model on a batch; train nothing")
    cmp.add_argument("--only", action="append", metavar="TEXT",
                     help="only the methods whose name holds TEXT, or the one method named TEXT exactly (repeatable), "
                          "with the baseline: a part of a grid, whose runs the whole grid reuses later")
    cmp.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="train N cells at a time, each in its own process sharing the CPU's threads, each "
                          "cell's output in OUT_DIR/logs/ (default 1: one at a time, in this process)")

    ld = sub.add_parser("load", help="turn a public dataset's files into raw Parquet")
    ld.add_argument("name")
    ld.add_argument("--src", required=True)
    ld.add_argument("--out", required=True)
    with_overwrite(ld, "replace an existing --out folder that load did not write (the old one stays until the "
                       "new one is complete)")
    ld.set_defaults(fn=cmd_load)

    ev = sub.add_parser("evaluate", help="metrics and report of a trained run")
    ev.add_argument("run_dir")
    ev.add_argument("--split", action="append", help="split(s) to evaluate (default: the run's eval_splits)")
    ev.add_argument("--ad-stats", help="ad table (Parquet/CSV) with the ad column and impression_ratio, e.g. the "
                                       "simulator's <raw>/ads.parquet: impression-ratio slices by Rec4Ad Eq. 2")
    ev.add_argument("--visual-truth", metavar="RAW",
                    help="the simulator's output folder (ads.parquet, items.parquet): adds each task's coefficient of "
                         "variation of scores among visually similar ads shown to one user (Tencent Sec. 3.2)")
    ev.add_argument("--similar-distance", type=float, default=DEFAULT_MAX_DISTANCE,
                    help="ads are similar when their items' visual attributes lie within this distance "
                         f"(default {DEFAULT_MAX_DISTANCE})")
    ev.set_defaults(fn=cmd_evaluate)

    ex = sub.add_parser("export", help="SavedModel for TF Serving: BASE/<model_name>/<version>/")
    ex.add_argument("run_dir")
    ex.add_argument("--out", required=True)
    ex.add_argument("--keep", type=int, default=3,
                    help="keep the last N versions export wrote (version folders put there by hand are never removed)")
    ex.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default="float32",
                    help="serve the model in this Keras policy: mixed_bfloat16 computes the MLP hidden layers after "
                         "the first in bfloat16 (fast only on CPUs with AVX512-BF16 / AMX; outputs stay float32)")
    ex.add_argument("--placement", choices=["hidden", "mlp", "embeddings"], default="hidden",  # layers.PLACEMENTS
                    help="with --precision mixed_bfloat16, what computes in bfloat16: hidden (the MLP layers after "
                         "the first), mlp (every MLP layer) or embeddings (also the field embeddings as handed on)")
    with_overwrite(ex, "adopt an existing BASE/<model_name> folder that export did not create (nothing in it is "
                       "deleted but versions export wrote, beyond --keep); models.config is always merged, never "
                       "replaced")
    ex.set_defaults(fn=cmd_export)

    an = sub.add_parser("analyze", help="run a run analysis again on a completed run, with other options "
                                        "(written under RUN_DIR/analysis/)")
    an.add_argument("run_dir")
    an.add_argument("analysis", help="the analysis to run again: alignment (HDA's E_sh check)")
    an.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="an option of the analysis (YAML value), e.g. per_field=true")
    an.set_defaults(fn=cmd_analyze)

    dm = sub.add_parser("demo", help="simulate -> preprocess -> train -> evaluate -> export on default data")
    dm.add_argument("--out", default="demo_out")
    dm.add_argument("--fast", action="store_true", help="a much smaller simulation (smoke test)")
    with_overwrite(dm, "replace folders under --out that the demo's commands did not write (raw, data, "
                       "runs/dcnv2, serving/dcnv2)")
    dm.set_defaults(fn=cmd_demo)
    return p


# what a user causes and can fix: one message, exit code 2; anything else is a bug (traceback, exit 1)
USER_ERRORS = (UserError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
               FloatingPointError)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except USER_ERRORS as exc:
        print(f"ctrflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
