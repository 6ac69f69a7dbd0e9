"""How much head / tail group information the shared field embeddings E_sh still carry (HDA §5.5,
RQ4, Fig. 5), the ``alignment`` run analysis.

HDA's shared model (``models/frameworks/hda/model.py``) exposes ``shared_fields(inputs, training,
draw) -> EmbeddedFields``: E_sh [B, F, d], meant to carry no group information. The paper checks it
with "an additional discriminator", DeepFM, predicting whether a sample belongs to a head or a
long-tail user from E_sh, and reports its AUC: 0.5 = nothing of the group is left (no alignment,
mapping only, adversarial only, both). Here:

- E_sh is read as served (``training=False``, no Gumbel draw: ``serving_mapping``; ``draw: true``
  reads X_t as stage 1b trains on it, a draw from T[x], the only read for which Theorem 4.2's
  I(E_sh; G) <= I(X_t; G) holds: the ``expectation`` read is a one-to-one function of x), from the run's
  model when its last fit stage ends (the weights the run saves: stage 3, calibration, leaves E_sh
  alone), or from a completed run loaded by :func:`analyze_run` (``serving.run_artifacts.load_model``);
- the discriminator is a *fresh* DeepFM, the registered backbone (``get_backbone("deepfm", F, d,
  **backbone_options)``; its defaults are the paper's DNN [400, 400, 400]), reading
  ``EmbeddedFields(fields=E_sh, linear=...)`` with a sigmoid output on the group (``_group``, 1 head
  / 0 tail). DeepFM reads first-order terms (``uses_linear``); E_sh has none of its own (HDA's
  first-order tables are not part of E_sh's fields), so ``first_order: learned`` (the default)
  gives it a learned linear term per field on E_sh, <w_i, e_i> with w_i [d] (zero-initialised),
  the analogue of FM's w_i x_i on a dense field, so the discriminator is the whole DeepFM (linear
  + FM + DNN) on E_sh alone; ``first_order: zeros`` feeds zeros (the linear part is then a bias).
  E_sh is this DeepFM's fixed input, not embeddings it learns, so its FM term sum_{i<j} <e_i, e_j>
  has no weight of its own: a fixed function of E_sh added to the logit, which the linear term and
  the DNN learn around (harmless at embedding scale; on large inputs it is noise they must cancel);
- it trains on up to ``train_rows`` rows of the training split (a seeded streaming shuffle, the
  run's ``sources``) for ``epochs`` epochs (Adam, ``learning_rate``, ``batch_size``, BCE on the
  logit; weights seeded by ``seed``), and is scored by the exact AUC (``pipeline.metrics.auc``) on
  up to ``valid_rows`` rows of the validation split (in order). The AUC on its own training rows is
  recorded too (a discriminator that fits the training rows but not the valid split has memorised,
  not found group information). Rows with a group other than 0 / 1 are left out.

The options are this module's :data:`DEFAULTS` (the run analysis uses them; :func:`analyze_run`
and :class:`AlignmentAnalysis` take others). Written under ``<run_dir>/analysis/``:

    alignment.json   {"auc", "train_auc", "head_share": {"train", "valid"}, "rows": {...},
                      "splits", "fields", "embedding_dim", "e_sh_rms": {"train", "valid"} (E_sh's scale),
                      "alignment", "discriminator": {...},
                      "history": [loss per epoch],
                      "per_field": [{"field", "auc", "train_auc"}] (with ``per_field``)}
    alignment.md     the numbers as a table

``per_field: true`` adds which fields carry the group: the same discriminator trained on each
field of E_sh alone (named by the model's ``shared_field_features``), one AUC per field. It
answers what the overall AUC cannot: whether the group leaks through a mapped field (whose
mapping failed to merge head and tail values) or an unmapped one (numeric, multi-valued).
``ctrflow analyze RUN_DIR alignment --option per_field=true`` runs it on a completed run; a
variant's files are named by its options (``alignment-per_field=true.json``), the run's own
record stays.

Registered in ``pipeline.analyses`` as ``alignment`` (HDA lists it in its ``analyses``); its summary
(:func:`summary`, the discriminator's valid AUC) is what ``ctrflow compare`` tabulates.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from features.outputs import write_file_atomic
from models.backbones import backbone_class, get_backbone
from models.embedding import EmbeddedFields
from models.layers import global_policy
from pipeline import metrics as M
from pipeline.config import ConfigError

GROUP = "_group"  # the side input holding a row's group (models.domains.GROUP_INPUT): 1 head, 0 tail
FIRST_ORDER = ("learned", "zeros")
DEFAULTS = {"train_rows": 50_000, "valid_rows": 50_000, "epochs": 3, "batch_size": 1024,
            "learning_rate": 1e-3, "backbone_options": {}, "first_order": "learned", "seed": 0,
            "per_field": False, "draw": False}


def shared_embeddings(model, dataset: tf.data.Dataset, rows: int, draw: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(E_sh [n, F, d] float32, group [n] int64) of the first ``rows`` rows of ``dataset`` whose group
    is 0 or 1, read as served (``model.shared_fields(x, training=False)``) or with X_t drawn (``draw``)."""
    fields, groups, seen = [], [], 0
    for batch in dataset:
        x = tf.keras.utils.unpack_x_y_sample_weight(batch)[0]
        if GROUP not in x:
            raise ValueError(f"alignment: the batches have no '{GROUP}' input (the data's group column)")
        g = x[GROUP].numpy().reshape(-1)
        keep = np.flatnonzero(np.isin(g, (0, 1)))[:rows - seen]
        if len(keep):
            e = np.asarray(model.shared_fields(x, training=False, draw=draw).fields, np.float32)
            fields.append(e[keep])
            groups.append(g[keep].astype(np.int64))
            seen += len(keep)
        if seen >= rows:
            break
    if not fields:
        raise ValueError("alignment: no row with a group of 0 (tail) or 1 (head)")
    return np.concatenate(fields), np.concatenate(groups)


