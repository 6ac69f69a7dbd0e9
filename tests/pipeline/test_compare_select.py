"""``ctrflow compare`` in the shape of GPRec Tables II-III: ``select`` shows a group of variants as
the member with the best mean VALIDATION score over the seeds (its row ``GPRec (MLP) [dp]``, every
member's own row in "All variants", the choice in ``results.json``), and ``significance:
runner_up_one_sided`` gives each column's best row a one-sided paired t-test against the runner-up,
starred when p < 0.05. Training and evaluation are faked (the runs' logged histories and test
numbers are given), as in test_compare_slices.py."""
import dataclasses
import json
import os

import numpy as np
import pytest
import yaml
from scipy import stats

from pipeline.compare import CompareConfig, run_compare, validation_score
from pipeline.config import ConfigError, from_dict, to_dict
from train_helpers import train_config

SEEDS = [1, 2, 3]
GROUP = {"GPRec (MLP)": ["GPRec input", "GPRec dp", "GPRec ensemble"]}
# per member and seed, the val_auc the run logged each epoch. Best epoch (the weights it kept): dp wins
# (means .711 / .721 / .715); last epoch: input would (.708 / .690 / .705)
HISTORY = {"GPRec input": [[0.70, 0.711, 0.708], [0.70, 0.712, 0.709], [0.70, 0.710, 0.707]],
           "GPRec dp": [[0.70, 0.720, 0.690], [0.70, 0.722, 0.691], [0.70, 0.721, 0.689]],
           "GPRec ensemble": [[0.715, 0.705], [0.716, 0.706], [0.714, 0.704]],
           "MLP": [[0.70]] * 3, "DCN": [[0.71]] * 3}
# per method and seed, the test split's numbers: input has the best test AUC, so selecting on test would
# pick it; dp beats DCN on AUC (one-sided p < 0.05), DCN beats dp on logloss by little (p > 0.05)
TEST = {"MLP": {"auc": [0.700, 0.703, 0.701], "logloss": [0.300, 0.301, 0.302]},
        "GPRec input": {"auc": [0.730, 0.731, 0.733], "logloss": [0.295, 0.296, 0.294]},
        "GPRec dp": {"auc": [0.720, 0.722, 0.721], "logloss": [0.292, 0.291, 0.2925]},
        "GPRec ensemble": {"auc": [0.705, 0.706, 0.707], "logloss": [0.299, 0.298, 0.297]},
        "DCN": {"auc": [0.712, 0.716, 0.713], "logloss": [0.290, 0.2935, 0.291]}}


def _fake_runs(monkeypatch):
    """Training writes done.json with HISTORY's val_auc; evaluation returns TEST's numbers."""
    import pipeline.compare as compare

    def train(cfg, config_name):
        run_dir = os.path.join(cfg.runs_dir, cfg.run_name)
        os.makedirs(run_dir)
        val_auc = HISTORY[config_name][SEEDS.index(cfg.seed)]
        with open(os.path.join(run_dir, "done.json"), "w") as fh:
            json.dump({"history": {"loss": [0.5] * len(val_auc), "val_auc": val_auc}}, fh)

    def evaluate(run_dir, splits, write, ad_stats=None, visual_truth=None):
        method, seed = os.path.basename(run_dir).rsplit("-seed", 1)
        i = SEEDS.index(int(seed))
        return {splits[0]: {"click": {"overall": {k: v[i] for k, v in TEST[method.replace("_", " ")].items()}}}}

    monkeypatch.setattr(compare, "train", train)
    monkeypatch.setattr(compare, "evaluate_run", evaluate)


def _base(sim_data, tmp_path, **overrides):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(to_dict(train_config(sim_data, tmp_path / "runs", epochs=1, **overrides))))
    return str(base)


def _grid(sim_data, tmp_path, **kw):
    methods = {"MLP": {}, "GPRec input": {}, "GPRec dp": {}, "GPRec ensemble": {}, "DCN": {}}
    return from_dict(CompareConfig, {"base_config": _base(sim_data, tmp_path), "out_dir": str(tmp_path / "grid"),
                                     "seeds": SEEDS, "baseline": "MLP", "metrics": ["auc", "logloss"],
                                     "methods": kw.pop("methods", methods), "select": GROUP, **kw})


def _rows(table):
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    return {r[0].replace(" (baseline)", ""): r[1:] for r in
            ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}


def _p(cell):
    return float(cell.split("(p=")[1].split("\\")[0].split(" ")[0])


