"""ctrflow.models — Keras layers, backbones, method frameworks and losses, built from the schema."""
from features import _tfenv  # noqa: F401  (must precede any TensorFlow import)