class GroupDiscriminator(tf.keras.Model):
    """A fresh DeepFM on E_sh [B, F, d] -> the logit of "head" [B, 1] (first-order terms: see the
    module docstring's ``first_order``)."""

    def __init__(self, num_fields: int, embedding_dim: int, first_order: str = "learned",
                 backbone_options: Optional[dict] = None, **kw):
        super().__init__(**kw)
        if first_order not in FIRST_ORDER:
            raise ValueError(f"alignment: first_order must be one of {FIRST_ORDER}, got {first_order!r}")
        self.backbone = get_backbone("deepfm", num_fields, embedding_dim, layer_name="deepfm",
                                     **(backbone_options or {}))
        self.learned = backbone_class("deepfm").uses_linear and first_order == "learned"
        self.linear_weights = (self.add_weight(name="first_order", shape=(num_fields, embedding_dim),
                                               initializer="zeros") if self.learned else None)

    def call(self, fields, training=None):
        fields = tf.cast(fields, tf.float32)
        linear = (tf.reduce_sum(fields * self.linear_weights, axis=-1) if self.learned
                  else tf.zeros(tf.shape(fields)[:2], tf.float32))
        return self.backbone(EmbeddedFields(fields, linear), training=training).logit


def discriminator_auc(train: Tuple[np.ndarray, np.ndarray], valid: Tuple[np.ndarray, np.ndarray],
                      epochs: int = 3, batch_size: int = 1024, learning_rate: float = 1e-3,
                      backbone_options: Optional[dict] = None, first_order: str = "learned",
                      seed: int = 0) -> dict:
    """Train a fresh :class:`GroupDiscriminator` on ``train`` = (E_sh, group) and score it on ``valid``:
    {"auc" (valid), "train_auc", "history" (training loss per epoch)}; an AUC is None when its
    rows hold one group only (undefined)."""
    (x_train, g_train), (x_valid, g_valid) = train, valid
    with global_policy("float32"):  # whatever the run's precision: a small float32 model
        tf.keras.utils.set_random_seed(seed)
        model = GroupDiscriminator(x_train.shape[1], x_train.shape[2], first_order, backbone_options)
        model(x_train[:1])  # built here, eagerly: its initial weights a function of ``seed`` alone
        model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                      loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
        fit = model.fit(x_train, g_train.astype(np.float32)[:, None], batch_size=int(batch_size),
                        epochs=int(epochs), shuffle=True, verbose=0)

        def score(x, g):
            if len(np.unique(g)) < 2:
                return None
            logit = model.predict(x, batch_size=max(int(batch_size), 4096), verbose=0)
            return M.auc(g, np.asarray(logit, np.float64).reshape(-1))

        return {"auc": score(x_valid, g_valid), "train_auc": score(x_train, g_train),
                "history": [float(v) for v in fit.history["loss"]]}


