"""DeepCTR 0.9.4 side of bench/train_throughput.py (runs in a scratch virtualenv).

Same data (encoded ids from ctrflow's TFRecords), embedding 16, MLP [400, 400, 400],
batch 4096, Adam 1e-3, Keras dropout ``--dropout`` on the MLP layers. DCNv2 is DeepCTR's ``DCN`` with the matrix (DCN-M) cross.
Evaluated like ctrflow's side (valid and test AUC after every epoch, summarised by
``epoch_stats.epoch_summary``). Prints one ``RESULT {json}`` line.
"""
import argparse
import json
import os
import resource
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from deepctr.feature_column import SparseFeat, get_feature_names  # noqa: E402
from deepctr.models import DCN, WDL, DeepFM  # noqa: E402
from epoch_stats import epoch_summary, timed_epochs  # noqa: E402  (bench/ is the script directory)
from sklearn.metrics import roc_auc_score  # noqa: E402

NAMES = ["user_id", "age_bucket", "gender", "city", "device", "occupation", "item_id", "category", "brand",
         "ad_id"]  # the fields of an npz written before it named them (the simulator's)


def build(model, columns, dropout):
    units = (400, 400, 400)
    if model == "dnn":  # WDL with no wide part is DeepCTR's plain DNN
        return WDL([], columns, dnn_hidden_units=units, dnn_dropout=dropout, task="binary")
    if model == "deepfm":
        return DeepFM(columns, columns, dnn_hidden_units=units, dnn_dropout=dropout, task="binary")
    if model == "dcnv2":
        return DCN(columns, columns, cross_num=3, cross_parameterization="matrix", dnn_hidden_units=units,
                   dnn_dropout=dropout, task="binary")
    raise ValueError(model)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npz", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.0, help="Keras dropout of every MLP layer")
    args = ap.parse_args()
    d = np.load(args.npz)
    sizes = d["vocab_sizes"]
    names = [str(n) for n in d["names"]] if "names" in d else NAMES
    columns = [SparseFeat(n, vocabulary_size=int(s), embedding_dim=16) for n, s in zip(names, sizes)]
    x = {s: {n: d[f"{s}/{n}"].reshape(-1) for n in get_feature_names(columns)} for s in ("train", "valid", "test")}
    y = {s: d[f"{s}/click"].reshape(-1) for s in ("train", "valid", "test")}
    tf.keras.utils.set_random_seed(args.seed)
    model = build(args.model, columns, args.dropout)
    model.compile(tf.keras.optimizers.Adam(1e-3), "binary_crossentropy")
    def split_aucs():
        return {split: float(roc_auc_score(y[split], model.predict(x[split], batch_size=4096, verbose=0).reshape(-1)))
                for split in ("valid", "test")}

    epoch_s, epoch_cpu, auc = timed_epochs(
        lambda: model.fit(x["train"], y["train"], batch_size=4096, epochs=1, verbose=0, shuffle=True),
        split_aucs, args.epochs)
    t0 = time.perf_counter()
    model.predict(x["test"], batch_size=4096, verbose=0)
    pred_s = time.perf_counter() - t0
    result = {"library": "deepctr", "model": args.model, "xla": False, "precision": "float32", "dropout": args.dropout, "seed": args.seed,
              **epoch_summary(epoch_s, epoch_cpu, len(y["train"]), auc["valid"], auc["test"]),
              "predict_examples_per_s": len(y["test"]) / pred_s,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
