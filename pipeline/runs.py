"""Writing a training run's directory: claim it, record the config and run info, save the
model, back up each epoch for an exact resume, mark it done.

The directory's layout, and reading a completed run's model and data directory (also what
``ctrflow export`` needs), are in ``serving/run_artifacts.py``.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import io
import json
import os
import platform
import shutil
import socket
import subprocess
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import tensorflow as tf
import yaml

from features import outputs
from features.schema import Schema
from pipeline.config import ConfigError, from_dict
from pipeline.strategy import is_chief, task_name
from pipeline.train_config import TrainConfig
from serving.run_artifacts import CONFIG, DONE, MODEL_SPEC, RUN_INFO, WEIGHTS, run_info

BACKUP = "backup"  # the folder a killed run resumes from (write_backup)
STAGES = "stages"  # a staged run's stage folders (stage_dir), each with its outcome (STAGE_DONE) once complete
STAGE_DONE = "stage.json"
# config keys that say where a run is written and how much it prints, not what it computes
RUN_NEUTRAL = ("run_name", "runs_dir", "verbose")


class RunComplete(ConfigError):
    """The run directory already holds a completed run (replaced only with ``overwrite``)."""


class RunBusy(ConfigError):
    """Another live process is training into the run directory (its lock, :func:`lock_path`)."""


def git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> Dict[str, Any]:
    """What the run was computed on, as far as it changes the numbers: training is deterministic on
    one machine but not across CPUs or library versions (oneDNN picks its kernels by instruction
    set), so a grid whose cells were trained on several machines says so (``pipeline/compare.py``).
    ``key`` is the part that matters for the numbers: CPU model and widest vector set, cores, the
    TensorFlow and NumPy versions and the accelerators (run.json's ``machines`` lists the keys of
    every machine a resumed run was trained on)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip() == "model name":
                    cpu = value.strip()
                elif name.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the platform module's processor name
        pass
    isa = next((f for f in ("avx512f", "avx2", "avx") if f in flags), None)
    accelerators = [d.device_type for d in tf.config.list_physical_devices() if d.device_type != "CPU"]
    key = ", ".join([cpu + (f" ({isa})" if isa else ""), f"{os.cpu_count()} cores", f"TF {tf.__version__}",
                     f"NumPy {np.__version__}", *accelerators])
    return {"key": key, "host": socket.gethostname(), "cpu": cpu, "isa": isa, "cores": os.cpu_count(),
            "accelerators": accelerators, "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "numpy": np.__version__}


@contextlib.contextmanager
def open_run(cfg, config_name: str, schema: Schema, overwrite: bool = False) -> Iterator[str]:
    """Create (or reopen, to resume) the run directory, record what defines the run, and yield it
    locked for this process.

    The run directory is train's own (``features.outputs`` marker): an existing folder not
    made by train is refused unless ``overwrite`` (then it is deleted first), and never
    when it holds the data directory. A completed run is replaced only with ``overwrite``;
    the run directory is also the resume state, so the new run is written in place and the
    old one is kept aside (``.<name>.replaced-<hex>``) until :func:`mark_done` of the new one.

    The lock (:func:`hold_lock`) is held from before the folder is opened until the ``with``
    block ends, however it ends: a second process training the same folder is refused
    (``RunBusy``) instead of interleaving its writes with the first's."""
    name = cfg.run_name or f"{config_name}-seed{cfg.seed}"
    run_dir = os.path.abspath(os.path.join(os.path.expanduser(cfg.runs_dir), name))
    _claim_run_dir(run_dir, cfg.data_dir, overwrite, chief=is_chief())
    if not is_chief():  # other workers of a multi-worker run keep their logs apart from the chief's
        run_dir = os.path.join(run_dir, "workers", task_name())
    with hold_lock(run_dir):
        yield _open_run_dir(cfg, run_dir, schema, overwrite)


def _open_run_dir(cfg, run_dir: str, schema: Schema, overwrite: bool) -> str:
    if os.path.exists(os.path.join(run_dir, DONE)):
        if not overwrite:
            raise RunComplete(f"run '{run_dir}' is already complete; pass --overwrite or choose another run_name")
        outputs.set_aside(run_dir)
        outputs.open_output(run_dir, "train", [cfg.data_dir])
    resuming = any(os.path.isdir(os.path.join(run_dir, d)) for d in (BACKUP, STAGES))
    config_dict = dataclasses.asdict(cfg)
    if resuming and (changed := config_differences(recorded_config(run_dir), config_dict)):
        if not overwrite:
            raise ConfigError(f"run '{run_dir}' exists with a different config ({', '.join(changed[:5])}): "
                              f"cannot resume it; use another run_name or --overwrite")
        shutil.rmtree(run_dir)  # train's own unfinished run of another config: --overwrite starts afresh
        outputs.open_output(run_dir, "train", [cfg.data_dir])
        resuming = False
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, CONFIG), "w") as fh:
        yaml.safe_dump(config_dict, fh, sort_keys=False)
    here = machine()
    # a resumed run was computed on every machine it ran on: the earlier ones are carried forward
    earlier = run_info(run_dir).get("machines", []) if resuming else []
    info = {"schema_fingerprint": schema.fingerprint(), "git_commit": git_commit(),
            "tensorflow": tf.__version__, "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "resumed": resuming, "data_dir": os.path.abspath(cfg.data_dir), "machine": here,
            "machines": list(dict.fromkeys([*earlier, here["key"]]))}
    with open(os.path.join(run_dir, RUN_INFO), "w") as fh:
        json.dump(info, fh, indent=2)
    return run_dir


