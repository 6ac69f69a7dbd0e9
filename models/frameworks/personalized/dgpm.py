"""DGPM (Ma et al., "Dynamic Group Parameter Modeling for Click-Through-Rate Prediction",
CIKM 2023), registered as framework ``dgpm`` over any backbone but FinalMLP.

DGPM groups users dynamically and gives each group its own prediction parameters: a memory
holds G group embeddings (its keys) and G parameter sets of the prediction MLP (its values); a
user is assigned to the groups by the similarity of their user representation to the group
embeddings and predicted with the groups' parameters mixed by these weights:

    u = flatten(E_u)                                     E_u: the user-side fields (``user_roles``)
    a = softmax_g(cos(u, e_g) / temperature)             the groups' weights [B, G]
    r_grp = sum_g a_g e_g                                the user's group representation
    h_l = act(h_{l-1} W_l(a) + b_l(a)),  W_l(a) = sum_g a_g W_{l,g},  b_l(a) = sum_g a_g b_{l,g}
    y = sigma(logit of that MLP on [r_b, r_grp])

:class:`~models.frameworks.personalized.layers.GroupMemory` is the assignment (and the keys'
update) and :class:`models.layers.ConditionedMLP` with no generator and no shared kernel the
mixture (every layer, the logit unit too).

What this follows: the paper's own text was not available; its description in GPRec (Sec. III-B,
V: cosine similarity of the user embedding to each group embedding, a softmax over them, the
weighted sum of the group embeddings as the user's group representation, group prediction
parameters fed to the prediction MLP, all updated through a memory network, the Neural Turing
Machine it cites). Choices it leaves open, ours:

- u is the user-side fields' embeddings concatenated (no projection), so the group embeddings
  live in that space (width = user fields x embedding width).
- How the memory learns (``memory_update``): ``gradient`` (default: the keys are weights the
  CTR loss trains, an end-to-end memory) or ``write`` (an NTM write moving each key toward its
  users, ``write_rate``; see GroupMemory). The parameter sets always learn by gradient.
- ``group_input``: r_grp joins r_b at the prediction MLP's input (default; off: r_b alone).
- G = ``num_groups`` 10; ``temperature`` 1 (the plain softmax of GPRec's description); the
  prediction MLP ``prediction_units`` [64, 32, 16] as GPRec's.

Attaching: the dynamic parameters are the prediction MLP's, over r_b of any backbone (``dnn``
too: DGPM keeps the backbone and mixes the prediction MLP). FinalMLP fuses its two streams with a
bilinear layer, not an MLP, and GPRec's Table III has no DGPM beside it: backbone ``finalmlp``
is refused (OptionError).

For the run report's group analysis: :meth:`DGPM.group_embeddings` (e [G, D], None: DGPM has
no negative embeddings, GPRec's n_g) and :meth:`DGPM.group_assignment` (a [B, G]).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from models.factory import register_framework
from models.framework import Forward
from models.embedding import flat_fields
from models.frameworks.personalized.base import BASE_DEFAULTS, BASE_RANGES, PersonalizedModel
from models.frameworks.personalized.layers import MEMORY_UPDATES, GroupMemory
from models.layers import ConditionedMLP, precision_sensitive
from models.options import OptionError

DEFAULTS = {
    **BASE_DEFAULTS,
    "user_roles": ["personal", "user"],  # E_u: the fields u reads
    "num_groups": 10,                    # G (ours: the paper's value could not be checked)
    "temperature": 1.0,                  # a = softmax(cos / temperature)
    "memory_update": "gradient",         # gradient | write (GroupMemory)
    "write_rate": 1.0,                   # the write's rate (1: NTM's write averaged over the batch)
    "group_input": True,                 # [r_b, r_grp] into the prediction MLP (False: r_b)
}
RANGES = {**BASE_RANGES, "num_groups": "[1, inf)", "temperature": "(0, inf)", "write_rate": "(0, 1]"}
UNATTACHABLE = {"finalmlp": "its prediction layer is a bilinear fusion of two streams, not an MLP whose "
                            "parameters can be made dynamic (GPRec Table III has no DGPM beside FinalMLP)"}


@register_framework("dgpm")
@tf.keras.utils.register_keras_serializable("ctrflow")
class DGPM(PersonalizedModel):
    """Encoded feature dict -> {task: probability [B, 1]} (module docstring)."""

    option_defaults, option_ranges = DEFAULTS, RANGES
    option_choices = {"memory_update": MEMORY_UPDATES}
    role_options = ("user_roles",)
    analyses = ("gprec_groups",)  # the group usage and the cosine between its group embeddings (GPRec §IV-E)
    replaces_dnn = False  # the dynamic parameters are the prediction MLP's, over every backbone's r_b

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dnn",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        if str(backbone).lower() in UNATTACHABLE:
            raise OptionError(f"model.backbone = {backbone!r}: framework 'dgpm' cannot attach to it: "
                              f"{UNATTACHABLE[str(backbone).lower()]}")
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        o = self.options
        self.user_fields = self.fields("user_roles")
        with precision_sensitive():
            self.memory = GroupMemory(o["num_groups"], o["temperature"], o["memory_update"], o["write_rate"],
                                      name="group_memory")
            self.predictor = ConditionedMLP(o["prediction_units"], o["prediction_activation"], generator_units=(),
                                            shared_kernel=False, name="group_mlp")

    def assignment(self, emb, training=None) -> Tuple[tf.Tensor, tf.Tensor]:
        """(a [B, G], r_grp [B, D]) of the embedded batch ``emb``."""
        return self.memory(flat_fields(emb.fields, self.user_fields, dtype=tf.float32), training=training)

    def forward(self, inputs: dict, training=None) -> Forward:
        emb = self.embedding(inputs, training=training)
        a, r_group = self.assignment(emb, training=training)
        x = self.representation(emb, training=training)
        if self.options["group_input"]:
            x = tf.concat([x, r_group], axis=-1)
        _, logit = self.predictor((x, a), training=training)
        return Forward({self.task: tf.cast(logit, tf.float32)}, {"group_weights": a})

    # ---- the run report's group analysis ---------------------------------------------------------------
    def group_embeddings(self) -> Tuple[np.ndarray, None]:
        """(e [G, D], None): the group embeddings (DGPM has one per group, no negative one)."""
        if not self.memory.built:
            raise RuntimeError("call the model once before group_embeddings (it builds the memory)")
        return tf.convert_to_tensor(self.memory.keys).numpy(), None

    def user_features(self) -> List[str]:
        """The features whose fields the assignment reads (E_u)."""
        return [self.field_names[i] for i in self.user_fields]

    def group_assignment(self, inputs: dict) -> tf.Tensor:
        """a [B, G] float32: each row's weights over the groups (inference: no write)."""
        return self.assignment(self.embedding(inputs, training=False), training=False)[0]

    def variable_groups(self):
        """The embedding, the backbone, ``memory`` (the keys, when trained by gradient) and
        ``group_mlp`` (the groups' parameter sets)."""
        return {**super().variable_groups(), "memory": self.memory.trainable_variables,
                "group_mlp": self.predictor.trainable_variables}