def test_select_shows_the_best_member_on_validation_and_stars_the_best_against_the_runner_up(
        sim_data, tmp_path, monkeypatch):
    _fake_runs(monkeypatch)
    cfg = _grid(sim_data, tmp_path, significance="runner_up_one_sided")
    out = run_compare(cfg, verbose=0)
    # the member with the best mean validation AUC (at each run's best epoch), not the best test AUC
    rows = _rows(out["table"])
    assert list(rows) == ["MLP", "GPRec (MLP) [dp]", "DCN"]
    dp, dcn, mlp = (np.array(TEST[m]["auc"]) for m in ("GPRec dp", "DCN", "MLP"))
    assert rows["GPRec (MLP) [dp]"][0].startswith(f"**{dp.mean():.4f} ± {dp.std(ddof=1):.4f}**")
    # AUC: dp is best, DCN the runner-up; one-sided ('greater'), starred at p < 0.05
    p_auc = stats.ttest_rel(dp, dcn, alternative="greater").pvalue
    assert p_auc < 0.05 and _p(rows["GPRec (MLP) [dp]"][0]) == pytest.approx(p_auc, rel=5e-3)
    assert rows["GPRec (MLP) [dp]"][0].endswith("\\* vs DCN)")
    # logloss: DCN is best (lowest), dp the runner-up; one-sided ('less'), p > 0.05: no star
    ll_dcn, ll_dp = np.array(TEST["DCN"]["logloss"]), np.array(TEST["GPRec dp"]["logloss"])
    p_ll = stats.ttest_rel(ll_dcn, ll_dp, alternative="less").pvalue
    assert 0.05 < p_ll < 0.5 and _p(rows["DCN"][2]) == pytest.approx(p_ll, rel=5e-3)
    assert rows["DCN"][2].endswith(" vs GPRec (MLP) [dp])") and "\\*" not in rows["DCN"][2]
    # no p elsewhere; Impv. still against the baseline
    others = [rows["MLP"][0], rows["MLP"][2], rows["DCN"][0], rows["GPRec (MLP) [dp]"][2]]
    assert not any("(p=" in c for c in others)
    assert rows["GPRec (MLP) [dp]"][1] == format(dp.mean() - mlp.mean(), "+.4f") and rows["MLP"][1] == "–"
    assert "one-sided paired t-test over seeds of the best row against the runner-up" in out["table"]
    assert "alternative 'greater' for auc; 'less' for logloss" in out["table"]
    # every member keeps its own row in "All variants", where input has the best test AUC
    variants = out["tables"][1]
    assert variants.startswith("## All variants")
    all_rows = _rows(variants)
    assert list(all_rows) == list(TEST)
    assert _p(all_rows["GPRec input"][0]) == pytest.approx(
        stats.ttest_rel(TEST["GPRec input"]["auc"], dp, alternative="greater").pvalue, rel=5e-3)
    # results.json: the choice, every member's validation (best epochs) and test numbers
    raw = json.load(open(os.path.join(cfg.out_dir, "results.json")))
    record = raw["select"]["GPRec (MLP)"]
    assert (record["chosen"], record["row"], record["monitor"], record["mode"]) == (
        "GPRec dp", "GPRec (MLP) [dp]", "val_auc", "max")
    for member in GROUP["GPRec (MLP)"]:
        assert record["members"][member]["validation"] == [max(h) for h in HISTORY[member]]
        assert record["members"][member]["validation_mean"] == pytest.approx(np.mean([max(h) for h in HISTORY[member]]))
        assert record["members"][member]["results"] == [
            {"auc": a, "logloss": ll} for a, ll in zip(TEST[member]["auc"], TEST[member]["logloss"])]
    report = open(out["report"]).read()
    assert "- `GPRec (MLP) [dp]`: of the group's members, the best mean `val_auc` (max) on split `valid`" in report


def test_default_significance_is_unchanged_by_select(sim_data, tmp_path, monkeypatch):
    """Without ``significance``: every row's two-sided p against the baseline, the group's row too;
    the per-task tables show the group as the same chosen member."""
    _fake_runs(monkeypatch)
    out = run_compare(_grid(sim_data, tmp_path, tasks=["click"]), verbose=0)
    rows = _rows(out["table"])
    p = stats.ttest_rel(TEST["GPRec dp"]["auc"], TEST["MLP"]["auc"]).pvalue
    assert _p(rows["GPRec (MLP) [dp]"][0]) == pytest.approx(p, rel=5e-3)
    assert "(p=" not in rows["MLP"][0] and "(p=" in rows["DCN"][0]
    assert [t.splitlines()[0] for t in out["tables"]] == [
        "## Overall", "## All variants", "## Task `click`", "## Mean over tasks click"]
    for table in out["tables"][2:]:
        assert _rows(table) == rows


