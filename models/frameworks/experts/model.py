"""Experts over several embedding tables: Tencent's multi-embedding paradigm and its multi-task
relatives (Pan et al., "Ads Recommendation in a Collapsed and Entangled World", KDD'24, §2,
§4.2, §5, Fig. 1 and 4), as ONE model class with options and its presets.

T embedding tables (a :class:`~models.embedding.FeatureEmbedding` each, of its own width, shared
or owned by a task), experts each bound to one table (a registered backbone, whose ``repr`` is the
expert's output), a gate per task and a tower per task (``structure.py`` reads the options):

    e_i^(t) = (E_i^(t))^T 1_{x_i}                  table t's field embeddings           (§4.2)
    h^(e)   = I^(e)(e^(t(e)))                       expert e on its table t(e)           (§4.2)
    h_k     = c sum_{e in R(k)} g_k,e(x_k) P_e h^(e) task k's mixture; c = 1/|R(k)| with
                                                    ``average`` (§4.2's 1/T), else 1 (MMoE Eq. 5)
    y_k     = sigma(F_k(h_k))                       task k's tower F_k

* R(k), ``routing``: ``all`` experts (ME, MMoE, ME-MMoE, AME); ``own_and_shared``, task k's
  own experts and the shared ones (PLE's CGC, Eq. 1-3; STEM-AL: the main table's expert is read
  by the main task only); ``aftb``, STEM's All-Forward-Task-specific-Backward gate: every expert
  forward, other tasks' experts behind a stop-gradient, so task k's loss reaches only its own
  and the shared experts and tables.
* g_k = softmax over R(k) of the gate input x_k (:class:`ExpertGate`): the flattened fields of
  the tables task k owns and the shared tables (so no gradient of task k reaches another task's
  table through a gate; STEM's authors add the task and shared embeddings, we concatenate them,
  which also takes tables of different widths); ``gate_input: none`` learns input-independent
  weights. A task reading one expert has no gate (Shared-Bottom).
* P_e: with ``expert_dim``, a linear map (with bias) of expert e's output to that width, so
  experts of different widths (ME's heterogeneous experts: GwPFM's K-vector beside MLPs) keep
  "gate-weighted sum, then classifier"; without it the experts must share a width.
* ``levels`` (PLE's progressive layered extraction, Eq. 4-5): levels l >= 2 have an MLP expert
  (``upper_expert_units``) per first-level expert with its owner; task k's experts read task k's
  mixture of level l-1, shared experts the shared mixture, a gate over every expert whose input
  is the shared mixture below (at level 1 the shared tables' fields), kept below the last level.
* ``serve: main`` (STEM-AL, §5.2) trains every task but serves, validates and exports the first
  task only: the served ``call`` computes neither the auxiliary towers nor their gates.
* ``domain_feature`` (GPRec §IV-A3: MMoE / PLE over user groups given by an attribute): one label,
  and the mixtures, gates and towers belong to the *domains* of a scalar categorical feature
  (``models.domains``: one per vocabulary value plus one for padding / OOV) instead of the tasks;
  every tower scores every row and a row's logit is its own domain's, selected in the graph
  (``models.domains.select_domain``), so it depends on no other domain's tower or gate. Task-owned
  experts and tables become domain-owned (PLE's task-specific experts: one per domain).
  ``domain_feature: user_group`` makes the head / long-tail users the domains (HDA Appendix B.1:
  STEM with the user groups as its tasks), learned for serving in a first, non-fit stage.

With linear experts and fixed gates ME is a single embedding of the concatenated tables (§4.2:
"there should be non-linearities ... otherwise the model is equivalent to the single-embedding
paradigm"), which ``tests/models/test_experts.py`` shows. Experts default to the model config's
``backbone`` and ``backbone_options``; the run report shows each task's mean gate weight per table
(the ``gates`` analysis, ``pipeline/gates.py``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from models.backbones import backbone_class, get_backbone
from models.domains import USER_GROUPS_STAGE, domains_for, run_user_groups_stage, select_domain, with_user_groups
from models.embedding import FeatureEmbedding, field_info, flat_fields
from models.factory import register_framework
from models.framework import Forward, FrameworkModel
from models.frameworks.experts.layers import ExpertGate
from models.frameworks.experts.structure import (MAIN, SHARED, TASK, Table, check_structure, readable, resolve,
                                                 upper_mlp)
from models.layers import MLP, Tower, precision_sensitive, safe_name
from models.options import OptionError

ROUTINGS = ("all", "own_and_shared", "aftb")
GATE_INPUTS = ("embeddings", "none")
SERVES = ("all", "main")

# framework_options; each preset below overrides the structure (its paper's) and keeps the rest
DEFAULTS = {
    "tables": [{"owner": SHARED}],       # structure.py: [{width, owner}]
    "experts": [{"table": 0}],           # structure.py: [{table, owner, count, backbone, backbone_options}]
    "routing": "all",                    # all | own_and_shared | aftb
    "levels": 1,                         # extraction levels (PLE)
    "upper_expert_units": None,          # MLP units of the experts of levels >= 2; None: the expert's dnn_units
    "gate_input": "embeddings",          # embeddings | none (learned input-independent weights)
    "gate_units": [],                    # gate MLP hidden units; [] = softmax(W x) (MMoE Eq. 6, PLE Eq. 3)
    "expert_dim": None,                  # P_e: map each expert's output to this width; None: no map
    "average": False,                    # c = 1/|R(k)| (ME, §4.2) instead of 1
    "tower_units": [128, 64],            # F_k's hidden units (the STEM authors' benchmark towers [56])
    "tower_activation": "relu",
    "tower_dropout": 0.0,
    "serve": "all",                      # all | main (STEM-AL: the first task only)
    "domain_feature": None,              # a scalar categorical feature: its domains replace the tasks
}
RANGES = {"levels": "[1, inf)", "upper_expert_units": "[1, inf)", "gate_units": "[1, inf)",
          "expert_dim": "[1, inf)", "tower_units": "[1, inf)", "tower_dropout": "[0, 1)"}
CHOICES = {"routing": ROUTINGS, "gate_input": GATE_INPUTS, "serve": SERVES}
TYPES = {"upper_expert_units": list, "expert_dim": int, "domain_feature": str}


class ExpertsModel(FrameworkModel):
    """Encoded feature dict -> {task: probability [B, 1]} (see the module docstring). Not
    registered itself: the presets below are, each with its paper's structure as defaults."""

    option_defaults, option_ranges, option_choices, option_types = DEFAULTS, RANGES, CHOICES, TYPES
    analyses = ("gates",)

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dnn",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        o = self.options
        if self.embedding_options.get("num_tables", 1) != 1:
            raise OptionError(f"embedding_options.num_tables: framework '{self.framework_name}' builds its tables "
                              f"from framework_options.tables; leave num_tables unset")
        self.domains = domains_for(self.schema, o["domain_feature"]) if o["domain_feature"] else None
        if self.domains is not None and len(self.tasks) != 1:
            raise OptionError(f"framework_options.domain_feature: the domains of '{o['domain_feature']}' share one "
                              f"label (a sample is scored by its own domain's tower); tasks must hold one, got "
                              f"{self.tasks}")
        # the owners of the mixtures, gates and towers: the tasks, or the domains of the one task
        self.routes = self.domains.names if self.domains is not None else list(self.tasks)
        self.route_kind = "task" if self.domains is None else "domain"
        self.tables, self.plan = resolve(o["tables"], o["experts"], len(self.routes), self.embedding_dim, backbone,
                                         self.backbone_options)
        self.num_levels = int(o["levels"])
        info = field_info(self.schema, self.embedding_options.get("features"))
        with precision_sensitive():  # float32 but for MLP hidden layers under mixed precision (models.layers)
            self.embeddings = [self._table(t, i, len(info)) for i, t in enumerate(self.tables)]
            self.experts = [get_backbone(e.backbone, len(info), self.tables[e.table].width, info,
                                         layer_name=f"expert_{i}", **e.options) for i, e in enumerate(self.plan)]
            self.projections = ([tf.keras.layers.Dense(int(o["expert_dim"]), name=f"projection_{i}")
                                 for i in range(len(self.plan))] if o["expert_dim"] else [])
            self.upper = [[MLP(*upper_mlp(e, o["upper_expert_units"], "framework_options."),
                               name=f"expert_{i}_level_{level + 1}")
                           for i, e in enumerate(self.plan)] for level in range(1, self.num_levels)]
            self.gates = {self._gate_name(level, owner): ExpertGate(len(self._readable(owner)), o["gate_units"],
                                                                    use_input=o["gate_input"] == "embeddings",
                                                                    name=self._gate_name(level, owner))
                          for level in range(self.num_levels) for owner in self._mixtures(level)
                          if len(self._readable(owner)) > 1}
            self.towers = {t: Tower(o["tower_units"], o["tower_activation"], o["tower_dropout"],
                                    name="tower_" + safe_name(t)) for t in self.routes}

    # ---- structure ---------------------------------------------------------------------------
    @classmethod
    def check_framework_options(cls, options: dict, prefix: str = "framework_options.") -> dict:
        """The flat checks, then the tables and experts (``structure.check_structure``); with
        ``domain_feature`` nothing may single out the first task (``serve: main``, ``main`` owners)."""
        options = super().check_framework_options(options, prefix)
        merged = {**cls.option_defaults, **options}
        tables, experts = check_structure(merged["tables"], merged["experts"], prefix)
        if merged["domain_feature"] is not None:
            mains = [f"{kind}[{i}].owner" for kind, specs in (("tables", tables), ("experts", experts))
                     for i, spec in enumerate(specs) if spec["owner"] == MAIN]
            if merged["serve"] == "main" or mains:
                raise OptionError(f"{prefix}domain_feature: the model serves its one task from every domain, so "
                                  f"nothing may belong to the main task only (serve: main, owner main: "
                                  f"{[f'{prefix}serve'] if merged['serve'] == 'main' else mains})")
        return options

    @classmethod
    def served_tasks(cls, tasks: Sequence[str], options: Optional[dict] = None) -> List[str]:
        """Every task, or the first only with ``serve: main`` (STEM-AL)."""
        serve = {**cls.option_defaults, **(options or {})}["serve"]
        return list(tasks[:1]) if serve == "main" else list(tasks)

    def _table(self, table: Table, index: int, num_fields: int) -> FeatureEmbedding:
        """Table ``index`` of width k, or as wide as an expert that needs several embeddings per
        feature reads it (FFM: F * k, GwPFM: P * k; the other experts on the table then read all of
        them, e.g. FlatDNN beside GwPFM flattens every embedding of a feature), with the
        first-order terms / behaviour rows only if one of its experts reads them."""
        experts = [e for e in self.plan if e.table == index]
        readers = [backbone_class(e.backbone) for e in experts]
        if not readers:
            raise OptionError(f"framework_options.tables[{table.spec}]: no expert reads this table; bind an expert "
                              f"to it (experts[i].table) or remove it")
        widths = {cls.input_embedding_dim(num_fields, table.width, e.options)
                  for cls, e in zip(readers, experts)} - {table.width}
        if len(widths) > 1:
            raise OptionError(f"framework_options.tables[{table.spec}]: its experts need it at widths {sorted(widths)} "
                              f"({[c.registered_name for c in readers]}); give such experts a table of their own")
        return FeatureEmbedding(self.schema_dict, embedding_dim=widths.pop() if widths else table.width,
                                linear=any(c.uses_linear for c in readers),
                                sequences=any(c.uses_sequences for c in readers), name=f"table_{index}",
                                **self.embedding_options)

    def _readable(self, owner: Optional[int]) -> List[int]:
        return readable(self.plan, owner, self.options["routing"] == "own_and_shared")

    def _mixtures(self, level: int) -> List[Optional[int]]:
        """The mixtures computed at ``level``: every task's; the shared one below the last level
        when shared experts read it."""
        shared = level < self.num_levels - 1 and any(e.owner is None for e in self.plan)
        return [*range(len(self.routes)), *([None] if shared else [])]

    def _gate_name(self, level: int, owner: Optional[int]) -> str:
        return f"gate_{level}_" + ("shared" if owner is None else safe_name(self.routes[owner]))

    # ---- the forward pass ------------------------------------------------------------------------
    def forward(self, inputs: dict, training=None) -> Forward:
        return Forward(self._logits(inputs, self.tasks, training), {})

    def call(self, inputs, training=None, return_forward=False):
        """The served call (no ``return_forward``, not training) computes the served tasks only."""
        served = self.served
        if return_forward or training or served == self.tasks:
            return super().call(inputs, training=training, return_forward=return_forward)
        if not all(t.built for t in self.towers.values()):
            self.forward(inputs, training=False)  # a first call that serves still creates every weight
        return {t: tf.sigmoid(z) for t, z in self._logits(inputs, served, training).items()}

    def _logits(self, inputs: dict, tasks: Sequence[str], training) -> Dict[str, tf.Tensor]:
        """{task: z [B, 1]} of ``tasks``; with domains, each row's own domain's tower's logit."""
        run = _Pass(self, inputs, training)
        top = self.num_levels - 1
        z = {r: tf.cast(self.towers[r](run.mixture(top, k)[0], training=training)[1], tf.float32)
             for k, r in enumerate(self.routes) if self.domains is not None or r in tasks}
        return self._by_domain(z, inputs)

    def _by_domain(self, values: Dict[str, tf.Tensor], inputs: dict) -> Dict[str, tf.Tensor]:
        """``values`` per route as they are, or with domains {task: each row's own domain's value}."""
        if self.domains is None:
            return values
        stacked = tf.stack([values[r] for r in self.routes], axis=1)  # [B, R, ...]
        return {self.tasks[0]: select_domain(stacked, self.domains.index(inputs))}

    def table_weights(self, inputs: dict) -> Dict[str, tf.Tensor]:
        """{task: [B, T]}: each task's (with domains: each row's own domain's) first-level gate
        weights summed per table (the weight it routes to each table; rows sum to 1), in inference mode."""
        run = _Pass(self, inputs, False)
        out = {}
        for k, r in enumerate(self.routes):
            experts = self._readable(k)
            onehot = tf.one_hot([self.plan[e].table for e in experts], len(self.tables), dtype=tf.float32)
            out[r] = tf.matmul(run.gate(0, k), onehot)
        return self._by_domain(out, inputs)

    def interaction_sources(self) -> list:
        """(FM-family interaction, its table, table set 0) of every expert that has one, for the
        ``collapse`` analysis (``pipeline/collapse.py``: e.g. GwPFM's IA without and with M)."""
        return [(e.interaction, self.embeddings[p.table], 0) for e, p in zip(self.experts, self.plan)
                if hasattr(e, "interaction")]

    def describe_tables(self) -> List[dict]:
        """Each table's index, width and owner (a task's or domain's name, or ``shared``)."""
        return [{"table": i, "width": t.width, "owner": "shared" if t.owner is None else self.routes[t.owner]}
                for i, t in enumerate(self.tables)]

    def stages(self):
        return with_user_groups(super().stages(), getattr(self, "domains", None))

    def run_stage(self, name: str, data) -> dict:
        if name == USER_GROUPS_STAGE.name:
            return run_user_groups_stage(self.domains, data)
        return super().run_stage(name, data)

    def variable_groups(self):
        experts = [*self.experts, *self.projections, *(m for level in self.upper for m in level)]
        return {"tables": [v for e in self.embeddings for v in e.trainable_variables],
                "experts": [v for e in experts for v in e.trainable_variables],
                "gates": [v for g in self.gates.values() for v in g.trainable_variables],
                "towers": [v for t in self.towers.values() for v in t.trainable_variables]}


