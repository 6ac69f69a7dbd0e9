"""Report tables (bold best, paired t-test p-values) and the files the report writer makes."""
import json

import numpy as np
import pytest
from scipy import stats

from pipeline import metrics as M
from pipeline import report as R

HIB = {"auc": True, "logloss": False}


def _cells(table, row_name):
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == row_name:
            return cells[1:]
    raise AssertionError(f"row {row_name} not in\n{table}")


def test_metrics_table_bolds_best_per_direction():
    rows = {"dnn": {"auc": 0.80, "logloss": 0.45, "count": 10},
            "dcn": {"auc": 0.81, "logloss": 0.46, "count": 10},
            "fm": {"auc": None, "logloss": 0.44, "count": 10}}
    t = R.metrics_table(rows, ["auc", "logloss", "count"], HIB)
    assert _cells(t, "dcn") == ["**0.8100**", "0.4600", "10"]
    assert _cells(t, "fm") == ["–", "**0.4400**", "10"]  # lower logloss is better; counts never bold
    assert _cells(t, "dnn") == ["0.8000", "0.4500", "10"]


def test_comparison_table_mean_std_bold_and_paired_ttest():
    base_auc = [0.800, 0.802, 0.799, 0.801]
    ours_auc = [0.805, 0.806, 0.805, 0.807]
    base_ll = [0.450, 0.452, 0.449, 0.451]
    ours_ll = [0.451, 0.450, 0.453, 0.450]
    results = {"vanilla": [{"auc": a, "logloss": ll} for a, ll in zip(base_auc, base_ll)],
               "ours": [{"auc": a, "logloss": ll} for a, ll in zip(ours_auc, ours_ll)]}
    t = R.comparison_table(results, ["auc", "logloss"], "vanilla", HIB)
    p_auc = stats.ttest_rel(ours_auc, base_auc).pvalue
    p_ll = stats.ttest_rel(ours_ll, base_ll).pvalue
    assert p_auc < 0.01 and p_ll > 0.05
    ours = _cells(t, "ours")
    assert ours[0] == f"**{np.mean(ours_auc):.4f} ± {np.std(ours_auc, ddof=1):.4f}** (p={p_auc:.3g}\\*\\*)"
    assert ours[1] == f"{np.mean(ours_ll):.4f} ± {np.std(ours_ll, ddof=1):.4f} (p={p_ll:.3g})"
    assert "paired t-test" in t and "'vanilla'" in t
    base = _cells(t, "vanilla (baseline)")
    assert base[0] == f"{np.mean(base_auc):.4f} ± {np.std(base_auc, ddof=1):.4f}"  # no p for the baseline
    assert base[1] == f"**{np.mean(base_ll):.4f} ± {np.std(base_ll, ddof=1):.4f}**"  # lower mean logloss


def test_comparison_table_rejects_unaligned_or_missing():
    with pytest.raises(ValueError, match="method 'b' has 1 seed run"):
        R.comparison_table({"a": [{"auc": 0.8}, {"auc": 0.7}], "b": [{"auc": 0.8}]}, ["auc"], "a", HIB)
    with pytest.raises(ValueError, match="baseline 'c' is not among"):
        R.comparison_table({"a": [{"auc": 0.8}]}, ["auc"], "c", HIB)
    with pytest.raises(ValueError, match="method 'b', seed index 0 has no value for metric 'auc'"):
        R.comparison_table({"a": [{"auc": 0.8}], "b": [{"auc": None}]}, ["auc"], "a", HIB)
    # ECE-sized values: std in the mean's scientific style
    t = R.comparison_table({"a": [{"ece": 2e-4}, {"ece": 4e-4}]}, ["ece"], "a", {"ece": False})
    assert _cells(t, "a (baseline)") == ["**3.00e-04 ± 1.41e-04**"]
    # one seed: no std and no p-value
    t = R.comparison_table({"a": [{"auc": 0.8}], "b": [{"auc": 0.9}]}, ["auc"], "a", HIB)
    assert _cells(t, "b") == ["**0.9000** (p=n/a)"]


def test_write_eval_report_writes_its_files(tmp_path):
    rng = np.random.default_rng(0)
    train_users = rng.integers(0, 50, 3000)
    users = rng.integers(0, 55, 800)
    items, train_items = rng.integers(0, 30, 800), rng.integers(0, 30, 3000)
    metrics, preds = {}, {}
    for task, rate in (("click", 0.3), ("like", 0.1)):
        p = rng.uniform(0.01, 2 * rate, 800)
        y = (rng.random(800) < p).astype(int)
        metrics[task] = M.evaluate_predictions(y, p, users, train_users, items, train_items)
        preds[task] = (y, p) if task == "click" else {"y_true": y, "y_prob": p}
    R.write_eval_report(tmp_path / "out", metrics, preds, title="Run 1 on test")
    out = tmp_path / "out"
    for task in ("click", "like"):
        for name in (f"reliability_{task}.png", f"quintile_logloss_{task}.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["click"]["overall"]["auc"] == pytest.approx(metrics["click"]["overall"]["auc"])
    assert set(saved["like"]["slices"]) == {"activity", "impression_ratio", "new_ads"}
    md = (out / "report.md").read_text()
    assert md.startswith("# Run 1 on test")
    assert f"| click | {metrics['click']['overall']['auc']:.4f} |" in md
    assert "![reliability diagram of like](reliability_like.png)" in md
    assert "| G5 |" in md and "| IR4 |" in md
    with pytest.raises(ValueError, match="lacks task\\(s\\) \\['like'\\]"):
        R.write_eval_report(tmp_path / "bad", metrics, {"click": preds["click"]}, title="x")


def test_plot_lines_and_flatten(tmp_path):
    path = tmp_path / "curves.png"
    R.plot_lines(str(path), {"train": [0.5, 0.45, 0.44], "valid": [0.52, 0.49, 0.48]}, "loss", "epoch", "logloss")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert R.flatten_metrics({"click": {"overall": {"auc": 0.8}}}) == {"click/auc": 0.8}
