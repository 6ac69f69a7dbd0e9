"""``ctrflow compare`` in the shape of Rec4Ad Tables 1-2: an "Impv." column (signed difference of
means, positive = better) beside every metric, and one table per slice group (IR1 = top 25 % of ads
by impression ratio, IR4 = bottom 25 %) with mean ± std and the paired t-test, the raw per-seed
numbers of every slice in ``results.json``; ``--check`` checks the slice keys and the ads table."""
import json
import os

import numpy as np
import pytest
import yaml
from scipy import stats

from pipeline.compare import CompareConfig, check_compare, run_compare
from pipeline.config import ConfigError, from_dict, to_dict
from train_helpers import train_config

SEEDS = [1, 2, 3]
# per method, per seed: overall and two impression-ratio groups; ECE at the paper's scale (1e-4)
GRID = {
    "Base": [{"auc": 0.6778, "ece": 7.0e-4, "IR1": (0.6741, 2.0e-4), "IR4": (0.6625, 2.1e-3)},
             {"auc": 0.6779, "ece": 6.0e-4, "IR1": (0.6740, 2.2e-4), "IR4": (0.6620, 2.0e-3)},
             {"auc": 0.6776, "ece": 8.0e-4, "IR1": (0.6743, 1.9e-4), "IR4": (0.6627, 2.2e-3)}],
    "Rec4Ad": [{"auc": 0.6805, "ece": 2.0e-4, "IR1": (0.6757, 2.4e-4), "IR4": (0.6654, 1.0e-3)},
               {"auc": 0.6806, "ece": 3.0e-4, "IR1": (0.6755, 1.6e-4), "IR4": (0.6650, 1.1e-3)},
               {"auc": 0.6804, "ece": 1.0e-4, "IR1": (0.6759, 2.0e-4), "IR4": (0.6655, 0.9e-3)}],
}


def _evaluation(cell):
    groups = {g: {"auc": cell[g][0], "ece": cell[g][1], "count": 100} for g in ("IR1", "IR4")}
    groups.update({g: {"auc": 0.5, "ece": 0.01, "count": 100} for g in ("IR2", "IR3")})
    return {"click": {"overall": {"auc": cell["auc"], "ece": cell["ece"]},
                      "slices": {"impression_ratio": groups}}}


def _fake_runs(monkeypatch, seen):
    """Training skipped; evaluation returns GRID's numbers and records the ad_stats it was given."""
    import pipeline.compare as compare

    monkeypatch.setattr(compare, "train", lambda cfg, config_name: None)

    def evaluate(run_dir, splits, write, ad_stats=None, visual_truth=None):
        seen.append(ad_stats)
        method, seed = os.path.basename(run_dir).rsplit("-seed", 1)
        return {splits[0]: _evaluation(GRID[method][SEEDS.index(int(seed))])}

    monkeypatch.setattr(compare, "evaluate_run", evaluate)


def _grid(sim_data, tmp_path, **kw):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(to_dict(train_config(sim_data, tmp_path / "runs", epochs=1))))
    return from_dict(CompareConfig, {"base_config": str(base), "out_dir": str(tmp_path / "grid"), "seeds": SEEDS,
                                     "baseline": "Base", "metrics": ["auc", "ece"],
                                     "methods": {"Base": {}, "Rec4Ad": {"model.embedding_dim": 4}}, **kw})


def _rows(table):
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, {r[0].replace(" (baseline)", ""): r[1:] for r in
                    ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}


