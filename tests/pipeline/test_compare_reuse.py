"""``ctrflow compare`` reuses finished runs by their training config: grids sharing ``runs_dir`` train
a (config, seed) cell once, a renamed method trains nothing, and a method whose overrides changed
since its run finished is refused (its old numbers would otherwise be reported as the new method's).
Training is faked (it records the cell and writes the run's ``config.yaml`` and ``done.json``, as
``pipeline.runs`` does); evaluation reads back the backbone the run was trained with."""
import dataclasses
import json
import os

import pytest
import yaml

from pipeline import runs
from pipeline.compare import CompareConfig, check_compare, run_compare
from pipeline.config import ConfigError, to_dict
from train_helpers import train_config

SEEDS = [1, 2]
AUC = {"dnn": 0.70, "deepfm": 0.72, "dcnv2": 0.71}  # each backbone's test AUC


def _fake_runs(monkeypatch, trained):
    import pipeline.compare as compare

    def train(cfg, config_name):
        trained.append((config_name, cfg.seed))
        run_dir = os.path.join(cfg.runs_dir, cfg.run_name)
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
            yaml.safe_dump(dataclasses.asdict(cfg), fh)
        with open(os.path.join(run_dir, "done.json"), "w") as fh:
            json.dump({"history": {"val_auc": [0.7]}}, fh)

    def evaluate(run_dir, splits, write, ad_stats=None, visual_truth=None):
        backbone = runs.recorded_config(run_dir)["model"]["backbone"]
        return {splits[0]: {"click": {"overall": {"auc": AUC[backbone]}}}}

    monkeypatch.setattr(compare, "train", train)
    monkeypatch.setattr(compare, "evaluate_run", evaluate)


def _grid(sim_data, tmp_path, name, methods, **kw):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(to_dict(train_config(sim_data, tmp_path / "unused", epochs=1))))
    return CompareConfig(base_config=str(base), out_dir=str(tmp_path / name), seeds=SEEDS, metrics=["auc"],
                         baseline=next(iter(methods)), methods=methods, **kw)


def _backbone(name, units=(8,)):
    return {"model.backbone": name, "model.backbone_options": {"dnn_units": list(units)} if name == "dnn" else {}}


def test_grids_sharing_runs_dir_train_each_config_once(sim_data, tmp_path, monkeypatch):
    trained = []
    _fake_runs(monkeypatch, trained)
    shared = str(tmp_path / "shared_runs")
    first = _grid(sim_data, tmp_path, "table2", {"MLP": _backbone("dnn"), "DeepFM": _backbone("deepfm")},
                  runs_dir=shared)
    run_compare(first, verbose=0)
    assert trained == [("MLP", 1), ("MLP", 2), ("DeepFM", 1), ("DeepFM", 2)]
    # the second grid names the MLP otherwise ("dnn", and a changed verbose, which computes nothing else)
    second = _grid(sim_data, tmp_path, "table3", {"dnn": _backbone("dnn"), "DCNv2": _backbone("dcnv2")},
                   runs_dir=shared, base_overrides={"verbose": 2})
    assert [c["reused"] for c in check_compare(second)] == [2, 0]
    out = run_compare(second, verbose=0)
    assert trained[4:] == [("DCNv2", 1), ("DCNv2", 2)]
    assert out["results"] == {"dnn": [{"auc": 0.70}] * 2, "DCNv2": [{"auc": 0.71}] * 2}
    assert not os.path.exists(os.path.join(shared, "dnn-seed1"))  # reused in place, nothing copied
    # without a shared runs_dir each grid trains its own cells
    run_compare(_grid(sim_data, tmp_path, "alone", {"dnn": _backbone("dnn")}), verbose=0)
    assert trained[6:] == [("dnn", 1), ("dnn", 2)]


def test_a_method_changed_since_its_run_finished_is_refused(sim_data, tmp_path, monkeypatch):
    trained = []
    _fake_runs(monkeypatch, trained)
    grid = _grid(sim_data, tmp_path, "grid", {"MLP": _backbone("dnn", [8]), "DeepFM": _backbone("deepfm")})
    run_compare(grid, verbose=0)
    run_compare(grid, verbose=0)  # an unchanged grid resumes: nothing trains again
    assert len(trained) == 4
    changed = dataclasses.replace(grid, methods={**grid.methods, "MLP": _backbone("dnn", [16])})
    for call in (check_compare, lambda cfg: run_compare(cfg, verbose=0)):
        with pytest.raises(ConfigError, match=r"compare method 'MLP' \(seed 1\): its finished run .*MLP-seed1' was "
                                              r"trained with another config \(differs in "
                                              r"model\.backbone_options\.dnn_units\)"):
            call(changed)
    assert len(trained) == 4