def lock_path(run_dir: str) -> str:
    """The lock file of a run being trained: ``.<name>.lock`` beside its folder (outside it, so
    replacing or setting aside the folder keeps the lock)."""
    parent, name = os.path.split(os.path.abspath(run_dir))
    return os.path.join(parent, f".{name}.lock")


def lock_holder(run_dir: str) -> Optional[dict]:
    """{pid, host} of the live process training ``run_dir``, None when nobody is. A lock whose
    process is gone on this host (a killed run) is stale and reads as None; a lock from another
    host is taken as live, since its process cannot be checked from here."""
    try:
        with open(lock_path(run_dir)) as fh:
            holder = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        holder = None
    pid = holder.get("pid") if isinstance(holder, dict) else None
    if not isinstance(pid, int) or pid <= 0:  # created but not yet written: its writer is starting
        return {"pid": None, "host": None}
    if holder.get("host") == socket.gethostname() and not outputs.pid_alive(pid):
        return None
    return holder


@contextlib.contextmanager
def hold_lock(run_dir: str) -> Iterator[None]:
    """Hold the run's lock (:func:`lock_path`) for this process while the ``with`` block runs.

    The file is created exclusively, so of two processes starting together one wins; a live
    holder's lock raises ``RunBusy``, a stale one (:func:`lock_holder`) is replaced. Released
    on the way out unless another process has taken it over meanwhile."""
    path = lock_path(run_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            holder = lock_holder(run_dir)
            if holder is not None:
                raise RunBusy(f"run '{run_dir}' is being trained by process {holder['pid']} on host "
                              f"{holder['host']} (lock file '{path}'); wait for it to finish, or remove the "
                              f"lock file if that process is gone") from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # a killed run's lock
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    with os.fdopen(fd, "w") as fh:
        json.dump(me, fh)
    try:
        yield
    finally:
        if lock_holder(run_dir) == me:
            os.remove(path)


def recorded_config(run_dir: str):
    """The config the run in ``run_dir`` was started with (None when unreadable)."""
    try:
        with open(os.path.join(run_dir, CONFIG)) as fh:
            return yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None


def defining_config(config: Optional[dict]) -> Optional[dict]:
    """What decides a run's numbers: its config as plain JSON values, without ``RUN_NEUTRAL``.
    A config recorded before ``dropout_impl`` existed ran the ``uniform`` dropout (tf.nn's
    stateless_dropout) and reads so: such a run resumes, or a compare grid reuses it, only
    under ``dropout_impl: uniform``."""
    if config is None:
        return None
    config = {"dropout_impl": "uniform", **json.loads(json.dumps(config))}
    return {k: v for k, v in config.items() if k not in RUN_NEUTRAL}


_MISSING = object()  # a key only one of two configs has


def config_differences(recorded: Optional[dict], config: dict) -> List[str]:
    """The dotted keys whose values differ between two run configs, ``RUN_NEUTRAL`` aside
    (``["<unreadable>"]`` when the recorded one is missing)."""
    if recorded is None:
        return ["<unreadable config.yaml>"]

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b), key=str)
                    for d in walk(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}{k}.")]
        return [] if a == b else [prefix.rstrip(".")]
    return walk(defining_config(recorded), defining_config(config), "")


def _claim_run_dir(run_dir: str, data_dir: str, overwrite: bool, chief: bool) -> None:
    """Make ``run_dir`` train's (marked): new, train's own, or (``overwrite``) someone else's
    folder, which the chief deletes first. Every task of a multi-worker run claims it, so
    whichever starts first creates it with the marker."""
    status = outputs.claim_output(run_dir, "train", [data_dir], overwrite)
    if status == outputs.REPLACE and chief:
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        else:
            os.remove(run_dir)
    outputs.open_output(run_dir, "train", [data_dir], overwrite)


def save_model(model: tf.keras.Model, run_dir: str, schema_dict: dict, tasks: List[str], cfg) -> None:
    with open(os.path.join(run_dir, MODEL_SPEC), "w") as fh:
        json.dump({"schema": schema_dict, "tasks": tasks, "model": dataclasses.asdict(cfg.model)}, fh, indent=2)
    model.save_weights(os.path.join(run_dir, WEIGHTS))


def mark_done(run_dir: str, summary: Dict[str, Any]) -> None:
    with open(os.path.join(run_dir, DONE), "w") as fh:
        json.dump(summary, fh, indent=2)
    drop_backup(run_dir)
    outputs.drop_set_aside(run_dir)  # the completed run that --overwrite replaced


