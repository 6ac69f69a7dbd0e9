"""Data loss (issue 9): no command deletes or replaces what it did not write, every output
folder is written atomically, a killed run's leftovers are cleaned by the next run, and
generated files a user may edit are merged (``features/outputs.py``). Through the CLI."""
import glob
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

_spec = importlib.util.spec_from_file_location("reliability_conftest", os.path.join(os.path.dirname(__file__),
                                                                                   "conftest.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
CONFIGS, REPO, ctrflow = _helpers.CONFIGS, _helpers.REPO, _helpers.ctrflow

MARKER = ".ctrflow-output.json"
SMALL_SIM = ["--set", "num_impressions=3000", "--set", "rec_impressions=300", "--set", "random_impressions=300",
             "--set", "num_users=200", "--set", "num_items=100", "--set", "num_ads=200", "--set", "shard_rows=1000"]


def tree_hashes(root):
    """{relative path: sha256} of every file under ``root``."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def simulate(out, *extra, check=0):
    return ctrflow("simulate", "--config", os.path.join(CONFIGS, "simulate_default.yaml"), *SMALL_SIM,
                   "--set", f"out_dir={out}", *extra, check=check)


def preprocess_args(raw, output):
    return ["preprocess", "--config", os.path.join(CONFIGS, "preprocess_sim.yaml"),
            "--set", f"input.path={raw}/ads/*.parquet",
            "--set", f"split.extra_splits={{random: '{raw}/random/*.parquet'}}",
            "--set", "runner.num_workers=1", "--set", "runner.running_mode=in_memory", "--set", f"output={output}"]


def leftovers(path):
    """Temp / moved-aside folders of ``features.outputs`` for ``path``."""
    parent, name = os.path.split(path)
    return glob.glob(os.path.join(parent, f".{name}.tmp-*")) + glob.glob(os.path.join(parent, f".{name}.old-*"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A user's folder: the simulator's raw logs in ``raw/`` and an unrelated ``notes.txt``."""
    root = str(tmp_path_factory.mktemp("user"))
    simulate(os.path.join(root, "raw"))
    with open(os.path.join(root, "notes.txt"), "w") as fh:
        fh.write("my notes\n")
    return root


# ---- preprocess ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_preprocess_never_replaces_the_folder_holding_its_inputs(work, overwrite):
    before = tree_hashes(work)
    proc = ctrflow(*preprocess_args(os.path.join(work, "raw"), work), *overwrite, check=2)
    assert f"'{work}'" in proc.stderr and "input" in proc.stderr and "Traceback" not in proc.stderr
    assert tree_hashes(work) == before  # raw logs and notes.txt byte-identical, nothing added
    assert not leftovers(work)


@pytest.mark.slow
def test_preprocess_replaces_a_foreign_folder_only_with_overwrite(work, tmp_path):
    raw, out = os.path.join(work, "raw"), str(tmp_path / "other")
    os.makedirs(out)
    with open(os.path.join(out, "mine.txt"), "w") as fh:
        fh.write("keep me\n")
    proc = ctrflow(*preprocess_args(raw, out), check=2)
    assert f"'{out}'" in proc.stderr and "mine.txt" in proc.stderr and "--overwrite" in proc.stderr
    assert os.listdir(out) == ["mine.txt"]
    ctrflow(*preprocess_args(raw, out), "--overwrite", check=0)
    assert os.path.exists(os.path.join(out, "stats.json")) and not os.path.exists(os.path.join(out, "mine.txt"))
    with open(os.path.join(out, MARKER)) as fh:
        assert json.load(fh)["command"] == "preprocess"
    ctrflow(*preprocess_args(raw, out), check=0)  # its own output: re-running replaces it, no flag needed
    assert sorted(os.listdir(tmp_path)) == ["other"]  # no temp or moved-aside folder left


def _wait_for(pattern, proc, timeout=120):
    """Wait until a path matching ``pattern`` exists (while ``proc`` runs); returns it."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = glob.glob(pattern)
        if found:
            return found[0]
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {pattern} appeared"
        time.sleep(0.05)
    raise AssertionError(f"{pattern} did not appear within {timeout} s")


def _start(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow
def test_preprocess_killed_leaves_earlier_output_and_next_run_cleans_up(work, tmp_path):
    raw, out = os.path.join(work, "raw"), str(tmp_path / "data")
    ctrflow(*preprocess_args(raw, out), check=0)
    before = tree_hashes(out)
    proc = _start(*preprocess_args(raw, out))
    tmp = _wait_for(os.path.join(str(tmp_path), ".data.tmp-*", MARKER), proc)
    _kill(proc)
    assert tree_hashes(out) == before
    assert leftovers(out), "the killed run's temp folder should still be there"
    ctrflow(*preprocess_args(raw, out), check=0)
    assert not leftovers(out) and not os.path.exists(os.path.dirname(tmp))
    assert sorted(os.listdir(tmp_path)) == ["data"]


# ---- simulate --------------------------------------------------------------------------------------
def test_simulate_killed_part_way_keeps_the_earlier_run(tmp_path):
    out = str(tmp_path / "raw")
    simulate(out)
    before = tree_hashes(out)
    big = ["--set", "num_impressions=600000", "--set", "num_users=5000", "--set", "num_items=2000",
           "--set", "num_ads=6000", "--set", "shard_rows=10000"]
    proc = _start("simulate", "--config", os.path.join(CONFIGS, "simulate_default.yaml"), *SMALL_SIM, *big,
                  "--set", f"out_dir={out}")
    _wait_for(os.path.join(str(tmp_path), ".raw.tmp-*", "ads", "part-00003.parquet"), proc)
    _kill(proc)
    assert tree_hashes(out) == before  # every shard, side table and summary.json as the earlier run left them
    assert leftovers(out)
    simulate(out)
    assert not leftovers(out) and sorted(os.listdir(tmp_path)) == ["raw"]
    with open(os.path.join(out, "summary.json")) as fh:
        assert json.load(fh)["rows"]["ads"] == 3000


def test_simulate_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    proc = simulate(str(out), check=2)
    assert str(out) in proc.stderr and "thesis.tex" in proc.stderr
    assert os.listdir(out) == ["thesis.tex"]


# ---- load -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_load_refuses_a_folder_holding_its_src(tmp_path, overwrite):
    sys.path.insert(0, os.path.join(REPO, "tests", "pipeline"))
    from test_loaders import _ml1m

    src = tmp_path / "ml-1m"
    src.mkdir()
    _ml1m(src)
    (tmp_path / "part-00000.parquet").write_bytes(b"the user's own file, not a shard of ours")
    before = tree_hashes(str(tmp_path))
    proc = ctrflow("load", "ml1m", "--src", src, "--out", tmp_path, *overwrite, check=2)
    assert f"'{tmp_path}'" in proc.stderr and "input" in proc.stderr
    assert tree_hashes(str(tmp_path)) == before


# ---- train / evaluate / export on one tiny run -------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(sim_data, tmp_path_factory):
    """One tiny completed run (DNN [16], 1 epoch) on the shared preprocessed data."""
    runs = str(tmp_path_factory.mktemp("runs"))
    ctrflow("train", "--config", os.path.join(CONFIGS, "train_sim_dcnv2.yaml"), "--set", f"data_dir={sim_data}",
            "--set", f"runs_dir={runs}", "--set", "run_name=tiny", "--set", "epochs=1",
            "--set", "model.backbone=dnn", "--set", "model.backbone_options={dnn_units: [16]}",
            "--set", "eval_splits=[test]", check=0)
    return os.path.join(runs, "tiny")


def test_train_refuses_a_run_folder_it_did_not_create(sim_data, tmp_path):
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    (run / "results.csv").write_text("hand-made\n")
    proc = ctrflow("train", "--config", os.path.join(CONFIGS, "train_sim_dcnv2.yaml"),
                   "--set", f"data_dir={sim_data}", "--set", f"runs_dir={tmp_path / 'runs'}",
                   "--set", "run_name=mine", "--set", "epochs=1", check=2)
    assert str(run) in proc.stderr and "results.csv" in proc.stderr and "--overwrite" in proc.stderr
    assert os.listdir(run) == ["results.csv"]


@pytest.mark.slow
def test_train_overwrite_killed_keeps_the_completed_run(sim_data, tmp_path):
    runs = tmp_path / "runs"
    args = ["train", "--config", os.path.join(CONFIGS, "train_sim_dcnv2.yaml"), "--set", f"data_dir={sim_data}",
            "--set", f"runs_dir={runs}", "--set", "run_name=re", "--set", "model.backbone=dnn",
            "--set", "model.backbone_options={dnn_units: [16]}", "--set", "eval_splits=[test]"]
    ctrflow(*args, "--set", "epochs=1", check=0)
    before = tree_hashes(runs / "re")
    proc = _start(*args, "--set", "epochs=30", "--overwrite")
    aside = _wait_for(str(runs / ".re.replaced-*"), proc)
    _wait_for(str(runs / "re" / "run.json"), proc)  # the new run has started in place
    _kill(proc)
    assert tree_hashes(aside) == before  # the completed run, byte for byte, until a new one completes
    ctrflow(*args, "--set", "epochs=1", "--overwrite", check=0)
    assert sorted(os.listdir(runs)) == ["re"] and (runs / "re" / "done.json").exists()


@pytest.mark.slow
def test_evaluate_accumulates_splits(run_dir):
    ctrflow("evaluate", run_dir, "--split", "test", check=0)
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        first = json.load(fh)
    ctrflow("evaluate", run_dir, "--split", "valid", check=0)
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        both = json.load(fh)
    assert sorted(both) == ["test", "valid"]
    assert both["test"] == first["test"]  # the earlier split's values untouched
    assert both["valid"]["click"]["overall"]["count"] > 0
    with open(os.path.join(run_dir, "report.md")) as fh:
        report = fh.read()
    assert "test/click" in report and "valid/click" in report and "eval_test/report.md" in report


USER_CONFIG = """model_config_list {
  config {
    name: "tiny"
    base_path: "/srv/models/tiny"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config {
    name: "other"
    base_path: "/srv/models/other"
    model_platform: "tensorflow"
  }
}
"""


@pytest.mark.slow
def test_export_merges_a_hand_edited_models_config_and_prunes_only_its_versions(run_dir, tmp_path):
    from serving import layout

    base = str(tmp_path / "serving")
    ctrflow("export", run_dir, "--out", base, "--keep", "1", check=0)
    with open(os.path.join(base, "models.config"), "w") as fh:
        fh.write(USER_CONFIG)
    by_hand = os.path.join(base, "tiny", "0")  # a version the user put there: no export metadata
    os.makedirs(by_hand)
    open(os.path.join(by_hand, "saved_model.pb"), "wb").close()
    ctrflow("export", run_dir, "--out", base, "--keep", "1", check=0)
    with open(os.path.join(base, "models.config")) as fh:
        cfg = layout.parse_models_config(fh.read())
    assert cfg == layout.parse_models_config(USER_CONFIG)  # every field the user set, and nothing else
    assert sorted(os.listdir(os.path.join(base, "tiny"))) == [MARKER, "0", "2"]  # 1 pruned, 0 kept


@pytest.mark.slow
def test_export_writes_beside_an_unparseable_models_config(run_dir, tmp_path):
    base = tmp_path / "serving"
    base.mkdir()
    (base / "models.config").write_text("my notes: not a text proto\n")
    proc = ctrflow("export", run_dir, "--out", base, check=0)
    assert (base / "models.config").read_text() == "my notes: not a text proto\n"
    assert "models.config.new" in proc.stderr
    assert 'name: "tiny"' in (base / "models.config.new").read_text()


@pytest.mark.slow
def test_export_refuses_a_model_folder_it_did_not_create(run_dir, tmp_path):
    model_base = tmp_path / "serving" / "tiny"
    model_base.mkdir(parents=True)
    (model_base / "README").write_text("hand-made\n")
    proc = ctrflow("export", run_dir, "--out", tmp_path / "serving", check=2)
    assert str(model_base) in proc.stderr and "--overwrite" in proc.stderr
    assert os.listdir(model_base) == ["README"]
    ctrflow("export", run_dir, "--out", tmp_path / "serving", "--overwrite", check=0)  # adopted, nothing deleted
    assert sorted(os.listdir(model_base)) == [MARKER, "1", "README"]


# ---- the mechanism itself (features/outputs.py), fast -------------------------------------------------
def test_leftovers_of_dead_writers_only_are_cleaned_and_a_moved_aside_output_comes_back(tmp_path):
    from features import outputs

    out = str(tmp_path / "data")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    for kind, pid in (("tmp", dead_pid), ("tmp", os.getpid()), ("old", dead_pid)):
        folder = tmp_path / f".data.{kind}-{pid}-{'a' * 12}"
        folder.mkdir()
        outputs.write_marker(str(folder), "preprocess")
    unmarked = tmp_path / f".data.tmp-{dead_pid}-{'b' * 12}"  # not ours: no marker
    unmarked.mkdir()
    removed = outputs.clean_leftovers(out)
    assert [os.path.basename(r) for r in removed] == [f".data.tmp-{dead_pid}-{'a' * 12}"]
    assert os.path.exists(os.path.join(out, MARKER))  # the old output a killed swap had moved aside is back
    assert sorted(os.listdir(tmp_path)) == sorted(["data", f".data.tmp-{os.getpid()}-{'a' * 12}", unmarked.name])


def test_inputs_given_as_globs_protect_their_folder(tmp_path):
    from features import outputs

    assert outputs.fixed_prefix(os.path.join("raw", "ads", "*.parquet")) == os.path.join("raw", "ads")
    assert outputs.fixed_prefix("gs://bucket/raw/part-*.parquet") == "gs://bucket/raw"
    with pytest.raises(outputs.OutputError, match="even with --overwrite"):
        outputs.claim_output(str(tmp_path), "preprocess", [str(tmp_path / "raw" / "*.parquet")], overwrite=True)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "raw", target_is_directory=True)
    (tmp_path / "raw").mkdir()
    with pytest.raises(outputs.OutputError):  # real paths are compared: a symlinked input is still inside
        outputs.claim_output(str(tmp_path / "raw"), "preprocess", [str(link / "*.parquet")], overwrite=True)
