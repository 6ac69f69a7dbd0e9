"""STAR (Sheng et al., CIKM'21): partitioned normalization, the star topology FCN and the
auxiliary network over any backbone, domains from a user attribute; registers ``star``."""
from models.frameworks.star.layers import PartitionedNormalization, StarDense, StarFCN  # noqa: F401
from models.frameworks.star.model import STAR  # noqa: F401