def stage_dir(run_dir: str, index: int, name: str) -> str:
    """The folder of a staged run's stage ``index`` (0-based) ``name``: ``stages/<index + 1>-<name>``."""
    return os.path.join(run_dir, STAGES, f"{index + 1}-{name}")


def finish_stage(folder: str, model: tf.keras.Model, outcome: Dict[str, Any]) -> None:
    """Record a completed stage: the model's weights after it, then ``stage.json`` (its history or
    result), written last and atomically, so a kill leaves it complete or absent; its backup goes."""
    model.save_weights(os.path.join(folder, WEIGHTS))
    outputs.write_file_atomic(os.path.join(folder, STAGE_DONE), json.dumps(outcome, indent=1))
    drop_backup(folder)


def completed_stages(run_dir: str, names: List[str], model: tf.keras.Model) -> Dict[str, Any]:
    """{stage: outcome} of the stages a killed staged run completed (the leading ones with a
    ``stage.json``), the last one's weights restored into ``model``; {} for a fresh run."""
    done: Dict[str, Any] = {}
    for index, name in enumerate(names):
        path = os.path.join(stage_dir(run_dir, index, name), STAGE_DONE)
        if not os.path.exists(path):
            break
        with open(path) as fh:
            done[name] = json.load(fh)
        last = stage_dir(run_dir, index, name)
    if done:
        model.load_weights(os.path.join(last, WEIGHTS)).expect_partial()
    return done


def write_stage_history(run_dir: str, outcomes: Dict[str, Any]) -> None:
    """The run's ``history.csv`` of a staged run: every fit stage's epochs in order, with a
    ``stage`` column (each stage's own is in its folder)."""
    rows = []
    for stage, outcome in outcomes.items():
        history = outcome.get("history") or {}
        for epoch in range(len(next(iter(history.values()), []))):
            rows.append({"stage": stage, "epoch": epoch, **{k: v[epoch] for k, v in history.items()}})
    keys = ["stage", "epoch"] + sorted({k for r in rows for k in r} - {"stage", "epoch"})
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    outputs.write_file_atomic(os.path.join(run_dir, "history.csv"), text.getvalue())


def write_backup(run_dir: str, epoch: int, model: tf.keras.Model, state: dict, arrays: List[np.ndarray]) -> None:
    """The backup after ``epoch`` (1-based) epochs: the model with its optimizer (TF
    checkpoint), ``state`` (JSON) and ``arrays`` (npz) in ``backup/epoch-<epoch>/``, then
    ``backup/latest.json`` naming that epoch, replaced atomically last, then the earlier
    epochs' folders removed. A kill at any instant leaves latest.json naming a complete backup
    whose parts all belong to one epoch."""
    backup = os.path.join(run_dir, BACKUP)
    folder = os.path.join(backup, f"epoch-{epoch}")
    shutil.rmtree(folder, ignore_errors=True)  # a killed run's partial write of this epoch
    os.makedirs(folder)
    tf.train.Checkpoint(model=model).write(os.path.join(folder, "ckpt"))
    np.savez(os.path.join(folder, "arrays.npz"), *arrays)
    outputs.write_file_atomic(os.path.join(folder, "state.json"), json.dumps(state, indent=1))
    outputs.write_file_atomic(os.path.join(backup, "latest.json"), json.dumps({"epoch": epoch}))
    _remove_stale_backups(backup, keep=folder)


def drop_backup(run_dir: str) -> None:
    """Remove the run's backup: the run (or this worker's part of it) is complete."""
    shutil.rmtree(os.path.join(run_dir, BACKUP), ignore_errors=True)


def read_backup(run_dir: str, model: tf.keras.Model):
    """(state, arrays) of the latest complete backup, its checkpoint restored into ``model``
    (variables not built yet are restored when they are created); None if the run has none.
    Leftovers of a write that a kill interrupted are removed."""
    backup = os.path.join(run_dir, BACKUP)
    latest = os.path.join(backup, "latest.json")
    if not os.path.exists(latest):
        shutil.rmtree(backup, ignore_errors=True)
        return None
    with open(latest) as fh:
        folder = os.path.join(backup, f"epoch-{json.load(fh)['epoch']}")
    _remove_stale_backups(backup, keep=folder)
    with open(os.path.join(folder, "state.json")) as fh:
        state = json.load(fh)
    with np.load(os.path.join(folder, "arrays.npz")) as npz:
        arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    tf.train.Checkpoint(model=model).read(os.path.join(folder, "ckpt")).expect_partial()
    return state, arrays


def _remove_stale_backups(backup: str, keep: str) -> None:
    for name in os.listdir(backup):
        path = os.path.join(backup, name)
        if path != keep and name != "latest.json":
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def load_config(run_dir: str) -> TrainConfig:
    """The run's resolved training config (``config.yaml``), checked as when it was loaded."""
    path = os.path.join(run_dir, CONFIG)
    with open(path) as fh:
        return from_dict(TrainConfig, yaml.safe_load(fh), where=path)