class _Pass:
    """One forward pass: tables, expert outputs and mixtures computed when first read, once each
    (the served call reads only what the served tasks need)."""

    def __init__(self, model: ExpertsModel, inputs: dict, training):
        self.model, self.inputs, self.training = model, inputs, training
        self.fields, self.outputs, self.mixtures = {}, {}, {}

    def table(self, index: int) -> tf.Tensor:
        if index not in self.fields:
            self.fields[index] = self.model.embeddings[index](self.inputs, training=self.training)
        return self.fields[index]

    def expert(self, level: int, index: int) -> tf.Tensor:
        """Expert ``index``'s output at ``level`` [B, h] float32 (after P_e at the first level)."""
        key = (level, index)
        if key not in self.outputs:
            m, e = self.model, self.model.plan[index]
            if level == 0:
                h = tf.cast(m.experts[index](self.table(e.table), training=self.training).repr, tf.float32)
                h = m.projections[index](h) if m.projections else h
            else:
                h = m.upper[level - 1][index](self.mixture(level - 1, e.owner)[0], training=self.training)
            self.outputs[key] = tf.cast(h, tf.float32)
        return self.outputs[key]

    def gate(self, level: int, owner: Optional[int]) -> tf.Tensor:
        """The gate weights [B, n] of ``owner``'s mixture at ``level`` (ones for a lone expert)."""
        m = self.model
        name = m._gate_name(level, owner)
        if name not in m.gates:
            return tf.ones_like(self.expert(level, m._readable(owner)[0])[:, :1])
        if m.options["gate_input"] == "none":
            x = self.expert(level, m._readable(owner)[0])  # read for its batch size only
        elif level > 0:
            x = self.mixture(level - 1, owner)[0]
        else:
            x = tf.concat([flat_fields(self.table(i).fields, dtype=tf.float32)
                           for i, t in enumerate(m.tables) if t.owner in (None, owner)], axis=1)
        return m.gates[name](x, training=self.training)

    def mixture(self, level: int, owner: Optional[int]):
        """(h [B, h], gate weights [B, n]) of task ``owner``'s (None: the shared) mixture at ``level``."""
        key = (level, owner)
        if key not in self.mixtures:
            m = self.model
            experts = m._readable(owner)
            outs = [self.expert(level, e) for e in experts]
            if owner is not None and m.options["routing"] == "aftb":  # STEM: others' experts forward only
                outs = [h if m.plan[e].owner in (None, owner) else tf.stop_gradient(h) for e, h in zip(experts, outs)]
            widths = {int(h.shape[-1]) for h in outs}
            if len(widths) > 1:
                raise OptionError(f"framework '{m.framework_name}': the experts {experts} mixed for "
                                  f"{'the shared mixture' if owner is None else m.route_kind + ' ' + m.routes[owner]} output "
                                  f"widths {sorted(widths)}; set framework_options.expert_dim to map each to one width")
            g = self.gate(level, owner)
            h = tf.einsum("be,beh->bh", g, tf.stack(outs, axis=1))
            if m.options["average"]:
                h = h / float(len(outs))
            self.mixtures[key] = (h, g)
        return self.mixtures[key]