def alignment_report(model, train_data: tf.data.Dataset, valid_data: tf.data.Dataset,
                     splits: Tuple[str, str] = ("train", "valid"), **options) -> dict:
    """The ``alignment.json`` record of ``model`` (anything with ``shared_fields``): E_sh of
    ``train_data`` and ``valid_data`` (batches of the two splits, named by ``splits``; or functions
    making them, called once the global random seed is set to ``seed``, so that a seeded shuffle
    draws the same rows whatever ran before), the fresh discriminator's AUCs; ``options``:
    :data:`DEFAULTS`' keys. Sets the global random seed (to ``seed``)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"alignment: unknown options {unknown}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **options}
    tf.keras.utils.set_random_seed(int(o["seed"]))  # before the data: a seeded shuffle takes the global seed too
    train = shared_embeddings(model, train_data() if callable(train_data) else train_data, int(o["train_rows"]),
                              bool(o["draw"]))
    valid = shared_embeddings(model, valid_data() if callable(valid_data) else valid_data, int(o["valid_rows"]),
                              bool(o["draw"]))
    fit = [o[k] for k in ("epochs", "batch_size", "learning_rate", "backbone_options", "first_order", "seed")]
    result = discriminator_auc(train, valid, *fit)
    per_field = None
    if o["per_field"]:
        names = field_names(getattr(model, "shared_field_features", None) or
                            [f"field {i}" for i in range(train[0].shape[1])])
        per_field = [{"field": name, **{k: v for k, v in discriminator_auc(
            (train[0][:, i:i + 1], train[1]), (valid[0][:, i:i + 1], valid[1]), *fit).items() if k != "history"}}
            for i, name in enumerate(names)]
    framework_options = getattr(model, "options", None)
    return {"auc": result["auc"], "train_auc": result["train_auc"],
            "head_share": {"train": float(train[1].mean()), "valid": float(valid[1].mean())},
            "rows": {"train": int(len(train[1])), "valid": int(len(valid[1]))},
            "splits": {"train": splits[0], "valid": splits[1]},
            "fields": int(train[0].shape[1]), "embedding_dim": int(train[0].shape[2]),
            "e_sh_rms": {"train": float(np.sqrt(np.mean(np.square(train[0], dtype=np.float64)))),
                         "valid": float(np.sqrt(np.mean(np.square(valid[0], dtype=np.float64))))},
            "alignment": framework_options.get("alignment") if isinstance(framework_options, dict) else None,
            "read": "draw" if o["draw"] else "served",
            "discriminator": {"model": "deepfm", **{k: o[k] for k in DEFAULTS
                                                    if k not in ("train_rows", "valid_rows", "per_field", "draw")}},
            "history": result["history"], **({"per_field": per_field} if per_field is not None else {})}


def field_names(features: List[str]) -> List[str]:
    """One name per field: the feature's, with ``[k]`` after it when the feature makes several
    fields (MNSE's digits, a pretrained vector's parts)."""
    counts = {f: features.count(f) for f in features}
    seen: Dict[str, int] = {}
    out = []
    for f in features:
        seen[f] = seen.get(f, -1) + 1
        out.append(f"{f}[{seen[f]}]" if counts[f] > 1 else f)
    return out


def summary(record: dict) -> Dict[str, float]:
    """The headline number of an ``alignment.json`` record (``ctrflow compare`` tabulates it): the
    fresh discriminator's AUC of head vs tail from E_sh on the valid split (0.5 = aligned)."""
    return {} if record.get("auc") is None else {"discriminator AUC (head vs tail from E_sh)": record["auc"]}


