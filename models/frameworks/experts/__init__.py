"""Experts over several embedding tables (Tencent KDD'24 §2, §4.2, §5): ME, Shared-Bottom, MMoE,
PLE, ME-MMoE, STEM, AME and STEM-AL as presets of one model class; registers them."""
from models.frameworks.experts.layers import ExpertGate  # noqa: F401
from models.frameworks.experts.model import (AME, DEFAULTS, MEMMoE, MMoE, MultiEmbedding, PLE, STEM,  # noqa: F401
                                             STEMAL, ExpertsModel, SharedBottom)