def _check_table(table, values):
    """Every cell against numpy / scipy: mean ± std, the paired t-test, Impv. = signed difference."""
    header, rows = _rows(table)
    assert header == ["method", "auc", "Impv.", "ece", "Impv."]
    for col, metric, sign in ((0, "auc", 1.0), (2, "ece", -1.0)):
        base, ours = np.array(values["Base"][metric]), np.array(values["Rec4Ad"][metric])
        for method, v in (("Base", base), ("Rec4Ad", ours)):
            spec = ".2e" if v.mean() < 1e-3 else ".4f"  # ECE-sized means in scientific notation, std alike
            assert rows[method][col].split(" (p=")[0].strip("*") == f"{v.mean():{spec}} ± {v.std(ddof=1):{spec}}"
        assert rows["Base"][col + 1] == "–"
        cell = rows["Rec4Ad"][col]
        assert float(cell.split("(p=")[1].split("\\")[0].rstrip(")")) == pytest.approx(
            stats.ttest_rel(ours, base).pvalue, rel=5e-3)
        diff = sign * (ours.mean() - base.mean())
        assert rows["Rec4Ad"][col + 1] == format(diff, "+.2e" if abs(diff) < 1e-3 else "+.4f"), (metric, diff)


def test_compare_writes_overall_and_per_slice_tables_with_impv(sim_data, tmp_path, monkeypatch):
    seen = []
    _fake_runs(monkeypatch, seen)
    cfg = _grid(sim_data, tmp_path, slices={"impression_ratio": ["IR1", "IR4"]}, ad_stats="ads.parquet")
    out = run_compare(cfg, verbose=0)
    assert seen == ["ads.parquet"] * 6  # the ads table reaches every evaluation
    overall = {m: {k: [c[k] for c in cells] for k in ("auc", "ece")} for m, cells in GRID.items()}
    _check_table(out["table"], overall)
    report = open(out["report"]).read()
    assert report.index("## Overall") < report.index("## IR1") < report.index("## IR4")
    for i, group in enumerate(("IR1", "IR4")):
        table = out["tables"][i + 1]
        assert table.startswith(f"## {group}: by ad impression ratio") and table in report
        _check_table(table, {m: {"auc": [c[group][0] for c in cells], "ece": [c[group][1] for c in cells]}
                             for m, cells in GRID.items()})
    # ECE at the paper's scale keeps its digits: IR1's Rec4Ad seeds 2.4e-4 / 1.6e-4 / 2.0e-4
    assert "2.00e-04 ± 4.00e-05" in out["tables"][1]
    # the raw per-seed numbers of every slice group, IR2 / IR3 too
    raw = json.load(open(os.path.join(cfg.out_dir, "results.json")))
    assert raw["results"]["Rec4Ad"] == [{"auc": c["auc"], "ece": c["ece"]} for c in GRID["Rec4Ad"]]
    assert sorted(raw["slices"]["impression_ratio"]) == ["IR1", "IR2", "IR3", "IR4"]
    assert raw["slices"]["impression_ratio"]["IR4"]["Base"] == [
        {"auc": c["IR4"][0], "ece": c["IR4"][1], "count": 100} for c in GRID["Base"]]
    assert raw["config"]["slices"] == {"impression_ratio": ["IR1", "IR4"]}


def test_a_slice_the_evaluation_did_not_write_is_named(sim_data, tmp_path, monkeypatch):
    _fake_runs(monkeypatch, [])
    cfg = _grid(sim_data, tmp_path, slices={"activity": ["G1"]})
    with pytest.raises(ConfigError, match=r"slices\.activity: the runs' evaluation has no group G1 .*"
                                          r"\['impression_ratio'\]"):
        run_compare(cfg, verbose=0)
    assert json.load(open(os.path.join(cfg.out_dir, "results.json")))["slices"]  # raw numbers kept


