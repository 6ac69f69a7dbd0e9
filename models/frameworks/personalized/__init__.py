"""Individual and group user modeling over any backbone, GPRec's baselines (Wang et al., Sec. IV):
APG (generated parameters), PEPNet (personalised gates) and DGPM (group parameters); registers
them as frameworks ``apg``, ``pepnet`` and ``dgpm``."""
from models.frameworks.personalized.apg import APG  # noqa: F401
from models.frameworks.personalized.dgpm import DGPM  # noqa: F401
from models.frameworks.personalized.layers import GateNU, GeneratedMLP, GroupMemory, PPNetMLP  # noqa: F401
from models.frameworks.personalized.pepnet import PEPNet  # noqa: F401
