"""DeepCTR 0.9.4 side of bench/train_throughput.py (runs in a scratch virtualenv).

Same data (encoded ids from ctrflow's TFRecords), embedding 16, MLP [400, 400, 400],
batch 4096, Adam 1e-3. DCNv2 is DeepCTR's ``DCN`` with the matrix (DCN-M) cross.
Prints one ``RESULT {json}`` line.
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
from sklearn.metrics import roc_auc_score  # noqa: E402

NAMES = ["user_id", "age_bucket", "gender", "city", "device", "occupation", "item_id", "category", "brand",
         "ad_id"]


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build(model, columns):
    units = (400, 400, 400)
    if model == "dnn":  # WDL with no wide part is DeepCTR's plain DNN
        return WDL([], columns, dnn_hidden_units=units, task="binary")
    if model == "deepfm":
        return DeepFM(columns, columns, dnn_hidden_units=units, task="binary")
    if model == "dcnv2":
        return DCN(columns, columns, cross_num=3, cross_parameterization="matrix", dnn_hidden_units=units,
                   task="binary")
    raise ValueError(model)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npz", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    d = np.load(args.npz)
    sizes = d["vocab_sizes"]
    columns = [SparseFeat(n, vocabulary_size=int(s), embedding_dim=16) for n, s in zip(NAMES, sizes)]
    x_train = {n: d[f"train/{n}"].reshape(-1) for n in get_feature_names(columns)}
    x_test = {n: d[f"test/{n}"].reshape(-1) for n in get_feature_names(columns)}
    y_train, y_test = d["train/click"].reshape(-1), d["test/click"].reshape(-1)
    tf.keras.utils.set_random_seed(1)
    model = build(args.model, columns)
    model.compile(tf.keras.optimizers.Adam(1e-3), "binary_crossentropy")
    times, cpu = [], []
    for _ in range(args.epochs):
        t0, c0 = time.perf_counter(), _cpu()
        model.fit(x_train, y_train, batch_size=4096, epochs=1, verbose=0, shuffle=True)
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu() - c0)
    model.predict(x_test, batch_size=4096, verbose=0)
    t0 = time.perf_counter()
    p = model.predict(x_test, batch_size=4096, verbose=0).reshape(-1)
    pred_s = time.perf_counter() - t0
    print("RESULT " + json.dumps({
        "library": "deepctr", "model": args.model, "xla": False,
        "train_examples_per_s": len(y_train) / float(np.mean(times[1:])), "first_epoch_s": times[0],
        "train_cpu_us_per_example": float(np.mean(cpu[1:])) / len(y_train) * 1e6,
        "predict_examples_per_s": len(y_test) / pred_s, "test_auc": float(roc_auc_score(y_test, p)),
        "train_rows": int(len(y_train)), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
        flush=True)


if __name__ == "__main__":
    main()