def test_hda_table6_activity_logloss_per_group_beside_the_overall_gp_metrics(sim_data, tmp_path, monkeypatch):
    """HDA Table 6 from a grid: metrics [auc, logloss, GP-LT, GAP], slices {activity: [G1..G5]}; each
    group's table shows auc and logloss (GP-LT / GAP exist for a whole split only, not per slice)."""
    import pipeline.compare as compare

    monkeypatch.setattr(compare, "train", lambda cfg, config_name: None)
    groups = ["G1", "G2", "G3", "G4", "G5"]

    def logloss(method, seed, k):  # G1 the worst; HDA better on the least active
        return 0.30 + 0.02 * (4 - k) - (0.01 * (4 - k) if method == "HDA" else 0.0) + 0.001 * seed

    def evaluate(run_dir, splits, write, ad_stats=None, visual_truth=None):
        method, seed = os.path.basename(run_dir).rsplit("-seed", 1)
        seed = int(seed)
        act = {g: {"auc": 0.7, "logloss": logloss(method, seed, k), "count": 100} for k, g in enumerate(groups)}
        overall = {"auc": 0.7, "logloss": 0.3 + 0.001 * seed, "GP-LT": 0.35 + 0.001 * seed, "GAP": 0.05 + 0.001 * seed}
        return {splits[0]: {"click": {"overall": overall, "slices": {"activity": act}}}}

    monkeypatch.setattr(compare, "evaluate_run", evaluate)
    cfg = from_dict(CompareConfig, {**to_dict(_grid(sim_data, tmp_path)), "baseline": "Base",
                                    "methods": {"Base": {}, "HDA": {"model.embedding_dim": 4}},
                                    "metrics": ["auc", "logloss", "GP-LT", "GAP"],
                                    "slices": {"activity": groups}})
    out = run_compare(cfg, verbose=0)
    assert _rows(out["table"])[0] == ["method", "auc", "Impv.", "logloss", "Impv.", "GP-LT", "Impv.", "GAP", "Impv."]
    tables = out["tables"][1:]
    assert [t.split(":")[0] for t in tables] == [f"## {g}" for g in groups]
    for k, table in enumerate(tables):
        assert "by user activity (training samples; G1 = least active)" in table
        header, rows = _rows(table)
        assert header == ["method", "auc", "Impv.", "logloss", "Impv."]
        for method in ("Base", "HDA"):
            values = np.array([logloss(method, s, k) for s in SEEDS])
            assert rows[method][2].split(" (p=")[0].strip("*") == f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def test_slice_keys_are_checked_at_load_and_by_check(sim_data, sim_raw, tmp_path):
    with pytest.raises(ConfigError, match=r"slices\.ir: unknown slice; known: \['activity', 'impression_ratio', 'new_ads'\]"):
        _grid(sim_data, tmp_path, slices={"ir": ["IR1"]})
    with pytest.raises(ConfigError, match=r"slices\.impression_ratio = \['IR1', 'IR9'\]: expected distinct groups "
                                          r"from \['IR1', 'IR2', 'IR3', 'IR4'\]"):
        _grid(sim_data, tmp_path, slices={"impression_ratio": ["IR1", "IR9"]})
    ads = os.path.join(sim_raw, "ads.parquet")
    ok = _grid(sim_data, tmp_path, slices={"impression_ratio": ["IR1", "IR4"], "activity": ["G1"]}, ad_stats=ads)
    assert [c["method"] for c in check_compare(ok)] == ["Base", "Rec4Ad"]
    with pytest.raises(FileNotFoundError, match=r"ad stats table '.*nowhere.parquet' does not exist"):
        check_compare(_grid(sim_data, tmp_path, ad_stats=str(tmp_path / "nowhere.parquet")))
    bad = tmp_path / "ads.csv"
    bad.write_text("ad_id\na1\n")
    with pytest.raises(ConfigError, match=r"compare method 'Base': ad stats table .* lacks column\(s\) "
                                          r"\['impression_ratio'\]"):
        check_compare(_grid(sim_data, tmp_path, ad_stats=str(bad)))
    assert not (tmp_path / "grid").exists()