def _number(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def markdown(record: dict) -> str:
    """The record's numbers as a short table, with what they were measured on."""
    d = record["discriminator"]
    read = "with X_t drawn from T (as stage 1b trains)" if record.get("read") == "draw" else "as served"
    lines = [f"# Alignment of E_sh (HDA §5.5): alignment = {record['alignment']}", "",
             f"A fresh DeepFM (first-order terms: {d['first_order']}; options {d['backbone_options'] or 'default'}) "
             f"trained for {d['epochs']} epoch(s) on {record['rows']['train']} rows of '{record['splits']['train']}' "
             f"to tell head from tail users' rows from E_sh ({record['fields']} fields x {record['embedding_dim']}; "
             f"read {read}), "
             f"scored on {record['rows']['valid']} rows of '{record['splits']['valid']}'. "
             f"AUC 0.5 = no group information left.", "",
             "| measure | value |", "|---|---|",
             f"| discriminator AUC ({record['splits']['valid']}) | {_number(record['auc'])} |",
             f"| discriminator AUC (its training rows) | {_number(record['train_auc'])} |",
             f"| head share ({record['splits']['train']}) | {_number(record['head_share']['train'])} |",
             f"| head share ({record['splits']['valid']}) | {_number(record['head_share']['valid'])} |"]
    if record.get("per_field"):
        lines += ["", "The same discriminator on each field of E_sh alone (highest AUC first):", "",
                  f"| field | AUC ({record['splits']['valid']}) | AUC (its training rows) |", "|---|---|---|"]
        ranked = sorted(record["per_field"], key=lambda r: -1.0 if r["auc"] is None else -r["auc"])
        lines += [f"| {r['field']} | {_number(r['auc'])} | {_number(r['train_auc'])} |" for r in ranked]
    return "\n".join(lines) + "\n"


def report_name(options: dict) -> str:
    """``alignment``, or ``alignment-<k=v,...>`` for the options that differ from :data:`DEFAULTS`: a
    variant of the analysis is written beside the run's own record, which ``compare`` reads."""
    changed = sorted(f"{k}={json.dumps(v, sort_keys=True).replace(' ', '')}" for k, v in options.items()
                     if DEFAULTS.get(k) != v)
    return "alignment" + (f"-{','.join(changed)}" if changed else "")


def write_report(out_dir: str, record: dict, name: str = "alignment") -> None:
    os.makedirs(out_dir, exist_ok=True)
    write_file_atomic(os.path.join(out_dir, f"{name}.json"), json.dumps(record, indent=1))
    write_file_atomic(os.path.join(out_dir, f"{name}.md"), markdown(record))


def _last_fit_stage(model) -> Optional[str]:
    stages = getattr(model, "stages", None)
    fits = [s.name for s in stages() if s.fit] if callable(stages) else []
    return fits[-1] if fits else None


class AlignmentAnalysis(tf.keras.callbacks.Callback):
    """Writes the module docstring's files when the run's last fit stage ends (an earlier stage's
    end is skipped: E_sh may still change)."""

    def __init__(self, out_dir: str, train_data, valid_data,
                 splits: Tuple[str, str] = ("train", "valid"), **options):
        super().__init__()
        self.out_dir, self.train_data, self.valid_data, self.splits = out_dir, train_data, valid_data, splits
        self.options = options

    def on_train_end(self, logs=None):
        last = _last_fit_stage(self.model)
        if last is not None and getattr(self.model, "stage", last) != last:
            return
        write_report(self.out_dir, alignment_report(self.model, self.train_data, self.valid_data, self.splits,
                                                    **self.options))


def _datasets(cfg, schema, tasks: List[str], train_rows: int):
    """Functions making the train split's (seeded streaming shuffle, the run's sources) and the valid
    split's (in order) batches; made when the analysis runs, after it sets the global seed."""
    from pipeline.data import make_dataset

    def train():
        return make_dataset(cfg.data_dir, cfg.train_split, cfg.eval_batch_size, schema=schema, shuffle=True,
                            deterministic=True, seed=cfg.seed, labels=tasks, sources=cfg.sources,
                            shuffle_buffer=max(min(2 * int(train_rows), 100_000), 1))

    def valid():
        return make_dataset(cfg.data_dir, cfg.valid_split, cfg.eval_batch_size, schema=schema, shuffle=False,
                            deterministic=True, labels=tasks)
    return train, valid


def alignment_callbacks(cfg, run_dir: str, tasks: List[str]) -> List[tf.keras.callbacks.Callback]:
    """The callback of an HDA run (``pipeline.analyses``: ``alignment``); a framework without
    ``shared_fields`` or data without a group column is a ConfigError."""
    from features.schema import Schema
    from models.factory import framework_class

    if not hasattr(framework_class(cfg.model.framework), "shared_fields"):
        raise ConfigError(f"analysis: 'alignment' reads the shared field embeddings E_sh of HDA "
                          f"(shared_fields); framework '{cfg.model.framework}' has none")
    schema = Schema.load(cfg.data_dir)
    if GROUP not in schema.side_columns():
        raise ConfigError(f"analysis: 'alignment' needs each row's head / tail group: the schema in "
                          f"'{cfg.data_dir}' has no group column")
    train, valid = _datasets(cfg, schema, tasks, DEFAULTS["train_rows"])
    return [AlignmentAnalysis(os.path.join(run_dir, "analysis"), train, valid, (cfg.train_split, cfg.valid_split))]


def analyze_run(run_dir: str, write: bool = True, **options) -> dict:
    """The analysis of a completed run (its saved model, ``serving.run_artifacts.load_model``):
    the record, written under ``<run_dir>/analysis/`` when ``write`` (as :func:`report_name`)."""
    import types

    import yaml

    from features.schema import Schema
    from serving.run_artifacts import CONFIG, load_model

    with open(os.path.join(run_dir, CONFIG)) as fh:  # the resolved training config; not pipeline.runs.load_config:
        cfg = types.SimpleNamespace(**yaml.safe_load(fh))  # its TrainConfig imports this module's registry
    model, _, tasks = load_model(run_dir)
    train, valid = _datasets(cfg, Schema.load(cfg.data_dir), tasks, options.get("train_rows", DEFAULTS["train_rows"]))
    model(tf.keras.utils.unpack_x_y_sample_weight(next(iter(valid())))[0], training=False)  # build: the weights restore
    record = alignment_report(model, train, valid, (cfg.train_split, cfg.valid_split), **options)
    if write:
        write_report(os.path.join(run_dir, "analysis"), record, report_name(options))
    return record
