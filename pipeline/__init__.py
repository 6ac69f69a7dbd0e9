"""ctrflow.pipeline — simulator, Beam jobs, tf.data readers, training, evaluation, CLI."""
from features import _tfenv  # noqa: F401  (must precede any TensorFlow import)