@pytest.mark.slow
def test_compare_trains_and_tabulates_the_real_slices(sim_data, sim_raw, tmp_path):
    """End to end (tiny runs, ~40 s): each slice table's numbers are the runs' own evaluation of
    that group (their metrics.json), with the simulator's logged impression ratios."""
    cfg = _grid(sim_data, tmp_path, seeds=[1], slices={"impression_ratio": ["IR1", "IR4"]},
                ad_stats=os.path.join(sim_raw, "ads.parquet"),
                base_overrides={"steps_per_epoch": 3, "epochs": 1, "eval_splits": ["test"]})
    out = run_compare(cfg, verbose=0)
    for method in ("Base", "Rec4Ad"):
        for i, seed in enumerate(cfg.seeds):
            saved = json.load(open(os.path.join(cfg.out_dir, "runs", f"{method}-seed{seed}", "metrics.json")))
            for group in ("IR1", "IR4"):
                want = saved["test"]["click"]["slices"]["impression_ratio"][group]
                got = out["slices"]["impression_ratio"][group][method][i]
                assert got == {"auc": want["auc"], "ece": want["ece"], "count": want["count"]}
    _, rows = _rows(out["tables"][2])
    ir4 = {m: out["slices"]["impression_ratio"]["IR4"][m][0]["auc"] for m in ("Base", "Rec4Ad")}
    assert rows["Rec4Ad"][0].split(" (p=")[0].strip("*") == f"{ir4['Rec4Ad']:.4f}"
    assert rows["Rec4Ad"][1] == format(ir4["Rec4Ad"] - ir4["Base"], "+.2e" if abs(ir4["Rec4Ad"] - ir4["Base"]) < 1e-3
                                       else "+.4f")


def test_method_names_become_flat_run_folders(sim_data, tmp_path):
    """'w/o SABN' (the paper's ablation names) must not nest folders or climb out of out_dir."""
    from pipeline.compare import train_configs

    cfg = _grid(sim_data, tmp_path, methods={"Base": {}, "w/o SABN": {}, "../x": {}})
    names = sorted(c.run_name for c in train_configs(cfg).values())
    assert names == [f"{m}-seed{s}" for m in (".._x", "Base", "w_o_SABN") for s in SEEDS]
    with pytest.raises(ConfigError, match=r"methods 'w/o SABN' and 'w_o SABN' would share the run folders"):
        _grid(sim_data, tmp_path, methods={"Base": {}, "w/o SABN": {}, "w_o SABN": {}})
    with pytest.raises(ConfigError, match=r"run_name = '\.\./x': expected a folder name"):
        train_config(sim_data, tmp_path / "runs", run_name="../x")


def test_multi_task_grids_get_a_table_per_task_and_the_mean_over_tasks(sim_data, tmp_path, monkeypatch):
    """``tasks``: each task's own table, then the per-seed mean over the tasks (STEM / AME's
    "average AUC"), each with mean ± std, paired t-test and Impv. against the baseline."""
    import pipeline.compare as compare

    monkeypatch.setattr(compare, "train", lambda cfg, config_name: None)
    # auc per (method, seed, task): conversion moves the other way from click
    aucs = {"Base": {"click": [0.70, 0.71, 0.69], "conversion": [0.60, 0.62, 0.61]},
            "Rec4Ad": {"click": [0.72, 0.725, 0.70], "conversion": [0.59, 0.60, 0.605]}}

    def evaluate(run_dir, splits, write, ad_stats=None, visual_truth=None):
        method, seed = os.path.basename(run_dir).rsplit("-seed", 1)
        i = SEEDS.index(int(seed))
        return {splits[0]: {t: {"overall": {"auc": aucs[method][t][i], "ece": 0.01}, "slices": {}}
                            for t in ("click", "conversion")}}

    monkeypatch.setattr(compare, "evaluate_run", evaluate)
    out = run_compare(_grid(sim_data, tmp_path, tasks=["click", "conversion"]), verbose=0)
    titles = [t.splitlines()[0] for t in out["tables"]]
    assert titles == ["## Overall", "## Task `click`", "## Task `conversion`", "## Mean over tasks click, conversion"]
    for table, task in zip(out["tables"][1:3], ("click", "conversion")):
        _, rows = _rows(table)
        for method in aucs:
            v = np.array(aucs[method][task])
            assert rows[method][0].split(" (p=")[0].strip("*") == f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"
    _, rows = _rows(out["tables"][3])
    mean = {m: (np.array(a["click"]) + np.array(a["conversion"])) / 2 for m, a in aucs.items()}
    assert rows["Rec4Ad"][1] == format(mean["Rec4Ad"].mean() - mean["Base"].mean(), "+.4f")
    assert float(rows["Rec4Ad"][0].split("(p=")[1].split("\\")[0].rstrip(")")) == pytest.approx(
        stats.ttest_rel(mean["Rec4Ad"], mean["Base"]).pvalue, rel=5e-3)
    raw = json.load(open(os.path.join(tmp_path, "grid", "results.json")))
    assert [c["auc"] for c in raw["tasks"]["conversion"]["Rec4Ad"]] == aucs["Rec4Ad"]["conversion"]