def test_validation_score_reads_the_kept_epoch_of_the_monitor(sim_data, tmp_path, monkeypatch):
    """Best epoch under restore_best_weights (max for AUC, min for logloss), else the last epoch;
    parameter_server runs (Keras' approximate AUC) evaluate the valid split instead."""
    import pipeline.compare as compare

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "done.json").write_text(json.dumps({"history": {"val_auc": [0.70, 0.72, 0.71],
                                                               "val_logloss": [0.31, 0.29, 0.30]}}))

    def score(**overrides):
        return validation_score(str(run_dir), train_config(sim_data, tmp_path, **overrides))

    assert score() == 0.72
    assert score(**{"early_stopping.monitor": "val_logloss"}) == 0.29
    assert score(**{"early_stopping.restore_best_weights": False}) == 0.71
    with pytest.raises(ConfigError, match=r"early_stopping\.monitor = 'val_click_auc': run '.*run' logged no such "
                                          r"metric \(its history has \['val_auc', 'val_logloss'\]\)"):
        score(**{"early_stopping.monitor": "val_click_auc"})
    seen = []

    def evaluate(run_dir, splits, write):
        seen.append((splits, write))
        return {"valid": {"click": {"overall": {"auc": 0.6}}, "conversion": {"overall": {"auc": 0.8}}}}

    monkeypatch.setattr(compare, "evaluate_run", evaluate)
    ps = {"strategy.name": "parameter_server", "steps_per_epoch": 5, "tasks": ["click", "conversion"]}
    assert score(**ps) == 0.6 and seen == [(["valid"], False)]
    assert score(**ps, **{"early_stopping.monitor": "val_conversion_auc"}) == 0.8


def test_select_keys_are_checked_by_compare_check(sim_data, tmp_path, capsys):
    """``ctrflow compare --check``: a group of existing methods builds; a member that is not a method,
    the baseline in a group, or members validating on different monitors fail naming the key."""
    from pipeline.cli import main

    base = _base(sim_data, tmp_path, **{"model.backbone_options": {"dnn_units": [8]}})
    methods = {"MLP": {}, "GPRec input": {"model.embedding_dim": 4}, "GPRec dp": {}}

    def check(**kw):
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump({"base_config": base, "out_dir": str(tmp_path / "grid"), "seeds": [1, 2],
                                        "baseline": "MLP", "methods": methods, **kw}))
        code = main(["compare", "--config", str(path), "--check"])
        return code, capsys.readouterr()

    code, out = check(select={"GPRec": ["GPRec input", "GPRec dp"]}, significance="runner_up_one_sided")
    assert code == 0 and "checked 3 methods x 2 seeds" in out.out
    code, out = check(select={"GPRec": ["GPRec input", "GPRec ensemble"]})
    assert code == 2 and "select.GPRec = ['GPRec input', 'GPRec ensemble']: expected distinct methods from " \
                         "['GPRec dp', 'GPRec input', 'MLP']; ['GPRec ensemble'] are not methods" in out.err
    code, out = check(select={"GPRec": ["MLP", "GPRec dp"]})
    assert code == 2 and "select.GPRec: holds the baseline 'MLP', which keeps its own row" in out.err
    code, out = check(select={"MLP": ["GPRec dp"]})
    assert code == 2 and "select.MLP: the row name is a method's" in out.err
    code, out = check(select={"a": ["GPRec dp"], "b": ["GPRec dp"]})
    assert code == 2 and "select.b: method 'GPRec dp' is already in select.a" in out.err
    code, out = check(significance="runner_up")
    assert code == 2 and "significance" in out.err and "runner_up_one_sided" in out.err
    methods["GPRec dp"] = {"early_stopping.monitor": "val_logloss", "early_stopping.mode": "min"}
    code, out = check(select={"GPRec": ["GPRec input", "GPRec dp"]})
    assert code == 2 and "select.GPRec: its members validate differently" in out.err
    assert "'GPRec dp': ('val_logloss', 'min'," in out.err
    assert not (tmp_path / "grid").exists()


@pytest.mark.slow
def test_the_logged_validation_score_is_the_saved_models_on_the_valid_split(sim_data, tmp_path):
    """What select ranks on, read from the run's history, equals evaluating the saved model on the
    valid split: the exact AUC of the epoch whose weights the run kept. The learning rate of
    tests/reliability/test_resume.py peaks the validation AUC early, so the kept epoch is not the last."""
    from pipeline.evaluate import evaluate_run
    from pipeline.train import train

    cfg = train_config(sim_data, tmp_path, epochs=2, steps_per_epoch=40, **{
        "early_stopping.patience": 2, "optimizer.learning_rate": 0.01,
        "model.backbone_options": {"dnn_units": [32, 16], "dnn_dropout": 0.3}})
    run_dir = train(cfg)["run_dir"]
    history = json.load(open(os.path.join(run_dir, "done.json")))["history"]["val_auc"]
    assert int(np.argmax(history)) < len(history) - 1, history
    evaluated = evaluate_run(run_dir, splits=["valid"], write=False)["valid"]["click"]["overall"]["auc"]
    assert validation_score(run_dir, cfg) == max(history)
    assert max(history) == pytest.approx(evaluated, abs=1e-9), (history, evaluated)