def test_config_differences_names_dotted_keys_and_ignores_where_a_run_is_written():
    a = {"run_name": "a", "runs_dir": "x", "verbose": 0, "seed": 1, "model": {"backbone": "dnn", "opts": {"u": [8]}}}
    b = {"run_name": "b", "runs_dir": "y", "verbose": 2, "seed": 1, "model": {"backbone": "dnn", "opts": {"u": (8,)}}}
    assert runs.config_differences(a, b) == []
    b["model"]["opts"]["u"], b["model"]["new"], b["seed"] = [16], 1, 2
    assert runs.config_differences(a, b) == ["model.new", "model.opts.u", "seed"]
    assert runs.config_differences(None, b) == ["<unreadable config.yaml>"]


def test_a_cell_another_compare_finished_or_is_training_is_reused(sim_data, tmp_path, monkeypatch):
    """Two compares sharing ``runs_dir`` at the same time: a cell the other finished after this one
    planned is reused (not an "already complete" error), and one the other is training (its lock)
    is waited for, then reused; nothing trains twice."""
    import pipeline.compare as compare
    from pipeline.compare import train_configs

    trained = []
    _fake_runs(monkeypatch, trained)
    fake_train = compare.train
    grid = _grid(sim_data, tmp_path, "grid", {"MLP": _backbone("dnn"), "DeepFM": _backbone("deepfm")})
    cells = train_configs(grid, verbose=0)
    other = dataclasses.replace(cells[("DeepFM", 1)], run_name="other-grid-DeepFM-seed1")
    busy, waits = [], []

    def train(cfg, config_name):
        if (config_name, cfg.seed) == ("MLP", 1):  # meanwhile the other compare finishes DeepFM seed 1
            fake_train(other, "DeepFM (other grid)")
        if (config_name, cfg.seed) == ("DeepFM", 2) and not busy:  # ... and is training DeepFM seed 2
            busy.append(cfg.seed)
            raise runs.RunBusy("run 'DeepFM-seed2' is being trained by process 1")
        fake_train(cfg, config_name)

    def sleep(seconds):  # while this compare waits, the other one finishes DeepFM seed 2
        waits.append(seconds)
        fake_train(cells[("DeepFM", 2)], "DeepFM (other grid)")

    monkeypatch.setattr(compare, "train", train)
    monkeypatch.setattr(compare.time, "sleep", sleep)
    out = run_compare(grid, verbose=0)
    assert trained == [("DeepFM (other grid)", 1), ("MLP", 1), ("MLP", 2), ("DeepFM (other grid)", 2)]
    assert waits == [compare.LOCK_POLL_SECONDS]
    assert out["results"]["DeepFM"] == [{"auc": 0.72}] * 2


def test_a_grid_whose_cells_ran_on_different_machines_says_which_ran_where(sim_data, tmp_path, monkeypatch):
    """Training is deterministic on one machine, not across machines: the report warns when the cells'
    run.json name more than one (a resumed run lists every machine it ran on) and results.json keeps
    each cell's; a grid trained on one machine says nothing."""
    trained = []
    _fake_runs(monkeypatch, trained)
    grid = _grid(sim_data, tmp_path, "grid", {"MLP": _backbone("dnn"), "DeepFM": _backbone("deepfm")},
                 runs_dir=str(tmp_path / "runs"))
    run_compare(grid, verbose=0)
    report = (tmp_path / "grid" / "report.md").read_text()
    assert "machines" not in report  # the fake runs record none: one (unrecorded) kind of cell
    machines = {"MLP-seed1": ["EPYC (avx2)"], "MLP-seed2": ["EPYC (avx2)"], "DeepFM-seed1": ["EPYC (avx2)"],
                "DeepFM-seed2": ["EPYC (avx2)", "Xeon (avx512f)"]}
    for name, keys in machines.items():
        (tmp_path / "runs" / name / "run.json").write_text(json.dumps({"machines": keys}))
    run_compare(grid, verbose=0)
    report = (tmp_path / "grid" / "report.md").read_text()
    assert "**The cells were trained on 2 different machines**" in report
    assert "- EPYC (avx2): 3 cells (MLP seed 1, MLP seed 2, DeepFM seed 1)" in report
    assert "- EPYC (avx2) + Xeon (avx512f): 1 cell (DeepFM seed 2)" in report
    saved = json.loads((tmp_path / "grid" / "results.json").read_text())["machines"]
    assert saved == {"MLP": [["EPYC (avx2)"]] * 2, "DeepFM": [["EPYC (avx2)"], ["EPYC (avx2)", "Xeon (avx512f)"]]}
    for name in machines:  # every cell on the same machine: no warning
        (tmp_path / "runs" / name / "run.json").write_text(json.dumps({"machines": ["EPYC (avx2)"]}))
    run_compare(grid, verbose=0)
    assert "machines" not in (tmp_path / "grid" / "report.md").read_text()