def test_run_analyses_headline_numbers_are_tabulated_per_method(sim_data, tmp_path, monkeypatch):
    """A run's analysis JSON (collapse, gates, tim_temporal) reaches the grid: its summary numbers,
    mean ± std over the seeds of each method that wrote it, '–' where a method lacks a number."""
    import pipeline.compare as compare

    monkeypatch.setattr(compare, "train", lambda cfg, config_name: None)
    ia = {"Base": [3.0, 4.0, 5.0], "Rec4Ad": [6.0, 6.5, 7.0]}

    def evaluate(run_dir, splits, write, ad_stats=None, visual_truth=None):
        method, seed = os.path.basename(run_dir).rsplit("-seed", 1)
        i = SEEDS.index(int(seed))
        tables = {"embedding/table0": {"dim": 16, "mean_ia": ia[method][i], "features": {}}}
        if method == "Rec4Ad":
            tables["embedding/table1"] = {"dim": 16, "mean_ia": 2.0, "features": {}}
        os.makedirs(os.path.join(run_dir, "analysis"), exist_ok=True)
        with open(os.path.join(run_dir, "analysis", "collapse.json"), "w") as fh:
            json.dump({"tables": tables, "interactions": {}}, fh)
        return {splits[0]: _evaluation(GRID[method][i])}

    monkeypatch.setattr(compare, "evaluate_run", evaluate)
    out = run_compare(_grid(sim_data, tmp_path), verbose=0)
    table = out["tables"][-1]
    assert table.startswith("## Analysis `collapse`")
    header, rows = _rows(table)
    assert header == ["method", "IA embedding/table0", "IA embedding/table1"]
    assert rows["Base"] == ["4.0000 ± 1.0000", "–"]
    assert rows["Rec4Ad"] == ["6.5000 ± 0.5000", "2.0000 ± 0.0000"]
    raw = json.load(open(os.path.join(tmp_path, "grid", "results.json")))
    assert [r["IA embedding/table0"] for r in raw["analyses"]["collapse"]["Base"]] == ia["Base"]


def test_gates_and_tim_summaries_name_their_numbers(tmp_path):
    from pipeline.analyses import run_summaries

    os.makedirs(tmp_path / "analysis")
    gates = {"rows": 10, "tables": [{"table": 0, "width": 16, "owner": "shared"}, {"table": 1, "width": 64,
                                                                                  "owner": "shared"}],
             "weights": {"click": [0.25, 0.75], "conversion": [0.6, 0.4]}, "positive_rate": {}}
    tim = {"tim_0": {"targets": 5, "time_interval": {"range": 0.5, "spearman": -0.9},
                     "position": {"range": 0.1, "spearman": None}}}
    for name, record in (("gates", gates), ("tim_temporal", tim)):
        (tmp_path / "analysis" / f"{name}.json").write_text(json.dumps(record))
    assert run_summaries(str(tmp_path)) == {
        "gates": {"click -> table 0 (16)": 0.25, "click -> table 1 (64)": 0.75,
                  "conversion -> table 0 (16)": 0.6, "conversion -> table 1 (64)": 0.4},
        "tim_temporal": {"time_interval range": 0.5, "time_interval spearman": -0.9, "position range": 0.1}}
