"""GPRec (Wang et al.): bi-level (group + personal) user modeling over any backbone; registers ``gprec``."""
from models.frameworks.gprec.layers import (GroupClassifier, GroupEmbedding, GroupPredictor, GumbelMasks,  # noqa: F401
                                            PersonalRepresentation)
from models.frameworks.gprec.model import DEFAULTS, GPRec, mean_probability_logit  # noqa: F401
