"""TF4CTR (Li et al.): SSEM, simple / complex encoders, DFM and the twin-focus loss."""
from models.frameworks.tf4ctr.layers import DFM_MODES, SSEM_MODES, DynamicFusion, SampleSelectionEmbedding  # noqa: F401
from models.frameworks.tf4ctr.model import DEFAULTS, TF4CTR, TF4CTRLogits  # noqa: F401
