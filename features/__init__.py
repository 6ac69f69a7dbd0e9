"""ctrflow.features — the feature schema and every encoding, as pure functions."""
from features import _tfenv  # noqa: F401  (must precede any TensorFlow import)
