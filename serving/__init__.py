"""ctrflow.serving — SavedModel export, TF Serving layout and request clients."""
from features import _tfenv  # noqa: F401  (must precede any TensorFlow import)