@register_framework("me")
@tf.keras.utils.register_keras_serializable("ctrflow")
class MultiEmbedding(ExpertsModel):
    """Multi-embedding / heterogeneous MoE, single-task (§4.2, Fig. 1): two tables, an expert on
    each (the model's backbone), h = (1/T) sum_t g^(t) h^(t), one tower.
    ``configs/me_moments_sim.yaml`` is the Moments configuration (GwPFM + FlatDNN on table 1,
    IPNN on table 2)."""

    option_defaults = {**DEFAULTS, "tables": [{}, {}], "experts": [{"table": 0}, {"table": 1}], "average": True}


@register_framework("shared_bottom")
@tf.keras.utils.register_keras_serializable("ctrflow")
class SharedBottom(ExpertsModel):
    """Shared-Bottom (Caruana, 1997; MMoE's baseline): one table, one shared bottom network (the
    model's backbone), a tower per task on it; no gates."""

    option_defaults = {**DEFAULTS, "tables": [{}], "experts": [{"table": 0}]}


@register_framework("mmoe")
@tf.keras.utils.register_keras_serializable("ctrflow")
class MMoE(ExpertsModel):
    """MMoE (Ma et al., KDD'18, Eq. 5-6): one table, 8 shared experts (the STEM authors' released
    benchmark setting of MMoE [56]), a softmax gate per task over all of them (softmax(W_gk x))."""

    option_defaults = {**DEFAULTS, "tables": [{}], "experts": [{"table": 0, "count": 8}]}