def test_only_keeps_the_matching_methods_and_the_baseline_and_the_whole_grid_reuses_them(
        sim_data, tmp_path, monkeypatch):
    """``compare --only``: a part of the grid (the baseline kept, select groups cut to their kept
    members) trains its cells, and the whole grid run afterwards trains only the others."""
    from pipeline.compare import only_methods

    methods = {m: {"optimizer.learning_rate": 0.001 * (k + 1)} for k, m in  # distinct cells
               enumerate(["MLP", "GPRec input", "GPRec dp", "GPRec ensemble", "DCN"])}
    cfg = _grid(sim_data, tmp_path, methods=methods)
    part = only_methods(cfg, ["dp", "ensemble"])
    assert list(part.methods) == ["MLP", "GPRec dp", "GPRec ensemble"]
    assert part.select == {"GPRec (MLP)": ["GPRec dp", "GPRec ensemble"]}
    assert list(only_methods(cfg, ["DCN"]).select) == []  # a group with no member kept is dropped
    with pytest.raises(ConfigError, match="no method's name holds"):
        only_methods(cfg, ["DESTINE"])
    names = {m: {} for m in ["MLP", "DCN", "GDCN", "DCN+GPRec input", "GDCN+GPRec input"]}
    by_name = dataclasses.replace(cfg, methods=names, select={})
    assert list(only_methods(by_name, ["DCN"]).methods) == ["MLP", "DCN"]  # a whole name: that method alone
    assert list(only_methods(by_name, ["DCN+GPRec input"]).methods) == ["MLP", "DCN+GPRec input"]
    assert list(only_methods(by_name, ["GPRec"]).methods) == ["MLP", "DCN+GPRec input", "GDCN+GPRec input"]

    _fake_runs(monkeypatch)
    import pipeline.compare as compare

    trained, train = [], compare.train

    def train_recorded(c, config_name):  # the fake run, with the config a real one records for reuse
        trained.append(config_name)
        train(c, config_name)
        with open(os.path.join(c.runs_dir, c.run_name, "config.yaml"), "w") as fh:
            yaml.safe_dump(to_dict(c), fh)

    monkeypatch.setattr(compare, "train", train_recorded)
    run_compare(part, verbose=0)
    assert sorted(set(trained)) == ["GPRec dp", "GPRec ensemble", "MLP"]
    trained.clear()
    run_compare(cfg, verbose=0)
    assert sorted(set(trained)) == ["DCN", "GPRec input"]  # the part's cells are reused


def test_methods_from_takes_another_grids_methods_and_refuses_another_base(sim_data, tmp_path):
    """A grid choosing among a sweep's candidates names the sweep's config instead of copying its
    methods: they follow the grid's own, ``select`` may group them, ``--only`` and a copy of the
    config do not merge them twice; another base (its methods would mean other configs), a name in
    both grids and a cycle are refused."""
    from pipeline.compare import only_methods
    from pipeline.config import load_config

    base = _base(sim_data, tmp_path)
    sweep = {"base_config": base, "baseline": "HDA", "base_overrides": {"verbose": 0},
             "methods": {"HDA": {}, "lambda1 = 1": {"model.embedding_dim": 4}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    tuned = {"base_config": base, "baseline": "Vanilla", "base_overrides": {"verbose": 2},  # verbose computes nothing
             "methods_from": str(tmp_path / "sweep.yaml"), "methods": {"Vanilla": {"model.embedding_dim": 2}},
             "select": {"HDA (tuned)": ["HDA", "lambda1 = 1"]}}
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(tuned))
    cfg = load_config(CompareConfig, str(tmp_path / "tuned.yaml"))
    assert cfg.methods == {"Vanilla": {"model.embedding_dim": 2}, "HDA": {}, "lambda1 = 1": {"model.embedding_dim": 4}}
    assert cfg.methods_from is None  # merged once: results.json records every method
    assert list(only_methods(cfg, ["lambda1"]).methods) == ["Vanilla", "lambda1 = 1"]
    assert dataclasses.replace(cfg, seeds=[1]).methods == cfg.methods
    for change, error in [({"base_overrides": {"epochs": 2}}, r"methods_from: '.*sweep.yaml' has base_config .* "
                                                                r"and base_overrides \{\}, this grid .* and "
                                                                r"\{'epochs': 2\}: its methods are overrides"),
                          ({"methods": {"Vanilla": {}, "HDA": {}}}, r"methods \['HDA'\] are in this grid and in methods_from"),
                          ({"methods_from": str(tmp_path / "bad.yaml")}, r"reads itself back")]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**tuned, **change, "select": {}}))
        with pytest.raises(ConfigError, match=error):
            load_config(CompareConfig, str(tmp_path / "bad.yaml"))
