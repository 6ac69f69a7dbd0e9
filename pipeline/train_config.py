"""The training config: ``TrainConfig`` and its parts, with their checks.

Loaded from YAML by :func:`pipeline.config.load_config`; the free-form option dicts are
checked against the models' and Keras' option tables when the config is built, so a bad
option fails before any work. Its own module so that the run directory code
(``pipeline/runs.py``) and the training driver (``pipeline/train.py``) both read it.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Dict, List, Optional

from models.factory import check_model_options, framework_class
from models.layers import PLACEMENTS
from models.losses import LOSSES, check_loss_options
from models.options import check_options
from pipeline.config import ConfigError, option
from pipeline.analyses import ANALYSES
from pipeline.data import SOURCES
from pipeline.optimizers import CLIP_OPTIONS, OPTIMIZERS
from pipeline.strategy import StrategyConfig

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class ModelConfig:
    backbone: str = "dcnv2"  # a name from models.backbones.BACKBONES
    backbone_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    embedding_dim: int = option(16, min=1)
    embedding_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    framework: str = "none"  # a name from models.factory.FRAMEWORKS
    framework_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    heads: str = "additive"  # task heads, a name from models.heads.HEADS
    head_options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # models.heads: e.g. towers' units
    # models.field_modules: [{name: tim, join: representation, ...}, ...] (TIM, similarity_encoding)
    field_modules: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ScheduleConfig:
    """The learning rate over the epochs (``optimizer.schedule``; ``pipeline/optimizers.py``):
    ``none`` keeps ``learning_rate``; ``step`` multiplies it by ``factor`` every ``every_epochs``
    epochs (PyTorch's StepLR(step_size=every_epochs, gamma=factor) stepped per epoch; the GPRec
    authors' script: 8 and 0.8), on the optimizer's step counter, so a resumed run continues it."""
    type: str = option("none", choices=("none", "step"))
    every_epochs: Optional[int] = option(None, min=1)
    factor: Optional[float] = option(None, gt=0, max=1)

    def __post_init__(self):
        given = {k: getattr(self, k) for k in ("every_epochs", "factor")}
        if self.type == "step" and None in given.values():
            missing = [k for k, v in given.items() if v is None]
            raise ConfigError(f"{', '.join(missing)}: required with type 'step' (the lr is multiplied by factor "
                              f"every every_epochs epochs)")
        if self.type == "none" and any(v is not None for v in given.values()):
            extra = [k for k, v in given.items() if v is not None]
            raise ConfigError(f"{', '.join(extra)}: apply to type 'step' only, but type is 'none'")


@dataclasses.dataclass
class OptimizerConfig:
    # a tf-keras optimizer of the legacy family, or lazy_adam (pipeline.optimizers.OPTIMIZERS)
    name: str = "adam"
    learning_rate: float = option(1e-3, gt=0)
    clipnorm: Optional[float] = option(None, gt=0)
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # the optimizer's own arguments
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)  # the lr over the epochs
    # coupled weight decay, PyTorch Adam's weight_decay: g <- g + l2 * w before the update (pipeline/optimizers.py)
    l2: float = option(0.0, min=0)


# arguments of an optimizer's constructor that are not ``optimizer.options`` (own keys, or the trainer's)
_OPTIMIZER_OWN = ("self", "name", "learning_rate")
OPTIMIZER_RANGES = {"clipvalue": "(0, inf)", "global_clipnorm": "(0, inf)", "epsilon": "[0, inf)"}
OPTIMIZER_TYPES = {"clipvalue": float, "global_clipnorm": float}  # options whose default is None


def check_optimizer(cfg: OptimizerConfig, prefix: str = "optimizer.") -> Dict[str, Any]:
    """The optimizer's name and ``options`` checked against the constructor of the class
    ``pipeline.optimizers.make_optimizer`` builds (names, types of the defaults,
    :data:`OPTIMIZER_RANGES`); returns the checked options."""
    cls = OPTIMIZERS.get(cfg.name.lower())
    if cls is None:
        raise ConfigError(f"{prefix}name = {cfg.name!r}: unknown optimizer; known: {sorted(OPTIMIZERS)}")
    if "weight_decay" in cfg.options:
        raise ConfigError(f"{prefix}options.weight_decay: the optimizers ctrflow builds (tf-keras' legacy family) "
                          f"have no decoupled weight decay; {prefix}l2 is the coupled one (PyTorch Adam's "
                          f"weight_decay: l2 * w joins the gradient)")
    params = inspect.signature(cls.__init__).parameters.values()
    defaults = {p.name: p.default for p in params
                if p.name not in _OPTIMIZER_OWN and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    checked = check_options(cfg.options, {**defaults, **CLIP_OPTIONS}, f"{prefix}options.",
                            f"optimizer '{cfg.name}'", OPTIMIZER_RANGES, types=OPTIMIZER_TYPES)
    for key, (refused, why) in getattr(cls, "REFUSED_OPTIONS", {}).items():
        if key in checked and checked[key] == refused:
            raise ConfigError(f"{prefix}options.{key} = {refused!r}: {why}")
    return checked


MONITOR_MODES = {"auc": "max", "logloss": "min", "loss": "min"}  # metric suffix -> the improving direction
MEAN = "mean"  # val_mean_auc / val_mean_logloss: the mean over the tasks


def monitored_metrics(tasks: List[str], is_ps: bool) -> List[str]:
    """What ``early_stopping.monitor`` may name: the validation metrics the run logs each epoch.

    ``pipeline.train.ExactValidation`` logs the exact ``val_<task>_auc`` / ``val_<task>_logloss``
    of every task, their means over the tasks ``val_mean_auc`` / ``val_mean_logloss``, and the
    first task's as ``val_auc`` / ``val_logloss``. Under ``parameter_server`` the run validates
    with Keras' AUC instead: ``val_auc`` (first task) and, with several tasks, ``val_<task>_auc``.
    """
    if is_ps:
        return ["val_auc"] + ([f"val_{t}_auc" for t in tasks] if len(tasks) > 1 else [])
    return ["val_auc", "val_logloss"] + [f"val_{t}_{m}" for t in [MEAN, *tasks] for m in ("auc", "logloss")]


@dataclasses.dataclass
class EarlyStoppingConfig:
    monitor: str = "val_auc"  # exact AUC of the first task on the valid split; see monitored_metrics()
    mode: Optional[str] = option(None, choices=("min", "max"))  # default: the monitor's (auc max, logloss min)
    patience: int = option(2, min=0)
    restore_best_weights: bool = True

    def __post_init__(self):
        suffix = self.monitor.rsplit("_", 1)[-1]
        self.mode = self.mode or MONITOR_MODES.get(suffix)  # no suffix of a logged metric: monitor check fails
        if suffix in MONITOR_MODES and self.mode != MONITOR_MODES[suffix]:
            raise ConfigError(f"mode '{self.mode}' with monitor '{self.monitor}': {suffix} improves as it "
                              f"{'rises' if MONITOR_MODES[suffix] == 'max' else 'falls'}, "
                              f"use mode '{MONITOR_MODES[suffix]}'")


@dataclasses.dataclass
class TaskLoss:
    """One task's loss and its weight in the total loss (``TrainConfig.task_losses``)."""
    loss: Optional[str] = None  # a name from models.losses.LOSSES; default: TrainConfig.loss
    weight: float = option(1.0, min=0)
    # the loss's options; default: TrainConfig.loss_options if the loss is TrainConfig.loss, else none
    options: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        if self.loss is not None and self.loss not in LOSSES:
            raise ConfigError(f"loss = {self.loss!r}: unknown loss; known: {sorted(LOSSES)}")


@dataclasses.dataclass
class TrainConfig:
    data_dir: str
    runs_dir: str = "runs"
    run_name: Optional[str] = None
    tasks: Optional[List[str]] = None  # default: every label of the schema
    features: Optional[List[str]] = None  # default: every feature of the schema
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    loss: str = "bce"  # a name from models.losses.LOSSES
    loss_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # per task: {loss, weight, options}; a task not named takes `loss` / `loss_options` with weight 1.
    # The total loss is the weighted sum of the tasks' losses.
    task_losses: Dict[str, TaskLoss] = dataclasses.field(default_factory=dict)
    batch_size: int = option(4096, min=1)
    eval_batch_size: int = option(16384, min=1)
    epochs: int = option(10, min=1)
    steps_per_epoch: Optional[int] = option(None, min=1)
    seed: int = option(2024, min=0)
    deterministic: bool = True
    shuffle_buffer: int = option(200_000, min=1)
    cache: bool = True
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    # float32 | mixed_float16 (GPU) | mixed_bfloat16 (TPU, CPUs with AVX512-BF16/AMX)
    precision: str = option("float32", choices=PRECISIONS)
    # what computes in the mixed dtype (models/layers.py): hidden = the MLP hidden layers after the first;
    # mlp = every MLP layer; embeddings = also the field embeddings as handed on (docs/benchmarks.md measures them)
    precision_placement: str = option("hidden", choices=PLACEMENTS)
    jit_compile: bool = False
    # how dropout draws its masks (models.layers.dropout): bits = 16-bit integer draws against a threshold
    # (drop probability round(rate * 2^16) / 2^16), one multiply, custom gradient; uniform = the previous
    # tf.nn stateless_dropout (float uniforms). Masks differ between the two; inference is unaffected.
    dropout_impl: str = option("bits", choices=("bits", "uniform"))
    steps_per_execution: int = option(1, min=1)  # training steps per tf.function call (less Python overhead)
    train_split: str = "train"
    # the sample sources the train split is read with (validation and test are read whole): null = every
    # row, else names from {ad, rec}, e.g. [ad] = Rec4Ad's Base on data that also holds pseudo-ad rec
    # samples; the data's schema must have a source column (pipeline/data.py, source_filter)
    sources: Optional[List[str]] = option(None, choices=tuple(SOURCES))
    valid_split: str = "valid"
    eval_splits: List[str] = dataclasses.field(default_factory=lambda: ["test"])
    analysis: List[str] = option(factory=list, choices=tuple(sorted(ANALYSES)))  # e.g. [difficulty]; a framework adds its own (tf4ctr: difficulty)
    # [first, last] steps traced by the TF profiler into tensorboard/
    profile_batches: Optional[List[int]] = option(None, min=1, length=2)
    verbose: int = option(1, choices=(0, 1, 2))
    # warm start: a completed run dir whose final weights this run starts from (the optimizer starts
    # fresh). Its schema fingerprint (run.json), features, tasks and model options must be this run's,
    # else a UserError names both fingerprints / the differing option. New days of data keep the
    # fingerprint when encoded with `ctrflow preprocess --schema <that run's data dir>`.
    init_from: Optional[str] = None
    # the meta column whose values weight every task's loss (batches are (inputs, labels, weights)):
    # "auto" = the product of the schema's weight columns (none if it has none), null = unweighted,
    # else a meta column's name, checked against the schema when training starts (pipeline/data.py)
    sample_weight: Optional[str] = "auto"
    # a training stage's frozen weights: variable groups of the framework (its variable_groups(), e.g.
    # HDA's first-stage tables) left out of every update
    freeze: List[str] = dataclasses.field(default_factory=list)
    # the optimizers of a framework's alternating phases that do not use `optimizer` (its phases(),
    # e.g. {discriminator: {name: adam, learning_rate: 1.0e-4}})
    phase_optimizers: Dict[str, OptimizerConfig] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        """Checks against the models' and Keras' option tables (free-form dicts), naming the key."""
        for key, value in check_model_options(**dataclasses.asdict(self.model)).items():
            setattr(self.model, key, value)
        self.optimizer.options = check_optimizer(self.optimizer)
        for name, opt in self.phase_optimizers.items():
            opt.options = check_optimizer(opt, f"phase_optimizers.{name}.")
        self.loss_options = check_loss_options(self.loss, self.loss_options)
        for task, entry in self.task_losses.items():
            self._resolve_task_loss(task, entry)
        if self.sources is not None and not self.sources:
            raise ConfigError(f"sources = []: expected null (every row) or at least one of {sorted(SOURCES)}")
        for name in ("tasks", "features", "eval_splits", "sources"):
            names = getattr(self, name) or []
            if len(set(names)) != len(names):
                raise ConfigError(f"{name} = {names}: expected distinct names")
        if self.run_name is not None and (not self.run_name or set(self.run_name) & {"/", "\\"}
                                          or self.run_name in (".", "..")):
            raise ConfigError(f"run_name = {self.run_name!r}: expected a folder name under runs_dir (no '/' or '\\', "
                              f"not '.' or '..')")
        pb = self.profile_batches
        if pb is not None and not (len(pb) == 2 and 1 <= int(pb[0]) <= int(pb[1])):
            raise ConfigError(f"profile_batches must be [first, last] steps with 1 <= first <= last, got {pb}")
        if self.tasks:
            self.check_tasks(self.tasks)

    def _resolve_task_loss(self, task: str, entry: TaskLoss) -> None:
        """``entry``'s defaults filled in from ``loss`` / ``loss_options``, its options checked."""
        if entry.options is None:
            entry.options = self.loss_options if entry.loss in (None, self.loss) else {}
        entry.loss = entry.loss or self.loss
        entry.options = check_loss_options(entry.loss, entry.options, f"task_losses.{task}.options.")

    def task_loss(self, task: str) -> TaskLoss:
        """``task``'s loss, options and weight (``task_losses``, else ``loss`` / ``loss_options``, 1)."""
        return self.task_losses.get(task) or TaskLoss(self.loss, 1.0, dict(self.loss_options))

    def served_tasks(self, tasks: List[str]) -> List[str]:
        """The tasks of ``tasks`` the model serves, which validation, evaluation and export score
        (every task unless the framework serves fewer: STEM-AL's main task)."""
        return framework_class(self.model.framework).served_tasks(tasks, self.model.framework_options)

    def check_tasks(self, tasks: List[str]) -> None:
        """What depends on the run's tasks (``tasks``, else the schema's labels): ``task_losses``
        names only tasks of the run, ``early_stopping.monitor`` a metric the run logs (of the
        tasks it serves)."""
        unknown = sorted(set(self.task_losses) - set(tasks))
        if unknown:
            raise ConfigError(f"{', '.join('task_losses.' + t for t in unknown)}: not a task of this run; "
                              f"tasks: {list(tasks)}")
        if MEAN in tasks and len(tasks) > 1:
            raise ConfigError(f"tasks = {list(tasks)}: a task named '{MEAN}' clashes with the mean over tasks "
                              f"(val_{MEAN}_auc); rename that label")
        monitors = monitored_metrics(self.served_tasks(tasks), self.strategy.name == "parameter_server")
        if self.early_stopping.monitor not in monitors:
            raise ConfigError(f"early_stopping.monitor = {self.early_stopping.monitor!r}: not a metric this run "
                              f"logs; expected one of {monitors}")