@register_framework("ple")
@tf.keras.utils.register_keras_serializable("ctrflow")
class PLE(ExpertsModel):
    """PLE (Tang et al., RecSys'20): Customized Gate Control (Eq. 1-3: task k's gate over its own
    and the shared experts) stacked in extraction levels (Eq. 4-5: a shared gate over every expert
    below the last level), one table. Defaults: two levels (one level is CGC), one task-specific
    expert per task and one shared expert per level (ours: the counts the paper tunes are options,
    ``experts[i].count``)."""

    option_defaults = {**DEFAULTS, "tables": [{}], "routing": "own_and_shared", "levels": 2,
                       "experts": [{"table": 0, "owner": TASK}, {"table": 0, "owner": SHARED}]}


@register_framework("me_mmoe")
@tf.keras.utils.register_keras_serializable("ctrflow")
class MEMMoE(ExpertsModel):
    """ME-MMoE (STEM [56]; §5.1 "Connections to the Multi-Embedding Paradigm"): MMoE whose 8
    experts are each bound to its own table of the same width (symmetric tables)."""

    option_defaults = {**DEFAULTS, "tables": [{} for _ in range(8)], "experts": [{"table": i} for i in range(8)]}


@register_framework("stem")
@tf.keras.utils.register_keras_serializable("ctrflow")
class STEM(ExpertsModel):
    """STEM-Net (Su et al., AAAI'24 = [56]; §5.1): a shared table and one table per task, 8 shared
    experts on the shared table and one task-specific expert on each task's table (the STEM
    authors' released benchmark setting), All-Forward-Task-specific-Backward gates."""

    option_defaults = {**DEFAULTS, "tables": [{"owner": SHARED}, {"owner": TASK}], "routing": "aftb",
                       "experts": [{"table": 0, "count": 8}, {"table": 1}]}


@register_framework("ame")
@tf.keras.utils.register_keras_serializable("ctrflow")
class AME(ExpertsModel):
    """Asymmetric Multi-Embedding (§5.1, Fig. 4): a fixed number of shared tables of different
    widths (the paper's 16, 32, 64, whatever the number of tasks), an expert per table, a gate per
    task routing it over the tables (small tasks route more to small tables)."""

    option_defaults = {**DEFAULTS, "tables": [{"width": 16}, {"width": 32}, {"width": 64}],
                       "experts": [{"table": 0}, {"table": 1}, {"table": 2}]}


@register_framework("stem_al")
@tf.keras.utils.register_keras_serializable("ctrflow")
class STEMAL(ExpertsModel):
    """STEM-AL (§5.2, Fig. 4): a main table read only by the main task (the first), a shared
    table read by every task, an expert on each; the main tower mixes both experts, auxiliary
    towers read the shared one. Served, validated and exported on the main task only."""

    option_defaults = {**DEFAULTS, "tables": [{"owner": MAIN}, {"owner": SHARED}], "routing": "own_and_shared",
                       "experts": [{"table": 0}, {"table": 1}], "serve": "main"}
