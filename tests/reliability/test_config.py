"""Config values and errors a user causes (issue 9): every option is type- and range-checked
when the config is loaded, naming the file, the key, the value and what is expected;
scientific notation works in files and ``--set``; a user's mistake ends with one message on
stderr and exit code 2, never a traceback.

Through the ``ctrflow`` command line (a subprocess: exit codes, stderr), plus fast
in-process tests of :func:`pipeline.config.from_dict`'s type rules."""
import os
import re
import typing

import pytest
import yaml

from models import factory
from pipeline.analyses import ANALYSES
from pipeline.config import ConfigError, from_dict, option, parse_override
from pipeline.train import TrainConfig

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def _train_yaml(tmp_path, data_dir, text=""):
    """A tiny training config file (a few steps of a small DNN) plus ``text`` appended."""
    base = {"data_dir": data_dir, "runs_dir": str(tmp_path / "runs"), "run_name": "t", "tasks": ["click"],
            "model": {"backbone": "dnn", "backbone_options": {"dnn_units": [16]}, "embedding_dim": 4},
            "batch_size": 256, "eval_batch_size": 4096, "epochs": 1, "steps_per_epoch": 5,
            "shuffle_buffer": 1000, "eval_splits": ["test"], "verbose": 0}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(base) + text)
    return str(path)


