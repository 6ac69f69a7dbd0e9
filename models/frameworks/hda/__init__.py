"""HDA (Wang et al., KDD'25, "Improving Long-tail User CTR Prediction via Hierarchical Distribution
Alignment"), one module per part; ``model`` assembles them into the staged framework ``hda`` and
registers it with its baseline presets ``beta_calibration``, ``ipw`` and ``sdro``.

information   exact mutual information of discrete joint tables; the mapped joints (Eq. 2-3, 15)
mapping       Stage 1a probabilistic feature mapping T_i and its fit (Eq. 2-3)
rebalancing   adaptive group re-balancing of the CTR loss (Eq. 11-12)
calibration   group-aware beta calibration and its fit (Eq. 13-14)
model         the framework: stages mapping, shared (adversarial), residual, calibration
"""
from models.frameworks.hda.calibration import GroupBetaCalibration, calibration_loss, fit_calibration  # noqa: F401
from models.frameworks.hda.information import joint_counts, mapped_joint, mutual_information  # noqa: F401
from models.frameworks.hda.mapping import (DEFAULT_LAMBDA1, FieldMapping, ProbabilisticFeatureMapping,  # noqa: F401
                                           fit_feature_mapping, fit_field_mapping, mapping_objective)
from models.frameworks.hda.rebalancing import DEFAULT_STEP_SIZE, AdaptiveRebalancing  # noqa: F401
from models.frameworks.hda.model import HDA, IPW, SDRO, BetaCalibration, MappedEmbedding  # noqa: F401,E402