def _run_config(tmp_path):
    with open(tmp_path / "runs" / "t" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def _user_error(proc, *needles):
    """Exit 2, one line on stderr naming every needle, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ctrflow ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---- scientific notation: trains, and the run records a float ------------------------------------
@pytest.mark.slow
def test_learning_rate_in_scientific_notation_from_set_trains(cli, sim_data, tmp_path):
    cli("train", "--config", _train_yaml(tmp_path, sim_data), "--set", "optimizer.learning_rate=1e-4",
            check=0)
    lr = _run_config(tmp_path)["optimizer"]["learning_rate"]
    assert isinstance(lr, float) and lr == 1e-4


@pytest.mark.slow
def test_learning_rate_in_scientific_notation_from_yaml_file_trains(cli, sim_data, tmp_path):
    config = _train_yaml(tmp_path, sim_data, "optimizer: {name: adam, learning_rate: 1e-4}\n")
    assert "learning_rate: 1e-4" in open(config).read()  # the YAML 1.1 string form, as a user writes it
    cli("train", "--config", config, check=0)
    lr = _run_config(tmp_path)["optimizer"]["learning_rate"]
    assert isinstance(lr, float) and lr == 1e-4


# ---- bad values end with one message, exit 2 ------------------------------------------------------
def test_misspelt_monitor_fails_listing_the_logged_metrics(cli, sim_data, tmp_path):
    line = _user_error(cli("train", "--config", _train_yaml(tmp_path, sim_data),
                               "--set", "early_stopping.monitor=val_acu"),
                       "early_stopping.monitor", "'val_acu'", "val_auc", "val_logloss", "val_click_auc",
                       "val_click_logloss")
    assert "train.yaml" in line or "early_stopping" in line
    assert not os.path.exists(tmp_path / "runs" / "t"), "failed after creating the run directory"


@pytest.mark.parametrize("override, needles", [
    ("batch_size=abc", ("batch_size", "'abc'", "an integer >= 1")),
    ("batch_size=-5", ("batch_size", "-5", "an integer >= 1")),
    ("epochs=2.5", ("epochs", "2.5", "an integer")),
])
def test_bad_numbers_fail_naming_key_value_and_expectation(cli, tmp_path, override, needles):
    config = _train_yaml(tmp_path, str(tmp_path / "no-data-needed"))
    _user_error(cli("train", "--config", config, "--set", override), "train.yaml", *needles)


def test_unknown_backbone_is_one_line_without_traceback(cli, tmp_path):
    config = _train_yaml(tmp_path, str(tmp_path / "data"))
    _user_error(cli("train", "--config", config, "--set", "model.backbone=dnnx"),
                "model.backbone", "'dnnx'", "dcnv2")


def test_unknown_dataset_is_one_line_without_traceback(cli, tmp_path):
    _user_error(cli("load", "avazu", "--src", str(tmp_path), "--out", str(tmp_path / "raw")),
                "unknown dataset 'avazu'", "criteo")


def test_missing_config_file_and_missing_data_dir(cli, tmp_path):
    _user_error(cli("train", "--config", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")
    _user_error(cli("train", "--config", str(tmp_path)), str(tmp_path), "is a directory")
    config = _train_yaml(tmp_path, str(tmp_path / "no-such-data"))
    _user_error(cli("train", "--config", config), "no-such-data", "does not exist")


def test_corrupt_schema_fails_naming_the_file(cli, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "schema.json").write_text('{"features": [')  # cut off mid-write
    _user_error(cli("train", "--config", _train_yaml(tmp_path, str(data))), "schema.json", "not valid JSON")


@pytest.mark.parametrize("command, key, args", [
    ("simulate", "ads.prior_daily_impressions", ["--config", os.path.join(CONFIGS, "simulate_default.yaml"),
                                                 "--set", "ads.prior_daily_impressions=-5",
                                                 "--set", "num_impressions=2000", "--set", "num_ads=200"]),
    ("preprocess", "runner.num_workers", ["--config", os.path.join(CONFIGS, "preprocess_sim.yaml"),
                                          "--set", "runner.num_workers=-2", "--set", "split.extra_splits={}"]),
])
def test_negative_sizes_fail_at_load_before_any_work(cli, sim_raw, tmp_path, command, key, args):
    """Once a numpy error (simulate) or an IndexError inside the Beam job (preprocess), exit 1."""
    out = tmp_path / "out"
    io = (["--set", f"out_dir={out}"] if command == "simulate" else
          ["--set", f"output={out}", "--set", f"input.path={os.path.join(sim_raw, 'ads', '*.parquet')}"])
    _user_error(cli(command, *args, *io), key, "-")
    assert os.listdir(tmp_path) == [], "work started before the config was checked"


def test_bad_encoding_spec_fails_the_beam_job_with_one_line(cli, sim_raw, tmp_path):
    """Boundaries out of order are found when the encoding is fitted, inside a Beam step: the
    worker's error (an EncodeError Beam cannot rebuild) still ends as one line, exit 2."""
    text = open(os.path.join(CONFIGS, "preprocess_sim.yaml")).read()
    bad = "{name: ad_age_days, kind: numeric, dtype: float32, role: ad, encoding: {type: bucketize, method: log2sq}}"
    assert bad in text
    config = tmp_path / "p.yaml"
    config.write_text(text.replace(bad, bad.replace("method: log2sq", "boundaries: [3, 1]")))
    proc = cli("preprocess", "--config", str(config), "--set", f"output={tmp_path / 'out'}",
               "--set", f"input.path={os.path.join(sim_raw, 'ads', '*.parquet')}", "--set", "split.extra_splits={}")
    _user_error(proc, "ad_age_days", "boundaries")


# ---- from_dict's type rules, in process ---------------------------------------------------------------
def _load(**data):
    return from_dict(TrainConfig, {"data_dir": "d", **data}, where="t.yaml")


def _fails(match, **data):
    with pytest.raises(ConfigError, match=match):
        _load(**data)


def test_float_options_take_any_finite_number_and_yaml_12_notation():
    assert _load(optimizer={"learning_rate": 1}).optimizer.learning_rate == 1.0
    assert isinstance(_load(optimizer={"learning_rate": 1}).optimizer.learning_rate, float)
    for text in ("1e-4", "1E-4", "1.0e-4", ".0001", "+1e-4"):
        assert parse_override(f"optimizer.learning_rate={text}") == ("optimizer.learning_rate", 1e-4)
    _fails(r"optimizer\.learning_rate = '1e-4': expected a finite number > 0 \(a quoted number is a string",
           optimizer={"learning_rate": "1e-4"})
    _fails(r"learning_rate = inf", optimizer={"learning_rate": float("inf")})
    _fails(r"learning_rate = 0\.0: expected a finite number > 0", optimizer={"learning_rate": 0.0})
    _fails(r"learning_rate = True", optimizer={"learning_rate": True})


def test_int_options_take_integral_numbers_only():
    assert _load(epochs=1e5).epochs == 100000 and isinstance(_load(epochs=1e5).epochs, int)
    assert parse_override("epochs=1e5")[1] == 1e5
    _fails(r"t\.yaml: epochs = 2\.5: expected an integer >= 1", epochs=2.5)
    _fails(r"epochs = True: expected an integer", epochs=True)
    _fails(r"epochs = '3': expected an integer >= 1 \(a quoted number", epochs="3")
    _fails(r"batch_size = 0: expected an integer >= 1", batch_size=0)


def test_bool_options_take_true_or_false_only():
    assert _load(cache=False).cache is False
    _fails(r"cache = 1: expected true or false", cache=1)
    _fails(r"cache = 'yes': expected true or false", cache="yes")
    # YAML 1.2 booleans: yes / no / on / off stay strings, so they fail on a bool option
    assert parse_override("cache=yes")[1] == "yes" and parse_override("cache=true")[1] is True


def test_str_optional_list_dict_and_nested_rules():
    _fails(r"run_name = 5: expected a string", run_name=5)
    assert _load(run_name=None).run_name is None
    assert _load(steps_per_epoch=None).steps_per_epoch is None
    _fails(r"steps_per_epoch = -1: expected an integer >= 1", steps_per_epoch=-1)
    _fails(r"tasks = 'click': expected a list", tasks="click")
    _fails(r"tasks\[1\] = 3: expected a string", tasks=["click", 3])
    _fails(r"profile_batches = \[1\]: expected a list of 2 values", profile_batches=[1])
    _fails(r"profile_batches\[0\] = 0: expected an integer >= 1", profile_batches=[0, 2])
    _fails(r"strategy\.in_process\.ps = 0: expected an integer >= 1",
           strategy={"name": "parameter_server", "in_process": {"workers": 1, "ps": 0}})
    _fails(r"strategy\.in_process = 3: expected a mapping", strategy={"in_process": 3})
    _fails(r"early_stopping = 'val_auc': expected a mapping", early_stopping="val_auc")
    _fails(r"early_stopping: unknown option\(s\) \['monitr'\]", early_stopping={"monitr": "val_auc"})
    _fails(r"data_dir = None: expected a string", data_dir=None)
    with pytest.raises(ConfigError, match=r"missing required option\(s\) \['data_dir'\]"):
        from_dict(TrainConfig, {}, where="t.yaml")


def test_choices_literal_and_monitor_mode():
    _fails(r"precision = 'float16': expected one of \['float32', 'mixed_float16', 'mixed_bfloat16'\]",
           precision="float16")
    _fails(r"precision_placement = 'logits': expected one of \['hidden', 'mlp', 'embeddings'\]",
           precision_placement="logits")
    _fails(r"early_stopping\.mode = 'mim': expected one of \['min', 'max'\]", early_stopping={"mode": "mim"})
    _fails(r"analysis\[0\] = 'difficult': expected one of " + re.escape(str(sorted(ANALYSES))), analysis=["difficult"])
    _fails(r"tasks = \['click', 'click'\]: expected distinct names", tasks=["click", "click"])
    _fails(r"early_stopping: mode 'min' with monitor 'val_auc'.*use mode 'max'", early_stopping={"mode": "min"})
    _fails(r"mode 'max' with monitor 'val_click_logloss'.*use mode 'min'",
           early_stopping={"monitor": "val_click_logloss", "mode": "max"})

    import dataclasses

    @dataclasses.dataclass
    class Small:
        kind: typing.Literal["a", "b"] = "a"
        share: float = option(0.5, gt=0, lt=1)
        sizes: typing.Dict[str, int] = option(factory=dict, min=0)

    assert from_dict(Small, {"kind": "b", "sizes": {"x": 2.0}}) == Small("b", 0.5, {"x": 2})
    with pytest.raises(ConfigError, match=r"kind = 'c': expected one of \['a', 'b'\]"):
        from_dict(Small, {"kind": "c"})
    with pytest.raises(ConfigError, match=r"share = 1\.0: expected a finite number > 0 and < 1"):
        from_dict(Small, {"share": 1})
    with pytest.raises(ConfigError, match=r"sizes\.x = -1: expected an integer >= 0"):
        from_dict(Small, {"sizes": {"x": -1}})


def _frameworks() -> list:
    factory.custom_objects()  # imports every framework module, which registers it
    return sorted(factory.FRAMEWORKS)


def test_free_form_option_dicts_fail_naming_the_dotted_key():
    _fails(r"model\.backbone_options\.dnn_unitz: unknown option of backbone 'dnn'; known: \[.*'dnn_units'",
           model={"backbone": "dnn", "backbone_options": {"dnn_unitz": [8]}})
    _fails(r"model\.backbone_options\.dnn_units\[1\] = 'x': expected an integer",
           model={"backbone": "dnn", "backbone_options": {"dnn_units": [8, "x"]}})
    _fails(r"model\.backbone_options\.dnn_dropout = 1\.5: expected a number in \[0, 1\)",
           model={"backbone": "dnn", "backbone_options": {"dnn_dropout": 1.5}})
    _fails(r"model\.backbone_options\.dnn_activation = 'rleu'",
           model={"backbone": "dnn", "backbone_options": {"dnn_activation": "rleu"}})
    _fails(r"model\.embedding_options\.num_tables = 0", model={"embedding_options": {"num_tables": 0}})
    _fails(r"model\.framework_options\.ssem = 'sre': expected one of",
           model={"backbone": "dualmlp", "framework": "tf4ctr", "framework_options": {"ssem": "sre"}})
    _fails(r"model\.framework_options\.x: unknown option of framework 'none'", model={"framework_options": {"x": 1}})
    _fails(r"model\.framework = 'tf5ctr': unknown; known: " + re.escape(str(_frameworks())),
           model={"framework": "tf5ctr"})
    _fails(r"loss_options\.gama: unknown option of loss 'focal'", loss="focal", loss_options={"gama": 2})
    _fails(r"loss = 'bcx': unknown loss", loss="bcx")
    # an unknown optimizer option or name is named, never a Keras internal error
    _fails(r"optimizer\.options\.betta: unknown option of optimizer 'adam'; known: \[.*'beta_1'",
           optimizer={"options": {"betta": 0.9}})
    _fails(r"optimizer\.options\.beta_1 = 'x': expected a number", optimizer={"options": {"beta_1": "x"}})
    _fails(r"optimizer\.name = 'adamz': unknown optimizer; known: \[.*'adam'", optimizer={"name": "adamz"})
    cfg = _load(model={"backbone": "dnn", "backbone_options": {"dnn_units": [8.0, 4]}},
                optimizer={"options": {"beta_1": 1, "clipvalue": 1}})
    assert cfg.model.backbone_options["dnn_units"] == [8, 4] and cfg.optimizer.options["beta_1"] == 1.0
    assert cfg.optimizer.options["clipvalue"] == 1.0
    # the options are the built (legacy) class's: Keras' decoupled weight_decay is not one of them
    _fails(r"optimizer\.options\.weight_decay: .*optimizer\.l2 is the coupled one",
           optimizer={"options": {"weight_decay": 1e-4}})


def test_every_shipped_config_loads():
    """The declared ranges accept every config the project ships."""
    from pipeline.compare import CompareConfig, train_configs
    from pipeline.config import load_config
    from pipeline.preprocess_config import PreprocessConfig
    from pipeline.simulator import SimulatorConfig

    kinds = {"simulate": SimulatorConfig, "preprocess": PreprocessConfig, "compare": CompareConfig}
    cwd = os.getcwd()
    try:
        os.chdir(os.path.dirname(CONFIGS))  # base_config and methods_from paths are relative to the repository
        for name in sorted(os.listdir(CONFIGS)):
            cfg = load_config(kinds.get(name.split("_")[0], TrainConfig), os.path.join(CONFIGS, name))
            if isinstance(cfg, PreprocessConfig):
                cfg.feature_specs()
            if isinstance(cfg, CompareConfig):
                assert train_configs(cfg)
    finally:
        os.chdir(cwd)
